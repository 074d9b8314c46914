"""Learning targets: env steps and wall seconds until each preset reaches its env's target.

    python benchmarks/targets.py                          # every row, 5 seeds each
    python benchmarks/targets.py --rows cartpole          # the rows whose env or preset match
    python benchmarks/targets.py --rows humanoid --seeds 1 --max-steps 2000000
    python benchmarks/targets.py --jobs 2                 # two runs at a time
    python benchmarks/targets.py --rows lunar --seeds 2 --first-seed 3   # seeds 3 and 4
    python benchmarks/targets.py --rows humanoid --stop-at-target   # end each run at its target

Every row is one command a user can run: `pgrun experiment=<name>` (configs/experiment/) or, for
rtg_baseline, `pgrun variant=rtg_baseline env=CartPole-v1`, with `seed=<s>` added. Each run is a
subprocess in a scratch directory; its TensorBoard scalars are read back. A run reaches the
target at the first batch where the mean return of the last 5 batches (the final return's
definition, see pgrun.compare.time_to_threshold) is >= the target; the seconds are wall-clock
seconds since that run started (collection, updates and logging; not the interpreter's start).

The table gives, per row, the seeds that reached the target, the median env steps and seconds
to it over those seeds, and the median over all seeds of the best 5-batch mean return. A run
that misses the target counts as never reaching it: when fewer than half the seeds reach it,
the median is "not reached" rather than a median over the lucky seeds. Timings depend on the
machine and its load; the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgrun.compare import load_run, running_mean, time_to_threshold

PGRUN = Path(sys.executable).parent / "pgrun"


@dataclass(frozen=True)
class Row:
    env: str
    preset: str
    target: float
    args: tuple[str, ...]
    """The pgrun arguments of the row, without the seed."""

    @property
    def name(self) -> str:
        return f"{self.env} {self.preset}"


def cartpole(preset: str) -> Row:
    """rtg_baseline runs the env file's defaults (the README's first command); every other
    preset its configs/experiment/cartpole_<preset>.yaml."""
    if preset == "rtg_baseline":
        return Row("CartPole-v1", preset, 475.0, ("variant=rtg_baseline", "env=CartPole-v1"))
    return Row("CartPole-v1", preset, 475.0, (f"experiment=cartpole_{preset}",))


CARTPOLE_PRESETS = (
    *("vanilla", "rtg", "rtg_baseline", "off_policy"),  # the notes' estimators
    *("value_baseline", "gae", "ppo", "npg", "trpo"),  # beyond them
)

ROWS = (
    *(cartpole(p) for p in CARTPOLE_PRESETS),
    Row("InvertedPendulum-v5", "gae", 1000.0, ("experiment=inverted_pendulum_gae",)),
    Row("InvertedPendulum-v5", "trpo", 1000.0, ("experiment=inverted_pendulum_trpo",)),
    Row("LunarLander-v3", "gae", 180.0, ("experiment=lunar_lander_gae",)),
    Row("HalfCheetah-v5", "value_baseline", 300.0, ("experiment=half_cheetah_value_baseline",)),
    Row("Humanoid-v5", "ppo", 600.0, ("experiment=humanoid_ppo",)),
)


@dataclass
class Result:
    seed: int
    steps: float  # env steps to the target (inf: not reached)
    seconds: float
    best: float  # best 5-batch mean return
    final: float
    total_steps: int
    failure: str | None = None


def run_one(row: Row, seed: int, extra: list[str], root: Path) -> Result:
    """`pgrun <row args> seed=<seed>` in its own directory under `root`, read back."""
    run_dir = root / f"{row.preset}_{row.env}_seed{seed}".replace("/", "-")
    args = [str(PGRUN), *row.args, f"seed={seed}", "progress=false", *extra]
    args.append(f"hydra.run.dir={run_dir}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["?"]
        return Result(seed, np.inf, np.inf, np.nan, np.nan, 0, lines[-1])
    run = load_run(run_dir, root)
    steps, seconds = time_to_threshold(run, row.target)
    return Result(
        seed,
        steps,
        seconds,
        float(running_mean(run.returns).max()),
        float(run.final_return),
        int(run.steps[-1]),
    )


def median_or_none(values: list[float], n: int) -> float | None:
    """The median of `values` padded with inf to n entries; None when that median is inf."""
    padded = sorted(values) + [np.inf] * (n - len(values))
    m = statistics.median(padded)
    return None if np.isinf(m) else float(m)


def table(results: dict[Row, list[Result]]) -> str:
    lines = [
        "| env | preset | target | seeds reaching it | median env steps | median seconds "
        "| median best return | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, rs in results.items():
        reached = [r for r in rs if np.isfinite(r.steps)]
        steps = median_or_none([r.steps for r in reached], len(rs))
        secs = median_or_none([r.seconds for r in reached], len(rs))
        best = statistics.median([r.best for r in rs if np.isfinite(r.best)] or [np.nan])
        budget = max((r.total_steps for r in rs), default=0)
        cells = [
            row.env,
            row.preset,
            f"{row.target:g}",
            f"{len(reached)}/{len(rs)}",
            f"{steps:,.0f}" if steps is not None else f"not reached in {budget:,}",
            f"{secs:,.1f}" if secs is not None else "–",
            f"{best:.1f}",
            "`pgrun " + " ".join(row.args) + "`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows", nargs="*", default=[], help="keep the rows whose env or preset contain these"
    )
    parser.add_argument("--seeds", type=int, default=5, help="S seeds per row (5)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds F..F+S-1 (F = 0)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (1)")
    parser.add_argument("--max-steps", type=int, help="cap every run's total_steps")
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    parser.add_argument(
        "--stop-at-target", action="store_true", help="end each run when it reaches the target"
    )
    parser.add_argument("overrides", nargs="*", help="extra pgrun overrides for every run")
    args = parser.parse_args(argv)
    wanted = [w.lower() for w in args.rows]
    rows = [r for r in ROWS if not wanted or any(w in r.name.lower() for w in wanted)]
    if not rows:
        parser.error(f"no row matches {args.rows}: rows are {', '.join(r.name for r in ROWS)}")
    extra = list(args.overrides)
    if args.max_steps:
        extra.append(f"total_steps={args.max_steps}")

    root = args.keep or Path(tempfile.mkdtemp(prefix="pgrun-targets-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [(row, seed) for row in rows for seed in seeds]
    start = time.perf_counter()

    def one(job: tuple[Row, int]) -> Result:
        row, seed = job
        stop = [f"stop_return={row.target:g}"] if args.stop_at_target else []
        result = run_one(row, seed, extra + stop, root)
        status = result.failure or (
            f"target at {result.steps:,.0f} steps, {result.seconds:.1f} s"
            if np.isfinite(result.steps)
            else f"not reached in {result.total_steps:,} steps (best {result.best:.1f})"
        )
        print(f"{row.name} seed {seed}: {status}", file=sys.stderr, flush=True)
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(one, jobs))
    results: dict[Row, list[Result]] = {row: [] for row in rows}
    for (row, _), result in zip(jobs, done, strict=True):
        results[row].append(result)

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\n{args.seeds} seed(s) per row, {args.jobs} run(s) at a time, "
        f"{time.perf_counter() - start:.0f} s in all; load average after: {load}; "
        f"{os.cpu_count()} CPUs\n"
    )
    print(table(results))
    failures = [(row, r) for row, rs in results.items() for r in rs if r.failure]
    for row, r in failures:
        print(f"\nfailed: {row.name} seed {r.seed}: {r.failure}")
    if not args.keep:
        print(f"\nrun directories: {root}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
