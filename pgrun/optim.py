"""Adam and SGD, the two optimizers pgrun offers (`optim.name`).

They follow torch.optim.Adam and torch.optim.SGD with their default options (no momentum,
weight decay or amsgrad) and take the same steps to float rounding (tests/unit/test_optim.py).
pgrun has its own because constructing any torch.optim optimizer imports torch._dynamo, about
1.5 s of start-up for every run, more than the training of a CartPole run takes to solve it.

The interface is the part of torch.optim.Optimizer the trainer uses: `param_groups` (a list of
one dict whose "lr" may be changed between steps), `zero_grad`, `step`, `state_dict` and
`load_state_dict` (plain tensors and numbers, so checkpoints load with weights_only=True).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class Optimizer:
    def __init__(self, params: Iterable[torch.Tensor], lr: float):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("the optimizer got no parameters to train")
        self.param_groups = [{"lr": float(lr)}]

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict:
        return {"param_groups": [dict(g) for g in self.param_groups]}

    def load_state_dict(self, state: dict) -> None:
        self.param_groups = [dict(g) for g in state["param_groups"]]


class SGD(Optimizer):
    """theta <- theta - lr * g."""

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-self.lr)


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015, Algorithm 1) with beta1 = 0.9, beta2 = 0.999, eps = 1e-8:

        m <- beta1 m + (1 - beta1) g          v <- beta2 v + (1 - beta2) g^2
        theta <- theta - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    t counts this optimizer's steps; a parameter without a gradient is left alone.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr)
        self.betas, self.eps = betas, eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        correction1 = 1 - b1**self.t
        sqrt_correction2 = math.sqrt(1 - b2**self.t)
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v.sqrt() / sqrt_correction2).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / correction1)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "t": self.t, "m": list(self.m), "v": list(self.v)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.t = int(state["t"])
        for mine, saved in ((self.m, state["m"]), (self.v, state["v"])):
            if len(saved) != len(mine):
                raise ValueError(
                    f"the saved optimizer state has {len(saved)} tensors, this one {len(mine)}"
                )
            for x, y in zip(mine, saved, strict=True):
                x.copy_(y)


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float) -> Optimizer:
    """`optim.name` (adam | sgd) -> the optimizer over `params`."""
    if name == "adam":
        return Adam(params, lr)
    if name == "sgd":
        return SGD(params, lr)
    raise ValueError(f"unknown optimizer {name!r}: use adam or sgd")
