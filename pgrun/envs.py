"""Vectorised environments: N copies of one gymnasium env, stepped in lockstep."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from pgrun.config import UserError


class EnvError(UserError):
    """An environment that cannot be made or used; the message is one line naming the fix."""


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of `env_id`, or EnvError naming the problem."""
    try:
        return gym.spec(env_id)
    except gym.error.Error as exc:
        raise EnvError(
            f"env.id={env_id!r} is not a registered gymnasium environment ({exc}); "
            "pick an id from gymnasium.registry or a configs/env/ file"
        ) from None


def make_env(
    env_id: str,
    num_envs: int,
    seed: int | None = None,
    *,
    vectorization: str = "auto",
    horizon: int | None = None,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """N copies of `env_id` in one vector env (gymnasium.make_vec), seeded if `seed` is given.

    Args:
        env_id: any registered gymnasium id.
        num_envs: N, the number of copies stepped in lockstep.
        seed: seeds the copies' first reset (copy i gets seed + i) and the action space.
        vectorization: "auto" (the env's own vectorised class where it has one, else "sync"),
            "vector_entry_point", "sync" or "async".
        horizon: if given, the time limit of every copy (truncation after `horizon` steps).
        kwargs: passed on to the environment's constructor.
    """
    spec = env_spec(env_id)
    if vectorization == "auto":
        vectorization = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    if horizon is not None:
        kwargs = {**kwargs, "max_episode_steps": horizon}
    try:
        env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization, **kwargs)
    except TypeError as exc:
        raise EnvError(f"env.kwargs do not fit {env_id!r}: {exc}") from None
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def time_limit(env: gym.vector.VectorEnv) -> int | None:
    """The per-episode step limit of the env's copies, or None when it has none."""
    spec = env.spec
    if spec is None:
        return None
    return spec.kwargs.get("max_episode_steps", spec.max_episode_steps)
