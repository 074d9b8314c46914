"""Sweeps: Hydra's joblib and submitit_local launchers, a sweep with a failing job, the Optuna
search preset with its sqlite storage, and the experiment and launcher presets."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import describe, finish, read_scalars, run_pgrun, start_pgrun
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import pgrun.config  # noqa: F401  (registers the schema in Hydra's ConfigStore)

TINY = "total_steps=2000"


def summary(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def writer_pid(run_dir: Path) -> int:
    """The process that wrote the run's events: events.out.tfevents.<time>.<host>.<pid>.<n>."""
    (events,) = run_dir.glob("events.out.tfevents.*")
    return int(events.name.split(".")[-2])


def test_submitit_local_runs_the_job_in_another_process(tmp_path: Path):
    sweep = tmp_path / "sweep"
    process = start_pgrun(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "variant=rtg",
            "seed=0",
            TINY,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    proc = finish(process)
    assert proc.returncode == 0, describe(proc)
    job = sweep / f"variant=rtg,{TINY},seed=0"  # nothing varies: named by every override
    assert "hparams/final_return" in read_scalars(job), describe(proc)
    # The pid in the event file name is the training process: submitit's, not pgrun itself.
    assert writer_pid(job) != process.pid
    assert (sweep / ".submitit").is_dir()
    (row,) = summary(sweep)
    assert (row["group"], row["seeds"], row["failed"]) == (f"{TINY},variant=rtg", "1", "0")
    assert (sweep / "comparison.png").is_file()


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_failing_job_is_reported_and_the_others_kept(tmp_path: Path, launcher: str):
    """A job that fails as it starts (its weights plug-in does not import; a value out of range
    is refused before the sweep launches) fails on its own: the sweep goes on, the comparison
    is written and names it, and pgrun exits with status 1. joblib runs the jobs in its worker
    processes."""
    sweep = tmp_path / "sweep"
    process = start_pgrun(
        [
            "-m",
            f"hydra/launcher={launcher}",
            "variant.weights=rtg,no_such_module:weights",
            "seed=0",
            TINY,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    proc = finish(process)
    bad = sweep / "variant.weights=no_such_module-weights"  # named by what varies
    good = sweep / "variant.weights=rtg"
    assert proc.returncode == 1, describe(proc)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pgrun: error: 1 of 2 jobs failed ({bad.name}): see "), describe(proc)
    assert last.endswith("pgrun resume=sweep --rerun-failed runs it again"), describe(proc)
    assert (writer_pid(good) == process.pid) == (launcher == "basic"), describe(proc)
    assert "hparams/final_return" in read_scalars(good)
    failure = "variant.weights=no_such_module:weights: cannot import no_such_module"
    assert (bad / "failed.txt").read_text().startswith(failure)
    rows = {row["group"]: row for row in summary(sweep)}
    (bad_group,) = (g for g in rows if "no_such_module" in g)
    assert rows["variant.weights=rtg"]["seeds"] == "1"
    assert float(rows["variant.weights=rtg"]["final_return_mean"]) > 0
    assert (rows[bad_group]["seeds"], rows[bad_group]["failed"]) == ("0", "1")
    assert rows[bad_group]["failed_jobs"] == bad.name
    assert (rows[bad_group]["not_finished"], rows[bad_group]["ended_from_outside"]) == ("0", "0")
    table = [line for line in proc.stdout.splitlines() if line.startswith("  CartPole-v1  ")]
    assert sorted(line.rsplit("  ", 1)[1] for line in table) == ["(n=0, 1 failed)", "(n=1)"]
    md = (sweep / "summary.md").read_text()
    assert f"## Failed jobs (1)\n\n- `{bad.name}`: {failure}" in md
    assert (sweep / "comparison.png").is_file()
    assert (sweep / "aggregate" / "variant.weights=rtg").is_dir()


def test_a_sweep_of_an_id_without_an_env_file_shows_what_was_typed(tmp_path: Path):
    """env.id=<an id without an env file> drops the default env file's solved_return and
    random_return with two overrides pgrun adds: the launcher's job lines and the comparison's
    labels show what the user typed, not them."""
    proc = run_pgrun(["-m", "env.id=CartPole-v0", "seed=0,1", TINY], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert "#0 : env.id=CartPole-v0 seed=0 total_steps=2000\n" in proc.stdout, describe(proc)
    assert "=null" not in proc.stdout, describe(proc)
    (row,) = summary(next((tmp_path / "outputs" / "multirun").iterdir()))
    assert row["group"] == "env.id=CartPole-v0,total_steps=2000", row
    assert "env.solved_return=null" in row["overrides"], row  # what the jobs ran with


def test_a_sweeping_experiment_run_without_m_says_it_runs_one_job(tmp_path: Path):
    """experiment=compare_variants sweeps variant and seed; without -m Hydra runs one job of
    its defaults, and pgrun says so (it did not), once; a plain run says nothing of it."""
    proc = run_pgrun(["experiment=compare_variants", "total_steps=300"], cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    warning = (
        "pgrun: warning: the config sweeps variant, seed (hydra.sweeper.params) but this is "
        "one run: add -m to run the sweep"
    )
    assert (proc.stdout + proc.stderr).count(warning) == 1, describe(proc)
    plain = run_pgrun(["total_steps=300"], cwd=tmp_path)
    assert plain.returncode == 0 and "hydra.sweeper.params" not in plain.stdout + plain.stderr


def test_a_swept_key_given_twice_takes_the_last_and_says_so(tmp_path: Path):
    """`pgrun -m seed=0,1 seed=2`: Hydra takes the last value of a key; where one of the two
    is swept, the sweep would run fewer jobs than typed without a word: one warning line names
    both, and the last holds (as `make sweep ARGS="seed=0,1,2,3,4"` relies on)."""
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", "seed=2", TINY, f"hydra.sweep.dir={sweep}"]
    proc = run_pgrun(args, cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr.startswith(
        "pgrun: warning: seed is given twice: seed=2 replaces seed=0,1 (a sweep takes all its "
        "values in one list)\n"
    ), describe(proc)
    assert sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir()) == ["seed=2"]
    proc = run_pgrun(["-m", "variant=rtg", "variant=vanilla", "seed=0", TINY], cwd=tmp_path)
    assert proc.returncode == 0 and "given twice" not in proc.stderr, describe(proc)


def test_a_single_run_with_a_bad_value_still_fails_at_once(tmp_path: Path):
    proc = run_pgrun(["optim.lr=-1"], cwd=tmp_path)
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.strip().splitlines() == [
        "pgrun: error: optim.lr=-1.0 is out of range: use a value > 0"
    ], describe(proc)
    assert not list(tmp_path.glob("outputs/runs/*")), "the failed run left its directory"


def test_optuna_search_keeps_its_study_in_sqlite(tmp_path: Path):
    optuna = pytest.importorskip("optuna")
    sweep = tmp_path / "sweep"
    proc = run_pgrun(
        [
            "-m",
            "hparams_search=lr_batch",
            "hydra.sweeper.n_trials=2",
            "total_steps=1000",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, describe(proc)
    study = optuna.load_study(
        study_name="pgrun_rtg_baseline_CartPole-v1", storage=f"sqlite:///{sweep}/optuna.db"
    )
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    for trial in trials:
        lr, n = trial.params["optim.lr"], trial.params["batch_episodes"]
        assert 0.001 <= lr <= 0.1 and n in (4, 8, 16, 32)
        # named by what varies: the two tuned keys (total_steps=1000 is the same for all)
        (job,) = [
            p
            for p in sweep.iterdir()
            if set(p.name.split(",")) == {f"optim.lr={lr}", f"batch_episodes={n}"}
        ]
        final = read_scalars(job)["hparams/final_return"][-1][1]
        assert trial.value == pytest.approx(final)  # the objective is the run's final return
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(t.value for t in trials))
    assert len(summary(sweep)) == 2 and (sweep / "comparison.png").is_file()


def composed(*overrides: str):
    with initialize_config_module(config_module="pgrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_compare_variants_is_four_variants_by_five_seeds_on_cartpole():
    cfg = composed("experiment=compare_variants")
    params = cfg.hydra.sweeper.params
    assert params.variant.split(",") == ["vanilla", "rtg", "rtg_baseline", "off_policy"]
    assert params.seed.split(",") == ["0", "1", "2", "3", "4"]
    assert cfg.env.id == "CartPole-v1"
    assert cfg.env.solved_return == 475
    assert cfg.total_steps == 40_000
    assert "compare" in cfg.hydra.callbacks


def test_slurm_preset_extends_the_plugin():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = composed("hydra/launcher=slurm").hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.cpus_per_task, launcher.mem_gb, launcher.timeout_min) == (1, 4, 60)
    assert launcher.partition is None  # the user names theirs


def test_job_directories_from_pgruns_naming_are_what_omegaconf_resolves(tmp_path, monkeypatch):
    """expected_jobs reads a sweep named by configs/config.yaml's hydra.sweep.subdir through
    pgrun's job_subdir directly: the same directories as OmegaConf resolving the interpolation."""
    from pgrun import sweep
    from pgrun.config import JOB_SUBDIR

    cfg = composed("experiment=compare_variants", "total_steps=500")
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"] == JOB_SUBDIR
    cfg.hydra.overrides.task = ["experiment=compare_variants", "total_steps=500"]
    OmegaConf.save(cfg, tmp_path / sweep.MULTIRUN_FILE)
    direct = sweep.expected_jobs(tmp_path)
    monkeypatch.setattr(sweep, "JOB_SUBDIR", "not this one")  # resolved by OmegaConf instead
    resolved = sweep.expected_jobs(tmp_path)
    assert [(j.num, j.overrides, j.path) for j in direct] == [
        (j.num, j.overrides, j.path) for j in resolved
    ]
    # no constant keys left out here: the callback adds those when a multirun starts
    name = "variant=vanilla,experiment=compare_variants,total_steps=500,seed=0"
    assert len(direct) == 20 and direct[0].path == tmp_path / name


def test_a_job_name_too_long_for_a_file_keeps_its_start_and_a_digest():
    """A sweep over long values (a 90-layer policy.hidden_sizes) names its jobs within the file
    system's 255 bytes: the start of the name and a digest of the whole, the same every time
    (a resume finds the job), different for jobs that differ only past the cut. Names that
    fit are as before."""
    from pgrun.config import FILE_NAME_MAX, job_subdir

    sizes = ",".join(["16"] * 90)
    names = [job_subdir([f"policy.hidden_sizes=[{sizes}]", f"seed={s}"], [], 0) for s in (0, 1)]
    assert all(len(n.encode()) == FILE_NAME_MAX for n in names)
    assert names[0] != names[1] and names[0][:200] == names[1][:200]
    assert names[0].startswith("policy.hidden_sizes=-16,16,")
    assert job_subdir([f"policy.hidden_sizes=[{sizes}]", "seed=0"], [], 0) == names[0]
    assert job_subdir(["variant=rtg", "seed=3"], [], 0) == "variant=rtg,seed=3"
