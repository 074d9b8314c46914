"""The learning-targets benchmark (benchmarks/targets.py): every row is a command that composes
and validates, the medians count the seeds that missed, and the table prints one line a row.

No training here: the rows' runs take minutes each (make bench-targets).
"""

from __future__ import annotations

import math

import pytest
from conftest import load_benchmark
from hydra import compose, initialize_config_module

from pgrun.config import validate


@pytest.fixture(scope="module")
def targets():
    return load_benchmark("targets")


def test_the_issue_rows_are_all_there(targets):
    rows = {(r.env, r.preset): r.target for r in targets.ROWS}
    presets = ("vanilla", "rtg", "rtg_baseline", "off_policy", "value_baseline", "gae", "ppo")
    assert all(rows[("CartPole-v1", p)] == 475 for p in presets)
    assert rows[("InvertedPendulum-v5", "gae")] == 1000
    assert rows[("InvertedPendulum-v5", "trpo")] == 1000
    assert rows[("CartPole-v1", "npg")] == rows[("CartPole-v1", "trpo")] == 475
    assert rows[("LunarLander-v3", "gae")] == 180
    assert rows[("HalfCheetah-v5", "value_baseline")] == 300
    assert rows[("Humanoid-v5", "ppo")] == 600


def test_every_row_composes_to_its_env_and_preset(targets):
    with initialize_config_module(config_module="pgrun.configs", version_base="1.3"):
        for row in targets.ROWS:
            cfg = compose(config_name="config", overrides=[*row.args, "seed=3"])
            assert cfg.env.id == row.env, row
            assert cfg.variant.name == row.preset, row
            validate(cfg)


def test_a_median_counts_the_seeds_that_missed(targets):
    assert targets.median_or_none([10.0, 20.0, 30.0], 3) == 20.0
    # 3 of 5 reached: the median of [10, 20, 30, inf, inf] is 30
    assert targets.median_or_none([30.0, 10.0, 20.0], 5) == 30.0
    # 2 of 5 reached: the median seed never did
    assert targets.median_or_none([10.0, 20.0], 5) is None


def test_the_table_has_a_line_per_row(targets):
    row = targets.ROWS[0]
    hit = targets.Result(0, 1000.0, 2.0, 480.0, 480.0, 5000)
    miss = targets.Result(1, math.inf, math.inf, 300.0, 290.0, 5000)
    lines = targets.table({row: [hit, hit, miss]}).splitlines()
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:7] == ["CartPole-v1", row.preset, "475", "2/3", "1,000", "2.0", "480.0"]
    lines = targets.table({row: [hit, miss, miss]}).splitlines()
    assert "not reached in 5,000" in lines[2]
