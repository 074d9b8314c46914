"""Checkpoints and resume: an interrupted run, resumed, logs what the uninterrupted run logs.

Every test runs the real `pgrun` command. CartPole with small batches keeps each run to a few
seconds; `checkpoint.every=2` makes checkpoints frequent enough to kill between them.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import comparable_scalars

PGRUN = str(Path(sys.executable).parent / "pgrun")
BASE = ["batch_episodes=8", "total_steps=12000", "checkpoint.every=2", "progress=false"]


def pgrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PGRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def same_series(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for tag in a:
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
        for (_, x), (_, y) in zip(a[tag], b[tag], strict=True):
            assert x == y or (math.isnan(x) and math.isnan(y)), (tag, x, y)


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint-*.pt"))


def start_and_wait(run_dir: Path, cwd: Path, n_checkpoints: int) -> subprocess.Popen:
    """Start a run and return once it has written `n_checkpoints` checkpoint files in total
    (the newest name tells how many iterations are saved)."""
    proc = subprocess.Popen(
        [PGRUN, *BASE, f"hydra.run.dir={run_dir}"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = checkpoints(run_dir)
        if done and int(done[-1].stem.split("-")[1]) >= 2 * n_checkpoints:
            return proc
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended before its checkpoint {n_checkpoints}: {proc.stderr.read()}"
            )
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint within 120 s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run's scalars."""
    cwd = tmp_path_factory.mktemp("reference")
    done = pgrun(*BASE, "hydra.run.dir=run", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return comparable_scalars(cwd / "run")


def test_sigkill_then_resume_is_bit_exact(tmp_path, reference):
    run = tmp_path / "run"
    proc = start_and_wait(run, tmp_path, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert pgrun(f"resume={run}", cwd=tmp_path).returncode == 0
    same_series(comparable_scalars(run), reference)


def test_kill_during_checkpoint_write_and_corrupt_latest_fall_back(tmp_path, reference):
    """A kill during a checkpoint write leaves a partial temporary file beside the whole ones
    (the write goes to a temporary file that is renamed when complete); a damaged disk can
    also truncate the newest checkpoint. Both states are made by hand here after a SIGKILL:
    resume ignores the temporary file, reports the unreadable checkpoint, falls back to the
    previous one, and still logs the reference series exactly."""
    run = tmp_path / "run"
    proc = start_and_wait(run, tmp_path, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    previous, newest = checkpoints(run)[-2:]
    partial = newest.with_name(f"checkpoint-{int(newest.stem.split('-')[1]) + 2:08d}.pt.tmp")
    partial.write_bytes(newest.read_bytes()[:300])
    newest.write_bytes(newest.read_bytes()[:200])

    done = pgrun(f"resume={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{newest.name} is unreadable" in done.stdout + done.stderr
    assert f"falling back to {previous.name}" in done.stdout + done.stderr
    same_series(comparable_scalars(run), reference)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, reference, sig, code):
    run = tmp_path / "run"
    proc = start_and_wait(run, tmp_path, 1)
    saved = len(checkpoints(run))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"pgrun resume={run.name}" in err or f"pgrun resume={run}" in err
    assert "Traceback" not in err
    if sig == signal.SIGINT:  # the run goes on from the checkpoint written at the signal
        assert pgrun(f"resume={run}", cwd=tmp_path).returncode == 0
        same_series(comparable_scalars(run), reference)
    else:
        assert len(checkpoints(run)) >= min(saved + 1, 2)


def test_resume_can_extend_the_budget(tmp_path):
    done = pgrun(*BASE, "total_steps=3000", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first = comparable_scalars(tmp_path / "run")["charts/episodic_return"]
    done = pgrun("resume=run", "total_steps=6000", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    longer = comparable_scalars(tmp_path / "run")["charts/episodic_return"]
    assert longer[: len(first)] == first and longer[-1][0] >= 6000
    # the original record of the run is kept; the resume's own goes beside it
    assert (tmp_path / "run" / ".hydra" / "config.yaml").read_text().count("total_steps: 3000") == 1


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    done = pgrun(
        "env=Pendulum-v1", "optim.name=sgd", "optim.lr=1e30", "total_steps=20000",
        "checkpoint.every=1", "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgrun: error: non-finite"), done.stderr
    assert "iteration" in lines[0]
    for path in checkpoints(tmp_path / "run"):  # what was saved is finite
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(t).all() for t in state["policy"].values())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A short finished run, copied by the tests that alter it."""
    cwd = tmp_path_factory.mktemp("finished")
    done = pgrun(*BASE, "total_steps=1000", "hydra.run.dir=run", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def test_resuming_a_finished_run_says_so_and_writes_nothing(tmp_path, run_copy):
    """`pgrun resume=<finished run>` at a total_steps it has reached: one line that it had
    finished and how to train it on, exit 0, and the directory as it was (no resume record,
    no events file, no checkpoint)."""

    def files() -> dict[str, bytes]:
        paths = (p for p in run_copy.rglob("*") if p.is_file() and p.name != "pgrun.log")
        return {str(p.relative_to(run_copy)): p.read_bytes() for p in paths}

    before = files()
    for budget, extra in ((1000, []), (100, ["total_steps=100"])):
        done = pgrun("resume=run", *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        (line,) = done.stdout.strip().splitlines()
        said = re.fullmatch(
            rf"run had finished \(([\d,]+) env steps, total_steps={budget}\): nothing to train; "
            r"pgrun resume=run total_steps=(\d+) trains it on",
            line,
        )
        assert said, line
        assert files() == before
    steps = int(said.group(1).replace(",", ""))
    assert steps >= 1000 and int(said.group(2)) == 2 * steps
    done = pgrun("resume=run", f"total_steps={said.group(2)}", cwd=tmp_path)  # as the line says
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout and files() != before, done.stdout


def test_a_checkpoint_that_needs_code_is_refused(tmp_path, run_copy):
    for path in checkpoints(tmp_path / "run"):
        path.unlink()
    # a pickle that would call a function when loaded
    torch.save({"policy": shutil.rmtree}, tmp_path / "run" / "checkpoint-00000009.pt")
    done = pgrun("resume=run", cwd=tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr.startswith("pgrun: error: no readable checkpoint")
        and len(done.stderr.strip().splitlines()) == 1
    ), done.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["resume=nowhere"], "resume=nowhere: no such directory"),
        (["resume=."], "holds runs but is neither a run nor a grid sweep"),  # run/ is a run
        (["compare", "run"], "the command is pgrun-compare"),
        (["resume=run", "seed=4"], "drop seed=4"),
        (["resume=run", "variant=rtg"], "drop variant=rtg"),
        (["-m", "resume=run"], "drop -m"),
    ],
)
def test_resume_refuses_what_would_change_the_experiment(tmp_path, run_copy, args, says):
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    done = pgrun(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    assert not (tmp_path / "nowhere").exists()


def test_resume_without_checkpoint_is_refused(tmp_path, run_copy):
    for path in checkpoints(tmp_path / "run"):
        os.remove(path)
    done = pgrun("resume=run", cwd=tmp_path)
    assert done.returncode == 2 and "no checkpoint" in done.stderr


def test_resume_of_the_sweeps_parent_names_one_to_resume(tmp_path):
    """`pgrun resume=outputs/multirun` (the sweeps' parent, not a sweep): one line naming how
    many sweeps it holds and the command that resumes the newest; nothing written."""
    parent = tmp_path / "multirun"
    for name in ("2026-01-01_00-00-00", "2026-01-02_00-00-00"):
        (parent / name).mkdir(parents=True)
        (parent / name / "multirun.yaml").write_text("{}\n")
        time.sleep(0.01)  # the second is the newer
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    done = pgrun("resume=multirun", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "pgrun: error: resume=multirun: holds 2 sweeps, not one; resume one of them, e.g. the "
        "newest: pgrun resume=multirun/2026-01-02_00-00-00\n"
    )
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
