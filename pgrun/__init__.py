"""pgrun: the policy-gradient estimators of the lecture notes, as an experiment runner.

The Python API (the trainer goes through the same functions)::

    import pgrun
    env = pgrun.make_env("CartPole-v1", num_envs=16, seed=0)
    policy = pgrun.make_policy(env, hidden_sizes=[64, 64])
    batch = pgrun.collect_episodes(env, policy, horizon=500, seed=0)
    loss = pgrun.surrogate_loss(policy, batch, variant="rtg_baseline", gamma=1.0)
    loss.backward()

Names are imported on first use, so `import pgrun` (and the `pgrun --help` command) do not
load torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "make_env": "pgrun.envs",
    "make_policy": "pgrun.policies",
    "collect_episodes": "pgrun.rollout",
    "Batch": "pgrun.rollout",
    "surrogate_loss": "pgrun.losses",
    "pg_loss": "pgrun.losses",
    "advantages": "pgrun.estimators",
    "reward_to_go": "pgrun.estimators",
    "train": "pgrun.trainer",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pgrun' has no attribute {name!r}")
