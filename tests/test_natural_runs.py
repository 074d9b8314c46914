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


BAD_RULES = """
import math


class Rule:
    def __init__(self, how):
        self.how = how

    def step(self, policy, optimizer, batch, adv, *, generator=None, hooks=()):
        if self.how == "nan":
            for p in policy.parameters():
                p.data.fill_(math.nan)
            return {}
        if self.how == "raise":
            raise KeyError("no such tag")
        return {"none": None, "text": {"x": "abc"}, "list": [1.0, 2.0]}.get(self.how, self.how)


def make(cfg):
    return Rule(__import__("os").environ["HOW"])
"""


@pytest.mark.parametrize(
    ("how", "code", "says"),
    [
        ("nan", 3, "non-finite parameters at iteration 0"),
        ("raise", 2, "variant.rule=bad_rules:make: its step raised KeyError: 'no such tag'"),
        ("none", 2, "its step returned a NoneType; return a dict of tag: number"),
        ("text", 2, "its step returned 'x': 'abc', not a number"),
        ("list", 2, "its step returned a list; return a dict of tag: number"),
    ],
)
def test_an_update_rule_that_breaks_is_one_line(tmp_path, monkeypatch, how, code, says):
    """An own rule gets the built-in rules' checks: parameters it leaves non-finite stop the
    run as a diverged update (exit 3, before they are saved), and a step that raises or
    returns something else than {tag: number} is one line naming the rule (exit 2)."""
    from hydra import compose, initialize_config_module

    import pgrun
    from pgrun.config import UserError

    (tmp_path / "bad_rules.py").write_text(BAD_RULES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HOW", how)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with initialize_config_module("pgrun.configs", version_base="1.3"):
        cfg = compose("config", ["progress=false", "variant.rule=bad_rules:make", *SHORT])
    with pytest.raises(UserError) as raised:
        pgrun.train(cfg, run_dir)
    assert raised.value.exit_code == code
    assert says in str(raised.value) and "\n" not in str(raised.value)
    assert not (run_dir / "policy.pt").exists()
