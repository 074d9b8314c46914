"""Many runs at once: every run gets its own directory, one process writes a directory at a time,
a run can be resumed from any path it has, and signals at the edges of a run lose nothing.

Every test starts real `pgrun` processes. CartPole with 4-episode batches keeps each to a few
seconds; the overlapping ones are made to overlap by waiting for the first one's lock file.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import comparable_scalars, describe, finish, run_pgrun, start_pgrun
from omegaconf import OmegaConf

from pgrun import rundir
from pgrun.cli import quote

pytestmark = pytest.mark.usefixtures("pgrun_exe")

QUICK = ["batch_episodes=4", "total_steps=600", "progress=false"]
# Long enough to be caught running: a checkpoint every iteration, 1000 iterations at most.
LONG = ["batch_episodes=4", "total_steps=200000", "checkpoint.every=1", "progress=false"]


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Poll `predicate` until it holds; fail if `proc` ends first or after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended first:\n{describe(finish(proc))}")
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.02)


def lock_pid(run_dir: Path) -> int | None:
    """The pid named in the run directory's lock file, while one is there."""
    try:
        text = (run_dir / rundir.LOCK_FILE).read_text()
    except FileNotFoundError:
        return None
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    return int(fields["pid"]) if "pid" in fields else None


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=60)


def one_error_line(done: subprocess.CompletedProcess, code: int = 2) -> str:
    assert done.returncode == code, describe(done)
    assert "Traceback" not in done.stdout + done.stderr, describe(done)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pgrun: error: "), describe(done)
    return lines[0]


def files(run_dir: Path) -> dict[str, bytes]:
    """Every file under `run_dir` and its bytes, but the lock file."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != rundir.LOCK_FILE
    }


def consistent(run_dir: Path) -> OmegaConf:
    """Assert that everything in `run_dir` is one run's: its overrides, config, checkpoints
    and final policy agree, and its events hold one final return. Returns its config."""
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    for override in overrides:
        key, value = override.split("=", 1)
        if "." in key or key in ("seed", "total_steps", "batch_episodes"):
            assert str(OmegaConf.select(config, key)) == value, (override, run_dir)
    policy = torch.load(run_dir / "policy.pt", weights_only=True)
    assert policy["config"]["optim"]["lr"] == config.optim.lr
    assert policy["config"]["seed"] == config.seed
    ids = {torch.load(p, weights_only=True)["run_id"] for p in run_dir.glob("checkpoint-*.pt")}
    assert len(ids) == 1, ids
    scalars = comparable_scalars(run_dir)
    steps = [s for s, _ in scalars["charts/episodic_return"]]
    assert steps == sorted(set(steps)), "a step logged twice: two runs in one directory"
    return config


# --- unique directories ------------------------------------------------------------------------


def test_runs_started_together_get_a_directory_each(tmp_path):
    """Four runs started at once, two of them with the same command line: four directories,
    each holding one run, named by time stamp, variant, env, seed and the other overrides."""
    commands = [
        [*QUICK, "optim.lr=0.01"],
        [*QUICK, "optim.lr=0.05"],
        [*QUICK, "optim.lr=0.05"],
        [*QUICK, "optim.lr=0.02", "seed=1"],
    ]
    procs = [start_pgrun(args, tmp_path) for args in commands]
    for proc in procs:
        done = finish(proc)
        assert done.returncode == 0, describe(done)
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 4, runs
    lrs = sorted(consistent(run).optim.lr for run in runs)
    assert lrs == [0.01, 0.02, 0.05, 0.05]
    for run in runs:
        date, clock, rest = run.name.split("_", 2)
        assert len(date) == 10 and len(clock) == len("08-30-12.345"), run.name
        assert rest.startswith("rtg_baseline_CartPole-v1_seed"), run.name
    assert any("optim.lr=0.05" in run.name for run in runs)
    assert not any((run / rundir.LOCK_FILE).exists() for run in runs)  # released at the end


def test_a_name_taken_in_the_same_millisecond_gets_a_suffix(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "stamp", lambda now=None: "2026-01-01_00-00-00.000")
    made = [rundir.create_unique(tmp_path, "rtg_CartPole-v1_seed0") for _ in range(3)]
    assert [p.name for p in made] == [
        "2026-01-01_00-00-00.000_rtg_CartPole-v1_seed0",
        "2026-01-01_00-00-00.000_rtg_CartPole-v1_seed0-2",
        "2026-01-01_00-00-00.000_rtg_CartPole-v1_seed0-3",
    ]
    for path in made:
        assert rundir.holder(path) is not None  # this process holds each
        rundir.release(rundir.held(path))
        assert rundir.holder(path) is None and not (path / rundir.LOCK_FILE).exists()


def test_a_variant_name_cannot_lead_outside_the_runs_directory(tmp_path):
    done = run_pgrun([*QUICK, "variant.name=../../../escape"], cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert "escape" in run.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]


# --- one writer per directory ------------------------------------------------------------------


def test_a_second_run_on_a_directory_in_use_is_refused(tmp_path):
    first = start_pgrun([*LONG, "hydra.run.dir=run"], tmp_path)
    try:
        # the lock is taken before Hydra writes the record: wait for the record's first checkpoint
        wait_for(lambda: lock_pid(tmp_path / "run") == first.pid, first)
        wait_for(lambda: any((tmp_path / "run").glob("checkpoint-*.pt")), first)
        before = files(tmp_path / "run" / ".hydra")
        line = one_error_line(run_pgrun([*QUICK, "seed=1", "hydra.run.dir=run"], cwd=tmp_path))
        assert "being written by another pgrun" in line and f"pid {first.pid}" in line, line
        assert files(tmp_path / "run" / ".hydra") == before  # its record untouched
    finally:
        stop(first)


def test_a_run_killed_before_its_first_checkpoint_is_named_as_one_to_remove(tmp_path):
    """A run killed (kill -9) after Hydra wrote its record and before its first checkpoint: a
    new run into its directory and a resume of it each say there is nothing to continue and
    how to remove it, where the first sent the user to `pgrun resume=` and the resume said only
    that the run had no checkpoint."""
    done = run_pgrun([*QUICK, "hydra.run.dir=run"], cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copytree(tmp_path / "run" / ".hydra", stopped / ".hydra")  # its record, nothing else
    line = one_error_line(run_pgrun([*QUICK, "hydra.run.dir=stopped"], cwd=tmp_path))
    assert "stopped holds a run that stopped before its first checkpoint" in line, line
    assert "rm -r stopped" in line and "pgrun resume" not in line, line
    line = one_error_line(run_pgrun(["resume=stopped"], cwd=tmp_path))
    assert line == (
        "pgrun: error: resume=stopped: the run has no checkpoint to continue from (it stopped "
        "before its first): remove it (rm -r stopped) and start the run again"
    ), line


def test_a_finished_run_is_never_reused_even_by_a_killed_run(tmp_path):
    """A new run on a finished run's directory is refused and told how to continue it; one
    killed as it starts leaves that directory as it was; the old run still resumes as itself."""
    done = run_pgrun([*QUICK, "hydra.run.dir=run"], cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    run = tmp_path / "run"
    before = files(run)
    line = one_error_line(run_pgrun([*QUICK, "seed=1", "hydra.run.dir=run"], cwd=tmp_path))
    assert "holds a run already" in line and "pgrun resume=run" in line, line
    assert files(run) == before
    for delay in (0.0, 0.5, 1.0):  # wherever the second run is when it is killed
        proc = start_pgrun([*QUICK, "seed=1", "hydra.run.dir=run"], tmp_path)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert files(run) == before
    done = run_pgrun(["resume=run", "total_steps=1200"], cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    assert consistent(run).seed == 0
    state = torch.load(max(run.glob("checkpoint-*.pt")), weights_only=True)
    assert state["env_steps"] >= 1200


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run's scalars, to compare resumed ones with."""
    cwd = tmp_path_factory.mktemp("reference")
    done = run_pgrun([*QUICK, "total_steps=3000", "checkpoint.every=1", "hydra.run.dir=run"], cwd)
    assert done.returncode == 0, describe(done)
    return comparable_scalars(cwd / "run")


def killed_run(cwd: Path, name: str = "run", iterations: int = 3) -> Path:
    """A run (the reference's config) killed with SIGKILL after `iterations` checkpoints."""
    run = cwd / name
    proc = start_pgrun(
        [*QUICK, "total_steps=3000", "checkpoint.every=1", f"hydra.run.dir={quote(str(run))}"], cwd
    )
    saved = f"checkpoint-{iterations:08d}.pt"
    wait_for(lambda: any(p.name >= saved for p in run.glob("checkpoint-*.pt")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return run


def test_resume_while_the_run_is_running_is_refused(tmp_path):
    first = start_pgrun([*LONG, "hydra.run.dir=run"], tmp_path)
    try:
        wait_for(lambda: any((tmp_path / "run").glob("checkpoint-*.pt")), first)
        line = one_error_line(run_pgrun(["resume=run"], cwd=tmp_path))
        assert f"pid {first.pid}" in line, line
        assert not list((tmp_path / "run" / ".hydra").glob("resume-*"))
    finally:
        stop(first)


def test_two_resumes_at_once_one_refused_the_other_exact(tmp_path, reference):
    """The second resume is refused before it writes anything (no purge of the first one's
    events, no shared temporary file); the first ends as the uninterrupted run did. The lock
    a SIGKILL left behind is no obstacle."""
    run = killed_run(tmp_path)
    assert lock_pid(run) is not None  # the killed process's file is still there
    first = start_pgrun(["resume=run"], tmp_path)
    wait_for(lambda: lock_pid(run) == first.pid, first)
    line = one_error_line(run_pgrun(["resume=run"], cwd=tmp_path))
    assert f"pid {first.pid}" in line, line
    done = finish(first)
    assert done.returncode == 0, describe(done)
    scalars = comparable_scalars(run)
    assert scalars.keys() == reference.keys()
    for tag in reference:
        assert [s for s, _ in scalars[tag]] == [s for s, _ in reference[tag]], tag
        for (_, x), (_, y) in zip(scalars[tag], reference[tag], strict=True):
            assert x == y or (math.isnan(x) and math.isnan(y)), tag
    assert len(list((run / ".hydra").glob("resume-*"))) == 1


# --- resume from any path -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["seed=0,total_steps=3000", "a run with spaces", "läufe-ü", "it's a \\ run"]
)
def test_resume_from_any_directory_name(tmp_path, reference, name):
    run = killed_run(tmp_path, name)
    done = run_pgrun([f"resume={run}"], cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    assert comparable_scalars(run)["charts/episodic_return"] == reference["charts/episodic_return"]


def test_resume_through_a_symlink_continues_in_place(tmp_path, reference):
    run = killed_run(tmp_path, "seed=0,lr=x")
    (tmp_path / "latest").symlink_to(run.name)
    done = run_pgrun(["resume=latest"], cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    assert "latest" in done.stdout
    assert comparable_scalars(run)["charts/episodic_return"] == reference["charts/episodic_return"]


def test_resume_a_sweep_job_in_place(tmp_path):
    """A sweep job killed in the middle continues in its own directory and TensorBoard run;
    its failed.txt goes once it finishes."""
    sweep = tmp_path / "sweep"
    proc = start_pgrun(["-m", "seed=0", *LONG, f"hydra.sweep.dir={sweep}"], tmp_path)
    wait_for(lambda: len(list(sweep.glob("*seed=0*/checkpoint-*.pt"))) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    (job,) = sweep.glob("*seed=0*")
    assert "=" in job.name and "," in job.name
    (job / "failed.txt").write_text("killed\n")
    done = run_pgrun([f"resume={job}", "total_steps=3000"], cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    assert not (job / "failed.txt").exists()
    assert len(list(job.glob("events.out.tfevents.*"))) == 2  # the job's run, continued
    steps = [s for s, _ in comparable_scalars(job)["charts/episodic_return"]]
    assert steps == sorted(set(steps)) and steps[-1] >= 3000
    assert not (tmp_path / "outputs").exists()  # nothing made beside it


def test_sweeps_started_together_get_a_directory_each(tmp_path):
    procs = [start_pgrun(["-m", "seed=0", *QUICK], tmp_path) for _ in range(2)]
    for proc in procs:
        done = finish(proc)
        assert done.returncode == 0, describe(done)
    sweeps = sorted((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 2, sweeps
    for sweep in sweeps:
        (job,) = [p for p in sweep.iterdir() if (p / ".hydra").is_dir()]
        consistent(job)


def test_a_second_sweep_into_a_sweep_in_use_is_refused(tmp_path):
    """A sweep's directory has one pgrun at a time: a second sweep into it, or a resume of it
    while it runs, is refused in one line before it writes anything, and the first sweep's
    jobs finish as if alone."""
    sweep = tmp_path / "sweep"
    first = start_pgrun(["-m", "seed=0,1", *LONG, f"hydra.sweep.dir={sweep}"], tmp_path)
    try:
        wait_for(lambda: lock_pid(sweep) == first.pid, first)
        wait_for(lambda: any(sweep.glob("*seed=0*/checkpoint-*.pt")), first)
        before = files(sweep)
        for args in (["-m", "seed=0,1", *QUICK, f"hydra.sweep.dir={sweep}"], [f"resume={sweep}"]):
            line = one_error_line(run_pgrun(args, cwd=tmp_path))
            assert "being written by another pgrun" in line and f"pid {first.pid}" in line, line
        after = files(sweep)  # the first sweep goes on, its records untouched
        kept = [name for name in before if "checkpoint-" not in name]  # rotated as it goes
        assert set(kept) <= set(after)
        assert all(after[name] == before[name] for name in kept if "/.hydra/" in name)
        assert after["multirun.yaml"] == before["multirun.yaml"]
        assert not any(name.endswith("failed.txt") for name in after), sorted(after)
    finally:
        stop(first)
    assert not (tmp_path / "outputs").exists()


def test_a_new_sweep_into_a_finished_sweeps_directory_is_refused(tmp_path):
    """A new sweep into the directory of one that ran (its multirun.yaml, its jobs) would take
    the old jobs for its own where their names agree (`seed=0` of a ppo sweep and of an rtg
    one), report them finished and replace multirun.yaml: it is refused in one line naming
    the resume, and the old sweep stays as it was; `pgrun resume=<dir>` still continues it."""
    sweep = tmp_path / "sweep"
    proc = run_pgrun(["-m", "seed=0,1", *QUICK, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = files(sweep)
    proc = run_pgrun(
        ["-m", "variant=rtg", "seed=0,1", *QUICK, f"hydra.sweep.dir={sweep}"], tmp_path
    )
    line = one_error_line(proc)
    assert "holds a sweep already" in line and "pgrun resume=" in line, line
    assert files(sweep) == before
    again = run_pgrun([f"resume={sweep}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "sweep: nothing to run: all 2 jobs finished before (" in again.stdout, again.stdout
    # a directory of sweeps (hydra.sweep.dir=outputs/multirun): the new sweep's comparison
    # would pool their runs with its own
    before = files(sweep)
    proc = run_pgrun(["-m", "seed=0,1", *QUICK, f"hydra.sweep.dir={tmp_path}"], tmp_path)
    line = one_error_line(proc)
    assert "holds runs below it already (sweep/seed=" in line, line
    assert "give a new hydra.sweep.dir" in line, line
    assert files(sweep) == before


# --- signals at the edges -------------------------------------------------------------------------

SLOW_ENV = """
import os
import time

import gymnasium as gym
import numpy as np


class Slow(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, where="make"):
        self.where = where
        if where == "make":
            open(os.environ["PGRUN_TEST_MARKER"], "w").close()
            time.sleep(60)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        return np.zeros(4, np.float32), 1.0, False, False, {}

    def close(self):
        marker = os.environ["PGRUN_TEST_MARKER"]
        if self.where == "close" and not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(2)


gym.register(id="Slow-v0", entry_point=Slow, max_episode_steps=5)
"""


@pytest.fixture
def slow_env(tmp_path) -> dict[str, str]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "slow_env.py").write_text(SLOW_ENV)
    return {"PYTHONPATH": str(plugins), "PGRUN_TEST_MARKER": str(tmp_path / "marker")}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_env_is_made_leaves_nothing(tmp_path, slow_env, sig):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = start_pgrun(["env.id=slow_env:Slow-v0", "batch_episodes=2"], cwd, env=slow_env)
    wait_for(lambda: Path(slow_env["PGRUN_TEST_MARKER"]).exists(), proc)
    proc.send_signal(sig)
    done = finish(proc)
    assert done.returncode == 128 + sig, describe(done)
    assert "Traceback" not in done.stderr, describe(done)
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"pgrun: interrupted ({sig.name}) before the first checkpoint: nothing was kept"
    ]
    assert list(cwd.iterdir()) == []


def test_a_signal_while_the_env_closes_keeps_the_finished_run(tmp_path, slow_env):
    args = [
        "env.id=slow_env:Slow-v0",
        "+env.kwargs.where=close",
        "batch_episodes=2",
        "env.horizon=5",
    ]
    proc = start_pgrun([*args, "total_steps=20", "hydra.run.dir=run"], tmp_path, env=slow_env)
    wait_for(lambda: Path(slow_env["PGRUN_TEST_MARKER"]).exists(), proc)
    proc.send_signal(signal.SIGTERM)
    done = finish(proc)
    assert done.returncode == 0, describe(done)
    assert "SIGTERM while closing the run" in done.stdout + done.stderr, describe(done)
    saved = torch.load(tmp_path / "run" / "policy.pt", weights_only=True)
    assert saved["config"]["total_steps"] == 20
    assert (tmp_path / "run" / "checkpoint-00000002.pt").is_file()  # 2 x 10 steps


def test_a_full_disk_stops_in_one_line_and_leaves_no_partial_file(tmp_path):
    """A file-size limit makes the disk 'full' for any file past 100 kB, here the first
    checkpoint (its network is large): the run stops with one line naming the file, leaves no
    half-written file, and, with nothing to resume yet, no directory."""
    import resource

    from conftest import pgrun_cmd, pgrun_env

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    args = [*QUICK, "policy.hidden_sizes=[256,256]", "checkpoint.every=1", "hydra.run.dir=run"]
    done = subprocess.run(
        pgrun_cmd(*args),
        cwd=tmp_path,
        env=pgrun_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        check=False,
    )
    line = one_error_line(done)
    assert "cannot write checkpoint-00000001.pt in run (File too large)" in line, line
    assert not (tmp_path / "run").exists()
