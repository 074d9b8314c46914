"""env.backend=envpool: envpool's C++ vector envs behind the vector-env interface the collectors use.

envpool steps N copies of an env in C++ on a pool of `num_threads` threads. :class:`EnvpoolVectorEnv`
presents it as a gymnasium vector env: ``reset(seed=...) -> (obs, info)``,
``step(actions) -> (obs, reward, terminated, truncated, info)`` with terminated and truncated kept
apart, and the same next-step auto-reset as gymnasium's vector envs (the step that ends an episode
returns its final observation; the copy's next step resets it, with reward 0, and ignores the
action). The ids it takes, and what they become in envpool:

    CartPole-v0, CartPole-v1            the same ids (time limit: env.horizon or 200 / 500)
    the MuJoCo v5 set (Hopper-v5, ...)  the same ids; env.kwargs such as ctrl_cost_weight are
                                        passed on under gymnasium's names
    ALE/<Game>-v5                       <Game>-v5 with envpool's own preprocessing, set up as
                                        pgrun's gymnasium pipeline (AtariPreprocessing, a stack of
                                        env.frame_stack frames): no-op starts (30), frame skip 4,
                                        max-pool of the last two frames, 84x84 gray with OpenCV's
                                        area resize, sticky actions 0.25 (ALE v5's default), no fire
                                        reset, no life-loss episodes, unclipped rewards. The time
                                        limit counts agent steps.

Seeding: copy i of a pool made with seed s starts from seed s + i, as in pgrun's gymnasium vector
envs (envpool's seeds are int32: s is taken modulo 2^31 - N). envpool fixes its seeds when the pool is made, so ``reset(seed=s)`` makes a fresh pool
seeded s (about 1 ms for CartPole, 30 ms for HalfCheetah x 16, 1 s for 16 Atari copies, which
load their ROMs); ``reset()`` without a seed continues the pool's own streams. A batch is then a
function of its seed alone, and a resumed run collects exactly what the uninterrupted one did.

This module imports envpool when a pool is first made; without the `envpool` extra that is a
one-line EnvError.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import warnings
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np

from pgrun.envs import EnvError

MUJOCO_V5 = (
    "Ant",
    "HalfCheetah",
    "Hopper",
    "Humanoid",
    "HumanoidStandup",
    "InvertedDoublePendulum",
    "InvertedPendulum",
    "Pusher",
    "Reacher",
    "Swimmer",
    "Walker2d",
)
CLASSIC = {"CartPole-v0": 200, "CartPole-v1": 500}  # id -> gymnasium's time limit
_ATARI = re.compile(r"^ALE/([A-Za-z0-9]+)-v5$")

# envpool's Atari options that reproduce pgrun's gymnasium pipeline (ALE v5 +
# AtariPreprocessing(frame_skip=4, noop_max=30) + FrameStackObservation).
ATARI_DEFAULTS = {
    "repeat_action_probability": 0.25,
    "use_fire_reset": False,
    "episodic_life": False,
    "reward_clip": False,
    "noop_max": 30,
    "frame_skip": 4,
    "img_height": 84,
    "img_width": 84,
    "gray_scale": True,
    "use_inter_area_resize": True,
}
SUPPORTED = "CartPole-v0/v1, the MuJoCo v5 set (" + ", ".join(MUJOCO_V5) + ") and ALE/<Game>-v5"


def envpool_task(env_id: str) -> tuple[str, str]:
    """(envpool's id, family) for a pgrun env id; family is "classic", "mujoco" or "atari".
    Raises EnvError (one line) for an id the envpool backend does not take."""
    if env_id in CLASSIC:
        return env_id, "classic"
    name, _, version = env_id.partition("-")
    if version == "v5" and name in MUJOCO_V5:
        return env_id, "mujoco"
    match = _ATARI.match(env_id)
    if match:
        return f"{match.group(1)}-v5", "atari"
    raise EnvError(
        f"env.backend=envpool: {env_id} is not one of its envs ({SUPPORTED}); "
        "use env.backend=gymnasium"
    )


def _import_envpool() -> Any:
    try:
        return importlib.import_module("envpool")
    except ImportError:
        raise EnvError("env.backend=envpool needs envpool: pip install -e '.[envpool]'") from None


def envpool_kwargs(
    env_id: str,
    *,
    horizon: int | None = None,
    atari_preprocessing: bool = False,
    frame_stack: int = 1,
    kwargs: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """envpool's task id and make() options for a pgrun env and its env options (see the module
    docstring); an option envpool cannot honour is a one-line EnvError."""
    task, family = envpool_task(env_id)
    options = dict(kwargs or {})
    if family == "atari":
        if not atari_preprocessing:
            raise EnvError(
                f"env.backend=envpool preprocesses {env_id}'s frames itself (no-op starts, frame "
                "skip 4, 84x84 gray): set env.atari_preprocessing=true, or use "
                "env.backend=gymnasium for raw frames"
            )
        for key in ("frameskip", "obs_type"):  # ALE's own names, fixed by the preprocessing
            if key in options:
                raise EnvError(
                    f"env.backend=envpool: env.kwargs.{key} is fixed by envpool's Atari "
                    "preprocessing; drop it or use env.backend=gymnasium"
                )
        options = {**ATARI_DEFAULTS, **options, "stack_num": frame_stack}
    else:
        if atari_preprocessing:
            raise EnvError(f"env.atari_preprocessing=true applies to Atari ids, not {env_id}")
        if frame_stack > 1:
            raise EnvError(
                f"env.backend=envpool stacks frames of Atari envs only; {env_id} with "
                "env.frame_stack > 1 needs env.backend=gymnasium"
            )
    if horizon is not None:
        options["max_episode_steps"] = horizon
    return task, options


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide gymnasium's warning about envpool's float64 space bounds held in float32 Boxes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*precision lowered", category=UserWarning)
        yield


class EnvpoolVectorEnv(gym.vector.VectorEnv):
    """N copies of one env in an envpool pool, as a gymnasium vector env (see the module docstring).

    Observations (N, *obs_shape) and rewards (N,) are envpool's arrays; info is {} (envpool's
    per-step info is not used by pgrun). `spec` is a gymnasium EnvSpec carrying the id and the
    time limit, as pgrun.envs.time_limit reads it.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int | None = None,
        *,
        num_threads: int = 1,
        horizon: int | None = None,
        atari_preprocessing: bool = False,
        frame_stack: int = 1,
        **kwargs: Any,
    ):
        if num_threads < 0:
            raise EnvError(f"env.num_threads={num_threads}: use an integer >= 0 (0: envpool's)")
        # the id and options first: envpool's import takes seconds before a refusal otherwise
        self._task, self._options = envpool_kwargs(
            env_id,
            horizon=horizon,
            atari_preprocessing=atari_preprocessing,
            frame_stack=frame_stack,
            kwargs=kwargs,
        )
        self._envpool = _import_envpool()
        self.env_id, self.num_envs, self.num_threads = env_id, int(num_envs), int(num_threads)
        self._pool = None
        self._seed = 0 if seed is None else int(seed)
        self._make(self._seed)
        limit = int(self._pool.config["max_episode_steps"])
        self.spec = gym.envs.registration.EnvSpec(
            id=env_id, entry_point="envpool", max_episode_steps=limit
        )
        with _quiet():
            self.single_observation_space = self._pool.observation_space
            self.single_action_space = self._pool.action_space
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, self.num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        if seed is not None:
            self.action_space.seed(seed)

    def _make(self, seed: int) -> None:
        """A fresh pool whose copy i starts from seed + i (envpool's seeds are int32: the seed
        is taken modulo 2^31 - N, which leaves every seed below 2^31 - N as it is)."""
        seed %= 2**31 - self.num_envs
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        try:
            with _quiet():
                self._pool = self._envpool.make_gymnasium(
                    self._task,
                    num_envs=self.num_envs,
                    batch_size=self.num_envs,
                    num_threads=self.num_threads,
                    seed=seed,
                    **self._options,
                )
        except TypeError as exc:  # an option envpool does not know
            unknown = re.search(r"keyword argument '(\w+)'", str(exc))
            name = unknown.group(1) if unknown else "?"
            raise EnvError(
                f"env.backend=envpool: {self.env_id} has no option {name!r} (env.kwargs.{name}); "
                "drop it or use env.backend=gymnasium"
            ) from None
        except (ValueError, RuntimeError, AssertionError) as exc:
            message = " ".join(str(exc).split())
            raise EnvError(f"env.backend=envpool: making {self.env_id} failed: {message}") from None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset every copy: with `seed`, a fresh pool whose copy i starts from seed + i; without,
        the next episodes of the pool's own streams. -> (obs (N, *obs_shape), {})."""
        if options:
            raise EnvError("env.backend=envpool: reset options are not supported")
        if seed is not None:
            self._seed = int(seed)
            self._make(self._seed)
        with _quiet():  # a fresh pool builds its spaces on its first reset
            obs, _ = self._pool.reset()
        return obs, {}

    def step(self, actions: np.ndarray):
        """One step of every copy. actions: (N, *act_shape) -> (obs, reward (N,) float,
        terminated (N,) bool, truncated (N,) bool, {})."""
        obs, rew, terminated, truncated, _ = self._pool.step(actions)
        return obs, rew, terminated, truncated, {}

    def close(self, **kwargs: Any) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __repr__(self) -> str:
        return (
            f"EnvpoolVectorEnv({self.env_id}, num_envs={self.num_envs}, threads={self.num_threads})"
        )
