"""`pgrun-variance RUN_DIR`: how noisy is each estimator's gradient at a run's policy?

    pgrun-variance outputs/runs/<run>                    # the built-in estimators
    pgrun-variance outputs/runs/<run> --weights my_estimators:weights

It loads the run's policy (RUN_DIR/policy.pt) and env, collects a pool of independent episodes
with pgrun.collect_episodes, splits it into B = pool / N disjoint batches of N episodes and
computes every batch's estimate g = (1/N) sum_i g_i from per-episode gradients
(pgrun.diagnostics.per_episode_grads), the weights computed inside that batch as training
would (pgrun.losses.batch_advantages). Over the B estimates of one (estimator, N):

    tr Cov g  = sum_j sample variance of coordinate j               (the noise)
    SNR       = ||E g||^2 / tr Cov g,  ||E g||^2 ~ ||mean g||^2 - tr Cov g / B   (unbiased)

The same batches serve every estimator, so the columns compare estimators on identical data.
`+-` is the standard error of tr Cov g over the B batches. The table is printed and drawn
(tr Cov and SNR against N) into RUN_DIR/variance.png, or the next free variance-<k>.png.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import time
from pathlib import Path

from pgrun import signals

# The estimators without a value network (a run's V is not in policy.pt): preset knobs.
ESTIMATORS = {
    "vanilla": {"weights": "total", "baseline": "none"},
    "rtg": {"weights": "rtg", "baseline": "none"},
    "rtg_baseline": {"weights": "rtg", "baseline": "time"},
    "time_loo": {"weights": "rtg", "baseline": "time_loo"},
}
SIZES = (1, 8, 32)


def rows(batch, lo: int, hi: int):
    """Episodes lo..hi-1 of `batch`."""
    return batch.rows(slice(lo, hi))


def batch_weights(pool, variant, n: int, gamma: float = 1.0, discount: bool = False):
    """(B n, T) float32: the weights of B = pool // n disjoint batches of n episodes, each
    computed inside its batch as training would (pgrun.losses.batch_advantages)."""
    import torch

    from pgrun.losses import batch_advantages

    b = pool.num_episodes // n
    return torch.cat(
        [
            batch_advantages(rows(pool, i * n, (i + 1) * n), variant, gamma, discount)
            for i in range(b)
        ]
    )


def batch_estimates(policy, pool, variant, n: int, gamma: float = 1.0, discount: bool = False,
                    grads=None):  # fmt: skip
    """(B, D) float64: the estimates of B = pool // n disjoint batches of n episodes.

    Args:
        policy: the policy the pool was collected with.
        pool: a Batch of independent episodes.
        variant: preset knobs (a mapping), as pgrun.losses.batch_advantages takes them.
        gamma, discount: the run's gamma and discount_from_start.
        grads: a cache of per-episode gradients by weights (a list), shared between calls:
            weights equal to earlier ones (rtg at every N, a plug-in equal to a built-in)
            reuse their gradients instead of one more backward pass per episode.
    """
    import torch

    from pgrun.diagnostics import per_episode_grads

    b = pool.num_episodes // n
    adv = batch_weights(pool, variant, n, gamma, discount)
    cache = [] if grads is None else grads
    g = next((g for w, g in cache if w.shape == adv.shape and torch.equal(w, adv)), None)
    if g is None:
        g = per_episode_grads(policy, rows(pool, 0, b * n), adv).double()
        cache.append((adv, g))
    return g.reshape(b, n, -1).mean(1)


def measure(est) -> dict[str, float]:
    """tr Cov, its standard error and the SNR of B estimates (B, D)."""
    b = est.shape[0]
    mean = est.mean(0)
    sq = (est - mean).pow(2).sum(1)  # ||g_b - mean||^2
    var = sq.sum().item() / (b - 1)
    var_se = sq.std().item() / math.sqrt(b)
    signal = mean.pow(2).sum().item() - var / b
    snr = signal / var if var > 0 else float("nan")
    return {"var": var, "var_se": var_se, "snr": snr, "batches": b}


def fmt_var(m: dict[str, float]) -> str:
    if m["var"] == 0:
        return "0 (g = 0)"
    return f"{m['var']:.3g} +- {m['var_se'] / m['var'] * 100:.0f}%"


def fmt_snr(m: dict[str, float]) -> str:
    return "undefined" if math.isnan(m["snr"]) else f"{m['snr']:.3g}"


def table(cells: dict[str, list[dict]], sizes=SIZES) -> str:
    """The markdown table: one row per estimator, tr Cov and SNR per N."""
    head = " | ".join(f"tr Cov, N={n}" for n in sizes) + " | "
    head += " | ".join(f"SNR, N={n}" for n in sizes)
    lines = [f"| estimator | {head} |", "|" + "---|" * (1 + 2 * len(sizes))]
    for name, ms in cells.items():
        var = " | ".join(fmt_var(m) for m in ms)
        snr = " | ".join(fmt_snr(m) for m in ms)
        lines.append(f"| {name} | {var} | {snr} |")
    return "\n".join(lines)


def figure(cells: dict[str, list[dict]], path: Path, title: str, sizes=SIZES) -> None:
    """tr Cov (log scale) and SNR against N, one line per estimator, written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_var, ax_snr) = plt.subplots(1, 2, figsize=(10, 4))
    for name, ms in cells.items():
        # a zero estimate (rtg_baseline at N = 1) has no place on a log scale: left out
        var = [m["var"] if m["var"] > 0 else math.nan for m in ms]
        low = [min(m["var_se"], 0.9 * v) if v > 0 else 0.0 for m, v in zip(ms, var, strict=True)]
        err = [low, [m["var_se"] for m in ms]]
        label = name.rsplit("/", 1)[-1]  # a plug-in by path: its file and function
        ax_var.errorbar(sizes, var, yerr=err, marker="o", capsize=3, label=label)
        ax_snr.plot(sizes, [m["snr"] for m in ms], marker="o", label=label)
    ax_var.set(xscale="log", yscale="log", xlabel="N (episodes per batch)", ylabel="tr Cov g")
    ax_snr.set(xscale="log", xlabel="N (episodes per batch)", ylabel="SNR = ||E g||^2 / tr Cov g")
    for ax in (ax_var, ax_snr):
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.grid(alpha=0.3)
    ax_snr.legend(fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, 120)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def free_path(run_dir: Path, stem: str = "variance") -> Path:
    """RUN_DIR/variance.png, or the first variance-<k>.png that does not exist yet."""
    path = run_dir / f"{stem}.png"
    k = 2
    while path.exists():
        path = run_dir / f"{stem}-{k}.png"
        k += 1
    return path


def fail(message: str, code: int = 2) -> None:
    print(f"pgrun-variance: error: {message}", file=sys.stderr)
    sys.exit(code)


@signals.interruptible("pgrun-variance")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pgrun-variance",
        description="tr Cov and SNR of each estimator's gradient at a run's policy, per batch "
        "size N; printed and drawn into RUN_DIR/variance.png.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory of pgrun")
    parser.add_argument("--episodes", type=int, default=1024, help="episodes in the pool (1024)")
    parser.add_argument(
        "--weights", action="append", default=[], metavar="MODULE:FUNCTION",
        help="your own weights (pgrun.plugins), measured beside the built-ins; repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="batch sizes N (default 1,8,32)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the pool's episodes")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: the tensors are small)"
    )
    parser.add_argument("--out", type=Path, default=None, help="the figure (default: RUN_DIR)")
    args = parser.parse_args(argv)
    try:
        sizes = tuple(int(x) for x in args.sizes.split(","))
    except ValueError:
        fail(f"--sizes {args.sizes}: give batch sizes as integers, e.g. 1,8,32")
    if not sizes or min(sizes) < 1:
        fail(f"--sizes {args.sizes}: every N must be >= 1")
    if args.episodes < 2 * max(sizes):
        fail(f"--episodes {args.episodes}: give at least 2 x the largest N ({2 * max(sizes)})")
    if args.out is not None and args.out.exists():
        fail(f"--out {args.out} exists; pgrun-variance does not overwrite files")
    from pgrun.config import UserError
    from pgrun.play import load_run, no_policy

    if (problem := no_policy(args.run_dir)) is not None:
        fail(problem)

    try:
        from pgrun.plugins import load

        for spec in args.weights:
            load(spec, "--weights")
        cfg, policy = load_run(args.run_dir)
        report(args, cfg, policy, sizes)
    except UserError as exc:
        fail(str(exc), exc.exit_code)


def report(args, cfg, policy, sizes) -> None:
    import torch

    from pgrun.envs import env_from_config, time_limit
    from pgrun.rollout import collect_episodes

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    env = env_from_config(cfg, num_envs=args.episodes, seed=args.seed)
    try:
        horizon = cfg.env.horizon or time_limit(env)
        torch.manual_seed(args.seed)
        pool = collect_episodes(env, policy, horizon, seed=args.seed)
    finally:
        env.close()
    estimators = {
        **ESTIMATORS,
        **{spec: {"weights": spec, "baseline": "none"} for spec in args.weights},
    }
    gamma, discount = float(cfg.gamma), bool(cfg.discount_from_start)
    grads = []  # per-episode gradients, computed once per distinct weights
    cells = {
        name: [
            measure(batch_estimates(policy, pool, knobs, n, gamma, discount, grads)) for n in sizes
        ]
        for name, knobs in estimators.items()
    }
    run = args.run_dir
    title = (
        f"{cfg.env.id}, the policy of {run.name} (variant {cfg.variant.name}); pool of "
        f"{pool.num_episodes} episodes, mean return {pool.returns.mean():.1f}, gamma {gamma:g}"
    )
    print(f"# Estimator variance: {title}")
    print()
    print(table(cells, sizes))
    print()
    batches = ", ".join(f"N={n}: {pool.num_episodes // n}" for n in sizes)
    path = args.out or free_path(run)
    figure(cells, path, title, sizes)
    print(f"# batches per cell: {batches}; {time.perf_counter() - start:.0f} s; figure: {path}")


if __name__ == "__main__":
    main()
