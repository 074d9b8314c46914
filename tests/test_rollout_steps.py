"""rollout=steps end to end: the real `pgrun` command with fixed-length rollouts, PPO as the
standard implementations run it, its resume (the copies' episodes restart), its horizon."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch
from conftest import CHART_TAGS, comparable_scalars

PGRUN = str(Path(sys.executable).parent / "pgrun")
BASE = [
    "variant=ppo",
    "rollout=steps",
    "rollout.steps=32",
    "batch_episodes=4",
    "gamma=0.99",
    "checkpoint.every=2",
    "progress=false",
]


def pgrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PGRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ppo_with_fixed_length_rollouts_logs_its_charts(tmp_path):
    done = pgrun(*BASE, "total_steps=1000", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    scalars = comparable_scalars(tmp_path / "run")
    for tag in (*CHART_TAGS[:3], "losses/value", "stats/approx_kl", "stats/clip_fraction"):
        if tag != "charts/SPS":
            assert tag in scalars, tag
    steps = [s for s, _ in scalars["losses/policy"]]
    # every batch: 4 copies x 32 calls, less the calls that reset a copy (CartPole's own
    # vectorised class resets on the call after an episode's end)
    assert all(0 < b - a <= 4 * 32 for a, b in zip([0, *steps[:-1]], steps, strict=True))
    lengths = [v for _, v in scalars["charts/episodic_length"]]
    assert max(lengths) > 32 or len(lengths) < len(steps), "episodes outlive a rollout"


def test_resume_restarts_the_copies_episodes_and_is_reproducible(tmp_path):
    """An interrupted rollout=steps run resumes: the scalars before the checkpoint are those of
    the uninterrupted run, and the resumed part (whose copies restart their episodes, seeded
    from the iteration) is the same every time it is resumed from that checkpoint."""
    done = pgrun(*BASE, "total_steps=500", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first = comparable_scalars(tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "again")
    ends = []
    for run in ("run", "again"):
        done = pgrun(f"resume={run}", "total_steps=1000", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        ends.append(torch.load(tmp_path / run / "policy.pt", weights_only=False)["state_dict"])
    longer = comparable_scalars(tmp_path / "run")
    assert longer["losses/policy"][: len(first["losses/policy"])] == first["losses/policy"]
    assert longer["losses/policy"][-1][0] >= 1000
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])


def test_the_horizon_is_the_copies_time_limit(tmp_path):
    """env.horizon is every copy's time limit: with rollout=steps no episode outlives it, and
    a typo'd rollout name is refused with one line."""
    done = pgrun(*BASE, "env.horizon=20", "total_steps=500", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lengths = [v for _, v in comparable_scalars(tmp_path / "run")["charts/episodic_length"]]
    assert lengths and max(lengths) <= 20
    done = pgrun(*BASE, "rollout.name=step", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("pgrun: error: rollout.name='step'")
    assert "Traceback" not in done.stderr
