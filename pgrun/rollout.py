"""Collecting a batch: N episodes from reset, stepped in lockstep, cut at the horizon T."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from pgrun import guards
from pgrun.cartpole import fast_step
from pgrun.draw import batch_draw
from pgrun.envs import action_converter, obs_converter, time_limit


def last_valid_step(mask: torch.Tensor) -> torch.Tensor:
    """(N, T) bool: 1 at each row's last valid step (mask (N, T) float32)."""
    valid = mask > 0
    return valid & ~torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], 1)


@dataclass
class Batch:
    """N rows of T_b steps, masked; a row holds one episode or several (per-step boundaries).

    The notes' batch (pgrun.rollout.collect_episodes) is N episodes from reset, one per row,
    padded to the longest one (T_b <= T steps). A row of fixed-length rollouts holds the
    episodes one copy of the env ran through in T_b steps, the first maybe begun in an earlier
    batch and the last maybe going on in the next one.

    Attributes:
        obs: (N, T_b, obs_dim) float32; s_t of row i (zeros on padding). Other
            observation spaces keep the layout of pgrun.envs.batch_obs: uint8 frames
            (N, T_b, *shape), Discrete (N, T_b) int64, MultiDiscrete (N, T_b, k) int64.
        act: (N, T_b) int64 for Discrete actions, (N, T_b, act_dim) float32 for Box; the
            sampled a_t (before any clipping to the action bounds), zero on padding.
            MultiDiscrete: (N, T_b, k) int64; MultiBinary: (N, T_b, n) float32.
        rew: (N, T_b) float32; r_t, zero on padding.
        mask: (N, T_b) float32; 1 where the row holds step t, 0 on padding.
        terminated: (N, T_b) bool; step t ended its episode in a terminal state.
        truncated: (N, T_b) bool; step t ended its episode by a time limit or the horizon T.
        final_obs: (K, obs_dim) float32 (or the layout of obs); the observation after each of
            the K done steps (see `done`), in the order of done.nonzero(): row by row, in time
            order. In the notes' batch K = N, one per row.
        start: (N,) int64; the time within its episode of each row's first step (0 where the
            row begins with a reset).
    """

    obs: torch.Tensor
    act: torch.Tensor
    rew: torch.Tensor
    mask: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor
    start: torch.Tensor

    @classmethod
    def from_episodes(
        cls,
        obs: torch.Tensor,
        act: torch.Tensor,
        rew: torch.Tensor,
        mask: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
        final_obs: torch.Tensor,
    ) -> Batch:
        """The notes' batch from per-episode flags: row i is one episode from reset, its
        terminated_i / truncated_i ((N,) bool) on its last valid step, final_obs (N, ...)."""
        end = last_valid_step(mask)
        return cls(
            obs,
            act,
            rew,
            mask,
            end & terminated.bool()[:, None],
            end & truncated.bool()[:, None],
            final_obs,
            torch.zeros(mask.shape[0], dtype=torch.int64, device=mask.device),
        )

    @property
    def num_episodes(self) -> int:
        """N, the rows (the episodes of the notes' batch)."""
        return self.rew.shape[0]

    @functools.cached_property
    def done(self) -> torch.Tensor:
        """(N, T_b) bool: step t is the last of its episode in the batch (terminated,
        truncated, or the row's last valid step, where an episode going on is cut). Computed
        once per batch: the flags and the mask are not to be changed in place."""
        return self.terminated | self.truncated | last_valid_step(self.mask)

    def rows(self, idx: torch.Tensor | slice) -> Batch:
        """The rows `idx` ((K,) int64 or a slice) of the batch, with their final observations."""
        if isinstance(idx, slice):
            idx = torch.arange(self.num_episodes, device=self.rew.device)[idx]
        counts = self.done.sum(1)
        offsets = counts.cumsum(0) - counts
        final = torch.cat(
            [torch.arange(int(offsets[i]), int(offsets[i] + counts[i])) for i in idx.tolist()]
            or [torch.zeros(0, dtype=torch.long)]
        ).to(self.final_obs.device)
        fields = {f: getattr(self, f)[idx] for f in self.__dataclass_fields__}
        fields["final_obs"] = self.final_obs[final]
        return Batch(**fields)

    @property
    def lengths(self) -> torch.Tensor:
        """(N,) int64 episode lengths."""
        return self.mask.sum(1).long()

    @property
    def returns(self) -> torch.Tensor:
        """(N,) float32 undiscounted episode returns, sum_t r_t."""
        return self.rew.sum(1)

    @property
    def num_steps(self) -> int:
        """Environment steps in the batch, sum_i len_i."""
        return int(self.mask.sum().item())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def _running_copies_step(env: gym.vector.VectorEnv, obs: np.ndarray, ended: np.ndarray):
    """For a gymnasium SyncVectorEnv, a replacement for env.step that steps only the copies
    whose first episode is still running (`ended` is read at every call); None for other envs.

    The results of a finished copy are masked out of the batch, and in a SyncVectorEnv (MuJoCo,
    Box2D, Atari: one Python env per copy) stepping it costs as much as a running one: with
    episodes of uneven length that was a third of the simulation time. The vectorised numpy
    envs (CartPole's own vector class) step every copy in one go, so they keep env.step. The
    running copies get exactly the actions and steps they would get from env.step; the next
    batch's env.reset resets every copy.

    Args:
        env: the vector env; obs: its observations from reset, (N, *obs_shape).
    """
    if type(env) is not gym.vector.SyncVectorEnv:
        return None
    copies = env.envs
    obs = np.array(obs)  # the latest observation of each copy, updated in place
    rew = np.zeros(len(copies), dtype=np.float64)
    term = np.zeros(len(copies), dtype=bool)
    trunc = np.zeros(len(copies), dtype=bool)

    def step(actions: np.ndarray):
        for i in np.flatnonzero(~ended):
            obs[i], rew[i], term[i], trunc[i], _ = copies[i].step(actions[i])
        return obs, rew, term, trunc, {}

    return step


def collect_episodes(
    env: gym.vector.VectorEnv,
    policy: nn.Module,
    horizon: int | None = None,
    seed: int | None = None,
) -> Batch:
    """Run `policy` in the N copies of `env` from reset until every episode has ended or T steps.

    One batched forward pass per time step samples all N actions, until every copy's first
    episode has ended; a copy whose episode has ended waits (a SyncVectorEnv's copy is not
    stepped, a vectorised env steps it anyway and those steps are masked out). Box actions are
    clipped to the bounds when stepping the env (pgrun.envs.action_converter); the batch keeps
    the sampled action, whose log-probability the loss uses.

    Args:
        env: vector env of N copies.
        policy: module with `policy(obs) -> Distribution` (and `act(obs) -> actions`, see
            pgrun.policies).
        horizon: T; None takes the env's time limit.
        seed: seeds this batch's reset (copy i gets seed + i); None continues the env's RNG.
    """
    T = horizon if horizon is not None else time_limit(env)
    if T is None:
        raise ValueError("the env has no time limit: set a horizon (env.horizon)")
    N = env.num_envs
    to_batch = obs_converter(env.single_observation_space)
    to_env = action_converter(env.single_action_space)
    device = next(policy.parameters()).device
    draw = batch_draw(policy, T, N)

    env_id = env.spec.id if env.spec is not None else type(env).__name__
    try:
        obs, _ = env.reset(seed=seed)
    except (ValueError, TypeError, AttributeError, IndexError) as exc:  # copies' obs do not fit
        raise guards.reset_failure(exc, env_id) from None
    guards.check_reset(obs, env.single_observation_space, N, env_id)
    ended = np.zeros(N, dtype=bool)  # copy i's first episode has ended
    # CartPole's fast step skips the autoresets: the steps after a copy's end are masked out
    step = _running_copies_step(env, obs, ended) or fast_step(env, autoreset=False) or env.step
    obs = to_batch(obs)
    # Step t reads obs_buf[t] and writes obs_buf[t + 1], the observation it led to: for an
    # episode that ends at step t that is its final observation (the env resets the copy on
    # its next step). Nothing else is decided per step: the episode boundaries come after.
    obs_buf = np.zeros((T + 1, *obs.shape), dtype=obs.dtype)
    obs_buf[0] = obs
    act_buf = None  # allocated from the first action's dtype and shape
    rew_buf = np.zeros((T, N), dtype=np.float32)
    term_buf = np.zeros((T, N), dtype=bool)
    done_buf = np.zeros((T, N), dtype=bool)

    t = 0
    # What the env returns is checked once the batch is collected (guards.check_finite), or
    # when something fails (guards.step_failure): nothing is checked per step.
    with torch.inference_mode():
        try:
            for t in range(T):  # noqa: B007 (t is the batch length below)
                act = draw(obs_buf[t], t)
                if act_buf is None:
                    act_buf = np.zeros((T, *act.shape), dtype=act.dtype)
                act_buf[t] = act
                obs, rew_buf[t], term_buf[t], trunc, _ = step(to_env(act))
                obs_buf[t + 1] = to_batch(obs)
                np.logical_or(term_buf[t], trunc, out=done_buf[t])
                ended |= done_buf[t]
                if np.count_nonzero(ended) == N:  # (the cheapest test of all at this size)
                    break
        except (RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise guards.step_failure(exc, obs_buf[: t + 2], env_id) from None
    batch = episodes_batch(obs_buf, act_buf, rew_buf, term_buf, done_buf, ended, t + 1, env_id)
    return batch.to(device)


def episodes_batch(
    obs_buf: np.ndarray,
    act_buf: np.ndarray,
    rew_buf: np.ndarray,
    term_buf: np.ndarray,
    done_buf: np.ndarray,
    ended: np.ndarray,
    T_b: int,
    env_id: str,
) -> Batch:
    """The notes' batch from the buffers of N copies stepped T_b times from reset (the end of
    collect_episodes; pgrun.batched builds each seed's batch with it): episode i is copy i's
    steps up to its first end, else up to the horizon (a truncation). The buffers are
    time-first and are masked in place.

    Args:
        obs_buf: (T + 1, N, *obs), obs_buf[t + 1] the observation step t led to.
        act_buf: (T, N, ...); rew_buf: (T, N) float32; term_buf, done_buf: (T, N) bool.
        ended: (N,) bool, copy i's first episode ended within the T_b steps.
    """
    guards.check_finite(obs_buf[: T_b + 1], rew_buf[:T_b], env_id)
    N = ended.shape[0]
    end = np.where(ended, done_buf[:T_b].argmax(0), T_b - 1)
    copies = np.arange(N)
    at_end = np.zeros((T_b, N), dtype=bool)
    at_end[end, copies] = True
    terminated = at_end & (term_buf[:T_b] & ended)
    truncated = at_end & ~terminated
    final_obs = obs_buf[end + 1, copies]
    mask = (np.arange(T_b)[:, None] <= end).astype(np.float32)  # (T_b, N)

    def zero_after_end(x: np.ndarray) -> np.ndarray:  # (T, N, ...) -> its first T_b steps, masked
        x = x[:T_b]
        x *= mask.reshape(mask.shape + (1,) * (x.ndim - 2)).astype(x.dtype)
        return x

    obs_buf, rew_buf, act_buf = (
        zero_after_end(obs_buf),
        zero_after_end(rew_buf),
        zero_after_end(act_buf),
    )

    def batch_first(x: np.ndarray) -> torch.Tensor:  # (T_b, N, ...) -> (N, T_b, ...)
        return torch.from_numpy(np.ascontiguousarray(x.swapaxes(0, 1)))

    return Batch(
        obs=batch_first(obs_buf),
        act=batch_first(act_buf),
        rew=batch_first(rew_buf),
        mask=batch_first(mask),
        terminated=batch_first(terminated),
        truncated=batch_first(truncated),
        final_obs=torch.from_numpy(final_obs),
        start=torch.zeros(N, dtype=torch.int64),
    )
