"""pgrun/compare.py: its statistics against hand computations, and the files, aggregate
TensorBoard runs and TensorBoard server view of a small real sweep (2 variants x 2 seeds)."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import describe, pgrun_env, read_scalars, run_pgrun
from numpy.testing import assert_allclose

from pgrun.compare import (
    Run,
    bootstrap_ci,
    env_settings,
    group_runs,
    iqm,
    load_run,
    running_mean,
    shared_grid,
    time_to_threshold,
)

VARIANTS = ("vanilla", "rtg")
SEEDS = (0, 1)
RETURN = "charts/episodic_return"

# --------------------------------------------------------------------------------------------
# The statistics, by hand


def test_iqm_drops_a_quarter_at_each_end():
    assert iqm([1, 2, 3, 4, 100]) == 3.0  # drops 1 and 100
    assert iqm([10, -10, 0, 7, 4, 1, 3, 2]) == 2.5  # drops -10, 0 and 7, 10
    assert iqm([5, 1]) == 3.0  # too few to drop any


def test_bootstrap_band_of_one_seed_is_the_seed_and_of_two_spans_them():
    one = np.array([[1.0, 2.0, 3.0]])
    lower, upper = bootstrap_ci(one)
    assert_allclose(lower, one[0])
    assert_allclose(upper, one[0])
    two = np.array([[0.0, 10.0, 5.0], [4.0, 2.0, 5.0]])
    lower, upper = bootstrap_ci(two)
    # 2000 resamples of 2 seeds: both extremes (each seed drawn twice) occur, so the 2.5% and
    # 97.5% quantiles of the resampled means are the seeds' min and max.
    assert_allclose(lower, two.min(axis=0))
    assert_allclose(upper, two.max(axis=0))
    again = bootstrap_ci(two)
    assert_allclose(again[0], lower)  # seeded: the same band every time


def test_bootstrap_band_narrows_with_more_seeds():
    rng = np.random.default_rng(0)
    few = rng.normal(size=(3, 1))
    many = rng.normal(size=(300, 1))
    width = [np.subtract(*bootstrap_ci(v)[::-1])[0] for v in (few, many)]
    assert width[1] < width[0]
    lower, upper = bootstrap_ci(many)
    assert lower[0] < many.mean() < upper[0]


def test_bootstrap_rejects_a_vector():
    with pytest.raises(ValueError, match="values must be"):
        bootstrap_ci(np.zeros(3))


def test_running_mean_and_time_to_threshold():
    returns = np.array([0.0, 10, 20, 30, 40, 50, 60])
    assert_allclose(running_mean(returns, window=5), [0, 5, 10, 15, 20, 30, 40])
    run = Run(Path("r"), "r", [], "Env", None)
    run.steps = np.arange(1, 8) * 100
    run.returns = returns
    run.seconds = np.arange(1, 8) * 0.5
    # The running mean of the last 5 batches first reaches 30 at index 5 (mean of 10..50).
    assert time_to_threshold(run, 30.0) == (600.0, 3.0)
    assert time_to_threshold(run, 41.0) == (float("inf"), float("inf"))


def test_shared_grid_stays_where_every_run_has_data():
    a = Run(Path("a"), "a", [], "Env", None, steps=np.array([300, 700, 1100]))
    b = Run(Path("b"), "b", [], "Env", None, steps=np.array([250, 600, 1000, 1400]))
    grid = shared_grid([a, b], points=5)
    assert grid.tolist() == [300, 500, 700, 900, 1100]  # max of the firsts, min of the lasts


def test_a_resumed_run_reads_in_step_order_whatever_its_file_names(tmp_path):
    """A resumed run has a second event file. Files created within the same second are named
    by a per-process counter, and TensorBoard reads them by name ("...10" before "...9"), so
    the reader must order by step; the final return is the last run's."""
    from torch.utils.tensorboard import SummaryWriter

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    for part, (steps, final) in enumerate((((10, 20), 15.0), ((30, 40), 35.0))):
        writer = SummaryWriter(str(tmp_path / f"part{part}"))
        for step in steps:
            writer.add_scalar(RETURN, float(step), step)
        writer.add_scalar("hparams/final_return", final, steps[-1])
        writer.close()
    # the resumed part's file gets the name that sorts first
    for part, name in ((0, "events.out.tfevents.1700000000.host.1.9"),
                       (1, "events.out.tfevents.1700000000.host.1.10")):  # fmt: skip
        (file,) = (tmp_path / f"part{part}").iterdir()
        file.rename(tmp_path / name)
    run = load_run(tmp_path, tmp_path)
    assert run.steps.tolist() == [10, 20, 30, 40]
    assert run.returns.tolist() == [10.0, 20.0, 30.0, 40.0]
    assert run.final_return == 35.0


def test_a_runs_env_settings_are_what_omegaconf_reads(tmp_path):
    """Read by libyaml; a value in OmegaConf's syntax (an interpolation) by OmegaConf."""
    from omegaconf import OmegaConf

    plain = tmp_path / "plain.yaml"
    plain.write_text("env:\n  id: CartPole-v1\n  solved_return: 475\n  random_return: 1e1\n")
    interpolated = tmp_path / "interpolated.yaml"
    interpolated.write_text("target: 200\nenv:\n  id: LunarLander-v3\n  solved_return: ${target}\n")
    for path in (plain, interpolated):
        config = OmegaConf.load(path)
        id_, solved, random = (OmegaConf.select(config, f"env.{k}")
                               for k in ("id", "solved_return", "random_return"))  # fmt: skip
        expected = (id_, float(solved), None if random is None else float(random))
        assert env_settings(path) == expected
    assert env_settings(plain) == ("CartPole-v1", 475.0, 10.0)
    assert env_settings(interpolated) == ("LunarLander-v3", 200.0, None)
    assert env_settings(tmp_path / "none.yaml") == ("?", None, None)


def test_groups_ignore_seed_and_are_labelled_by_what_varies():
    def run(*overrides: str) -> Run:
        return Run(Path("x"), "x", list(overrides), "Env", None)

    runs = [
        run("total_steps=100", "variant=rtg", "seed=0"),
        run("total_steps=100", "variant=rtg", "+seed=1"),
        run("seed=0", "total_steps=100", "variant=vanilla"),
        run("total_steps=100", "variant=rtg", "seed=2", "progress=false"),  # the same numbers
    ]
    groups = group_runs(runs)
    assert sorted((g.label, len(g.runs)) for g in groups) == [
        ("variant=rtg", 3),
        ("variant=vanilla", 1),
    ]
    # a swept value's special characters, as Hydra's sweeper stores them: shown as typed
    swept = [run("variant.weights=rtg"), run("variant.weights=mymod\\:weights")]
    assert sorted(g.label for g in group_runs(swept)) == [
        "variant.weights=mymod:weights",
        "variant.weights=rtg",
    ]
    assert sorted(g.short for g in group_runs(swept))[0] == "variant.weights=mymod:weights"


def test_a_seed_run_more_than_once_counts_once():
    """Re-runs of one seed (the same run again) are not more seeds: one is kept per setting
    and seed, the newest finished one, and each repeat is named in a note."""
    from pgrun.compare import drop_repeated_seeds

    def run(name: str, seed: int | None, start: float, *overrides: str, failure=None) -> Run:
        r = Run(Path(name), name, list(overrides), "Env", None, failure=failure)
        r.seed, r.start_time = seed, start
        return r

    runs = [
        run("a", 0, 1.0, "variant=rtg"),
        run("b", 0, 3.0, "variant=rtg", failure="no final return"),  # newer, but failed
        run("c", 0, 2.0, "variant=rtg"),
        run("d", 1, 1.0, "variant=rtg"),
        run("e", 0, 1.0, "variant=vanilla", "seed=0"),  # another setting
        run("f", None, 1.0, "variant=vanilla"),  # seed unknown: kept
        *(run(f"g{s}{k}", s, k, "variant=ppo") for s in (3, 2) for k in (1, 2)),
    ]
    kept, notes = drop_repeated_seeds(runs)
    assert [r.name for r in kept] == ["c", "d", "e", "f", "g32", "g22"]
    assert notes == [
        "variant=rtg: 3 runs of seed 0, counted once (c): a seed's repeats are not more "
        "evidence; use other seeds",
        # one line for a setting's repeated seeds (pooled sweeps repeat many)
        "variant=ppo: seeds 2, 3: 2 runs each, each counted once (its newest finished run): a "
        "seed's repeats are not more evidence; use other seeds",
    ]


def test_two_envs_are_also_ranked_together_on_normalised_scores(tmp_path):
    """Two variants on two envs with random_return and solved_return: a ranking per env and
    one over both on (return - random) / (solved - random), drawn as a row of its own."""
    from pgrun.compare import ALL_ENVS, aggregate, plot, rankings

    runs = []
    for env, (random, solved) in {"A-v0": (0.0, 100.0), "B-v0": (-500.0, -100.0)}.items():
        for variant, level in (("rtg", 0.8), ("vanilla", 0.2)):
            for seed in range(4):
                final = random + (level + 0.01 * seed) * (solved - random)
                r = Run(Path(f"{env}{variant}{seed}"), f"{env}{variant}{seed}",
                        [f"env={env}", f"variant={variant}", f"seed={seed}"], env, solved,
                        random_return=random)  # fmt: skip
                r.steps, r.returns = np.array([10, 20]), np.array([random, final])
                r.seconds, r.final_return, r.seed = np.array([1.0, 2.0]), final, seed
                runs.append(r)
    groups = group_runs(runs)
    for g in groups:
        aggregate(g)
    ranked = {r.env: r for r in rankings(groups)}
    assert set(ranked) == {"A-v0", "B-v0", ALL_ENVS}
    (verdict,) = ranked[ALL_ENVS].verdicts
    assert (verdict.better, verdict.worse, verdict.p) == ("rtg", "vanilla", 1.0)
    assert ranked[ALL_ENVS].note == "over A-v0, B-v0"
    plot(groups, list(ranked.values()), tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").stat().st_size > 0


def test_the_figure_names_each_band_for_what_it_is(tmp_path, monkeypatch):
    """Below 4 seeds a curve's band is the seeds' range and the performance profile has no
    band; the titles and legends say which band is which."""
    from matplotlib.figure import Figure

    from pgrun.compare import aggregate, plot, rankings

    runs = []
    for variant, seeds in (("rtg", 5), ("vanilla", 3)):
        for seed in range(seeds):
            r = Run(Path(f"{variant}{seed}"), f"{variant}{seed}",
                    [f"variant={variant}", f"seed={seed}"], "A-v0", None)  # fmt: skip
            r.steps, r.returns = np.array([10, 20]), np.array([0.0, seed + 10.0 * len(variant)])
            r.seconds, r.final_return, r.seed = np.array([1.0, 2.0]), r.returns[-1], seed
            runs.append(r)
    groups = group_runs(runs)
    for g in groups:
        aggregate(g)
    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    plot(groups, rankings(groups), tmp_path / "comparison.png")
    curves, profile = saved[0].axes[:2]
    assert (
        " ".join(curves.get_title().split())
        == "A-v0: return, mean over seeds, band: 95% CI, the seeds' range below 4 seeds"
    )
    assert sorted(t.get_text() for t in curves.get_legend().get_texts()) == [
        "rtg (n=5, 95% CI)",
        "vanilla (n=3, range)",
    ]
    assert sorted(t.get_text() for t in profile.get_legend().get_texts()) == [
        "rtg (n=5)",
        "vanilla (n=3)",
    ]
    assert len(profile.collections) == 1  # the band of the 5 seeds' profile only

    # all groups below 4 seeds: the title says range
    few = group_runs([r for r in runs if r.seed < 3])
    for g in few:
        aggregate(g)
    plot(few, rankings(few), tmp_path / "few.png")
    assert saved[1].axes[0].get_title() == "A-v0: return, mean over seeds, band: range"
    assert not saved[1].axes[1].collections


def test_the_figure_titles_fit_their_panels_and_the_legend_counts_by_kind(tmp_path):
    """A long env id and a panel of both bands: each panel's title is wrapped to stay within
    the figure and clear of the next (it ran past the figure's left edge); the curves' legend
    counts a group's runs without a result by kind, as the terminal's table does."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pgrun.compare import FAILED_FILE, aggregate, plot, rankings

    env = "LunarLanderContinuous-v3"
    runs = []
    for variant, seeds in (("rtg", 5), ("vanilla", 3)):
        for seed in range(seeds + 1):
            path = tmp_path / f"{variant}{seed}"
            path.mkdir()
            r = Run(path, path.name, [f"variant={variant}", f"seed={seed}"], env, 200.0)
            r.seed = seed
            if seed == seeds:  # one more that failed
                r.failure = "ValueError: x"
                (path / FAILED_FILE).write_text(r.failure + "\n")
            else:
                r.steps, r.returns = np.array([10, 20]), np.array([0.0, seed + 10.0 * len(variant)])
                r.seconds, r.final_return = np.array([1.0, 2.0]), r.returns[-1]
            runs.append(r)
    groups = group_runs(runs)
    for g in groups:
        aggregate(g)
    saved: list[Figure] = []
    real = Figure.savefig
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), real(fig, *a, **k)))
        plot(groups, rankings(groups), tmp_path / "comparison.png")
    (fig,) = saved
    renderer = FigureCanvasAgg(fig).get_renderer()
    width = fig.bbox.width
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 4
    titles = [ax.title.get_window_extent(renderer) for ax in shown]
    assert all(t.x0 >= 0 and t.x1 <= width for t in titles), titles  # within the figure
    for left, right in itertools.pairwise(titles):
        assert left.x1 < right.x0, titles  # none runs into the next
    # the profile's band is drawn for the group of 5 seeds only, and its title says so
    (profile,) = [ax.get_title() for ax in shown if "performance profile" in ax.get_title()]
    assert profile.replace("\n", " ").endswith("band: 95% CI where 4+ seeds"), profile
    legend = sorted(t.get_text() for t in shown[0].get_legend().get_texts())
    assert legend == [
        "rtg (n=5, 1 failed, 95% CI)",
        "solved (200)",
        "vanilla (n=3, 1 failed, range)",
    ], legend


def test_the_closing_table_lines_up_and_says_why_runs_have_no_result(tmp_path):
    """The terminal's table: one column per field whatever the env ids' lengths, and each
    group's runs without a result counted by kind (failed.txt, ended by the scheduler,
    interrupted)."""
    from pgrun.compare import FAILED_FILE, Report, aggregate, describe

    runs = []
    for env, failure in (("A-v0", None), ("LongerName-v0", "x"), ("LongerName-v0", "s")):
        for seed in range(2):
            path = tmp_path / f"{env}-{failure}-{seed}"
            path.mkdir()
            r = Run(path, path.name, [f"env.id={env}", f"f={failure}", f"seed={seed}"], env, None)
            r.seed = seed
            if failure is None:
                r.steps, r.returns = np.array([10, 20]), np.array([0.0, 5.0 + seed])
                r.seconds, r.final_return = np.array([1.0, 2.0]), 5.0 + seed
            elif failure == "x" and seed == 0:  # it wrote failed.txt
                r.failure = "ValueError: x"
                (path / FAILED_FILE).write_text(r.failure + "\n")
            elif failure == "s":  # the scheduler ended it
                r.failure = "scheduler: CANCELLED"
                (path / FAILED_FILE).write_text(r.failure + "\n")
            else:  # interrupted
                r.failure = "no final return: the job did not finish"
            runs.append(r)
    groups = group_runs(runs)
    for g in groups:
        aggregate(g)
    text = describe(Report(tmp_path, groups, runs, [], []))
    table = [line for line in text.splitlines()[1:] if line.startswith("  ") and "(n=" in line]
    assert len(table) == 3, text
    assert len({line.index("env.id=") for line in table}) == 1, text  # the labels line up
    ends = sorted(line.rsplit("  ", 1)[1] for line in table)
    assert ends == ["(n=0, 1 failed, 1 not finished)", "(n=0, 2 ended from outside)", "(n=2)"]


# --------------------------------------------------------------------------------------------
# A small real sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """`pgrun -m variant=vanilla,rtg seed=0,1` with a tiny budget; the comparison runs at its end."""
    root = tmp_path_factory.mktemp("compare")
    sweep_dir = root / "sweep"
    proc = run_pgrun(
        [
            "-m",
            f"variant={','.join(VARIANTS)}",
            f"seed={','.join(map(str, SEEDS))}",
            "total_steps=2000",  # no progress bars: stderr is not a terminal
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=root,
    )
    assert proc.returncode == 0, describe(proc)
    assert "comparison of 4 runs" in proc.stdout, describe(proc)
    return sweep_dir


def job_dir(sweep: Path, variant: str, seed: int) -> Path:
    """Named by what varies, variant first: the constant total_steps=2000 is left out."""
    return sweep / f"variant={variant},seed={seed}"


def summary_rows(sweep: Path) -> dict[str, dict[str, str]]:
    with (sweep / "summary.csv").open() as f:
        return {row["group"]: row for row in csv.DictReader(f)}


def test_sweep_writes_the_figure_and_the_tables(sweep: Path):
    from matplotlib.image import imread

    image = imread(sweep / "comparison.png")
    assert image.ndim == 3 and image.shape[1] >= 400 and image.shape[0] >= 250
    assert image[..., :3].std() > 0.05  # not a blank canvas

    rows = summary_rows(sweep)
    assert set(rows) == {f"variant={v}" for v in VARIANTS}
    for variant in VARIANTS:
        row = rows[f"variant={variant}"]
        finals = [
            read_scalars(job_dir(sweep, variant, s))["hparams/final_return"][-1][1] for s in SEEDS
        ]
        assert row["env"] == "CartPole-v1"
        assert (row["seeds"], row["failed"], row["failed_jobs"]) == ("2", "0", "")
        assert float(row["final_return_mean"]) == pytest.approx(np.mean(finals), rel=1e-5)
        assert float(row["final_return_iqm"]) == pytest.approx(np.mean(finals), rel=1e-5)
        # 2 seeds: no interval (too few for one to mean anything)
        for ci in ("final_return_ci_low", "final_return_ci_high", "final_return_iqm_ci_low"):
            assert row[ci] == "", ci
        assert (row["threshold"], row["reached"]) == ("475", "0/2")  # 2000 steps: far from it

    md = (sweep / "summary.md").read_text()
    for variant in VARIANTS:
        assert f"`variant={variant}` | 2 |" in md
    assert "comparison.png" in md
    assert "Failed jobs" not in md
    # one verdict line for the one pair, and the warning: 2 and 2 seeds cannot separate them
    (line,) = [x for x in md.splitlines() if "P(improvement) =" in x]
    assert "(2 seeds each)" in line and " ~ " in line, line
    assert "warning: too few seeds" in md and "4 seeds per group would do" in md


@pytest.mark.parametrize("variant", VARIANTS)
def test_aggregate_runs_are_the_mean_and_band_of_the_seeds(sweep: Path, variant: str):
    seeds = [read_scalars(job_dir(sweep, variant, s))[RETURN] for s in SEEDS]
    logged = read_scalars(sweep / "aggregate" / f"variant={variant}")
    assert RETURN not in logged  # charts/episodic_return holds the single runs alone
    band = f"aggregate/episodic_return_band/variant={variant}"
    agg = {k: logged[f"{band}/{k}"] for k in ("mean", "lower", "upper")}
    assert logged["aggregate/episodic_return"] == agg["mean"]
    steps = np.array([step for step, _ in agg["mean"]])
    # The grid runs from the latest first batch to the earliest last batch of the seeds.
    assert steps[0] == max(s[0][0] for s in seeds)
    assert steps[-1] == min(s[-1][0] for s in seeds)
    assert np.all(np.diff(steps) > 0)
    interpolated = np.stack([np.interp(steps, [p[0] for p in s], [p[1] for p in s]) for s in seeds])
    assert_allclose([v for _, v in agg["mean"]], interpolated.mean(axis=0), rtol=1e-5)
    # Two seeds: the band is their range.
    assert_allclose([v for _, v in agg["lower"]], interpolated.min(axis=0), rtol=1e-5)
    assert_allclose([v for _, v in agg["upper"]], interpolated.max(axis=0), rtol=1e-5)
    for kind in ("lower", "upper"):
        assert [step for step, _ in agg[kind]] == steps.tolist()


def test_pgrun_compare_command_rewrites_a_sweep(sweep: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    for name in ("comparison.png", "summary.csv", "summary.md"):
        (copy / name).unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    exe = Path(sys.executable).parent / "pgrun-compare"
    proc = subprocess.run(
        [str(exe), str(copy), str(empty)],
        capture_output=True,
        text=True,
        env=pgrun_env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, describe(proc)  # the empty directory
    assert "no runs" in proc.stderr, describe(proc)
    assert (copy / "comparison.png").is_file()
    assert summary_rows(copy) == summary_rows(sweep)
    # The aggregates are written afresh, not appended: one event file per aggregate run.
    for variant in VARIANTS:
        files = list((copy / "aggregate" / f"variant={variant}").iterdir())
        assert len(files) == 1, files


def test_a_group_of_mixed_budgets_is_named(sweep: Path, tmp_path: Path):
    """A job resumed with a larger total_steps (its newest record, .hydra/resume-*/, says so)
    is pooled with its group's other seeds: the comparison says the group mixes budgets."""
    from pgrun.compare import compare

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    budgets = "runs of different budgets in one group"
    assert not [n for n in compare(copy, tensorboard=False).notes if budgets in n]
    job = job_dir(copy, VARIANTS[0], SEEDS[0])
    record = job / ".hydra" / "resume-2026-01-01_00-00-00.000000"
    record.mkdir()
    text = (job / ".hydra" / "config.yaml").read_text()
    assert "total_steps: 2000\n" in text
    (record / "config.yaml").write_text(text.replace("total_steps: 2000\n", "total_steps: 3000\n"))
    (note,) = [n for n in compare(copy, tensorboard=False).notes if budgets in n]
    assert note.startswith(f"variant={VARIANTS[0]}: {budgets}")
    assert "total_steps 2,000 (1 run), 3,000 (1 run)" in note
    assert note in (copy / "summary.md").read_text()


def test_a_group_none_of_whose_jobs_started_keeps_its_env_threshold(sweep: Path, tmp_path: Path):
    """A group whose jobs all left no directory (the sweep stopped before them) is listed from
    multirun.yaml with its env's threshold and random return, as the others are, where its
    summary row had none."""
    from pgrun.compare import compare

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    for seed in SEEDS:
        shutil.rmtree(job_dir(copy, VARIANTS[0], seed))
    report = compare(copy, tensorboard=False)
    rows = summary_rows(copy)
    assert {row["threshold"] for row in rows.values()} == {"475"}, rows
    (never,) = [g for g in report.groups if not g.finished]
    assert (never.env_id, never.random_return) == ("CartPole-v1", 25.0), never
    # a swept env none of whose jobs ran (env=<file>): read from its env file
    from pgrun.compare import _env_file_settings

    assert _env_file_settings("Acrobot-v1") == ("Acrobot-v1", -100.0, -500.0)
    assert _env_file_settings("ALE/Pong-v5")[0] == "ALE/Pong-v5"
    assert _env_file_settings("NoSuch-v0") == ("NoSuch-v0", None, None)


def test_a_sweep_whose_record_is_damaged_is_compared_with_a_note(sweep: Path, tmp_path: Path):
    """multirun.yaml cut short (it lists the sweep's jobs): the runs found are compared, and a
    note says that jobs which left no directory cannot be named, where it was a traceback."""
    from pgrun.compare import compare

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    (copy / "multirun.yaml").write_text("hydra: [\n")
    report = compare(copy, tensorboard=False)
    assert len(report.runs) == 4 and not report.failures
    (note,) = [n for n in report.notes if n.startswith("multirun.yaml cannot be read (")]
    assert note.endswith("the jobs it lists that left no directory are not named"), note
    assert note in (copy / "summary.md").read_text()


def test_pgrun_compare_leaves_a_sweep_that_is_still_running(sweep: Path, tmp_path: Path, capsys):
    """A sweep's directory locked by the pgrun writing it: pgrun-compare writes nothing into it
    (its unfinished jobs would read as failed, and the sweep compares them when it ends),
    exits 2 and names the holder; once the lock is gone it compares."""
    from pgrun import rundir
    from pgrun.compare import main

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    (copy / "summary.md").unlink()
    lock = rundir.acquire(copy)
    try:
        assert main([str(copy)]) == 2
    finally:
        rundir.release(lock)
    err = capsys.readouterr().err
    assert "is being written by a pgrun (pid " in err and len(err.strip().splitlines()) == 1
    assert not (copy / "summary.md").exists()
    assert main([str(copy)]) == 0 and (copy / "summary.md").is_file()


def test_a_finished_job_without_its_final_metric_reads_it_from_its_checkpoint(
    sweep: Path, tmp_path: Path
):
    """A job whose policy.pt (finished) came before its final metric, as a group's seed killed
    while its group trained on left it before: the comparison takes the final return from the
    last checkpoint (what the metric logs) instead of calling the job failed."""
    from pgrun.compare import FINAL_TAG, load_run
    from pgrun.sweep import finished_return

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    job = job_dir(copy, VARIANTS[0], SEEDS[0])
    logged = load_run(job, copy).final_return
    for f in job.glob("events.out.tfevents.*"):
        f.unlink()
    with (job / "metrics.csv").open() as f:
        rows = [r for r in csv.reader(f) if r[1] != FINAL_TAG]
    with (job / "metrics.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    run = load_run(job, copy)
    assert run.ok and run.final_return == finished_return(job) == pytest.approx(logged)
    (job / "policy.pt").unlink()  # not finished: no final return, as before
    last = sorted(job.glob("checkpoint-*.pt"))[-1].name
    assert load_run(job, copy).failure == (
        f"no final return: interrupted; a resume continues from {last}"
    )
    for path in job.glob("checkpoint-*.pt"):
        path.unlink()
    assert load_run(job, copy).failure == "no final return: no checkpoint; a resume starts it again"


# --------------------------------------------------------------------------------------------
# The real TensorBoard server over the sweep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_serves_seeds_aggregates_and_hparams(sweep: Path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).parent / "tensorboard"
    server = subprocess.Popen(
        [str(exe), "--logdir", str(sweep), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so its data server stops with it
    )
    seed_runs = {job_dir(sweep, v, s).name for v in VARIANTS for s in SEEDS}
    agg_runs = {f"aggregate/variant={v}" for v in VARIANTS}
    try:
        runs: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (seed_runs | agg_runs) <= runs:
            time.sleep(1)
            assert server.poll() is None, server.stderr.read().decode()
            try:
                runs = set(fetch(f"{base}/data/runs"))
            except OSError:
                continue
        assert (seed_runs | agg_runs) <= runs, runs

        tags = fetch(f"{base}/data/plugin/scalars/tags")
        for run in seed_runs:
            assert RETURN in tags[run], (run, tags[run])
        for run in agg_runs:
            assert RETURN not in tags[run] and "aggregate/episodic_return" in tags[run]

        experiment = fetch(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        infos = experiment["hparamInfos"]
        # the swept keys first, marked as differing (TensorBoard sorts each part by name)
        assert [(h["name"], h.get("differs", False)) for h in infos[:3]] == [
            ("seed", True),
            ("variant.name", True),
            ("batch_episodes", False),
        ]
        assert not any(h.get("differs", False) for h in infos[2:])
        assert {"optim.lr", "batch_episodes", "diagnostics.every"} <= {h["name"] for h in infos}
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert metrics == {"hparams/final_return"}

        groups = fetch(
            f"{base}/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "allowedStatuses": [
                    "STATUS_UNKNOWN",
                    "STATUS_SUCCESS",
                    "STATUS_FAILURE",
                    "STATUS_RUNNING",
                ],
                "colParams": [],
                "startIndex": 0,
                "sliceSize": 100,
            },
        )
        sessions = {g["name"]: g for g in groups["sessionGroups"]}
        # every seed run, and no aggregate, by a short trial id: the swept values
        assert set(sessions) == {f"{v},seed={s}" for v in VARIANTS for s in SEEDS}
        for variant in VARIANTS:
            for seed in SEEDS:
                group = sessions[f"{variant},seed={seed}"]
                assert group["hparams"]["variant.name"] == variant
                assert group["hparams"]["seed"] == seed
                final = read_scalars(job_dir(sweep, variant, seed))["hparams/final_return"]
                assert group["metricValues"][0]["value"] == pytest.approx(final[-1][1])

        layout = fetch(f"{base}/data/plugin/custom_scalars/layout")
        (category,) = layout["category"]
        means, *margins = category["chart"]
        assert means["multiline"]["tag"] == ["^aggregate/episodic_return$"]
        assert [m["title"] for m in margins] == [
            f"CartPole-v1 {v}: mean and range of 2 seeds" for v in ("rtg", "vanilla")
        ]
        series = [m["margin"]["series"][0] for m in margins]
        assert [s["lower"] for s in series] == [
            "aggregate/episodic_return_band/variant=rtg/lower",
            "aggregate/episodic_return_band/variant=vanilla/lower",
        ]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_pgrun_compare_leaves_a_single_runs_directory(sweep: Path, tmp_path: Path, capsys):
    """pgrun-compare on one job's directory (a run, not a sweep) writes nothing among its files,
    exits 2 and names the directory that holds it."""
    from pgrun import rundir
    from pgrun.compare import main

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    job = job_dir(copy, VARIANTS[0], SEEDS[0])
    before = sorted(p.name for p in job.iterdir())
    assert main([str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pgrun-compare: error: {job} is a run, not a sweep") and "\n" not in err
    assert err.endswith(f"pgrun-compare {rundir.shell(copy)}")
    assert sorted(p.name for p in job.iterdir()) == before


@pytest.mark.parametrize("points", ["-5", "0", "1", "many"])
def test_pgrun_compare_refuses_a_grid_of_fewer_than_two_points(
    sweep: Path, tmp_path: Path, capsys, points: str
):
    """--points below 2 was a traceback (-5) or an empty figure written over the sweep's (0):
    now argparse's error, exit status 2, and nothing written."""
    from pgrun.compare import main

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    before = (copy / "comparison.png").read_bytes()
    with pytest.raises(SystemExit) as stop:
        main(["--points", points, str(copy)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err == f"pgrun-compare: error: argument --points: {points!r}: give an integer of at least 2"
    )
    assert (copy / "comparison.png").read_bytes() == before


def test_a_pair_with_too_few_seeds_for_a_rank_test_is_not_called_separated():
    """Every run of a beating every run of b gives P = 1.00 [1.00, 1.00] at any number of seeds;
    with 2 or 3 seeds each that happens by chance with probability 2 / C(4, 2) or 2 / C(6, 3),
    so the verdict says '~' (not separated) there and '>' from 4 seeds each."""
    from pgrun.compare import Verdict

    for n, relation in ((2, "~"), (3, "~"), (4, ">")):
        v = Verdict("a", "b", 1.0, 1.0, 1.0, [(n, n)])
        assert v.relation == relation, n
        assert v.line().startswith(f"a {relation} b  P(improvement) = 1.00 [1.00, 1.00]")


def test_runs_too_short_to_have_learnt_are_named():
    """Runs of no more batches than the final return averages (5): their final return holds
    the untrained policy's first batch (with one batch, it is that), and a note says so, once
    for the groups that share the count; a group of longer runs gets none, and one of both
    names only its short ones. The env steps named are a batch's mean (the first batch, the
    shortest where episodes grow as the policy learns, was named)."""
    from pgrun.compare import aggregate, short_runs

    runs = []
    for variant, batches in (("a", 1), ("b", 1), ("c", 3), ("d", 6), ("e", 4), ("e", 13)):
        for seed in range(2) if variant != "e" else [batches]:
            r = Run(Path(f"{variant}{seed}"), f"{variant}{seed}",
                    [f"variant={variant}", f"seed={seed}"], "A-v0", None)  # fmt: skip
            r.steps = 500 * np.arange(1, batches + 1)
            if variant == "c":  # batches of episodes grow as the policy learns: 500 on average
                r.steps = np.cumsum([300, 500, 700])
            r.returns = np.full(batches, 10.0)
            r.seconds, r.final_return, r.seed = np.ones(batches), 10.0, seed
            runs.append(r)
    groups = group_runs(runs)
    for g in groups:
        aggregate(g)
    assert short_runs(groups) == [
        "variant=a, variant=b: runs of 1 batch (about 500 env steps): their final return is "
        "the untrained policy's; raise total_steps",
        "variant=c: runs of 3 batches (about 500 env steps each): their final return, the mean "
        "of the last 5, includes the untrained policy's first batch; raise total_steps",
        "variant=e: 1 of 2 runs of 4 batches (about 500 env steps each): their final return, "
        "the mean of the last 5, includes the untrained policy's first batch; raise total_steps",
    ]


def test_ctrl_c_while_the_sweep_compares_names_the_command_that_compares(
    tmp_path, monkeypatch, capsys
):
    """A signal while the sweep's closing comparison is drawn: the jobs have all ended, so the
    line says so and gives `pgrun-compare <dir>` (not `pgrun resume=`, which has nothing to
    run), exit status 130, no traceback."""
    from omegaconf import OmegaConf

    from pgrun import compare as compare_module
    from pgrun import signals

    job = tmp_path / "sweep" / "seed=0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=0\n")

    def interrupted(root, *args, **kwargs):
        raise signals.Interruption(signal.SIGINT)

    monkeypatch.setattr(compare_module, "compare", interrupted)
    quiet = []
    monkeypatch.setattr(signals, "quiet_exit", lambda: quiet.append(True))  # not in pytest
    monkeypatch.chdir(tmp_path)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": "sweep"}}})
    with pytest.raises(SystemExit) as exited:
        compare_module.CompareCallback().on_multirun_end(config)
    assert exited.value.code == 130
    assert quiet == [True]  # a second signal does not cut the line short
    assert capsys.readouterr().err == (
        "pgrun: interrupted (SIGINT) while comparing the sweep's runs, its jobs having ended: "
        "pgrun-compare sweep writes the comparison\n"
    )


@pytest.mark.parametrize("sweep", [True, False], ids=["sweep", "runs"])
def test_the_closing_lines_give_the_command_for_each_kind(tmp_path, sweep):
    """The lines after a comparison (the sweep's end, pgrun-compare): each kind of run without
    a result, and what runs it again: the sweep's resume, or, for runs compared together that
    no sweep holds, each one's own (--rerun-failed is a sweep's)."""
    from pgrun.compare import FAILED_FILE, Report, closing_lines

    if sweep:
        (tmp_path / "multirun.yaml").write_text("{}\n")
    runs = []
    for name, failure, written in (
        ("a", "ValueError: x", True),
        ("b", "scheduler: CANCELLED", True),
        ("c", "no final return: no checkpoint; a resume starts it again", False),
        ("d", None, False),
    ):
        path = tmp_path / name
        path.mkdir()
        if written:
            (path / FAILED_FILE).write_text(f"{failure}\n")
        runs.append(Run(path, name, [], "A-v0", None, failure=failure))
    lines = closing_lines(Report(tmp_path, [], runs), "pgrun-compare")
    from pgrun.rundir import shell

    resume = f"pgrun resume={shell(tmp_path)}"  # as typed from here: relative where shorter
    if sweep:
        assert lines == [
            "pgrun-compare: error: 1 of 4 jobs was ended from outside (b: scheduler: "
            f"CANCELLED); {resume} runs it again",
            f"pgrun-compare: error: 1 of 4 jobs failed (a): see {shell(tmp_path / 'summary.md')}; once "
            f"the cause is fixed, {resume} --rerun-failed runs it again",
            f"pgrun-compare: error: 1 of 4 jobs did not finish (c); {resume} continues it",
        ]
    else:
        assert lines == [
            "pgrun-compare: error: 1 of 4 jobs was ended from outside (b: scheduler: "
            "CANCELLED); pgrun resume=<job dir> runs each again",
            f"pgrun-compare: error: 1 of 4 jobs failed (a): see {shell(tmp_path / 'summary.md')}",
            "pgrun-compare: error: 1 of 4 jobs did not finish (c); pgrun resume=<job dir> "
            "continues each",
        ]
