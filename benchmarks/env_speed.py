"""Environment steps per second: pgrun training next to raw env stepping with random actions.

    python benchmarks/env_speed.py                 # CartPole-v1, HalfCheetah-v5, Humanoid-v5
    python benchmarks/env_speed.py --envs CartPole-v1 --seconds 2

For each env, on its configs/env/ defaults (N copies, horizon):

- raw, 1 env: `gym.make(id)` stepped with `action_space.sample()`, resetting at episode ends;
- raw, N envs: the vector env pgrun makes (`pgrun.make_env`, same vectorisation), stepped with
  random batched actions; env steps counted over all N copies;
- pgrun collect: `collect_episodes` with the freshly initialised policy (one batched forward per
  step), valid steps counted (copies whose episode ended still step, masked out);
- pgrun train: the whole loop (`pgrun.train`: collect, estimator, update, TensorBoard, the
  default diagnostics) on the env's config with a short budget: env steps / wall time.

Each raw and collect figure is the best of 3 windows, the one least disturbed by other load;
the load average is printed with the table, since timings on a shared machine vary.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import torch

import pgrun
from pgrun.envs import env_from_config
from pgrun.policies import policy_from_config
from pgrun.rollout import collect_episodes

DEFAULT_ENVS = ("CartPole-v1", "HalfCheetah-v5", "Humanoid-v5")


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    import pgrun.config  # noqa: F401 (registers the schema)

    with initialize_config_module("pgrun.configs", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def best_rate(measure, seconds: float, windows: int = 3) -> float:
    """The highest steps/s over `windows` windows of about `seconds` each; measure(deadline)
    returns the steps it took until the deadline."""
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        steps = measure(start + seconds)
        rates.append(steps / (time.perf_counter() - start))
    return max(rates)


def raw_single(env_id: str, seconds: float) -> float:
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)

    def measure(deadline: float) -> int:
        steps = 0
        while time.perf_counter() < deadline:
            for _ in range(100):
                _, _, term, trunc, _ = env.step(env.action_space.sample())
                if term or trunc:
                    env.reset()
            steps += 100
        return steps

    try:
        return best_rate(measure, seconds)
    finally:
        env.close()


def raw_vector(cfg, seconds: float) -> float:
    env = env_from_config(cfg, num_envs=cfg.batch_episodes, seed=0)
    env.action_space.seed(0)

    def measure(deadline: float) -> int:
        steps = 0
        while time.perf_counter() < deadline:
            for _ in range(20):
                env.step(env.action_space.sample())  # gymnasium autoresets finished copies
            steps += 20 * env.num_envs
        return steps

    try:
        return best_rate(measure, seconds)
    finally:
        env.close()


def collect(cfg, seconds: float) -> float:
    env = env_from_config(cfg, num_envs=cfg.batch_episodes, seed=0)
    torch.manual_seed(0)
    policy = policy_from_config(env, cfg)
    seed = iter(range(10**6))

    def measure(deadline: float) -> int:
        steps = 0
        while time.perf_counter() < deadline:
            steps += collect_episodes(env, policy, cfg.env.horizon, seed=next(seed)).num_steps
        return steps

    try:
        return best_rate(measure, seconds)
    finally:
        env.close()


def train(cfg) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        result = pgrun.train(cfg, Path(run_dir))
    return result["env_steps"] / result["wall_seconds"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS))
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a window (3)")
    parser.add_argument(
        "--train-steps", type=int, default=20000, help="pgrun train budget per env (20000)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)
    rows = []
    for env_id in args.envs:
        cfg = compose(f"env={env_id}", f"total_steps={args.train_steps}", "progress=false")
        print(f"{env_id} ...", file=sys.stderr)
        rows.append(
            (
                env_id,
                cfg.batch_episodes,
                raw_single(env_id, args.seconds),
                raw_vector(cfg, args.seconds),
                collect(cfg, args.seconds),
                train(cfg),
            )
        )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nenv steps/s (load average after: {load}; {os.cpu_count()} CPUs, torch threads 1)\n")
    print("| env | N | raw, 1 env | raw, N envs | pgrun collect | pgrun train |")
    print("|---|---|---|---|---|---|")
    for env_id, n, *rates in rows:
        print(f"| {env_id} | {n} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |")
    print("\nraw: random actions; collect: the policy's batched forward each step; train: the")
    print("whole loop (collect, estimator, update, logging) on the env file's config.")


if __name__ == "__main__":
    main()
