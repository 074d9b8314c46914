"""The value network in the training loop: time limits, the tags it logs, learning-rate
annealing, and a bit-exact resume of a run that has one.

Everything runs `pgrun.train` in this process on tiny problems (a few seconds in all).
"""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import comparable_scalars
from hydra import compose, initialize_config_module

import pgrun.config  # noqa: F401  (registers the schema)
from pgrun import checkpoint
from pgrun.trainer import train
from pgrun.value import ValueNetwork

REWARD, GAMMA, LENGTH = 1.0, 0.9, 10


class ConstantReward(gym.Env):
    """Reward 1 every step, the same observation always. With `terminate_at` the episode
    terminates after that many steps; without, it runs until its time limit cuts it."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, terminate_at: int | None = None):
        self.terminate_at = terminate_at
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.ones(2, np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.terminate_at is not None and self.t >= self.terminate_at
        return np.ones(2, np.float32), REWARD, done, False, {}


gym.register("pgrun-test/Forever-v0", entry_point=ConstantReward, max_episode_steps=LENGTH)
gym.register(
    "pgrun-test/Ends-v0",
    entry_point=ConstantReward,
    kwargs={"terminate_at": LENGTH},
    max_episode_steps=5 * LENGTH,
)


def composed(*overrides: str):
    with initialize_config_module(config_module="pgrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=["progress=false", *overrides])


def fitted_value(env_id: str, truncation: str, tmp_path: Path) -> float:
    """V(s) after 20 batches of value_baseline on the constant-reward env: a linear V, fitted
    hard (25 Adam steps of lr 0.1 per batch) so that it follows its targets closely."""
    cfg = composed(
        f"env.id={env_id}", "env.horizon=null", "env.solved_return=null",
        f"env.truncation={truncation}", "variant=value_baseline", f"gamma={GAMMA}",
        "batch_episodes=2", f"total_steps={20 * 2 * LENGTH}", "value.hidden_sizes=[]",
        "value.lr=0.1", "value.steps=25", "diagnostics.every=0", "checkpoint.every=0",
    )  # fmt: skip
    train(cfg, tmp_path)
    state = checkpoint.load_latest(tmp_path)
    value = ValueNetwork(ConstantReward.observation_space, [], normalize_targets=True)
    value.load_state_dict(state["value"])
    with torch.no_grad():
        return value(torch.ones(1, 2)).item()


# The fixed points. Bootstrapping every cut with gamma V makes V the infinite-horizon value
# r / (1 - gamma) = 10. Without it, a V that cannot see t fits the mean over t = 0..L-1 of the
# L - t steps left: (1/L) sum_{k=1..L} (1 - gamma^k) / (1 - gamma) = 10 - sum_{k=1..L} 0.9^k
# = 10 - 9 (1 - 0.9^10) = 4.138. Each batch the bootstrapped targets move V towards 10 by a
# factor of mean_k gamma^k = 0.586 of the gap, so 20 batches leave ~2e-5 of it: the tolerance
# covers only how far 25 Adam steps of lr 0.1 land from their target (no sampling noise: the
# rewards and observations are constant), and the two fixed points are 5.9 apart.
INFINITE = REWARD / (1 - GAMMA)
FINITE = INFINITE - sum(GAMMA**k for k in range(1, LENGTH + 1)) * REWARD
TOL = 0.3


def test_truncated_episodes_bootstrap_to_the_infinite_horizon_value(tmp_path):
    v = fitted_value("pgrun-test/Forever-v0", "bootstrap", tmp_path)
    assert abs(v - INFINITE) < TOL, (v, INFINITE)


def test_truncation_treated_as_termination_when_told(tmp_path):
    v = fitted_value("pgrun-test/Forever-v0", "terminate", tmp_path)
    assert abs(v - FINITE) < TOL, (v, FINITE)


def test_a_terminated_episode_is_never_bootstrapped(tmp_path):
    v = fitted_value("pgrun-test/Ends-v0", "bootstrap", tmp_path)
    assert abs(v - FINITE) < TOL, (v, FINITE)


# --- a short PPO run on CartPole: tags, annealing, resume -----------------------------------------

PPO = [
    "variant=ppo", "batch_episodes=4", "variant.minibatches=2", "variant.inner_steps=3",
    "variant.target_kl=0.5", "variant.entropy_coef=0.01", "optim.max_grad_norm=1.0",
    "gamma=0.99", "checkpoint.every=2", "diagnostics.every=2",
]  # fmt: skip


def test_ppo_logs_its_tags_and_anneals_the_learning_rate(tmp_path):
    cfg = composed(*PPO, "total_steps=1500", "optim.anneal_lr=true", "optim.lr=0.01")
    train(cfg, tmp_path)
    logged = comparable_scalars(tmp_path)
    for tag in (
        "losses/value", "stats/explained_variance", "stats/clip_fraction", "stats/approx_kl",
        "stats/stopped_early", "stats/gradient_steps", "inner/ratio_max/k0", "losses/policy",
    ):  # fmt: skip
        assert tag in logged, tag
        assert all(math.isfinite(v) for _, v in logged[tag]), tag
    assert all(0 <= v <= 1 for _, v in logged["stats/clip_fraction"])
    assert all(1 <= v <= 3 * 2 for _, v in logged["stats/gradient_steps"])
    # lr (1 - s / total_steps), s = the env steps before the batch (the previous logged step)
    steps = [s for s, _ in logged["charts/learning_rate"]]
    for before, (_, lr) in zip([0, *steps[:-1]], logged["charts/learning_rate"], strict=True):
        assert lr == pytest.approx(0.01 * (1 - before / 1500), rel=1e-6)
    state = checkpoint.load_latest(tmp_path)
    final_lr = 0.01 * (1 - steps[-2] / 1500)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(final_lr, rel=1e-6)
    assert state["value_optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        cfg.value.lr * (1 - steps[-2] / 1500), rel=1e-6
    )


def test_resume_restores_the_value_network_bit_exactly(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    straight.mkdir(), interrupted.mkdir()
    train(composed(*PPO, "total_steps=2000"), straight)
    train(composed(*PPO, "total_steps=1000"), interrupted)
    train(composed(*PPO, "total_steps=2000"), interrupted, resume=True)
    a, b = checkpoint.load_latest(straight), checkpoint.load_latest(interrupted)
    assert a["iteration"] == b["iteration"] and a["env_steps"] == b["env_steps"]
    assert a["recent_returns"] == b["recent_returns"]
    for part in ("policy", "value"):
        for key, tensor in a[part].items():
            assert torch.equal(tensor, b[part][key]), (part, key)
    assert comparable_scalars(straight) == comparable_scalars(interrupted)
