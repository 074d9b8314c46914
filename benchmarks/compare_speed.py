"""The comparison at the end of a sweep (pgrun.compare.compare), this tree against another git
revision, side by side in one run:

    python benchmarks/compare_speed.py --before <git revision> [--sweep DIR] [--rounds 5]

Without --sweep, it first runs `pgrun -m experiment=compare_variants hydra/launcher=joblib` (20
jobs, about a minute) into a temporary directory. Each measurement is one fresh process that
imports pgrun.compare (not timed) and then times compare() on a copy of the sweep, the imports
compare() triggers included: wall and CPU seconds. The two revisions alternate, `--rounds`
times; the table gives each side's median, the ratio after / before, and this tree's phases
(the same process, stepwise). On a machine shared with other work the figures move with its
load: read the ratio of a row, whose two sides were measured in the same minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from revisions import ROOT, checkout  # noqa: E402

COMPARE = """
import json, sys, time
from pathlib import Path
from pgrun.compare import compare
wall, cpu = time.perf_counter(), time.process_time()
compare(Path(sys.argv[1]))
print(json.dumps([time.perf_counter() - wall, time.process_time() - cpu]))
"""

# compare()'s steps one by one (the body of compare), in this tree only
PHASES = """
import json, sys, time
from pathlib import Path
import numpy as np
import pgrun.compare as c
root, out = Path(sys.argv[1]), {}
def step(name, f, *args):
    wall = time.perf_counter()
    result = f(*args)
    out[name] = time.perf_counter() - wall
    return result
runs = step("read the runs (events, yaml)", lambda: [c.load_run(p, root) for p in c.find_runs(root)])
runs += step("jobs that left no run", c.missing_runs, root, runs)
groups = c.group_runs(runs)
step("curves and intervals", lambda: [c.aggregate(g) for g in groups])
groups.sort(key=lambda g: (g.env_id, -np.nan_to_num(g.row["final_return_iqm"], nan=-np.inf)))
ranked = step("rankings (P(improvement), IQM)", c.rankings, groups)
step("comparison.png (matplotlib import included)", c.plot, groups, ranked, root / "comparison.png")
step("summary.csv, summary.md", lambda: (c.write_csv(groups, root / "summary.csv"),
     c.write_markdown(groups, ranked, [r for r in runs if not r.ok], root / "summary.md", "x")))
step("aggregate TensorBoard runs", c.write_aggregates, groups, root)
print(json.dumps(out))
"""


def run(tree: Path, code: str, sweep: Path):
    """`code` in a fresh process importing pgrun from `tree`, on a fresh copy of `sweep`."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / sweep.name
        shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("*.pt"))
        env = {**os.environ, "PYTHONPATH": str(tree)}
        done = subprocess.run(  # not run from a checkout: `-c` puts the cwd first on the path
            [sys.executable, "-c", code, str(copy)], env=env, capture_output=True, text=True,
            cwd=tmp,
        )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"compare_speed: error: {tree}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_sweep(where: Path) -> Path:
    sweep = where / "sweep"
    pgrun = str(Path(sys.executable).parent / "pgrun")
    args = ["-m", "experiment=compare_variants", "hydra/launcher=joblib"]
    print(f"running {' '.join(['pgrun', *args])} ...", file=sys.stderr, flush=True)
    subprocess.run([pgrun, *args, f"hydra.sweep.dir={sweep}"], cwd=where, check=True,
                   capture_output=True)  # fmt: skip
    return sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="the older git revision")
    parser.add_argument("--sweep", type=Path, default=None, help="a sweep directory to compare")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = args.sweep or make_sweep(Path(tmp))
        before = checkout(args.before, Path(tmp) / "before")
        trees = {"before": before, "after": ROOT}
        times: dict[str, list[list[float]]] = {"before": [], "after": []}
        phases = []
        try:
            for r in range(args.rounds):
                for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    times[side].append(run(trees[side], COMPARE, sweep))
                    print(f"round {r} {side}: {times[side][-1]}", file=sys.stderr, flush=True)
                phases.append(run(ROOT, PHASES, sweep))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                           capture_output=True)  # fmt: skip
        runs = sum(1 for _ in sweep.rglob(".hydra/overrides.yaml"))
    print(f"compare() on {runs} runs, {args.rounds} rounds, load average at the end "
          f"{os.getloadavg()[0]:.1f}; median seconds")  # fmt: skip
    print(f"| | before ({args.before}) | after | after / before |")
    print("|---|---|---|---|")
    for i, what in enumerate(("wall", "CPU")):
        b = statistics.median(t[i] for t in times["before"])
        a = statistics.median(t[i] for t in times["after"])
        print(f"| compare(), {what} | {b:.2f} | {a:.2f} | {a / b:.2f} |")
    print("\nthis tree, step by step (wall, median):\n\n| step | seconds |\n|---|---|")
    for name in phases[0]:
        print(f"| {name} | {statistics.median(p[name] for p in phases):.3f} |")


if __name__ == "__main__":
    main()
