"""The estimators as they were written for one episode per row (the notes' batch), kept
unchanged as the reference the per-step-boundary estimators must reproduce bit for bit.


Notation (the notes'): N episodes i, time steps t, rewards r_{i,t}, and a mask m_{i,t} that is 1
while episode i is running. Rewards are zero where the mask is zero.

    total return    R_i        = sum_t gamma^t r_{i,t}
    reward-to-go    rtg_{i,t}  = sum_{t' >= t} gamma^(t'-t) r_{i,t'}
    time baseline   b_t        = sum_i m_{i,t} w_{i,t} / sum_i m_{i,t}
    leave-one-out   b_{i,t}    = sum_{j != i} m_{j,t} w_{j,t} / sum_{j != i} m_{j,t}
    advantage       A_{i,t}    = (w_{i,t} - b) m_{i,t}, detached

With a state-value estimate V_{i,t} = V(s_{i,t}) (pgrun.value) and, per episode, the value
v_i of the observation after its last step (0 for a terminated episode: see bootstrap_values):

    bootstrapped rtg  G_{i,t}     = sum_{t'=t}^{L_i-1} gamma^(t'-t) r_{i,t'} + gamma^(L_i-t) v_i
    TD error          delta_{i,t} = r_{i,t} + gamma V_{i,t+1} - V_{i,t},  V_{i,L_i} := v_i
    GAE               A_{i,t}     = sum_{k >= 0} (gamma lambda)^k delta_{i,t+k}

L_i is episode i's length. lambda = 1 telescopes to G_{i,t} - V_{i,t}; lambda = 0 is delta_{i,t}.
"""

from __future__ import annotations

import torch

WEIGHTS = ("total", "rtg")
BASELINES = ("none", "time", "time_loo", "value")
TRUNCATIONS = ("bootstrap", "terminate")


def _check_nt(name: str, x: torch.Tensor, like: torch.Tensor | None = None) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be (N, T), got shape {tuple(x.shape)}")
    if like is not None and x.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape of rew {tuple(like.shape)}, got {tuple(x.shape)}"
        )


def reward_to_go(rew: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """rtg_{i,t} = sum_{t' >= t} gamma^(t'-t) r_{i,t'}.

    With gamma = 1 this is the notes' flip / cumsum / flip: [1, 0, 3, 2] -> [6, 5, 5, 2].

    Args:
        rew: (N, T) float32, zero after each episode's end.
    Returns:
        (N, T) float32.
    """
    _check_nt("rew", rew)
    if gamma == 1.0:
        return rew.flip(1).cumsum(1).flip(1)
    T = rew.shape[1]
    t = torch.arange(T, device=rew.device, dtype=rew.dtype)
    lag = t[None, :] - t[:, None]  # lag[t, t'] = t' - t
    discount = torch.where(lag >= 0, gamma ** lag.clamp(min=0), torch.zeros_like(lag))  # (T, T)
    return rew @ discount.T


def total_return(rew: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """R_i = sum_t gamma^t r_{i,t}, the reward-to-go from t = 0.

    Args:
        rew: (N, T) float32.
    Returns:
        (N,) float32.
    """
    return reward_to_go(rew, gamma)[:, 0]


def time_baseline(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """b_t = mean of w_{i,t} over the episodes still running at t (0 where none is).

    Args:
        w: (N, T) float32 weights (e.g. reward-to-go).
        mask: (N, T) float32, 1 while the episode runs.
    Returns:
        (T,) float32.
    """
    _check_nt("w", w)
    _check_nt("mask", mask, w)
    count = mask.sum(0)
    return (w * mask).sum(0) / count.clamp(min=1)


def loo_time_baseline(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """b_{i,t} = mean of w_{j,t} over the other episodes j != i still running at t.

    It does not depend on episode i, so E[grad log pi(a_{i,t}|s_{i,t}) b_{i,t}] = 0 exactly;
    the plain time baseline includes episode i's own weight and is biased by O(1/N).
    0 where no other episode is running.

    Args:
        w: (N, T) float32.
        mask: (N, T) float32.
    Returns:
        (N, T) float32.
    """
    _check_nt("w", w)
    _check_nt("mask", mask, w)
    total = (w * mask).sum(0, keepdim=True)
    count = mask.sum(0, keepdim=True)
    return (total - w * mask) / (count - mask).clamp(min=1)


def _check_n(name: str, x: torch.Tensor, rew: torch.Tensor) -> None:
    if x.shape != rew.shape[:1]:
        raise ValueError(f"{name} must be (N,) = ({rew.shape[0]},), got shape {tuple(x.shape)}")


def bootstrap_values(
    final_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    truncation: str = "bootstrap",
) -> torch.Tensor:
    """v_i, the value each episode's return continues with after its last step.

    v_i = V(final observation of i) when episode i was truncated (a time limit or the horizon)
    and `truncation` is "bootstrap"; 0 when it terminated (never bootstrap a terminal state) or
    when `truncation` is "terminate" (every end is treated as terminal).

    Args:
        final_values: (N,) float32, V of each episode's final observation.
        terminated, truncated: (N,) bool.
        truncation: "bootstrap" | "terminate".
    Returns:
        (N,) float32, detached.
    """
    if final_values.dim() != 1 or terminated.shape != final_values.shape:
        raise ValueError(
            f"final_values and terminated must both be (N,): got {tuple(final_values.shape)}, "
            f"{tuple(terminated.shape)}"
        )
    if truncated.shape != final_values.shape:
        raise ValueError(f"truncated must be (N,), got shape {tuple(truncated.shape)}")
    if truncation == "terminate":
        return torch.zeros_like(final_values)
    if truncation != "bootstrap":
        raise ValueError(f"truncation={truncation!r}: use one of {', '.join(TRUNCATIONS)}")
    keep = truncated.bool() & ~terminated.bool()
    return torch.where(keep, final_values, torch.zeros_like(final_values)).detach()


def last_step(mask: torch.Tensor) -> torch.Tensor:
    """1 at each episode's last valid step, else 0 (episodes start at t = 0 and are contiguous).

    Args:
        mask: (N, T) float32.
    Returns:
        (N, T) float32.
    """
    _check_nt("mask", mask)
    after = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    return mask * (1 - after)


def next_values(values: torch.Tensor, mask: torch.Tensor, boot: torch.Tensor) -> torch.Tensor:
    """V(s_{t+1}) for every step: V_{i,t+1} inside the episode, v_i after its last step, 0 on padding.

    Args:
        values: (N, T) float32, V(s_{i,t}).
        mask: (N, T) float32.
        boot: (N,) float32, v_i (see bootstrap_values).
    Returns:
        (N, T) float32.
    """
    _check_nt("values", values)
    _check_nt("mask", mask, values)
    _check_n("boot", boot, values)
    shifted = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    return (shifted * mask + last_step(mask) * boot[:, None]) * mask


def td_errors(
    rew: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    boot: torch.Tensor,
    gamma: float = 1.0,
) -> torch.Tensor:
    """delta_{i,t} = r_{i,t} + gamma V(s_{i,t+1}) - V(s_{i,t}), with V after the last step = v_i.

    Args:
        rew, values, mask: (N, T) float32.
        boot: (N,) float32.
    Returns:
        (N, T) float32, zero where mask is zero.
    """
    _check_nt("rew", rew)
    _check_nt("values", values, rew)
    _check_nt("mask", mask, rew)
    return (rew + gamma * next_values(values, mask, boot) - values) * mask


def gae(
    rew: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    boot: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> torch.Tensor:
    """Generalised advantage estimation, A_{i,t} = sum_{k >= 0} (gamma lambda)^k delta_{i,t+k}.

    It is the reward-to-go of the TD errors with discount gamma * lambda (Schulman et al. 2016):
    lambda = 1 gives G_{i,t} - V_{i,t} (bootstrapped_reward_to_go minus V), lambda = 0 gives
    delta_{i,t}.

    Args:
        rew, values, mask: (N, T) float32.
        boot: (N,) float32 (see bootstrap_values).
        gamma: discount; lam: lambda in [0, 1].
    Returns:
        (N, T) float32, zero where mask is zero.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam!r}: use a value in [0, 1]")
    delta = td_errors(rew, values, mask, boot, gamma)
    if gamma * lam == 0.0:
        return delta
    return reward_to_go(delta, gamma * lam) * mask


def bootstrapped_reward_to_go(
    rew: torch.Tensor, mask: torch.Tensor, boot: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """G_{i,t} = sum_{t' >= t} gamma^(t'-t) r_{i,t'} + gamma^(L_i - t) v_i over episode i's steps.

    The reward-to-go of the rewards with gamma * v_i added to each episode's last reward.

    Args:
        rew, mask: (N, T) float32.
        boot: (N,) float32 (see bootstrap_values).
    Returns:
        (N, T) float32, zero where mask is zero.
    """
    _check_nt("rew", rew)
    _check_nt("mask", mask, rew)
    _check_n("boot", boot, rew)
    return reward_to_go(rew + gamma * last_step(mask) * boot[:, None], gamma) * mask


def value_targets(
    rew: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    boot: torch.Tensor,
    gamma: float = 1.0,
    lam: float | None = None,
) -> torch.Tensor:
    """What V(s_{i,t}) is fitted to: G_{i,t} (lam None), or the lambda-return A^GAE + V.

    Args:
        rew, values, mask: (N, T) float32; values are those the advantages were computed with.
        boot: (N,) float32.
    Returns:
        (N, T) float32, zero where mask is zero, detached.
    """
    if lam is None:
        return bootstrapped_reward_to_go(rew, mask, boot, gamma).detach()
    return ((gae(rew, values, mask, boot, gamma, lam) + values) * mask).detach()


def explained_variance(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[target - pred] / Var[target] over the valid steps: 1 for a perfect V, 0 for a
    constant at the mean, negative when V is worse than that; NaN when the targets are constant.

    Args:
        pred, target, mask: (N, T) float32.
    """
    _check_nt("pred", pred)
    _check_nt("target", target, pred)
    _check_nt("mask", mask, pred)
    with torch.no_grad():
        valid = mask > 0
        y, p = target[valid].double(), pred[valid].double()
        var = y.var(unbiased=False)
        if y.numel() == 0 or var == 0:
            return float("nan")
        return (1 - (y - p).var(unbiased=False) / var).item()


def advantages(
    rew: torch.Tensor,
    mask: torch.Tensor,
    *,
    weights: str = "rtg",
    baseline: str = "time",
    gamma: float = 1.0,
    discount_from_start: bool = False,
    normalize: bool = False,
    values: torch.Tensor | None = None,
    boot: torch.Tensor | None = None,
    gae_lambda: float | None = None,
) -> torch.Tensor:
    """The detached weight A_{i,t} of log pi(a_{i,t}|s_{i,t}) for one variant.

    weights "total": every step of episode i gets R_i (vanilla REINFORCE);
    weights "rtg": step t gets rtg_{i,t} (G_{i,t}, bootstrapped with `boot` when given).
    A baseline ("time", "time_loo", or "value": V(s_{i,t}) from `values`) is subtracted;
    with `gae_lambda` the weight is GAE's instead (baseline "value" only);
    `discount_from_start` multiplies step t by gamma^t (the gradient of E[sum_t gamma^t r_t]);
    `normalize` rescales the result to zero mean, unit std over the valid steps.

    Args:
        rew: (N, T) float32, zero where mask is zero.
        mask: (N, T) float32.
        values: (N, T) float32, V(s_{i,t}); needed by baseline "value".
        boot: (N,) float32, v_i (see bootstrap_values); None: 0, every end is terminal.
        gae_lambda: lambda of GAE; None: no GAE.
    Returns:
        (N, T) float32, zero where mask is zero, no gradient.
    """
    _check_nt("rew", rew)
    _check_nt("mask", mask, rew)
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r}: use one of {', '.join(BASELINES)}")
    if baseline == "value":
        if values is None:
            raise ValueError("baseline='value' needs values: (N, T) V(s_t)")
        _check_nt("values", values, rew)
    if gae_lambda is not None:
        if baseline != "value":
            raise ValueError(f"gae_lambda={gae_lambda!r} needs baseline='value'")
        zero = torch.zeros_like(rew[:, 0])
        w = gae(rew, values, mask, zero if boot is None else boot, gamma, gae_lambda)
    else:
        if weights == "total":
            w = total_return(rew, gamma)[:, None].expand_as(rew)
        elif weights == "rtg":
            # the notes' reward-to-go, or G_{i,t} continued with v_i where a value exists
            w = (
                reward_to_go(rew, gamma)
                if boot is None
                else bootstrapped_reward_to_go(rew, mask, boot, gamma)
            )
        else:
            raise ValueError(f"weights={weights!r}: use one of {', '.join(WEIGHTS)}")
        if baseline == "time":
            w = w - time_baseline(w, mask)[None, :]
        elif baseline == "time_loo":
            w = w - loo_time_baseline(w, mask)
        elif baseline == "value":
            if weights != "rtg":
                raise ValueError("baseline='value' needs weights='rtg'")
            w = w - values
    if discount_from_start and gamma != 1.0:
        t = torch.arange(rew.shape[1], device=rew.device, dtype=rew.dtype)
        w = w * gamma**t
    if normalize:
        n = mask.sum()
        mean = (w * mask).sum() / n
        std = (((w - mean) * mask).pow(2).sum() / (n - 1).clamp(min=1)).sqrt()
        w = (w - mean) / (std + 1e-8)
    return (w * mask).detach()
