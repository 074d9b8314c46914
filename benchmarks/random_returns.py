"""The return of a uniform-random policy on every env file: the 0 of the comparison's normalised
scores (the env's solved_return is the 1), stored as `env.random_return` in configs/env/.

Each env is built as a pgrun run builds it (the env file's horizon, kwargs, Atari
preprocessing); each episode i = 0..E-1 resets with seed i and draws its actions from the
action space seeded with i. Prints one line per env: the mean return over the episodes, its
standard error and the mean episode length.

    make bench-random                 # every env file (about 5 minutes on two cores)
    make bench-random ARGS="CartPole-v1 Acrobot-v1 --episodes 1000"
"""

from __future__ import annotations

import argparse
import math
import sys
from importlib import resources
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from pgrun.envs import EnvError, env_options, make_single_env


def env_files() -> dict[str, object]:
    """{env id: the `env` part of its file} for every file in configs/env/."""
    root = Path(str(resources.files("pgrun.configs") / "env"))
    out = {}
    for path in sorted(root.rglob("*.yaml")):
        node = OmegaConf.load(str(path))
        out[str(node.env.id)] = node.env
    return out


def random_returns(env_cfg, episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(E,) returns and (E,) lengths of `episodes` uniform-random episodes."""
    options = env_options(OmegaConf.merge({"horizon": None, "kwargs": {}}, env_cfg))
    env = make_single_env(str(env_cfg.id), **options)
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    for i in range(episodes):
        env.reset(seed=i)
        env.action_space.seed(i)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            returns[i] += float(reward)
            lengths[i] += 1
            done = terminated or truncated
    env.close()
    return returns, lengths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("envs", nargs="*", help="env ids (default: every env file)")
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args(argv)
    files = env_files()
    ids = args.envs or list(files)
    print(f"uniform-random policy, {args.episodes} episodes each (seeds 0..{args.episodes - 1})")
    print("| env | random return (mean ± s.e.) | mean length | env file's random_return |")
    print("|---|---|---|---|")
    for env_id in ids:
        if env_id not in files:
            print(f"{env_id}: no env file", file=sys.stderr)
            return 2
        try:
            returns, lengths = random_returns(files[env_id], args.episodes)
        except EnvError as exc:
            print(f"| {env_id} | {exc} | | |", flush=True)
            continue
        se = returns.std(ddof=1) / math.sqrt(len(returns))
        stored = files[env_id].get("random_return", None)
        print(
            f"| {env_id} | {returns.mean():.1f} ± {se:.1f} | {lengths.mean():.0f} | {stored} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
