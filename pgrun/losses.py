"""The surrogate loss whose gradient is the policy-gradient estimate (pure functions)."""

from __future__ import annotations

import torch


def pg_loss(
    logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    logp_old: torch.Tensor | None = None,
) -> torch.Tensor:
    """L = -(1/N) sum_i sum_t m_{i,t} rho_{i,t} A_{i,t}.

    On-policy (logp_old is None) rho_{i,t} = log pi(a_{i,t}|s_{i,t}), so
    -grad L = (1/N) sum_i sum_t grad log pi(a|s) A, the notes' Monte-Carlo estimate.
    Off-policy rho_{i,t} = exp(logp - logp_old) = pi_new(a|s) / pi_old(a|s), the notes'
    per-timestep importance ratio; its gradient at pi_new = pi_old is the on-policy one.

    The sum over t is divided by N (episodes), not by N*T as `.mean()` would: the gradient is
    then the estimate itself and does not shrink when episodes get longer.

    Args:
        logp: (N, T) float32, log pi_theta(a|s), with gradient.
        adv: (N, T) float32, detached weights.
        mask: (N, T) float32.
        logp_old: (N, T) float32, detached log-probs of the policy that collected the batch.
    Returns:
        scalar.
    """
    if logp.shape != adv.shape or mask.shape != adv.shape or logp.dim() != 2:
        raise ValueError(
            f"logp, adv and mask must all be (N, T): got {tuple(logp.shape)}, "
            f"{tuple(adv.shape)}, {tuple(mask.shape)}"
        )
    if logp_old is None:
        rho = logp
    else:
        if logp_old.shape != logp.shape:
            raise ValueError(f"logp_old must be {tuple(logp.shape)}, got {tuple(logp_old.shape)}")
        rho = (logp - logp_old).exp()
    return -(rho * adv * mask).sum() / logp.shape[0]


def ratio_stats(logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean, min and max of rho = exp(logp - logp_old) over valid steps, and approx KL(old||new).

    approx_kl = mean of (rho - 1) - log rho, a non-negative estimator of KL(pi_old || pi_new).

    Args:
        logp, logp_old, mask: (N, T) float32.
    """
    with torch.no_grad():
        log_rho = (logp - logp_old)[mask > 0]
        rho = log_rho.exp()
        return {
            "ratio_mean": rho.mean().item(),
            "ratio_min": rho.min().item(),
            "ratio_max": rho.max().item(),
            "approx_kl": ((rho - 1) - log_rho).mean().item(),
        }


def surrogate_loss(
    policy: torch.nn.Module,
    batch,
    variant="rtg_baseline",
    gamma: float = 1.0,
    *,
    discount_from_start: bool = False,
    adv: torch.Tensor | None = None,
    logp_old: torch.Tensor | None = None,
) -> torch.Tensor:
    """The variant's surrogate loss on `batch`; `-grad` of it is the variant's gradient estimate.

    Args:
        policy: module with `policy(obs) -> Distribution`.
        batch: a pgrun.Batch.
        variant: a preset name (configs/variant/<name>.yaml), or an object / mapping with the
            knobs `weights`, `baseline` and `normalize_advantages`.
        gamma: discount of the weights.
        discount_from_start: multiply step t's weight by gamma^t (see pgrun.config.Config.gamma).
        adv: precomputed weights (N, T); computed from the batch when None.
        logp_old: (N, T) log-probs of the collecting policy; given, the loss uses the ratios.
    Returns:
        scalar loss, differentiable in the policy's parameters.
    """
    if adv is None:
        adv = batch_advantages(batch, variant, gamma, discount_from_start)
    logp = policy(batch.obs).log_prob(batch.act)
    return pg_loss(logp, adv, batch.mask, logp_old)


def batch_advantages(
    batch, variant="rtg_baseline", gamma: float = 1.0, discount_from_start: bool = False
) -> torch.Tensor:
    """The variant's detached weights (N, T) for `batch` (see pgrun.estimators.advantages)."""
    from pgrun.estimators import advantages

    v = _variant_knobs(variant)
    return advantages(
        batch.rew,
        batch.mask,
        weights=v["weights"],
        baseline=v["baseline"],
        gamma=gamma,
        discount_from_start=discount_from_start,
        normalize=v["normalize_advantages"],
    )


def _variant_knobs(variant) -> dict:
    if isinstance(variant, str):
        from pgrun.config import load_variant

        variant = load_variant(variant)
    get = variant.get if isinstance(variant, dict) else lambda k, d=None: getattr(variant, k, d)
    return {
        "weights": str(getattr(get("weights"), "value", get("weights"))),
        "baseline": str(getattr(get("baseline"), "value", get("baseline"))),
        "normalize_advantages": bool(get("normalize_advantages", False)),
    }
