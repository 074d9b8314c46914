"""stop_return: training ends at the first batch whose final return (mean of the last 5 batches)
reaches it, with the usual final checkpoint and policy; without it the budget is used up."""

from __future__ import annotations

import numpy as np
from conftest import read_scalars
from hydra import compose, initialize_config_module

from pgrun import checkpoint
from pgrun.trainer import FINAL_WINDOW, train


def config(*overrides: str):
    with initialize_config_module(config_module="pgrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=["progress=false", *overrides])


def test_stops_at_the_first_batch_that_reaches_it(tmp_path):
    # An untrained CartPole policy returns about 20; with the default config the final return
    # passes 60 within about twenty batches of the 100k-step budget.
    summary = train(config("stop_return=60", "total_steps=100000"), tmp_path)
    returns = [v for _, v in read_scalars(tmp_path)["charts/episodic_return"]]
    windows = [
        np.mean(returns[i - FINAL_WINDOW : i]) for i in range(FINAL_WINDOW, len(returns) + 1)
    ]
    assert summary["env_steps"] < 100_000
    assert windows[-1] >= 60 and all(w < 60 for w in windows[:-1])
    assert summary["final_return"] == np.mean(returns[-FINAL_WINDOW:])
    assert (tmp_path / "policy.pt").is_file()
    assert checkpoint.load_latest(tmp_path)["env_steps"] == summary["env_steps"]


def test_null_trains_for_the_whole_budget(tmp_path):
    summary = train(config("total_steps=3000"), tmp_path)
    assert summary["env_steps"] >= 3000


def test_a_resumed_run_that_reached_it_trains_no_further(tmp_path):
    """Resumed with the stop_return it reached, a finished run has nothing to train: train says
    why and leaves its files as they were; with stop_return=null it trains on."""
    first = train(config("stop_return=60", "total_steps=100000"), tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    again = train(config("stop_return=60", "total_steps=100000"), tmp_path, resume=True)
    assert again["finished_before"].startswith("final return ")
    assert again["finished_before"].endswith(">= stop_return=60")
    assert (again["env_steps"], again["final_return"]) == (
        first["env_steps"],
        first["final_return"],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    on = train(config("total_steps=100000", "stop_return=null"), tmp_path, resume=True)
    assert "finished_before" not in on and on["env_steps"] >= 100_000
