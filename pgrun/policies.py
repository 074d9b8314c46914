"""Policies: a torso mapping observations to a distribution over actions.

`policy(obs)` returns a `torch.distributions.Distribution` whose batch shape is the leading
shape of `obs`, exactly as in the notes' code: `policy(states).log_prob(actions)` is (N, T).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from pgrun.config import UserError

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


class PolicyError(UserError):
    """An observation or action space the policies cannot handle (one-line message)."""


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers of the given sizes with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class CategoricalPolicy(nn.Module):
    """pi(a|s) = softmax(f(s))_a for a Discrete action space."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: Sequence[int], activation: str):
        super().__init__()
        self.net = mlp([obs_dim, *hidden_sizes, n_actions], activation)

    def forward(self, obs: torch.Tensor) -> Distribution:
        """obs: (..., obs_dim) float32 -> Categorical with batch shape (...)."""
        return Categorical(logits=self.net(obs))

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """Draw a ~ pi(.|s): the same draw as `self(obs).sample()` from the same RNG state,
        without building the Distribution (the rollout calls this once per time step).
        obs: (B, obs_dim) -> (B,) int64."""
        return torch.multinomial(self.net(obs).softmax(-1), 1, True).squeeze(-1)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """The most likely action: (...,) int64."""
        return self.net(obs).argmax(-1)


class GaussianPolicy(nn.Module):
    """pi(a|s) = N(a; mu(s), diag(exp(log_std))^2) with a state-independent log_std (Box actions)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int],
        activation: str,
        log_std_init: float = -0.5,
    ):
        super().__init__()
        self.net = mlp([obs_dim, *hidden_sizes, act_dim], activation)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def forward(self, obs: torch.Tensor) -> Distribution:
        """obs: (..., obs_dim) float32 -> diagonal Gaussian over (act_dim,) with batch shape (...)."""
        return Independent(Normal(self.net(obs), self.log_std.exp()), 1)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """Draw a ~ N(mu(s), std^2): the same draw as `self(obs).sample()` from the same RNG
        state, without building the Distribution. obs: (B, obs_dim) -> (B, act_dim)."""
        mean = self.net(obs)
        return torch.normal(mean, self.log_std.exp().expand_as(mean))

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean action: (..., act_dim) float32."""
        return self.net(obs)


def make_policy(
    env: gym.vector.VectorEnv | gym.Env,
    hidden_sizes: Sequence[int] = (32,),
    activation: str = "tanh",
    log_std_init: float = -0.5,
) -> nn.Module:
    """The policy for `env`'s spaces: Categorical for Discrete actions, Gaussian for Box.

    Observations must be a Box; they are flattened to (obs_dim,).
    """
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    act_space = getattr(env, "single_action_space", env.action_space)
    name = env.spec.id if env.spec is not None else type(env).__name__
    if not isinstance(obs_space, gym.spaces.Box):
        raise PolicyError(
            f"{name}: observation space {obs_space} is not supported; pgrun needs a Box observation"
        )
    obs_dim = math.prod(obs_space.shape)
    if activation not in ACTIVATIONS:
        raise PolicyError(f"policy.activation={activation!r}: use one of {', '.join(ACTIVATIONS)}")
    if isinstance(act_space, gym.spaces.Discrete):
        return CategoricalPolicy(obs_dim, int(act_space.n), hidden_sizes, activation)
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        return GaussianPolicy(obs_dim, act_space.shape[0], hidden_sizes, activation, log_std_init)
    raise PolicyError(
        f"{name}: action space {act_space} is not supported; pgrun handles Discrete and 1-D Box"
    )
