"""Estimator diagnostics: the pure functions against loops and hand computations, the trainer's
use of them, and the TensorBoard tags of a real `pgrun` run."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import custom_scalars_layout
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import pgrun
from pgrun import diagnostics
from pgrun.config import Config, ConfigError, validate
from pgrun.losses import batch_advantages
from pgrun.update_rules import RatioEpochs

PGRUN = Path(sys.executable).parent / "pgrun"
STATS = ("ratio_mean", "ratio_min", "ratio_max", "ess", "approx_kl")


def cartpole_batch(n=6, horizon=40, seed=0):
    torch.manual_seed(seed)
    env = pgrun.make_env("CartPole-v1", num_envs=n, seed=seed)
    policy = pgrun.make_policy(env, hidden_sizes=[16, 16])
    return policy, pgrun.collect_episodes(env, policy, horizon=horizon, seed=seed)


def pendulum_batch(n=5, horizon=12, seed=0):
    torch.manual_seed(seed)
    env = pgrun.make_env("Pendulum-v1", num_envs=n, seed=seed)
    policy = pgrun.make_policy(env, hidden_sizes=[8])
    return policy, pgrun.collect_episodes(env, policy, horizon=horizon, seed=seed)


def loop_episode_grads(policy, batch, adv, logp_old=None) -> torch.Tensor:
    """One backward pass per episode of sum_t m_t rho_t A_t, rho_t = log pi or the ratio."""
    rows = []
    for i in range(batch.num_episodes):
        policy.zero_grad()
        logp = policy(batch.obs[i]).log_prob(batch.act[i])  # (T,)
        rho = logp if logp_old is None else (logp - logp_old[i]).exp()
        (rho * adv[i] * batch.mask[i]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1).clone() for p in policy.parameters()]))
    return torch.stack(rows)


@pytest.mark.parametrize(
    "make_batch", [cartpole_batch, pendulum_batch], ids=["discrete", "gaussian"]
)
@pytest.mark.parametrize("off_policy", [False, True], ids=["on_policy", "ratios"])
def test_per_episode_grads_match_a_loop(make_batch, off_policy):
    """Per-episode gradients (each over the episode's own steps, through pg_loss) = backward
    passes of the formula over the whole padded episode, and their mean = the batch estimate
    -grad pgrun.surrogate_loss."""
    policy, batch = make_batch()
    assert batch.lengths.unique().numel() > 1 or make_batch is pendulum_batch
    adv = batch_advantages(batch, "rtg_baseline")
    logp_old = None
    if off_policy:  # the ratios of a slightly different collecting policy, so rho != 1
        other = copy.deepcopy(policy)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.1 * torch.randn_like(p))
            logp_old = other(batch.obs).log_prob(batch.act)

    g = diagnostics.per_episode_grads(policy, batch, adv, logp_old)
    n_params = sum(p.numel() for p in policy.parameters())
    assert g.shape == (batch.num_episodes, n_params)
    torch.testing.assert_close(
        g, loop_episode_grads(policy, batch, adv, logp_old), rtol=1e-4, atol=1e-5
    )

    policy.zero_grad()
    pgrun.surrogate_loss(policy, batch, "rtg_baseline", adv=adv, logp_old=logp_old).backward()
    estimate = -torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
    torch.testing.assert_close(g.mean(0), estimate, rtol=1e-4, atol=1e-5)


def test_gradient_stats_by_hand():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(7, 5)) + np.array([1.0, -2.0, 0.0, 0.5, 3.0])
    n = g.shape[0]
    var = np.trace(np.cov(g.T, ddof=1)) / n  # tr Cov of the batch mean
    signal = np.sum(g.mean(0) ** 2)
    out = diagnostics.gradient_stats(torch.tensor(g, dtype=torch.float32))
    assert out["grad_variance"] == pytest.approx(var, rel=1e-5)
    assert out["grad_snr"] == pytest.approx((signal - var) / var, rel=1e-5)
    # a common shift moves the signal, not the variance
    shifted = diagnostics.gradient_stats(torch.tensor(g + 10.0, dtype=torch.float32))
    assert shifted["grad_variance"] == pytest.approx(var, rel=1e-4)
    assert shifted["grad_snr"] > out["grad_snr"]
    assert all(math.isnan(v) for v in diagnostics.gradient_stats(torch.ones(1, 3)).values())
    with pytest.raises(ValueError, match="g must be"):
        diagnostics.gradient_stats(torch.ones(3))


def test_gradient_snr_is_unbiased_in_the_signal():
    """For g_i ~ N(mu, I) the mean of ||g_bar||^2 - V over many batches is ||mu||^2 (V is the
    variance estimate); the plug-in ||g_bar||^2 would be off by D / N = 2.5 on average.
    Tolerance: 4 standard errors of that mean over 4000 batches."""
    torch.manual_seed(0)
    mu = torch.tensor([0.5, -0.5, 0.0, 0.2, 0.1])
    n, batches = 2, 4000
    signals = []
    for _ in range(batches):
        s = diagnostics.gradient_stats(mu + torch.randn(n, 5))
        signals.append(s["grad_variance"] * (s["grad_snr"] + 1) - s["grad_variance"])
    signals = torch.tensor(signals, dtype=torch.float64)
    se = signals.std() / batches**0.5
    assert abs(signals.mean() - mu.pow(2).sum()) < 4 * se


def test_ratio_stats_by_hand():
    # valid ratios 1, 1, 1, 4 (one huge ratio on a masked step must not count)
    logp_old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.0, 1.0, 100.0], [1.0, 4.0, 7.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = diagnostics.inner_step_stats(logp, logp_old, mask)
    w = np.array([1.0, 1.0, 1.0, 4.0])
    assert out["ratio_mean"] == pytest.approx(w.mean())
    assert out["ratio_min"] == pytest.approx(1.0) and out["ratio_max"] == pytest.approx(4.0)
    assert out["ess"] == pytest.approx(w.sum() ** 2 / (w**2).sum() / 4)
    assert out["approx_kl"] == pytest.approx(np.mean(w - 1 - np.log(w)), rel=1e-6)
    same = diagnostics.inner_step_stats(logp_old, logp_old, mask)
    assert same["ess"] == 1.0 and same["approx_kl"] == 0.0 and same["ratio_max"] == 1.0
    assert diagnostics.inner_step_tags(2, {"ess": 0.5}) == {"inner/ess/k2": 0.5}
    with pytest.raises(ValueError, match="one shape"):
        diagnostics.effective_sample_size(logp, logp_old[:, :2], mask)


def test_update_diagnostics_are_read_only():
    """The diagnostics change nothing in the update: same parameters after K = 3 steps, and the
    logged variance is the one of the per-episode gradients at the collecting policy."""
    policy, batch = cartpole_batch()
    adv = batch_advantages(batch, "off_policy")
    g = diagnostics.per_episode_grads(policy, batch, adv)
    expected = diagnostics.gradient_stats(g)
    after = {}
    for on in (False, True):
        p = copy.deepcopy(policy)
        opt = torch.optim.Adam(p.parameters(), lr=0.01)
        hooks = [diagnostics.Diagnostics(grad_stats=on, ratios=on)]
        stats = RatioEpochs(3).step(p, opt, batch, adv, hooks=hooks)
        after[on] = [q.detach().clone() for q in p.parameters()]
        assert ("stats/grad_variance" in stats) == on
        assert ("inner/ess/k2" in stats) == on
    for a, b in zip(after[False], after[True], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert stats["stats/grad_variance"] == pytest.approx(expected["grad_variance"], rel=1e-6)
    assert stats["stats/grad_snr"] == pytest.approx(expected["grad_snr"], rel=1e-5, abs=1e-6)


def test_diagnostics_every_is_validated():
    cfg = OmegaConf.structured(Config)
    cfg.diagnostics.every = -1
    with pytest.raises(ConfigError, match="diagnostics.every"):
        validate(cfg)


def read_scalars(run_root: Path) -> dict[str, list[tuple[int, float]]]:
    (run_dir,) = [p.parent for p in run_root.rglob("events.out.tfevents.*")]
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def run_pgrun(cwd: Path, *overrides: str) -> dict[str, list[tuple[int, float]]]:
    cmd = [
        str(PGRUN),
        "env=CartPole-v1",
        "total_steps=1200",
        "progress=false",
        "seed=0",
        *overrides,
    ]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return read_scalars(cwd / "outputs")


def test_diagnostics_in_tensorboard(tmp_path):
    """A real off-policy run (K = 4) with diagnostics.every=1: every iteration has the gradient
    variance and SNR and, per inner step k = 1..3, the ratio statistics, against env steps; step
    0's ratios are exactly 1 and not logged. One Custom Scalars chart per statistic."""
    scalars = run_pgrun(tmp_path, "variant=off_policy", "diagnostics.every=1")
    steps = [s for s, _ in scalars["charts/episodic_return"]]
    assert len(steps) >= 2 and steps == sorted(steps)
    for tag in ("stats/grad_variance", "stats/grad_snr"):
        assert [s for s, _ in scalars[tag]] == steps, tag
        assert all(math.isfinite(v) for _, v in scalars[tag])
    assert all(v > 0 for _, v in scalars["stats/grad_variance"])
    for k in range(1, 4):
        for stat in STATS:
            assert [s for s, _ in scalars[f"inner/{stat}/k{k}"]] == steps
    assert not any(tag.endswith("/k0") for tag in scalars)
    assert all(v > 1.0 for _, v in scalars["inner/ratio_max/k3"])
    assert all(v < 1.0 for _, v in scalars["inner/ess/k3"])
    assert "inner/ess/k4" not in scalars
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").rglob("events.out.tfevents.*")]
    layout = custom_scalars_layout(run_dir)
    (category,) = layout.category
    charts = {c.title: list(c.multiline.tag) for c in category.chart}
    assert charts == {stat: [rf"^inner/{stat}/k\d+$"] for stat in STATS}


def test_diagnostics_schedule(tmp_path):
    """diagnostics.every=3 logs the gradient statistics at iterations 0, 3, 6, ...; on-policy
    runs (K = 1) have no inner-step tags. (In-process pgrun.train on the composed config.)"""
    overrides = ["variant=rtg_baseline", "diagnostics.every=3", "batch_episodes=4",
                 "total_steps=1000", "progress=false", "seed=0"]  # fmt: skip
    with initialize_config_module("pgrun.configs", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    pgrun.train(cfg, tmp_path)
    scalars = read_scalars(tmp_path)
    steps = [s for s, _ in scalars["charts/episodic_return"]]
    assert len(steps) >= 5
    assert [s for s, _ in scalars["stats/grad_variance"]] == steps[::3]
    assert not any(tag.startswith("inner/") for tag in scalars)
