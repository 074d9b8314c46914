"""A sweep's jobs as its directory records them: which ones `multirun.yaml` lists, what state
each is in, and what a job that starts in a directory holding an earlier attempt does.

Job states (read from the job's directory, never from a scheduler):

- ``missing``: no directory, or one without the job's ``.hydra`` record: never started;
- ``new``: started, but nothing to continue from (no checkpoint);
- ``interrupted``: a checkpoint and no final policy (preempted, timed out, killed, Ctrl-C);
- ``finished``: the final ``policy.pt`` is written;
- ``failed``: ``failed.txt`` written by pgrun (a bad value, divergence, an error);
- ``lost``: ``failed.txt`` written by the launcher for a job that the scheduler ended
  (cancelled, killed, out of time): `pgrun resume=<sweep dir>` runs it again.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pgrun import rundir
from pgrun.config import JOB_SUBDIR, UserError, job_subdir

log = logging.getLogger("pgrun")

FAILED_FILE = "failed.txt"
MULTIRUN_FILE = "multirun.yaml"
SCHEDULER_PREFIX = "scheduler: "  # failed.txt's first line when the scheduler ended the job
POLICY_FILE = "policy.pt"  # written once, when training finishes (pgrun/trainer.py)
RERUN_FAILED = "--rerun-failed"

current: Path | None = None
"""The directory of the sweep this process launches (set when the multirun starts)."""

resuming = False
"""In the sweep's process of `pgrun resume=<sweep dir>` (resume_sweep_argv): its jobs were
checked when the sweep began, by the version that began it."""

_record: tuple[Path, bytes, str] | None = None
"""(sweep dir, its multirun.yaml as the sweep began, the resume's stamp) while a resume runs."""

RESUME_RECORD = "multirun-resume-{stamp}.yaml"


def keep_record() -> None:
    """A resumed sweep keeps the record it began with. Hydra's sweeper writes the config of each
    sweep it runs into `multirun.yaml`; a resume's (its hydra.launcher.* settings: n_jobs=1,
    another partition) goes to `multirun-resume-<stamp>.yaml` beside it, and `multirun.yaml`
    gets its own bytes back. Called in the sweep's process once the sweeper has written it, before
    any job starts; the file is replaced whole (never missing, never half written)."""
    global _record
    if _record is None:
        return
    sweep_dir, original, stamp = _record
    _record = None
    path = sweep_dir / MULTIRUN_FILE
    written = path.read_bytes()
    if written == original:
        return
    (sweep_dir / RESUME_RECORD.format(stamp=stamp)).write_bytes(written)
    tmp = path.with_name(f".{MULTIRUN_FILE}.{stamp}")
    tmp.write_bytes(original)
    tmp.replace(path)


def continue_hint() -> str:
    """'; continue the sweep with: pgrun resume=<dir>' while a sweep runs, else ''."""
    if current is None:
        return ""
    import os

    try:
        where = os.path.relpath(current)
    except ValueError:
        where = str(current)
    return f"; continue the sweep with: pgrun resume={where}"


@dataclass
class Job:
    """One job that a sweep's multirun.yaml lists."""

    num: int
    overrides: list[str]
    """The job's own overrides, e.g. ['variant=rtg', 'seed=0', 'total_steps=2000']."""
    path: Path
    """Its directory: <sweep dir>/<hydra.sweep.subdir>."""


def job_state(path: Path) -> str:
    """missing | new | interrupted | finished | failed | lost (see the module docstring)."""
    failed = path / FAILED_FILE
    if failed.is_file():
        first = (failed.read_text().splitlines() or [""])[0]
        return "lost" if first.startswith(SCHEDULER_PREFIX) else "failed"
    if not (path / ".hydra" / "overrides.yaml").is_file():
        return "missing"
    if (path / POLICY_FILE).is_file():
        return "finished"
    if any(path.glob("checkpoint-*.pt")):
        return "interrupted"
    return "new"


def failure_line(path: Path) -> str:
    lines = (path / FAILED_FILE).read_text().splitlines()
    return lines[0] if lines else "failed"


def diverged(path: Path) -> bool:
    """Whether the failed job in `path` stopped on a non-finite update (pgrun.guards.diverged's
    line), the one failure of a group's seed that leaves the others training."""
    return re.match(r"non-finite [\w ]+ at iteration \d+ ", failure_line(path)) is not None


def basic_sweep(cfg: DictConfig) -> bool:
    target = str(OmegaConf.select(cfg, "hydra.sweeper._target_", default=""))
    return target.endswith("BasicSweeper")


def expected_jobs(sweep_dir: Path) -> list[Job] | None:
    """Every job of the grid sweep in `sweep_dir`, from its multirun.yaml, as Hydra's basic
    sweeper expands it (hydra.sweeper.params, then the command line's overrides). None when
    the directory has no multirun.yaml or its sweeper picks the jobs as it goes (Optuna)."""
    file = Path(sweep_dir) / MULTIRUN_FILE
    if not file.is_file():
        return None
    cfg = load_record(sweep_dir)  # DamagedRecord where it cannot be read
    if not basic_sweep(cfg):
        return None
    return jobs_of(cfg, Path(sweep_dir))


def jobs_of(cfg: DictConfig, sweep_dir: Path) -> list[Job]:
    """The jobs of a grid sweep's record `cfg` (see expected_jobs)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pgrun.views import exclude_keys_of

    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += [str(o) for o in cfg.hydra.overrides.task]
    parser = OverridesParser.create()
    (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    naming = OmegaConf.to_container(cfg.hydra.job.config.override_dirname)
    naming["exclude_keys"] = exclude_keys_of(cfg)
    subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
    if subdir == JOB_SUBDIR:  # pgrun's own naming: its resolver, without OmegaConf's parser
        exclude = naming["exclude_keys"]
        return [
            Job(num, list(o), Path(sweep_dir) / job_subdir(o, exclude, num))
            for num, o in enumerate(batch)
        ]
    # any other naming (older sweeps named their jobs by hydra.job.override_dirname): the keys
    # hydra.sweep.subdir may refer to, set job by job on one node (parsed once per job)
    node = OmegaConf.create({"hydra": {"job": {}, "overrides": {"task": []}, "subdir": subdir}})
    jobs = []
    for num, overrides in enumerate(batch):
        dirname = get_overrides_dirname(
            parser.parse_overrides(overrides),
            exclude_keys=naming["exclude_keys"],
            item_sep=naming["item_sep"],
            kv_sep=naming["kv_sep"],
        )
        job = {"override_dirname": dirname, "num": num, "config": {"override_dirname": naming}}
        node.hydra.job = job
        node.hydra.overrides.task = list(overrides)
        jobs.append(Job(num, list(overrides), Path(sweep_dir) / str(node.hydra.subdir)))
    return jobs


def _quote(value: str) -> str:
    """A value as one Hydra override value, whatever it holds (',', '=', spaces, quotes)."""
    return "'" + value.replace("'", "\\'") + "'"


class DamagedRecord(Exception):
    """A sweep's multirun.yaml that cannot be read as one (the phrase: 'is empty')."""


def load_record(sweep_dir: Path) -> DictConfig:
    """The sweep's multirun.yaml, or DamagedRecord saying what is wrong with it."""
    try:
        cfg = OmegaConf.load(Path(sweep_dir) / MULTIRUN_FILE)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise DamagedRecord(f"cannot be read ({' '.join(str(exc).split())})") from None
    if not isinstance(cfg, DictConfig) or not cfg:
        raise DamagedRecord("is empty")
    if not isinstance(cfg.get("hydra"), DictConfig):
        raise DamagedRecord("has no hydra section")
    return cfg


def read_record(sweep_dir: Path) -> DictConfig:
    """load_record for `pgrun resume=<sweep dir>`: UserError where it cannot be read."""
    try:
        return load_record(sweep_dir)
    except DamagedRecord as exc:
        raise UserError(
            f"resume={sweep_dir}: its {MULTIRUN_FILE} {exc}; it is the sweep's record, written "
            "as the sweep began: put it back from a copy, or resume the jobs one by one with "
            "pgrun resume=<job dir>"
        ) from None


def resume_sweep_argv(sweep_dir: Path, others: list[str]) -> list[str]:
    """`pgrun resume=<sweep dir>` -> the sweep's own command line (its overrides, its launcher
    and its settings, into the same directory): each job continues where it stands (see
    start_job). Lost jobs' failure records are set aside so that they run again; the failed
    ones' only with --rerun-failed. `others` may hold --rerun-failed and hydra.launcher.*
    overrides (another partition or time limit): nothing that changes an experiment."""
    global resuming, _record
    original = (sweep_dir / MULTIRUN_FILE).read_bytes()
    cfg = read_record(sweep_dir)
    if not basic_sweep(cfg):
        raise UserError(
            f"resume={sweep_dir}: the sweep was not a grid sweep (hydra/sweeper=basic); "
            "resume its jobs one by one with pgrun resume=<job dir>"
        )
    rerun_failed = RERUN_FAILED in others
    given = [a for a in others if a.split("=", 1)[0].lstrip("+") == BUDGET]
    refused = [
        a
        for a in others
        if a != RERUN_FAILED and not a.startswith("hydra.launcher.") and a not in given
    ]
    if refused:
        raise UserError(
            f"resume={sweep_dir} continues that sweep with its own config: drop "
            f"{' '.join(refused)} (only {RERUN_FAILED}, {BUDGET}=N and hydra.launcher.* may be "
            "given)"
        )
    check_launcher_settings(sweep_dir, cfg, others)
    task = budget_task(sweep_dir, cfg, given[-1] if given else None)
    jobs = expected_jobs(sweep_dir) or []
    ended = all_ended(jobs, task, rerun_failed)
    if ended is not None:
        compares = OmegaConf.select(cfg, "hydra.callbacks.compare", default=None) is not None
        raise NothingToRun(sweep_dir, *ended, compares=compares)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for job in jobs:
        state = job_state(job.path)
        if state == "lost" or (state == "failed" and rerun_failed):
            kept = job.path / ".hydra" / f"failed-{stamp}.txt"
            kept.parent.mkdir(parents=True, exist_ok=True)
            (job.path / FAILED_FILE).rename(kept)
    resuming = True
    _record = (sweep_dir, original, rundir.stamp())
    skip = ("hydra.sweep.dir=", "hydra.mode=")
    hydra_args = [str(o) for o in cfg.hydra.overrides.hydra if not str(o).startswith(skip)]
    extra = [a for a in others if a != RERUN_FAILED and a not in given]
    return ["-m", *task, *hydra_args, *extra, f"hydra.sweep.dir={_quote(str(sweep_dir))}"]


def check_launcher_settings(sweep_dir: Path, cfg: DictConfig, others: list[str]) -> None:
    """Each hydra.launcher.<key>=... given to `pgrun resume=<sweep dir>` names a setting of
    the launcher the sweep recorded; else one line with the closest one and the settings it
    has (Hydra's own error said only "Key 'n_jbs' is not in struct", and a resume with nothing
    to run did not look at them)."""
    import difflib

    launcher = OmegaConf.select(cfg, "hydra.launcher", default=None)
    if not isinstance(launcher, DictConfig):
        return
    keys = [str(k) for k in launcher if k != "_target_"]
    name = str(launcher.get("_target_", "")).rsplit(".", 1)[-1] or "its launcher"
    for arg in others:
        if not arg.startswith("hydra.launcher."):
            continue
        key = arg.split("=", 1)[0].removeprefix("hydra.launcher.").split(".")[0]
        if key in keys:
            continue
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f"; did you mean hydra.launcher.{close[0]}?" if close else ""
        has = f"its settings: {', '.join(keys)}" if keys else "it has no settings"
        raise UserError(
            f"resume={rundir.display(sweep_dir)}: hydra.launcher.{key}: the sweep's launcher "
            f"({name}) has no such setting{hint} ({has})"
        )


class NothingToRun(Exception):
    """`pgrun resume=<sweep dir>` where no job would run: each one finished (and the resume
    trains none of them further) or failed and is kept. No launcher starts; the sweep's
    comparison is drawn again (pgrun.cli.main)."""

    def __init__(self, sweep_dir: Path, finished: int, failed: int, compares: bool):
        super().__init__(str(sweep_dir))
        self.sweep_dir, self.finished, self.failed, self.compares = (
            sweep_dir,
            finished,
            failed,
            compares,
        )

    def line(self) -> str:
        """'sw: nothing to run: all 4 jobs finished before (...)', the path as typed."""
        where, again = (
            rundir.display(self.sweep_dir),
            f"pgrun resume={rundir.shell(self.sweep_dir)}",
        )
        n = self.finished + self.failed
        every = "its 1 job" if n == 1 else f"all {n} jobs"
        if not self.failed:
            them = "it" if n == 1 else "them"
            ended, hint = f"{every} finished before", f"{again} total_steps=N trains {them} on to N"
        else:
            ended = f"{self.finished} of its {n} jobs finished before and {self.failed} failed"
            if not self.finished:
                ended = f"{every} failed"
            them = "it" if self.failed == 1 else "them"
            hint = f"once the cause is fixed, {again} {RERUN_FAILED} runs {them} again"
        return f"{where}: nothing to run: {ended} ({hint})"


def all_ended(jobs: list[Job], task: list[str], rerun_failed: bool) -> tuple[int, int] | None:
    """(finished, failed) where a resume with the task overrides `task` runs none of `jobs`:
    each one is finished and has nothing more to train at the task's total_steps, or failed
    and kept (not `rerun_failed`), and no other pgrun writes it. Else None."""
    if not jobs:
        return None
    budget = next((o.split("=", 1)[1] for o in reversed(task) if o.startswith(f"{BUDGET}=")), None)
    steps = _plain_int(budget) if budget is not None else None
    finished = failed = 0
    for job in jobs:
        state = job_state(job.path)
        if state == "failed" and not rerun_failed:
            failed += 1
            continue
        if state != "finished" or rundir.holder(job.path) is not None:
            return None
        try:  # a record that cannot be read: the launch reports it, as for any resume
            cfg = OmegaConf.load(job.path / ".hydra" / "config.yaml")
            if steps is not None:
                cfg.total_steps = steps
            if trains_further(cfg, job.path):
                return None
        except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException):
            return None
        finished += 1
    return finished, failed


BUDGET = "total_steps"


def _plain_int(value: str) -> int | None:
    value = value.strip().replace("_", "")
    return int(value) if value.isdigit() else None


def budget_task(sweep_dir: Path, cfg: DictConfig, given: str | None) -> list[str]:
    """The task overrides a resume of the sweep in `sweep_dir` (its record `cfg`) runs with:
    the sweep's own, its total_steps the last one a resume gave (`pgrun resume=<sweep dir>
    total_steps=N` trains every job on to N, and the resumes after it keep N), or `given`.
    Refused where the jobs differ in total_steps, where N is below the sweep's budget, and
    where a total_steps of its own would rename the jobs' directories (a sweep in which
    nothing varies is named by all its overrides)."""
    from pgrun.views import exclude_constant_overrides

    task = [str(o) for o in cfg.hydra.overrides.task]
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    records = sorted(Path(sweep_dir).glob(RESUME_RECORD.format(stamp="*")))
    last = None  # the budget of the last resume's record (one that gave total_steps=N keeps it)
    for record in reversed(records):
        with contextlib.suppress(Exception):  # a record cut short: the one before
            resumed = [str(o) for o in OmegaConf.load(record).hydra.overrides.task]
            last = next((o for o in resumed if o.split("=", 1)[0] == BUDGET), None)
            break
    if given is None:
        given = last
        if given is None or given in task:
            return task
    value = _plain_int(given.split("=", 1)[1])
    if value is None or value <= 0:
        raise UserError(f"{given}: give total_steps as a positive whole number of env steps")
    own = [o for o in task if o.split("=", 1)[0].lstrip("+") == BUDGET]
    swept = BUDGET in params or any(_plain_int(o.split("=", 1)[1]) is None for o in own)
    if swept:
        raise UserError(
            f"resume={sweep_dir}: its jobs differ in {BUDGET}, which {given} would make one; "
            f"train them further one by one with pgrun resume=<job dir> {given}, then "
            f"pgrun-compare {rundir.shell(sweep_dir)}"
        )
    current = _plain_int(own[-1].split("=", 1)[1]) if own else OmegaConf.select(cfg, BUDGET)
    if last is not None and isinstance(current, int):  # a resume trained its jobs further
        current = max(current, _plain_int(last.split("=", 1)[1]) or 0)
    if isinstance(current, int) and value < current:
        raise UserError(
            f"{given} is below the sweep's total_steps={current}: a resume trains its jobs "
            "further, never back"
        )
    if given in task:  # the sweep's own
        return task
    new = [o for o in task if o not in own] + [f"{BUDGET}={value}"]
    moved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    moved.hydra.overrides.task = new
    exclude_constant_overrides(moved)  # as the resumed sweep names its jobs
    before = [j.path for j in jobs_of(cfg, Path(sweep_dir))]
    if [j.path for j in jobs_of(moved, Path(sweep_dir))] != before:
        raise UserError(
            f"resume={sweep_dir}: {given} would rename its jobs' directories (nothing varies "
            f"in the sweep, so each job is named by all its overrides); train it further with "
            f"pgrun resume=<job dir> {given}"
        )
    return new


def trains_further(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether the finished job in `run_dir` has more to train at `cfg`'s total_steps (a sweep
    resumed with a larger one): its end has fewer env steps and it did not stop on
    stop_return, as pgrun.trainer._finished_before decides once the run is built."""
    from pgrun import checkpoint
    from pgrun.state import FINAL_WINDOW

    try:
        end = checkpoint.load_latest(run_dir)
    except (checkpoint.CheckpointError, OSError, KeyError):
        return False
    recent = list(end.get("recent_returns") or [])
    solved = (
        cfg.stop_return is not None
        and len(recent) == FINAL_WINDOW
        and sum(recent) / len(recent) >= cfg.stop_return
    )
    return int(end.get("env_steps", 0)) < int(cfg.total_steps) and not solved


def remove_stale_events(run_dir: Path) -> None:
    """A job that starts afresh in a directory where an earlier attempt died before its first
    checkpoint: that attempt's TensorBoard points cannot be continued; they go, so that the
    curve has each step once."""
    stale = list(run_dir.glob("events.out.tfevents.*"))
    for path in stale:
        path.unlink()
    if stale:
        log.warning(
            f"{run_dir}: an earlier attempt stopped before its first checkpoint; "
            "starting the job again from iteration 0"
        )


def finished_return(run_dir: Path) -> float:
    """The final return of a finished job (the mean of its last checkpoint's recent returns)."""
    import numpy as np

    from pgrun import checkpoint

    return float(np.mean(checkpoint.load_latest(run_dir)["recent_returns"]))
