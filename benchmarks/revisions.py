"""pgrun at two revisions, measured side by side in one run: is the newer one slower?

    python benchmarks/revisions.py --before <git revision> [--after <git revision>] [--rounds 3]

Each revision is checked out into a temporary git worktree and imported from there (PYTHONPATH
ahead of the installed pgrun). Every workload runs in a fresh process, the two revisions
alternating, `--rounds` times; the table gives each side's median and the ratio after / before.
On a machine shared with other work the figures move with its load; the two sides of a row
were measured in the same minutes, so their ratio is what to read.

Workloads (CartPole-v1 unless named, torch on one thread):
  train           a whole rtg_baseline run, N = 16, 30k env steps: env steps / training second
  collect+update  untrained policy, lr 0, N = 16: collect_episodes + advantages + the on-policy
                  step, valid env steps / second over 5 s (the worst case of row 2 of bench.py)
  halfcheetah     collect_episodes on HalfCheetah-v5, N = 16: env steps / second over 5 s
  ppo episodes    experiment=cartpole_ppo, 20k env steps: env steps / training second
  ppo steps       experiment=cartpole_ppo_steps (rollout=steps), 20k env steps, where the
                  revision has it
  group           one group of K = 8 rtg_baseline seeds at N = 16 (pgrun.batched.train_group),
                  8k env steps each, either collector: env steps / second with the build and
                  the files, as row 6 of bench.py measures it
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TRAIN = """
import json, sys, tempfile
from hydra import compose, initialize_config_module
from pgrun.trainer import train
with initialize_config_module(config_module="pgrun.configs", version_base="1.3"):
    cfg = compose(config_name="config", overrides=sys.argv[1:] + ["progress=false"])
out = train(cfg, tempfile.mkdtemp())
print(json.dumps(out["env_steps"] / out["wall_seconds"]))
"""

COLLECT = """
import json, time, torch
import pgrun
from pgrun.losses import batch_advantages
from pgrun.optim import make_optimizer
try:
    from pgrun.update_rules import GradientStep
    step = lambda p, o, b, a: GradientStep().step(p, o, b, a)
except ImportError:
    from pgrun.trainer import update
    step = lambda p, o, b, a: update(p, o, b, a, 1)
torch.set_num_threads(1); torch.manual_seed(0)
env = pgrun.make_env("CartPole-v1", num_envs=16, seed=0)
policy = pgrun.make_policy(env)
opt = make_optimizer("adam", policy.parameters(), 0.0)
seed, steps, start = 0, 0, time.perf_counter()
while time.perf_counter() - start < 5.0:
    batch = pgrun.collect_episodes(env, policy, horizon=500, seed=seed)
    step(policy, opt, batch, batch_advantages(batch, "rtg_baseline", 1.0))
    seed += 1; steps += batch.num_steps
print(json.dumps(steps / (time.perf_counter() - start)))
"""

CHEETAH = """
import json, time, torch
import pgrun
torch.set_num_threads(1); torch.manual_seed(0)
env = pgrun.make_env("HalfCheetah-v5", num_envs=16, seed=0)
policy = pgrun.make_policy(env)
seed, steps, start = 0, 0, time.perf_counter()
while time.perf_counter() - start < 5.0:
    steps += pgrun.collect_episodes(env, policy, horizon=200, seed=seed).num_steps
    seed += 1
print(json.dumps(steps / (time.perf_counter() - start)))
"""

GROUP = """
import json, sys, tempfile, time, torch
from pathlib import Path
from hydra import compose, initialize_config_module
from pgrun.batched import Job, train_group
torch.set_num_threads(1)
root, jobs = Path(tempfile.mkdtemp()), []
with initialize_config_module(config_module="pgrun.configs", version_base="1.3"):
    for seed in range(8):
        cfg = compose(config_name="config", overrides=sys.argv[1:] + [
            "progress=false", "logger=[csv]", "diagnostics.every=0", f"seed={seed}"])
        (root / str(seed)).mkdir()
        jobs.append(Job(cfg, root / str(seed)))
start = time.perf_counter()
steps = sum(r["env_steps"] for r in train_group(jobs))
print(json.dumps(steps / (time.perf_counter() - start)))
"""

WORKLOADS = {
    "train (rtg_baseline)": (TRAIN, ["variant=rtg_baseline", "total_steps=30000"]),
    "collect+update, untrained": (COLLECT, []),
    "halfcheetah collect": (CHEETAH, []),
    "ppo, rollout=episodes": (TRAIN, ["experiment=cartpole_ppo", "total_steps=20000"]),
    "ppo, rollout=steps": (TRAIN, ["experiment=cartpole_ppo_steps", "total_steps=20000"]),
    "group, rollout=episodes": (GROUP, ["variant=rtg_baseline", "total_steps=8000"]),
    "group, rollout=steps": (
        GROUP,
        ["variant=rtg_baseline", "rollout=steps", "total_steps=8000"],
    ),
}


def checkout(revision: str, where: Path) -> Path:
    """A worktree of `revision` whose configs import as pgrun.configs (PYTHONPATH first)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), revision],
        check=True,
        capture_output=True,
    )
    (where / "pgrun" / "configs").symlink_to("../configs")
    return where


def measure(tree: Path, code: str, args: list[str]) -> float | None:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, cwd=tree
    )
    if done.returncode != 0:
        return None  # e.g. a preset the revision does not have
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="the older git revision")
    parser.add_argument("--after", default=None, help="the newer one (default: this tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", default=None, help="workload names separated by ';' (names hold commas)"
    )
    args = parser.parse_args()
    wanted = [w.strip() for w in (args.only or "").split(";") if w.strip()]
    unknown = [w for w in wanted if w not in WORKLOADS]
    if unknown:
        parser.error(f"--only: no workload {unknown[0]!r}; the workloads: {'; '.join(WORKLOADS)}")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": checkout(args.before, Path(tmp) / "before")}
        trees["after"] = checkout(args.after, Path(tmp) / "after") if args.after else ROOT
        names = [n for n in WORKLOADS if not wanted or n in wanted]
        results: dict[str, dict[str, list[float]]] = {n: {"before": [], "after": []} for n in names}
        try:
            for r in range(args.rounds):
                for name in names:
                    for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
                        value = measure(trees[side], *WORKLOADS[name])
                        if value is not None:
                            results[name][side].append(value)
                        print(f"round {r} {name} {side}: {value}", file=sys.stderr, flush=True)
        finally:
            for side in ("before", "after"):
                if trees[side] != ROOT:
                    subprocess.run(
                        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees[side])],
                        capture_output=True,
                    )
    print(f"{args.rounds} rounds, load average at the end {os.getloadavg()[0]:.1f}; env steps/s")
    print("| workload | before | after | after / before |")
    print("|---|---|---|---|")
    for name, sides in results.items():
        b = statistics.median(sides["before"]) if sides["before"] else None
        a = statistics.median(sides["after"]) if sides["after"] else None
        ratio = f"{a / b:.2f}" if a and b else "n/a"
        cell = lambda x: f"{x:,.0f}" if x else "n/a"  # noqa: E731
        print(f"| {name} | {cell(b)} | {cell(a)} | {ratio} |")


if __name__ == "__main__":
    main()
