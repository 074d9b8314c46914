"""The rollout's draw in numpy: the actions of every copy at every env step of a batch.

A collector draws once per env step. For pgrun's MLP policies on the CPU that draw is a few
small matrix products, and torch's cost per operation (several microseconds each, about 20
operations per draw) was most of it: at N = 16 a draw took about 90 us in torch and takes about
35 us here. So a batch's draws are made in numpy from a copy of the policy's weights taken at
the batch's start (the weights do not change during a collection):

- the forward pass: x @ W + b for each Linear layer (W the layer's weight transposed), with
  tanh or ReLU between them;
- the noise: drawn once for the whole batch, (T, *lead, 1) uniforms or (T, *lead, *shape)
  normals, from torch's RNG as the per-step draws took it (torch draws uniforms one after the
  other, so the T-step block holds the same numbers T draws of one step would; for normals the
  block is the same where a step's count is a multiple of 16, torch's block of Box-Muller pairs);
- Categorical: the inverse CDF of softmax(logits), as pgrun.policies.inverse_cdf; Gaussian:
  mean + std * eps (squashed into the bounds with `squash`).

The draws are the policy's distribution up to float rounding of its probabilities (numpy's exp
and tanh are not torch's), so they are not bit for bit the torch draws of `policy.act`; they
are deterministic, and the update's log-probabilities still come from torch (`policy(obs)`).
pgrun.batched.StackedPolicy.batch_draw does the same for K seeds' stacked weights: np.matmul
on (K, N, in) @ (K, in, out) multiplies slice by slice with the same BLAS call as one seed's
(N, in) @ (in, out), so a seed's draws in a group are bit for bit its draws alone.

Other policies (a CNN, one-hot or normalised observations, MultiDiscrete and MultiBinary
actions, activations other than tanh and ReLU) and other devices keep torch's per-step
`policy.act`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

Draw = Callable[[np.ndarray, int], np.ndarray]
"""draw(obs, t): the actions at step t of the batch for obs (*lead, d) float32."""

Layer = tuple[np.ndarray, np.ndarray, Callable | None]
"""(W (..., in, out), b (..., 1, out) or (out,), the activation after it or None)."""


def _relu(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=out)


ACTIVATIONS = {nn.Tanh: np.tanh, nn.ReLU: _relu}


def mlp_layers(net: nn.Sequential) -> list[tuple[nn.Linear, Callable | None]] | None:
    """The Linear layers of `net` with the numpy activation that follows each, or None where
    `net` holds a layer this module has no numpy version of."""
    layers: list[tuple[nn.Linear, Callable | None]] = []
    for layer in net:
        if isinstance(layer, nn.Linear) and (not layers or layers[-1][1] is not None):
            layers.append((layer, None))
        elif type(layer) in ACTIVATIONS and layers and layers[-1][1] is None:
            layers[-1] = (layers[-1][0], ACTIVATIONS[type(layer)])
        else:
            return None
    return layers or None


def noise(shape: Sequence[int], normal: bool, generator: torch.Generator | None = None):
    """U[0, 1) or N(0, 1) noise of `shape` from `generator` (torch's RNG where None)."""
    x = torch.empty(tuple(shape))
    return (x.normal_(generator=generator) if normal else x.uniform_(generator=generator)).numpy()


def forward(layers: Sequence[Layer], x: np.ndarray) -> np.ndarray:
    """The MLP on x (*lead, in) -> (*lead, out) float32."""
    for w, b, act in layers:
        x = np.matmul(x, w)
        x += b
        if act is not None:
            act(x, out=x)
    return x


def categorical(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One draw per row of softmax(logits) (..., n) with u (..., 1) ~ U[0, 1): the number of
    cdf_j <= u among j < n - 1 (pgrun.policies.inverse_cdf) -> (...,) int64.

    Two actions (CartPole, Acrobot's are three) take the same operations on the two columns,
    without the reductions along the last axis, which cost numpy more than the arithmetic at
    these sizes: the same numbers, a third of the time."""
    if logits.shape[-1] == 2:
        l0, l1 = logits[..., 0], logits[..., 1]
        m = np.maximum(l0, l1)
        e0, e1 = np.exp(l0 - m), np.exp(l1 - m)
        return (e0 / (e0 + e1) <= u[..., 0]).astype(np.int64)
    z = logits - logits.max(-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(-1, keepdims=True)
    cdf = np.cumsum(z[..., :-1], -1)
    return (cdf <= u).sum(-1, dtype=np.int64)


class NumpyDraw:
    """The draws of one batch of at most T steps from a copy of the weights (see the module).

    Args:
        layers: the MLP as numpy arrays; gaussian: the head (else Categorical);
        eps: the batch's noise, (T, *lead, 1) uniforms or (T, *lead, *shape) normals;
        std: exp(log_std) (*shape) or (K, 1, *shape); squash: (loc, scale) or None.
    """

    def __init__(self, layers, gaussian: bool, eps: np.ndarray, std=None, squash=None):
        self.layers, self.gaussian, self.eps = list(layers), gaussian, eps
        self.std, self.squash = std, squash

    def __call__(self, obs: np.ndarray, t: int) -> np.ndarray:
        out = forward(self.layers, obs)
        if not self.gaussian:
            return categorical(out, self.eps[t])
        u = out.reshape(*obs.shape[:-1], *self.eps.shape[obs.ndim :])
        u += self.std * self.eps[t]
        if self.squash is None:
            return u
        loc, scale = self.squash
        return loc + scale * np.tanh(u)


def _plain_mlp(policy: nn.Module) -> list[tuple[nn.Linear, Callable | None]] | None:
    """The policy's MLP layers where its draw can be made here, else None."""
    from pgrun.policies import CategoricalPolicy, GaussianPolicy

    if type(policy) not in (CategoricalPolicy, GaussianPolicy):
        return None
    enc = policy.encoder
    if enc.kind != "box" or enc.norm is not None or enc.cnn is not None:
        return None
    if any(p.device.type != "cpu" for p in policy.parameters()):
        return None
    return mlp_layers(policy.net)


def batch_draw(policy: nn.Module, T: int, rows: int) -> Draw:
    """The draw of a batch of at most T steps of `rows` copies: numpy's (above) for the MLP
    policies it covers, else policy.act (pgrun.policies; or policy.sample, or
    policy(obs).sample()) once per step. Noise comes from torch's RNG."""
    mlp = _plain_mlp(policy)
    if mlp is None:
        return _torch_draw(policy)
    with torch.no_grad():
        layers = [
            (lin.weight.T.contiguous().numpy(), lin.bias.clone().numpy(), act) for lin, act in mlp
        ]
        gaussian = hasattr(policy, "log_std")
        if not gaussian:
            return NumpyDraw(layers, False, noise((T, rows, 1), normal=False))
        squash = (policy.loc.numpy(), policy.scale.numpy()) if policy.squash else None
        return NumpyDraw(
            layers,
            True,
            noise((T, rows, *policy.shape), normal=True),
            policy.log_std.exp().numpy(),
            squash,
        )


def step_draw(policy: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch's draw once per env step, obs (B, *obs) -> actions (B, ...): policy.act (pgrun's
    policies: the cheap draw, pgrun.policies), else policy.sample, else policy(obs).sample()."""
    return (
        getattr(policy, "act", None)
        or getattr(policy, "sample", None)
        or (lambda obs: policy(obs).sample())
    )


def _torch_draw(policy: nn.Module) -> Draw:
    sample = step_draw(policy)
    device = next(policy.parameters()).device

    def draw(obs: np.ndarray, t: int) -> np.ndarray:
        return sample(torch.from_numpy(obs).to(device)).cpu().numpy()

    return draw
