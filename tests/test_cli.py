"""End to end: the installed `pgrun` command in a subprocess, run from a scratch directory.

Every subprocess the selected tests need is started once, all together, when the first of them
asks (they overlap, which keeps the wall time down); each test then waits for its own and reads
back its output and run directory.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from conftest import (
    CHART_TAGS,
    RATIO_TAGS,
    describe,
    event_files,
    finish,
    load_events,
    only_run_dir,
    read_scalars,
    start_pgrun,
)

pytestmark = pytest.mark.usefixtures("pgrun_exe")

VARIANTS = ["vanilla", "rtg", "rtg_baseline", "off_policy"]
N = 16  # batch_episodes of the CartPole-v1 env file
BUDGET = 3000  # total_steps of the short runs


class Launch:
    """A pgrun process started in its own scratch directory; `result()` waits for it once."""

    def __init__(self, root: Path, args: list[str], env: dict[str, str] | None = None):
        root.mkdir(parents=True)
        self.root = root
        self.proc = start_pgrun(args, root, env)
        self._done: subprocess.CompletedProcess[str] | None = None

    def result(self) -> subprocess.CompletedProcess[str]:
        if self._done is None:
            self._done = finish(self.proc, timeout=300)
        return self._done

    def ok(self) -> subprocess.CompletedProcess[str]:
        done = self.result()
        assert done.returncode == 0, describe(done)
        return done

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def short_run(variant: str) -> list[str]:
    return [f"variant={variant}", "env=CartPole-v1", "seed=0", f"total_steps={BUDGET}"]


SWEEP = [
    "-m",
    "variant=vanilla,rtg",
    "seed=0,1",
    f"total_steps={BUDGET}",
    # keep the budget out of the job directory names
    "hydra.job.config.override_dirname.exclude_keys=[total_steps]",
]
PENDULUM = ["env=Pendulum-v1", "batch_episodes=4", "total_steps=2400", "hydra.run.dir=pendulum_run"]

# Out-of-range values: one `pgrun: error:` line naming the key (or the env).
OUT_OF_RANGE = {
    "batch_episodes=0": "batch_episodes",
    "variant.inner_steps=0": "variant.inner_steps",
    "gamma=1.5": "gamma",
    "optim.lr=0": "optim.lr",
    "total_steps=0": "total_steps",
    "env.id=NoSuchEnv-v0": "env.id",
    "variant.weights=bogus": "variant.weights",
}
# Unknown keys and values of the wrong type: refused while Hydra composes the config, reported
# in one line that names the key (or the missing preset).
NOT_IN_SCHEMA = {
    "batch_episodes=abc": "batch_episodes",
    "foo=1": "foo",
    "variant=bogus": "bogus",
    "gamma=[1]": "gamma",
}

# Registers, at interpreter start, an env whose constructor reports a missing optional
# dependency, as gymnasium's Box2D and MuJoCo envs do when their extra is not installed.
MISSING_DEPENDENCY_ENV = """
import gymnasium as gym


class NeedsMissingPackage(gym.Env):
    def __init__(self, **kwargs):
        raise gym.error.DependencyNotInstalled("the package this env needs is not installed")


gym.register(id="NeedsMissingPackage-v0", entry_point=NeedsMissingPackage, max_episode_steps=10)
"""


@pytest.fixture(scope="module")
def started(request, tmp_path_factory, pgrun_exe) -> dict[str, Launch]:
    """Start every run that the selected tests ask for (through the fixtures below) at once."""
    wanted = {name for item in request.session.items for name in item.fixturenames}
    base = tmp_path_factory.mktemp("cli")
    launches: dict[str, Launch] = {}
    if "launched" in wanted:
        for variant in VARIANTS:
            launches[variant] = Launch(base / variant, short_run(variant))
    if "sweep" in wanted:
        launches["sweep"] = Launch(base / "sweep", SWEEP)
    if "pendulum" in wanted:
        launches["pendulum"] = Launch(base / "pendulum", PENDULUM)
    if "bad_runs" in wanted:
        for i, override in enumerate([*OUT_OF_RANGE, *NOT_IN_SCHEMA]):
            launches[override] = Launch(base / f"bad{i}", [override])
        plugins = base / "plugins"
        plugins.mkdir()
        (plugins / "sitecustomize.py").write_text(MISSING_DEPENDENCY_ENV)
        launches["missing_dependency"] = Launch(
            base / "missing_dependency",
            ["env.id=NeedsMissingPackage-v0"],
            env={"PYTHONPATH": str(plugins)},
        )
    yield launches
    for launch in launches.values():
        launch.stop()


@pytest.fixture(scope="module")
def launched(started) -> dict[str, Launch]:
    """One short CartPole run per variant."""
    return {variant: started[variant] for variant in VARIANTS}


@pytest.fixture(scope="module")
def sweep(started) -> Launch:
    """`pgrun -m variant=vanilla,rtg seed=0,1`: four jobs."""
    return started["sweep"]


@pytest.fixture(scope="module")
def pendulum(started) -> Launch:
    """A few iterations on a Box-action env."""
    return started["pendulum"]


@pytest.fixture(scope="module")
def bad_runs(started) -> dict[str, Launch]:
    """Runs with bad input, by override."""
    return started


def run_dir_of(launch: Launch) -> Path:
    launch.ok()
    return only_run_dir(launch.root)


def steps_of(series: list[tuple[int, float]]) -> list[int]:
    return [step for step, _ in series]


# --- one run per variant ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_run_dir_holds_hydra_files_log_events_and_checkpoint(launched, variant):
    run = run_dir_of(launched[variant])
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / ".hydra" / "overrides.yaml").is_file()
    assert (run / "pgrun.log").is_file()
    assert len(event_files(run)) == 1
    assert (run / "policy.pt").is_file()
    # TensorBoard writes into the run directory itself: no sub-run directory.
    assert [p.name for p in run.iterdir() if p.is_dir()] == [".hydra"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_run_dir_is_under_the_working_directory_and_named_after_the_run(launched, variant):
    run = run_dir_of(launched[variant])
    assert run.parent == launched[variant].root / "outputs" / "runs"
    assert variant in run.name
    assert "CartPole-v1" in run.name
    assert "seed0" in run.name
    if variant == "rtg":  # "rtg" is also a part of "rtg_baseline": be exact for the short name
        assert "rtg_baseline" not in run.name


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_loads_safely_into_a_fresh_policy(launched, variant):
    import pgrun

    ckpt = torch.load(run_dir_of(launched[variant]) / "policy.pt", weights_only=True)
    assert {"state_dict", "config"} <= set(ckpt)
    config = ckpt["config"]
    assert config["variant"]["name"] == variant
    assert config["env"]["id"] == "CartPole-v1"
    assert config["seed"] == 0
    env = pgrun.make_env("CartPole-v1", num_envs=1)
    policy = pgrun.make_policy(env, hidden_sizes=config["policy"]["hidden_sizes"])
    env.close()
    policy.load_state_dict(ckpt["state_dict"])  # strict: same keys and shapes


@pytest.mark.parametrize("variant", VARIANTS)
def test_logged_tags_and_increasing_steps(launched, variant):
    scalars = read_scalars(run_dir_of(launched[variant]))
    expected = set(CHART_TAGS) | (set(RATIO_TAGS) if variant == "off_policy" else set())
    assert expected <= set(scalars)
    if variant != "off_policy":
        assert not set(RATIO_TAGS) & set(scalars), "K = 1 logs no ratio statistics"
    steps = steps_of(scalars["charts/episodic_return"])
    assert len(steps) >= 2
    assert all(a < b for a, b in pairwise(steps))
    for tag in expected:
        assert steps_of(scalars[tag]) == steps, tag
        assert all(math.isfinite(v) for _, v in scalars[tag]), tag


@pytest.mark.parametrize("variant", VARIANTS)
def test_x_axis_is_cumulative_env_steps(launched, variant):
    scalars = read_scalars(run_dir_of(launched[variant]))
    steps = steps_of(scalars["charts/episodic_length"])
    # Each batch has N episodes of mean length L: N * L env steps. The x-axis is their running sum.
    batch_steps = [round(N * length) for _, length in scalars["charts/episodic_length"]]
    running = 0
    for step, size in zip(steps, batch_steps, strict=True):
        running += size
        assert step == running
    # Training stops at the first batch that reaches the budget.
    assert steps[-1] >= BUDGET > steps[-2]
    # CartPole pays +1 a step: the mean return equals the mean length.
    for (_, ret), (_, length) in zip(
        scalars["charts/episodic_return"], scalars["charts/episodic_length"], strict=True
    ):
        assert ret == pytest.approx(length)


def test_off_policy_ratio_statistics_are_sane(launched):
    scalars = read_scalars(run_dir_of(launched["off_policy"]))
    for (_, mean), (_, high), (_, kl) in zip(
        scalars["stats/ratio_mean"],
        scalars["stats/ratio_max"],
        scalars["stats/approx_kl"],
        strict=True,
    ):
        assert 0 < mean <= high
        assert kl >= 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_text_and_hparams_are_in_the_runs_own_event_file(launched, variant):
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = run_dir_of(launched[variant])
    assert list(run.rglob("events.out.tfevents.*")) == event_files(run)  # no sub-directory
    events = load_events(run)
    text_tags = [tag for tag in events.Tags()["tensors"] if tag.startswith("config")]
    assert text_tags, events.Tags()
    text = events.Tensors(text_tags[0])[0].tensor_proto.string_val[0].decode()
    assert f"name: {variant}" in text
    assert "CartPole-v1" in text

    content = events.PluginTagToContent("hparams")
    start = [tag for tag in content if tag.endswith("session_start_info")]
    assert start, sorted(content)
    info = plugin_data_pb2.HParamsPluginData.FromString(content[start[0]]).session_start_info
    assert info.hparams["variant.name"].string_value == variant
    assert info.hparams["env.id"].string_value == "CartPole-v1"
    assert info.hparams["seed"].number_value == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_closing_line_tells_how_to_view_the_run(launched, variant):
    done = launched[variant].ok()
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, describe(done)
    assert "tensorboard --logdir" in lines[-1]
    run = run_dir_of(launched[variant])
    assert run.name in lines[-1]
    assert "tensorboard --logdir" in (run / "pgrun.log").read_text()  # the log file has it too
    assert "Traceback" not in done.stderr


def test_variants_differ_on_the_same_data(launched):
    # Same seed, same first batch: the first return matches; the first loss does not.
    vanilla = read_scalars(run_dir_of(launched["vanilla"]))
    rtg = read_scalars(run_dir_of(launched["rtg"]))
    assert vanilla["charts/episodic_return"][0] == rtg["charts/episodic_return"][0]
    assert vanilla["losses/policy"][0][1] != rtg["losses/policy"][0][1]


# --- multirun --------------------------------------------------------------------------------------------


def sweep_jobs(sweep: Launch) -> dict[str, Path]:
    sweep.ok()
    sweeps = sorted((sweep.root / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    # A job directory is one Hydra wrote its .hydra/ into (other outputs may sit beside them).
    return {p.name: p for p in sweeps[0].iterdir() if (p / ".hydra").is_dir()}


def test_a_sweep_directory_names_what_the_sweep_holds_constant(sweep):
    """`pgrun -m variant=vanilla,rtg seed=0,1`: the variant varies (the jobs' names say it),
    the env does not: the sweep's directory is <date>_<time>.<ms>_CartPole-v1, so that
    TensorBoard's run names (`<sweep>/variant=rtg,seed=0`) name both."""
    from pgrun.cli import sweep_name

    sweep.ok()
    (made,) = (sweep.root / "outputs" / "multirun").iterdir()
    assert made.name.endswith("_CartPole-v1"), made.name
    assert sweep_name(["-m", "seed=0,1"]) == "rtg_baseline_CartPole-v1"  # the config's defaults
    assert sweep_name(["-m", "variant=rtg", "env.id=ALE/Pong-v5"]) == "rtg_ALE-Pong-v5"
    assert sweep_name(["-m", "variant=vanilla,rtg", "env=Acrobot-v1,CartPole-v1"]) == ""
    assert sweep_name(["-m", "seed=range(3)", "variant='ppo'"]) == "ppo_CartPole-v1"
    # an experiment's file sets its variant and env: only what the command line gives is named
    assert sweep_name(["-m", "experiment=compare_variants"]) == "compare_variants"
    assert sweep_name(["-m", "experiment=compare_variants", "env=Acrobot-v1"]) == (
        "compare_variants_Acrobot-v1"
    )


def test_sweep_makes_one_named_job_dir_per_combination(sweep):
    jobs = sweep_jobs(sweep)
    assert set(jobs) == {
        "variant=vanilla,seed=0",
        "variant=vanilla,seed=1",
        "variant=rtg,seed=0",
        "variant=rtg,seed=1",
    }
    for name, job in jobs.items():
        assert len(event_files(job)) == 1, name
        assert (job / "policy.pt").is_file(), name
        scalars = read_scalars(job)
        assert set(CHART_TAGS) <= set(scalars), name
        assert steps_of(scalars["charts/episodic_return"])[-1] >= BUDGET


@pytest.mark.parametrize("variant", ["vanilla", "rtg"])
def test_same_seed_same_curve(sweep, launched, variant):
    # The sweep job and the single run share variant, seed and budget: identical series, though
    # they ran in different processes.
    job = read_scalars(sweep_jobs(sweep)[f"variant={variant},seed=0"])
    single = read_scalars(run_dir_of(launched[variant]))
    for tag in ("charts/episodic_return", "charts/episodic_length", "losses/policy"):
        assert job[tag] == single[tag], tag


def test_another_seed_another_curve(sweep):
    jobs = sweep_jobs(sweep)
    seed0 = read_scalars(jobs["variant=vanilla,seed=0"])["charts/episodic_return"]
    seed1 = read_scalars(jobs["variant=vanilla,seed=1"])["charts/episodic_return"]
    assert seed0 != seed1


# --- a Box-action env ----------------------------------------------------------------------------------


def test_pendulum_trains_end_to_end(pendulum):
    pendulum.ok()
    run = pendulum.root / "pendulum_run"
    scalars = read_scalars(run)
    # 4 episodes of 200 steps a batch, 2400 steps: three iterations.
    assert steps_of(scalars["charts/episodic_return"]) == [800, 1600, 2400]
    assert [v for _, v in scalars["charts/episodic_length"]] == [200.0] * 3
    assert all(v < 0 and math.isfinite(v) for _, v in scalars["charts/episodic_return"])
    ckpt = torch.load(run / "policy.pt", weights_only=True)
    assert "log_std" in ckpt["state_dict"]
    assert ckpt["config"]["env"]["id"] == "Pendulum-v1"


# --- bad input -------------------------------------------------------------------------------------------


def assert_no_run_dir(root: Path) -> None:
    outputs = root / "outputs"
    left = [p for p in outputs.rglob("*") if p.is_dir() and p.parent.name in ("runs", "multirun")]
    assert not left, f"run directories left behind: {left}"


def assert_one_error_line(done: subprocess.CompletedProcess[str], key: str) -> None:
    assert done.returncode != 0, describe(done)
    assert "Traceback" not in done.stderr + done.stdout, describe(done)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, describe(done)
    assert lines[0].startswith("pgrun: error:"), describe(done)
    assert key in lines[0], describe(done)


@pytest.mark.parametrize("override", OUT_OF_RANGE)
def test_out_of_range_input_is_one_error_line(bad_runs, override):
    launch = bad_runs[override]
    assert_one_error_line(launch.result(), OUT_OF_RANGE[override])
    assert_no_run_dir(launch.root)


def test_an_env_missing_its_dependency_is_one_error_line(bad_runs):
    launch = bad_runs["missing_dependency"]
    assert_one_error_line(launch.result(), "NeedsMissingPackage-v0")
    assert_no_run_dir(launch.root)


@pytest.mark.parametrize("override", NOT_IN_SCHEMA)
def test_unknown_keys_and_wrong_types_fail_without_a_traceback(bad_runs, override):
    launch = bad_runs[override]
    assert_one_error_line(launch.result(), NOT_IN_SCHEMA[override])
    assert_no_run_dir(launch.root)


def test_a_launcher_of_the_sweep_extra_names_its_install():
    """Without the sweep extra, Hydra cannot find hydra/launcher=joblib (or load the config
    that slurm builds on): the one line says which install brings it; another unknown
    launcher gets no such advice."""
    from pgrun.cli import one_line

    missing = (
        "In 'hydra/config': Could not find 'hydra/launcher/joblib'\n\n"
        "Available options in 'hydra/launcher':\n\tbasic\n\tbatched\n"
    )
    line = one_line(missing)
    assert "\n" not in line and "basic, batched" in line
    assert line.endswith(
        "it comes with the sweep extra: pip install -e '.[sweep]' (or make install)"
    )
    slurm = "In 'hydra/launcher/slurm': Could not load 'hydra/launcher/submitit_slurm'\n"
    assert "sweep extra" in one_line(slurm)
    assert "sweep extra" not in one_line(
        "In 'hydra/config': Could not find 'hydra/launcher/nope'\n"
    )


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_while_the_command_imports_is_one_line(tmp_path, sig):
    """SIGINT or SIGTERM while a console script imports its module (torch and Hydra load for
    the first half second): one line naming the command and status 128 + signal, as once it
    runs, not Python's traceback of the import (pgrun.entry). The module here sends the
    signal to its own process while it is imported, so the test does not depend on timing."""
    import signal

    (tmp_path / "stops_while_imported.py").write_text(
        f"import os, signal, time\nos.kill(os.getpid(), signal.{sig})\ntime.sleep(30)\n"
    )
    code = "from pgrun.entry import _start; _start('pgrun-check', 'stops_while_imported')"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    signum = getattr(signal, sig)
    assert done.returncode == 128 + signum, done.stderr
    assert done.stderr.strip().splitlines() == [f"pgrun-check: interrupted ({sig})"]


def test_every_console_script_starts_its_commands_main(monkeypatch):
    """The installed scripts go through pgrun.entry, each to the module whose main it runs."""
    from importlib.metadata import entry_points

    from pgrun import entry

    scripts = {
        e.name: e for e in entry_points(group="console_scripts") if e.module == "pgrun.entry"
    }
    assert set(scripts) == {"pgrun", "pgrun-compare", "pgrun-play", "pgrun-check", "pgrun-variance"}
    started = []
    monkeypatch.setattr(entry, "_start", lambda prog, module: started.append((prog, module)))
    for script in scripts.values():
        script.load()()
    assert sorted(p for p, _ in started) == sorted(scripts)
    for _, module in started:
        assert callable(__import__(module, fromlist=["main"]).main), module


def test_a_console_script_exits_with_its_commands_status(tmp_path):
    """The exit status a command's main returns is the script's (pgrun-compare returns 2 for
    a directory without runs; pgrun.entry passes it on)."""
    exe = Path(sys.executable).parent / "pgrun-compare"
    done = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("pgrun-compare: error: no runs"), done.stderr
