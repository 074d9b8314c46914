"""Typed config schema, registered in Hydra's ConfigStore.

Every YAML file under ``configs/`` is merged onto these dataclasses, so a typo'd key or a value
of the wrong type fails when the config is composed, before anything runs. Ranges (N >= 1,
0 < gamma <= 1, ...) are checked by :func:`validate`, which raises :class:`ConfigError` with one
line naming the key, the value and what is accepted.

This module imports no torch and no gymnasium: ``pgrun --help`` and ``pgrun --cfg job`` stay fast.
"""

import dataclasses
import difflib
import functools
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class Weights(str, Enum):
    """What multiplies log pi(a_t|s_t) before any baseline."""

    total = "total"  # the whole return of the episode, sum_t' r_t' (vanilla REINFORCE)
    rtg = "rtg"  # the reward-to-go, sum_{t' >= t} r_t' (causality)


WEIGHTS = tuple(w.value for w in Weights)


class Baseline(str, Enum):
    """What is subtracted from the weights."""

    none = "none"
    time = "time"  # b_t = mean of the weights over the batch's episodes still running at t
    time_loo = "time_loo"  # as `time` but leaving episode i out of its own b_t: exactly unbiased
    value = "value"  # b(s_t) = V(s_t), a state-value network fitted to the returns (`value:`)


class Truncation(str, Enum):
    """What an episode cut by a time limit (or the horizon T) is, for the value estimates."""

    bootstrap = "bootstrap"  # the return goes on: add gamma^k V(s_T) of the final observation
    terminate = "terminate"  # treat the cut as a terminal state: nothing after it


class OptimName(str, Enum):
    adam = "adam"
    sgd = "sgd"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


# auto: the env's own vectorised implementation where it has one, else sync.
# ("async" is a Python keyword, hence the functional form.)
Vectorization = Enum(
    "Vectorization",
    {m: m for m in ("auto", "vector_entry_point", "sync", "async")},
    type=str,
)


class Backend(str, Enum):
    """What steps the N copies of the env."""

    gymnasium = "gymnasium"  # gymnasium's vector envs (env.vectorization)
    envpool = "envpool"  # envpool's C++ pool (the `envpool` extra; CartPole, MuJoCo v5, Atari)
    auto = "auto"  # envpool where it is installed and takes the id, else gymnasium


@dataclass
class EnvConfig:
    id: str = MISSING
    """Any registered gymnasium id, e.g. CartPole-v1."""
    horizon: Optional[int] = None
    """T: episodes are cut after T steps. null: the env's own time limit."""
    backend: Backend = Backend.gymnasium
    """gymnasium | envpool | auto: what steps the N copies (docs/performance.md). envpool takes
    CartPole, the MuJoCo v5 set and ALE/<Game>-v5 (with its own frame preprocessing)."""
    num_threads: int = 1
    """env.backend=envpool: its worker threads (0: envpool's choice, one per copy up to the
    cores). The gymnasium backend ignores it."""
    vectorization: Vectorization = Vectorization["auto"]
    """How gymnasium steps the N copies: auto | vector_entry_point | sync | async."""
    kwargs: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to gymnasium.make_vec for the env."""
    solved_return: Optional[float] = None
    """Mean episodic return that counts as solved (shown in the summary); null: none."""
    random_return: Optional[float] = None
    """Mean return of a uniform-random policy (benchmarks/random_returns.py): with
    solved_return, the 0 and 1 of the comparison's normalised scores across envs; null: none."""
    normalize_obs: bool = False
    """Normalise observations with a running mean/std (updated after each batch's update),
    saved with the policy in policy.pt so a reloaded policy acts the same."""
    scale_rewards: bool = False
    """Divide the rewards the estimator sees by a running std of the discounted episode
    returns; the logged returns stay unscaled."""
    atari_preprocessing: bool = False
    """gymnasium's AtariPreprocessing on every copy (no-op starts, frame skip 4, 84x84 gray);
    the base env is made with frameskip=1."""
    frame_stack: int = 1
    """Observations are the last this many frames (1: no stacking)."""
    truncation: Truncation = Truncation.bootstrap
    """bootstrap | terminate: how an episode cut by a time limit or the horizon ends, where a
    value network exists (variant.baseline=value). bootstrap: the returns and TD errors of a
    truncated episode continue with gamma * V(final observation); a terminated episode never
    bootstraps. terminate: every end is terminal. The estimators without a value network (the
    notes' four) always treat the end of the batch's episodes as terminal."""


@dataclass
class PolicyConfig:
    name: str = "mlp"
    hidden_sizes: List[int] = field(default_factory=lambda: [32])
    """Widths of the hidden layers; [] is a linear policy."""
    activation: str = "tanh"
    """tanh | relu | elu | gelu | silu | leaky_relu."""
    log_std_init: float = -0.5
    """Initial log standard deviation of a Gaussian policy (Box actions)."""
    squash: bool = False
    """Box actions: tanh-squash the Gaussian into the bounds (log-prob corrected) instead of
    clipping the sampled action when stepping the env."""


@dataclass
class VariantConfig:
    name: str = MISSING
    """Label of the preset (used in run names); the knobs below define the estimator."""
    weights: str = "rtg"
    """total | rtg | module:function: whole-episode return, reward-to-go, or your own weights
    (a function (batch, gamma) -> (N, T) tensor, see pgrun/plugins.py)."""
    baseline: Baseline = Baseline.time
    """none | time | time_loo: subtracted from the weights."""
    inner_steps: int = 1
    """K: gradient steps per batch; K > 1 reuses the batch with per-step ratios exp(logp - logp_old)."""
    normalize_advantages: bool = False
    """Scale the weights to zero mean and unit std over the batch's valid steps."""
    gae_lambda: Optional[float] = None
    """lambda in [0, 1] of generalised advantage estimation, A_t = sum_k (gamma lambda)^k delta_{t+k}
    with the TD errors delta_t = r_t + gamma V(s_{t+1}) - V(s_t); needs baseline=value.
    1 gives the (bootstrapped) reward-to-go minus V, 0 the one-step TD error. null: off."""
    clip: Optional[float] = None
    """epsilon > 0 of PPO's clipped objective min(rho A, clip(rho, 1 - eps, 1 + eps) A) in place of
    rho A (the ratios are then used from the first inner step). null: no clipping."""
    target_kl: Optional[float] = None
    """Stop the batch's inner steps before the first minibatch step whose approximate
    KL(pi_old || pi) exceeds this (> 0); logged as stats/stopped_early. null: never stop."""
    minibatches: int = 1
    """M: each inner step shuffles the batch into M minibatches and takes one gradient step on
    each: of whole episodes with rollout=episodes (1 <= M <= batch_episodes), of single steps
    with rollout=steps (1 <= M <= batch_episodes * rollout.steps), as PPO implementations do."""
    entropy_coef: float = 0.0
    """c >= 0: the loss subtracts c (1/N) sum_i sum_t m_{i,t} H[pi(.|s_{i,t})], an entropy bonus
    on the same per-episode scale as the policy loss."""
    rule: str = "auto"
    """The update rule (pgrun/update_rules.py): gradient (one on-policy gradient step) |
    ratio_epochs (inner_steps epochs of minibatches of the ratio or clipped loss, with the KL
    stop) | npg (the natural gradient F^-1 g, scaled to the KL radius max_kl) | trpo (npg's
    step with a backtracking line search under the KL constraint, pgrun/natural.py) |
    auto (ratio_epochs when inner_steps > 1, minibatches > 1 or clip is set, else gradient) |
    module:function, your own: function(cfg) returns an object with the rules' `step`."""
    max_kl: float = 0.01
    """delta > 0 of npg and trpo: the step's mean KL(pi_old || pi) over the batch's steps (npg:
    of its quadratic model; trpo: at most, as measured)."""
    cg_iters: int = 10
    """npg and trpo: conjugate gradient steps solving F x = g (>= 1)."""
    cg_damping: float = 0.1
    """npg and trpo: lambda >= 0 added to the Fisher's diagonal, (F + lambda I) x = g."""
    line_search_steps: int = 10
    """trpo: steps s, beta s, beta^2 s, ... tried before giving up the batch's step (>= 1)."""
    line_search_shrink: float = 0.8
    """trpo: beta in (0, 1), the backtracking factor."""


@dataclass
class RolloutConfig:
    """How a batch is collected (pgrun/collectors.py); chosen with rollout=episodes|steps."""

    name: str = "episodes"
    """episodes: N whole episodes from reset, one per row, cut at env.horizon (the notes').
    steps: each of the N copies stepped `steps` times with auto-reset, its observation carried
    into the next batch; episodes cut by the end of a batch (and time-limit truncations inside
    it) are bootstrapped with V where there is one (variant.baseline=value)."""
    steps: int = 128
    """T of rollout=steps: env calls per copy per batch (>= 1); a batch holds about N T steps
    (the call that resets a copy after its episode's end is not a step)."""


@dataclass
class ValueConfig:
    """The state-value network V(s) of variant.baseline=value (its own encoder and optimizer)."""

    hidden_sizes: List[int] = field(default_factory=lambda: [64, 64])
    """Widths of its hidden layers; [] is linear in the (encoded) observation."""
    activation: str = "tanh"
    """tanh | relu | elu | gelu | silu | leaky_relu."""
    lr: float = 0.003
    """Adam learning rate of V (> 0)."""
    steps: int = 16
    """Gradient steps on V per batch (>= 1), after the batch's advantages are computed."""
    minibatches: int = 4
    """The batch's valid steps are shuffled into this many minibatches and the V steps cycle
    through them, reshuffled after each pass (1: every step on the whole batch)."""
    normalize_targets: bool = True
    """Fit the network to the targets standardised by their running mean and std (over every
    batch so far) and scale its output back: V(s) = mean + std * net(s). Returns in the
    hundreds are then learnt in a few steps."""


@dataclass
class OptimConfig:
    name: OptimName = OptimName.adam
    """adam | sgd."""
    lr: float = 0.01
    """Learning rate (> 0)."""
    max_grad_norm: Optional[float] = None
    """Clip the norm of every gradient (policy and value) to this (> 0) before the step;
    null: no clipping. stats/grad_norm is the norm before clipping."""
    anneal_lr: bool = False
    """Decay the learning rates (policy and value) linearly from lr to 0 over total_steps: a
    batch collected after s env steps is learnt with lr (1 - s / total_steps)."""


@dataclass
class DiagnosticsConfig:
    every: int = 10
    """Log stats/grad_variance and stats/grad_snr, from per-episode gradients, every this many
    iterations (from the first); 0 turns them off."""
    ratios: bool = True
    """With K > 1 inner steps, log the ratios each inner step k uses as inner/<stat>/k<k>
    (mean, min, max, effective sample size, approx KL) every iteration."""


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate the deterministic policy (the mode, or the Gaussian mean) after every this many
    iterations and after the last one; 0 turns evaluation off."""
    episodes: int = 10
    """M: evaluation episodes, from the same M seeded starts each time, logged as
    eval/episodic_return and eval/episodic_length."""
    video: bool = False
    """Record one evaluation episode at each evaluation: videos/eval_<env steps>.mp4 in the
    run directory and an animated image eval/video in TensorBoard."""


@dataclass
class CheckpointConfig:
    every: int = 10
    """Save the whole training state every this many iterations (and always at the end);
    0: only at the end. The last two checkpoints are kept in the run directory."""


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    variant: VariantConfig = field(default_factory=VariantConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    """The state-value network, used when variant.baseline=value."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """How batches are collected: rollout=episodes (the notes') or rollout=steps."""
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    """Estimator diagnostics written to TensorBoard (pgrun/diagnostics.py)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Deterministic evaluation episodes and videos (pgrun/evaluation.py)."""
    seed: int = 0
    """Seeds torch and every batch's env resets (derived from (seed, iteration))."""
    batch_episodes: int = 16
    """N: episodes per batch (rollout=episodes), or env copies stepped (rollout=steps)."""
    total_steps: int = 100_000
    """Budget of environment steps; training stops at the first batch that reaches it."""
    stop_return: Optional[float] = None
    """Stop before the budget once the final return (the mean episodic return of the last 5
    batches) reaches this, e.g. env.solved_return; null: train for total_steps. The learning
    rate schedule (optim.anneal_lr) still runs over total_steps."""
    gamma: float = 1.0
    """Discount in (0, 1] of the weights: rtg_t = sum_{t'>=t} gamma^(t'-t) r_t'. 1 is the notes'
    objective. With gamma < 1 the usual discounted reward-to-go is NOT the gradient of the
    discounted objective J_gamma = E[sum_t gamma^t r_t]: that needs the extra factor gamma^t
    (discount_from_start=true). Without it the estimate drops gamma^t and is biased for J_gamma,
    though often learns faster (Thomas 2014, "Bias in natural actor-critic algorithms")."""
    discount_from_start: bool = False
    """Multiply step t's weight by gamma^t: an unbiased estimate of grad J_gamma."""
    device: Device = Device.cpu
    """cpu | cuda | auto (cuda when available)."""
    threads: int = 1
    """torch CPU threads; small policies run fastest on one."""
    progress: bool = True
    """Show a progress bar when stderr is a terminal."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: List[str] = field(default_factory=lambda: ["tensorboard", "csv"])
    """Where the run's numbers go (pgrun/logger.py), any of: tensorboard (event files),
    csv (metrics.csv: step, tag, value, wall_time). E.g. logger=[csv]."""
    resume: Optional[str] = None
    """RUN_DIR of a run to continue from its newest checkpoint, with its own saved config."""


class UserError(ValueError):
    """A problem with what the user asked for; its message is one line naming it and the fix.

    The command prints it as `pgrun: error: <message>` and exits with `exit_code`, no traceback.
    """

    exit_code = 2


class ConfigError(UserError):
    """A config value out of range."""


class Diverged(UserError):
    """The loss, the gradient or the parameters became NaN or infinite (exit status 3)."""

    exit_code = 3


class Interrupted(Exception):
    """Training stopped on SIGINT / SIGTERM, after writing a checkpoint (exit 128 + signal)."""

    def __init__(self, signum: int, iteration: int, env_steps: int):
        super().__init__(f"signal {signum} at iteration {iteration}")
        self.signum, self.iteration, self.env_steps = signum, iteration, env_steps

    def __reduce__(self):  # pickled by its fields (a worker process returns it to its sweep's)
        return type(self), (self.signum, self.iteration, self.env_steps)


# pgrun.update_rules.RULES, and auto
UPDATE_RULES = ("auto", "gradient", "ratio_epochs", "npg", "trpo")
_ROLLOUTS = ("episodes", "steps")
_LOGGERS = ("tensorboard", "csv")  # pgrun.logger.LOGGERS
_ACTIVATIONS = ("tanh", "relu", "elu", "gelu", "silu", "leaky_relu")
_POLICIES = ("mlp", "cnn")


def _plain(value: Any) -> str:
    """An enum member or a plain string, as the string the YAML files use."""
    return str(getattr(value, "value", value))


def validate(cfg: "DictConfig | Config") -> None:
    """Check ranges that types cannot express. Raises ConfigError (one line) on the first problem."""

    def need(ok: bool, key: str, value: Any, accepted: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={value!r} is out of range: {accepted}")

    def check_network(key: str, net: Any, linear: str) -> None:
        widths = list(net.hidden_sizes)
        need(
            all(h >= 1 for h in widths),
            f"{key}.hidden_sizes",
            widths,
            f"use a list of positive widths, [] for {linear}",
        )
        need(
            net.activation in _ACTIVATIONS,
            f"{key}.activation",
            net.activation,
            "use one of " + ", ".join(_ACTIVATIONS),
        )

    need(0 <= cfg.seed < 2**32, "seed", cfg.seed, "use an integer >= 0 and < 2**32")
    need(cfg.batch_episodes >= 1, "batch_episodes", cfg.batch_episodes, "use an integer >= 1")
    # before the checks that count a batch's steps with them
    need(
        cfg.rollout.name in _ROLLOUTS,
        "rollout.name",
        cfg.rollout.name,
        "use one of " + ", ".join(_ROLLOUTS),
    )
    need(cfg.rollout.steps >= 1, "rollout.steps", cfg.rollout.steps, "use an integer >= 1")
    need(cfg.total_steps >= 1, "total_steps", cfg.total_steps, "use an integer >= 1")
    need(0.0 < cfg.gamma <= 1.0, "gamma", cfg.gamma, "use a value in (0, 1]")
    need(cfg.optim.lr > 0.0, "optim.lr", cfg.optim.lr, "use a value > 0")
    need(math.isfinite(cfg.optim.lr), "optim.lr", cfg.optim.lr, "use a finite value")
    need(
        cfg.diagnostics.every >= 0,
        "diagnostics.every",
        cfg.diagnostics.every,
        "use an integer >= 0 (0 turns the gradient diagnostics off)",
    )
    need(cfg.threads >= 1, "threads", cfg.threads, "use an integer >= 1")
    need(
        cfg.checkpoint.every >= 0,
        "checkpoint.every",
        cfg.checkpoint.every,
        "use an integer >= 0 (0 saves only at the end)",
    )
    need(
        cfg.eval.every >= 0, "eval.every", cfg.eval.every, "use an integer >= 0 (0: no evaluation)"
    )
    need(cfg.eval.episodes >= 1, "eval.episodes", cfg.eval.episodes, "use an integer >= 1")
    need(
        cfg.env.num_threads >= 0,
        "env.num_threads",
        cfg.env.num_threads,
        "use an integer >= 0 (0: envpool's choice)",
    )
    need(cfg.env.frame_stack >= 1, "env.frame_stack", cfg.env.frame_stack, "use an integer >= 1")
    need(
        cfg.variant.inner_steps >= 1,
        "variant.inner_steps",
        cfg.variant.inner_steps,
        "use an integer >= 1 (1 is on-policy)",
    )
    v = cfg.variant
    baseline, weights = _plain(v.baseline), _plain(v.weights)
    plugin = ":" in weights
    need(
        weights in WEIGHTS or plugin,
        "variant.weights",
        weights,
        f"use one of {', '.join(WEIGHTS)}, or module:function for your own",
    )
    need(
        not plugin or v.gae_lambda is None,
        "variant.weights",
        weights,
        "GAE computes its own weights: set variant.gae_lambda=null to use these",
    )
    need(v.clip is None or v.clip > 0, "variant.clip", v.clip, "use a value > 0, or null for none")
    lam = v.gae_lambda
    need(
        lam is None or 0.0 <= lam <= 1.0,
        "variant.gae_lambda",
        lam,
        "use a value in [0, 1], or null for no GAE",
    )
    need(
        baseline != "time"  # time_loo leaves the episode out: no baseline over one
        or cfg.batch_episodes >= 2
        or _plain(cfg.rollout.name) != "episodes",
        "batch_episodes",
        cfg.batch_episodes,
        "variant.baseline=time averages over a batch's episodes, and over one it is that "
        "episode's own return: every weight is 0 and nothing is learnt; use batch_episodes >= 2, "
        "or variant.baseline=none",
    )
    need(
        lam is None or baseline == "value",
        "variant.gae_lambda",
        lam,
        "GAE needs a value network: set variant.baseline=value, or variant.gae_lambda=null",
    )
    need(
        baseline != "value" or weights != "total",
        "variant.weights",
        weights,
        "baseline=value needs weights=rtg (V(s_t) is no baseline for rewards before t)",
    )
    need(
        v.target_kl is None or v.target_kl > 0,
        "variant.target_kl",
        v.target_kl,
        "use a value > 0, or null to never stop early",
    )
    if cfg.rollout.name == "steps":  # minibatches of single steps
        most, of = cfg.batch_episodes * cfg.rollout.steps, "batch_episodes * rollout.steps"
    else:  # of whole episodes
        most, of = cfg.batch_episodes, "batch_episodes"
    need(
        1 <= v.minibatches <= most,
        "variant.minibatches",
        v.minibatches,
        f"use an integer in [1, {of}={most}]",
    )
    need(
        0 <= v.entropy_coef < math.inf,
        "variant.entropy_coef",
        v.entropy_coef,
        "use a finite value >= 0",
    )
    need(
        v.rule in UPDATE_RULES or ":" in v.rule,
        "variant.rule",
        v.rule,
        "use one of " + ", ".join(UPDATE_RULES) + ", or module:function for your own",
    )
    need(
        v.rule not in ("npg", "trpo")
        or (v.inner_steps == 1 and v.minibatches == 1 and v.clip is None and v.target_kl is None),
        "variant.rule",
        v.rule,
        f"{v.rule} takes one step on the whole batch: set inner_steps=1, minibatches=1, "
        "clip=null, target_kl=null (its KL radius is variant.max_kl)",
    )
    need(0 < v.max_kl < math.inf, "variant.max_kl", v.max_kl, "use a finite value > 0")
    need(v.cg_iters >= 1, "variant.cg_iters", v.cg_iters, "use an integer >= 1")
    need(
        0 <= v.cg_damping < math.inf,
        "variant.cg_damping",
        v.cg_damping,
        "use a finite value >= 0",
    )
    need(
        v.line_search_steps >= 1,
        "variant.line_search_steps",
        v.line_search_steps,
        "use an integer >= 1",
    )
    need(
        0 < v.line_search_shrink < 1,
        "variant.line_search_shrink",
        v.line_search_shrink,
        "use a value in (0, 1)",
    )
    need(
        v.rule != "gradient" or (v.inner_steps == 1 and v.minibatches == 1 and v.clip is None),
        "variant.rule",
        v.rule,
        "gradient takes one step on the whole batch: set inner_steps=1, minibatches=1, "
        "clip=null, or use ratio_epochs",
    )
    g = cfg.optim.max_grad_norm
    need(g is None or g > 0, "optim.max_grad_norm", g, "use a value > 0, or null for none")
    need(cfg.value.lr > 0.0, "value.lr", cfg.value.lr, "use a value > 0")
    need(math.isfinite(cfg.value.lr), "value.lr", cfg.value.lr, "use a finite value")
    need(
        math.isfinite(cfg.policy.log_std_init),
        "policy.log_std_init",
        cfg.policy.log_std_init,
        "use a finite value",
    )
    need(cfg.value.steps >= 1, "value.steps", cfg.value.steps, "use an integer >= 1")
    need(
        cfg.value.minibatches >= 1,
        "value.minibatches",
        cfg.value.minibatches,
        "use an integer >= 1",
    )
    check_network("value", cfg.value, "a linear V")
    need(
        not plugin or cfg.rollout.name == "episodes",
        "variant.weights",
        weights,
        "a weights plug-in takes the notes' batch, one episode per row: use rollout=episodes",
    )
    loggers = list(cfg.logger)
    need(
        all(name in _LOGGERS for name in loggers) and len(set(loggers)) == len(loggers),
        "logger",
        loggers,
        "use a list of distinct names from " + ", ".join(_LOGGERS) + " ([] logs nothing)",
    )
    horizon = cfg.env.horizon
    need(horizon is None or horizon >= 1, "env.horizon", horizon, "use an integer >= 1 or null")
    check_network("policy", cfg.policy, "a linear policy")
    need(
        cfg.policy.name in _POLICIES,
        "policy.name",
        cfg.policy.name,
        "use one of " + ", ".join(_POLICIES),
    )


def unknown_keys(cfg: DictConfig) -> None:
    """Refuse (ConfigError) a key the schema does not have (Hydra's `+key=value` adds any key),
    and a value that is still missing (`~env` removes the env's preset)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{missing[0]} has no value (was its group removed with ~?): set it, e.g. "
            + ("env=CartPole-v1" if missing[0].startswith("env") else f"{missing[0]}=...")
        )

    def walk(node: Any, schema: Any, prefix: str) -> None:
        fields = {f.name: f for f in dataclasses.fields(schema)}
        for key in node:
            name = f"{prefix}{key}"
            if key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f"did you mean {prefix}{close[0]}? " if close else ""
                raise ConfigError(
                    f"{name} is not a pgrun setting ({schema.__name__} has no {key!r}): "
                    f"{hint}pgrun --cfg job lists every key"
                )
            child = node._get_node(key)
            kind = OmegaConf.get_type(child) if isinstance(child, DictConfig) else None
            if kind is not None and dataclasses.is_dataclass(kind):
                walk(child, kind, name + ".")

    walk(cfg, Config, "")


def count(n: int, noun: str, plural: str | None = None) -> str:
    """'1 job', '2 jobs'; `plural` where it is not the noun and an s ('processes')."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def slug(text: str) -> str:
    """A name that is safe as one path component: 'ALE/Pong-v5' -> 'ALE-Pong-v5'."""
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "-", str(text)).strip("-") or "run"


# Overrides already in a run directory's name, or that change nothing about the run.
_NAMED = ("variant", "env", "env.id", "seed", "resume", "progress")
# What pgrun.hints adds for an env.id without an env file: the default file's thresholds dropped.
NO_FILE_KEYS = ("env.solved_return", "env.random_return")
NO_FILE_OVERRIDES = tuple(f"{k}=null" for k in NO_FILE_KEYS)
NAME_MAX = 120  # characters of the name after the time stamp (file systems allow 255)


def _named(override: str) -> str:
    """An override as a run's name shows it: a list's items joined by '+', and an empty list as
    'none' ('logger=[]' -> 'logger=none', 'policy.hidden_sizes=[64,64]' -> '...=64+64'), where
    slug would leave dashes for the brackets."""
    key, eq, value = override.partition("=")
    if eq and value.startswith("[") and value.endswith("]"):
        items = [v.strip() for v in value[1:-1].split(",") if v.strip()]
        return f"{key}={'+'.join(items) or 'none'}"
    return override


def run_name(variant: str, env_id: str, seed: Any, overrides: Any = ()) -> str:
    """The default run directory's name after its time stamp: variant, env, seed, then the other
    overrides of the command line, e.g. 'rtg_CartPole-v1_seed0_optim.lr=0.05'."""
    others = []
    for override in overrides or ():
        key = str(override).split("=", 1)[0].lstrip("+~")
        if str(override) in NO_FILE_OVERRIDES:  # added for an env.id without an env file
            continue
        if key not in _NAMED and not key.startswith("hydra"):
            others.append(_named(str(override).lstrip("+~")))
    name = "_".join(slug(part) for part in (variant, env_id, f"seed{seed}"))
    if others:
        name += "_" + slug(",".join(sorted(others)))
    return name[:NAME_MAX].rstrip("-_,")


_made: dict[tuple[str, str], str] = {}  # (parent, name) -> the directory made for it


def run_dir(resume: str | None, parent: str, name: str) -> str:
    """hydra.run.dir: the resumed run's directory, or a new one under `parent` made (and locked)
    by pgrun.rundir.create_unique, once per process."""
    if resume:
        return str(resume)
    if (parent, name) not in _made:
        from pgrun import rundir

        try:
            _made[parent, name] = str(rundir.create_unique(parent, name))
        except rundir.RunDirError as exc:
            raise rundir.Refused(exc) from None
    return _made[parent, name]


def read_yaml(path: Path) -> Any:
    """A YAML file that Hydra wrote (.hydra/*.yaml, multirun.yaml) as plain values, by libyaml
    where PyYAML has it: a fraction of the time of OmegaConf.load, which builds a config tree
    and parses every interpolation in it. Interpolations stay unresolved strings."""
    with path.open() as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


RECORD = {"config.yaml": dict, "hydra.yaml": dict, "overrides.yaml": list}
"""A run's record in <run dir>/.hydra, as Hydra writes it before the run starts: each file and
what it holds."""


def record_problem(run_dir: Path, optional: tuple[str, ...] = ()) -> str | None:
    """What is wrong with the record in `run_dir`/.hydra (one phrase: '.hydra/hydra.yaml is
    empty'), None when each of its files reads as what Hydra writes (those in `optional`
    where they are there). A job killed while Hydra wrote them (a second Ctrl-C, kill -9 of
    a sweep) leaves one empty or missing."""
    for name, kind in RECORD.items():
        path = Path(run_dir) / ".hydra" / name
        if not path.is_file():
            if name in optional:
                continue
            return f".hydra/{name} is missing"
        try:
            value = read_yaml(path)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            return f".hydra/{name} cannot be read ({' '.join(str(exc).split())})"
        if not isinstance(value, kind):
            what = "empty" if value is None else f"not a YAML {kind.__name__}"
            return f".hydra/{name} is {what}"
    return None


def hydra_subdir(resume: str | None, stamp: str, output_dir: str | None = None) -> str:
    """hydra.output_subdir: `.hydra`, or `.hydra/resume-<stamp>` when resuming or when
    `output_dir` already holds a record (a sweep job started again: requeued or resumed), so
    that the run's original record is kept. A sweep job's record that was cut short (its
    process killed while Hydra wrote it: record_problem) is written again in `.hydra`, where
    the sweep's resume and its comparison read it."""
    again = output_dir is not None and (Path(output_dir) / ".hydra").is_dir()
    if again and not resume and record_problem(Path(output_dir)) is not None:
        again = False
    return f".hydra/resume-{stamp}" if resume or again else ".hydra"


JOB_SUBDIR = (
    "${job_subdir:${hydra.overrides.task},${hydra.job.config.override_dirname.exclude_keys},"
    "${hydra.job.num}}"
)
"""hydra.sweep.subdir in configs/config.yaml (tests/test_sweep.py holds the two equal): a sweep
whose record has it gets its job directories from job_subdir directly (pgrun.sweep)."""


def job_subdir(overrides: Any, exclude: Any, num: int) -> str:
    """A multirun job's directory: its overrides that vary in the sweep, variant first and seed
    last (e.g. 'variant=rtg,seed=0'; pgrun.views.job_name), or 'job<num>' when none is left.

    Args:
        overrides: the job's overrides (hydra.overrides.task); exclude: the keys left out
            (hydra.job.config.override_dirname.exclude_keys: the sweep's constant ones)."""
    from pgrun.views import job_name

    name = job_name([str(o) for o in overrides], [str(k) for k in exclude])
    return fit_file_name(slug(name)) if name else f"job{num}"


FILE_NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs, NFS)


def fit_file_name(name: str) -> str:
    """`name`, or where it is too long for a file name (many swept keys, long lists) its start
    and a digest of the whole: the same name for the same job every time (a resume finds it),
    different ones for different jobs. Names that fit are kept as they are."""
    raw = name.encode()
    if len(raw) <= FILE_NAME_MAX:
        return name
    import hashlib

    digest = hashlib.sha256(raw).hexdigest()[:16]
    head = raw[: FILE_NAME_MAX - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"


def load_variant(name: str) -> VariantConfig:
    """The variant preset `name` from configs/variant/<name>.yaml, typed as a VariantConfig."""
    path = resources.files("pgrun.configs") / "variant" / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.name[:-5] for p in (path.parent).iterdir() if p.name.endswith(".yaml"))
        raise ConfigError(f"unknown variant {name!r}: use one of {', '.join(names)}")
    node = OmegaConf.merge(OmegaConf.structured(VariantConfig), OmegaConf.load(str(path)))
    return OmegaConf.to_object(node)


def register() -> None:
    """Register the schema and the resolvers used in configs/config.yaml (idempotent)."""
    ConfigStore.instance().store(name="pgrun_schema", node=Config)
    OmegaConf.register_new_resolver("slug", slug, replace=True)
    OmegaConf.register_new_resolver("job_subdir", job_subdir, replace=True)
    OmegaConf.register_new_resolver("run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver("run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir, replace=True)


def rule_name(variant: Any) -> str:
    """variant.rule, with "auto" resolved: ratio_epochs where the variant reuses the batch
    (K > 1 inner steps, M > 1 minibatches or a clip), else gradient."""
    name = str(variant.rule)
    if name != "auto":
        return name
    reuses = variant.inner_steps > 1 or variant.minibatches > 1 or variant.clip is not None
    return "ratio_epochs" if reuses else "gradient"


register()


def yaml_text(container: dict) -> str:
    """OmegaConf.to_yaml's text for a config already turned into `container`
    (OmegaConf.to_container with enum_to_str): the same dump and the same quoting of strings
    that read as numbers or booleans, emitted by libyaml where PyYAML has it (a tenth of the
    time)."""
    return yaml.dump(
        container, Dumper=_yaml_dumper(), default_flow_style=False, allow_unicode=True,
        sort_keys=False,
    )  # fmt: skip


@functools.cache
def _yaml_dumper() -> type:
    from omegaconf._utils import OmegaConfDumper

    class Dumper(getattr(yaml, "CDumper", yaml.Dumper)):
        pass

    Dumper.add_representer(str, OmegaConfDumper.str_representer)
    return Dumper
