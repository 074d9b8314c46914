"""pgrun.sweep.all_ended: when `pgrun resume=<sweep dir>` has no job to run, read from the
jobs' directories alone (no process started)."""

from __future__ import annotations

from pathlib import Path

from pgrun import rundir, sweep


def finished_job(path: Path, config: str | None = "total_steps: 100\nstop_return: null\n") -> Path:
    """A job directory as a finished job leaves it, without checkpoints (nothing to train on
    is then found, as for a job whose end cannot be read)."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    if config is not None:
        (path / ".hydra" / "config.yaml").write_text(config)
    (path / sweep.POLICY_FILE).write_bytes(b"")
    return path


def test_all_ended_counts_finished_and_kept_failed_jobs_and_defers_the_rest(tmp_path: Path):
    done = sweep.Job(0, ["seed=0"], finished_job(tmp_path / "a"))
    failed = sweep.Job(1, ["seed=1"], finished_job(tmp_path / "b"))
    (failed.path / sweep.FAILED_FILE).write_text("seed=1: diverged\n")
    assert sweep.all_ended([done, failed], ["seed=0,1"], rerun_failed=False) == (1, 1)
    assert sweep.all_ended([done, failed], ["seed=0,1"], rerun_failed=True) is None
    assert sweep.all_ended([], [], rerun_failed=False) is None  # not a sweep's list of jobs
    lock = rundir.acquire(done.path)  # another pgrun writes it: the launch reports that
    try:
        assert sweep.all_ended([done], [], rerun_failed=False) is None
    finally:
        rundir.release(lock)
    # a record that cannot be read: the launch reports it, where it was a traceback here
    for name, config in (("cut", "total_steps: [\n"), ("missing", None)):
        job = sweep.Job(2, ["seed=2"], finished_job(tmp_path / name, config))
        assert sweep.all_ended([done, job], [], rerun_failed=False) is None, name
    interrupted = sweep.Job(3, ["seed=3"], finished_job(tmp_path / "c"))
    (interrupted.path / sweep.POLICY_FILE).unlink()
    assert sweep.all_ended([done, interrupted], [], rerun_failed=False) is None
