"""variant=npg and variant=trpo through the pgrun command, and an update rule by import path."""

from __future__ import annotations

import pytest
from conftest import only_run_dir, read_scalars, run_pgrun

SHORT = ["total_steps=1500", "batch_episodes=8", "gamma=0.99"]


def test_trpo_keeps_every_step_within_the_kl_radius(tmp_path):
    done = run_pgrun(["variant=trpo", "variant.max_kl=0.005", *SHORT], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    s = read_scalars(only_run_dir(tmp_path))
    kl = [v for _, v in s["stats/kl"]]
    assert len(kl) >= 3 and max(kl) <= 0.005
    assert all(0 <= v <= 1 for _, v in s["stats/step_fraction"])
    assert "stats/explained_variance" in s  # V is fitted (value baseline, GAE)


def test_npg_steps_to_its_quadratic_kl_radius(tmp_path):
    done = run_pgrun(["variant=npg", *SHORT], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    s = read_scalars(only_run_dir(tmp_path))
    assert all(abs(v - 0.01) < 1e-4 for _, v in s["stats/quadratic_kl"])
    assert "stats/step_fraction" not in s  # no line search


RULE = '''
import torch


class SignStep:
    """Moves every parameter by lr * sign of the estimate."""

    def __init__(self, lr):
        self.lr = lr

    def step(self, policy, optimizer, batch, adv, *, generator=None, hooks=()):
        logp = policy(batch.obs).log_prob(batch.act)
        loss = -(logp * adv * batch.mask).sum() / batch.num_episodes
        policy.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in policy.parameters():
                p -= self.lr * p.grad.sign()
        return {"losses/policy": loss.item(), "stats/sign_lr": self.lr}


def make(cfg):
    return SignStep(cfg.optim.lr)
'''


def test_an_update_rule_by_import_path(tmp_path):
    (tmp_path / "my_rules.py").write_text(RULE)
    done = run_pgrun(
        ["variant.rule=my_rules:make", "optim.lr=0.001", *SHORT], tmp_path, timeout=600
    )
    assert done.returncode == 0, done.stderr
    s = read_scalars(only_run_dir(tmp_path))
    assert [v for _, v in s["stats/sign_lr"]][0] == pytest.approx(0.001)


def test_a_missing_update_rule_is_one_line(tmp_path):
    done = run_pgrun(["variant.rule=no_rules:make", *SHORT], tmp_path, timeout=600)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "pgrun: error: variant.rule=no_rules:make: cannot import no_rules "
        "(ModuleNotFoundError: No module named 'no_rules')"
    ]
    assert not (tmp_path / "outputs").exists()
