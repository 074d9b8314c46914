"""Running statistics: observation normalisation (inside the policy, saved with it) and reward
scaling (applied to the batch the estimator sees)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pgrun.estimators import episode_return, episode_starts, one_episode_per_row
from pgrun.rollout import Batch


class RunningNorm(nn.Module):
    """x -> clip((x - mean) / sqrt(var + eps), -clip, clip) with a running mean and variance.

    The statistics are buffers, so they are saved in the policy's state_dict and a reloaded
    policy normalises as the trained one did. `update` merges a batch of observations into them
    (Chan et al.'s parallel formula); the forward pass never changes them.
    """

    def __init__(self, dim: int, eps: float = 1e-8, clip: float = 10.0):
        super().__init__()
        self.eps, self.clip = eps, clip
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) float32 -> (..., dim) float32."""
        mean, std = self.mean.to(x.dtype), (self.var + self.eps).sqrt().to(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the rows of x: (M, dim) into the statistics."""
        x = x.to(torch.float64).reshape(-1, self.mean.shape[0])
        m = x.shape[0]
        if m == 0:
            return
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        n = self.count + m
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * m + delta.square() * self.count * m / n
        self.mean += delta * m / n
        self.var.copy_(m2 / n)
        self.count.copy_(n)


class RewardScaler:
    """r_t -> r_t / sqrt(Var[G] + eps), G = sum_t gamma^t r_t the discounted return of an episode
    (of its steps in the batch, where a row holds several), Var over every episode collected
    so far (this batch included); unscaled while that variance is still 0.

    One positive number per batch multiplies all weights alike, so the gradient keeps its
    direction; only the step size (and Adam's early steps) change. Episodes' logged returns
    are computed from the unscaled batch.
    """

    def __init__(self, gamma: float, eps: float = 1e-8):
        self.gamma, self.eps = gamma, eps
        self.stats = RunningNorm(1)

    def __call__(self, batch: Batch) -> Batch:
        """The batch with rew (N, T) divided by the running std of the returns."""
        if one_episode_per_row(batch.done, batch.mask, batch.start):
            T = batch.rew.shape[1]
            t = torch.arange(T, dtype=batch.rew.dtype, device=batch.rew.device)
            returns = (batch.rew * batch.mask * self.gamma**t).sum(1)  # (N,)
        else:  # each episode's (part in the batch), from its first step
            ret = episode_return(batch.rew, batch.mask, batch.done, self.gamma)
            returns = ret[episode_starts(batch.done, batch.mask)]
        self.stats.update(returns[:, None].cpu())
        var = float(self.stats.var[0])
        std = var**0.5 if var > self.eps else 1.0  # no scaling while all returns were equal
        return dataclasses.replace(batch, rew=batch.rew / std)
