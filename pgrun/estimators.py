"""The weights that multiply log pi(a_t|s_t): pure functions on (N, T) tensors.

Notation (the notes'): N episodes i, time steps t, rewards r_{i,t}, and a mask m_{i,t} that is 1
while episode i is running. Rewards are zero where the mask is zero.

    total return    R_i        = sum_t gamma^t r_{i,t}
    reward-to-go    rtg_{i,t}  = sum_{t' >= t} gamma^(t'-t) r_{i,t'}
    time baseline   b_t        = sum_i m_{i,t} w_{i,t} / sum_i m_{i,t}
    leave-one-out   b_{i,t}    = sum_{j != i} m_{j,t} w_{j,t} / sum_{j != i} m_{j,t}
    advantage       A_{i,t}    = (w_{i,t} - b) m_{i,t}, detached
"""

from __future__ import annotations

import torch

WEIGHTS = ("total", "rtg")
BASELINES = ("none", "time", "time_loo")


def _check_nt(name: str, x: torch.Tensor, like: torch.Tensor | None = None) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be (N, T), got shape {tuple(x.shape)}")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name} must have the shape of rew {tuple(like.shape)}, got {tuple(x.shape)}")


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


def advantages(
    rew: torch.Tensor,
    mask: torch.Tensor,
    *,
    weights: str = "rtg",
    baseline: str = "time",
    gamma: float = 1.0,
    discount_from_start: bool = False,
    normalize: bool = False,
) -> torch.Tensor:
    """The detached weight A_{i,t} of log pi(a_{i,t}|s_{i,t}) for one variant.

    weights "total": every step of episode i gets R_i (vanilla REINFORCE);
    weights "rtg": step t gets rtg_{i,t}. A baseline ("time", "time_loo") is subtracted;
    `discount_from_start` multiplies step t by gamma^t (the gradient of E[sum_t gamma^t r_t]);
    `normalize` rescales the result to zero mean, unit std over the valid steps.

    Args:
        rew: (N, T) float32, zero where mask is zero.
        mask: (N, T) float32.
    Returns:
        (N, T) float32, zero where mask is zero, no gradient.
    """
    _check_nt("rew", rew)
    _check_nt("mask", mask, rew)
    if weights == "total":
        w = total_return(rew, gamma)[:, None].expand_as(rew)
    elif weights == "rtg":
        w = reward_to_go(rew, gamma)
    else:
        raise ValueError(f"weights={weights!r}: use one of {', '.join(WEIGHTS)}")
    if baseline == "time":
        w = w - time_baseline(w, mask)[None, :]
    elif baseline == "time_loo":
        w = w - loo_time_baseline(w, mask)
    elif baseline != "none":
        raise ValueError(f"baseline={baseline!r}: use one of {', '.join(BASELINES)}")
    if discount_from_start and gamma != 1.0:
        t = torch.arange(rew.shape[1], device=rew.device, dtype=rew.dtype)
        w = w * gamma**t
    if normalize:
        n = mask.sum()
        mean = (w * mask).sum() / n
        std = (((w - mean) * mask).pow(2).sum() / (n - 1).clamp(min=1)).sqrt()
        w = (w - mean) / (std + 1e-8)
    return (w * mask).detach()
