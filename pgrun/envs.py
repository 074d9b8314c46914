"""Vectorised environments: N copies of one gymnasium env, stepped in lockstep.

Besides the registered ids, an env can come from the user's own module in gymnasium's
``module:EnvId`` form (the module registers ``EnvId`` when imported, or defines a class of that
name). Families that need an optional dependency (Box2D, MuJoCo, Atari) are checked up front, so
a missing one is a one-line :class:`EnvError` naming the extra to install.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib
import importlib.util
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from pgrun.config import UserError


class EnvError(UserError):
    """An environment that cannot be made or used; the message is one line naming the fix."""


def _headless_gl() -> None:
    """Pick an off-screen OpenGL backend for MuJoCo's renderer unless the user chose one: EGL,
    else OSMesa (MuJoCo reads MUJOCO_GL when it is first imported)."""
    if "MUJOCO_GL" in os.environ:
        return
    for backend, lib in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(lib):
            os.environ["MUJOCO_GL"] = backend
            return


_headless_gl()

# Entry-point prefix -> (module that must import, what to call it, the pgrun extra).
_FAMILIES = {
    "gymnasium.envs.box2d": ("Box2D", "Box2D", "box2d"),
    "gymnasium.envs.mujoco": ("mujoco", "MuJoCo", "mujoco"),
    "ale_py": ("ale_py", "ale-py", "atari"),
}


def _one_line(exc: BaseException) -> str:
    """`Type: message` on one line."""
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())


@contextlib.contextmanager
def _creating(env_id: str) -> Iterator[None]:
    """Turn a failure of the env's constructor into one EnvError line."""
    try:
        yield
    except TypeError as exc:
        raise EnvError(f"env.kwargs do not fit {env_id!r}: {exc}") from None
    except gym.error.DependencyNotInstalled as exc:
        raise EnvError(f"{env_id}: a dependency is missing ({exc})") from None
    except Exception as exc:  # the env's own constructor fails (e.g. a user env's bug)
        raise EnvError(f"creating {env_id} raised {_one_line(exc)}") from None


def _needs(env_id: str, what: str, extra: str) -> EnvError:
    return EnvError(f"{env_id} needs {what}: pip install -e '.[{extra}]'")


def _register_ale(env_id: str) -> None:
    """Atari ids live in ale-py's ALE/ namespace, registered when ale-py is imported."""
    try:
        ale_py = importlib.import_module("ale_py")
    except ImportError:
        raise _needs(env_id, "ale-py (Atari)", "atari") from None
    gym.register_envs(ale_py)


def _import_module_of(env_id: str) -> str:
    """`module:EnvId` (gymnasium's form for an env registered by importing `module`): import the
    module and return the id to look up. `module:ClassName`, a gym.Env subclass the module
    defines without registering it, is registered here as `module.ClassName`."""
    module_name, _, name = env_id.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise EnvError(
            f"env.id={env_id!r}: cannot import {module_name!r} ({exc}); put the folder that "
            "holds it on PYTHONPATH or install it"
        ) from None
    except Exception as exc:  # the user's module fails while it is imported
        raise EnvError(
            f"env.id={env_id!r}: importing {module_name!r} raised {_one_line(exc)}; fix the module"
        ) from None
    if name in gym.registry:
        return name
    cls = getattr(module, name, None)
    if isinstance(cls, type) and issubclass(cls, gym.Env):
        registered = f"{module_name}.{name}"
        if registered not in gym.registry:
            gym.register(id=registered, entry_point=cls)
        return registered
    return name


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of `env_id`, or EnvError naming the problem.

    `env_id` is a registered id (CartPole-v1, ALE/Pong-v5, ...) or `module:EnvId`, which imports
    `module` first (your own env; see _import_module_of). The optional dependency of the env's
    family is checked here.
    """
    lookup = env_id
    if env_id.startswith("ALE/"):
        _register_ale(env_id)
    elif ":" in env_id:
        lookup = _import_module_of(env_id)
    try:
        spec = gym.spec(lookup)
    except gym.error.Error as exc:
        raise EnvError(
            f"env.id={env_id!r} is not a registered gymnasium environment ({exc}); "
            "pick an id from gymnasium.registry or a configs/env/ file, or give module:EnvId"
        ) from None
    entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
    for prefix, (module, what, extra) in _FAMILIES.items():
        if entry.startswith(prefix):
            try:
                importlib.import_module(module)
            except ImportError:
                raise _needs(env_id, what, extra) from None
            if module == "mujoco":
                _log_mujoco_warnings()
    return spec


_mujoco_seen: set[str] = set()


def _log_mujoco_warnings() -> None:
    """MuJoCo's warnings into pgrun's log, each message once per process. MuJoCo's own handler
    prints every one to stderr and appends it to MUJOCO_LOG.TXT in the working directory, a
    file outside the run; and gymnasium's MuJoCo models use a compiler attribute MuJoCo 4
    deprecates, a warning per copy that the user can do nothing about (logged at debug level).
    A handler set before (the user's own) is kept."""
    import mujoco

    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_mujoco_warning)


def _mujoco_warning(message: str) -> None:
    message = " ".join(str(message).split())
    if message in _mujoco_seen:
        return
    _mujoco_seen.add(message)
    level = logging.DEBUG if "is deprecated" in message else logging.WARNING
    logging.getLogger("pgrun.envs").log(level, f"MuJoCo: {message}")


def env_wrappers(
    atari_preprocessing: bool = False, frame_stack: int = 1, horizon: int | None = None
) -> list[Callable[[gym.Env], gym.Env]]:
    """The wrappers every copy gets, in order: Atari preprocessing (no-op starts, frame skip 4,
    84x84 grayscale), a stack of the last `frame_stack` observations, and (with Atari
    preprocessing) the horizon as a time limit counted in agent steps."""
    wrappers: list[Callable[[gym.Env], gym.Env]] = []
    if atari_preprocessing:
        wrappers.append(lambda e: gym.wrappers.AtariPreprocessing(e, frame_skip=4, noop_max=30))
    if frame_stack > 1:
        wrappers.append(lambda e: gym.wrappers.FrameStackObservation(e, frame_stack))
    if atari_preprocessing and horizon is not None:
        wrappers.append(lambda e: gym.wrappers.TimeLimit(e, horizon))
    return wrappers


def _make_kwargs(
    kwargs: Mapping[str, Any], atari_preprocessing: bool, horizon: int | None
) -> dict[str, Any]:
    """The constructor kwargs: with Atari preprocessing the base env must not skip frames itself,
    and its time limit counts agent steps in a wrapper (see env_wrappers)."""
    kwargs = dict(kwargs)
    if atari_preprocessing:
        if importlib.util.find_spec("cv2") is None:  # AtariPreprocessing resizes with OpenCV
            raise EnvError("env.atari_preprocessing needs OpenCV: pip install -e '.[atari]'")
        kwargs.setdefault("frameskip", 1)
    elif horizon is not None:
        kwargs["max_episode_steps"] = horizon
    return kwargs


BACKENDS = ("gymnasium", "envpool", "auto")


def resolve_backend(backend: str, env_id: str, vectorization: str = "auto") -> str:
    """ "gymnasium" or "envpool" for env.backend=`backend`: auto is envpool where the envpool extra
    is installed and takes `env_id` (pgrun.envpool_env) and no gymnasium vectorization is asked
    for, else gymnasium."""
    if backend not in BACKENDS:
        raise EnvError(f"env.backend={backend!r}: use one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if vectorization != "auto":  # sync, async, vector_entry_point: gymnasium's ways
        return "gymnasium"
    from pgrun.envpool_env import envpool_task

    try:
        envpool_task(env_id)
    except EnvError:
        return "gymnasium"
    return "envpool" if importlib.util.find_spec("envpool") is not None else "gymnasium"


def make_env(
    env_id: str,
    num_envs: int,
    seed: int | None = None,
    *,
    backend: str = "gymnasium",
    num_threads: int = 1,
    vectorization: str = "auto",
    horizon: int | None = None,
    atari_preprocessing: bool = False,
    frame_stack: int = 1,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """N copies of `env_id` in one vector env (gymnasium.make_vec, or envpool's pool with
    backend="envpool"), seeded if `seed` is given.

    Args:
        env_id: a registered gymnasium id, or `module:EnvId` (see env_spec).
        num_envs: N, the number of copies stepped in lockstep.
        seed: seeds the copies' first reset (copy i gets seed + i) and the action space.
        backend: "gymnasium", "envpool" (pgrun.envpool_env: CartPole, the MuJoCo v5 set and
            Atari in envpool's C++ pool) or "auto" (envpool where it takes the id, see
            resolve_backend).
        num_threads: envpool's worker threads (0: envpool's choice); the gymnasium backend
            ignores it.
        vectorization: "auto" (the env's own vectorised class where it has one, else "sync"),
            "vector_entry_point", "sync" or "async" (one process per copy); the envpool
            backend takes only "auto".
        horizon: if given, the time limit of every copy (truncation after `horizon` steps).
        atari_preprocessing: gymnasium's AtariPreprocessing on every copy (envpool: its own).
        frame_stack: observations are the last `frame_stack` frames (1: no stacking).
        kwargs: passed on to the environment's constructor.
    """
    if resolve_backend(backend, env_id, vectorization) == "envpool":
        if vectorization != "auto":
            raise EnvError(
                f"env.vectorization={vectorization} is gymnasium's; env.backend=envpool steps "
                "its copies in its own thread pool (env.num_threads): use env.vectorization=auto"
            )
        from pgrun.envpool_env import EnvpoolVectorEnv

        return EnvpoolVectorEnv(
            env_id,
            num_envs,
            seed,
            num_threads=num_threads,
            horizon=horizon,
            atari_preprocessing=atari_preprocessing,
            frame_stack=frame_stack,
            **kwargs,
        )
    spec = env_spec(env_id)
    wrappers = env_wrappers(atari_preprocessing, frame_stack, horizon)
    if vectorization == "auto":
        has_own = spec.vector_entry_point is not None and not wrappers
        vectorization = "vector_entry_point" if has_own else "sync"
    if vectorization == "vector_entry_point":
        if spec.vector_entry_point is None:
            raise EnvError(
                f"env.vectorization=vector_entry_point: {env_id} has no vectorised class of its "
                "own; use auto, sync or async"
            )
        if wrappers:
            raise EnvError(
                "env.vectorization=vector_entry_point cannot wrap the copies (Atari "
                "preprocessing, frame stacking): use auto, sync or async"
            )
    extra = {"wrappers": wrappers} if wrappers else {}
    make_kwargs = _make_kwargs(kwargs, atari_preprocessing, horizon)
    with _creating(env_id):
        env = gym.make_vec(
            spec, num_envs=num_envs, vectorization_mode=vectorization, **extra, **make_kwargs
        )
    if seed is not None:
        from pgrun import guards

        try:
            env.reset(seed=seed)
        except (ValueError, TypeError, AttributeError, IndexError) as exc:
            env.close()
            raise guards.reset_failure(exc, env_id) from None
        env.action_space.seed(seed)
    return env


def make_single_env(
    env_id: str,
    *,
    render_mode: str | None = None,
    horizon: int | None = None,
    atari_preprocessing: bool = False,
    frame_stack: int = 1,
    **kwargs: Any,
) -> gym.Env:
    """One copy of the env exactly as make_env builds each of its copies, e.g. with
    render_mode="rgb_array" to record a video of a policy trained on make_env's copies."""
    spec = env_spec(env_id)
    if render_mode is not None and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws off-screen, quietly
    make_kwargs = _make_kwargs(kwargs, atari_preprocessing, horizon)
    with _creating(env_id):
        env = gym.make(spec, render_mode=render_mode, **make_kwargs)
    for wrap in env_wrappers(atari_preprocessing, frame_stack, horizon):
        env = wrap(env)
    return env


def env_options(env_cfg: Any) -> dict[str, Any]:
    """The make_env / make_single_env keyword arguments held in the `env` part of a config."""
    return {
        "horizon": env_cfg.horizon,
        "atari_preprocessing": bool(env_cfg.get("atari_preprocessing", False)),
        "frame_stack": int(env_cfg.get("frame_stack", 1)),
        **dict(env_cfg.kwargs),
    }


def env_from_config(
    cfg: Any, num_envs: int, seed: int | None, *, per_copy_seeds: bool = False
) -> gym.vector.VectorEnv:
    """make_env for a composed pgrun config (its `env` part).

    `per_copy_seeds`: copy i must start as a single env reset with seed + i does (evaluation,
    videos), which an env's own vectorised class need not do: use sync instead of it. (An
    envpool pool's copy i starts from seed + i of envpool's own envs.)
    """
    vectorization = cfg.env.vectorization
    vectorization = str(getattr(vectorization, "value", vectorization))
    asked = cfg.env.get("backend", "gymnasium")
    asked = str(getattr(asked, "value", asked))
    backend = resolve_backend(asked, cfg.env.id, vectorization)
    if asked == "auto" and not per_copy_seeds:  # said once, for the run's env
        logging.getLogger("pgrun").info(f"env.backend=auto: {backend} for {cfg.env.id}")
    if (
        per_copy_seeds
        and backend == "gymnasium"
        and vectorization in ("auto", "vector_entry_point")
    ):
        vectorization = "sync"
    return make_env(
        cfg.env.id,
        num_envs,
        seed,
        backend=backend,
        num_threads=int(cfg.env.get("num_threads", 1)),
        vectorization=vectorization,
        **env_options(cfg.env),
    )


def time_limit(env: gym.vector.VectorEnv) -> int | None:
    """The per-episode step limit of the env's copies, or None when it has none."""
    spec = env.spec
    if spec is None:
        return None
    return spec.kwargs.get("max_episode_steps", spec.max_episode_steps)


# How a batch stores observations and hands actions to the env, per space.


def is_image(space: gym.Space) -> bool:
    """A Box of uint8 values: frames (H, W[, C]) or (C, H, W), or e.g. Atari RAM; kept as uint8
    in a batch and scaled to [0, 1] by the policy."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8


def obs_converter(space: gym.Space) -> Callable[[np.ndarray], np.ndarray]:
    """The function that puts observations of B copies, (B, *space.shape), in the layout a
    batch keeps them: uint8 Box: (B, *shape) uint8; other Box: (B, obs_dim) float32
    (flattened); Discrete: (B,) int64 index from 0; MultiDiscrete: (B, k) int64 from 0;
    MultiBinary: (B, n) float32. Made once per rollout: it runs at every step."""
    if is_image(space):
        return lambda obs: obs
    if isinstance(space, gym.spaces.Box):
        dim = math.prod(space.shape)
        return lambda obs: obs.reshape(obs.shape[0], dim).astype(np.float32, copy=False)
    if isinstance(space, gym.spaces.Discrete):
        start = int(space.start)
        return lambda obs: (np.asarray(obs) - start).astype(np.int64).reshape(-1)
    if isinstance(space, gym.spaces.MultiDiscrete):
        start = space.start
        return lambda obs: (np.asarray(obs) - start).astype(np.int64).reshape(len(obs), -1)
    if isinstance(space, gym.spaces.MultiBinary):
        return lambda obs: np.asarray(obs).astype(np.float32).reshape(len(obs), -1)
    raise EnvError(f"observation space {space} is not supported")


def action_converter(space: gym.Space) -> Callable[[np.ndarray], np.ndarray]:
    """The function that turns sampled actions (B, ...) into what the env takes: Box clipped
    to its bounds, Discrete and MultiDiscrete shifted by the space's start, MultiBinary int8."""
    if isinstance(space, gym.spaces.Box):
        low, high = space.low, space.high
        return lambda act: np.clip(act, low, high)
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        start = space.start
        return (lambda act: act + start) if np.any(start) else (lambda act: act)
    if isinstance(space, gym.spaces.MultiBinary):
        return lambda act: act.astype(np.int8)
    return lambda act: act


def batch_obs(obs: np.ndarray, space: gym.Space) -> np.ndarray:
    """obs_converter(space)(obs), for a one-off conversion."""
    return obs_converter(space)(obs)


def env_action(act: np.ndarray, space: gym.Space) -> np.ndarray:
    """action_converter(space)(act), for a one-off conversion."""
    return action_converter(space)(act)
