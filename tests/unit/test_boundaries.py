"""Per-step episode boundaries: every estimator on rows that hold several episodes, and the
notes' batch (one episode per row) as its special case, bit for bit."""

from __future__ import annotations

import itertools

import one_episode_per_row as old
import pytest
import torch
from torch.testing import assert_close

import pgrun
from pgrun import estimators as E
from pgrun.rollout import Batch


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def whole_episodes(seed: int, n: int = 9, horizon: int = 13, dtype=torch.float32):
    """N episodes from reset, one per row, of random lengths (one of full length): rewards,
    values, mask, done (each row's last valid step) and one bootstrap value per row."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, horizon + 1, (n,), generator=g)
    lengths[0] = horizon
    mask = (torch.arange(horizon)[None, :] < lengths[:, None]).to(dtype)
    rew = torch.randn(n, horizon, generator=g, dtype=dtype) * mask
    val = torch.randn(n, horizon, generator=g, dtype=dtype) * mask
    boot = torch.randn(n, generator=g, dtype=dtype) * (torch.rand(n, generator=g) < 0.5)
    done = E.last_step(mask) > 0
    return rew, val, mask, done, boot


KNOBS = list(
    itertools.product(
        [("total", "none"), ("total", "time"), ("total", "time_loo"), ("rtg", "none")]
        + [("rtg", "time"), ("rtg", "time_loo"), ("rtg", "value")],
        [1.0, 0.97],
        [False, True],
        [False, True],
    )
)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("knobs, gamma, from_start, normalize", KNOBS)
def test_advantages_of_the_notes_batch_are_bit_for_bit_the_old_ones(
    seed, knobs, gamma, from_start, normalize
):
    """N whole episodes with their per-step done flags, boot on each row's last step: the same
    tensors (torch.equal) as the estimators written for one episode per row."""
    rew, val, mask, done, boot = whole_episodes(seed)
    weights, baseline = knobs
    kw = dict(weights=weights, baseline=baseline, gamma=gamma, normalize=normalize)
    kw["discount_from_start"] = from_start
    if baseline == "value":
        kw.update(values=val)
        boot_nt = E.last_step(mask) * boot[:, None]
        new = E.advantages(rew, mask, **kw, boot=boot_nt, done=done, start=torch.zeros(9).long())
        assert torch.equal(new, old.advantages(rew, mask, **kw, boot=boot))
        for lam in (0.0, 0.9, 1.0):
            new = E.advantages(rew, mask, **kw, boot=boot_nt, gae_lambda=lam, done=done)
            assert torch.equal(new, old.advantages(rew, mask, **kw, boot=boot, gae_lambda=lam))
    else:
        new = E.advantages(rew, mask, **kw, done=done, start=torch.zeros(9).long())
        assert torch.equal(new, old.advantages(rew, mask, **kw))


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.95), (0.9, 0.0), (0.8, 1.0)])
def test_value_estimators_of_the_notes_batch_are_bit_for_bit_the_old_ones(gamma, lam):
    rew, val, mask, done, boot = whole_episodes(3)
    boot_nt = E.last_step(mask) * boot[:, None]
    assert torch.equal(E.reward_to_go(rew, gamma, done, mask), old.reward_to_go(rew, gamma))
    assert torch.equal(E.next_values(val, mask, boot_nt, done), old.next_values(val, mask, boot))
    assert torch.equal(
        E.td_errors(rew, val, mask, boot_nt, gamma, done),
        old.td_errors(rew, val, mask, boot, gamma),
    )
    assert torch.equal(
        E.gae(rew, val, mask, boot_nt, gamma, lam, done), old.gae(rew, val, mask, boot, gamma, lam)
    )
    assert torch.equal(
        E.bootstrapped_reward_to_go(rew, mask, boot_nt, gamma, done),
        old.bootstrapped_reward_to_go(rew, mask, boot, gamma),
    )
    for lam_ in (None, lam):
        assert torch.equal(
            E.value_targets(rew, val, mask, boot_nt, gamma, lam_, done),
            old.value_targets(rew, val, mask, boot, gamma, lam_),
        )


def test_bootstrap_values_per_step_on_a_collected_batch():
    """A CartPole batch from collect_episodes: boot (N, T) from the per-step flags holds the
    per-episode values of the old (N,) contract on each row's last step, nothing elsewhere."""
    torch.manual_seed(0)
    env = pgrun.make_env("CartPole-v1", num_envs=6, seed=0)
    policy = pgrun.make_policy(env, hidden_sizes=[8])
    b = pgrun.collect_episodes(env, policy, horizon=12, seed=0)
    assert b.truncated.any() and b.terminated.any()
    final = torch.randn(b.final_obs.shape[0])
    per_step = E.bootstrap_values(final, b.terminated, b.truncated, "bootstrap", b.done)
    per_row = old.bootstrap_values(final, b.terminated.any(1), b.truncated.any(1), "bootstrap")
    assert torch.equal(per_step, E.last_step(b.mask) * per_row[:, None])
    env.close()


# ----------------------------------------------------------- several episodes in one row


def pack(rew, val, mask, per_row: int, boot=None, reset_calls=False):
    """The episodes of a one-per-row batch laid out `per_row` to a row, back to back, padded:
    (rew, val, mask, done, boot, where) with `where[i]` = (row, first column) of episode i.
    reset_calls: a masked step after every episode, and at the start of odd rows (the calls
    that reset a copy in a fixed-length rollout)."""
    n = rew.shape[0]
    lengths = mask.sum(1).long().tolist()
    rows = [list(range(i, min(i + per_row, n))) for i in range(0, n, per_row)]
    gap = int(reset_calls)
    width = max(sum(lengths[i] + gap for i in r) for r in rows) + gap
    out = [torch.zeros(len(rows), width, dtype=rew.dtype) for _ in range(5)]
    where = {}
    for r, episodes in enumerate(rows):
        col = gap * (r % 2)
        for i in episodes:
            k = lengths[i]
            where[i] = (r, col)
            out[0][r, col : col + k] = rew[i, :k]
            out[1][r, col : col + k] = val[i, :k]
            out[2][r, col : col + k] = 1
            out[3][r, col + k - 1] = 1
            if boot is not None:
                out[4][r, col + k - 1] = boot[i]
            col += k + gap
    p_rew, p_val, p_mask, p_done, p_boot = out
    return p_rew, p_val, p_mask, p_done.bool(), p_boot, where


def unpack(x, mask, where):
    """The packed (rows, W) tensor back as one episode per row (N, T), zero on padding."""
    lengths = mask.sum(1).long().tolist()
    out = torch.zeros_like(mask)
    for i, (r, col) in where.items():
        out[i, : lengths[i]] = x[r, col : col + lengths[i]]
    return out


@pytest.mark.parametrize("per_row", [2, 3, 9])
@pytest.mark.parametrize("knobs, gamma, from_start, normalize", KNOBS)
def test_several_episodes_per_row_give_the_same_weights(
    per_row, knobs, gamma, from_start, normalize
):
    """The same episodes, packed several to a row: every variant's weights are those of the
    one-per-row layout, step for step (the time baselines are taken at the time within the
    episode, not the column)."""
    rew, val, mask, _, boot = whole_episodes(5, dtype=torch.float64)
    weights, baseline = knobs
    kw = dict(weights=weights, baseline=baseline, gamma=gamma, normalize=normalize)
    kw["discount_from_start"] = from_start
    p_rew, p_val, p_mask, p_done, p_boot, where = pack(rew, val, mask, per_row, boot)
    lams = [None]
    if baseline == "value":
        kw.update(boot=boot)
        lams = [None, 0.0, 0.9, 1.0]
    for lam in lams:
        expected = E.advantages(rew, mask, values=val, gae_lambda=lam, **kw)
        kw_p = {**kw, "boot": p_boot} if baseline == "value" else kw
        packed = E.advantages(p_rew, p_mask, values=p_val, gae_lambda=lam, done=p_done, **kw_p)
        assert_close(unpack(packed, mask, where), expected, rtol=1e-10, atol=1e-10)
        assert torch.equal(packed, packed * p_mask)


def test_a_row_with_two_episodes_by_hand():
    """Row 0: an episode of 2 steps (terminated), then one of 3 (truncated, V after it = 10).
    Row 1: one episode of 4 steps carried over from the previous batch (3 steps in), cut by
    the end of the batch with V after it = 4. gamma = 0.5."""
    rew = t([[1, 2, 1, 1, 4], [2, 2, 2, 2, 0]])
    mask = t([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    done = torch.tensor([[0, 1, 0, 0, 1], [0, 0, 0, 1, 0]]).bool()
    start = torch.tensor([0, 3])
    boot = t([[0, 0, 0, 0, 10], [0, 0, 0, 4, 0]])
    assert E.episode_time(done, mask, start).tolist() == [[0, 1, 0, 1, 2], [3, 4, 5, 6, 7]]
    # rtg: row 0: [1 + 1, 2 | 1 + .5 * (1 + .5 * 4), 1 + 2, 4]
    rtg = t([[2, 2, 2.5, 3, 4], [3.75, 3.5, 3, 2, 0]])
    assert_close(E.reward_to_go(rew, 0.5, done, mask), rtg)
    # with boot: G = rtg + gamma^(L - t) boot: row 0's second episode + .5^3, .5^2, .5 * 10;
    # row 1: + .5^4, .5^3, .5^2, .5 * 4
    g = rtg + t([[0, 0, 1.25, 2.5, 5], [0.25, 0.5, 1, 2, 0]])
    assert_close(E.bootstrapped_reward_to_go(rew, mask, boot, 0.5, done), g)
    # total (gamma = 1): each step gets its episode's return in the batch
    assert_close(E.episode_return(rew, mask, done), t([[3, 3, 6, 6, 6], [8, 8, 8, 8, 0]]))
    # time baseline at tau: tau 0: (2 + 2.5) / 2, tau 1: (2 + 3) / 2, tau 2: 4, tau >= 3: own
    adv = E.advantages(rew, mask, baseline="time", gamma=0.5, done=done, start=start)
    assert_close(adv, t([[-0.25, -0.5, 0.25, 0.5, 0], [0, 0, 0, 0, 0]]))
    loo = E.advantages(rew, mask, baseline="time_loo", gamma=0.5, done=done, start=start)
    assert_close(loo, t([[-0.5, -1, 0.5, 1, 4], [3.75, 3.5, 3, 2, 0]]))
    # TD errors: V' is V_{t+1} inside an episode, boot after its done step
    val = t([[1, 1, 2, 2, 2], [1, 1, 1, 1, 0]])
    delta = rew + 0.5 * t([[1, 0, 2, 2, 10], [1, 1, 1, 4, 0]]) - val
    assert_close(E.td_errors(rew, val, mask, boot, 0.5, done), delta * mask)
    # GAE with gamma lambda = 0.25 restarts after each done step
    a = delta.clone()
    for row, stop in ((0, 1), (0, 4), (1, 3)):
        for col in range(stop - 1, -1 if stop != 4 else 1, -1):
            a[row, col] = delta[row, col] + 0.25 * a[row, col + 1]
    assert_close(E.gae(rew, val, mask, boot, 0.5, 0.5, done), a * mask)


def test_bootstrap_values_per_step_by_hand():
    """final_values come one per done step, row by row; a terminal step gets 0, a truncated one
    its value unless truncation=terminate, a cut by the end of the batch always its value."""
    terminated = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]]).bool()
    truncated = torch.tensor([[0, 0, 0, 1], [0, 1, 0, 0]]).bool()
    done = terminated | truncated
    done[1, 3] = True  # row 1 ends mid-episode
    final = t([7, 8, 9, 10])  # (0, 1), (0, 3), (1, 1), (1, 3)
    boot = E.bootstrap_values(final, terminated, truncated, "bootstrap", done)
    assert_close(boot, t([[0, 0, 0, 8], [0, 9, 0, 10]]))
    boot = E.bootstrap_values(final, terminated, truncated, "terminate", done)
    assert_close(boot, t([[0, 0, 0, 0], [0, 0, 0, 10]]))
    with pytest.raises(ValueError, match="final_values"):
        E.bootstrap_values(final[:3], terminated, truncated, "bootstrap", done)


def test_batch_rows_keep_their_final_observations():
    """Batch.rows picks rows and the final observations of their done steps."""
    mask = torch.ones(3, 3)
    term = torch.tensor([[0, 1, 0], [0, 0, 0], [1, 0, 0]]).bool()
    trunc = torch.zeros(3, 3, dtype=torch.bool)
    final = t([[1], [2], [3], [4], [5]])  # (0,1), (0,2) cut, (1,2) cut, (2,0), (2,2) cut
    z = torch.zeros(3, 3)
    b = Batch(z[..., None], z, z, mask, term, trunc, final, torch.tensor([0, 5, 0]))
    assert b.done.sum() == 5
    sub = b.rows(torch.tensor([2, 1]))
    assert sub.final_obs.tolist() == [[4], [5], [3]] and sub.start.tolist() == [0, 5]
    assert b.rows(slice(0, 1)).final_obs.tolist() == [[1], [2]]


@pytest.mark.parametrize("knobs, gamma, from_start, normalize", KNOBS[::3])
def test_masked_reset_calls_between_episodes_change_nothing(knobs, gamma, from_start, normalize):
    """A fixed-length rollout masks the call that resets a copy after an episode's end (and a
    row may begin with one): with such masked steps after every episode, and before the first
    in odd rows, every variant's weights are still those of the one-per-row layout."""
    rew, val, mask, _, boot = whole_episodes(7, dtype=torch.float64)
    weights, baseline = knobs
    kw = dict(weights=weights, baseline=baseline, gamma=gamma, normalize=normalize)
    kw["discount_from_start"] = from_start
    p_rew, p_val, p_mask, p_done, p_boot, where = pack(rew, val, mask, 3, boot, reset_calls=True)
    assert (p_mask[:, 0] == 0).any() and (p_mask == 0).sum() > p_mask.shape[0]
    lams = [None, 0.9] if baseline == "value" else [None]
    for lam in lams:
        extra = {"boot": boot} if baseline == "value" else {}
        expected = E.advantages(rew, mask, values=val, gae_lambda=lam, **kw, **extra)
        extra = {"boot": p_boot} if baseline == "value" else {}
        packed = E.advantages(
            p_rew, p_mask, values=p_val, gae_lambda=lam, done=p_done, **kw, **extra
        )
        assert_close(unpack(packed, mask, where), expected, rtol=1e-10, atol=1e-10)
        assert packed[p_mask == 0].abs().sum() == 0
