"""The weights that multiply log pi(a_t|s_t): pure functions on (N, T) tensors.

Notation (the notes'): rows i, time steps t, rewards r_{i,t}, and a mask m_{i,t} that is 1 on
the steps the batch holds. Rewards are zero where the mask is zero.

Episode boundaries are per step: done_{i,t} is 1 where step t is the last step of its episode
in the batch (it terminated, was truncated, or the batch ends there and the episode goes on in
the next one). A row may hold several episodes; the next one starts at the step after a done
step. The notes' batch, N episodes from reset, one per row, is the special case where the only
done step of row i is its last valid step (`done=None` means exactly that): every function
then computes what it computed on one episode per row, bit for bit. tau_{i,t} is step t's time
within its own episode (see episode_time); in the notes' batch tau_{i,t} = t.

    total return    R_{i,t}    = sum over the steps t' of t's episode of gamma^(t'-t0) r_{i,t'}
                                 (t0: the episode's first step in the batch)
    reward-to-go    rtg_{i,t}  = r_{i,t} + gamma (1 - done_{i,t}) rtg_{i,t+1}
                               = sum_{t' >= t, same episode} gamma^(t'-t) r_{i,t'}
    time baseline   b_{i,t}    = mean of m w over the steps j with tau_j = tau_{i,t}
    leave-one-out   b_{i,t}    = the same mean without step (i, t) itself
    advantage       A_{i,t}    = (w_{i,t} - b) m_{i,t}, detached

With a state-value estimate V_{i,t} = V(s_{i,t}) (pgrun.value) and boot_{i,t}, the value of the
observation after step t where done_{i,t} (0 for a terminal state: see bootstrap_values):

    next value        V'_{i,t}    = boot_{i,t} if done_{i,t} else V_{i,t+1}
    bootstrapped rtg  G_{i,t}     = r_{i,t} + gamma (done_{i,t} boot_{i,t} + (1 - done_{i,t}) G_{i,t+1})
    TD error          delta_{i,t} = r_{i,t} + gamma V'_{i,t} - V_{i,t}
    GAE               A_{i,t}     = delta_{i,t} + gamma lambda (1 - done_{i,t}) A_{i,t+1}

lambda = 1 telescopes to G_{i,t} - V_{i,t}; lambda = 0 is delta_{i,t}.
"""

from __future__ import annotations

import numpy as np
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


# ----------------------------------------------------------------------- episode boundaries


def last_step(mask: torch.Tensor) -> torch.Tensor:
    """1 at each row's last valid step, else 0: the done flags of the notes' batch (one episode
    per row, from t = 0, contiguous).

    Args:
        mask: (N, T) float32.
    Returns:
        (N, T) float32.
    """
    _check_nt("mask", mask)
    after = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    return mask * (1 - after)


def _done(done: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """The (N, T) bool done flags, those of the notes' batch when `done` is None."""
    if done is None:
        return last_step(mask) > 0
    _check_nt("done", done, mask)
    return done.bool()


def episode_starts(done: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 where a step begins an episode of the batch: t = 0, and every valid step after a done
    step or after a masked one (a reset call of a fixed-length rollout). The padding after an
    episode's end belongs to that episode (it is masked).

    Args:
        done: (N, T) bool; mask: (N, T) float32.
    Returns:
        (N, T) bool.
    """
    _check_nt("done", done, mask)
    starts = torch.zeros_like(done, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = (done[:, :-1].bool() | (mask[:, :-1] == 0)) & (mask[:, 1:] > 0)
    return starts


def one_episode_per_row(
    done: torch.Tensor | None, mask: torch.Tensor, start: torch.Tensor | None = None
) -> bool:
    """True when the batch is the notes' layout: no valid step follows a done or a masked step
    in its row, and (with `start`) every row begins its episode, so tau_{i,t} = t."""
    if done is not None:
        cut = done.bool() | (mask == 0)
        before = (cut.long().cumsum(1) - cut.long()) > 0  # a done or masked step earlier in the row
        if bool((before & (mask > 0)).any()):
            return False
    return start is None or not bool(start.any())


def episode_time(
    done: torch.Tensor, mask: torch.Tensor, start: torch.Tensor | None = None
) -> torch.Tensor:
    """tau_{i,t}, step t's time within its own episode: 0 at an episode's first step, counting
    up; the first episode of row i starts at tau = start_i (an episode carried over from the
    previous batch), the later ones at 0.

    Args:
        done: (N, T) bool; mask: (N, T) float32.
        start: (N,) int64, the time within its episode of each row's first step; None: 0.
    Returns:
        (N, T) int64.
    """
    starts = episode_starts(done, mask)
    t = torch.arange(done.shape[1], device=done.device)
    first = torch.where(starts, t, torch.zeros_like(t)).cummax(1).values  # latest start <= t
    tau = t - first
    if start is not None:
        if start.shape != done.shape[:1]:
            raise ValueError(f"start must be (N,), got shape {tuple(start.shape)}")
        tau = tau + start.long()[:, None] * (first == 0)
    return tau


def _discounted_sum(x: torch.Tensor, discount: float, done: torch.Tensor) -> torch.Tensor:
    """y_{i,t} = x_{i,t} + discount (1 - done_{i,t}) y_{i,t+1}: the backward recursion, one
    step at a time (the textbook loop; episodes of any length anywhere in a row).

    On the CPU, outside autograd, the loop runs in numpy on time-major copies: the same
    multiply and add per step in the same dtype (so the same bits), at a few microseconds a
    step instead of torch's per-call overhead (about 2.5 ms for T = 128)."""
    keep = discount * (~done).to(x.dtype)
    if x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad):
        xs = x.detach().numpy().T.copy()  # (T, N)
        ks = keep.numpy().T.copy()
        ys = np.empty_like(xs)
        acc = np.zeros_like(xs[0])
        for t in range(xs.shape[0] - 1, -1, -1):
            np.multiply(ks[t], acc, out=acc)
            np.add(xs[t], acc, out=acc)
            ys[t] = acc
        return torch.from_numpy(np.ascontiguousarray(ys.T))
    out = torch.empty_like(x)
    acc = torch.zeros_like(x[:, 0])
    for t in range(x.shape[1] - 1, -1, -1):
        acc = x[:, t] + keep[:, t] * acc
        out[:, t] = acc
    return out


# ------------------------------------------------------------------- returns and baselines


def reward_to_go(
    rew: torch.Tensor,
    gamma: float = 1.0,
    done: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """rtg_{i,t} = sum_{t' >= t} gamma^(t'-t) r_{i,t'} over the steps of t's episode.

    With gamma = 1 and one episode per row this is the notes' flip / cumsum / flip:
    [1, 0, 3, 2] -> [6, 5, 5, 2].

    Args:
        rew: (N, T) float32, zero where the mask is zero.
        done: (N, T) bool episode ends (needs `mask`); None: each row is one episode.
        mask: (N, T) float32.
    Returns:
        (N, T) float32.
    """
    _check_nt("rew", rew)
    if done is not None:
        if mask is None:
            raise ValueError("reward_to_go with done needs the mask")
        _check_nt("mask", mask, rew)
        if not one_episode_per_row(done, mask):
            return _discounted_sum(rew, gamma, _done(done, mask))
    if gamma == 1.0:
        return rew.flip(1).cumsum(1).flip(1)
    T = rew.shape[1]
    t = torch.arange(T, device=rew.device, dtype=rew.dtype)
    lag = t[None, :] - t[:, None]  # lag[t, t'] = t' - t
    discount = torch.where(lag >= 0, gamma ** lag.clamp(min=0), torch.zeros_like(lag))  # (T, T)
    return rew @ discount.T


def total_return(rew: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """R_i = sum_t gamma^t r_{i,t}, the reward-to-go from t = 0 of a row that is one episode.

    Args:
        rew: (N, T) float32.
    Returns:
        (N,) float32.
    """
    return reward_to_go(rew, gamma)[:, 0]


def episode_return(
    rew: torch.Tensor, mask: torch.Tensor, done: torch.Tensor | None = None, gamma: float = 1.0
) -> torch.Tensor:
    """R_{i,t}: every step gets the total return of its episode's steps in the batch,
    sum_{t'} gamma^(t'-t0) r_{i,t'} from the episode's first step t0 (vanilla REINFORCE's weight).

    Args:
        rew, mask: (N, T) float32; done: (N, T) bool, None: each row is one episode.
    Returns:
        (N, T) float32, zero where mask is zero.
    """
    _check_nt("rew", rew)
    _check_nt("mask", mask, rew)
    if one_episode_per_row(done, mask):
        return total_return(rew, gamma)[:, None] * mask
    done = _done(done, mask)
    rtg = _discounted_sum(rew, gamma, done)
    t = torch.arange(rew.shape[1], device=rew.device)
    starts = episode_starts(done, mask)
    first = torch.where(starts, t, torch.zeros_like(t)).cummax(1).values
    return rtg.gather(1, first) * mask


def time_baseline(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """b_t = mean of w_{i,t} over the rows still running at t (0 where none is): the notes'
    baseline, for one episode per row (tau = t).

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


def _sums_by_time(w: torch.Tensor, mask: torch.Tensor, tau: torch.Tensor):
    """(sum of m w, sum of m) over the steps with each step's episode time: two (N, T)."""
    idx = tau.reshape(-1)
    size = int(idx.max()) + 1 if idx.numel() else 1
    flat = (w * mask).reshape(-1)
    total = torch.zeros(size, dtype=w.dtype, device=w.device).index_add_(0, idx, flat)
    count = torch.zeros(size, dtype=w.dtype, device=w.device).index_add_(0, idx, mask.reshape(-1))
    return total[tau], count[tau]


def episode_time_baseline(w: torch.Tensor, mask: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """b_{i,t} = mean of m w over every step of the batch at the same time within its episode,
    tau_j = tau_{i,t} (time_baseline when each row is one episode, there as a (T,) row).

    Args:
        w, mask: (N, T) float32; tau: (N, T) int64 (see episode_time).
    Returns:
        (N, T) float32.
    """
    _check_nt("w", w)
    _check_nt("mask", mask, w)
    _check_nt("tau", tau, w)
    total, count = _sums_by_time(w, mask, tau)
    return total / count.clamp(min=1)


def episode_loo_time_baseline(
    w: torch.Tensor, mask: torch.Tensor, tau: torch.Tensor
) -> torch.Tensor:
    """The leave-one-out form of episode_time_baseline: the mean over the other steps j != (i, t)
    with tau_j = tau_{i,t}; 0 where there is none.

    Args:
        w, mask: (N, T) float32; tau: (N, T) int64.
    Returns:
        (N, T) float32.
    """
    _check_nt("w", w)
    _check_nt("mask", mask, w)
    _check_nt("tau", tau, w)
    total, count = _sums_by_time(w, mask, tau)
    return (total - w * mask) / (count - mask).clamp(min=1)


# ------------------------------------------------------------------------ with a value net


def bootstrap_values(
    final_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    truncation: str = "bootstrap",
    done: torch.Tensor | None = None,
) -> torch.Tensor:
    """boot_{i,t}, the value an episode's return continues with after its done step t.

    boot = V(the observation after step t) where the episode was truncated (a time limit or the
    horizon) and `truncation` is "bootstrap", and where the batch ended mid-episode (done but
    neither terminated nor truncated: the episode goes on in the next batch, always
    bootstrapped); 0 where it terminated (never bootstrap a terminal state), where `truncation`
    is "terminate" and the episode was truncated, and on every step that is not done.

    Args:
        final_values: (K,) float32, V of the observations after the K done steps, in the order
            of done.nonzero() (row by row, in time order). With (N,) flags: one per row.
        terminated, truncated: (N, T) bool per step (or (N,) bool, one episode per row: then
            the result is (N,), one value per episode).
        truncation: "bootstrap" | "terminate".
        done: (N, T) bool, the steps `final_values` belong to; None: terminated | truncated.
    Returns:
        (N, T) float32 (or (N,)), detached.
    """
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation={truncation!r}: use one of {', '.join(TRUNCATIONS)}")
    if terminated.dim() == 1:  # one episode per row: one value each
        if final_values.dim() != 1 or terminated.shape != final_values.shape:
            raise ValueError(
                f"final_values and terminated must both be (N,): got "
                f"{tuple(final_values.shape)}, {tuple(terminated.shape)}"
            )
        if truncated.shape != final_values.shape:
            raise ValueError(f"truncated must be (N,), got shape {tuple(truncated.shape)}")
        if truncation == "terminate":
            return torch.zeros_like(final_values)
        keep = truncated.bool() & ~terminated.bool()
        return torch.where(keep, final_values, torch.zeros_like(final_values)).detach()
    if terminated.dim() != 2 or truncated.shape != terminated.shape:
        raise ValueError(
            f"terminated and truncated must both be (N, T): got {tuple(terminated.shape)}, "
            f"{tuple(truncated.shape)}"
        )
    term, trunc = terminated.bool(), truncated.bool()
    done = term | trunc if done is None else done.bool()
    if done.shape != term.shape:
        raise ValueError(f"done must be {tuple(term.shape)}, got {tuple(done.shape)}")
    k = int(done.sum())
    if final_values.shape != (k,):
        raise ValueError(
            f"final_values must be (K,) = ({k},), one per done step, got {tuple(final_values.shape)}"
        )
    keep = done & ~term & (~trunc if truncation == "terminate" else torch.ones_like(done))
    out = torch.zeros(term.shape, dtype=final_values.dtype, device=final_values.device)
    out[done] = final_values.detach()
    return torch.where(keep, out, torch.zeros_like(out))


def _boot(boot: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """boot as (N, T): an (N,) boot (one value per row) sits on each row's last valid step."""
    if boot.dim() == 1:
        if boot.shape != values.shape[:1]:
            raise ValueError(
                f"boot must be (N,) = ({values.shape[0]},) or (N, T), got shape {tuple(boot.shape)}"
            )
        return last_step(mask) * boot[:, None]
    _check_nt("boot", boot, values)
    return boot


def next_values(
    values: torch.Tensor,
    mask: torch.Tensor,
    boot: torch.Tensor,
    done: torch.Tensor | None = None,
) -> torch.Tensor:
    """V'_{i,t} = V(s_{i,t+1}): V_{i,t+1} inside an episode, boot_{i,t} after its done step,
    0 on padding.

    Args:
        values: (N, T) float32, V(s_{i,t}).
        mask: (N, T) float32.
        boot: (N, T) float32 (see bootstrap_values), or (N,) with one episode per row.
        done: (N, T) bool; None: each row is one episode.
    Returns:
        (N, T) float32.
    """
    _check_nt("values", values)
    _check_nt("mask", mask, values)
    boot = _boot(boot, values, mask)
    done = _done(done, mask)
    shifted = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    return torch.where(done, boot, shifted) * mask


def td_errors(
    rew: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    boot: torch.Tensor,
    gamma: float = 1.0,
    done: torch.Tensor | None = None,
) -> torch.Tensor:
    """delta_{i,t} = r_{i,t} + gamma V'_{i,t} - V_{i,t} (V' from next_values).

    Args:
        rew, values, mask: (N, T) float32.
        boot: (N, T) float32, or (N,); done: (N, T) bool or None.
    Returns:
        (N, T) float32, zero where mask is zero.
    """
    _check_nt("rew", rew)
    _check_nt("values", values, rew)
    _check_nt("mask", mask, rew)
    return (rew + gamma * next_values(values, mask, boot, done) - values) * mask


def gae(
    rew: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    boot: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    done: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalised advantage estimation, A_{i,t} = delta_{i,t} + gamma lambda (1 - done) A_{i,t+1}.

    It is the reward-to-go of the TD errors with discount gamma * lambda (Schulman et al. 2016):
    lambda = 1 gives G_{i,t} - V_{i,t} (bootstrapped_reward_to_go minus V), lambda = 0 gives
    delta_{i,t}.

    Args:
        rew, values, mask: (N, T) float32.
        boot: (N, T) float32 (see bootstrap_values), or (N,) with one episode per row.
        gamma: discount; lam: lambda in [0, 1].
        done: (N, T) bool; None: each row is one episode.
    Returns:
        (N, T) float32, zero where mask is zero.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam!r}: use a value in [0, 1]")
    delta = td_errors(rew, values, mask, boot, gamma, done)
    if gamma * lam == 0.0:
        return delta
    return reward_to_go(delta, gamma * lam, done, mask) * mask


def bootstrapped_reward_to_go(
    rew: torch.Tensor,
    mask: torch.Tensor,
    boot: torch.Tensor,
    gamma: float = 1.0,
    done: torch.Tensor | None = None,
) -> torch.Tensor:
    """G_{i,t} = sum_{t' >= t} gamma^(t'-t) r_{i,t'} + gamma^(L - t) boot over t's episode,
    L its done step + 1: the reward-to-go of the rewards with gamma * boot added at each done step.

    Args:
        rew, mask: (N, T) float32.
        boot: (N, T) float32 (see bootstrap_values), or (N,) with one episode per row.
        done: (N, T) bool; None: each row is one episode.
    Returns:
        (N, T) float32, zero where mask is zero.
    """
    _check_nt("rew", rew)
    _check_nt("mask", mask, rew)
    boot = _boot(boot, rew, mask)
    return reward_to_go(rew + gamma * boot, gamma, done, mask if done is not None else None) * mask


def value_targets(
    rew: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    boot: torch.Tensor,
    gamma: float = 1.0,
    lam: float | None = None,
    done: torch.Tensor | None = None,
) -> torch.Tensor:
    """What V(s_{i,t}) is fitted to: G_{i,t} (lam None), or the lambda-return A^GAE + V.

    Args:
        rew, values, mask: (N, T) float32; values are those the advantages were computed with.
        boot: (N, T) float32, or (N,); done: (N, T) bool or None.
    Returns:
        (N, T) float32, zero where mask is zero, detached.
    """
    if lam is None:
        return bootstrapped_reward_to_go(rew, mask, boot, gamma, done).detach()
    return ((gae(rew, values, mask, boot, gamma, lam, done) + values) * mask).detach()


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
    done: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    given: torch.Tensor | None = None,
) -> torch.Tensor:
    """The detached weight A_{i,t} of log pi(a_{i,t}|s_{i,t}) for one variant.

    weights "total": every step of an episode gets its return R (vanilla REINFORCE);
    weights "rtg": step t gets rtg_{i,t} (G_{i,t}, bootstrapped with `boot` when given).
    A baseline ("time", "time_loo": over the steps at the same time tau within their episodes,
    or "value": V(s_{i,t}) from `values`) is subtracted;
    with `gae_lambda` the weight is GAE's instead (baseline "value" only);
    `discount_from_start` multiplies step t by gamma^tau (the gradient of E[sum_t gamma^t r_t]);
    `normalize` rescales the result to zero mean, unit std over the valid steps.

    Args:
        rew: (N, T) float32, zero where mask is zero.
        mask: (N, T) float32.
        values: (N, T) float32, V(s_{i,t}); needed by baseline "value".
        boot: (N, T) float32 or (N,), see bootstrap_values; None: 0, every end is terminal.
        gae_lambda: lambda of GAE; None: no GAE.
        done: (N, T) bool episode ends; None: each row is one episode (the notes' batch).
        start: (N,) int64, each row's first step's time within its episode; None: 0.
        given: (N, T) float32 weights computed elsewhere (a plug-in, pgrun.plugins), used in
            place of `weights`; the baseline and the rest apply to them as to the built-ins.
    Returns:
        (N, T) float32, zero where mask is zero, no gradient.
    """
    return advantages_and_targets(
        rew,
        mask,
        weights=weights,
        baseline=baseline,
        gamma=gamma,
        discount_from_start=discount_from_start,
        normalize=normalize,
        values=values,
        boot=boot,
        gae_lambda=gae_lambda,
        done=done,
        start=start,
        given=given,
    )[0]


def advantages_and_targets(
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
    done: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    given: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(A, target): the weights of `advantages` and, with baseline "value", what V is fitted
    to (value_targets: G_{i,t}, or the lambda-return A^GAE + V with `gae_lambda`), from one
    pass: GAE or the bootstrapped return is computed once for both. target is None without
    a value baseline. Arguments as for `advantages`; both results (N, T), detached. With
    `given` weights and baseline "value", V is still fitted to the returns G_{i,t}.
    """
    _check_nt("rew", rew)
    _check_nt("mask", mask, rew)
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r}: use one of {', '.join(BASELINES)}")
    if baseline == "value":
        if values is None:
            raise ValueError("baseline='value' needs values: (N, T) V(s_t)")
        _check_nt("values", values, rew)
    notes = one_episode_per_row(done, mask, start)  # tau = t: the (T,) baselines apply
    if notes:  # the notes' layout: the formulas written for it, as is
        done, start = None, None
    target = None
    if given is not None:
        _check_nt("given", given, rew)
        if gae_lambda is not None:
            raise ValueError("gae_lambda computes its own weights: drop the given weights")
    if gae_lambda is not None:
        if baseline != "value":
            raise ValueError(f"gae_lambda={gae_lambda!r} needs baseline='value'")
        zero = torch.zeros_like(rew[:, 0])
        w = gae(rew, values, mask, zero if boot is None else boot, gamma, gae_lambda, done)
        target = ((w + values) * mask).detach()
    else:
        if given is not None:
            w = given
            if baseline == "value":  # V's target: the returns, as for weights "rtg"
                zero = torch.zeros_like(rew)
                g = bootstrapped_reward_to_go(
                    rew, mask, zero if boot is None else boot, gamma, done
                )
                target = g.detach()
        elif weights == "total":
            w = episode_return(rew, mask, done, gamma)
        elif weights == "rtg":
            # the notes' reward-to-go, or G_{i,t} continued with boot where a value exists
            if boot is not None:
                w = bootstrapped_reward_to_go(rew, mask, boot, gamma, done)
            elif baseline == "value":
                w = bootstrapped_reward_to_go(rew, mask, torch.zeros_like(rew), gamma, done)
            else:
                w = reward_to_go(rew, gamma, done, mask if done is not None else None)
        else:
            raise ValueError(f"weights={weights!r}: use one of {', '.join(WEIGHTS)}")
        if baseline in ("time", "time_loo") and not notes:
            tau = episode_time(_done(done, mask), mask, start)
            by_time = episode_time_baseline if baseline == "time" else episode_loo_time_baseline
            w = w - by_time(w, mask, tau)
        elif baseline == "time":
            w = w - time_baseline(w, mask)[None, :]
        elif baseline == "time_loo":
            w = w - loo_time_baseline(w, mask)
        elif baseline == "value":
            if given is None and weights != "rtg":
                raise ValueError("baseline='value' needs weights='rtg'")
            if target is None:
                target = w.detach()
            w = w - values
    if discount_from_start and gamma != 1.0:
        if notes:
            t = torch.arange(rew.shape[1], device=rew.device, dtype=rew.dtype)
            w = w * gamma**t
        else:
            w = w * gamma ** episode_time(_done(done, mask), mask, start).to(rew.dtype)
    if normalize:
        n = mask.sum()
        mean = (w * mask).sum() / n
        std = (((w - mean) * mask).pow(2).sum() / (n - 1).clamp(min=1)).sqrt()
        w = (w - mean) / (std + 1e-8)
    return (w * mask).detach(), target
