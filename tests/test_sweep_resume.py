"""A sweep that does not end as planned, on this machine: its processes killed (kill -9),
Ctrl-C, `pgrun-compare` naming the jobs that multirun.yaml lists but that did not finish, and
`pgrun resume=<sweep dir>` finishing them. (On SLURM: tests/cluster/test_slurm.py.)"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import comparable_scalars, describe, finish, pgrun_cmd, pgrun_env, run_pgrun

from pgrun import config, launcher, rundir, sweep

STEPS = "total_steps=30000"
TIMEOUT = 600  # a loaded machine can take minutes for one pgrun command


def summary(root: Path) -> dict[str, dict[str, str]]:
    with (root / "summary.csv").open() as f:
        return {row["group"]: row for row in csv.DictReader(f)}


def wait_for(what: str, check, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def job(root: Path, seed: int) -> Path:
    return root / f"seed={seed}"  # what varies (variant and steps are the same for all)


def compare_cmd(root: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "pgrun-compare"
    return subprocess.run(
        [str(exe), str(root)], capture_output=True, text=True, env=pgrun_env(), timeout=TIMEOUT
    )


def test_killed_joblib_sweep_is_reported_then_resumed(tmp_path: Path):
    """kill -9 of every process of a joblib sweep while its second job trains: pgrun-compare
    names the interrupted job and the one that never started and exits 1; pgrun resume=<sweep
    dir> continues the first from its checkpoint, runs the other, keeps the finished one."""
    root = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", "variant=rtg"]
    args += ["seed=0,1,2", STEPS, f"hydra.sweep.dir={root}"]
    process = subprocess.Popen(
        pgrun_cmd(*args),
        cwd=tmp_path,
        env=pgrun_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for("job 1's first checkpoint", lambda: list(job(root, 1).glob("checkpoint-*.pt")))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert sweep.job_state(job(root, 0)) == "finished"
    assert sweep.job_state(job(root, 1)) == "interrupted"
    assert sweep.job_state(job(root, 2)) == "missing"

    proc = compare_cmd(root)
    assert proc.returncode == 1, describe(proc)
    # interrupted and never started: "not finished", as the closing line says, not "failed"
    assert (
        f"not finished: {job(root, 1).name}: no final return: interrupted; a resume continues "
        "from checkpoint-" in proc.stdout
    ), describe(proc)
    assert f"not finished: {job(root, 2).name}: never started: no directory" in proc.stdout
    assert "  failed: " not in proc.stdout, describe(proc)
    assert "(n=1, 2 not finished)" in proc.stdout, describe(proc)  # not all of them failed
    assert "comparison of 3 runs (1 of them finished) in " in proc.stdout, describe(proc)
    assert "2 of 3 jobs" in proc.stderr, describe(proc)
    assert proc.stderr.rstrip().endswith(f"pgrun resume={rundir.shell(root)} continues them"), (
        describe(proc)
    )
    (row,) = summary(root).values()
    assert (row["seeds"], row["failed"], row["not_finished"]) == ("1", "0", "2"), row
    assert row["not_finished_jobs"] == f"{job(root, 1).name} {job(root, 2).name}", row
    md = (root / "summary.md").read_text()
    assert "## Jobs not finished (2)" in md and "Failed jobs" not in md, md

    refused = run_pgrun([f"resume={root}", "seed=5"], cwd=tmp_path, timeout=TIMEOUT)
    assert refused.returncode == 2, describe(refused)
    assert refused.stderr.startswith(f"pgrun: error: resume={root} continues that sweep")
    assert "(only --rerun-failed, total_steps=N and hydra.launcher.* may be given)" in (
        refused.stderr
    ), describe(refused)

    before = comparable_scalars(job(root, 0))
    proc = run_pgrun([f"resume={root}"], cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc)
    assert "finished before, not run again" in proc.stdout, describe(proc)
    (row,) = summary(root).values()
    assert (row["seeds"], row["failed"]) == ("3", "0"), row
    assert comparable_scalars(job(root, 0)) == before
    # the attempt's record is kept where the job ran again only
    assert not list(job(root, 0).glob(".hydra/resume-*")), "a record for a job that did not run"
    assert len(list(job(root, 1).glob(".hydra/resume-*/config.yaml"))) == 1
    steps = [s for s, _ in comparable_scalars(job(root, 1))["charts/episodic_return"]]
    assert steps == sorted(set(steps)), "points logged twice"
    assert "resuming" in (job(root, 1) / "pgrun.log").read_text()
    assert compare_cmd(root).returncode == 0


def test_ctrl_c_stops_a_basic_sweep_and_resume_continues_it(tmp_path: Path):
    """Ctrl-C: the running job checkpoints and the whole sweep stops with status 130, no job
    marked failed; pgrun resume=<sweep dir> then finishes both jobs."""
    root = tmp_path / "sweep"
    process = subprocess.Popen(
        pgrun_cmd("-m", "variant=rtg", "seed=0,1", STEPS, f"hydra.sweep.dir={root}"),
        cwd=tmp_path,
        env=pgrun_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for("job 0's first checkpoint", lambda: list(job(root, 0).glob("checkpoint-*.pt")))
        process.send_signal(signal.SIGINT)
        proc = finish(process, timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    assert proc.returncode == 130, describe(proc)
    assert f"continue the sweep with: pgrun resume={root.relative_to(tmp_path)}" in proc.stderr
    assert sweep.job_state(job(root, 0)) == "interrupted"
    assert sweep.job_state(job(root, 1)) == "missing"

    proc = run_pgrun([f"resume={root}"], cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc)
    (row,) = summary(root).values()
    assert (row["seeds"], row["failed"]) == ("2", "0"), row


def start_two_ppo_jobs(tmp_path: Path, root: Path, launcher: str, output: int, *more: str):
    """A sweep of two PPO seeds in worker processes, in a session of its own, that trains long
    enough to be stopped in its loops (no regular checkpoint before iteration 1000); `more`:
    further overrides."""
    return subprocess.Popen(
        pgrun_cmd(
            "-m",
            "variant=ppo",
            "seed=0,1",
            "total_steps=60000",
            "checkpoint.every=1000",
            f"hydra/launcher={launcher}",
            f"hydra.sweep.dir={root}",
            *more,
        ),  # fmt: skip
        cwd=tmp_path,
        env=pgrun_env(),
        stdout=output,
        stderr=output,
        text=True,
        start_new_session=True,
    )


def wait_until_both_train(root: Path) -> None:
    """Both jobs logging: both are in their training loops."""
    wait_for(
        "both jobs' first iterations",
        lambda: all(
            (job(root, s) / "metrics.csv").is_file()
            and len((job(root, s) / "metrics.csv").read_text().splitlines()) > 2
            for s in (0, 1)
        ),
    )


@pytest.mark.parametrize(
    ("launcher", "how"),
    [("batched", "terminal"), ("joblib", "terminal"), ("submitit_local", "terminal"),
     ("batched", "timeout")],
)  # fmt: skip
def test_ctrl_c_checkpoints_the_jobs_of_a_parallel_sweep(tmp_path: Path, launcher: str, how: str):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while the jobs train
    in worker processes: the sweep's process waits for each running job to end its iteration
    and save a checkpoint (which joblib's ending its workers at once lost, and submitit_local's
    controllers a second after the signal, each with a KeyboardInterrupt traceback), then stops
    with status 130 and the continue hint, without a traceback; every job then resumes from its
    checkpoint and finishes. `timeout`: the signal as GNU timeout sends it, to the sweep's
    process and then to its process group, so that the sweep's process gets it twice and the
    workers get it after the sweep's stop: still one request (pgrun.signals.ECHO_S), where it
    used to be taken as a second Ctrl-C that ends the workers at once."""
    root = tmp_path / "sweep"
    process = start_two_ppo_jobs(tmp_path, root, launcher, subprocess.PIPE)
    try:
        wait_until_both_train(root)
        if how == "timeout":
            os.kill(process.pid, signal.SIGINT)
            time.sleep(0.05)  # the sweep's process forwards its stop before the group's arrives
        os.killpg(process.pid, signal.SIGINT)
        proc = finish(process, timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert proc.returncode == 130, describe(proc)
    assert "again stops them at once" in proc.stderr, describe(proc)  # said once, not acted on
    assert "Traceback" not in proc.stderr, describe(proc)
    assert f"continue the sweep with: pgrun resume={root.relative_to(tmp_path)}" in proc.stderr
    for seed in (0, 1):
        assert list(job(root, seed).glob("checkpoint-*.pt")), (seed, describe(proc))
        assert sweep.job_state(job(root, seed)) == "interrupted"
        log = (job(root, seed) / "pgrun.log").read_text()
        assert "stopping after this iteration" in log, log
        assert f"{job(root, seed).name}: interrupted at iteration " in log, log
    proc = run_pgrun([f"resume={root}"], cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc)
    (row,) = summary(root).values()
    assert (row["seeds"], row["failed"]) == ("2", "0"), row


def test_a_seed_whose_checkpoints_cannot_be_read_fails_alone_in_its_group(tmp_path: Path):
    """A batched sweep stopped while both seeds train, then every checkpoint of seed 0 cut
    short (a disk that filled up): the resume fails seed 0 with its own error and trains seed
    1 to its end, where the group's error was recorded as both seeds' failure (seed 1's
    failed.txt naming seed 0's file)."""
    root = tmp_path / "sweep"
    one_group = "hydra.launcher.n_jobs=1"  # two cores would split the group in two processes
    process = start_two_ppo_jobs(tmp_path, root, "batched", subprocess.DEVNULL, one_group)
    try:
        wait_until_both_train(root)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=TIMEOUT) == 130
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    for saved in job(root, 0).glob("checkpoint-*.pt"):
        with saved.open("r+b") as f:
            f.truncate(100)
    proc = run_pgrun([f"resume={root}"], cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 1, describe(proc)
    assert "1 of 2 jobs failed (seed=0)" in proc.stderr, describe(proc)
    failure = sweep.failure_line(job(root, 0))
    assert failure.startswith(f"no readable checkpoint in {job(root, 0)}: checkpoint-"), failure
    assert sweep.job_state(job(root, 1)) == "finished", describe(proc)
    assert "unreadable" not in (job(root, 1) / "pgrun.log").read_text()  # seed 0's, in its own


def running_in(root: Path) -> list[str]:
    """The command lines of this machine's processes that name `root` (submitit_local's
    controllers and jobs, in sessions of their own)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in line:
            found.append(line)
    return found


@pytest.mark.parametrize("launcher", ["submitit_local", "joblib"])
def test_ctrl_c_as_the_jobs_start_stops_them_all(tmp_path: Path, launcher: str):
    """Ctrl-C while the jobs' processes are still starting (importing, before they listen for
    the sweep's stop): each job is told once it listens (pgrun.signals.tell_workers), so it
    does not start or stops after its first iteration with a checkpoint, and none is left
    running after the sweep's process has stopped. submitit_local's jobs died of the stop
    signal or missed it and trained on to the end, unseen, after the sweep said it stopped.
    Then the resume finishes both."""
    root = tmp_path / "sweep"
    process = start_two_ppo_jobs(tmp_path, root, launcher, subprocess.PIPE)
    try:
        if launcher == "submitit_local":  # both controllers have started their jobs
            wait_for("the jobs' start", lambda: len(list(root.glob(".submitit/*/*_log.out"))) == 2)
        else:  # a worker has begun a job (its directory made, its code not yet listening)
            wait_for("a job's start", lambda: any(root.glob("seed=*")))
        os.killpg(process.pid, signal.SIGINT)
        proc = finish(process, timeout=TIMEOUT)
        # what a job left to train on would do meanwhile: nothing is (seconds to end a loop)
        wait_for("the jobs' exit", lambda: not running_in(root) and not group_alive(process.pid))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert proc.returncode == 130, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    for seed in (0, 1):
        state = sweep.job_state(job(root, seed))
        # begun and not started (new), or stopped after an iteration; submitit_local's jobs had
        # begun, and are told only once they listen, where they died of the signal (missing)
        begun = ("new", "interrupted") if launcher == "submitit_local" else ("missing",)
        assert state in begun + ("new", "interrupted"), (seed, state, describe(proc))
    proc = run_pgrun([f"resume={root}"], cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc)
    (row,) = summary(root).values()
    assert (row["seeds"], row["failed"]) == ("2", "0"), row


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("launcher", ["batched", "joblib"])
def test_workers_of_a_sweep_killed_alone_checkpoint_and_exit(tmp_path: Path, launcher: str):
    """kill -9 of the sweep's process alone (not its group) while its workers train: each
    worker sees its sweep gone (pgrun.signals.watch_sweep), its job saves a checkpoint after
    its iteration, and the worker exits, where joblib's waited for ever to report and the
    batched launcher's trained on to the end, unseen; then pgrun resume finishes them."""
    root = tmp_path / "sweep"
    process = start_two_ppo_jobs(tmp_path, root, launcher, subprocess.DEVNULL)
    try:
        wait_until_both_train(root)
        process.kill()
        process.wait()
        # the workers and the trackers of their resources are all gone (PARENT_POLL_S, then
        # one iteration: seconds; 120 s on a loaded machine)
        wait_for("the workers' exit", lambda: not group_alive(process.pid), timeout=120)
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    for seed in (0, 1):
        assert sweep.job_state(job(root, seed)) == "interrupted", seed  # not trained on
        assert list(job(root, seed).glob("checkpoint-*.pt")), seed  # saved as it stopped
        log = (job(root, seed) / "pgrun.log").read_text()
        assert "the sweep's process ended: stopping after this iteration" in log, log
        assert rundir.holder(job(root, seed)) is None
    proc = run_pgrun([f"resume={root}"], cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc)
    (row,) = summary(root).values()
    assert (row["seeds"], row["failed"]) == ("2", "0"), row


def test_failed_jobs_run_again_only_when_asked(tmp_path: Path):
    """A job that pgrun failed stays failed on resume; --rerun-failed sets its record aside
    (kept under .hydra/) and runs it again; a job the scheduler ended always runs again."""
    root = tmp_path / "sweep"
    proc = run_pgrun(
        [
            "-m",
            "variant.weights=rtg,no_such_module:weights",
            "total_steps=1000",
            f"hydra.sweep.dir={root}",
        ],
        cwd=tmp_path,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 1, describe(proc)
    # a job that fails as it starts (its weights plug-in does not import; total_steps is the
    # same for all, so not in the names)
    bad, good = root / "variant.weights=no_such_module-weights", root / "variant.weights=rtg"
    jobs = sweep.expected_jobs(root)  # the directories Hydra made, from multirun.yaml
    assert [(j.num, j.path) for j in jobs] == [(0, good), (1, bad)]
    assert jobs[1].overrides == ["variant.weights=no_such_module\\:weights", "total_steps=1000"]
    (good / "failed.txt").write_text(f"{sweep.SCHEDULER_PREFIX}CANCELLED (by hand)\n")
    (good / "policy.pt").unlink()  # as if the scheduler had ended it before its end
    assert sweep.job_state(good) == "lost"

    lock = rundir.acquire(root)  # another pgrun writes the sweep: its resume changes nothing
    try:
        proc = run_pgrun([f"resume={root}"], cwd=tmp_path, timeout=TIMEOUT)
    finally:
        rundir.release(lock)
    assert proc.returncode == 2, describe(proc)
    assert "is being written by another pgrun" in proc.stderr, describe(proc)
    assert sweep.job_state(good) == "lost" and not list(good.glob(".hydra/failed-*.txt"))

    proc = run_pgrun([f"resume={root}"], cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 1, describe(proc)
    assert sweep.job_state(good) == "finished"
    assert sweep.job_state(bad) == "failed"
    assert "kept as failed: variant.weights=no_such_module:weights: cannot import" in proc.stdout, (
        describe(proc)
    )

    # every job has ended: nothing is launched, the comparison is drawn again
    records = sorted(root.glob("multirun-resume-*.yaml"))
    proc = run_pgrun([f"resume={root}"], cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 1, describe(proc)
    assert proc.stdout.startswith(
        "sweep: nothing to run: 1 of its 2 jobs finished before and 1 failed (once the cause is "
        "fixed, pgrun resume=sweep --rerun-failed runs it again)\ncomparison of 2 runs (1 of "
        "them finished) in sweep:"
    ), describe(proc)
    # the path as typed from where pgrun runs, not the resolved sweep directory
    assert "1 of 2 jobs failed (variant.weights=no_such_module-weights): see sweep/summary.md" in (
        proc.stderr
    ), describe(proc)
    assert sorted(root.glob("multirun-resume-*.yaml")) == records, (
        "a record of a resume that ran nothing"
    )
    assert not list(bad.glob(".hydra/resume-*")), "a record for a job that did not run"

    proc = run_pgrun([f"resume={root}", sweep.RERUN_FAILED], cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 1, describe(proc)  # it fails again, for the same reason
    assert len(list((bad / ".hydra").glob("failed-*.txt"))) == 1
    assert (bad / "failed.txt").read_text().startswith("variant.weights=no_such_module:weights")


def test_a_sweep_begun_with_a_value_now_refused_still_resumes(tmp_path: Path):
    """A sweep's jobs stand as they were begun: one whose value this version refuses before a
    sweep launches (seed=-1, here written into the sweep's record as an earlier version let it
    through) fails on its own when the sweep resumes, and the others are kept, where refusing
    the resume would leave the whole sweep unresumable."""
    root = tmp_path / "sweep"
    proc = run_pgrun(["-m", "seed=0,1", "total_steps=600", f"hydra.sweep.dir={root}"], tmp_path)
    assert proc.returncode == 0, describe(proc)
    record = root / sweep.MULTIRUN_FILE
    record.write_text(record.read_text().replace("seed=0,1", "seed=0,-1"))
    proc = run_pgrun([f"resume={root}"], tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 1, describe(proc)
    assert sweep.job_state(root / "seed=0") == "finished"
    assert (root / "seed=-1" / "failed.txt").read_text().startswith("seed=-1 is out of range")


KILLER = "import os, signal\n\n\ndef weights(*args, **kwargs):\n    os.kill(os.getpid(), signal.SIGKILL)\n"


def sweep_with_killer(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """`pgrun -m *args` into tmp_path/sweep with the weights plug-in killer:weights importable
    (tmp_path/plugins), 1000 env steps a job."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "killer.py").write_text(KILLER)
    return run_pgrun(
        ["-m", *args, "total_steps=1000", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path,
        timeout=TIMEOUT,
        env={"PYTHONPATH": str(plugins)},
    )


def test_a_killed_joblib_worker_stops_the_sweep_in_one_line(tmp_path: Path):
    """A joblib worker process that dies (here: its job's weights plug-in sends itself SIGKILL,
    as the out-of-memory killer would) makes joblib stop the sweep: one line naming the kill
    and the command that continues the sweep, exit status 1, no traceback."""
    proc = sweep_with_killer(
        tmp_path, ["variant.weights=killer:weights", "seed=0,1,2", "hydra/launcher=joblib"]
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, describe(proc)
    last = proc.stderr.strip().splitlines()[-1]
    assert "a worker process of the sweep was killed (SIGKILL" in last, describe(proc)
    assert "pgrun resume=" in last and "Traceback" not in out, describe(proc)


def test_a_killed_batched_worker_costs_its_own_group_only(tmp_path: Path):
    """hydra/launcher=batched: a worker process that dies (its group's weights plug-in sends it
    SIGKILL) costs its own group only. The other groups train to their end, with one process
    started in the dead one's place; the killed group's begun jobs are recorded as ended from
    outside, the sweep's last line says so and exits 1, and `pgrun resume=<sweep dir>` (the
    plug-in fixed) trains the killed group's jobs."""
    proc = sweep_with_killer(
        tmp_path,
        ["variant.weights=killer:weights,rtg,total", "seed=0,1", "hydra/launcher=batched",
         "hydra.launcher.n_jobs=2"],
    )  # fmt: skip
    root, plugins = tmp_path / "sweep", tmp_path / "plugins"
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, describe(proc)
    assert "Traceback" not in out, describe(proc)
    killed = [root / f"variant.weights=killer-weights,seed={s}" for s in (0, 1)]
    others = [root / f"variant.weights={w},seed={s}" for w in ("rtg", "total") for s in (0, 1)]
    assert [sweep.job_state(p) for p in others] == ["finished"] * 4, describe(proc)
    # on 2 processes the killed group runs as two halves (pgrun.batched_launcher.spread): each
    # seed's worker is killed in turn, and a new one takes the next unit
    for path in killed:
        assert sweep.job_state(path) == "lost", describe(proc)  # begun: it has its record
        assert "worker process was killed (SIGKILL(-9))" in (path / "failed.txt").read_text()
        assert (
            f"killed (SIGKILL(-9)), e.g. by the out-of-memory killer, while it trained {path.name}: "
            in out
        )
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"pgrun: error: 2 of 6 jobs were ended from outside ({killed[0].name}, {killed[1].name}: "
        "scheduler: its worker process was killed (SIGKILL(-9)), e.g. by the out-of-memory killer)"
    ), describe(proc)
    assert last.endswith("pgrun resume=sweep runs them again"), describe(proc)  # cwd: tmp_path

    (plugins / "killer.py").write_text(  # fixed: the reward-to-go weights
        "from pgrun.estimators import reward_to_go\n\n\ndef weights(batch, gamma):\n"
        "    return reward_to_go(batch.rew, gamma) * batch.mask\n"
    )
    proc = run_pgrun([f"resume={root}"], cwd=tmp_path, timeout=TIMEOUT,
                     env={"PYTHONPATH": str(plugins)})  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    assert [sweep.job_state(p) for p in killed + others] == ["finished"] * 6


def test_squeue_and_sacct_lines():
    text = "12_0|RUNNING\n12_1|PENDING\n13|CANCELLED by 0\n\n"
    assert launcher.parse_squeue(text) == {"12_0": "RUNNING", "12_1": "PENDING", "13": "CANCELLED"}
    assert launcher.parse_sacct("14_2|OUT_OF_MEMORY\n") == {"14_2": "OUT_OF_MEMORY"}


@pytest.mark.parametrize(("n", "size", "pieces"), [(5, 4, [4, 1]), (8, 4, [4, 4]), (3, None, [3])])
def test_arrays_are_split_to_fit(n: int, size: int | None, pieces: list[int]):
    assert [len(c) for c in launcher.chunks(list(range(n)), size)] == pieces
    assert [x for c in launcher.chunks(list(range(n)), size) for x in c] == list(range(n))


def test_the_time_limit_warning_comes_before_the_limit():
    assert launcher.warning_delay(120, 60) == 120
    assert launcher.warning_delay(120, 1) == 30  # hydra.launcher.timeout_min=1


def test_gpu_preset_asks_for_a_gpu_and_sets_the_jobs_device():
    from hydra import compose, initialize_config_module

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_module(config_module="pgrun.configs", version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm_gpu"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.pgrun_launcher.SlurmLauncher"
    assert (cfg.hydra.launcher.gpus_per_node, cfg.hydra.launcher.max_num_timeout) == (1, 3)
    assert cfg.hydra.job.env_set.PGRUN_DEVICE == "cuda"  # device's default in the jobs
    assert cfg.hydra.job.env_set.OMP_NUM_THREADS is not None  # the base settings are kept


def test_a_resumed_sweep_keeps_the_record_it_began_with(tmp_path: Path):
    """`pgrun resume=<sweep> hydra.launcher.n_jobs=1` runs that resume with one process, and its
    record goes beside the sweep's: multirun.yaml keeps the bytes the sweep began with (how its
    results were made), and the next resume takes the sweep's own settings again."""
    root = tmp_path / "sweep"
    args = ["-m", "seed=0,1", "total_steps=600", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    proc = run_pgrun([*args, f"hydra.sweep.dir={root}"], tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc)
    record = root / sweep.MULTIRUN_FILE
    began = record.read_bytes()
    for n_jobs, seed in ((["hydra.launcher.n_jobs=1"], 1), ([], 0)):
        (job(root, seed) / "policy.pt").unlink()  # as if it had been stopped before its end
        proc = run_pgrun([f"resume={root}", *n_jobs], tmp_path, timeout=TIMEOUT)
        assert proc.returncode == 0, describe(proc)
        assert sweep.job_state(job(root, seed)) == "finished"
        assert record.read_bytes() == began
    first, second = sorted(root.glob("multirun-resume-*.yaml"))
    assert "n_jobs: 1\n" in first.read_text() and "hydra.launcher.n_jobs=1" in first.read_text()
    assert "n_jobs: 2\n" in second.read_text()
    assert "hydra.launcher.n_jobs=1" not in second.read_text()
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"pid={os.getpid()} host=elsewhere started=now\\n".encode())
print("held", flush=True)
sys.stdin.read()
"""


def test_a_job_another_pgrun_writes_is_named_as_such_when_the_sweep_ends(tmp_path: Path):
    """A resumed sweep whose job is being trained by another pgrun (resumed on its own) leaves it
    to that process, and its end says so: not "failed" with --rerun-failed, but which job, who
    holds it, and to compare again once it ends; exit status 1, as the sweep's result is not
    whole. pgrun-compare names it the same way."""
    root = tmp_path / "sweep"
    proc = run_pgrun(["-m", "seed=0,1", "total_steps=600", f"hydra.sweep.dir={root}"], tmp_path)
    assert proc.returncode == 0, describe(proc)
    for seed in (0, 1):
        (job(root, seed) / "policy.pt").unlink()
    for path in job(root, 1).glob("*"):  # its curve is being rewritten: nothing of it is final
        if path.is_file() and path.name.startswith(("events.", "metrics")):
            path.unlink()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(job(root, 1) / ".pgrun.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        proc = run_pgrun([f"resume={root}"], tmp_path, timeout=TIMEOUT)
        assert proc.returncode == 1, describe(proc)
        assert sweep.job_state(job(root, 0)) == "finished"
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith(
            "pgrun: error: 1 of 2 jobs was not run by this sweep (seed=1: "
            "being written by another pgrun (pid "
        ), describe(proc)
        assert "on elsewhere" in line and "once that ends, pgrun-compare" in line, line
        assert "failed" not in proc.stderr, describe(proc)
        assert "seed=1: not run by this sweep, left to the pgrun that writes it (pid " in (
            proc.stdout
        ), describe(proc)
        compared = compare_cmd(root)
        assert compared.returncode == 1, describe(compared)
        assert "not finished: seed=1: being written by another pgrun (pid" in compared.stdout
    finally:
        holder.stdin.close()
        holder.wait(timeout=TIMEOUT)
    compared = compare_cmd(root)  # the lock is gone: an unfinished job, as any
    assert "not finished: seed=1: no final return: interrupted; a resume continues from" in (
        compared.stdout
    ), describe(compared)


def test_a_job_killed_while_its_record_was_written_resumes_and_is_compared(tmp_path: Path):
    """A job killed while Hydra wrote its .hydra record (a sweep stopped at once, kill -9) has
    one file empty or missing; one damaged by hand does not read. pgrun-compare names each
    job and what is wrong, with no traceback, and `pgrun resume=<sweep>` writes the record
    again where the comparison reads it (not beside it, as for a record that reads): the
    job trains, and the next comparison counts it."""
    root = tmp_path / "sweep"
    proc = run_pgrun(["-m", "seed=0,1", "total_steps=600", f"hydra.sweep.dir={root}"], tmp_path)
    assert proc.returncode == 0, describe(proc)
    (job(root, 0) / ".hydra" / "overrides.yaml").write_text("- seed=0\n- {{[\n")  # finished
    for path in job(root, 1).iterdir():  # killed as it began: only part of its record
        if path.is_file():
            path.unlink()
    (job(root, 1) / ".hydra" / "hydra.yaml").write_text("")
    (job(root, 1) / ".hydra" / "overrides.yaml").unlink()

    compared = compare_cmd(root)
    assert compared.returncode == 1, describe(compared)
    assert "Traceback" not in compared.stderr, describe(compared)
    assert "not finished: seed=0: its record .hydra/overrides.yaml cannot be read (" in (
        compared.stdout
    ), describe(compared)
    assert "not finished: seed=1: its record .hydra/hydra.yaml is empty" in compared.stdout

    proc = run_pgrun([f"resume={root}"], tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc)
    assert "seed=0: finished before, not run again" in proc.stdout, describe(proc)
    for seed in (0, 1):
        assert sweep.job_state(job(root, seed)) == "finished"
        assert config.record_problem(job(root, seed)) is None
        assert not list(job(root, seed).glob(".hydra/resume-*")), "its record went beside"
    (row,) = summary(root).values()
    assert (row["seeds"], row["not_finished"]) == ("2", "0"), row
    assert compare_cmd(root).returncode == 0


def test_jobs_that_finished_without_a_whole_episode_are_named_with_the_way_on(tmp_path: Path):
    """rollout=steps whose copies never reach an episode's end in the budget (4 steps of
    CartPole): each job finishes with no return. The run's line and the comparison say so and
    give `total_steps=N`, where they said "return nan" and "did not finish ... pgrun resume=
    continues them", and that resume found nothing to run and said the same again. The resume
    with a larger budget gives them their returns."""
    root = tmp_path / "sweep"
    args = ["-m", "rollout=steps", "rollout.steps=4", "seed=0,1", f"hydra.sweep.dir={root}"]
    proc = run_pgrun([*args, "total_steps=64"], tmp_path)
    assert proc.returncode == 1, describe(proc)
    assert proc.stdout.count("done: no episode ended, so no return") == 2, describe(proc)
    # trained on, the return is of the few batches that ended episodes, and the line says so
    # (it said "over the last 5 batches" of every run)
    line = (
        "pgrun: error: 2 of 2 jobs ended without a whole episode (seed=0, seed=1): no return to "
        "compare; pgrun resume=sweep total_steps=N trains them on"
    )
    assert line in proc.stderr and "did not finish" not in proc.stderr, describe(proc)
    assert "## Jobs that ended without a whole episode (2)" in (root / "summary.md").read_text()
    again = run_pgrun([f"resume={root}"], tmp_path, timeout=TIMEOUT)
    assert again.returncode == 1 and "did not finish" not in again.stderr, describe(again)
    on = run_pgrun([f"resume={root}", "total_steps=256"], tmp_path, timeout=TIMEOUT)  # 4 batches
    assert on.returncode == 0, describe(on)
    few = re.findall(r"over (\d) batch(?:es)? with a finished episode", on.stdout)
    assert len(few) == 2 and all(int(n) < 5 for n in few), describe(on)
    (row,) = summary(root).values()
    assert (row["seeds"], row["not_finished"]) == ("2", "0"), row


def test_jobs_a_budget_raising_resume_stopped_before_are_not_finished(tmp_path: Path):
    """`pgrun resume=<sweep> total_steps=N` stopped before it trained a job on: that job's
    final return is of the smaller budget, so the comparison lists it as not finished (it had
    ranked it against the runs trained to N, or said every job finished), and names the
    resume that trains it on."""
    root = tmp_path / "sweep"
    sweep_args = ["-m", "seed=0,1", "total_steps=600", "hydra/launcher=batched"]
    proc = run_pgrun([*sweep_args, f"hydra.sweep.dir={root}"], tmp_path)
    assert proc.returncode == 0, describe(proc)
    process = subprocess.Popen(
        pgrun_cmd(f"resume={root}", "total_steps=200000"),
        cwd=tmp_path,
        env=pgrun_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:  # stopped once its record is written: before or as its jobs begin to train on
        wait_for("the resume's record", lambda: any(root.glob("multirun-resume-*.yaml")))
        time.sleep(0.2)  # the record written out
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=TIMEOUT) == 130
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    compared = compare_cmd(root)
    assert compared.returncode == 1, describe(compared)
    assert "2 of 2 jobs did not finish" in compared.stderr, describe(compared)
    behind = [
        f"not finished: {job(root, s).name}: no final return at total_steps=200000: it finished "
        "at total_steps=600, and the resume that raised its sweep's budget stopped before it"
        for s in (0, 1)
    ]
    assert any(line in compared.stdout for line in behind), describe(compared)
    assert f"pgrun resume={rundir.shell(root)} trains it on" in compared.stdout, describe(compared)


def test_a_finished_sweep_trains_on_to_a_larger_total_steps(tmp_path: Path):
    """`pgrun resume=<sweep> total_steps=N` trains every finished job on from its end, in its
    own directory, to the curve a sweep begun with N gives; the resumes after it keep N. A
    budget below the sweep's, or not a number, is refused in one line. A job trained on
    past its final metric and stopped is not finished for the comparison."""
    root, fresh = tmp_path / "sweep", tmp_path / "fresh"
    common = ["-m", "seed=0,1", "hydra/launcher=batched"]
    proc = run_pgrun([*common, "total_steps=600", f"hydra.sweep.dir={root}"], tmp_path)
    assert proc.returncode == 0, describe(proc)
    dirs = sorted(p.name for p in root.iterdir())
    for args, message in (
        (["total_steps=300"], "total_steps=300 is below the sweep's total_steps=600"),
        (["total_steps=lots"], "total_steps=lots: give total_steps as a positive whole number"),
    ):
        refused = run_pgrun([f"resume={root}", *args], tmp_path, timeout=TIMEOUT)
        assert refused.returncode == 2, describe(refused)
        assert refused.stderr.startswith(f"pgrun: error: {message}"), describe(refused)

    shutil.rmtree(job(root, 1))  # as if it had never started: it begins at the new budget
    proc = run_pgrun([f"resume={root}", "total_steps=1500"], tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc)
    assert "finished before" not in proc.stdout, describe(proc)
    assert "- total_steps=1500\n" in (job(root, 1) / ".hydra" / "overrides.yaml").read_text()
    # one group all the same: both trained to 1500, one of them begun at it
    assert "final return" in proc.stdout and proc.stdout.count("(n=2)") == 1, describe(proc)
    assert "trained on to total_steps 1,500 by a resume" in proc.stdout, describe(proc)
    new = sorted(p.name for p in root.iterdir())
    assert [n for n in new if not n.startswith("multirun-resume-")] == dirs  # the same jobs
    proc = run_pgrun([*common, "total_steps=1500", f"hydra.sweep.dir={fresh}"], tmp_path)
    assert proc.returncode == 0, describe(proc)
    for seed in (0, 1):
        assert comparable_scalars(job(root, seed)) == comparable_scalars(job(fresh, seed))

    records = sorted(root.glob("multirun-resume-*.yaml"))
    assert "- total_steps=1500\n" in records[-1].read_text()
    for again in ([], ["total_steps=1500"]):  # both jobs are at the budget the last resume gave
        proc = run_pgrun([f"resume={root}", *again], tmp_path, timeout=TIMEOUT)
        assert proc.returncode == 0, describe(proc)
        assert proc.stdout.startswith(
            "sweep: nothing to run: all 2 jobs finished before (pgrun resume=sweep total_steps=N "
            "trains them on to N)\n"
        ), describe(proc)
        assert sorted(root.glob("multirun-resume-*.yaml")) == records
    # a launcher setting the sweep's launcher lacks: one line, where Hydra's said "not in
    # struct", and a resume with nothing to run took it without a word
    typo = run_pgrun([f"resume={root}", "hydra.launcher.n_jbs=2"], tmp_path, timeout=TIMEOUT)
    assert typo.returncode == 2, describe(typo)
    assert typo.stderr == (
        f"pgrun: error: resume={root.relative_to(tmp_path)}: hydra.launcher.n_jbs: the sweep's "
        "launcher "
        "(BatchedLauncher) has no such setting; did you mean hydra.launcher.n_jobs? (its "
        "settings: n_jobs)\n"
    ), describe(typo)
    assert sorted(root.glob("multirun-resume-*.yaml")) == records
    for below in ("1000", "600"):  # below the budget a resume gave, the sweep's own among them
        refused = run_pgrun([f"resume={root}", f"total_steps={below}"], tmp_path, timeout=TIMEOUT)
        assert refused.returncode == 2, describe(refused)
        assert refused.stderr.startswith(
            f"pgrun: error: total_steps={below} is below the sweep's total_steps=1500"
        ), describe(refused)

    # sweeps it cannot extend: their jobs differ in total_steps; nothing varies (named by all)
    for sweep_args, message in (
        (["seed=0", "total_steps=300,600"], "its jobs differ in total_steps"),
        (["seed=0", "total_steps=300"], "total_steps=900 would rename its jobs' directories"),
    ):
        other = tmp_path / f"other{len(message)}"
        proc = run_pgrun(["-m", *sweep_args, f"hydra.sweep.dir={other}"], tmp_path)
        assert proc.returncode == 0, describe(proc)
        refused = run_pgrun([f"resume={other}", "total_steps=900"], tmp_path, timeout=TIMEOUT)
        assert refused.returncode == 2, describe(refused)
        assert refused.stderr.startswith(f"pgrun: error: resume={other}: {message}"), describe(
            refused
        )
        assert "pgrun resume=<job dir> total_steps=900" in refused.stderr

    # trained on past its final metric, then stopped: not finished for the comparison
    run = job(root, 1)
    ends = sorted(run.glob("checkpoint-*.pt"))
    process = subprocess.Popen(
        pgrun_cmd(f"resume={run}", "total_steps=500000", "checkpoint.every=1"),
        cwd=tmp_path,
        env=pgrun_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("a checkpoint past its end", lambda: sorted(run.glob("checkpoint-*.pt")) != ends)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=TIMEOUT) == 130
    finally:
        if process.poll() is None:
            process.kill()
    compared = compare_cmd(root)
    assert compared.returncode == 1, describe(compared)
    assert (
        f"not finished: {run.name}: no final return: stopped while trained on to "
        f"total_steps=500000; pgrun resume={rundir.shell(run)} total_steps=500000 continues it"
    ) in compared.stdout, describe(compared)
