"""Collectors: where a batch comes from (`rollout=episodes|steps`).

    batch = collector.collect(policy, iteration)

- :class:`EpisodeCollector` (`rollout=episodes`, the notes'): N whole episodes from reset,
  stepped in lockstep and cut at the horizon T (pgrun.rollout.collect_episodes).

A collector's `state_dict()` is what it carries from one batch to the next (saved in the
checkpoint by pgrun.state.TrainState); the episodes collector carries nothing.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from torch import nn

from pgrun.rollout import Batch, collect_episodes
from pgrun.seeding import RESETS, derive_seed


class EpisodeCollector:
    """N whole episodes from reset per batch; the resets of iteration i are seeded from
    (seed, i), so a batch can be replayed alone."""

    def __init__(self, env: gym.vector.VectorEnv, horizon: int, seed: int):
        self.env, self.horizon, self.seed = env, horizon, seed

    def collect(self, policy: nn.Module, iteration: int) -> Batch:
        seed = derive_seed(self.seed, iteration, RESETS)
        return collect_episodes(self.env, policy, self.horizon, seed=seed)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
