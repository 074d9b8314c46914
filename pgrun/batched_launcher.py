"""hydra/launcher=batched: the jobs of a sweep that differ only in `seed` trained as one
computation (pgrun.batched), one process per group, the groups in parallel (one process per
core, as joblib's launcher runs jobs).

    pgrun -m experiment=compare_variants hydra/launcher=batched

Each job is prepared as pgrun's command prepares it (its directory, its .hydra record, its
lock, its state in the sweep: finished jobs are not run again, interrupted ones continue
from their checkpoints), then the group trains its unfinished jobs together and each job's
directory is written as a run of its own writes it. Configs that cannot be trained as a
group (pgrun.batched.blocker: a CNN policy, envpool, ...) run one process per job, and the
launcher says so in one line naming the reason.

This module imports no torch: the launcher's own process composes the configs only.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from pgrun import signals
from pgrun.config import count
from pgrun.rundir import display

log = logging.getLogger("pgrun")

pending: list | None = None
"""In a group's process while its jobs are prepared: the jobs that pgrun's task deferred."""


@dataclass
class Deferred:
    """What pgrun's task returns for a job that its group trains: its place in `pending`."""

    index: int


def defer(
    cfg: DictConfig, run_dir: Path, resume: bool, replay: bool = False, diverged: bool = False
) -> Deferred:
    """Called by pgrun's task (pgrun.cli.run) instead of training: the job waits for its group.
    Its config is resolved now, while Hydra's record of this job is the current one. With
    `replay`, a job that finished before (or with `diverged`, failed on a non-finite update)
    keeps its place in the group (pgrun.batched.Job), so that the others continue as the group
    did; its task returns its result as it is."""
    from pgrun.batched import Job

    assert pending is not None
    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cfg)
    pending.append(Job(cfg, Path(run_dir), resume, replay, diverged))
    return Deferred(len(pending) - 1)


def plain(value: Any) -> str:
    return str(getattr(value, "value", value))


def blocker(cfg: DictConfig) -> str | None:
    """Why the jobs of `cfg` (a composed job config) cannot be trained as a group, in a few
    words, or None. The observation and action spaces are checked in the group's process
    (pgrun.batched.space_blocker)."""
    if plain(cfg.policy.get("name", "mlp")) != "mlp":
        return f"policy={cfg.policy.name} (a group stacks MLP policies)"
    backend = plain(cfg.env.backend)
    if backend == "auto":  # gymnasium for most ids (imports gymnasium, not envpool)
        from pgrun.envs import resolve_backend

        backend = resolve_backend(backend, str(cfg.env.id), plain(cfg.env.vectorization))
    if backend != "gymnasium":
        return f"env.backend={plain(cfg.env.backend)} (a group steps gymnasium envs)"
    if cfg.env.normalize_obs:
        return (
            "env.normalize_obs=true (each seed's observation statistics; "
            "env.normalize_obs=false batches them)"
        )
    if cfg.env.atari_preprocessing or cfg.env.frame_stack != 1:
        return "Atari frames (a group stacks MLP policies)"
    if cfg.policy.squash:
        return "policy.squash=true (a group has no stacked squashed Gaussian)"
    if plain(cfg.optim.name) != "adam":
        return f"optim.name={plain(cfg.optim.name)} (a group has Adam's stacked form)"
    if plain(cfg.device) != "cpu":
        return f"device={plain(cfg.device)} (a group trains on the CPU)"
    from pgrun.config import rule_name

    if rule_name(cfg.variant) not in ("gradient", "ratio_epochs"):
        return (
            f"variant.rule={rule_name(cfg.variant)} (a group stacks the gradient and ratio rules)"
        )
    return None


def group_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """A job's overrides without its seed: the jobs with equal keys form one group."""
    return tuple(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "seed")


_SEED = re.compile(r"seed=(0|[1-9][0-9]*)")


class SeedVariants:
    """Hydra's config loader, wrapped: a job whose overrides differ from a job already
    composed only in a plain `seed=<n>` gets that job's config with the seed put in (its
    `seed`, its task overrides and its directory name), as composing it would give. Composing
    a config takes about a quarter of a second; the sweeper composes every job to check it and
    the group's process every job again, so a sweep of 50 seeds would pay that 100 times."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.composed: dict[tuple[str, ...], tuple[DictConfig, str]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["loader"], name)

    def __getstate__(self) -> dict[str, Any]:  # a worker gets its group's (execute_unit)
        return {"loader": self.loader, "composed": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]):
        seeds = [i for i, o in enumerate(sweep_overrides) if _SEED.fullmatch(o)]
        key = group_key(sweep_overrides)
        if len(seeds) != 1 or len(key) != len(sweep_overrides) - 1:
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        if key not in self.composed:
            cfg = self.loader.load_sweep_config(master_config, sweep_overrides)
            self.composed[key] = (copy.deepcopy(cfg), sweep_overrides[seeds[0]])
            return cfg
        base, seed = self.composed[key]
        derived = with_seed(base, seed, sweep_overrides[seeds[0]])
        if derived is None:
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        return derived


def with_seed(base: DictConfig, old: str, override: str) -> DictConfig | None:
    """The sweep config `base` (composed by Hydra) with its task override `old` (a
    `seed=<n>`) replaced by `override` (another): what Hydra composes for those overrides.
    None if `old` is not once among base's task overrides."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = [str(o) for o in base.hydra.overrides.task]
    if task.count(old) != 1:
        return None
    task[task.index(old)] = override
    cfg = copy.deepcopy(base)
    OmegaConf.copy_cache(from_config=base, to_config=cfg)
    naming = cfg.hydra.job.config.override_dirname
    with read_write(cfg), open_dict(cfg):
        cfg.seed = int(_SEED.fullmatch(override).group(1))
        cfg.hydra.overrides.task = task
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=OverridesParser.create().parse_overrides(task),
            kv_sep=naming.kv_sep,
            item_sep=naming.item_sep,
            exclude_keys=naming.exclude_keys,
        )
    return cfg


def cost(cfg: DictConfig) -> float:
    """A rough relative cost of a job, for the order the units start in: its env steps times
    the work per batch (collecting, the policy's inner steps, V's steps at a quarter each)."""
    work = 1.0 + int(cfg.variant.inner_steps)
    if plain(cfg.variant.baseline) == "value":
        work += 0.25 * int(cfg.value.steps)
    return float(cfg.total_steps) * work


Unit = tuple[list, bool, float]  # (jobs: (index, overrides) each, grouped, cost of one job)


def spread(units: list[Unit], n: int) -> list[Unit]:
    """The units (jobs, grouped, cost of one job) in the order they start, the costliest first
    (the longest-processing-time order: the longest units do not start last), with the
    costliest group halved while there are fewer units than the `n` processes, or while halving
    it shortens the sweep (its estimated end, `makespan`). 2 configs x 50 seeds on 16 cores
    train as 16 groups, not as 2 processes; on 2 cores, 50 PPO seeds (about 7x the work of an
    rtg_baseline seed) next to 50 rtg_baseline seeds train as two halves in parallel, where one
    process would otherwise train all of PPO's seeds while the other idles. A piece of one job
    runs as a plain job."""

    def load(u: Unit) -> float:
        return len(u[0]) * u[2]

    def costliest_first(units: list[Unit]) -> list[Unit]:
        return sorted(units, key=lambda u: -load(u))

    def makespan(order: list[Unit]) -> float:
        """When the last process ends, each unit going to the first process free."""
        ends = [0.0] * max(n, 1)
        for u in order:
            ends[ends.index(min(ends))] += load(u)
        return max(ends)

    order = costliest_first(units)
    while True:
        splittable = [u for u in order if u[1] and len(u[0]) > 1]
        if not splittable:
            break
        big = max(splittable, key=load)
        items, _, each = big
        half = (len(items) + 1) // 2
        halves = [(part, len(part) > 1, each) for part in (items[:half], items[half:])]
        split = costliest_first([*(u for u in order if u is not big), *halves])
        if len(order) >= n and makespan(split) >= makespan(order):
            break
        order = split
    return order


def _sweep_config(hydra_context, config, overrides, idx):
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    return sweep_config


def _run_one(idx, overrides, hydra_context, config, task_function) -> JobReturn:
    """One job in this process, as joblib's launcher runs it."""
    sweep_config = _sweep_config(hydra_context, config, overrides, idx)
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def execute_unit(
    items: Sequence[tuple[int, Sequence[str]]],
    grouped: bool,
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
    composed: tuple[DictConfig, str] | None = None,
) -> list[JobReturn]:
    """In a worker process: one job (grouped=False), or a group trained together. `composed`:
    the sweep's composition of the group's first job (SeedVariants), reused here."""
    global pending
    signals.worker_listens()
    if signals.sweep_stopping:  # the sweep was interrupted before this unit began
        return []
    setup_globals()
    Singleton.set_state(singleton_state)
    loader = hydra_context.config_loader
    if composed is not None and isinstance(loader, SeedVariants):
        loader.composed[group_key(items[0][1])] = composed
    if not grouped:
        return [_run_one(i, o, hydra_context, config, task_function) for i, o in items]
    pending = []
    try:
        rets = [_run_one(i, o, hydra_context, config, task_function) for i, o in items]
        jobs = pending
    finally:
        pending = None
    waiting = [r for r in rets if isinstance(_value(r), Deferred)]
    if waiting:
        _train(jobs, waiting)
    return rets


def warm_up() -> None:
    """In a worker process, before its first unit: the imports every group needs, made with
    the cyclic collector off and then frozen (pgrun.cli.settle_collector: the collector would
    walk their few hundred thousand objects again and again for nothing)."""
    import gc

    from pgrun.cli import settle_collector

    signals.worker_listens()
    gc.disable()
    import pgrun.batched  # noqa: F401 (torch, gymnasium, the trainer)

    settle_collector()


def mark_lost(sweep_dir: Path, items: Sequence[tuple[int, Sequence[str]]], how: str) -> None:
    """The jobs of a unit whose worker process died (`how`: 'SIGKILL(-9)'): each one that had
    begun and not ended gets failed.txt as a job the scheduler ended, so that `pgrun
    resume=<sweep dir>` runs it again from its last checkpoint; one never begun is left to
    resume as it is. Said in one line while the other units go on."""
    from pgrun import sweep

    paths = {job.num: job.path for job in sweep.expected_jobs(sweep_dir) or []}
    reason = (
        f"{sweep.SCHEDULER_PREFIX}its worker process was killed ({how}), e.g. by the "
        "out-of-memory killer"
    )
    names = []
    for idx, _ in items:
        path = paths.get(idx)
        if path is None:
            continue
        if sweep.job_state(path) in ("new", "interrupted"):  # not its finished seeds
            names.append(path.name)
            (path / sweep.FAILED_FILE).write_text(reason + "\n")
    log.error(
        f"a worker process of the sweep was killed ({how}), e.g. by the out-of-memory killer, "
        f"while it trained {', '.join(names) or 'its jobs'}: they keep their last checkpoints, "
        "and the other jobs go on"
    )


def _lost_return(overrides: Sequence[str]) -> JobReturn:
    """A job of a unit whose worker died: no value (its state is in its directory)."""
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret._return_value = None
    return ret


def _value(ret: JobReturn) -> Any:
    return ret._return_value if ret.status == JobStatus.COMPLETED else None


def _train(jobs: list, waiting: list[JobReturn]) -> None:
    """Train the deferred jobs together (or one after the other where their spaces cannot be
    stacked) and complete their JobReturns as pgrun's task would have."""
    from pgrun import rundir
    from pgrun.batched import NotBatchable, train_group
    from pgrun.cli import _record_failure, interrupted_line, report_done
    from pgrun.config import Interrupted
    from pgrun.trainer import train

    locks = [rundir.acquire(j.run_dir) for j in jobs if not j.replay]  # those it writes
    try:
        unreadable = _unreadable(jobs)  # each fails alone; its group trains without it
        group = [j for i, j in enumerate(jobs) if i not in unreadable]
        try:
            grouped = (
                train_group(group) if any(not j.replay for j in group) else [None] * len(group)
            )
        except NotBatchable as exc:
            alone = count(sum(not j.replay for j in group), "job")
            log.info(f"{alone} run one process each: {exc}")
            grouped = []
            for j in group:
                if j.replay:  # finished before: kept as it is
                    grouped.append(None)
                    continue
                try:
                    grouped.append(train(j.cfg, j.run_dir, resume=j.resume))
                except Exception as err:  # noqa: BLE001 (recorded as the job's failure)
                    grouped.append(err)
        except Exception as exc:  # noqa: BLE001 (the whole group failed: each job records it)
            grouped = [exc] * len(group)
        rest = iter(grouped)
        results = [unreadable[i] if i in unreadable else next(rest) for i in range(len(jobs))]
    finally:
        for lock in locks:
            rundir.release(lock)
    for ret in waiting:
        job = jobs[ret._return_value.index]
        result = results[ret._return_value.index]
        with job_log(job.run_dir):
            if isinstance(result, dict):
                (job.run_dir / "failed.txt").unlink(missing_ok=True)
                report_done(job.cfg, job.run_dir, result)
                ret._return_value = result["final_return"]
            elif isinstance(result, Interrupted):
                log.info(interrupted_line(job.run_dir, result))
                ret.status, ret._return_value = JobStatus.FAILED, result
            else:
                ret._return_value = _record_failure(result, job.run_dir)


def _unreadable(jobs: list) -> dict[int, Exception]:
    """The resumed jobs of a group whose checkpoints cannot be read (pgrun.checkpoint
    .load_readable: none of its files readable), by their place: each fails with its own error, where
    the group's error would be recorded as every seed's failure, the healthy ones' too. The
    caller holds their locks."""
    from pgrun import checkpoint

    out: dict[int, Exception] = {}
    for i, j in enumerate(jobs):
        if j.resume and not j.replay and checkpoint.checkpoints(j.run_dir):
            try:
                with job_log(j.run_dir):  # a file it falls back from: said in its own log
                    checkpoint.load_readable(j.run_dir)
            except checkpoint.CheckpointError as err:
                out[i] = err
    return out


@contextlib.contextmanager
def job_log(run_dir: Path) -> Iterator[None]:
    """While inside: the root logger's log files (Hydra's `<job name>.log`, which the group's
    last job holds) write to the file of that name in `run_dir` instead, so that each job's
    closing lines land in its own log."""
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    swapped = []
    for old in files:
        new = logging.FileHandler(run_dir / Path(old.baseFilename).name, mode="a")
        new.setFormatter(old.formatter)
        new.setLevel(old.level)
        root.removeHandler(old)
        root.addHandler(new)
        swapped.append((old, new))
    try:
        yield
    finally:
        for old, new in swapped:
            root.removeHandler(new)
            new.close()
            root.addHandler(old)


_pool: Any = None
"""The batched launcher's pgrun.workers.Pool while a sweep runs in this process."""


def worker_pids() -> list[int]:
    """The pids of the launcher's worker processes (this launcher's pool, else joblib's loky
    executor's: hydra/launcher=joblib)."""
    if _pool is not None:
        return _pool.pids()
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    return list(getattr(executor, "_processes", None) or {}) if executor is not None else []


def stop_warm_up() -> None:
    """Stop the worker processes setup() started, without waiting for their imports: for a
    sweep refused before launch (a job's config does not compose) or interrupted before it
    (they wait for tasks, and the interpreter's exit waits for them). They are killed and
    joined: a worker still starting would otherwise read its start-up state from this
    process as it exits, and print a traceback. Nothing where launch() closed them."""
    global _pool
    if _pool is not None:
        pids = _pool.pids()
        _pool.close(kill=True)
        _pool = None
        for pid in pids:  # reaped, so that none is left mid-start as this process exits
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


class BatchedLauncher(Launcher):
    """hydra/launcher=batched (configs/hydra/launcher/batched.yaml)."""

    def __init__(self, n_jobs: int = -1) -> None:
        self.n_jobs = n_jobs
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        # the sweeper holds the same context: its check of the jobs composes each group once
        if not isinstance(hydra_context.config_loader, SeedVariants):
            hydra_context.config_loader = SeedVariants(hydra_context.config_loader)
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        # The worker processes start now and import torch, gymnasium and the trainer (seconds)
        # while this process checks the sweep's jobs; launch() then gives them their units.
        global _pool
        if _pool is None:
            from pgrun.workers import Pool

            _pool = Pool(self.warm_processes(), warm_up)

    def processes(self) -> int:
        return self.n_jobs if self.n_jobs > 0 else (os.cpu_count() or 1)

    def warm_processes(self) -> int:
        """The processes started before the jobs are known: no more than the cores."""
        return min(self.processes(), os.cpu_count() or 1)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        global _pool
        assert self.config is not None and self.hydra_context is not None
        assert _pool is not None, "setup() starts the worker processes"
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        groups: dict[tuple[str, ...], list[tuple[int, Sequence[str]]]] = {}
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            groups.setdefault(group_key(overrides), []).append((idx, overrides))
        units: list[Unit] = []
        alone: dict[str, int] = {}
        for items in groups.values():
            try:
                cfg = _sweep_config(self.hydra_context, self.config, items[0][1], items[0][0])
                each = cost(cfg)
                reason = None if len(items) == 1 else blocker(cfg)
            except Exception as exc:  # noqa: BLE001 (a bad config: its jobs report it)
                each, reason = 0.0, f"its config does not compose ({type(exc).__name__})"
            if len(items) == 1:
                units.append((items, False, each))
            elif reason is None:
                units.append((items, True, each))
            else:
                alone[reason] = alone.get(reason, 0) + len(items)
                units += [([item], False, each) for item in items]
        for reason, n in alone.items():
            log.info(f"{count(n, 'job')} run one process each: {reason}")
        # groups are split to fill the cores, not an n_jobs above them (more processes than
        # cores only share them, and a split group batches less); no more processes than units
        batchable = [i for i, g, _ in units if g]
        units = spread(units, self.warm_processes())
        n_jobs = min(self.processes(), max(len(units), 1))
        grouped = sum(len(i) for i, g, _ in units if g)
        pieces = sum(1 for i, _, _ in units if any(i[0] in b for b in batchable))
        split = (
            f" ({count(len(batchable), 'group')} of seeds split into {pieces} to keep the "
            f"{n_jobs} processes busy)"
            if pieces > len(batchable)
            else ""
        )
        together = (
            f"{grouped} of them in {count(sum(1 for _, g, _ in units if g), 'group')} of seeds"
            if grouped
            else "none of them batched"
        )
        log.info(
            f"{count(len(job_overrides), 'job')}, {together}{split}, "
            f"{count(n_jobs, 'process', 'processes')}; sweep output dir: {display(sweep_dir)}"
        )
        # the comparison at the sweep's end imports matplotlib: meanwhile, in this idle process
        preload = None
        if "compare" in (self.config.hydra.callbacks or {}):
            from pgrun.compare import preload as target

            preload = threading.Thread(target=target, name="pgrun-preload", daemon=True)
            preload.start()
        state = Singleton.get_state()
        loader = self.hydra_context.config_loader
        known = loader.composed if isinstance(loader, SeedVariants) else {}
        tasks = [
            (items, grouped, self.hydra_context, self.config, self.task_function, state,
             known.get(group_key(items[0][1])))
            for items, grouped, _ in units
        ]  # fmt: skip
        _pool.resize(n_jobs)
        pool = _pool

        def lost(i: int, how: Any) -> None:  # a worker died: its unit's jobs only
            mark_lost(sweep_dir, units[i][0], how.how)  # how: a pgrun.workers.Lost

        # Ctrl-C (SIGINT, SIGTERM) while the units run: each unit finishes its iteration and
        # checkpoints its jobs, then the sweep stops (pgrun.signals.forwarding)
        try:
            done = signals.wait_forwarding(
                lambda: pool.map(execute_unit, tasks, on_lost=lost), worker_pids
            )
        finally:
            pool.close()  # the workers exit while the comparison is drawn
            _pool = None
        if preload is not None:
            preload.join()
        by_idx = {}
        for (items, _, _), rets in zip(units, done, strict=True):
            if not isinstance(rets, list):  # its worker died (Lost): recorded by mark_lost
                rets = [_lost_return(overrides) for _, overrides in items]
            for (idx, _), ret in zip(items, rets, strict=True):
                by_idx[idx] = ret
        return [by_idx[i] for i in sorted(by_idx)]
