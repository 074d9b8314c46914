"""pgrun-variance RUN_DIR: the table and figure of each estimator's noise at a run's policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_pgrun

EXE = Path(sys.executable).parent / "pgrun-variance"
EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "my_estimators.py"


def variance(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("variance")
    done = run_pgrun(
        ["total_steps=300", "batch_episodes=4", "hydra.run.dir=run"], root, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return root / "run"


def test_table_and_figure_for_a_run(run_dir):
    args = ["--episodes", "16", "--sizes", "1,4", "--weights", f"{EXAMPLES}:rtg_loo"]
    done = variance(str(run_dir), *args, cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# Estimator variance: CartPole-v1, the policy of run")
    head = "| estimator | tr Cov, N=1 | tr Cov, N=4 | SNR, N=1 | SNR, N=4 |"
    assert head in lines
    names = [
        line.split("|")[1].strip() for line in lines if line.startswith("| ") and "---" not in line
    ]
    assert names[1:] == ["vanilla", "rtg", "rtg_baseline", "time_loo", f"{EXAMPLES}:rtg_loo"]
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    # rtg_baseline at N = 1 subtracts each episode's own weights: the estimate is 0
    assert "0 (g = 0)" in rows["rtg_baseline"].split("|")[2]
    assert "batches per cell: N=1: 16, N=4: 4" in lines[-1]
    assert (run_dir / "variance.png").stat().st_size > 10_000
    # a second call keeps the first figure
    again = variance(str(run_dir), "--episodes", "8", "--sizes", "1,4", cwd=run_dir.parent)
    assert again.returncode == 0, again.stderr
    assert (run_dir / "variance-2.png").is_file()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nowhere"], "nowhere has no policy.pt"),
        (["RUN", "--weights", "no_such_module:w"], "--weights=no_such_module:w: cannot import"),
        (["RUN", "--sizes", "1,x"], "--sizes 1,x"),
        (["RUN", "--episodes", "4", "--sizes", "1,4"], "--episodes 4"),
    ],
)
def test_bad_input_is_one_line(run_dir, args, says):
    args = [str(run_dir) if a == "RUN" else a for a in args]
    done = variance(*args, cwd=run_dir.parent)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgrun-variance: error: "), done.stderr
    assert says in lines[0]
