"""Every env family through the real `pgrun` command, the one-line errors for missing extras and
unknown envs, vectorisation modes, and evaluation with videos.

The command-line runs are started together once per module (they overlap on the cores) and each
test reads back what it needs from its run directory. A family whose optional dependency is not
installed is skipped, with the extra to install as the reason.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import describe, event_file
from conftest import pgrun_env as child_env

import pgrun
from pgrun import envs as pgrun_envs
from pgrun.envs import EnvError, env_spec, make_env
from pgrun.policies import PolicyError
from pgrun.rollout import collect_episodes

# The console scripts installed next to the interpreter running the tests.
BIN = Path(sys.executable).parent


def missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


NEEDS = {
    "box2d": pytest.mark.skipif(
        missing("Box2D"), reason="Box2D missing: pip install -e '.[box2d]'"
    ),
    "mujoco": pytest.mark.skipif(
        missing("mujoco"), reason="MuJoCo missing: pip install -e '.[mujoco]'"
    ),
    "atari": pytest.mark.skipif(
        missing("ale_py") or missing("cv2"), reason="ale-py missing: pip install -e '.[atari]'"
    ),
    "video": pytest.mark.skipif(
        missing("av") or missing("pygame"), reason="PyAV missing: pip install -e '.[video]'"
    ),
}
EXTRA_OF = {"box2d": "Box2D", "mujoco": "mujoco", "atari": "ale_py", "video": "av"}

TINY = ["seed=0", "progress=false", "diagnostics.every=1"]

# A user's own env, in a module of its own: registered on import, with a constructor kwarg.
CUSTOM_MODULE = '''
import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    """Walk `length` steps; reward 1 for action 1."""

    def __init__(self, length=3):
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full(1, self.t / self.length, np.float32)
        return obs, float(action), self.t >= self.length, False, {}


class DictObs(Corridor):
    def __init__(self):
        super().__init__()
        self.observation_space = gym.spaces.Dict({"pos": gym.spaces.Box(0.0, 1.0, (1,))})

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        return {"pos": obs}, info

    def step(self, action):
        obs, *rest = super().step(action)
        return {"pos": obs}, *rest


gym.register("Corridor-v0", entry_point="my_corridor:Corridor")
gym.register("DictCorridor-v0", entry_point="my_corridor:DictObs", max_episode_steps=5)
'''

# name -> (extra or None, pgrun arguments)
RUNS = {
    "classic": (
        "video",
        [
            "env=CartPole-v1",
            "total_steps=300",
            "env.horizon=60",
            "batch_episodes=4",
            "eval.every=2",
            "eval.episodes=1",
            "eval.video=true",
        ],
    ),
    "box2d": (
        "box2d",
        [
            "env=LunarLander-v3",
            "+env.kwargs.continuous=true",
            "policy.squash=true",
            "total_steps=120",
            "env.horizon=30",
            "batch_episodes=2",
        ],
    ),
    "mujoco": (
        "mujoco",
        [
            "env=InvertedPendulum-v5",
            "total_steps=60",
            "env.horizon=30",
            "batch_episodes=2",
            "eval.every=1",
            "eval.episodes=1",
            "eval.video=true",
        ],
    ),
    "atari": (
        "atari",
        ["env=ALE/Pong-v5", "policy=cnn", "total_steps=24", "env.horizon=12", "batch_episodes=2"],
    ),
    "custom": (
        None,
        [
            "env.id=my_corridor:Corridor-v0",
            "+env.kwargs.length=4",
            "env.solved_return=null",
            "total_steps=24",
            "batch_episodes=2",
        ],
    ),
    # Box2D looks missing: a module of that name that fails to import comes first on the path.
    "no-box2d": (None, ["env=LunarLander-v3", "total_steps=10"]),
}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Start every run whose extra is installed; name -> (its scratch dir, its process)."""
    base = tmp_path_factory.mktemp("families")
    modules = base / "modules"
    modules.mkdir()
    (modules / "my_corridor.py").write_text(CUSTOM_MODULE)
    blocker = base / "blocker"
    blocker.mkdir()
    (blocker / "Box2D.py").write_text("raise ImportError('Box2D is blocked for this test')\n")
    procs = {}
    for name, (extra, args) in RUNS.items():
        if extra is not None and missing(EXTRA_OF[extra]):
            continue
        cwd = base / name
        cwd.mkdir()
        path = {"custom": modules, "no-box2d": blocker}.get(name)
        env = child_env({"PYTHONPATH": str(path)} if path else None)
        procs[name] = (
            cwd,
            subprocess.Popen(
                [str(BIN / "pgrun"), *TINY, *args],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    done: dict[str, tuple[Path, subprocess.CompletedProcess[str]]] = {}
    try:
        for name, (cwd, proc) in procs.items():
            out, err = proc.communicate(timeout=300)
            done[name] = (cwd, subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def run_dir_of(launched, name: str) -> Path:
    cwd, proc = launched[name]
    assert proc.returncode == 0, describe(proc)
    runs = sorted((cwd / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_file(run_dir)), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def check_training_logged(run_dir: Path, budget: int) -> dict:
    """Every iteration logged its charts at increasing env steps up to >= budget, finite values,
    and the run saved its policy."""
    acc = events(run_dir)
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "charts/episodic_return",
        "charts/episodic_length",
        "losses/policy",
        "stats/entropy",
    ):
        assert tag in tags, (tag, sorted(tags))
    steps = [s for s, _ in scalars(acc, "charts/episodic_return")]
    assert steps == sorted(steps) and len(steps) >= 1 and steps[-1] >= budget
    for tag in ("charts/episodic_return", "losses/policy", "stats/grad_norm"):
        assert all(np.isfinite(v) for _, v in scalars(acc, tag)), tag
    assert (run_dir / "policy.pt").stat().st_size > 0
    return {"acc": acc, "steps": steps}


@NEEDS["video"]
def test_classic_control_trains_evaluates_and_records(launched):
    run_dir = run_dir_of(launched, "classic")
    got = check_training_logged(run_dir, 300)
    acc, steps = got["acc"], got["steps"]
    # Evaluated after iterations 2, 4, ... and after the last one, at those env steps.
    expected = [s for i, s in enumerate(steps, 1) if i % 2 == 0 or i == len(steps)]
    assert [s for s, _ in scalars(acc, "eval/episodic_return")] == expected
    lengths = scalars(acc, "eval/episodic_length")
    assert all(1 <= v <= 60 for _, v in lengths)
    check_videos(run_dir, acc, expected, [v for _, v in lengths])


@NEEDS["box2d"]
def test_box2d_continuous_lander_with_squashed_actions(launched):
    run_dir = run_dir_of(launched, "box2d")
    check_training_logged(run_dir, 120)
    saved = torch.load(run_dir / "policy.pt", weights_only=True)
    assert saved["config"]["env"]["kwargs"] == {"continuous": True}
    assert saved["config"]["policy"]["squash"] is True
    assert saved["state_dict"]["log_std"].shape == (2,)  # two engines: a Box action


@NEEDS["mujoco"]
@NEEDS["video"]
def test_mujoco_trains_evaluates_and_records(launched):
    run_dir = run_dir_of(launched, "mujoco")
    got = check_training_logged(run_dir, 60)
    acc, steps = got["acc"], got["steps"]
    assert [s for s, _ in scalars(acc, "eval/episodic_return")] == steps  # every iteration
    lengths = [v for _, v in scalars(acc, "eval/episodic_length")]
    check_videos(run_dir, acc, steps, lengths)


@NEEDS["mujoco"]
def test_mujoco_warnings_go_to_the_log_once_and_to_no_file(tmp_path, monkeypatch, caplog, capfd):
    import mujoco

    from pgrun import envs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(envs, "_mujoco_seen", set())
    caplog.set_level(logging.DEBUG, logger="pgrun.envs")
    make_env("HalfCheetah-v5", num_envs=3, seed=0).close()  # its model's deprecated attribute
    xml = '<mujoco><worldbody><body><joint type="slide"/><geom size=".1"/></body></worldbody></mujoco>'
    model = mujoco.MjModel.from_xml_string(xml)
    for _ in range(2):  # two unstable simulations: the same message
        data = mujoco.MjData(model)
        data.qfrc_applied[:] = 1e30
        mujoco.mj_step(model, data)
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert "WARNING" not in capfd.readouterr().err  # MuJoCo's own handler prints there
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pgrun.envs"]
    deprecated = [m for lvl, m in got if "settotalmass" in m]
    assert len(deprecated) == 1 and deprecated[0].startswith("MuJoCo: ")  # once, not per copy
    assert [lvl for lvl, m in got if "settotalmass" in m] == [logging.DEBUG]
    unstable = [(lvl, m) for lvl, m in got if "simulation is unstable" in m]
    assert [lvl for lvl, _ in unstable] == [logging.WARNING]


@NEEDS["atari"]
def test_atari_with_the_cnn(launched):
    run_dir = run_dir_of(launched, "atari")
    check_training_logged(run_dir, 24)
    state = torch.load(run_dir / "policy.pt", weights_only=True)["state_dict"]
    assert state["encoder.cnn.convs.0.weight"].shape == (32, 4, 8, 8)  # 4 stacked frames
    assert state["net.0.weight"].shape == (6, 512)  # Pong's 6 actions


def test_custom_env_from_a_module_with_kwargs(launched):
    run_dir = run_dir_of(launched, "custom")
    acc = check_training_logged(run_dir, 24)["acc"]
    # The corridor's length came from env.kwargs: every episode is exactly 4 steps.
    assert [v for _, v in scalars(acc, "charts/episodic_length")] == [4.0] * 3


def test_unsupported_observation_space_is_one_line_naming_the_env(tmp_path, monkeypatch):
    (tmp_path / "my_corridor.py").write_text(CUSTOM_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make_env("my_corridor:DictCorridor-v0", num_envs=2, seed=0)
    with pytest.raises(PolicyError) as info:
        pgrun.make_policy(env)
    env.close()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("DictCorridor-v0: observation space Dict")
    assert "is not supported" in message


def test_a_missing_extra_is_one_line_naming_it(launched):
    _, proc = launched["no-box2d"]
    assert proc.returncode == 2, describe(proc)
    assert (
        proc.stderr.strip() == "pgrun: error: LunarLander-v3 needs Box2D: pip install -e '.[box2d]'"
    )


def check_videos(run_dir: Path, acc, steps: list[int], lengths: list[float]) -> None:
    """One mp4 per evaluation, non-empty, holding the evaluated episode (length + 1 frames),
    and one animated image per evaluation in TensorBoard."""
    import av

    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == [f"eval_{s:09d}.mp4" for s in steps]
    for video, length in zip(videos, lengths, strict=True):
        assert video.stat().st_size > 0
        with av.open(str(video)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == int(length) + 1
        assert frames[0].std() > 0  # something is drawn
    images = acc.Images("eval/video")
    assert [im.step for im in images] == steps
    for im in images:
        assert im.encoded_image_string[:6] in (b"GIF87a", b"GIF89a")
        assert len(im.encoded_image_string) > 100 and im.width > 0 and im.height > 0


# In-process: errors, vectorisation, evaluation.


@pytest.mark.parametrize(
    ("env_id", "module", "message"),
    [
        ("LunarLander-v3", "Box2D", "LunarLander-v3 needs Box2D: pip install -e '.[box2d]'"),
        ("BipedalWalker-v3", "Box2D", "BipedalWalker-v3 needs Box2D: pip install -e '.[box2d]'"),
        ("HalfCheetah-v5", "mujoco", "HalfCheetah-v5 needs MuJoCo: pip install -e '.[mujoco]'"),
        ("Humanoid-v5", "mujoco", "Humanoid-v5 needs MuJoCo: pip install -e '.[mujoco]'"),
        ("ALE/Pong-v5", "ale_py", "ALE/Pong-v5 needs ale-py (Atari): pip install -e '.[atari]'"),
    ],
)
def test_missing_dependency_names_the_extra(monkeypatch, env_id, module, message):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    with pytest.raises(EnvError) as info:
        env_spec(env_id)
    assert str(info.value) == message


@pytest.mark.skipif(missing("ale_py"), reason="ale-py missing: pip install -e '.[atari]'")
def test_atari_preprocessing_without_opencv_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(EnvError) as info:
        make_env("ALE/Pong-v5", num_envs=1, atari_preprocessing=True)
    assert str(info.value) == "env.atari_preprocessing needs OpenCV: pip install -e '.[atari]'"


def test_unknown_ids_and_modules_are_one_line_errors():
    with pytest.raises(EnvError, match="not a registered gymnasium environment"):
        env_spec("NoSuchEnv-v0")
    with pytest.raises(EnvError, match="cannot import 'no_such_module_xyz'"):
        env_spec("no_such_module_xyz:Thing-v0")


def test_module_colon_class_registers_the_class(tmp_path, monkeypatch):
    (tmp_path / "my_class_env.py").write_text(
        textwrap.dedent(CUSTOM_MODULE).replace("gym.register", "# ")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = env_spec("my_class_env:Corridor")
    assert spec.id == "my_class_env.Corridor"
    env = make_env("my_class_env:Corridor", num_envs=2, seed=0, horizon=10, length=2)
    policy = pgrun.make_policy(env)
    batch = collect_episodes(env, policy, seed=0)
    env.close()
    assert batch.lengths.tolist() == [2, 2]


@pytest.mark.parametrize(
    ("found", "user", "expected"),
    [
        ({"EGL": "libEGL.so.1"}, None, "egl"),
        ({"OSMesa": "libOSMesa.so"}, None, "osmesa"),
        ({}, None, None),
        ({"EGL": "libEGL.so.1"}, "glfw", "glfw"),
    ],
)
def test_headless_mujoco_backend(monkeypatch, found, user, expected):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: found.get(name))
    if user is None:
        monkeypatch.delenv("MUJOCO_GL", raising=False)
    else:
        monkeypatch.setenv("MUJOCO_GL", user)
    pgrun_envs._headless_gl()
    assert os.environ.get("MUJOCO_GL") == expected


def test_auto_vectorization_picks_the_envs_own_class_else_sync():
    cartpole = make_env("CartPole-v1", num_envs=2)
    pendulum = make_env("Pendulum-v1", num_envs=2)
    assert type(cartpole).__name__ == "CartPoleVectorEnv"
    assert isinstance(pendulum, gym.vector.SyncVectorEnv)
    cartpole.close()
    pendulum.close()
    with pytest.raises(EnvError, match="has no vectorised class"):
        make_env("Pendulum-v1", num_envs=2, vectorization="vector_entry_point")


def batch_with(env_id: str, vectorization: str, iterations: int = 2) -> list:
    """Batches of a fixed policy, seeded as the trainer seeds them."""
    env = make_env(env_id, num_envs=3, seed=0, vectorization=vectorization)
    torch.manual_seed(0)
    policy = pgrun.make_policy(env, hidden_sizes=[8])
    out = []
    for i in range(iterations):
        torch.manual_seed(100 + i)
        out.append(collect_episodes(env, policy, horizon=200, seed=10 + i))
    env.close()
    return out


def assert_same_batches(a: list, b: list) -> None:
    for x, y in zip(a, b, strict=True):
        for field in x.__dataclass_fields__:
            assert torch.equal(getattr(x, field), getattr(y, field)), field


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_sync_and_async_give_the_same_batches(env_id):
    assert_same_batches(batch_with(env_id, "sync"), batch_with(env_id, "async"))


def test_vector_entry_point_repeats_itself_but_lays_out_its_rng_differently():
    """gymnasium's CartPoleVectorEnv draws every copy's start from one generator, where sync and
    async seed copy i with seed + i: the same seed gives the same batches within the mode, other
    batches than sync (documented in the README)."""
    vec = batch_with("CartPole-v1", "vector_entry_point")
    assert_same_batches(vec, batch_with("CartPole-v1", "vector_entry_point"))
    assert not torch.equal(vec[0].obs[:, 0], batch_with("CartPole-v1", "sync")[0].obs[:, 0])


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    import pgrun.config  # noqa: F401 (registers the schema the configs extend)

    with initialize_config_module("pgrun.configs", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def test_evaluation_does_not_change_training(tmp_path):
    """Evaluation uses its own env copies and no torch randomness: the training curve of a run
    with evaluation is the curve of the same run without it."""
    base = ["env=CartPole-v1", "total_steps=600", "batch_episodes=4", "progress=false"]
    with_eval = pgrun.train(compose(*base, "eval.every=1", "eval.episodes=3"), tmp_path / "a")
    without = pgrun.train(compose(*base), tmp_path / "b")
    assert with_eval["final_return"] == without["final_return"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = []
    for name in ("a", "b"):
        acc = EventAccumulator(str(event_file(tmp_path / name)), size_guidance={"scalars": 0})
        acc.Reload()
        curves.append([(e.step, e.value) for e in acc.Scalars("charts/episodic_return")])
        if name == "a":
            assert len(acc.Scalars("eval/episodic_return")) == len(curves[0])
    assert curves[0] == curves[1]


def test_scaled_rewards_train_and_log_unscaled_returns(tmp_path):
    """With env.scale_rewards the logged returns are still the env's: CartPole pays 1 a step."""
    cfg = compose(
        "env=CartPole-v1", "total_steps=300", "batch_episodes=4", "env.scale_rewards=true"
    )
    pgrun.train(cfg, tmp_path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_file(tmp_path)), size_guidance={"scalars": 0})
    acc.Reload()
    returns = [e.value for e in acc.Scalars("charts/episodic_return")]
    lengths = [e.value for e in acc.Scalars("charts/episodic_length")]
    assert returns == lengths


CONFIGS = Path(pgrun.__file__).resolve().parent.parent / "configs"
ENV_FILES = sorted(
    str(p.relative_to(CONFIGS / "env").with_suffix("")) for p in (CONFIGS / "env").rglob("*.yaml")
)
FAMILY_MODULE = {
    "gymnasium.envs.box2d": "Box2D",
    "gymnasium.envs.mujoco": "mujoco",
    "ale_py": "ale_py",
}


@pytest.mark.parametrize("name", ENV_FILES)
def test_every_env_file_composes_and_builds_its_env_and_policy(name):
    """`env=<name>` composes, its first comment says what the env is and what solved looks
    like, and its env and the policy for its spaces can be made (no training)."""
    text = (CONFIGS / "env" / f"{name}.yaml").read_text().splitlines()
    assert text[0] == "# @package _global_"
    assert text[1].startswith(f"# {name}: ")
    cfg = compose(f"env={name}", *(["policy=cnn"] if name.startswith("ALE/") else []))
    assert cfg.env.id == name
    assert cfg.env.horizon and cfg.total_steps > 0 and 0 < cfg.gamma <= 1 and cfg.optim.lr > 0
    if name.startswith("ALE/"):
        module = "ale_py"
    else:
        module = next(
            (
                m
                for prefix, m in FAMILY_MODULE.items()
                if gym.spec(name).entry_point.startswith(prefix)
            ),
            None,
        )
    if module is not None and missing(module):
        pytest.skip(f"{module} is not installed")
    env = pgrun_envs.env_from_config(cfg, num_envs=1, seed=0)
    policy = pgrun.policies.policy_from_config(env, cfg)
    env.close()
    assert (policy.encoder.norm is not None) == cfg.env.normalize_obs
