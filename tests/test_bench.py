"""The benchmark harness (benchmarks/bench.py) runs and prints its table.

These tests check behaviour, not timings: the smoke mode cuts every budget so that each row's
code path runs in seconds, and the figures it prints mean nothing. The SB3 rows are left out
(--no-sb3), so the tests need neither Stable-Baselines3 nor the `bench` extra.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def run_bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def load_bench():
    return load_benchmark("bench")


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of the markdown table's body rows."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert lines[:2] == ["| benchmark | measured | target | met |", "|---|---|---|---|"], stdout
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def test_help_lists_the_flags(tmp_path):
    proc = run_bench("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--seeds", "--quick", "--smoke", "--no-sb3", "--rows", "--ppo-only"):
        assert flag in proc.stdout


def test_bad_rows_are_refused(tmp_path):
    proc = run_bench("--rows", "7", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--rows" in proc.stderr


def test_smoke_run_prints_one_row_per_benchmark(tmp_path):
    proc = run_bench("--smoke", "--no-sb3", cwd=tmp_path)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-3000:]}"
    rows = table_rows(proc.stdout)
    assert all(len(row) == 4 for row in rows), rows
    by_section: dict[str, list[list[str]]] = {}
    for row in rows:
        by_section.setdefault(row[0].split(".")[0], []).append(row)
    assert sorted(by_section) == ["1", "2", "3", "4", "5", "6"]

    solve = {row[0]: row[1] for row in by_section["1"]}
    assert any("pgrun rtg_baseline" in what for what in solve)
    assert any("pgrun off_policy" in what for what in solve)
    assert any("skipped" in measured and "SB3" in what for what, measured in solve.items())
    # a 2000-step budget cannot solve CartPole: the row says so instead of failing
    assert all("seeds solved" in m for w, m in solve.items() if "pgrun" in w)

    backends = ["gymnasium"] + (["envpool"] if importlib.util.find_spec("envpool") else [])
    throughput = by_section["2"]  # one row per backend
    assert [row[0].split("env.backend=")[1] for row in throughput] == backends
    for row in throughput:
        assert "N=16" in row[0]
        assert "raw env" in row[1] and "raw env + forward" in row[1]

    cheetah = by_section["3"]
    if importlib.util.find_spec("mujoco") is None:
        assert len(cheetah) == 1 and "skipped" in cheetah[0][1]
    else:
        assert len(cheetah) == len(backends)
        assert "raw env" in cheetah[0][1]
        if "envpool" in backends:
            assert "env.num_threads" in cheetah[1][0] and "gymnasium SyncVectorEnv" in cheetah[1][1]

    process = {row[0]: row[1] for row in by_section["4"]}
    assert len(process) == 4
    (startup,) = [m for w, m in process.items() if "import torch" in w]
    assert " s = " in startup
    for what, measured in process.items():
        assert "exit status" not in measured, (what, measured)
        if "--help" in what or "--cfg" in what:  # the probe read sys.modules of the process
            assert "torch imported: true" in measured or "torch imported: false" in measured

    (sweep,) = by_section["5"]
    assert "skipped" in sweep[1]

    groups = by_section["6"]  # one group of seeds against the same seeds alone (smoke: K = 2)
    assert all("K=2" in row[0] and "alone" in row[1] for row in groups[:2])
    assert len(groups) == 3 and "K=2" in groups[2][0]
    assert all(row[3] in ("-", "n/a (smoke)") for row in rows)
    # the runs were made in temporary directories, not where the benchmark was started
    assert not (tmp_path / "outputs").exists()


def test_sb3_rows_are_skipped_with_a_note_when_it_is_missing(monkeypatch):
    bench = load_bench()
    real_have = bench.have
    # without stable-baselines3 there is no sb3-contrib either (it depends on it)
    missing = ("stable_baselines3", "sb3_contrib")
    monkeypatch.setattr(bench, "have", lambda m: m not in missing and real_have(m))
    monkeypatch.setattr(
        bench,
        "solve_pgrun",
        lambda variant, seed, settings, backend="gymnasium": bench.Solve(1.0, 40_000),
    )
    _, settings, _ = bench.parse(["--smoke"])
    rows = bench.solve_rows(settings)
    notes = [row.measured for row in rows if "SB3" in row.what]
    assert notes and all("not installed" in note for note in notes)
    pgrun_row = next(row for row in rows if "rtg_baseline" in row.what)
    assert "1.00 s" in pgrun_row.measured and "1/1 seeds solved" in pgrun_row.measured


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], "n/a"), ([2.0], "2.00 s"), ([1.0, 3.0, 2.0], "2.00 s (1.00 s-3.00 s)")],
)
def test_median_range(values, expected):
    bench = load_bench()
    assert bench.median_range(values, bench.secs) == expected
