"""Measured variance of each estimator's gradient on CartPole-v1, at two policies.

    python benchmarks/variance.py            # or: make bench-variance

The computation is pgrun-variance's (pgrun/variance.py), which does the same for any run's
policy and env. For the initial policy of `pgrun seed=0` and for the same run trained briefly (pgrun.train,
default config, a few thousand environment steps), it collects a pool of independent episodes
with pgrun.collect_episodes, splits it into B = pool / N disjoint batches of N episodes, and
computes every batch's estimate g = (1/N) sum_i g_i from per-episode gradients
(pgrun.diagnostics.per_episode_grads) with the variant's weights computed
inside that batch (pgrun.losses.batch_advantages). Over the B estimates of one (variant, N):

    tr Cov g  = sum_j sample variance of coordinate j               (the noise)
    SNR       = ||E g||^2 / tr Cov g,  ||E g||^2 ~ ||mean g||^2 - tr Cov g / B   (unbiased)

The same batches serve every variant, so the columns compare estimators on identical data.
`+-` is the standard error of tr Cov g over the B batches.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

import pgrun
from pgrun.variance import ESTIMATORS as VARIANTS
from pgrun.variance import SIZES, batch_estimates, fmt_snr, fmt_var, measure

ENV = "CartPole-v1"
# The briefly trained policy of the README's table: the default config with Adam lr 0.03 (the
# env file's learning rate when the table was measured; it is 0.05 now).
TRAIN_OVERRIDES = ["optim.lr=0.03"]


def trained_policy(seed: int, steps: int, overrides: list[str]):
    """The initial policy of `pgrun seed=<seed>` and the policy after `steps` env steps of it."""
    args = [f"env={ENV}", f"seed={seed}", f"total_steps={steps}", "progress=false",
            "diagnostics.every=0", *overrides]  # fmt: skip
    with initialize_config_module("pgrun.configs", version_base="1.3"):
        cfg = compose("config", overrides=args)
    env = pgrun.make_env(ENV, num_envs=1, seed=seed)
    torch.manual_seed(seed)  # as pgrun.train does before making its policy
    kwargs = {"hidden_sizes": list(cfg.policy.hidden_sizes), "activation": cfg.policy.activation}
    initial = pgrun.make_policy(env, **kwargs)
    with tempfile.TemporaryDirectory() as run_dir:
        summary = pgrun.train(cfg, Path(run_dir))
        state = torch.load(Path(run_dir) / "policy.pt", weights_only=False)["state_dict"]
    trained = pgrun.make_policy(env, **kwargs)
    trained.load_state_dict(state)
    return cfg, initial, trained, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=4096, help="episodes in each pool")
    parser.add_argument("--train-steps", type=int, default=15000, help="env steps of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    cfg, initial, trained, summary = trained_policy(args.seed, args.train_steps, TRAIN_OVERRIDES)
    torch.set_num_threads(args.threads)  # pgrun.train set its own (config `threads`)
    horizon = cfg.env.horizon
    print(
        f"# Estimator variance on {ENV}, pool of {args.episodes} episodes per policy, horizon "
        f"{horizon}. Policy: MLP {list(cfg.policy.hidden_sizes)} {cfg.policy.activation}, "
        f"initial = `pgrun seed={args.seed}` before training, trained = after "
        f"`pgrun seed={args.seed} total_steps={args.train_steps} {' '.join(TRAIN_OVERRIDES)}` "
        f"({cfg.variant.name}, N={cfg.batch_episodes}, {cfg.optim.name.value} lr={cfg.optim.lr})"
    )
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# command: python benchmarks/variance.py {shown}".rstrip())
    print()
    rows = []
    for label, policy, pool_seed in (
        ("initial", initial, 10_000 + args.seed),
        (f"trained {summary['env_steps']} steps", trained, 20_000 + args.seed),
    ):
        env = pgrun.make_env(ENV, num_envs=args.episodes, seed=pool_seed)
        torch.manual_seed(pool_seed)
        pool = pgrun.collect_episodes(env, policy, horizon=horizon, seed=pool_seed)
        env.close()
        ret = pool.returns
        label = f"{label} (return {ret.mean():.1f})"
        for name, variant in VARIANTS.items():
            cells = [measure(batch_estimates(policy, pool, variant, n)) for n in SIZES]
            rows.append((label, name, cells))

    head = (
        " | ".join(f"tr Cov, N={n}" for n in SIZES)
        + " | "
        + " | ".join(f"SNR, N={n}" for n in SIZES)
    )
    print(f"| policy | estimator | {head} |")
    print("|" + "---|" * (2 + 2 * len(SIZES)))
    for label, name, cells in rows:
        var = " | ".join(fmt_var(c) for c in cells)
        snr = " | ".join(fmt_snr(c) for c in cells)
        print(f"| {label} | {name} | {var} | {snr} |")
    print()
    batches = ", ".join(f"N={n}: {args.episodes // n}" for n in SIZES)
    print(f"# batches per cell: {batches}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
