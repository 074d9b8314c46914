"""The learner: the one piece that owns V. Per batch it computes the advantages and the value
targets once (pgrun.estimators.advantages_and_targets), and after the policy's update it fits V
to those targets. Without a value baseline it holds no network and only weights the batch.

    targets = learner.targets(batch)          # adv (N, T), and V's target where there is a V
    stats = rule.step(policy, optimizer, batch, targets.adv, ...)
    stats |= learner.fit(batch, targets, generator)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from pgrun.estimators import advantages_and_targets, bootstrap_values, explained_variance
from pgrun.losses import value_loss
from pgrun.normalization import RewardScaler
from pgrun.optim import Adam, Optimizer
from pgrun.plugins import is_plugin, plugin_weights
from pgrun.rollout import Batch
from pgrun.value import ValueNetwork, fit_value, value_from_config


def plain(value: Any) -> str:
    """An enum member or a plain string, as the string the YAML files use."""
    return str(getattr(value, "value", value))


@dataclass
class Targets:
    """What one batch is learnt from.

    Attributes:
        adv: (N, T) float32, the detached weights of log pi.
        target: (N, T) float32, what V(s_t) is fitted to; None without a value baseline.
        values: (N, T) float32, V(s_t) before the fit (the baseline the weights used); or None.
    """

    adv: torch.Tensor
    target: torch.Tensor | None = None
    values: torch.Tensor | None = None


class Learner:
    """The variant's estimator, with V and its optimizer where the variant has baseline=value.

    Args:
        variant: the variant's knobs (weights, baseline, gae_lambda, normalize_advantages).
        gamma, discount_from_start: as in pgrun.config.Config.
        truncation: env.truncation, "bootstrap" | "terminate".
        value, value_optimizer: V and its optimizer, or None.
        scaler: the reward scaler (env.scale_rewards), or None.
        value_steps, value_minibatches, max_grad_norm: the fit of V (the `value` section).
    """

    def __init__(
        self,
        variant: Any,
        gamma: float,
        discount_from_start: bool = False,
        truncation: str = "bootstrap",
        value: ValueNetwork | None = None,
        value_optimizer: Optimizer | None = None,
        scaler: RewardScaler | None = None,
        value_steps: int = 16,
        value_minibatches: int = 1,
        max_grad_norm: float | None = None,
    ):
        self.weights, self.baseline = plain(variant.weights), plain(variant.baseline)
        self.normalize = bool(variant.normalize_advantages)
        self.gae_lambda = variant.gae_lambda
        self.gamma, self.discount_from_start, self.truncation = (
            gamma,
            discount_from_start,
            truncation,
        )
        self.value, self.value_optimizer, self.scaler = value, value_optimizer, scaler
        self.value_steps, self.value_minibatches = value_steps, value_minibatches
        self.max_grad_norm = max_grad_norm

    @classmethod
    def from_config(cls, cfg: Any, env: Any, device: torch.device) -> Learner:
        value, value_opt = None, None
        if plain(cfg.variant.baseline) == "value":  # V(s) and its own optimizer (pgrun.value)
            value = value_from_config(env, cfg).to(device)
            value_opt = Adam(value.parameters(), lr=cfg.value.lr)
        return cls(
            cfg.variant,
            cfg.gamma,
            cfg.discount_from_start,
            plain(cfg.env.truncation),
            value,
            value_opt,
            RewardScaler(cfg.gamma) if cfg.env.scale_rewards else None,
            cfg.value.steps,
            cfg.value.minibatches,
            cfg.optim.max_grad_norm,
        )

    def boot(self, batch: Batch) -> torch.Tensor:
        """(N, T) boot_{i,t}: V of the observation after each done step where the episode goes
        on (pgrun.estimators.bootstrap_values)."""
        with torch.no_grad():
            final_values = self.value(batch.final_obs)
        return bootstrap_values(
            final_values, batch.terminated, batch.truncated, self.truncation, batch.done
        )

    def targets(self, batch: Batch) -> Targets:
        """The batch's advantages and V's targets, once (rewards scaled first with the scaler,
        whose statistics this batch updates)."""
        weighted = self.scaler(batch) if self.scaler is not None else batch
        values, boot = None, None
        if self.value is not None:  # V(s_t) and the values after each episode's end
            with torch.no_grad():
                values = self.value(batch.obs) * batch.mask
            boot = self.boot(batch)
        given = None  # own weights, variant.weights=module:function (pgrun.plugins)
        if is_plugin(self.weights):
            given = plugin_weights(self.weights, weighted, self.gamma)
        adv, target = advantages_and_targets(
            weighted.rew,
            batch.mask,
            weights=self.weights,
            baseline=self.baseline,
            gamma=self.gamma,
            discount_from_start=self.discount_from_start,
            normalize=self.normalize,
            values=values,
            boot=boot,
            gae_lambda=self.gae_lambda,
            done=batch.done,
            start=batch.start,
            given=given,
        )
        return Targets(adv, target, values)

    def fit(
        self, batch: Batch, targets: Targets, generator: torch.Generator | None = None
    ) -> dict[str, float]:
        """Fit V to the batch's targets (value.steps Adam steps) and merge the batch into its
        observation statistics; logs the loss and explained variance of the V the advantages
        used. Nothing without a V."""
        if self.value is None:
            return {}
        values, target, mask = targets.values, targets.target, batch.mask
        stats = {"losses/value": value_loss(values, target, mask).item()}
        ev = explained_variance(values, target, mask)
        if math.isfinite(ev):
            stats["stats/explained_variance"] = ev
        fit_value(
            self.value,
            self.value_optimizer,
            batch.obs,
            target,
            mask,
            self.value_steps,
            minibatches=self.value_minibatches,
            max_grad_norm=self.max_grad_norm,
            generator=generator,
        )
        self.value.update_obs_stats(batch.obs, mask)
        return stats

    def state_dict(self) -> dict[str, Any]:
        """V, its optimizer and the reward scaler's statistics (what exists of them)."""
        state: dict[str, Any] = {}
        if self.value is not None:
            state["value"] = self.value.state_dict()
            state["value_optimizer"] = self.value_optimizer.state_dict()
        state["reward_scaler"] = self.scaler.stats.state_dict() if self.scaler else {}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.value is not None:
            self.value.load_state_dict(state["value"])
            self.value_optimizer.load_state_dict(state["value_optimizer"])
        if self.scaler is not None:
            self.scaler.stats.load_state_dict(state["reward_scaler"])
