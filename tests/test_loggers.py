"""The loggers: metrics.csv beside the TensorBoard run by default, in step order and without
duplicates after a resume; the backends chosen by `logger=`; compare reading either."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import comparable_scalars

from pgrun.compare import load_run
from pgrun.logger import CSV_FILE, CSVLogger, Logger, Loggers, read_scalars

PGRUN = str(Path(sys.executable).parent / "pgrun")
BASE = ["batch_episodes=8", "total_steps=3000", "checkpoint.every=2", "progress=false"]


def pgrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PGRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def rows(run_dir: Path) -> list[tuple[int, str, float]]:
    with open(run_dir / CSV_FILE, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["step", "tag", "value", "wall_time"]
    return [(int(s), tag, float(v)) for s, tag, v, _ in table[1:]]


def test_csv_logger_drops_what_follows_the_checkpoint_on_resume(tmp_path):
    log = CSVLogger(tmp_path)
    for step in (10, 20, 30):
        log.scalars({"a": step / 10, "b": -step}, step)
    log.close()
    with open(tmp_path / CSV_FILE, "a") as f:
        f.write("40,a,4")  # a row cut short by a crash
    log = CSVLogger(tmp_path, purge_step=21)  # resumed from the checkpoint at step 20
    log.scalars({"a": 3.5}, 30)
    log.close()
    assert rows(tmp_path) == [(10, "a", 1.0), (10, "b", -10.0), (20, "a", 2.0), (20, "b", -20.0),
                              (30, "a", 3.5)]  # fmt: skip
    series, start = read_scalars(tmp_path, ["a"])
    assert [(s, v) for s, v, _ in series["a"]] == [(10, 1.0), (20, 2.0), (30, 3.5)]
    assert start == series["a"][0][2]


def test_loggers_fan_out_and_the_interface_does_nothing_by_default(tmp_path):
    seen = []

    class Recording(Logger):  # keeps scalars; the interface's other methods do nothing
        def scalars(self, metrics, step):
            seen.append((step, metrics))

    both = Loggers([Recording(), CSVLogger(tmp_path)])
    both.log({"x": 1.0}, 5)
    both.text("t", "hello")
    both.video("v", [], 30.0, 5)  # neither keeps videos: nothing happens
    both.hparams({}, {"hparams/final_return": 2.0}, 5)
    both.close()
    assert seen == [(5, {"x": 1.0})]
    assert rows(tmp_path) == [(5, "x", 1.0), (5, "hparams/final_return", 2.0)]


def test_every_run_writes_metrics_csv_in_step_order_and_a_resume_adds_no_duplicates(tmp_path):
    done = pgrun(*BASE, "total_steps=1500", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = pgrun("resume=run", "total_steps=3000", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = rows(tmp_path / "run")
    steps = [s for s, _, _ in table]
    assert steps == sorted(steps)
    keys = [(s, tag) for s, tag, _ in table]
    assert len(keys) == len(set(keys))  # nothing logged twice at one step
    # the same series as TensorBoard's, point for point (TensorBoard keeps float32)
    tb = comparable_scalars(tmp_path / "run")
    for tag, series in tb.items():
        assert [(s, float(np.float32(v))) for s, t, v in table if t == tag] == series, tag


def test_a_csv_only_run_is_compared_from_its_csv(tmp_path):
    done = pgrun(*BASE, "logger=[csv]", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "run"
    assert not list(run_dir.glob("events.out.tfevents.*"))
    run = load_run(run_dir, tmp_path)
    assert run.failure is None and len(run.steps) > 3 and run.final_return is not None
    done = pgrun(*BASE, "logger=[csv,svg]", cwd=tmp_path)
    assert done.returncode == 2 and "pgrun: error: logger=" in done.stderr
