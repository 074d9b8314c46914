"""pgrun.optim against torch.optim: the same steps, a state that survives a save and load, and
no torch._dynamo import (the reason the module exists)."""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import pytest
import torch

from pgrun.optim import SGD, Adam, make_optimizer


def two_nets(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    return net, copy.deepcopy(net)


def run(net, opt, steps, seed=1, lrs=None):
    g = torch.Generator().manual_seed(seed)
    for k in range(steps):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[k]
        x = torch.randn(16, 5, generator=g)
        opt.zero_grad(set_to_none=True)
        net(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize(
    "ours, theirs",
    [(Adam, torch.optim.Adam), (SGD, torch.optim.SGD)],
    ids=["adam", "sgd"],
)
def test_steps_match_torch_optim(ours, theirs):
    a, b = two_nets()
    lrs = [0.05 * (1 - k / 40) for k in range(40)]  # annealed, as optim.anneal_lr does
    run(a, ours(a.parameters(), lr=0.05), 40, lrs=lrs)
    run(b, theirs(b.parameters(), lr=0.05), 40, lrs=lrs)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a[0].weight, two_nets()[0][0].weight)  # it did move


def test_adam_state_round_trip_continues_identically():
    a, b = two_nets()
    opt_a = Adam(a.parameters(), lr=0.02)
    run(a, opt_a, 5)
    b.load_state_dict(a.state_dict())
    opt_b = Adam(b.parameters(), lr=0.5)  # lr and moments come from the saved state
    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)
    buf.seek(0)
    opt_b.load_state_dict(torch.load(buf, weights_only=True))
    assert opt_b.param_groups[0]["lr"] == 0.02 and opt_b.t == 5
    run(a, opt_a, 5, seed=2)
    run(b, opt_b, 5, seed=2)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_parameter_without_gradient_is_left_alone():
    net = torch.nn.Linear(3, 2)
    unused = torch.nn.Parameter(torch.ones(4))
    opt = Adam([*net.parameters(), unused], lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert torch.equal(unused, torch.ones(4)) and opt.v[-1].abs().sum() == 0


def test_make_optimizer_names():
    net = torch.nn.Linear(2, 2)
    assert isinstance(make_optimizer("adam", net.parameters(), 0.1), Adam)
    assert isinstance(make_optimizer("sgd", net.parameters(), 0.1), SGD)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop", net.parameters(), 0.1)


def test_training_does_not_import_dynamo():
    """A whole (tiny) training run, diagnostics included, leaves torch._dynamo unimported: it
    costs about 1.5 s of start-up (torch.optim's constructors and torch.func import it)."""
    code = (
        "import sys, tempfile\n"
        "from hydra import compose, initialize_config_module\n"
        "from pgrun.trainer import train\n"
        "with initialize_config_module(config_module='pgrun.configs', version_base='1.3'):\n"
        "    cfg = compose(config_name='config', overrides=["
        "'total_steps=300', 'batch_episodes=4', 'diagnostics.every=1', 'variant=ppo'])\n"
        "train(cfg, tempfile.mkdtemp())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
