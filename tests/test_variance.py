"""pgrun-variance RUN_DIR: the table and figure of each estimator's noise at a run's policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_pgrun

import pgrun
from pgrun import variance

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "my_estimators.py"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("variance")
    done = run_pgrun(
        ["total_steps=300", "batch_episodes=4", "hydra.run.dir=run"], root, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return root / "run"


def test_table_and_figure_for_a_run(run_dir, capsys):
    variance.main(
        [str(run_dir), "--episodes", "16", "--sizes", "1,4", "--weights", f"{EXAMPLES}:rtg_loo"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# Estimator variance: CartPole-v1, the policy of run")
    head = "| estimator | tr Cov, N=1 | tr Cov, N=4 | SNR, N=1 | SNR, N=4 |"
    assert head in lines
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    names = [name for name in rows if name != "estimator" and "---" not in name]
    assert names == ["vanilla", "rtg", "rtg_baseline", "time_loo", f"{EXAMPLES}:rtg_loo"]
    # rtg_baseline at N = 1 subtracts each episode's own weights: the estimate is 0
    assert "0 (g = 0)" in rows["rtg_baseline"].split("|")[2]
    # the example plug-in is the leave-one-out baseline: the same numbers as time_loo
    assert rows[f"{EXAMPLES}:rtg_loo"].split("|")[2:] == rows["time_loo"].split("|")[2:]
    assert "batches per cell: N=1: 16, N=4: 4" in lines[-1]
    assert (run_dir / "variance.png").stat().st_size > 10_000
    # a second call keeps the first figure
    variance.main([str(run_dir), "--episodes", "8", "--sizes", "1,4"])
    assert (run_dir / "variance-2.png").is_file()


def test_shared_gradients_give_the_same_estimates():
    """Weights equal to earlier ones reuse their per-episode gradients: the same estimates."""
    env = pgrun.make_env("CartPole-v1", num_envs=8, seed=0)
    policy = pgrun.make_policy(env, hidden_sizes=[8])
    torch.manual_seed(0)
    pool = pgrun.collect_episodes(env, policy, horizon=30, seed=0)
    grads = []
    for name in ("rtg", "time_loo", "rtg_baseline"):
        knobs = variance.ESTIMATORS[name]
        for n in (1, 4):
            shared = variance.batch_estimates(policy, pool, knobs, n, grads=grads)
            alone = variance.batch_estimates(policy, pool, knobs, n)
            torch.testing.assert_close(shared, alone)
    assert len(grads) == 4  # rtg once for both N, time_loo at N = 1 is rtg, rtg_baseline twice


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nowhere"], "nowhere does not exist: give a run's directory"),
        (["RUN", "--weights", "no_such_module:w"], "--weights=no_such_module:w: cannot import"),
        (["RUN", "--sizes", "1,x"], "--sizes 1,x"),
        (["RUN", "--episodes", "4", "--sizes", "1,4"], "--episodes 4"),
    ],
)
def test_bad_input_is_one_line(run_dir, args, says, capsys):
    args = [str(run_dir) if a == "RUN" else a for a in args]
    with pytest.raises(SystemExit) as info:
        variance.main(args)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgrun-variance: error: "), lines
    assert says in lines[0]
