"""The state-value network V(s) of `variant.baseline=value`, and its fitting.

V has its own observation encoder (with its own running normalisation under
`env.normalize_obs`, updated from the same batches as the policy's) and its own Adam optimizer:
the policy's gradient never flows into it and the reverse.

With `value.normalize_targets` the network's last layer predicts the targets standardised by
their running mean and std (over every batch so far), V(s) = mean + std * head(s): returns of
hundreds (CartPole's, with gamma = 0.99, approach 100) are then learnt in a few steps, where a
freshly initialised head outputting ~0 would need hundreds of Adam steps just to reach their
scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from pgrun.losses import value_loss
from pgrun.normalization import RunningNorm
from pgrun.optim import Optimizer
from pgrun.policies import ObsEncoder, mlp


class ValueNetwork(nn.Module):
    """V(s) = net(encoder(s)), or mean + std * net(encoder(s)) with `normalize_targets`:
    observations in a batch's layout (..., *obs) -> (...) float32."""

    def __init__(
        self,
        obs_space: gym.Space,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        *,
        cnn: bool = False,
        normalize_obs: bool = False,
        normalize_targets: bool = False,
    ):
        super().__init__()
        self.encoder = ObsEncoder(obs_space, cnn=cnn, normalize=normalize_obs)
        self.net = mlp([self.encoder.out_dim, *hidden_sizes, 1], activation)
        # running mean and variance of the targets (buffers: saved with the state_dict)
        self.target_norm = RunningNorm(1) if normalize_targets else None

    def head(self, obs: torch.Tensor) -> torch.Tensor:
        """The network's output, in the standardised units of the targets: (...) float32."""
        return self.net(self.encoder(obs)).squeeze(-1)

    def scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the targets, as float32 scalars; (0, 1) without normalize_targets."""
        norm = self.target_norm
        if norm is None:
            return torch.zeros(()), torch.ones(())
        return norm.mean[0].float(), (norm.var[0] + norm.eps).sqrt().float()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.target_norm is None:
            return self.head(obs)
        mean, std = self.scale()
        return mean + std * self.head(obs)

    def update_obs_stats(self, obs: torch.Tensor, mask: torch.Tensor) -> None:
        """Merge the valid steps of obs (N, T, ...) (mask (N, T) is 1) into the running
        observation statistics (no-op without env.normalize_obs)."""
        norm = self.encoder.norm
        if norm is None:
            return
        with torch.no_grad():
            norm.update(self.encoder.encode(obs[mask.bool()]))


def value_from_config(env: gym.vector.VectorEnv | gym.Env, cfg: Any) -> ValueNetwork:
    """The value network of a composed pgrun config (`value` section, policy torso, env)."""
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    return ValueNetwork(
        obs_space,
        list(cfg.value.hidden_sizes),
        str(cfg.value.activation),
        cnn=str(cfg.policy.get("name", "mlp")) == "cnn",
        normalize_obs=bool(cfg.env.get("normalize_obs", False)),
        normalize_targets=bool(cfg.value.normalize_targets),
    )


def fit_value(
    value: ValueNetwork,
    optimizer: Optimizer,
    obs: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    steps: int,
    *,
    minibatches: int = 1,
    max_grad_norm: float | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """`steps` Adam steps on the mean squared error of V against `target` over the valid steps.

    With `minibatches` = m > 1 the valid steps are shuffled (with `generator`) into m parts and
    the steps go through them in turn, reshuffling after each pass. With the network's
    `normalize_targets`, this batch's targets are merged into the running mean and std first
    and the loss is taken in standardised units, (head(s) - (target - mean) / std)^2.

    Args:
        obs: (N, T, *obs) observations; target, mask: (N, T) float32.
    Returns:
        the loss of the last step (on its minibatch).
    """
    valid = mask > 0
    x, y = obs[valid], target[valid].detach()  # (M, *obs), (M,)
    if value.target_norm is not None:
        value.target_norm.update(y[:, None])
    mean, std = value.scale()
    y = (y - mean.to(y.device)) / std.to(y.device)
    ones = torch.ones_like(y)
    last = float("nan")
    parts: list[torch.Tensor] = []
    for _ in range(steps):
        if minibatches > 1:
            if not parts:
                order = torch.randperm(y.shape[0], generator=generator).to(y.device)
                parts = list(order.chunk(minibatches))
            idx = parts.pop(0)
            xb, yb, mb = x[idx], y[idx], ones[idx]
        else:
            xb, yb, mb = x, y, ones
        loss = value_loss(value.head(xb), yb, mb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(
            value.parameters(), float("inf") if max_grad_norm is None else max_grad_norm
        )
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            raise FloatingPointError("value loss" if not torch.isfinite(loss) else "value gradient")
        optimizer.step()
        last = loss.item()
    return last
