"""`pgrun-play RUN_DIR`: load the policy a run saved, play it, print its returns, and optionally
record a video. What a user does after training.

By default it plays the run's evaluation episodes (the same seeded starts, the deterministic
action), so its mean return is the run's last eval/episodic_return when the counts match.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pgrun import signals

POLICY_FILE = "policy.pt"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pgrun-play",
        description="Play the policy a pgrun run saved (RUN_DIR/policy.pt) and print its returns.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory of pgrun")
    parser.add_argument("-n", "--episodes", type=int, default=10, help="episodes to play (10)")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the first episode's start (episode i: seed + i); "
        "default: the run's evaluation seed",
    )
    parser.add_argument(
        "--sample",
        action="store_true",
        help="sample actions from the policy instead of taking the deterministic one",
    )
    parser.add_argument(
        "--video", type=Path, default=None, metavar="MP4", help="record the first episode here"
    )
    parser.add_argument(
        "--horizon", type=int, default=None, help="steps per episode at most (default: the run's)"
    )
    return parser.parse_args(argv)


def fail(message: str) -> None:
    print(f"pgrun-play: error: {message}", file=sys.stderr)
    sys.exit(2)


def no_policy(run_dir: Path) -> str | None:
    """Why `run_dir` has no saved policy to load, or None when it has one."""
    if (run_dir / POLICY_FILE).is_file():
        return None
    if not run_dir.exists():
        return f"{run_dir} does not exist: give a run's directory"
    return f"{run_dir} has no {POLICY_FILE} (a run writes it when it finishes)"


def load_run(run_dir: Path):
    """(config, policy) of a finished run: the resolved config and the policy with its weights
    (and observation statistics), read with torch.load(weights_only=True)."""
    path = run_dir / POLICY_FILE
    if (problem := no_policy(run_dir)) is not None:
        fail(problem)
    import torch
    from omegaconf import OmegaConf

    from pgrun.envs import make_single_env
    from pgrun.policies import policy_from_config

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        cfg = OmegaConf.create(saved["config"])
        cfg.env.id  # noqa: B018 (a policy.pt of pgrun names its env)
    except Exception as exc:  # truncated, garbage, or not pgrun's
        fail(f"{path} is not a readable pgrun policy ({_reason(exc)}); play a finished run's")
    env = make_single_env(cfg.env.id, **_options(cfg))
    try:
        policy = policy_from_config(env, cfg)
        policy.load_state_dict(saved["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        fail(f"{path} does not fit the policy its config describes ({_reason(exc)})")
    finally:
        env.close()
    policy.eval()
    return cfg, policy


def _reason(exc: BaseException) -> str:
    """`Type: message`, on one line, at most 160 characters of it."""
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())[:160]


def _options(cfg) -> dict:
    from pgrun.envs import env_options

    return env_options(cfg.env)


def play(argv: list[str] | None = None) -> list[float]:
    """The command's work; returns the episodes' returns."""
    args = parse_args(argv)
    if args.episodes < 1:
        fail(f"--episodes={args.episodes}: use an integer >= 1")
    if args.seed is not None and args.seed < 0:
        fail(f"--seed={args.seed}: use an integer >= 0")
    if args.horizon is not None and args.horizon < 1:
        fail(f"--horizon={args.horizon}: use an integer >= 1, or leave it out for the run's")
    if args.run_dir.name == POLICY_FILE and args.run_dir.is_file():  # the file itself, given
        args.run_dir = args.run_dir.parent
    import numpy as np
    import torch

    from pgrun.envs import env_from_config, time_limit
    from pgrun.evaluation import _import_av, eval_seed, evaluate, record_video, render_env
    from pgrun.rollout import collect_episodes

    torch.set_num_threads(1)
    cfg, policy = load_run(args.run_dir)
    if args.horizon is not None:
        cfg.env.horizon = args.horizon  # the env copies' time limit too
    seed = eval_seed(cfg.seed) if args.seed is None else args.seed
    renv = None
    if args.video is not None:  # a missing video dependency is told before anything plays
        _import_av()
        renv = render_env(cfg)
    env = env_from_config(cfg, num_envs=args.episodes, seed=None, per_copy_seeds=True)
    try:
        horizon = cfg.env.horizon or time_limit(env)
        if args.sample:
            torch.manual_seed(seed)
            batch = collect_episodes(env, policy, horizon, seed=seed)
        else:
            batch = evaluate(env, policy, horizon, seed)
    finally:
        env.close()
    returns = batch.returns.tolist()
    for i, (ret, length) in enumerate(zip(returns, batch.lengths.tolist(), strict=True)):
        print(f"episode {i}: return {ret:.2f}, length {length}")
    how = "sampled" if args.sample else "deterministic"
    where = (
        f"the run's evaluation starts: seeds {seed}+i, derived from seed={cfg.seed}"
        if args.seed is None
        else f"starts seeded {seed}+i"
    )
    print(
        f"{cfg.env.id}: mean return {np.mean(returns):.2f} +- {np.std(returns):.2f} over "
        f"{len(returns)} episode{'s' * (len(returns) != 1)} ({how} actions, {where})"
    )
    if renv is not None:
        try:
            if args.sample:
                torch.manual_seed(seed)
            ret, length, _, _ = record_video(
                renv, policy, args.video, horizon, seed, deterministic=not args.sample
            )
        finally:
            renv.close()
        print(f"video ({how} actions, return {ret:.2f}, {length} steps): {args.video}")
    return returns


@signals.interruptible("pgrun-play")
def main(argv: list[str] | None = None) -> None:
    """The `pgrun-play` console script."""
    from pgrun.config import UserError

    try:
        play(argv)
    except UserError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
