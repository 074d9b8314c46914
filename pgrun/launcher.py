"""pgrun's SLURM launcher: hydra-submitit-launcher's, made to survive a cluster.

It submits the sweep as job arrays and waits for them, with these differences:

- It asks the scheduler with `squeue` (finished jobs stay listed for its MinJobAge), and
  `sacct` only where accounting is on: no warning at every poll on a cluster without it.
- A job that ends without a result (cancelled while pending or running, killed hard, out of
  memory, node failure, timed out too often) is recorded as failed, with the scheduler's
  state, in its directory's failed.txt; the sweep waits for the others and writes its
  comparison. (submitit would wait for good, or raise and abort the sweep.)
- A sweep larger than the cluster's MaxArraySize is submitted as several arrays.
- In the job: a pgrun job that fails exits non-zero, so SLURM records it FAILED; at the
  preemption or time-limit signal (USR2) the job checkpoints, then submitit requeues it, and
  the requeued job continues from that checkpoint (pgrun/cli.py, pgrun/sweep.py). Each job's
  scheduler log is linked from its directory as `scheduler.log`.
- Ctrl-C cancels the sweep's jobs (running ones get SIGTERM and checkpoint first), waits for
  them to stop and exits with status 130: `pgrun resume=<sweep dir>` continues.

The job directories, the checkpoints and submitit's folder must be on a filesystem that the
submitting machine and the nodes share (as hydra-submitit-launcher assumes).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as _PluginSlurmLauncher,
)

from pgrun.config import Interrupted
from pgrun.sweep import FAILED_FILE, SCHEDULER_PREFIX

log = logging.getLogger("pgrun")

LOG_LINK = "scheduler.log"
# States in which a job will not run again by itself (squeue / sacct names).
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "SPECIAL_EXIT",
    "TIMEOUT",
}
GONE = "GONE"  # no longer known to the scheduler, and no result
STOP_WAIT_S = 120  # after Ctrl-C: how long the cancelled jobs get to checkpoint and stop


class JobFailed(RuntimeError):
    """Raised at the end of a pgrun job that failed, so that its process exits non-zero."""


def link_scheduler_log(run_dir: Path) -> None:
    """In a submitit job: `run_dir/scheduler.log` -> this job's submitit log (relative)."""
    try:
        import submitit

        target = Path(submitit.JobEnvironment().paths.stdout)
        link = run_dir / LOG_LINK
        run_dir.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(target, run_dir))
    except (OSError, RuntimeError) as exc:  # a log link is not worth failing a job for
        log.warning(f"no {LOG_LINK} link in {run_dir}: {exc}")


def parse_squeue(text: str) -> dict[str, str]:
    """`squeue -h -r -o %i|%T` lines ('12_3|RUNNING') -> {'12_3': 'RUNNING'}."""
    states = {}
    for line in text.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id and state:
            states[job_id] = state.split()[0].upper()
    return states


def parse_sacct(text: str) -> dict[str, str]:
    """`sacct -n -P -X -o JobID,State` lines ('12_3|CANCELLED by 0') -> {'12_3': 'CANCELLED'}."""
    return parse_squeue(text)


def warning_delay(signal_delay_s: int, timeout_min: int) -> int:
    """Seconds before the time limit at which the job gets SIGUSR2: `signal_delay_s`, or half
    the time limit when that is shorter (a warning before the job starts is no warning)."""
    return max(1, min(int(signal_delay_s), int(timeout_min) * 60 // 2))


def chunks(items: Sequence[Any], size: int | None) -> list[Sequence[Any]]:
    """`items` in consecutive pieces of at most `size` (one piece for None)."""
    if not size or size >= len(items):
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


def slurm_config() -> dict[str, str]:
    """`scontrol show config` as {key: value} ({} when it fails)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    config = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


class SlurmLauncher(_PluginSlurmLauncher):
    """hydra/launcher=slurm (configs/hydra/launcher/slurm.yaml)."""

    # -- in the job --------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        ret = super().__call__(*args, **kwargs)
        value = ret._return_value
        if ret.status == JobStatus.FAILED and isinstance(value, Interrupted):
            handler = signal.getsignal(value.signum)
            if value.signum == signal.SIGUSR2 and callable(handler):
                handler(value.signum, None)  # submitit: checkpoint this call, requeue, exit
            name = signal.Signals(value.signum).name
            raise JobFailed(f"{SCHEDULER_PREFIX}stopped by {name}, checkpoint saved")
        run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir) if ret.hydra_cfg else None
        if run_dir is not None and (run_dir / FAILED_FILE).is_file():
            first = (run_dir / FAILED_FILE).read_text().splitlines()[:1]
            raise JobFailed(first[0] if first else "failed")
        if ret.status == JobStatus.FAILED:
            raise value
        return ret

    # -- on the submitting machine -----------------------------------------------------------

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides

        assert self.config is not None
        params = dict(self.params)
        # the warning must come before the end: with a short time limit, halfway through it
        params["signal_delay_s"] = warning_delay(params["signal_delay_s"], params["timeout_min"])
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout", 0),
        )
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{(k if k in base else f"slurm_{k}"): v for k, v in params.items()}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append(
                (
                    list(overrides),
                    "hydra.sweep.dir",
                    idx,
                    f"job_id_for_{idx}",
                    Singleton.get_state(),
                )
            )
        scheduler = slurm_config()
        limit = int(scheduler.get("MaxArraySize", "0") or 0) or None
        accounting = scheduler.get("AccountingStorageType", "none").split("/")[-1] != "none"
        jobs: list[Any] = []
        try:
            for piece in chunks(job_params, limit):
                jobs += executor.map_array(self, *zip(*piece, strict=True))
            if limit and len(job_params) > limit:
                log.info(f"{len(job_params)} jobs in arrays of at most {limit} (MaxArraySize)")
            ended = self._wait(jobs, accounting)
        except KeyboardInterrupt:
            self._stop(jobs, accounting)
            raise
        return [
            self._result(job, overrides, idx, ended.get(job.job_id))
            for job, (overrides, _, idx, _, _) in zip(jobs, job_params, strict=True)
        ]

    def _states(self, jobs: Sequence[Any], accounting: bool) -> dict[str, str] | None:
        """The scheduler's state of each job it knows, or None when it could not be asked."""
        arrays = sorted({j.job_id.split("_")[0] for j in jobs})
        try:
            out = subprocess.run(
                ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T", "-j", ",".join(arrays)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            return None
        states = parse_squeue(out.stdout)
        missing = [j.job_id for j in jobs if j.job_id not in states]
        if missing and accounting:
            acct = subprocess.run(
                ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(arrays)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if acct.returncode == 0:
                states.update(parse_sacct(acct.stdout))
        return states

    def _wait(self, jobs: Sequence[Any], accounting: bool) -> dict[str, str]:
        """Wait until every job has a result or has ended without one; return the latter's
        final states ({job id: state})."""
        waiting = {j.job_id: j for j in jobs}
        ended: dict[str, str] = {}
        seen: dict[str, int] = {}  # consecutive polls at which a job looked ended
        start = time.monotonic()
        while waiting:
            for job_id in [i for i, j in waiting.items() if j.paths.result_pickle.exists()]:
                del waiting[job_id]
            if not waiting:
                break
            states = self._states(list(waiting.values()), accounting)
            if states is not None:
                for job_id, job in list(waiting.items()):
                    state = states.get(job_id, GONE)
                    if state not in ENDED and state != GONE:
                        seen.pop(job_id, None)
                        continue
                    # twice in a row, so that a requeue's passing state is not taken as the end
                    seen[job_id] = seen.get(job_id, 0) + 1
                    if seen[job_id] >= 2:
                        if not _appears(job.paths.result_pickle):
                            ended[job_id] = state
                        del waiting[job_id]
            if waiting:  # every second at first, every 30 s after five minutes
                time.sleep(min(30.0, max(1.0, (time.monotonic() - start) / 10)))
        return ended

    def _stop(self, jobs: Sequence[Any], accounting: bool) -> None:
        """Ctrl-C: cancel every job of the sweep (running ones checkpoint on SIGTERM) and wait
        for them to stop."""
        if not jobs:
            return
        arrays = sorted({j.job_id.split("_")[0] for j in jobs})
        print(f"pgrun: stopping the sweep: scancel {' '.join(arrays)}", file=sys.stderr)
        subprocess.run(["scancel", *arrays], capture_output=True, timeout=60)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            states = self._states(jobs, accounting) or {}
            if all(states.get(j.job_id, GONE) in ENDED | {GONE} for j in jobs):
                return
            time.sleep(1)

    def _result(self, job: Any, overrides: list[str], idx: int, state: str | None) -> JobReturn:
        """The JobReturn of a finished job; for any other, the failure recorded in its
        directory and a JobReturn with no value (the sweep goes on)."""
        from submitit.core.utils import pickle_load

        if state is None:
            outcome, value = pickle_load(job.paths.result_pickle)
            if outcome == "success":
                return value
            trace = str(value).strip().splitlines()
            reason = trace[-1] if trace else "the job raised"
            if SCHEDULER_PREFIX in reason:  # stopped by a signal, after its checkpoint
                reason = reason[reason.index(SCHEDULER_PREFIX) :]
            if "timed-out too many times" in str(value):
                reason = f"{SCHEDULER_PREFIX}TIMEOUT (out of time and of requeues)"
        else:
            reason = f"{SCHEDULER_PREFIX}{state}, ended without a result"
        run_dir = self._job_dir(overrides, idx)
        failed = run_dir / FAILED_FILE
        log_file = Path(job.paths.stdout)
        if state is not None or not failed.is_file():
            started = (run_dir / ".hydra").is_dir()
            detail = "" if started else " before it started"
            line = f"{reason}{detail} (job {job.job_id}; log: {log_file})"
            run_dir.mkdir(parents=True, exist_ok=True)
            failed.write_text(line + "\n")
            log.error(f"pgrun: error: {line} (job recorded as failed in {run_dir})")
        return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)

    def _job_dir(self, overrides: list[str], idx: int) -> Path:
        """The directory a job writes to: <hydra.sweep.dir>/<hydra.sweep.subdir>."""
        from omegaconf import open_dict

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def _appears(path: Path, wait_s: float = 5.0) -> bool:
    """Whether `path` exists, or appears within `wait_s` (a result written as the job ended,
    seen late through a network filesystem)."""
    deadline = time.monotonic() + wait_s
    while True:
        if path.exists():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
