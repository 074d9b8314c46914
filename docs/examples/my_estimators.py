"""Own estimators for pgrun: weights(batch, gamma) -> (N, T) float32 (see docs/own-estimator.md).

pgrun variant=rtg variant.weights=docs/examples/my_estimators.py:rtg_loo
pgrun-check docs/examples/my_estimators.py:rtg_loo          # unbiased: exit 0
pgrun-check docs/examples/my_estimators.py:rtg_mean         # biased at small N: exit 1
pgrun-check docs/examples/my_estimators.py:rtg_same_action  # biased: exit 1
"""

import torch

from pgrun.estimators import reward_to_go


def rtg_loo(batch, gamma):
    """rtg_{i,t} - b_{i,t}, b the mean reward-to-go at t of the OTHER episodes still running."""
    m = batch.mask
    rtg = reward_to_go(batch.rew, gamma) * m
    others = (rtg.sum(0) - rtg) / (m.sum(0) - m).clamp(min=1)
    return rtg - others


def rtg_mean(batch, gamma):
    """rtg_{i,t} - b_t, b_t the mean over ALL running episodes, i's own included: O(1/N) bias."""
    m = batch.mask
    rtg = reward_to_go(batch.rew, gamma) * m
    return rtg - rtg.sum(0) / m.sum(0).clamp(min=1)


def rtg_same_action(batch, gamma):
    """The leave-one-out baseline over the other episodes that took the same action at t: it
    depends on a_t, so E[grad log pi(a_t|s_t) b] != 0 (biased)."""
    m = batch.mask
    rtg = reward_to_go(batch.rew, gamma) * m
    same = (batch.act[:, None, :] == batch.act[None, :, :]).float() * m[None] * m[:, None]
    same = same * (1 - torch.eye(len(m)))[:, :, None]  # j != i
    b = (same * rtg[None]).sum(1) / same.sum(1).clamp(min=1)
    return rtg - b
