"""What a run checks so that a batch too big for memory, an env that returns something its spaces
do not describe, or a value that stops being finite ends in one line naming the cause and the
fix, instead of a traceback from deep inside numpy or torch.

The checks stay off the rollout's hot path: the memory estimate once before training, the
layout of the observations once at reset, finiteness once per batch on the collected arrays,
and the analysis of a failure only once something has failed.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import gymnasium as gym
import numpy as np

from pgrun.config import ConfigError, Diverged, UserError


class EnvOutputError(UserError):
    """The env returned something its observation space or the gymnasium API does not allow."""


# --- memory -------------------------------------------------------------------------------------


def _item_bytes(space: gym.Space) -> int:
    """Bytes of one step of `space` in a batch (pgrun.envs.obs_converter's layout)."""
    shape = getattr(space, "shape", None) or ()
    if isinstance(space, gym.spaces.Box):
        itemsize = 1 if space.dtype == np.uint8 else 4
    elif isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        itemsize = 8
    else:
        itemsize = 4
    return itemsize * math.prod(shape)


def batch_bytes(obs_space: gym.Space, act_space: gym.Space, num_envs: int, horizon: int) -> int:
    """About how many bytes collecting one batch of N = `num_envs` episodes of up to T =
    `horizon` steps allocates: the (T + 1, N) observation and (T, N) action buffers, the
    float32 rewards and mask, each twice (the buffers, then the batch-first copy), and about
    8 bytes of per-step end flags."""
    steps = num_envs * horizon
    obs = (steps + num_envs) * _item_bytes(obs_space)
    act = steps * _item_bytes(act_space)
    return 2 * (obs + act + steps * 8) + steps * 8


def available_memory() -> int | None:
    """Bytes this process can still allocate: the system's MemAvailable, or less under a
    cgroup memory limit; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 1 << 60:
                found.append(int(limit) - int(Path(usage_file).read_text()))
        except (OSError, ValueError):
            continue
    if not found and hasattr(os, "sysconf"):
        with contextlib.suppress(OSError, ValueError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(found) if found else None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_batch_memory(env: gym.vector.VectorEnv, horizon: int) -> None:
    """Refuse (ConfigError) a batch whose buffers cannot fit in the memory available."""
    need = batch_bytes(env.single_observation_space, env.single_action_space, env.num_envs, horizon)
    free = available_memory()
    if free is not None and need > free:
        raise ConfigError(
            f"a batch of batch_episodes={env.num_envs} episodes of up to {horizon} steps "
            f"({env.single_observation_space.shape or ''} observations) needs about {_gb(need)} "
            f"for its buffers, {_gb(max(free, 0))} are available: lower batch_episodes or "
            "env.horizon"
        )


# --- env outputs --------------------------------------------------------------------------------


def _layout(space: gym.Space) -> str:
    return f"{type(space).__name__}{tuple(getattr(space, 'shape', ()) or ())}"


def check_reset(obs, space: gym.Space, num_envs: int, env_id: str) -> None:
    """The observations of `num_envs` copies from reset: an array of shape (N, *space.shape)."""
    shape = getattr(obs, "shape", None)
    want = (num_envs, *(space.shape or ()))
    dtype = getattr(obs, "dtype", None)
    if shape is None or tuple(shape) != want or dtype is None or dtype.kind == "O":
        got = "None" if obs is None else f"{type(obs).__name__} of shape {shape}"
        raise EnvOutputError(
            f"{env_id}: reset returned observations {got}, its observation_space "
            f"{_layout(space)} needs {want} for {num_envs} copies: fix the env's reset "
            "(or its observation_space)"
        )


def reset_failure(exc: BaseException, env_id: str) -> EnvOutputError:
    """The one-line error for an exception raised by the copies' reset."""
    first = " ".join(str(exc).split())[:200]
    return EnvOutputError(
        f"{env_id}: reset failed ({type(exc).__name__}: {first}); check that the env's reset "
        "returns (observation, info) with an observation of its observation_space"
    )


def step_failure(exc: BaseException, obs_buf: np.ndarray, env_id: str) -> UserError:
    """The one-line error for an exception raised while a batch was collected: a non-finite
    observation that made the policy fail (Diverged), else an env output that does not fit."""
    if obs_buf.dtype.kind == "f" and not np.isfinite(obs_buf).all():
        return non_finite("observation", obs_buf, env_id)
    first = " ".join(str(exc).split())[:200]
    return EnvOutputError(
        f"{env_id}: collecting a batch failed ({type(exc).__name__}: {first}); check that the "
        "env's step returns (observation, reward, terminated, truncated, info) with observations "
        "of its observation_space and a number as reward"
    )


FIXES = {
    "reward": "fix the env's reward (or wrap the env to clip it)",
    "observation": "fix the env's observations",
    "loss": "lower optim.lr, set optim.max_grad_norm or variant.normalize_advantages=true",
    "gradient": "lower optim.lr or set optim.max_grad_norm",
    "parameters": "lower optim.lr or set optim.max_grad_norm",
    "value loss": "lower value.lr or keep value.normalize_targets=true",
    "value gradient": "lower value.lr or set optim.max_grad_norm",
}


def non_finite(what: str, values: np.ndarray, env_id: str) -> Diverged:
    """Diverged naming the env's non-finite `what` ("reward" or "observation"): where the first
    one is in the (T, N, ...) array and the fix."""
    bad = np.argwhere(~np.isfinite(values))[0]
    value = values[tuple(bad)]
    return Diverged(
        f"non-finite {what} from the env {env_id} ({value} at step {bad[0]} of episode "
        f"{bad[1]} of the batch): {FIXES[what]}"
    )


def check_finite(obs: np.ndarray, rew: np.ndarray, env_id: str) -> None:
    """A collected batch's (T, N, ...) observations and (T, N) rewards are finite."""
    if not np.isfinite(rew).all():
        raise non_finite("reward", rew, env_id)
    if obs.dtype.kind == "f" and not np.isfinite(obs).all():
        raise non_finite("observation", obs, env_id)


def diverged(what: str, iteration: int, env_steps: int, kept: list[Path]) -> Diverged:
    """Diverged for a non-finite `what` of the update (loss, gradient, parameters, value ...),
    naming the iteration, the last good checkpoint and the fix."""
    return Diverged(
        f"non-finite {what} at iteration {iteration} ({env_steps:,} env steps); "
        + (f"the last good checkpoint is {kept[0].name}; " if kept else "")
        + FIXES.get(what, FIXES["loss"])
    )
