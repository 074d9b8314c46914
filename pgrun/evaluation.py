"""Evaluation with the deterministic action, and videos of it.

Every `eval.every` iterations (and after the last one) the policy's mode (the most likely action,
or the Gaussian mean) plays M = `eval.episodes` episodes from the same M seeded starts, logged as
eval/episodic_return and eval/episodic_length. With `eval.video`, the first of those episodes is
replayed in a rendering copy of the env and saved as videos/eval_<env steps>.mp4 and handed to
the loggers as eval/video (TensorBoard shows it as an animated image, pgrun.logger).

Evaluation draws nothing from torch's RNG and steps its own env copies, so a run with evaluation
trains exactly as the same run without it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from pgrun.config import UserError
from pgrun.envs import (
    action_converter,
    env_from_config,
    env_options,
    make_single_env,
    obs_converter,
)
from pgrun.rollout import Batch, collect_episodes

log = logging.getLogger(__name__)

GIF_MAX_FRAMES = 200  # the TensorBoard animation keeps at most this many frames ...
GIF_MAX_SIDE = 200  # ... of at most this many pixels a side (the mp4 keeps everything)


def eval_seed(seed: int) -> int:
    """The seed of the evaluation episodes' starts (copy i starts from eval_seed + i): one fixed
    set per run, apart from the training batches' seeds."""
    return int(np.random.SeedSequence([seed, 0xE7A1]).generate_state(1)[0])


class Deterministic(nn.Module):
    """The policy acting with its mode: `sample(obs)` is `policy.mode(obs)`."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.mode(obs)


def evaluate(env: gym.vector.VectorEnv, policy: nn.Module, horizon: int | None, seed: int) -> Batch:
    """One episode per copy of `env` with the policy's deterministic action, from reset(seed).

    Returns the Batch (its `returns` and `lengths` are the evaluation's results)."""
    was_training = policy.training
    policy.eval()
    try:
        return collect_episodes(env, Deterministic(policy), horizon, seed=seed)
    finally:
        policy.train(was_training)


def play_episode(
    env: gym.Env, policy: nn.Module, horizon: int | None, seed: int, deterministic: bool = True
) -> Iterator[tuple[np.ndarray, float]]:
    """Play one episode in a single env made with render_mode="rgb_array", yielding
    (frame, reward so far) for the start and after each step; stops at the episode's end or
    after `horizon` steps. With the deterministic action, the same episode as copy 0 of
    `evaluate` with the same seed (its env made with per_copy_seeds=True)."""
    to_batch, to_env = obs_converter(env.observation_space), action_converter(env.action_space)
    device = next(policy.parameters()).device
    act_fn = policy.mode if deterministic else policy.sample
    obs, _ = env.reset(seed=seed)
    total = 0.0
    yield env.render(), total
    t = 0
    with torch.inference_mode():
        while horizon is None or t < horizon:
            x = torch.from_numpy(to_batch(np.asarray(obs)[None])).to(device)
            act = act_fn(x).cpu().numpy()
            obs, rew, term, trunc, _ = env.step(to_env(act)[0])
            total += float(rew)
            t += 1
            yield env.render(), total
            if term or trunc:
                break


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sides: drop a last odd row/column."""
    h, w = frame.shape[:2]
    return frame[: h - h % 2, : w - w % 2]


class Mp4Writer:
    """Frames (H, W, 3) uint8 -> an H.264 mp4, encoded as they come (PyAV)."""

    def __init__(self, path: Path, fps: float):
        av = _import_av()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        self.fps = fps
        self.stream = None
        self._av = av

    def write(self, frame: np.ndarray) -> None:
        frame = _even(np.ascontiguousarray(frame[..., :3]))
        if self.stream is None:
            from fractions import Fraction

            self.stream = self.container.add_stream(
                "libx264", rate=Fraction(self.fps).limit_denominator(1000)
            )
            self.stream.height, self.stream.width = frame.shape[:2]
            self.stream.pix_fmt = "yuv420p"
        video_frame = self._av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self.stream.encode(video_frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


def _import_av():
    try:
        import av
    except ImportError:
        raise UserError("videos need PyAV and pygame: pip install -e '.[video]'") from None
    return av


def record_video(
    env: gym.Env,
    policy: nn.Module,
    path: Path,
    horizon: int | None,
    seed: int,
    deterministic: bool = True,
) -> tuple[float, int, list[np.ndarray], float]:
    """Play one episode in `env` (render_mode="rgb_array"), writing every frame to the mp4 at
    `path`. Returns (return, length, the frames kept for an animation, their fps): at most
    GIF_MAX_FRAMES frames of at most GIF_MAX_SIDE pixels a side."""
    fps = float(env.metadata.get("render_fps") or 30)
    writer = Mp4Writer(path, fps)
    kept: list[np.ndarray] = []
    total, steps, stride = 0.0, -1, 1
    try:
        for frame, total in play_episode(env, policy, horizon, seed, deterministic):  # noqa: B007
            steps += 1
            writer.write(frame)
            if steps % stride == 0:
                side = max(1, -(-max(frame.shape[:2]) // GIF_MAX_SIDE))
                kept.append(frame[::side, ::side, :3].copy())
                if len(kept) >= GIF_MAX_FRAMES:  # keep every other frame from here on
                    kept, stride = kept[::2], stride * 2
    finally:
        writer.close()
    return total, steps, kept, fps / stride


class Evaluator:
    """Runs the evaluations of one training run (its `eval` config). Made before training
    starts, so that a missing video dependency is reported at once."""

    def __init__(self, cfg: Any, policy: nn.Module, run_dir: Path, horizon: int):
        self.every = int(cfg.eval.every)
        self.episodes = int(cfg.eval.episodes)
        self.video = bool(cfg.eval.video) and self.every > 0
        self.policy, self.run_dir, self.horizon = policy, Path(run_dir), horizon
        self.seed = eval_seed(cfg.seed)
        self.env = None
        self.render_env = None
        if self.every > 0:
            self.env = env_from_config(cfg, self.episodes, seed=None, per_copy_seeds=True)
        if self.video:
            _import_av()
            self.render_env = render_env(cfg)

    def after_iteration(self, logger: Any, iteration: int, env_steps: int, done: bool) -> None:
        """Evaluate after iteration number `iteration` (from 1) when it is due, every `every`
        iterations and at the end of training (`done`), logging to `logger` (pgrun.logger.Loggers)
        at x = `env_steps`."""
        if self.every <= 0 or (iteration % self.every and not done):
            return
        batch = evaluate(self.env, self.policy, self.horizon, self.seed)
        returns = batch.returns
        logger.log(
            {
                "eval/episodic_return": returns.mean().item(),
                "eval/episodic_return_std": returns.std(unbiased=False).item(),
                "eval/episodic_length": batch.lengths.float().mean().item(),
            },
            env_steps,
        )
        if self.render_env is not None:
            path = self.run_dir / "videos" / f"eval_{env_steps:09d}.mp4"
            _, _, frames, fps = record_video(
                self.render_env, self.policy, path, self.horizon, self.seed
            )
            logger.video("eval/video", frames, fps, env_steps)

    def close(self) -> None:
        for env in (self.env, self.render_env):
            if env is not None:
                env.close()


def render_env(cfg: Any) -> gym.Env:
    """A single copy of the config's env that renders rgb_array frames, checked to render now
    (a missing drawing library is reported before training, as one line)."""
    env = make_single_env(cfg.env.id, render_mode="rgb_array", **env_options(cfg.env))
    try:
        env.reset(seed=0)
        env.render()
    except (gym.error.DependencyNotInstalled, ImportError) as exc:
        env.close()
        reason = str(exc).split(", run ")[0].strip().rstrip(".")  # without gymnasium's own hint
        raise UserError(
            f"{cfg.env.id} cannot draw its frames ({reason}); pip install -e '.[video]'"
        ) from None
    return env
