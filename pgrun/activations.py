"""tanh for the MLPs' hidden layers, by numpy's on the CPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class _NumpyTanh(torch.autograd.Function):
    """tanh of a CPU tensor by numpy's tanh; its derivative 1 - tanh^2 from the saved output, as
    torch's own tanh computes it. The backward is made of torch ops on the saved output, so a
    second derivative (trpo's Fisher-vector products) goes through it too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_numpy(np.tanh(x.detach().numpy()))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


NUMPY_FROM = 4096
"""Inputs of at least this many numbers go through numpy: below it the autograd Function's own
cost (about 10 us) is more than torch's tanh takes."""


class Tanh(nn.Tanh):
    """nn.Tanh computed by numpy on the CPU for inputs of NUMPY_FROM numbers or more (float32 and
    float64; torch's tanh otherwise). On this project's 2-core machine torch's CPU tanh (2.13)
    took 1.06 ms on 320,000 float32 numbers where numpy's took 0.12 ms: 5 to 14% of a CartPole
    group's training, most of it in the updates' forward passes. The two agree to one unit in
    the last place; numpy's is also the tanh of the rollout's forward (pgrun.draw)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.numel() < NUMPY_FROM
            or x.device.type != "cpu"
            or x.dtype not in (torch.float32, torch.float64)
        ):
            return torch.tanh(x)
        return _NumpyTanh.apply(x)
