"""pgrun-play: a saved run's policy, reloaded (observation statistics included), plays the run's
evaluation episodes and gets the run's last evaluation return; it records a video on request."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import describe, event_file
from conftest import pgrun_env as child_env

import pgrun
from pgrun.play import play

# The console scripts installed next to the interpreter running the tests.
BIN = Path(sys.executable).parent


PLAY = BIN / "pgrun-play"
EPISODES = 3


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    import pgrun.config  # noqa: F401 (registers the schema the configs extend)

    with initialize_config_module("pgrun.configs", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short Pendulum run with observation normalisation, evaluated every 2 iterations:
    (its run directory, its last eval/episodic_return)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path_factory.mktemp("play") / "run"
    cfg = compose(
        "env=Pendulum-v1",
        "env.normalize_obs=true",
        "env.horizon=40",
        "batch_episodes=4",
        "total_steps=480",
        "eval.every=2",
        f"eval.episodes={EPISODES}",
        "progress=false",
    )
    pgrun.train(cfg, run_dir)
    acc = EventAccumulator(str(event_file(run_dir)), size_guidance={"scalars": 0})
    acc.Reload()
    return run_dir, acc.Scalars("eval/episodic_return")[-1].value


def mean_return(stdout: str) -> float:
    match = re.search(r"mean return (-?[\d.]+) \+- ", stdout)
    assert match, stdout
    return float(match.group(1))


def test_the_saved_policy_carries_its_observation_statistics(trained):
    run_dir, _ = trained
    state = torch.load(run_dir / "policy.pt", weights_only=True)["state_dict"]
    assert state["encoder.norm.count"].item() > 0
    assert not torch.equal(state["encoder.norm.mean"], torch.zeros(3, dtype=torch.float64))


def test_pgrun_play_replays_the_evaluation_and_records_a_video(trained, tmp_path):
    run_dir, last_eval = trained
    video = tmp_path / "play.mp4"
    proc = subprocess.run(
        [str(PLAY), str(run_dir), "-n", str(EPISODES), "--video", str(video)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, describe(proc)
    lines = proc.stdout.splitlines()
    episodes = [line for line in lines if line.startswith("episode ")]
    assert len(episodes) == EPISODES
    # The same starts and the deterministic action: the run's last evaluation, reproduced.
    assert mean_return(proc.stdout) == pytest.approx(last_eval, abs=0.01)
    assert video.stat().st_size > 0
    import av

    with av.open(str(video)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    length = int(re.search(r"length (\d+)", episodes[0]).group(1))
    assert frames == length + 1  # the start and one frame per step of episode 0


def test_play_is_repeatable_and_sampling_differs(trained, capsys):
    run_dir, _ = trained
    outputs = []
    for args in (["--seed", "5"], ["--seed", "5"], ["--seed", "5", "--sample"]):
        returns = play([str(run_dir), "-n", "2", *args])
        outputs.append(returns)
        assert len(returns) == 2
    assert outputs[0] == outputs[1]
    assert outputs[2] != outputs[0]
    assert "sampled actions" in capsys.readouterr().out


def test_the_policy_file_itself_plays_as_its_run(trained):
    """RUN_DIR/policy.pt given for RUN_DIR: the same episodes (it was refused as having no
    policy.pt)."""
    run_dir, _ = trained
    args = ["-n", "2", "--seed", "5"]
    assert play([str(run_dir / "policy.pt"), *args]) == play([str(run_dir), *args])


def test_a_directory_that_does_not_exist_is_named_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        play([str(tmp_path / "nope")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pgrun-play: error: {tmp_path / 'nope'} does not exist: give a run's directory"


def test_a_run_without_a_policy_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        play([str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"pgrun-play: error: {tmp_path} has no policy.pt (a run writes it when it finishes)"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-n", "0"], "--episodes=0: use an integer >= 1"),
        (["--seed", "-1"], "--seed=-1: use an integer >= 0"),
        (["--horizon", "0"], "--horizon=0: use an integer >= 1, or leave it out for the run's"),
    ],
)
def test_bad_options_are_one_line(trained, capsys, args, says):
    run_dir, _ = trained
    with pytest.raises(SystemExit) as info:
        play([str(run_dir), *args])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == f"pgrun-play: error: {says}"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "another network", "not pgrun's"])
def test_a_damaged_policy_file_is_a_one_line_error(trained, tmp_path, capsys, damage):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    path = run_dir / "policy.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:4096])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a policy\n" * 100)
    elif damage == "another network":
        saved = torch.load(path, weights_only=True)
        saved["state_dict"] = {"w": torch.zeros(3)}
        torch.save(saved, path)
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(SystemExit) as info:
        play([str(run_dir)])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pgrun-play: error: {path} "), lines
    expected = "does not fit" if damage == "another network" else "not a readable pgrun policy"
    assert expected in lines[0], lines


def test_a_video_without_its_extra_is_told_before_anything_plays(
    trained, tmp_path, capsys, monkeypatch
):
    from pgrun import evaluation
    from pgrun.config import UserError

    def missing():
        raise UserError("videos need PyAV and pygame: pip install -e '.[video]'")

    monkeypatch.setattr(evaluation, "_import_av", missing)
    run_dir, _ = trained
    with pytest.raises(UserError, match=r"pip install -e '\.\[video\]'"):
        play([str(run_dir), "-n", "1", "--video", str(tmp_path / "play.mp4")])
    assert "episode 0" not in capsys.readouterr().out
