"""pgrun.activations.Tanh: numpy's tanh on large CPU inputs, torch's elsewhere."""

import numpy as np
import torch

from pgrun.activations import NUMPY_FROM, Tanh
from pgrun.policies import mlp


def test_numpy_tanh_matches_torchs_to_the_last_place():
    """On a large float32 input the values agree with torch.tanh to one float32 spacing at 1
    (the largest |tanh|), and exactly with numpy's; a small input is torch's, bit for bit."""
    torch.manual_seed(0)
    big = torch.randn(8, 1000, 64) * 3
    y = Tanh()(big)
    assert torch.equal(y, torch.from_numpy(np.tanh(big.numpy())))
    assert (y - torch.tanh(big)).abs().max() <= np.spacing(np.float32(1))
    small = torch.randn(NUMPY_FROM - 1)
    assert torch.equal(Tanh()(small), torch.tanh(small))


def test_numpy_tanh_gradients_first_and_second_order():
    """gradcheck and gradgradcheck in float64 on an input above the threshold: the backward is
    1 - tanh^2, and a second derivative (trpo's Fisher-vector products) goes through it."""
    x = torch.randn(NUMPY_FROM, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Tanh(), (x,))
    assert torch.autograd.gradgradcheck(Tanh(), (x,))
    g = torch.autograd.grad(Tanh()(x).sum(), x)[0]
    assert torch.allclose(g, 1 - torch.tanh(x.detach()) ** 2, rtol=0, atol=1e-15)


def test_other_dtypes_keep_torchs_tanh():
    x = torch.randn(NUMPY_FROM * 2).to(torch.bfloat16)
    assert torch.equal(Tanh()(x), torch.tanh(x))


def test_mlps_use_it():
    net = mlp([4, 64, 64, 2], "tanh")
    assert [type(m).__name__ for m in net] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    assert all(isinstance(m, Tanh) for m in net if isinstance(m, torch.nn.Tanh))
