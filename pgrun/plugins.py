"""Your own estimator: weights given by import path, `variant.weights=module:function`.

A weights plug-in is a function

    weights(batch: pgrun.Batch, gamma: float) -> torch.Tensor   # (N, T) float32

that returns the weight A_{i,t} of log pi(a_{i,t}|s_{i,t}) for every step of the batch's N
episodes (T = batch.rew.shape[1]). pgrun detaches it and multiplies it by the mask (steps after
an episode's end get 0), then applies variant.normalize_advantages and discount_from_start as
for the built-in weights. The Batch fields it may use are those of pgrun.rollout.Batch:

    obs (N, T, obs_dim), act (N, T[, act_dim]), rew (N, T) float32 (0 after the end),
    mask (N, T) float32 (1 while the episode runs), terminated and truncated (N, T) bool
    (step t ended the episode), final_obs (N, obs_dim), start (N,) (zeros), and batch.done
    (N, T), batch.lengths (N,), batch.returns (N,).

The batch is the notes' one, an episode from reset per row: a plug-in needs rollout=episodes.

`module` is an importable module (the current directory is searched first, as `python -m`
does) or a path to a .py file, e.g. `variant.weights=my_estimators.py:loo_baseline`.

A plug-in that cannot be imported, or returns something else than finite (N, T) float32
weights without gradient, stops the run with one line naming it and the problem (exit 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

from pgrun.config import UserError


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" for none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class PluginError(UserError):
    """A plug-in that cannot be loaded or returned something unusable (exit 2)."""


def _given(key: str, spec: str) -> str:
    """The plug-in as its user gave it: `variant.weights=mod:fn` to pgrun, `mod:fn` alone to
    pgrun-check (key "")."""
    return f"{key}={spec}" if key else spec


def is_plugin(value: object) -> bool:
    """A `module:function` import path (the built-in names contain no colon)."""
    return isinstance(value, str) and ":" in value


@cache
def load(spec: str, key: str = "variant.weights") -> Callable:
    """The function named by `spec` ('module:function' or 'path/file.py:function').

    Raises PluginError naming `key`, the spec and what failed."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise PluginError(f"{_given(key, spec)}: use module:function, e.g. my_estimators:weights")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser()
            if not path.is_file():
                raise PluginError(f"{_given(key, spec)}: no file {where}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            cwd = os.getcwd()
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
            module = importlib.import_module(where)
    except PluginError:
        raise
    except Exception as exc:  # the user's module failed to import: say why, in one line
        first = _first_line(exc)
        raise PluginError(
            f"{_given(key, spec)}: cannot import {where} ({type(exc).__name__}: {first})"
        ) from None
    fn = getattr(module, name, None)
    if fn is None:
        raise PluginError(f"{_given(key, spec)}: {where} has no attribute {name!r}")
    if not callable(fn):
        raise PluginError(f"{_given(key, spec)}: {name} is a {type(fn).__name__}, not a function")
    return fn


def plugin_weights(spec: str, batch, gamma: float, key: str = "variant.weights",
                   finite: bool = True) -> torch.Tensor:  # fmt: skip
    """Call the weights plug-in `spec` on `batch` and check what it returns.

    Returns:
        (N, T) float32, detached, zero where batch.mask is zero. finite=False returns the
        weights as they are, unmasked and not checked for non-finite values (pgrun-check
        checks many batches' weights at once).
    Raises:
        PluginError: the plug-in raised, or returned anything but a finite (N, T) tensor of
            batch.rew's dtype that does not require grad.
    """
    fn = load(spec, key)
    try:
        w = fn(batch, gamma)
    except Exception as exc:
        first = _first_line(exc)
        raise PluginError(f"{_given(key, spec)} raised {type(exc).__name__}: {first}") from None
    shape = tuple(batch.rew.shape)
    if not isinstance(w, torch.Tensor):
        raise PluginError(
            f"{_given(key, spec)} returned a {type(w).__name__}; return a torch.Tensor of shape "
            f"(N, T) = {shape}"
        )
    if tuple(w.shape) != shape:
        raise PluginError(
            f"{_given(key, spec)} returned shape {tuple(w.shape)}; the batch is (N, T) = {shape}"
        )
    if w.dtype != batch.rew.dtype:
        raise PluginError(
            f"{_given(key, spec)} returned {str(w.dtype).removeprefix('torch.')} weights; return "
            f"{str(batch.rew.dtype).removeprefix('torch.')}, the dtype of batch.rew"
        )
    if w.requires_grad:
        raise PluginError(
            f"{_given(key, spec)} returned a tensor that requires grad; weights are constants: "
            "compute them under torch.no_grad() or .detach() them"
        )
    if not finite:
        return w.detach()
    valid = batch.mask > 0
    bad = ~torch.isfinite(w) & valid
    if bad.any():
        i, t = (int(x) for x in bad.nonzero()[0])
        raise PluginError(
            f"{_given(key, spec)} returned {w[i, t].item()} at episode {i}, step {t} "
            f"({int(bad.sum())} non-finite weights on valid steps)"
        )
    return torch.where(valid, w.detach(), torch.zeros_like(w))


def try_on_env(spec: str, cfg, key: str = "variant.weights") -> None:
    """Call the plug-in once on a short batch of the run's env and policy (at most 8 steps),
    so that a plug-in returning unusable weights is refused before the run starts."""
    from pgrun.envs import env_from_config
    from pgrun.policies import policy_from_config
    from pgrun.rollout import collect_episodes

    env = env_from_config(cfg, num_envs=cfg.batch_episodes, seed=cfg.seed)
    try:
        policy = policy_from_config(env, cfg)
        horizon = min(cfg.env.horizon or 8, 8)
        batch = collect_episodes(env, policy, horizon, seed=cfg.seed)
    finally:
        env.close()
    plugin_weights(spec, batch, cfg.gamma, key)


def load_rule(spec: str, cfg):
    """The update rule `variant.rule=module:function`: function(cfg) is called once and
    returns an object whose step(policy, optimizer, batch, adv, *, generator, hooks) returns
    the tags to log, as pgrun.update_rules' rules do."""
    factory = load(spec, "variant.rule")
    try:
        rule = factory(cfg)
    except Exception as exc:
        first = _first_line(exc)
        raise PluginError(f"variant.rule={spec} raised {type(exc).__name__}: {first}") from None
    if not callable(getattr(rule, "step", None)):
        raise PluginError(
            f"variant.rule={spec} returned a {type(rule).__name__} without a step method; "
            "return an object with step(policy, optimizer, batch, adv, *, generator, hooks)"
        )
    return CheckedRule(rule, spec)


class CheckedRule:
    """An own update rule with the checks the built-in rules make: its step's exception or a
    result that is not {tag: number} is one line naming the rule (PluginError), and parameters
    it leaves non-finite stop the run as a diverged update does (FloatingPointError, which the
    trainer reports with the last good checkpoint)."""

    def __init__(self, rule: object, spec: str):
        self.rule, self.spec = rule, spec

    def __getattr__(self, name: str):
        return getattr(self.__dict__["rule"], name)

    def step(self, policy, optimizer, batch, adv, **kwargs) -> dict[str, float]:
        try:
            stats = self.rule.step(policy, optimizer, batch, adv, **kwargs)
        except (FloatingPointError, UserError):
            raise
        except Exception as exc:
            first = _first_line(exc)
            raise PluginError(
                f"variant.rule={self.spec}: its step raised {type(exc).__name__}: {first}"
            ) from None
        if not all(bool(torch.isfinite(p).all()) for p in policy.parameters()):
            raise FloatingPointError("parameters")
        return self._tags(stats)

    def _tags(self, stats: object) -> dict[str, float]:
        fix = "return a dict of tag: number (or {})"
        if not isinstance(stats, dict):
            raise PluginError(
                f"variant.rule={self.spec}: its step returned a {type(stats).__name__}; {fix}"
            )
        out = {}
        for tag, value in stats.items():
            try:
                out[str(tag)] = float(value)
            except (TypeError, ValueError, RuntimeError):
                raise PluginError(
                    f"variant.rule={self.spec}: its step returned {tag!r}: {value!r:.40}, not a "
                    f"number; {fix}"
                ) from None
        return out
