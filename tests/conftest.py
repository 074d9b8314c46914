"""Shared helpers: run the installed `pgrun` command and read back what a run logged."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

# The console script installed next to the interpreter running the tests.
PGRUN = Path(sys.executable).parent / "pgrun"

# Tags every training run logs once per iteration.
CHART_TAGS = (
    "charts/episodic_return",
    "charts/episodic_return_std",
    "charts/episodic_length",
    "charts/SPS",
    "losses/policy",
    "stats/entropy",
    "stats/grad_norm",
)
# Extra tags of a run with K > 1 inner steps.
RATIO_TAGS = ("stats/ratio_mean", "stats/ratio_max", "stats/approx_kl")


def pgrun_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a pgrun subprocess: no full Hydra tracebacks, one torch thread."""
    env = {**os.environ, **(extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONHASHSEED"] = "0"
    return env


def pgrun_cmd(*args: str) -> list[str]:
    return [str(PGRUN), *args]


def run_pgrun(
    args: Sequence[str], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `pgrun *args` in `cwd` and return the finished process (stdout and stderr as text).

    `env` adds variables to the subprocess's environment.
    """
    return subprocess.run(
        pgrun_cmd(*args),
        cwd=cwd,
        env=pgrun_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_pgrun(
    args: Sequence[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start `pgrun *args` in `cwd` without waiting (for runs that may overlap)."""
    return subprocess.Popen(
        pgrun_cmd(*args),
        cwd=cwd,
        env=pgrun_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Wait for a process from `start_pgrun` and return it as a CompletedProcess."""
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """The command, its status and the end of its output, for assertion messages."""
    return (
        f"$ {' '.join(map(str, proc.args))}\nexit {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    )


def event_files(run_dir: Path) -> list[Path]:
    """The TensorBoard event files directly inside `run_dir`."""
    return sorted(run_dir.glob("events.out.tfevents.*"))


def event_file(run_dir: Path) -> Path:
    """The run's one event file."""
    (path,) = event_files(run_dir)
    return path


def load_events(run_dir: Path):
    """An EventAccumulator over the single event file of `run_dir`, fully loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = event_files(run_dir)
    assert len(files) == 1, f"expected one event file in {run_dir}, found {files}"
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the run: tag -> [(step, value), ...] in logging order."""
    acc = load_events(run_dir)
    return {
        tag: [(event.step, event.value) for event in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }


def load_benchmark(name: str):
    """benchmarks/<name>.py (not a package) imported as the module `name`."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def comparable_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalar series of a run directory, every event file of it (a resumed run adds one),
    without the ones that differ between equal runs: charts/SPS (wall-clock time) and the
    hparams/ metric written at the end of a run. Each series is ordered by step: TensorBoard
    reads the event files in the order of their names, which for two files created within the
    same second need not be the order they were written in."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: sorted((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["scalars"]
        if tag != "charts/SPS" and not tag.startswith("hparams/")
    }


def only_run_dir(root: Path) -> Path:
    """The one run directory Hydra made under `root`/outputs/runs."""
    runs = sorted((root / "outputs" / "runs").iterdir())
    assert len(runs) == 1, f"expected one run directory, found {runs}"
    return runs[0]


@pytest.fixture(scope="session")
def pgrun_exe() -> Path:
    """The installed console script; the CLI tests need it."""
    if not PGRUN.exists():
        pytest.fail(f"the pgrun console script is not installed next to {sys.executable}")
    return PGRUN


def custom_scalars_layout(run_dir: Path):
    """The Custom Scalars layout (a layout_pb2.Layout) of the run's one event file."""
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    acc = load_events(run_dir)
    (event,) = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout()
    layout.ParseFromString(event.tensor_proto.string_val[0])
    return layout
