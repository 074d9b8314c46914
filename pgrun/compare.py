"""Compare the runs of a sweep across seeds: which variant wins, with how much confidence.

Runs are grouped by every override except ``seed`` (read from each job's
``.hydra/overrides.yaml``). For each group the ``charts/episodic_return`` curves of its seeds
are interpolated onto a shared grid of environment steps and averaged, with a 95% bootstrap
confidence band over seeds. Written into the sweep directory:

- ``comparison.png``: one panel per environment, a line and band per group;
- ``summary.csv`` and ``summary.md``: final return (mean, 95% CI, IQM), environment steps and
  seconds to the env's ``solved_return`` where it has one, number of seeds, failed jobs;
- ``aggregate/<group>/{mean,lower,upper}``: TensorBoard runs with the tag
  ``charts/episodic_return``, so a TensorBoard over the sweep overlays the seed-averaged curves
  on the single seeds (and its Custom Scalars tab draws mean and band in one chart).

Runs after every multirun through :class:`CompareCallback` (``hydra.callbacks`` in
configs/config.yaml) and as ``pgrun-compare DIR...``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pgrun.config import slug

log = logging.getLogger("pgrun")

RETURN_TAG = "charts/episodic_return"
FINAL_TAG = "hparams/final_return"
FAILED_FILE = "failed.txt"  # written by pgrun/cli.py into a multirun job that failed
AGGREGATE_DIR = "aggregate"
FINAL_WINDOW = 5  # batches in the running mean that defines the final return (pgrun/trainer.py)
GRID_POINTS = 100  # steps of the shared grid the seeds are interpolated onto
BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


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

    @property
    def ok(self) -> bool:
        return self.failure is None


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
        return [r for r in self.runs if not r.ok]

    @property
    def env_id(self) -> str:
        return self.runs[0].env_id

    @property
    def threshold(self) -> float | None:
        return self.runs[0].threshold


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


def load_run(path: Path, root: Path) -> Run:
    """Read a job's overrides, config and logged scalars (pgrun.logger.read_scalars)."""
    from pgrun.logger import read_scalars

    overrides = [str(o) for o in OmegaConf.load(path / ".hydra" / "overrides.yaml")]
    config_file = path / ".hydra" / "config.yaml"
    config = OmegaConf.load(config_file) if config_file.is_file() else OmegaConf.create()
    env_id = str(OmegaConf.select(config, "env.id", default="?"))
    threshold = OmegaConf.select(config, "env.solved_return", default=None)
    name = path.relative_to(root).as_posix() if path != root else path.name
    run = Run(path, name, overrides, env_id, None if threshold is None else float(threshold))

    series, start = read_scalars(path, (RETURN_TAG, FINAL_TAG))
    if RETURN_TAG in series:
        events = series[RETURN_TAG]
        run.start_time = start
        run.steps = np.array([e[0] for e in events], dtype=np.int64)
        run.returns = np.array([e[1] for e in events], dtype=np.float64)
        run.seconds = np.array([e[2] for e in events]) - run.start_time
    if FINAL_TAG in series:
        run.final_return = float(series[FINAL_TAG][-1][1])

    failed = path / FAILED_FILE
    if failed.is_file():
        lines = failed.read_text().splitlines()
        run.failure = lines[0] if lines else "failed"
    elif run.final_return is None or not math.isfinite(run.final_return):
        run.failure = "no final return: the job did not finish"
    elif len(run.steps) == 0:
        run.failure = f"no {RETURN_TAG} logged"
    return run


def missing_runs(root: Path, found: Sequence[Run]) -> list[Run]:
    """The jobs that the sweep's multirun.yaml lists but that left no run directory (never
    started, or cancelled before they started), as failed runs."""
    from pgrun.sweep import expected_jobs, failure_line

    jobs = expected_jobs(root)
    if not jobs:
        return []
    have = {r.path.resolve() for r in found}
    by_env = {o: r for r in found for o in r.overrides if _key(o) == "env"}
    default = OmegaConf.load(root / "multirun.yaml")
    env_id = str(OmegaConf.select(default, "env.id", default="?"))
    missing = []
    for job in jobs:
        if job.path.resolve() in have:
            continue
        env = next((o for o in job.overrides if _key(o) == "env"), None)
        job_env = by_env[env].env_id if env in by_env else env_id
        reason = (
            failure_line(job.path)
            if (job.path / FAILED_FILE).is_file()
            else "never started: no directory"
        )
        name = job.path.relative_to(root).as_posix()
        missing.append(Run(job.path, name, job.overrides, job_env, None, failure=reason))
    return missing


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Group by every override except seed; label each group by the overrides that vary."""
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        key = tuple(sorted(o for o in run.overrides if _key(o) != "seed"))
        groups.setdefault(key, Group(key)).runs.append(run)
    common = set.intersection(*(set(k) for k in groups)) if groups else set()
    for group in groups.values():
        group.varying = [o for o in group.key if o not in common]
        group.label = ",".join(group.varying) or ",".join(group.key) or "all runs"
    labels = [g.label for g in groups.values()]
    for group in groups.values():  # keys that only some groups set can make labels collide
        if labels.count(group.label) > 1:
            group.label = ",".join(group.key) or "all runs"
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
    """Fill in the group's grid, mean curve, band and summary row."""
    finished = group.finished
    row: dict[str, Any] = {
        "env": group.env_id,
        "group": group.label,
        "overrides": " ".join(group.key),
        "seeds": len(finished),
        "failed": len(group.failed),
        "final_return_mean": math.nan,
        "final_return_ci_low": math.nan,
        "final_return_ci_high": math.nan,
        "final_return_iqm": math.nan,
        "threshold": "" if group.threshold is None else group.threshold,
        "reached": "",
        "steps_to_threshold": "",
        "seconds_to_threshold": "",
        "failed_jobs": " ".join(r.name for r in group.failed),
    }
    group.row = row
    if not finished:
        return
    group.steps = shared_grid(finished, points)
    group.curves = np.stack([np.interp(group.steps, r.steps, r.returns) for r in finished])
    group.mean = group.curves.mean(axis=0)
    group.lower, group.upper = bootstrap_ci(group.curves)
    group.seconds = np.mean([np.interp(group.steps, r.steps, r.seconds) for r in finished], axis=0)

    finals = np.array([r.final_return for r in finished], dtype=np.float64)
    low, high = bootstrap_ci(finals[:, None])
    row.update(
        final_return_mean=float(finals.mean()),
        final_return_ci_low=float(low[0]),
        final_return_ci_high=float(high[0]),
        final_return_iqm=iqm(finals),
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
# Outputs


def plot(groups: Sequence[Group], path: Path) -> None:
    """comparison.png: one panel per env; per group its mean curve and 95% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def legend(g: Group) -> str:  # the panel names the env: leave it out of the legend
        shown = [o for o in g.varying if _key(o) not in ("env", "env.id")]
        return ",".join(shown) or g.label

    envs = sorted({g.env_id for g in groups})
    labels = sorted({legend(g) for g in groups})
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}  # the same across panels
    ncols = min(len(envs), 3)
    nrows = math.ceil(len(envs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.2 * nrows), squeeze=False)
    for ax, env in zip(axes.flat, envs, strict=False):
        panel = [g for g in groups if g.env_id == env]
        for g in panel:
            color = colors[legend(g)]
            n = f"n={len(g.finished)}" + (f", {len(g.failed)} failed" if g.failed else "")
            label = f"{legend(g)} ({n})"
            if not g.finished:
                ax.plot([], [], color=color, label=label)
            elif g.steps.size == 1:  # a single batch per run: a point and its interval
                err = [g.mean - g.lower, g.upper - g.mean]
                ax.errorbar(g.steps, g.mean, yerr=err, fmt="o", color=color, capsize=4, label=label)
            else:
                ax.plot(g.steps, g.mean, color=color, lw=1.8, label=label)
                ax.fill_between(g.steps, g.lower, g.upper, color=color, alpha=0.2, lw=0)
        threshold = panel[0].threshold
        if threshold is not None:
            ax.axhline(threshold, color="0.4", ls="--", lw=1, label=f"solved ({threshold:g})")
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("episodic return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    for ax in list(axes.flat)[len(envs) :]:
        ax.set_visible(False)
    fig.suptitle(f"mean over seeds, {CONFIDENCE:.0%} bootstrap confidence band", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


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
    "threshold",
    "reached",
    "steps_to_threshold",
    "seconds_to_threshold",
    "failed_jobs",
]


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


def write_markdown(
    groups: Sequence[Group], failures: Sequence[Run], path: Path, title: str
) -> None:
    lines = [
        f"# Comparison: {title}",
        "",
        "![comparison](comparison.png)",
        "",
        f"Final return: mean over seeds of each run's final return (the mean of its last "
        f"{FINAL_WINDOW} batches) with a {CONFIDENCE:.0%} bootstrap confidence interval, and "
        "the interquartile mean (IQM). Steps and seconds to the threshold: median over seeds "
        f"of the first batch where the running mean of {FINAL_WINDOW} batches reaches the env's "
        "solved_return (– when fewer than half the seeds reached it).",
        "",
        "| env | group | seeds | final return (95% CI) | IQM | threshold | reached "
        "| env steps to threshold | seconds to threshold | failed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        r = g.row
        final = (
            f"{_num(r['final_return_mean'])} "
            f"[{_num(r['final_return_ci_low'])}, {_num(r['final_return_ci_high'])}]"
            if g.finished
            else "–"
        )
        steps = r["steps_to_threshold"]
        lines.append(
            f"| {r['env']} | `{r['group']}` | {r['seeds']} | {final} "
            f"| {_num(r['final_return_iqm'])} | {_num(r['threshold'], 'g')} "
            f"| {r['reached'] or '–'} | {_num(steps, ',d')} "
            f"| {_num(r['seconds_to_threshold'], '.1f')} | {r['failed']} |"
        )
    if failures:
        lines += ["", f"## Failed jobs ({len(failures)})", ""]
        lines += [f"- `{run.name}`: {run.failure}" for run in failures]
    path.write_text("\n".join(lines) + "\n")


class _EventWriter:
    """A TensorBoard run written with tensorboard's own event writer: scalars (the same
    simple_value records pgrun's runs hold), a text note and a Custom Scalars layout. Using it
    instead of torch's SummaryWriter keeps the comparison free of the torch import."""

    def __init__(self, log_dir: Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(str(log_dir))

    def _add(self, summary, step: int, wall_time: float | None = None) -> None:
        from tensorboard.compat.proto import event_pb2

        wall = time.time() if wall_time is None else wall_time
        self._writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary))

    def scalar(self, tag: str, value: float, step: int, wall_time: float) -> None:
        from tensorboard.compat.proto import summary_pb2

        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]
        )
        self._add(summary, step, wall_time)

    def text(self, tag: str, markdown: str) -> None:
        from tensorboard.plugins.text.summary_v2 import text_pb

        self._add(text_pb(tag, markdown), 0)

    def margin_chart(self, category: str, title: str, value: str, lower: str, upper: str) -> None:
        """A Custom Scalars chart: the `value` tag as a line, shaded between `lower` and `upper`."""
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.custom_scalar import layout_pb2, metadata
        from tensorboard.util import tensor_util

        series = layout_pb2.MarginChartContent.Series(value=value, lower=lower, upper=upper)
        chart = layout_pb2.Chart(title=title, margin=layout_pb2.MarginChartContent(series=[series]))
        layout = layout_pb2.Layout(category=[layout_pb2.Category(title=category, chart=[chart])])
        tensor = tensor_util.make_tensor_proto(layout.SerializeToString(), dtype=np.object_)
        summary = summary_pb2.Summary()
        summary.value.add(
            tag=metadata.CONFIG_SUMMARY_TAG,
            metadata=metadata.create_summary_metadata(),
            tensor=tensor,
        )
        self._add(summary, 0)

    def close(self) -> None:
        self._writer.close()


def write_aggregates(groups: Sequence[Group], root: Path) -> None:
    """TensorBoard runs <root>/aggregate/<group>/{mean,lower,upper}, tag charts/episodic_return,
    against the same env steps as the single seeds, at the seeds' mean elapsed time (so the
    Relative time axis works too). The mean run also carries the band as
    aggregate/episodic_return_{mean,lower,upper} for a Custom Scalars margin chart."""
    out = root / AGGREGATE_DIR
    shutil.rmtree(out, ignore_errors=True)  # written afresh on every comparison
    layout_written = False
    for g in groups:
        if not g.finished:
            continue
        walls = min(r.start_time for r in g.finished) + g.seconds
        curves = {"mean": g.mean, "lower": g.lower, "upper": g.upper}
        for kind, values in curves.items():
            writer = _EventWriter(out / slug(g.label) / kind)
            for step, value, wall in zip(g.steps, values, walls, strict=True):
                writer.scalar(RETURN_TAG, float(value), int(step), float(wall))
            if kind == "mean":
                for name, band in curves.items():
                    for step, value, wall in zip(g.steps, band, walls, strict=True):
                        tag = f"aggregate/episodic_return_{name}"
                        writer.scalar(tag, float(value), int(step), float(wall))
                names = ", ".join(f"`{r.name}`" for r in g.finished)
                writer.text(
                    "aggregate",
                    f"Mean of {len(g.finished)} seeds of `{g.label}` ({CONFIDENCE:.0%} bootstrap "
                    f"band in the lower and upper runs): {names}",
                )
                if not layout_written:
                    writer.margin_chart(
                        "pgrun: seed aggregates",
                        f"episodic return, mean and {CONFIDENCE:.0%} CI over seeds",
                        *(f"aggregate/episodic_return_{name}" for name in curves),
                    )
                    layout_written = True
            writer.close()


@dataclass
class Report:
    root: Path
    groups: list[Group]
    runs: list[Run]

    @property
    def failures(self) -> list[Run]:
        return [r for r in self.runs if not r.ok]


def compare(root: str | Path, points: int = GRID_POINTS, tensorboard: bool = True) -> Report:
    """Compare the runs under `root` and write the comparison files into it.

    Raises FileNotFoundError when `root` holds no run.
    """
    root = Path(root)
    paths = find_runs(root)
    runs = [load_run(p, root) for p in paths]
    runs += missing_runs(root, runs)
    if not runs:
        raise FileNotFoundError(f"no runs (directories with .hydra/overrides.yaml) under {root}")
    groups = group_runs(runs)
    for g in groups:
        aggregate(g, points)
    groups.sort(key=lambda g: (g.env_id, -np.nan_to_num(g.row["final_return_mean"], nan=-np.inf)))
    plot(groups, root / "comparison.png")
    write_csv(groups, root / "summary.csv")
    write_markdown(groups, [r for r in runs if not r.ok], root / "summary.md", root.name)
    if tensorboard:
        write_aggregates(groups, root)
    return Report(root, groups, runs)


def describe(report: Report) -> str:
    """A few lines for the terminal: the ranking and where the files are."""
    lines = [f"comparison of {len(report.runs)} runs in {report.root}:"]
    for g in report.groups:
        r = g.row
        final = (
            f"{r['final_return_mean']:.1f} [{r['final_return_ci_low']:.1f}, "
            f"{r['final_return_ci_high']:.1f}]"
            if g.finished
            else "no finished run"
        )
        failed = f", {r['failed']} failed" if r["failed"] else ""
        lines.append(f"  {r['env']}  {g.label}: {final} (n={r['seeds']}{failed})")
    lines.append(f"  -> {report.root / 'comparison.png'}, summary.csv, summary.md, aggregate/")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry points


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
        # Made now so that a sweeper can keep its own files there from the start (Optuna's
        # sqlite storage under ${hydra.sweep.dir}); the launchers make it later otherwise.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        if not find_runs(root):
            return
        try:
            report = compare(root)
        except Exception:
            log.exception(f"pgrun: the comparison of {root} failed")
            sys.exit(1)
        print(describe(report), flush=True)
        if report.failures:
            names = ", ".join(r.name for r in report.failures)
            print(
                f"pgrun: error: {len(report.failures)} of {len(report.runs)} jobs failed "
                f"({names}): see {root / 'summary.md'}",
                file=sys.stderr,
            )
            sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """pgrun-compare DIR...: compare the runs under each DIR and write the files into it."""
    parser = argparse.ArgumentParser(
        prog="pgrun-compare",
        description="Aggregate the seeds of a pgrun sweep: comparison.png, summary.csv, "
        "summary.md and TensorBoard runs aggregate/<group>/{mean,lower,upper}, written into "
        "each DIR. Runs are grouped by their overrides except seed.",
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
        type=int,
        default=GRID_POINTS,
        help=f"steps of the shared grid the seeds are interpolated onto (default {GRID_POINTS})",
    )
    args = parser.parse_args(argv)
    status = 0
    for root in args.dirs:
        if not root.is_dir():
            print(f"pgrun-compare: error: {root} is not a directory", file=sys.stderr)
            status = 2
            continue
        try:
            report = compare(root, points=args.points)
        except FileNotFoundError as exc:
            print(f"pgrun-compare: error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(describe(report))
        for run in report.failures:
            print(f"  failed: {run.name}: {run.failure}")
        if report.failures:
            print(
                f"pgrun-compare: error: {len(report.failures)} of {len(report.runs)} jobs of "
                f"{root} did not finish: see {root / 'summary.md'}",
                file=sys.stderr,
            )
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
