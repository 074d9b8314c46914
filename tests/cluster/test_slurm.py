"""Sweeps through hydra/launcher=slurm on a real one-node SLURM (tests/cluster/slurm.py):
preemption, a job cancelled while pending, one killed hard, Ctrl-C, a failing job, and
`pgrun resume=<sweep dir>` after each. `make test-cluster` (a few minutes; root, as it
installs SLURM when it is missing)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import comparable_scalars, describe, finish, run_pgrun, start_pgrun  # noqa: E402
from slurm import MAX_ARRAY_SIZE, Cluster  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SLURM runs on Linux")

STEPS = "total_steps=600000"  # 5-10 s of training a job (150k took 1.2 s): time to signal it
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.mem_gb=1"]
TIMEOUT = 600


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with Cluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


def tasks(cluster: Cluster) -> list[tuple[str, str]]:
    """Every job the scheduler knows, as (id, state), in submission order."""
    out = cluster.run("squeue", "-h", "-r", "--states=all", "-o", "%i|%T").stdout

    def order(job_id: str) -> tuple[int, int]:
        array, _, task = job_id.partition("_")
        return int(array), int(task or 0)

    rows = [line.split("|") for line in out.split()]
    return sorted(((i, s) for i, s in rows), key=lambda r: order(r[0]))


def wait_for(what: str, check: Callable[[], object], timeout: float = 180) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def summary(sweep: Path) -> dict[str, dict[str, str]]:
    with (sweep / "summary.csv").open() as f:
        return {row["group"]: row for row in csv.DictReader(f)}


def job(sweep: Path, seed: int) -> Path:
    return sweep / f"seed={seed}"  # what varies (variant and steps are the same for all)


def writer_pid(run_dir: Path) -> int:
    """The training process: events.out.tfevents.<time>.<host>.<pid>.<n>."""
    (events,) = run_dir.glob("events.out.tfevents.*")
    return int(events.name.split(".")[-2])


def curve(run_dir: Path) -> list[tuple[int, float]]:
    return comparable_scalars(run_dir)["charts/episodic_return"]


def reference(tmp_path: Path, seed: int) -> list[tuple[int, float]]:
    """The same job as a single uninterrupted run on this machine."""
    out = tmp_path / f"reference{seed}"
    proc = run_pgrun(
        ["variant=rtg", f"seed={seed}", STEPS, f"hydra.run.dir={out}"], cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, describe(proc)
    return curve(out)


@pytest.fixture
def started():
    """start_pgrun, with the process killed if the test fails before it ends."""
    processes: list[subprocess.Popen[str]] = []

    def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
        processes.append(start_pgrun(args, cwd=cwd))
        return processes[-1]

    yield start
    for p in processes:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_preempted_cancelled_and_killed_jobs_then_resume(cluster: Cluster, tmp_path: Path, started):
    """Five jobs, two CPUs, arrays of at most four. Job 0 is preempted (USR2): it checkpoints,
    is requeued and continues, its curve the uninterrupted run's. Job 1 is killed hard and job
    4 cancelled while pending: both are recorded as failed with the scheduler's state, the
    sweep exits 1 with its comparison, and `pgrun resume=<sweep dir>` completes them."""
    sweep = tmp_path / "sweep"
    seeds = "seed=0,1,2,3,4"
    process = started(
        ["-m", *SLURM, "variant=rtg", seeds, STEPS, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    ids = wait_for(
        "the five jobs",
        lambda: [i for i, _ in tasks(cluster)][-5:] if len(tasks(cluster)) >= 5 else None,
    )
    assert len({i.split("_")[0] for i in ids}) == 2, ids  # 5 > MaxArraySize: two arrays
    assert MAX_ARRAY_SIZE == 4
    states = dict(tasks(cluster))
    assert states[ids[4]] == "PENDING", states
    cluster.run("scancel", ids[4])  # job 4: cancelled before it started

    for seed in (0, 1):
        wait_for(
            f"job {seed}'s first checkpoint",
            lambda s=seed: list(job(sweep, s).glob("checkpoint-*.pt")),
        )
    # job 0: preempted (scancel may go on retrying once the job is requeued: not waited for)
    usr2 = subprocess.Popen(["scancel", "--signal=USR2", ids[0]])
    os.kill(writer_pid(job(sweep, 1)), signal.SIGKILL)  # job 1: killed hard
    # SLURM makes a requeued job wait two minutes before it may start again: not here
    wait_for("job 0 requeued", lambda: dict(tasks(cluster)).get(ids[0]) == "PENDING")
    cluster.run("scontrol", "update", f"jobid={ids[0]}", "StartTime=now")
    usr2.kill()
    usr2.wait()

    proc = finish(process, timeout=TIMEOUT)
    assert proc.returncode == 1, describe(proc)
    assert "Bypassing sacct error" not in proc.stdout + proc.stderr, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pgrun: error: 2 of 5 jobs were ended from outside"), describe(proc)
    assert last.endswith("runs them again") and "--rerun-failed" not in last, describe(proc)

    killed = (job(sweep, 1) / "failed.txt").read_text()
    assert killed.startswith("scheduler: FAILED, ended without a result"), killed
    cancelled = (job(sweep, 4) / "failed.txt").read_text()
    assert cancelled.startswith("scheduler: CANCELLED, ended without a result before it started")
    assert f"job {ids[4]}" in cancelled
    for seed in (0, 2, 3):
        assert (job(sweep, seed) / "policy.pt").is_file(), seed
        assert (job(sweep, seed) / "scheduler.log").resolve().is_file(), seed
    # Job 0 was requeued into the same directory and continued its run: a second record
    # of the attempt, the original kept; one curve without duplicate steps.
    assert list((job(sweep, 0) / ".hydra").glob("resume-*/overrides.yaml")), "not requeued"
    log = (job(sweep, 0) / "pgrun.log").read_text()
    assert "resuming" in log, log
    preempted = curve(job(sweep, 0))
    steps = [s for s, _ in preempted]
    assert steps == sorted(set(steps))
    (row,) = summary(sweep).values()
    assert (row["seeds"], row["failed"], row["ended_from_outside"]) == ("3", "0", "2"), row
    assert (sweep / "comparison.png").is_file()
    assert preempted == reference(tmp_path, 0)  # bit-exact on the CPU

    # Neither the sweep nor the scheduler holds on to anything.
    assert all(s in ("COMPLETED", "FAILED", "CANCELLED") for _, s in tasks(cluster))

    proc = run_pgrun([f"resume={sweep}"], cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc)
    (row,) = summary(sweep).values()
    assert (row["seeds"], row["failed"]) == ("5", "0"), row
    for seed in range(5):
        assert (job(sweep, seed) / "policy.pt").is_file(), seed
    assert list((job(sweep, 1) / ".hydra").glob("failed-*.txt")), "the failure record is kept"
    assert curve(job(sweep, 1)) == reference(tmp_path, 1)  # continued from its checkpoint


def test_ctrl_c_stops_the_sweep_and_resume_continues_it(cluster: Cluster, tmp_path: Path, started):
    """Ctrl-C: the running jobs checkpoint, the pending ones are cancelled, exit 130; then
    `pgrun resume=<sweep dir>` finishes every job."""
    sweep = tmp_path / "sweep"
    process = started(
        ["-m", *SLURM, "variant=rtg", "seed=0,1,2", STEPS, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    for seed in (0, 1):
        wait_for(f"job {seed} training", lambda s=seed: list(job(sweep, s).glob("events.*")))
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    proc = finish(process, timeout=TIMEOUT)
    assert proc.returncode == 130, describe(proc)
    assert f"pgrun resume={sweep.name}" in proc.stderr or f"pgrun resume={sweep}" in proc.stderr
    assert "Traceback" not in proc.stderr, describe(proc)
    assert all(s in ("COMPLETED", "FAILED", "CANCELLED") for _, s in tasks(cluster))
    for seed in (0, 1):  # stopped after their checkpoint; nothing recorded as failed
        assert list(job(sweep, seed).glob("checkpoint-*.pt")), seed
        assert not (job(sweep, seed) / "failed.txt").exists(), seed
    assert not (job(sweep, 2) / ".hydra").exists()  # never started

    proc = run_pgrun([f"resume={sweep}"], cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc)
    (row,) = summary(sweep).values()
    assert (row["seeds"], row["failed"]) == ("3", "0"), row
    assert curve(job(sweep, 0)) == reference(tmp_path, 0)


def test_a_failing_job_is_failed_in_slurm_and_the_sweep_goes_on(cluster: Cluster, tmp_path: Path):
    """A job that fails as it starts (its weights plug-in does not import: a value out of range
    is refused before the sweep launches) is FAILED in SLURM; the other job completes."""
    sweep = tmp_path / "sweep"
    proc = run_pgrun(
        ["-m", *SLURM, "variant.weights=rtg,no_such_module:weights", "total_steps=2000",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 1, describe(proc)
    bad = sweep / "variant.weights=no_such_module-weights"  # named by what varies
    failure = "variant.weights=no_such_module:weights: cannot import no_such_module"
    assert (bad / "failed.txt").read_text().startswith(failure)
    assert (sweep / "variant.weights=rtg" / "policy.pt").is_file()
    states = [s for _, s in tasks(cluster)[-2:]]
    assert sorted(states) == ["COMPLETED", "FAILED"], states
    rows = summary(sweep)
    (bad_group,) = (g for g in rows if "no_such_module" in g)
    assert rows[bad_group]["failed"] == "1"


if __name__ == "__main__":  # a cluster to try things by hand: python tests/cluster/test_slurm.py
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp)) as c:
        print(f"export SLURM_CONF={c.conf}   (Ctrl-C stops the cluster)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        subprocess.run(["true"])
