"""Collectors: where a batch comes from (`rollout=episodes|steps`).

    batch, episodes = collector.collect(policy, iteration)

- :class:`EpisodeCollector` (`rollout=episodes`, the notes'): N whole episodes from reset,
  stepped in lockstep and cut at the horizon T (pgrun.rollout.collect_episodes): one episode
  per row.
- :class:`StepCollector` (`rollout=steps`, as PPO implementations collect): each of the N
  copies stepped `rollout.steps` = T times with auto-reset, its observation carried from one
  batch to the next, so a row holds the end of the episode the previous batch cut, whole
  episodes, and the start of one the next batch continues. Every episode end is a per-step
  flag (pgrun.rollout.Batch); the learner bootstraps both an episode cut by the end of the
  batch and a time-limit truncation inside it with V(the observation after it).

`episodes` (:class:`Episodes`) are the returns and lengths of the episodes that ended in the
batch, counted from their first step (in an earlier batch, for a carried episode): what the
charts show. A collector's `state_dict()` is what it carries from one batch to the next
(saved in the checkpoint by pgrun.state.TrainState).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from pgrun import guards
from pgrun.cartpole import fast_step
from pgrun.draw import batch_draw
from pgrun.envs import action_converter, obs_converter
from pgrun.rollout import Batch, collect_episodes
from pgrun.seeding import RESETS, derive_seed


@dataclass
class Episodes:
    """The episodes that ended in a batch: returns (E,) float32 (undiscounted, unscaled) and
    lengths (E,) int64, from each episode's first step."""

    returns: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return int(self.returns.shape[0])


class EpisodeCollector:
    """N whole episodes from reset per batch; the resets of iteration i are seeded from
    (seed, i), so a batch can be replayed alone. Carries nothing between batches."""

    def __init__(self, env: gym.vector.VectorEnv, horizon: int, seed: int):
        self.env, self.horizon, self.seed = env, horizon, seed

    def collect(self, policy: nn.Module, iteration: int) -> tuple[Batch, Episodes]:
        seed = derive_seed(self.seed, iteration, RESETS)
        batch = collect_episodes(self.env, policy, self.horizon, seed=seed)
        return batch, Episodes(batch.returns.cpu(), batch.lengths.cpu())

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class _StepRun:
    """The time-first buffers of one fixed-length batch while it is collected: obs (T + 1, N,
    *obs), act (T, N, ...), rew (T, N) float32, term / trunc / valid (T, N) bool; start (N,)
    the copies' times within their episodes at the batch's first step; the returns and
    lengths of the episodes that ended."""

    obs: np.ndarray
    act: np.ndarray | None
    rew: np.ndarray
    term: np.ndarray
    trunc: np.ndarray
    valid: np.ndarray
    start: np.ndarray
    returns: list
    lengths: list
    env_id: str


class StepCollector:
    """T steps of each of the N copies per batch, with auto-reset.

    The env resets a copy on the call after its episode ended (gymnasium's next-step
    autoreset): that call is not a step of any episode, so it is masked out of the batch (its
    reward is 0 and its action ignored), and a row then holds T minus its resets valid steps.
    The first batch (and the first after a resume) resets every copy, seeded from
    (seed, iteration); later resets use the env's own RNG.

    Resume: a gymnasium env's internal state cannot be saved in general, so a resumed run
    restarts the copies' episodes (the episodes the checkpointed batch cut were bootstrapped
    there already); everything else continues exactly. `state_dict` holds the counters.
    """

    def __init__(self, env: gym.vector.VectorEnv, steps: int, seed: int):
        mode = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if str(getattr(mode, "value", mode)) != "NextStep":
            raise ValueError(f"rollout=steps needs an env that resets on the next step, got {mode}")
        self.env, self.steps, self.seed = env, steps, seed
        self._step = fast_step(env) or env.step
        self.to_batch = obs_converter(env.single_observation_space)
        self.to_env = action_converter(env.single_action_space)
        self.obs: np.ndarray | None = None  # (N, *obs) what each copy continues from
        n = env.num_envs
        self.pending = np.zeros(n, dtype=bool)  # the next call resets the copy
        self.elapsed = np.zeros(n, dtype=np.int64)  # steps into each copy's episode
        self.ep_return = np.zeros(n, dtype=np.float64)
        self.ep_length = np.zeros(n, dtype=np.int64)

    def _restart(self, iteration: int) -> None:
        env_id = self.env.spec.id if self.env.spec is not None else type(self.env).__name__
        try:
            obs, _ = self.env.reset(seed=derive_seed(self.seed, iteration, RESETS))
        except (ValueError, TypeError, AttributeError, IndexError) as exc:
            raise guards.reset_failure(exc, env_id) from None
        guards.check_reset(obs, self.env.single_observation_space, self.env.num_envs, env_id)
        self.obs = self.to_batch(obs)
        self.pending[:] = False
        self.elapsed[:] = 0
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0

    def collect(self, policy: nn.Module, iteration: int) -> tuple[Batch, Episodes]:
        device = next(policy.parameters()).device
        draw = batch_draw(policy, self.steps, self.env.num_envs)
        run = self.begin(iteration)
        with torch.inference_mode():
            try:  # checked once the batch is in, or on a failure (pgrun.guards)
                for t in range(self.steps):
                    self.advance(run, t, draw(run.obs[t], t))
            except (RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
                raise guards.step_failure(exc, run.obs[: t + 2], run.env_id) from None
        return self.finish(run, device)

    def begin(self, iteration: int) -> _StepRun:
        """The buffers of one batch, the copies restarted where there is nothing to continue."""
        if self.obs is None:
            self._restart(iteration)
        T, N = self.steps, self.env.num_envs
        obs_buf = np.zeros((T + 1, *self.obs.shape), dtype=self.obs.dtype)
        obs_buf[0] = self.obs
        env_id = self.env.spec.id if self.env.spec is not None else type(self.env).__name__
        return _StepRun(
            obs=obs_buf,
            act=None,
            rew=np.zeros((T, N), dtype=np.float32),
            term=np.zeros((T, N), dtype=bool),
            trunc=np.zeros((T, N), dtype=bool),
            valid=np.zeros((T, N), dtype=bool),
            start=self.elapsed.copy(),
            returns=[],
            lengths=[],
            env_id=env_id,
        )

    def advance(self, run: _StepRun, t: int, act: np.ndarray, stepped: tuple | None = None) -> None:
        """Step t: the copies take the actions `act` (N, ...) drawn at run.obs[t]. `stepped`:
        what env.step(act) returned, where the caller stepped the env (pgrun.batched)."""
        if run.act is None:
            run.act = np.zeros((self.steps, *act.shape), dtype=act.dtype)
        run.act[t] = act
        obs, rew, term, trunc, _ = stepped or self._step(self.to_env(act))
        run.obs[t + 1] = self.to_batch(obs)
        live = ~self.pending  # a copy that resets on this call takes no step
        run.valid[t] = live
        run.rew[t] = np.where(live, rew, 0.0)
        run.term[t], run.trunc[t] = term & live, trunc & live
        ended = (term | trunc) & live
        self.ep_return += run.rew[t]
        self.ep_length += live
        self.elapsed += live
        if np.count_nonzero(ended):  # cheaper than ended.any() at this size
            run.returns.extend(self.ep_return[ended].tolist())
            run.lengths.extend(self.ep_length[ended].tolist())
            self.ep_return[ended], self.ep_length[ended], self.elapsed[ended] = 0, 0, 0
        self.pending = ended

    def finish(self, run: _StepRun, device: torch.device) -> tuple[Batch, Episodes]:
        """The batch of the T steps taken, and the episodes that ended in it."""
        T = self.steps
        guards.check_finite(run.obs, run.rew, run.env_id)
        self.obs = run.obs[T].copy()
        mask = run.valid.astype(np.float32)

        def batch_first(x: np.ndarray) -> torch.Tensor:  # (T, N, ...) -> (N, T, ...)
            return torch.from_numpy(np.ascontiguousarray(x.swapaxes(0, 1)))

        batch = Batch(
            obs=batch_first(run.obs[:T]),
            act=batch_first(run.act),
            rew=batch_first(run.rew),
            mask=batch_first(mask),
            terminated=batch_first(run.term),
            truncated=batch_first(run.trunc),
            final_obs=torch.zeros(0),
            start=torch.from_numpy(run.start),
        )
        next_obs = batch_first(run.obs[1:])  # the observation each step led to
        batch.final_obs = next_obs[batch.done]  # row by row, in time order
        episodes = Episodes(
            torch.tensor(run.returns, dtype=torch.float32),
            torch.tensor(run.lengths, dtype=torch.int64),
        )
        return batch.to(device), episodes

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.obs = None  # restart the copies' episodes at the next batch


def collector_from_config(cfg: Any, env: gym.vector.VectorEnv, horizon: int):
    """The collector of `rollout.name`: episodes (horizon T) or steps (rollout.steps)."""
    name = str(cfg.rollout.name)
    if name == "steps":
        return StepCollector(env, cfg.rollout.steps, cfg.seed)
    return EpisodeCollector(env, horizon, cfg.seed)
