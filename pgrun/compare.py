"""Compare the runs of a sweep across seeds: which variant wins, with how much confidence.

Runs are grouped by every override except ``seed`` (read from each job's
``.hydra/overrides.yaml``); a run's score is its final return (the mean of its last 5 batches).
Per env, every pair of groups gets a verdict: the probability of improvement P(X > Y) with a
95% stratified-bootstrap CI (pgrun/stats.py, after Agarwal et al. 2021); the groups are ranked
by their interquartile mean (IQM). A sweep over several envs gets the same across envs on
normalised scores, (return − random_return) / (solved_return − random_return). Written into the
sweep directory:

- ``comparison.png``: per env, the curves (mean over seeds on a shared grid of env steps, with a
  95% bootstrap band, or the seeds' range below 4 seeds), the performance profile, the IQM with
  its CI and the probability-of-improvement matrix; a row across envs when there are several;
- ``summary.md`` (the verdicts and a table) and ``summary.csv`` (the table): final return (mean
  and IQM with 95% CIs), env steps and seconds to the env's ``solved_return``, seeds, failures;
- ``aggregate/<group>``: a TensorBoard run per group, tags ``aggregate/episodic_return`` (the
  mean) and ``aggregate/episodic_return_band/<group>/{mean,lower,upper}``, with a Custom Scalars
  chart per group.

Runs after every multirun through :class:`CompareCallback` (``hydra.callbacks`` in
configs/config.yaml) and as ``pgrun-compare DIR...``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import logging
import math
import os
import re
import shutil
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pgrun import signals, stats
from pgrun.config import NO_FILE_OVERRIDES, count, fit_file_name, read_yaml, record_problem, slug
from pgrun.views import exclude_constant_overrides, layout_summary, text_summary

log = logging.getLogger("pgrun")

RETURN_TAG = "charts/episodic_return"
FINAL_TAG = "hparams/final_return"
FAILED_FILE = "failed.txt"  # written by pgrun/cli.py into a multirun job that failed
BUSY = "being written by another pgrun"  # a job's failure line while another process holds it
UNFINISHED = (
    "failed",
    "ended from outside",
    "being written",
    "not finished",
    "without an episode",
)  # Run.unfinished
NO_EPISODE = "no episode ended"  # a finished run's reason where it has no return at all
AGGREGATE_DIR = "aggregate"
NOT_FINISHED = "no final return"  # a run that stopped before its end, its reason's start
FINAL_WINDOW = 5  # batches in the running mean that defines the final return (pgrun/trainer.py)
GRID_POINTS = 100  # steps of the shared grid the seeds are interpolated onto
BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
MIN_SEEDS = stats.runs_needed(CONFIDENCE)  # 4: fewer, and no rank test could separate two groups


@dataclass
class Run:
    """One job of a sweep, as read back from its directory."""

    path: Path
    name: str
    """The directory relative to the compared one: TensorBoard's run name."""
    overrides: list[str]
    env_id: str
    threshold: float | None
    """The env's solved_return, or None."""
    random_return: float | None = None
    """The env's random_return (a uniform-random policy's mean return), or None."""
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(B,) int: env steps of each logged batch."""
    returns: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(B,) float: charts/episodic_return of each batch."""
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(B,) float: seconds since the run started, at each batch."""
    start_time: float = 0.0
    final_return: float | None = None
    failure: str | None = None
    """One line saying why the job failed; None for a finished run."""
    seed: int | None = None
    """Its config's seed (None where unknown)."""
    budget: int | None = None
    """Its total_steps, from its newest record (a resume may raise it; None where unknown)."""

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def unfinished(self) -> str | None:
        """Why the run has no result, as the closing lines sort it: "failed" (its failed.txt:
        fix the cause, --rerun-failed), "ended from outside" (the scheduler or a killed worker
        ended it: a resume runs it again), "being written" (another pgrun holds it) or "not
        finished" (interrupted or never started: a resume continues it), "without an episode"
        (it finished, and no episode ended in its budget: a larger total_steps gives it a
        return); None when it finished."""
        if self.failure is None:
            return None
        if self.failure.startswith(NO_EPISODE):
            return "without an episode"
        if (self.path / FAILED_FILE).is_file():
            from pgrun.sweep import SCHEDULER_PREFIX

            return "ended from outside" if self.failure.startswith(SCHEDULER_PREFIX) else "failed"
        return "being written" if self.failure.startswith(BUSY) else "not finished"


@dataclass
class Group:
    """The seeds of one setting (its overrides except seed) and their aggregates."""

    key: tuple[str, ...]
    label: str = ""
    varying: list[str] = field(default_factory=list)
    """The group's overrides that differ across the compared runs (the label, as a list)."""
    runs: list[Run] = field(default_factory=list)
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(G,) int: the shared step grid."""
    curves: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    """(S, G): each finished seed's return interpolated onto the grid."""
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lower: np.ndarray = field(default_factory=lambda: np.zeros(0))
    upper: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(G,): mean seconds since start at which the seeds reached each grid step."""
    row: dict[str, Any] = field(default_factory=dict)
    """The group's line of summary.csv."""

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def failed(self) -> list[Run]:
        """Its runs without a result, whatever the reason (Run.unfinished)."""
        return [r for r in self.runs if not r.ok]

    def unfinished(self) -> dict[str, list[Run]]:
        """Its runs without a result by Run.unfinished, in the order of UNFINISHED."""
        kinds = {kind: [r for r in self.runs if r.unfinished == kind] for kind in UNFINISHED}
        return {kind: runs for kind, runs in kinds.items() if runs}

    @property
    def env_id(self) -> str:
        return self.runs[0].env_id

    @property
    def threshold(self) -> float | None:
        return self.runs[0].threshold

    @property
    def random_return(self) -> float | None:
        return self.runs[0].random_return

    @property
    def short(self) -> str:
        """The label without the env (a panel, a verdict block names the env)."""
        shown = [o for o in self.varying if _key(o) not in ("env", "env.id")]
        # 'variant=rtg' -> 'rtg': the variant is what a comparison is about
        shown = [o.split("=", 1)[1] if _key(o) == "variant" else o for o in shown]
        return _label(shown) or self.label

    @property
    def finals(self) -> np.ndarray:
        """(S,) the finished seeds' final returns."""
        return np.array([r.final_return for r in self.finished], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Reading a sweep


def find_runs(root: Path) -> list[Path]:
    """Every job directory under `root` (any directory holding `.hydra/overrides.yaml`; the
    records of later attempts, `.hydra/resume-*/`, are not runs)."""
    found = root.rglob(".hydra/overrides.yaml")
    return sorted({p.parent.parent for p in found if p.parent.name == ".hydra"})


def _key(override: str) -> str:
    """'++optim.lr=0.1' -> 'optim.lr'."""
    return override.split("=", 1)[0].lstrip("+~")


ENV_KEYS = ("id", "solved_return", "random_return")


def env_settings(path: Path) -> tuple[str, float | None, float | None]:
    """(env.id, env.solved_return, env.random_return) of a saved config, as read through
    OmegaConf.select: '?' for a missing id, None for a missing or null return. A value in
    OmegaConf's own syntax (an interpolation, '???') is read by OmegaConf."""
    config = read_yaml(path) if path.is_file() else {}
    env = config.get("env") if isinstance(config, dict) else None
    env = env if isinstance(env, dict) else {}
    values = (env.get("id", "?"), env.get("solved_return"), env.get("random_return"))
    if any(isinstance(v, str) and ("${" in v or v == "???") for v in values):
        full = OmegaConf.load(path)
        values = tuple(
            OmegaConf.select(full, f"env.{k}", default="?" if k == "id" else None) for k in ENV_KEYS
        )
    env_id, solved, random = values
    return str(env_id), *(None if v is None else float(v) for v in (solved, random))


class DamagedRecord(Exception):
    """A run directory whose .hydra record cannot be read (pgrun.config.record_problem)."""


def load_run(path: Path, root: Path) -> Run:
    """Read a job's overrides, config and logged scalars (pgrun.logger.read_scalars).
    DamagedRecord where its .hydra record cannot be read."""
    from pgrun.logger import read_scalars

    problem = record_problem(path, optional=("config.yaml", "hydra.yaml"))  # what it reads
    if problem is not None:
        raise DamagedRecord(problem)
    overrides = [str(o) for o in read_yaml(path / ".hydra" / "overrides.yaml") or []]
    overrides = _as_its_sweep_began(overrides, path.parent)
    env_id, threshold, random = env_settings(path / ".hydra" / "config.yaml")
    name = path.relative_to(root).as_posix() if path != root else path.name
    run = Run(path, name, overrides, env_id, threshold, random_return=random)
    run.seed = _seed_of(overrides, path / ".hydra" / "config.yaml")
    run.budget = _budget_of(path)

    series, start = read_scalars(path, (RETURN_TAG, FINAL_TAG))
    if RETURN_TAG in series:
        events = series[RETURN_TAG]
        run.start_time = start
        run.steps = np.array([e[0] for e in events], dtype=np.int64)
        run.returns = np.array([e[1] for e in events], dtype=np.float64)
        run.seconds = np.array([e[2] for e in events]) - run.start_time
    past_end = False  # trained on after its final metric (resumed with a larger total_steps)
    if series.get(FINAL_TAG):
        step, value = series[FINAL_TAG][-1][:2]
        past_end = bool(len(run.steps) and run.steps[-1] > step)
        if not past_end:
            run.final_return = float(value)
    elif (path / "policy.pt").is_file():  # finished, killed before its final metric was logged
        run.final_return = _checkpointed_return(path)
    behind = _behind_its_sweep(path, run.budget) if run.final_return is not None else None
    if behind is not None:  # finished at the budget its sweep began with; a resume raised it
        run.final_return = None

    failed = path / FAILED_FILE
    if failed.is_file():
        lines = failed.read_text().splitlines()
        run.failure = lines[0] if lines else "failed"
    elif run.final_return is None or not math.isfinite(run.final_return):
        from pgrun.rundir import holder

        busy = holder(path)  # another pgrun trains it now (a job resumed on its own)
        kept = sorted(path.glob("checkpoint-*.pt"))
        if busy is not None:
            run.failure = f"{BUSY} ({busy})"
        elif behind is not None:
            from pgrun.rundir import shell

            run.failure = (
                f"{NOT_FINISHED} at total_steps={behind}: it finished at total_steps={run.budget}, "
                "and the resume that raised its sweep's budget stopped before it; pgrun "
                f"resume={shell(path.parent)} trains it on"
            )
        elif (
            (path / "policy.pt").is_file()
            and run.final_return is not None
            and math.isnan(run.final_return)
            and not past_end
        ):  # finished, and not one episode ended (rollout=steps, copies short of a time limit)
            from pgrun.rundir import shell

            sweep = (path.parent / "multirun.yaml").is_file()  # a sweep's job: resumed with it
            more = f"pgrun resume={shell(path.parent if sweep else path)} total_steps=N"
            run.failure = f"{NO_EPISODE} in its budget, so it has no return; {more} trains it on"
        elif past_end and run.budget is not None:
            from pgrun.rundir import shell

            run.failure = (
                f"{NOT_FINISHED}: stopped while trained on to total_steps={run.budget}; pgrun "
                f"resume={shell(path)} total_steps={run.budget} continues it"
            )
        elif kept:
            run.failure = f"{NOT_FINISHED}: interrupted; a resume continues from {kept[-1].name}"
        else:
            run.failure = f"{NOT_FINISHED}: no checkpoint; a resume starts it again"
    elif len(run.steps) == 0:
        run.failure = f"no {RETURN_TAG} logged"
    return run


def _seed_of(overrides: Sequence[str], config: Path | None = None) -> int | None:
    """A run's seed: its `seed=` override, else its saved config's (None where neither
    holds an integer)."""
    for o in overrides:
        if _key(o) == "seed":
            value = o.split("=", 1)[1]
            return int(value) if value.lstrip("-").isdigit() else None
    saved = read_yaml(config) if config is not None and config.is_file() else None
    seed = saved.get("seed") if isinstance(saved, dict) else None
    return seed if isinstance(seed, int) else None


def _as_its_sweep_began(overrides: list[str], sweep_dir: Path) -> list[str]:
    """A job's overrides as its sweep in `sweep_dir` began it. A job that first starts in a
    resume that raised the sweep's budget (`pgrun resume=<sweep dir> total_steps=N`) records
    total_steps=N where the sweep's other jobs record the budget they began with, and they were
    trained on to N along the curve a sweep begun with N gives: one setting, that of the sweep."""
    typed = next((o for o in reversed(overrides) if _key(o) == BUDGET), None)
    if typed is None or not (sweep_dir / "multirun.yaml").is_file():
        return overrides
    own, resumed = _sweep_budgets(sweep_dir, sweep_dir.stat().st_mtime_ns)  # a new record: anew
    if typed == own or typed not in resumed:
        return overrides
    return [o if _key(o) != BUDGET else own for o in overrides if _key(o) != BUDGET or own]


BUDGET = "total_steps"


@functools.lru_cache(maxsize=64)
def _sweep_budgets(sweep_dir: Path, mtime_ns: int) -> tuple[str | None, frozenset[str]]:
    """(the total_steps override the sweep in `sweep_dir` began with, or None; those its
    resumes gave, from their multirun-resume-<stamp>.yaml records), read once for the jobs of
    one sweep while its directory's `mtime_ns` stays."""

    def budget(record: Path) -> str | None:
        with contextlib.suppress(OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
            task = (read_yaml(record) or {}).get("hydra", {}).get("overrides", {}).get("task")
            return next((str(o) for o in reversed(task or []) if _key(str(o)) == BUDGET), None)
        return None

    resumed = frozenset(b for r in sweep_dir.glob("multirun-resume-*.yaml") if (b := budget(r)))
    return budget(sweep_dir / "multirun.yaml"), resumed


def _behind_its_sweep(path: Path, budget: int | None) -> int | None:
    """The total_steps a resume of the sweep of the finished job in `path` gave (`pgrun
    resume=<sweep dir> total_steps=N`, the largest), where the job has not been trained on to
    it (that resume stopped before it) and has more to train there (it did not stop on
    stop_return): its final return belongs to the smaller budget. Else None."""
    from pgrun.sweep import trains_further

    sweep_dir = path.parent
    if budget is None or not (sweep_dir / "multirun.yaml").is_file():
        return None
    own, resumed = _sweep_budgets(sweep_dir, sweep_dir.stat().st_mtime_ns)
    given = [int(b.split("=", 1)[1]) for b in resumed if b.split("=", 1)[1].isdigit()]
    goal = max(given, default=None)
    if goal is None or goal <= budget:
        return None
    saved = read_yaml(path / ".hydra" / "config.yaml")
    stop = saved.get("stop_return") if isinstance(saved, dict) else None
    cfg = OmegaConf.create({"stop_return": stop, "total_steps": goal})
    return goal if trains_further(cfg, path) else None


def _budget_of(path: Path) -> int | None:
    """total_steps of the run in `path`, as its newest record has it (.hydra/resume-<stamp>/
    of the last resume, else .hydra/)."""
    records = sorted(path.glob(".hydra/resume-*/config.yaml"), reverse=True)
    saved = None
    for record in [*records, path / ".hydra/config.yaml"]:  # a resume's cut short: the one before
        with contextlib.suppress(OSError, UnicodeDecodeError, yaml.YAMLError):
            saved = read_yaml(record)
        if isinstance(saved, dict):
            break
    steps = saved.get("total_steps") if isinstance(saved, dict) else None
    return steps if isinstance(steps, int) else None


def mixed_budgets(groups: Sequence[Group]) -> list[str]:
    """A line for each group whose runs had different total_steps (one resumed with more, say):
    their final returns are then not one sample; and one for the groups whose runs were all
    trained on to another total_steps than their overrides say (`pgrun resume=<sweep dir>
    total_steps=N`), whose label names the budget they began with."""
    notes = []
    extended: dict[tuple[int, str], list[str]] = {}
    for g in groups:
        counts: dict[int, int] = {}
        for r in g.runs:
            if r.budget is not None:
                counts[r.budget] = counts.get(r.budget, 0) + 1
        if len(counts) > 1:
            budgets = ", ".join(
                f"{b:,} ({n} run{'s' if n != 1 else ''})" for b, n in sorted(counts.items())
            )
            notes.append(
                f"{g.label}: runs of different budgets in one group, total_steps {budgets}: "
                "its statistics mix them"
            )
        typed = next((o.split("=", 1)[1] for o in g.key if _key(o) == "total_steps"), None)
        if len(counts) == 1 and typed is not None and typed.isdigit():
            (budget,) = counts
            if budget != int(typed):  # every run resumed with another (pgrun resume=<sweep>)
                extended.setdefault((budget, typed), []).append(g.label)
    for (budget, typed), labels in extended.items():
        notes.append(
            f"{', '.join(labels)}: trained on to total_steps {budget:,} by a resume (their sweep "
            f"began with total_steps={typed})"
        )
    return notes


def short_runs(groups: Sequence[Group]) -> list[str]:
    """A line for the groups whose finished runs logged no more batches than the final return
    averages (FINAL_WINDOW): their final return then includes the first batch, the untrained
    policy's, and a verdict compares little that was learnt. Groups with the same counts share
    the line."""
    by_text: dict[str, list[str]] = {}
    for g in groups:
        logged = [r for r in g.finished if len(r.steps)]
        short = [r for r in logged if len(r.steps) <= FINAL_WINDOW]
        if not short:
            continue
        counts = sorted({len(r.steps) for r in short})
        per = int(np.median([r.steps[-1] / len(r.steps) for r in short]))  # a batch's mean
        some = f"{len(short)} of {len(logged)} " if len(short) < len(logged) else ""
        if counts == [1]:
            text = (
                f"{some}runs of 1 batch (about {per:,} env steps): their final return is the "
                "untrained policy's"
            )
        else:
            n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
            text = (
                f"{some}runs of {n} batches (about {per:,} env steps each): their final return, "
                f"the mean of the last {FINAL_WINDOW}, includes the untrained policy's first batch"
            )
        by_text.setdefault(text, []).append(g.label)
    return [f"{', '.join(labels)}: {text}; raise total_steps" for text, labels in by_text.items()]


def drop_repeated_seeds(runs: Sequence[Run]) -> tuple[list[Run], list[str]]:
    """The runs with one per setting and seed, and a line for each setting that had seeds run
    more than once: a seed's repeats are not independent evidence (on the CPU the same seed
    trains the same run; a batched group's seed follows its run alone for a while), and
    counting them would narrow the intervals and sharpen the verdicts. The one kept is the
    newest finished run (else the newest)."""
    by: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.seed is not None:
            by.setdefault((_setting(run), run.seed), []).append(run)
    dropped: set[int] = set()
    repeats: dict[tuple[str, ...], list[tuple[int, int, str]]] = {}
    for (key, seed), same in by.items():
        if len(same) < 2:
            continue
        kept = max(same, key=lambda r: (r.ok, r.start_time, r.name))
        dropped |= {id(r) for r in same if r is not kept}
        repeats.setdefault(key, []).append((seed, len(same), kept.name))
    notes = []
    for key, seeds in repeats.items():
        setting = ",".join(key) or "all runs"
        if len(seeds) == 1:
            ((seed, n, name),) = seeds
            which = f"{n} runs of seed {seed}, counted once ({name})"
        else:
            counts = {n for _, n, _ in seeds}
            listed = ", ".join(str(seed) for seed, _, _ in sorted(seeds))
            times = f"{counts.pop()} runs each" if len(counts) == 1 else "more than one run each"
            which = f"seeds {listed}: {times}, each counted once (its newest finished run)"
        notes.append(f"{setting}: {which}: a seed's repeats are not more evidence; use other seeds")
    return [r for r in runs if id(r) not in dropped], notes


def _checkpointed_return(path: Path) -> float | None:
    """The final return in the last checkpoint of a finished run (what its final metric logs),
    or None where it has none that can be read."""
    from pgrun import checkpoint
    from pgrun.sweep import finished_return

    try:
        return finished_return(path)
    except (checkpoint.CheckpointError, OSError, KeyError, IndexError):
        return None


def load_runs(root: Path) -> tuple[list[Run], dict[str, str]]:
    """The runs under `root` (find_runs, load_run), and for each directory whose record cannot
    be read, by its name, what is wrong with it."""
    runs, damaged = [], {}
    for path in find_runs(root):
        try:
            runs.append(load_run(path, root))
        except DamagedRecord as exc:
            damaged[path.relative_to(root).as_posix() if path != root else path.name] = str(exc)
    return runs, damaged


def missing_runs(
    root: Path, found: Sequence[Run], damaged: dict[str, str] | None = None
) -> list[Run]:
    """The jobs that the sweep's multirun.yaml lists but that left no run directory (never
    started, or cancelled before they started), or one whose record cannot be read (killed
    while Hydra wrote it: `damaged`, by name, as load_runs gives it), as runs without a result;
    such a job is taken out of `damaged`."""
    from pgrun.sweep import expected_jobs, failure_line

    jobs = expected_jobs(root)
    if not jobs:
        return []
    have = {r.path.resolve() for r in found}
    by_env = {
        o: (r.env_id, r.threshold, r.random_return)
        for r in found
        for o in r.overrides
        if _key(o) == "env"
    }
    sweep_env = env_settings(root / "multirun.yaml")
    missing = []
    for job in jobs:
        if job.path.resolve() in have:
            continue
        env = next((o for o in job.overrides if _key(o) == "env"), None)
        if env is not None and env not in by_env:  # a swept env none of whose jobs ran
            by_env[env] = _env_file_settings(env.split("=", 1)[1])
        job_env, threshold, random = by_env[env] if env is not None else sweep_env
        name = job.path.relative_to(root).as_posix()
        problem = (damaged or {}).pop(name, None)
        if (job.path / FAILED_FILE).is_file():
            reason = failure_line(job.path)
        elif not job.path.is_dir():
            reason = "never started: no directory"
        elif not (job.path / ".hydra").is_dir():
            reason = "never started: no .hydra record"
        else:  # e.g. killed while Hydra wrote it: a resume writes it again (hydra_subdir)
            reason = f"its record {problem or record_problem(job.path)}"
        run = Run(job.path, name, job.overrides, job_env, threshold, random, failure=reason)
        run.seed = _seed_of(job.overrides)
        missing.append(run)
    return missing


def _env_file_settings(name: str) -> tuple[str, float | None, float | None]:
    """env_settings of configs/env/<name>.yaml (env=<name>); (name, None, None) without one."""
    from pgrun.hints import env_file

    file = env_file(name)
    return env_settings(file) if name and file.is_file() else (name, None, None)


# What the runs of one group may differ in: their seed, and progress= (a terminal's bar,
# which changes no number).
_NOT_SETTINGS = ("seed", "progress")


def _setting(run: Run) -> tuple[str, ...]:
    """A run's overrides except its seed (and progress=, a terminal's bar), sorted: the runs
    of one setting share it."""
    return tuple(sorted(o for o in run.overrides if _key(o) not in _NOT_SETTINGS))


def _unescaped(override: str) -> str:
    """An override as typed: Hydra's sweeper stores a swept value's special characters escaped
    (`variant.weights=mymod\\:weights`)."""
    return re.sub(r"\\(.)", r"\1", override)


def _label(overrides: Sequence[str], added: bool = False) -> str:
    """The overrides as typed, without the two pgrun adds for an env id that has no env file
    (`env.solved_return=null`, pgrun.hints) unless `added`."""
    return ",".join(_unescaped(o) for o in overrides if added or o not in NO_FILE_OVERRIDES)


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Group by every override except seed; label each group by the overrides that vary."""
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        key = _setting(run)
        groups.setdefault(key, Group(key)).runs.append(run)
    common = set.intersection(*(set(k) for k in groups)) if groups else set()
    for group in groups.values():
        group.varying = [o for o in group.key if o not in common]
        group.label = _label(group.varying) or _label(group.key) or "all runs"
    labels = [g.label for g in groups.values()]
    for group in groups.values():  # keys that only some groups set can make labels collide
        if labels.count(group.label) > 1:
            group.label = _label(group.key) or "all runs"
    labels = [g.label for g in groups.values()]
    for group in groups.values():  # an env.solved_return=null typed by hand
        if labels.count(group.label) > 1:
            group.label = _label(group.key, added=True) or "all runs"
    return list(groups.values())


# ---------------------------------------------------------------------------------------------
# Statistics


def bootstrap_ci(
    values: np.ndarray, level: float = CONFIDENCE, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap confidence interval of the mean over seeds.

    Args:
        values: (S, G) float: S seeds, G points (each column is bootstrapped on its own, with
            the same resampled seeds).
    Returns:
        lower, upper: (G,) float. With one seed both equal that seed's values.
    """
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"values must be (S, G) with S >= 1, got shape {values.shape}")
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))  # (B, S): seeds drawn with replacement
    means = values[idx].mean(axis=1)  # (B, G)
    alpha = (1.0 - level) / 2.0
    lower, upper = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return lower, upper


def band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, G) -> lower, upper (G,): the 95% bootstrap CI of the mean over seeds from MIN_SEEDS
    seeds on, the range of the seeds below (a bootstrap of 2 seeds gives their range anyway)."""
    if curves.shape[0] >= MIN_SEEDS:
        return bootstrap_ci(curves)
    return curves.min(axis=0), curves.max(axis=0)


def band_name(seeds: int) -> str:
    return f"{CONFIDENCE:.0%} CI" if seeds >= MIN_SEEDS else "range"


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean after dropping the lowest and highest 25% (floor(n/4) each)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0:
        return float("nan")
    k = x.size // 4
    return float(x[k : x.size - k].mean())


def running_mean(x: np.ndarray, window: int = FINAL_WINDOW) -> np.ndarray:
    """(B,) -> (B,): mean of the last `window` entries up to each index (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    i = np.arange(1, x.size + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def time_to_threshold(run: Run, threshold: float) -> tuple[float, float]:
    """(env steps, seconds) at the first batch where the running mean of the last 5 batches'
    returns (the final return's definition) reaches `threshold`; (inf, inf) if it never does."""
    hit = np.flatnonzero(running_mean(run.returns) >= threshold)
    if hit.size == 0:
        return math.inf, math.inf
    return float(run.steps[hit[0]]), float(run.seconds[hit[0]])


def shared_grid(runs: Sequence[Run], points: int = GRID_POINTS) -> np.ndarray:
    """(G,) int: evenly spaced env steps where every run has data (from the latest first
    logged step to the earliest last one), so no curve is extrapolated."""
    lo = max(int(r.steps[0]) for r in runs)
    hi = min(int(r.steps[-1]) for r in runs)
    if hi <= lo:
        return np.array([lo], dtype=np.int64)
    return np.unique(np.round(np.linspace(lo, hi, points)).astype(np.int64))


def aggregate(group: Group, points: int = GRID_POINTS) -> None:
    """Fill in the group's grid, mean curve, band and summary row. The final return's CIs are
    left empty (NaN) below MIN_SEEDS seeds, where no interval means what it says."""
    finished = group.finished
    row: dict[str, Any] = {
        "env": group.env_id,
        "group": group.label,
        "overrides": " ".join(group.key),
        "seeds": len(finished),
        "failed": 0,
        "final_return_mean": math.nan,
        "final_return_ci_low": math.nan,
        "final_return_ci_high": math.nan,
        "final_return_iqm": math.nan,
        "final_return_iqm_ci_low": math.nan,
        "final_return_iqm_ci_high": math.nan,
        "threshold": "" if group.threshold is None else group.threshold,
        "reached": "",
        "steps_to_threshold": "",
        "seconds_to_threshold": "",
        "failed_jobs": "",
        "ended_from_outside": 0,
        "ended_from_outside_jobs": "",
        "not_finished": 0,
        "not_finished_jobs": "",
    }
    for kind, runs in group.unfinished().items():  # being written: not finished, for now
        column = _COLUMN[kind]
        row[column] += len(runs)
        row[f"{column}_jobs"] = " ".join(
            filter(None, [row[f"{column}_jobs"], *(r.name for r in runs)])
        )
    group.row = row
    if not finished:
        return
    group.steps = shared_grid(finished, points)
    group.curves = np.stack([np.interp(group.steps, r.steps, r.returns) for r in finished])
    group.mean = group.curves.mean(axis=0)
    group.lower, group.upper = band(group.curves)
    group.seconds = np.mean([np.interp(group.steps, r.steps, r.seconds) for r in finished], axis=0)

    finals = group.finals
    row.update(final_return_mean=float(finals.mean()), final_return_iqm=iqm(finals))
    if len(finals) >= MIN_SEEDS:
        low, high = bootstrap_ci(finals[:, None])
        _, iqm_low, iqm_high = stats.iqm_interval([finals])
        row.update(
            final_return_ci_low=float(low[0]),
            final_return_ci_high=float(high[0]),
            final_return_iqm_ci_low=iqm_low,
            final_return_iqm_ci_high=iqm_high,
        )
    if group.threshold is not None:
        hits = np.array([time_to_threshold(r, group.threshold) for r in finished])  # (S, 2)
        reached = int(np.isfinite(hits[:, 0]).sum())
        # Median over seeds, a seed that never reached it counting as infinitely slow.
        steps, seconds = np.median(hits, axis=0)
        row.update(
            reached=f"{reached}/{len(finished)}",
            steps_to_threshold=int(steps) if math.isfinite(steps) else "",
            seconds_to_threshold=round(float(seconds), 2) if math.isfinite(seconds) else "",
        )


# ---------------------------------------------------------------------------------------------
# Verdicts: which group is better, and how sure that is


ALL_ENVS = "all envs (normalised)"


@dataclass
class Verdict:
    """P(a > b) for a random run of group a against one of group b, with its 95% CI."""

    better: str
    worse: str
    p: float
    low: float
    high: float
    sizes: list[tuple[int, int]]
    """(seeds of a, seeds of b) on each env."""

    @property
    def enough(self) -> bool:
        return stats.enough_runs(self.sizes)

    @property
    def relation(self) -> str:
        """'>' when the CI lies above 1/2 and there are enough seeds for an exact rank test
        to reach p < 0.05 (stats.enough_runs), '~' otherwise (not separated): with 2 or 3 seeds
        a bootstrap interval collapses to [1.00, 1.00] whenever every run of one beats every run
        of the other, which happens by chance with probability 2 / C(2n, n)."""
        return ">" if self.enough and self.low > 0.5 else "~"

    def line(self, width: int = 0) -> str:
        ci = "[–, –]" if math.isnan(self.low) else f"[{self.low:.2f}, {self.high:.2f}]"
        seeds = {n for pair in self.sizes for n in pair}
        if len(seeds) == 1:
            sizes = f"{count(seeds.pop(), 'seed')} each"
        elif len(self.sizes) == 1:
            sizes = f"{self.sizes[0][0]} and {self.sizes[0][1]} seeds"
        else:
            sizes = "seeds per env: " + ", ".join(f"{m}/{n}" for m, n in self.sizes)
        pair = f"{self.better} {self.relation} {self.worse}"
        return f"{pair:<{width}}  P(improvement) = {self.p:.2f} {ci}  ({sizes})"


@dataclass
class Ranking:
    """The groups of one env (or of all envs, on normalised scores), best IQM first, with a
    verdict for every pair."""

    env: str
    labels: list[str]
    scores: dict[str, list[np.ndarray]]
    """label -> one (S_t,) array of final returns (normalised across envs) per env."""
    iqm: dict[str, tuple[float, float, float]]
    """label -> (IQM, low, high) over all its runs; low, high NaN below MIN_SEEDS seeds."""
    verdicts: list[Verdict]
    note: str = ""

    @property
    def too_few(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.enough]


def rank(env: str, scores: dict[str, list[np.ndarray]], note: str = "") -> Ranking:
    """Rank groups by the IQM of their scores; a verdict for each pair, oriented so that its
    P(improvement) is at least 1/2 (better first).

    Args:
        scores: label -> one (S_t,) array per env, the same envs in the same order for every
            label.
    """
    iqms = {}
    for label, per_env in scores.items():
        if min(len(s) for s in per_env) >= MIN_SEEDS:
            iqms[label] = stats.iqm_interval(per_env)
        else:
            iqms[label] = (float(stats.iqm(np.concatenate(per_env))), math.nan, math.nan)
    labels = sorted(scores, key=lambda k: -iqms[k][0])
    verdicts = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            p, low, high = stats.poi_interval(scores[a], scores[b])
            if p < 0.5:  # the IQM and the pairwise comparison can disagree: follow the latter
                a_, b_, p, low, high = b, a, 1 - p, 1 - high, 1 - low
            else:
                a_, b_ = a, b
            sizes = [(len(x), len(y)) for x, y in zip(scores[a_], scores[b_], strict=True)]
            verdicts.append(Verdict(a_, b_, p, low, high, sizes))
    verdicts.sort(key=lambda v: (labels.index(v.better), labels.index(v.worse)))
    return Ranking(env, labels, scores, iqms, verdicts, note)


def rankings(groups: Sequence[Group]) -> list[Ranking]:
    """One Ranking per env with two or more groups of finished runs, and one across envs on
    normalised scores when the sweep spans several envs: (return − random_return) /
    (solved_return − random_return), over the groups present on every env that has both."""
    out = []
    envs = sorted({g.env_id for g in groups})
    for env in envs:
        panel = [g for g in groups if g.env_id == env and g.finished]
        if len(panel) >= 2:
            out.append(rank(env, {g.short: [g.finals] for g in panel}))
    scaled = [e for e in envs if _scale(groups, e) is not None]
    if len(envs) >= 2 and len(scaled) >= 2:
        per_label: dict[str, list[np.ndarray]] = {}
        for env in scaled:
            random, solved = _scale(groups, env)
            for g in groups:
                if g.env_id == env and g.finished:
                    per_label.setdefault(g.short, []).append(
                        stats.normalise(g.finals, random, solved)
                    )
        common = {k: v for k, v in per_label.items() if len(v) == len(scaled)}
        if len(common) >= 2:
            left = sorted(set(envs) - set(scaled))
            note = f"over {', '.join(scaled)}" + (
                f"; left out (no random_return or solved_return): {', '.join(left)}" if left else ""
            )
            out.append(rank(ALL_ENVS, common, note))
    return out


def _scale(groups: Sequence[Group], env: str) -> tuple[float, float] | None:
    """(random_return, solved_return) of `env`, or None when either is unknown."""
    g = next(g for g in groups if g.env_id == env)
    if g.random_return is None or g.threshold is None or not g.threshold > g.random_return:
        return None
    return g.random_return, g.threshold


def verdict_block(ranking: Ranking) -> list[str]:
    """The ranked verdict lines of one env, and a warning when there are too few seeds."""
    title = ranking.env + (f" ({ranking.note})" if ranking.note else "")
    lines = [
        f"{title}: in order of the IQM of the final returns, each pair's likelier winner first"
    ]
    width = max(len(f"{v.better} > {v.worse}") for v in ranking.verdicts)
    lines += [f"  {v.line(width)}" for v in ranking.verdicts]
    if ranking.too_few:
        v = ranking.too_few[0]
        sizes = " x ".join(f"C({m + n},{m})" for m, n in v.sizes)
        lines.append(
            f"  warning: too few seeds for these intervals to mean anything: even if every run "
            f"of one beat every run of the other, an exact rank test would give p >= "
            f"{stats.smallest_p_value(v.sizes):.2f} (2 / {sizes}) > 0.05; "
            f"{MIN_SEEDS} seeds per group would do (2 / C(8,4) = 0.03)"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Outputs


def _curves(group: Group, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x grid, mean, lower, upper) of the group's seeds against env steps or seconds."""
    if x == "steps":
        return group.steps, group.mean, group.lower, group.upper
    finished = group.finished
    lo = max(float(r.seconds[0]) for r in finished)
    hi = min(float(r.seconds[-1]) for r in finished)
    grid = np.linspace(lo, hi, GRID_POINTS) if hi > lo else np.array([lo])
    curves = np.stack([np.interp(grid, r.seconds, r.returns) for r in finished])
    lower, upper = band(curves)
    return grid, curves.mean(axis=0), lower, upper


def preload() -> None:
    """The imports `plot` needs (matplotlib's, about a second), made ahead: the batched
    launcher calls it in a thread of the sweep's process while the jobs train there."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.layout_engine  # noqa: F401


def plot(groups: Sequence[Group], ranked: Sequence[Ranking], path: Path, x: str = "steps") -> None:
    """comparison.png: a row per env (the curves, mean and 95% band over seeds; the performance
    profile of the final returns; their IQM with its 95% CI; the probability-of-improvement
    matrix), and a row over all envs on normalised scores when there is one.

    x: "steps" (env steps) or "seconds" (wall-clock seconds since each run's start).
    """
    # A Figure on an Agg canvas of its own: neither pyplot's import and backend machinery nor
    # a change of the process's backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import TightLayoutEngine

    envs = sorted({g.env_id for g in groups})
    labels = sorted({g.short for g in groups})
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}  # the same in every panel
    by_env = {r.env: r for r in ranked}
    rows = [*envs, *([ALL_ENVS] if ALL_ENVS in by_env else [])]
    fig = Figure(figsize=(22, 4.4 * len(rows)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 4, squeeze=False, gridspec_kw={"width_ratios": [1.5, 1, 1, 1]})
    for ax_row, env in zip(axes, rows, strict=True):
        curves, profile, bars, matrix = ax_row
        ranking = by_env.get(env)
        if env == ALL_ENVS:
            curves.set_visible(False)
            unit = "normalised final return (random 0, solved 1)"
        else:
            _plot_curves(curves, [g for g in groups if g.env_id == env], colors, x)
            unit = "final return"
        if ranking is None:
            for ax in (profile, bars, matrix):
                ax.set_visible(False)
            continue
        if env == ALL_ENVS:  # the panels' titles stay short: what was pooled goes on the left
            curves.set_visible(True)
            curves.axis("off")
            text = textwrap.fill(f"{ALL_ENVS}: {ranking.note}", 60)
            curves.text(0.5, 0.5, text, ha="center", va="center", transform=curves.transAxes)
        _plot_profile(profile, ranking, colors, unit, env)
        _plot_iqm(bars, ranking, colors, unit, env)
        _plot_matrix(matrix, ranking, env)
    fig.suptitle(
        f"{CONFIDENCE:.0%} confidence: bootstrap over seeds (curves), stratified bootstrap "
        f"(profiles, IQM, P(improvement)); {MIN_SEEDS}+ seeds a group for intervals to mean much",
        fontsize="medium",
    )
    # fig.tight_layout() without leaving a layout engine set, which would make savefig lay
    # the figure out once more (a draw of every text) before drawing it
    TightLayoutEngine().execute(fig)
    fig.savefig(path, dpi=72)


def _plot_curves(ax, panel: Sequence[Group], colors: dict[str, str], x: str) -> None:
    for g in panel:
        color = colors[g.short]
        unfinished = unfinished_text(g)
        n = f"n={len(g.finished)}" + (f", {unfinished}" if unfinished else "")
        label = f"{g.short} ({n}, {band_name(len(g.finished))})"
        if not g.finished:
            ax.plot([], [], color=color, label=label)
            continue
        grid, mean, lower, upper = _curves(g, x)
        if grid.size == 1:  # a single batch per run: a point and its interval
            err = [mean - lower, upper - mean]
            ax.errorbar(grid, mean, yerr=err, fmt="o", color=color, capsize=4, label=label)
        else:
            ax.plot(grid, mean, color=color, lw=1.8, label=label)
            ax.fill_between(grid, lower, upper, color=color, alpha=0.2, lw=0)
    threshold = panel[0].threshold
    if threshold is not None:
        ax.axhline(threshold, color="0.4", ls="--", lw=1, label=f"solved ({threshold:g})")
    _title(ax, f"{panel[0].env_id}: return, mean over seeds, band: {_bands(panel)}")
    ax.set_xlabel("environment steps" if x == "steps" else "wall-clock seconds")
    ax.set_ylabel("episodic return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")


TITLE_SHARE = 0.92  # of its column's share of the figure, what a panel's title may take


def _title(ax, text: str) -> None:
    """The axes' title, in as many lines as keep it within the panel's width (a title wider
    than its panel runs over its neighbour's, or past the figure's edge), measured as drawn; a
    title that does not fit on one line breaks first after its env id ('CartPole-v1:')."""
    fig = ax.get_figure()
    renderer = fig.canvas.get_renderer()
    # the panel's share of the figure's width, less the margins and gaps the layout leaves
    # (the cells before the layout are narrower than those it draws)
    spec = ax.get_subplotspec()
    grid = spec.get_gridspec()
    ratios = grid.get_width_ratios() or [1] * grid.ncols
    share = sum(ratios[c] for c in spec.colspan) / sum(ratios)
    width = TITLE_SHARE * share * fig.bbox.width
    head, sep, rest = text.partition(": ")
    for chars in range(len(text), 9, -1):
        if chars == len(text):
            lines = [text]
        elif sep:
            lines = textwrap.wrap(head + ":", chars) + textwrap.wrap(rest, chars)
        else:
            lines = textwrap.wrap(text, chars)
        ax.set_title("\n".join(lines))
        if ax.title.get_window_extent(renderer).width <= width:
            return


def _bands(panel: Sequence[Group]) -> str:
    """What the curves' bands of a panel are: the CI, the seeds' range, or which is which."""
    names = {band_name(len(g.finished)) for g in panel if g.finished}
    if len(names) == 1:
        return names.pop()
    return f"{CONFIDENCE:.0%} CI, the seeds' range below {MIN_SEEDS} seeds"


def _plot_profile(ax, ranking: Ranking, colors: dict[str, str], unit: str, name: str) -> None:
    values = np.concatenate([np.concatenate(v) for v in ranking.scores.values()])
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    taus = np.linspace(lo - pad, hi + pad, 60)
    for label in ranking.labels:
        profile, low, high = stats.performance_profile(ranking.scores[label], taus)
        n = min(len(s) for s in ranking.scores[label])
        ax.plot(taus, profile, color=colors[label], lw=1.6, label=f"{label} (n={n})")
        if n >= MIN_SEEDS:  # fewer seeds: no band, as the IQM gets no interval
            ax.fill_between(taus, low, high, color=colors[label], alpha=0.15, lw=0)
    ax.set_ylim(-0.03, 1.03)
    banded = [min(len(s) for s in ranking.scores[k]) >= MIN_SEEDS for k in ranking.labels]
    band = (
        f"band: {CONFIDENCE:.0%} CI"
        if all(banded)
        else f"band: {CONFIDENCE:.0%} CI where {MIN_SEEDS}+ seeds"
        if any(banded)
        else f"no band below {MIN_SEEDS} seeds"
    )
    _title(ax, f"{name}: performance profile, {band}")
    ax.set_xlabel(unit + " τ")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.set_ylabel("fraction of runs with a score > τ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")


def _plot_iqm(ax, ranking: Ranking, colors: dict[str, str], unit: str, name: str) -> None:
    labels = ranking.labels[::-1]  # the best at the top
    for i, label in enumerate(labels):
        value, low, high = ranking.iqm[label]
        n = min(len(s) for s in ranking.scores[label])
        if math.isnan(low):
            ax.plot([value], [i], "o", color=colors[label])
            ax.annotate(f"no CI: n={n}", (value, i), textcoords="offset points", xytext=(6, 4),
                        fontsize="small")  # fmt: skip
        else:
            ax.barh(i, high - low, left=low, height=0.5, color=colors[label], alpha=0.35)
            ax.plot([value, value], [i - 0.25, i + 0.25], color=colors[label], lw=2)
    ax.set_yticks(range(len(labels)), labels)
    _title(ax, f"{name}: IQM with {CONFIDENCE:.0%} CI")
    ax.set_xlabel("IQM of the " + unit)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # long labels (-229.8) must not run together
    ax.grid(alpha=0.3, axis="x")


def _plot_matrix(ax, ranking: Ranking, name: str) -> None:
    labels = ranking.labels
    k = len(labels)
    p = np.full((k, k), np.nan)
    for v in ranking.verdicts:
        i, j = labels.index(v.better), labels.index(v.worse)
        p[i, j], p[j, i] = v.p, 1.0 - v.p
    ax.imshow(p, cmap="RdBu", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            if i != j:
                v = next(
                    v for v in ranking.verdicts if {v.better, v.worse} == {labels[i], labels[j]}
                )
                low, high = (v.low, v.high) if labels[i] == v.better else (1 - v.high, 1 - v.low)
                ci = "" if math.isnan(low) else f"\n[{low:.2f}, {high:.2f}]"
                color = "white" if abs(p[i, j] - 0.5) > 0.3 else "black"  # on dark cells
                ax.text(j, i, f"{p[i, j]:.2f}{ci}", ha="center", va="center", fontsize="small",
                        color=color)  # fmt: skip
    ax.set_xticks(range(k), labels, rotation=30, ha="right")
    ax.set_yticks(range(k), labels)
    _title(ax, f"{name}: P(row > column)")


CSV_COLUMNS = [
    "env",
    "group",
    "overrides",
    "seeds",
    "failed",
    "final_return_mean",
    "final_return_ci_low",
    "final_return_ci_high",
    "final_return_iqm",
    "final_return_iqm_ci_low",
    "final_return_iqm_ci_high",
    "threshold",
    "reached",
    "steps_to_threshold",
    "seconds_to_threshold",
    "failed_jobs",
    "ended_from_outside",
    "ended_from_outside_jobs",
    "not_finished",
    "not_finished_jobs",
]
_COLUMN = {  # summary.csv's columns for each kind of Run.unfinished
    "failed": "failed",
    "ended from outside": "ended_from_outside",
    "being written": "not_finished",
    "not finished": "not_finished",
    "without an episode": "not_finished",
}


def unfinished_text(group: Group) -> str:
    """'2 failed, 1 not finished': its runs without a result, by kind; '' when there are none."""
    return ", ".join(f"{len(runs)} {kind}" for kind, runs in group.unfinished().items())


def write_csv(groups: Sequence[Group], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for g in groups:
            writer.writerow({k: _csv_value(g.row[k]) for k in CSV_COLUMNS})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _num(value: Any, fmt: str = ".1f") -> str:
    if value == "" or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt) if isinstance(value, (int, float)) else str(value)


def _ci(low: Any, high: Any) -> str:
    if isinstance(low, float) and math.isnan(low):
        return ""
    return f" [{_num(low)}, {_num(high)}]"


def write_markdown(
    groups: Sequence[Group],
    ranked: Sequence[Ranking],
    failures: Sequence[Run],
    path: Path,
    title: str,
    notes: Sequence[str] = (),
) -> None:
    lines = [
        f"# Comparison: {title}",
        "",
        "![comparison](comparison.png)",
        "",
        "## Verdicts",
        "",
        "P(improvement) of `a > b`: the probability that a random run of a ends with a higher "
        "final return than a random run of b (ties count half), with its 95% stratified-"
        "bootstrap confidence interval; `>` when the interval lies above 0.5, `~` when it holds "
        "0.5 (no clear winner). Across envs on normalised scores: (return − random_return) / "
        "(solved_return − random_return).",
        "",
    ]
    if not ranked:
        lines.append("(no env with two groups of finished runs)")
    for ranking in ranked:
        lines += ["```", *verdict_block(ranking), "```", ""]
    lines += [
        "## Groups",
        "",
        f"Final return: each run's mean return over its last {FINAL_WINDOW} batches; mean over "
        f"seeds with a {CONFIDENCE:.0%} bootstrap CI, and the interquartile mean (IQM) with a "
        f"{CONFIDENCE:.0%} bootstrap CI (none below {MIN_SEEDS} seeds). Steps and seconds to the "
        "threshold: median over seeds of the first batch where the running mean of "
        f"{FINAL_WINDOW} batches reaches the env's solved_return, a seed that never did "
        "counting as infinitely late (– unless more than half the seeds reached it).",
        "",
        "| env | group | seeds | final return (95% CI) | IQM (95% CI) | threshold | reached "
        "| env steps to threshold | seconds to threshold | unfinished |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        r = g.row
        final = (
            _num(r["final_return_mean"]) + _ci(r["final_return_ci_low"], r["final_return_ci_high"])
            if g.finished
            else "–"
        )
        iqm_text = (
            _num(r["final_return_iqm"])
            + _ci(r["final_return_iqm_ci_low"], r["final_return_iqm_ci_high"])
            if g.finished
            else "–"
        )
        steps = r["steps_to_threshold"]
        lines.append(
            f"| {r['env']} | `{r['group']}` | {r['seeds']} | {final} "
            f"| {iqm_text} | {_num(r['threshold'], 'g')} "
            f"| {r['reached'] or '–'} | {_num(steps, ',d')} "
            f"| {_num(r['seconds_to_threshold'], '.1f')} | {unfinished_text(g) or 0} |"
        )
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {line}" for line in notes]
    for kind, heading in _HEADINGS.items():
        runs = [run for run in failures if run.unfinished == kind]
        if runs:
            lines += ["", f"## {heading} ({len(runs)})", ""]
            lines += [f"- `{run.name}`: {run.failure}" for run in runs]
    path.write_text("\n".join(lines) + "\n")


_HEADINGS = {  # summary.md's section for each kind of Run.unfinished
    "failed": "Failed jobs",
    "ended from outside": "Jobs ended from outside",
    "being written": "Jobs being written by another pgrun",
    "not finished": "Jobs not finished",
    "without an episode": "Jobs that ended without a whole episode",
}


class _EventWriter:
    """A TensorBoard run of one event file: scalars (the same simple_value records pgrun's runs
    hold), a text note and a Custom Scalars layout. The events are kept and written at close()
    (pgrun.logger.write_event_file), in this thread: tensorboard's EventFileWriter hands each to
    a writer thread through a queue of ten, and waiting on that was most of the time. Without
    torch's SummaryWriter, the comparison stays free of the torch import."""

    def __init__(self, log_dir: Path):
        from tensorboard.compat.proto import event_pb2

        self._dir = log_dir
        self._events: list[bytes] = []
        self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _add(self, event) -> None:
        self._events.append(event.SerializeToString())

    def _summary(self, summary, step: int, wall_time: float | None = None) -> None:
        from tensorboard.compat.proto import event_pb2

        wall = time.time() if wall_time is None else wall_time
        self._add(event_pb2.Event(wall_time=wall, step=step, summary=summary))

    def scalars(self, values: dict[str, float], step: int, wall_time: float) -> None:
        """Scalars logged together: one event, one value per tag."""
        from tensorboard.compat.proto import summary_pb2

        points = [summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values.items()]
        self._summary(summary_pb2.Summary(value=points), step, wall_time)

    def text(self, tag: str, markdown: str) -> None:
        self._summary(text_summary(tag, markdown), 0)

    def layout(self, category) -> None:
        """A Custom Scalars layout of one category (a layout_pb2.Category)."""
        self._summary(layout_summary(category), 0)

    def close(self) -> None:
        from pgrun.logger import write_event_file

        write_event_file(self._dir, self._events)


AGGREGATE_TAG = "aggregate/episodic_return"
AGGREGATE_CATEGORY = f"pgrun: groups, mean and {CONFIDENCE:.0%} CI over seeds"


def band_tag(label: str, kind: str) -> str:
    """The tag of a group's mean, lower or upper curve for its margin chart, e.g.
    'aggregate/episodic_return_band/variant=rtg/lower' (after the mean's tag by name)."""
    return f"{AGGREGATE_TAG}_band/{slug(label)}/{kind}"


def write_aggregates(groups: Sequence[Group], root: Path) -> None:
    """One TensorBoard run <root>/aggregate/<group> per group, against the same env steps as the
    single seeds, at the seeds' mean elapsed time (so the Relative time axis works too):

    - `aggregate/episodic_return`: the mean over seeds (one chart, a line per group), so that
      `charts/episodic_return` holds the single runs alone;
    - `aggregate/episodic_return_band/<group>/{mean,lower,upper}`: the mean again and the 95%
      bootstrap band (the seeds' range below MIN_SEEDS seeds), drawn by a Custom Scalars margin
      chart per group, titled by the group, after a chart of every group's mean. (Tags of the
      group's own: a margin chart over tags that other runs have too flags those as missing.)"""
    from tensorboard.plugins.custom_scalar import layout_pb2

    out = root / AGGREGATE_DIR
    shutil.rmtree(out, ignore_errors=True)  # written afresh on every comparison
    done = [g for g in groups if g.finished]
    charts = [
        layout_pb2.Chart(
            title="every group's mean over seeds (the runs aggregate/<group>)",
            multiline=layout_pb2.MultilineChartContent(tag=[f"^{AGGREGATE_TAG}$"]),
        )
    ]
    for g in done:
        series = layout_pb2.MarginChartContent.Series(
            value=band_tag(g.label, "mean"),
            lower=band_tag(g.label, "lower"),
            upper=band_tag(g.label, "upper"),
        )
        seeds = len(g.finished)
        title = f"{g.env_id} {g.short}: mean and {band_name(seeds)} of {seeds} seeds"
        charts.append(
            layout_pb2.Chart(title=title, margin=layout_pb2.MarginChartContent(series=[series]))
        )
    for i, g in enumerate(done):
        walls = min(r.start_time for r in g.finished) + g.seconds
        writer = _EventWriter(out / fit_file_name(slug(g.label)))
        tags = [AGGREGATE_TAG, *(band_tag(g.label, k) for k in ("mean", "lower", "upper"))]
        curves = np.stack([g.mean, g.mean, g.lower, g.upper], axis=1)  # (G, 4): one per tag
        for step, wall, values in zip(g.steps, walls, curves, strict=True):
            writer.scalars(dict(zip(tags, values.tolist(), strict=True)), int(step), float(wall))
        names = ", ".join(f"`{r.name}`" for r in g.finished)
        writer.text(
            "aggregate",
            f"Mean of {len(g.finished)} seeds of `{g.label}` with their "
            f"{band_name(len(g.finished))}: {names}",
        )
        if i == 0:
            writer.layout(layout_pb2.Category(title=AGGREGATE_CATEGORY, chart=charts))
        writer.close()


@dataclass
class Report:
    root: Path
    groups: list[Group]
    runs: list[Run]
    rankings: list[Ranking] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Lines on what the statistics hold: seeds run more than once (drop_repeated_seeds), a
    group of mixed budgets (mixed_budgets)."""

    @property
    def failures(self) -> list[Run]:
        return [r for r in self.runs if not r.ok]


def compare(
    root: str | Path, points: int = GRID_POINTS, tensorboard: bool = True, x: str = "steps"
) -> Report:
    """Compare the runs under `root` and write the comparison files into it.

    x: the figure's x-axis, "steps" (env steps) or "seconds" (wall-clock).
    Raises FileNotFoundError when `root` holds no run.
    """
    root = Path(root)
    from pgrun.sweep import DamagedRecord

    runs, damaged = load_runs(root)
    listed = []  # the sweep's record cannot be read: the jobs that left nothing go unnamed
    try:
        runs += missing_runs(root, runs, damaged)
    except DamagedRecord as exc:
        listed.append(
            f"multirun.yaml {exc}: the jobs it lists that left no directory are not named"
        )
    notes = [f"{name}: left out: its record {why}" for name, why in damaged.items()] + listed
    if not runs:
        raise FileNotFoundError(f"no runs (directories with .hydra/overrides.yaml) under {root}")
    runs, repeated = drop_repeated_seeds(runs)
    notes += repeated
    groups = group_runs(runs)
    notes += mixed_budgets(groups) + short_runs(groups)
    for g in groups:
        aggregate(g, points)
    groups.sort(key=lambda g: (g.env_id, -np.nan_to_num(g.row["final_return_iqm"], nan=-np.inf)))
    ranked = rankings(groups)
    plot(groups, ranked, root / "comparison.png", x)
    write_csv(groups, root / "summary.csv")
    failures = [r for r in runs if not r.ok]
    write_markdown(groups, ranked, failures, root / "summary.md", root.name, notes)
    if tensorboard:
        write_aggregates(groups, root)
    return Report(root, groups, runs, ranked, notes)


def describe(report: Report) -> str:
    """The closing block for the terminal: each group's final return, the ranked verdicts, and
    where to look."""
    runs = count(len(report.runs), "run")
    if report.failures:  # jobs without a result are listed too: say how many have one
        runs += f" ({len(report.runs) - len(report.failures)} of them finished)"
    lines = [f"comparison of {runs} in {_display(report.root)}:"]
    width = max(len(g.label) for g in report.groups)
    env_width = max(len(g.env_id) for g in report.groups)
    for g in report.groups:
        r = g.row
        if g.finished:
            final = f"final return {r['final_return_mean']:.1f}"
            final += _ci(r["final_return_ci_low"], r["final_return_ci_high"])
            final += f", IQM {r['final_return_iqm']:.1f}"
        else:
            final = "no finished run"
        unfinished = unfinished_text(g)
        counts = f"n={r['seeds']}" + (f", {unfinished}" if unfinished else "")
        lines.append(f"  {r['env']:<{env_width}}  {g.label:<{width}}  {final}  ({counts})")
    lines += [f"  note: {line}" for line in report.notes]
    for ranking in report.rankings:
        lines += ["", *verdict_block(ranking)]
    where = _display(report.root)
    lines += [
        "",
        f"files: {where}/comparison.png (curves, IQM, P(improvement)), summary.md, summary.csv",
        f"view:  tensorboard --logdir {where}",
        "       SCALARS: charts/episodic_return, one line per run; aggregate/episodic_return, "
        "one per group (the runs aggregate/<group>)",
        "       CUSTOM SCALARS: each group's mean and 95% band; HPARAMS: the swept keys and "
        "each run's final return",
    ]
    return "\n".join(lines)


def _display(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(Path(path).resolve()) if rel.startswith("..") else rel


# ---------------------------------------------------------------------------------------------
# Entry points


def _names(runs: Sequence[Run]) -> str:
    return ", ".join(r.name for r in runs)


def closing_lines(report: Report, prog: str) -> list[str]:
    """One line for each kind of run without a result (Run.unfinished): which jobs, and the
    command that deals with them. `prog`: the command that prints them."""
    from pgrun.rundir import shell

    root = report.root
    kinds = {kind: [r for r in report.failures if r.unfinished == kind] for kind in UNFINISHED}
    lost, failed = kinds["ended from outside"], kinds["failed"]
    busy, others = kinds["being written"], kinds["not finished"]
    n = len(report.runs)
    # a sweep resumes as one; runs compared together otherwise resume one by one
    sweep = (root / "multirun.yaml").is_file()
    resume = f"pgrun resume={shell(root)}"

    def resumes(verb: str, jobs: Sequence[Run]) -> str:  # 'pgrun resume=sw runs them again'
        them = "it" if len(jobs) == 1 else "them"
        return f"{resume} {verb} {them}" if sweep else f"pgrun resume=<job dir> {verb} each"

    lines = []
    if lost:  # ended from outside (the scheduler, a killed worker): resume runs them again
        lines.append(
            f"{prog}: error: {len(lost)} of {n} jobs {'was' if len(lost) == 1 else 'were'} ended "
            "from outside "
            f"({_names(lost)}: {'; '.join(dict.fromkeys(str(r.failure) for r in lost))}); "
            f"{resumes('runs', lost)} again"
        )
    if failed:
        them = "it" if len(failed) == 1 else "them"
        again = f"; once the cause is fixed, {resume} --rerun-failed runs {them} again"
        lines.append(
            f"{prog}: error: {len(failed)} of {n} jobs failed ({_names(failed)}): see "
            f"{shell(root / 'summary.md')}{again if sweep else ''}"
        )
    if busy:  # their directories were another process's: this sweep did not run them
        held = "; ".join(f"{r.name}: {r.failure}" for r in busy)
        one = len(busy) == 1
        verb = f"{'was' if one else 'were'} not run by this sweep"
        verb = verb if prog == "pgrun" else f"{'is' if one else 'are'} being written"
        lines.append(
            f"{prog}: error: {len(busy)} of {n} jobs {verb} ({held}); once that ends, "
            f"pgrun-compare {shell(root)} compares the whole sweep"
        )
    if others:
        lines.append(
            f"{prog}: error: {len(others)} of {n} jobs did not finish ({_names(others)}); "
            f"{resumes('continues', others)}"
        )
    short = kinds["without an episode"]
    if short:  # finished: only a larger budget gives them a return
        them = "it" if len(short) == 1 else "them"
        on = f"{resume} total_steps=N" if sweep else "pgrun resume=<job dir> total_steps=N"
        lines.append(
            f"{prog}: error: {len(short)} of {n} jobs ended without a whole episode "
            f"({_names(short)}): no return to compare; {on} trains {them} on"
        )
    return lines


class CompareCallback(Callback):
    """Hydra callback: compare the sweep when a multirun ends. A sweep with failed jobs still
    gets its comparison; then `pgrun -m` exits with status 1 after naming them."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # `pgrun` holds stderr back until a job starts, to turn Hydra's reports of a bad command
        # line into one line. The command line has been accepted by now, and with joblib or
        # submitit no job starts in this process: give stderr back for the sweep's messages.
        from pgrun.cli import _release_stderr

        _release_stderr()
        from pgrun import sweep

        sweep.current = Path(config.hydra.sweep.dir).resolve()
        # Name the jobs by what varies (variant=rtg,seed=0): pgrun/views.py.
        exclude_constant_overrides(config)
        # Made now so that a sweeper can keep its own files there from the start (Optuna's
        # sqlite storage under ${hydra.sweep.dir}); the launchers make it later otherwise.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        status = compare_sweep(Path(config.hydra.sweep.dir))
        if status:
            sys.exit(status)


def compare_sweep(root: Path) -> int:
    """What `pgrun -m` prints as its sweep ends (and `pgrun resume=<sweep dir>` where no job
    runs again): the comparison's files written into `root`, its table, then the lines naming
    the jobs that did not finish. 1 where some did not (or the comparison failed), else 0."""
    if not find_runs(root):
        return 0
    from pgrun.rundir import shell

    try:
        report = compare(root)
    except signals.Interruption as exc:  # Ctrl-C while it draws: the runs are all there
        signals.quiet_exit()
        print(
            f"pgrun: interrupted ({signals.signal.Signals(exc.signum).name}) while "
            f"comparing the sweep's runs, its jobs having ended: pgrun-compare {shell(root)} "
            "writes the comparison",
            file=sys.stderr,
        )
        sys.exit(128 + exc.signum)
    except Exception:
        log.exception(f"pgrun: the comparison of {root} failed")
        return 1
    print(describe(report), flush=True)
    for line in closing_lines(report, "pgrun"):
        print(line, file=sys.stderr)
    return 1 if report.failures else 0


def _grid_points(text: str) -> int:
    """--points: an integer of at least 2 (a curve needs two points), else argparse's one line."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer of at least 2")
    return value


@signals.interruptible("pgrun-compare")
def main(argv: Sequence[str] | None = None) -> int:
    """pgrun-compare DIR...: compare the runs under each DIR and write the files into it."""
    parser = argparse.ArgumentParser(
        prog="pgrun-compare",
        description="Compare the groups of a pgrun sweep (its runs grouped by their overrides "
        "except seed): which is better, with P(improvement) and its 95% stratified-bootstrap "
        "CI for every pair, IQMs and performance profiles. Writes comparison.png, summary.md, "
        "summary.csv and the TensorBoard runs aggregate/<group> into each DIR.",
    )
    parser.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        type=Path,
        help="a sweep directory (or any directory with runs below it)",
    )
    parser.add_argument(
        "--points",
        type=_grid_points,
        default=GRID_POINTS,
        help=f"steps of the shared grid the seeds are interpolated onto (default {GRID_POINTS})",
    )
    parser.add_argument(
        "--x",
        choices=("steps", "seconds"),
        default="steps",
        help="x-axis of the figure's curves: env steps (default) or wall-clock seconds",
    )
    args = parser.parse_args(argv)
    from pgrun.rundir import holder, holds_run, shell

    status = 0
    for root in args.dirs:
        if not root.is_dir():
            print(f"pgrun-compare: error: {root} is not a directory", file=sys.stderr)
            status = 2
            continue
        if holds_run(root):  # its figure and tables would be written among the run's files
            parent = root.absolute().parent
            print(
                f"pgrun-compare: error: {root} is a run, not a sweep: compare the directory "
                f"that holds it, pgrun-compare {shell(parent)}",
                file=sys.stderr,
            )
            status = 2
            continue
        busy = holder(root)
        if busy is not None:  # its jobs are still being written, and it compares them at its end
            print(
                f"pgrun-compare: error: {root} is being written by a pgrun ({busy}): the sweep "
                "writes its comparison when it ends; run pgrun-compare after that",
                file=sys.stderr,
            )
            status = 2
            continue
        try:
            report = compare(root, points=args.points, x=args.x)
        except FileNotFoundError as exc:
            print(f"pgrun-compare: error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(describe(report))
        for run in report.failures:  # by Run.unfinished: failed, ended from outside, ...
            label = "not finished" if run.unfinished == "being written" else run.unfinished
            print(f"  {label}: {run.name}: {run.failure}")  # (its failure says it is written)
        for line in closing_lines(report, "pgrun-compare"):
            print(line, file=sys.stderr)
        if report.failures:
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
