"""Config composition with Hydra's compose API, the variant presets, and range validation."""

from __future__ import annotations

import copy
from importlib import resources

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import pgrun.config  # noqa: F401  (registers the schema in Hydra's ConfigStore)
from pgrun.config import ConfigError, VariantConfig, load_variant, validate

ENV_FILES = sorted(
    p.name.removesuffix(".yaml")
    for p in (resources.files("pgrun.configs") / "env").iterdir()
    if p.name.endswith(".yaml")
)

# Each preset's knobs: (weights, baseline, K > 1?)
PRESETS = {
    "vanilla": ("total", "none", False),
    "rtg": ("rtg", "none", False),
    "rtg_baseline": ("rtg", "time", False),
    "off_policy": ("rtg", "time", True),
}
# The presets beyond the notes, with a value network: (gae_lambda set?, clip set?, K > 1?)
VALUE_PRESETS = {
    "value_baseline": (False, False, False),
    "gae": (True, False, False),
    "ppo": (True, True, True),
    "npg": (True, False, False),
    "trpo": (True, False, False),
}


def composed(*overrides: str):
    with initialize_config_module(config_module="pgrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def default_cfg():
    return composed()


def with_value(cfg, key: str, value):
    """A copy of the composed `cfg` with `key` set to `value` (type-checked by the schema)."""
    cfg = copy.deepcopy(cfg)
    OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def plain(value) -> str:
    """An enum member or a plain string, as the string the YAML files use."""
    return str(getattr(value, "value", value))


def test_the_env_files_are_found():
    assert {"CartPole-v1", "Pendulum-v1"} <= set(ENV_FILES)


def test_variant_files_are_exactly_the_presets():
    names = {
        p.name.removesuffix(".yaml")
        for p in (resources.files("pgrun.configs") / "variant").iterdir()
        if p.name.endswith(".yaml")
    }
    assert names == set(PRESETS) | set(VALUE_PRESETS)


@pytest.mark.parametrize("env", ENV_FILES)
@pytest.mark.parametrize("variant", sorted(PRESETS))
def test_every_variant_composes_with_every_env(variant, env):
    cfg = composed(f"variant={variant}", f"env={env}")
    weights, baseline, reuse = PRESETS[variant]
    assert cfg.variant.name == variant
    assert plain(cfg.variant.weights) == weights
    assert plain(cfg.variant.baseline) == baseline
    if reuse:
        assert cfg.variant.inner_steps > 1
    else:
        assert cfg.variant.inner_steps == 1
    assert cfg.variant.normalize_advantages is False
    assert cfg.env.id == env
    assert cfg.env.horizon is None or cfg.env.horizon >= 1
    # the options beyond the notes are all off: the notes' estimators exactly
    v = cfg.variant
    assert (v.gae_lambda, v.clip, v.target_kl, v.minibatches, v.entropy_coef) == (
        None, None, None, 1, 0.0
    )  # fmt: skip
    assert cfg.optim.max_grad_norm is None and cfg.optim.anneal_lr is False
    validate(cfg)  # every shipped combination is in range


def smallest_batch_env() -> str:
    """The env file with the fewest episodes per batch (the bound on variant.minibatches)."""
    folder = resources.files("pgrun.configs") / "env"
    sizes = {
        env: OmegaConf.load(str(folder / f"{env}.yaml")).get("batch_episodes", 16)
        for env in ENV_FILES
        if (folder / f"{env}.yaml").is_file()
    }
    return min(sizes, key=sizes.get)


# Composing is slow (about 0.3 s): the value presets are composed with the default env and the
# one whose batches are smallest, the only env-dependent bound they have (minibatches <= N).
@pytest.mark.parametrize("env", sorted({"CartPole-v1", smallest_batch_env()}))
@pytest.mark.parametrize("variant", sorted(VALUE_PRESETS))
def test_every_value_preset_composes_and_validates(variant, env):
    cfg = composed(f"variant={variant}", f"env={env}")
    uses_gae, clips, reuse = VALUE_PRESETS[variant]
    assert cfg.variant.name == variant
    assert plain(cfg.variant.weights) == "rtg"
    assert plain(cfg.variant.baseline) == "value"
    assert (cfg.variant.gae_lambda is not None) == uses_gae
    assert (cfg.variant.clip is not None) == clips
    assert (cfg.variant.inner_steps > 1) == reuse
    validate(cfg)


def test_defaults(default_cfg):
    cfg = default_cfg
    assert cfg.variant.name == "rtg_baseline"
    assert cfg.env.id == "CartPole-v1"
    assert cfg.seed == 0
    assert list(cfg.policy.hidden_sizes) == [32]


@pytest.mark.parametrize("variant", sorted(PRESETS | VALUE_PRESETS))
def test_load_variant_matches_the_composed_preset(variant):
    preset = load_variant(variant)
    assert isinstance(preset, VariantConfig)
    cfg = composed(f"variant={variant}")
    assert plain(preset.weights) == plain(cfg.variant.weights)
    assert plain(preset.baseline) == plain(cfg.variant.baseline)
    assert preset.inner_steps == cfg.variant.inner_steps
    assert preset.gae_lambda == cfg.variant.gae_lambda
    assert preset.clip == cfg.variant.clip


def test_load_variant_rejects_an_unknown_name():
    with pytest.raises(ConfigError, match="bogus"):
        load_variant("bogus")


def test_overrides_are_typed():
    cfg = composed(
        "batch_episodes=4", "gamma=0.5", "policy.hidden_sizes=[]", "variant.weights=total"
    )
    assert cfg.batch_episodes == 4
    assert cfg.gamma == 0.5
    assert list(cfg.policy.hidden_sizes) == []
    assert plain(cfg.variant.weights) == "total"


@pytest.mark.parametrize(
    "override",
    [
        "variant.inner_step=2",  # typo'd key
        "optim.learning_rate=0.1",
        "batch_episode=4",
        "env.horizn=10",
    ],
)
def test_a_typo_fails_at_compose_time(override):
    with pytest.raises(HydraException):
        composed(override)


@pytest.mark.parametrize(
    "override",
    [
        "batch_episodes=abc",
        "variant.inner_steps=two",
        "gamma=high",
        "variant.baseline=mean",
        "optim.name=rmsprop",
        "discount_from_start=maybe",
        "variant.baseline=learned",
        "env.truncation=sometimes",
        "variant.clip=wide",
        "optim.anneal_lr=perhaps",
        "value.steps=many",
    ],
)
def test_a_wrong_type_fails_at_compose_time(override):
    with pytest.raises(HydraException):
        composed(override)


def test_an_unknown_preset_fails_at_compose_time():
    with pytest.raises(HydraException):
        composed("variant=bogus")


def test_a_yaml_typo_fails_against_the_schema():
    # What a preset file with a misspelt knob would do when merged onto the schema.
    with pytest.raises(OmegaConfBaseException):
        OmegaConf.merge(OmegaConf.structured(VariantConfig), {"name": "x", "weigths": "rtg"})


# --- validate -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_episodes", 0),
        ("batch_episodes", -3),
        ("variant.inner_steps", 0),
        ("gamma", 0.0),
        ("gamma", -0.5),
        ("gamma", 1.5),
        ("gamma", 1.0001),
        ("optim.lr", 0.0),
        ("optim.lr", -0.01),
        ("total_steps", 0),
        ("total_steps", -100),
        ("seed", -1),
        ("variant.clip", 0.0),
        ("variant.clip", -0.2),
        ("variant.target_kl", 0.0),
        ("variant.minibatches", 0),
        ("variant.minibatches", 17),  # more minibatches than the N = 16 episodes
        ("variant.entropy_coef", -0.01),
        ("optim.max_grad_norm", 0.0),
        ("value.lr", 0.0),
        ("value.steps", 0),
        ("value.minibatches", 0),
        ("value.hidden_sizes", [64, 0]),
        ("value.activation", "sigmoid"),
    ],
)
def test_validate_rejects_out_of_range_values(default_cfg, key, value):
    cfg = with_value(default_cfg, key, value)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{key}=")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_episodes", 1),
        ("variant.inner_steps", 1),
        ("gamma", 1.0),
        ("gamma", 1e-6),
        ("optim.lr", 1e-8),
        ("total_steps", 1),
    ],
)
def test_validate_accepts_the_edges_of_the_ranges(default_cfg, key, value):
    cfg = with_value(default_cfg, key, value)
    assert OmegaConf.select(cfg, key) == value
    if key == "batch_episodes":  # one episode: not with the time baseline (it cancels it)
        with pytest.raises(ConfigError, match="every weight is 0"):
            validate(cfg)
        for baseline in ("none", "time_loo", "value"):
            validate(with_value(cfg, "variant.baseline", baseline))
        return
    validate(cfg)


@pytest.mark.parametrize("lam", [-0.01, 1.01])
def test_validate_rejects_a_gae_lambda_outside_0_1(lam):
    cfg = composed("variant=gae", f"variant.gae_lambda={lam}")
    with pytest.raises(ConfigError, match=r"^variant.gae_lambda=.*\[0, 1\]"):
        validate(cfg)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["variant=rtg_baseline", "variant.gae_lambda=0.95"], "variant.gae_lambda=0.95"),
        (["variant=value_baseline", "variant.weights=total"], "variant.weights='total'"),
    ],
)
def test_validate_rejects_options_that_need_a_value_network(overrides, says):
    cfg = composed(*overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value).startswith(says) and "baseline=value" in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["variant=gae", "variant.gae_lambda=0"],
        ["variant=gae", "variant.gae_lambda=1"],
        ["variant=ppo", "variant.clip=1e-6", "variant.target_kl=1e-6"],
        ["variant=ppo", "variant.minibatches=16"],  # one episode per minibatch
        ["variant.entropy_coef=0", "optim.max_grad_norm=1e-6", "env.truncation=terminate"],
        ["variant=value_baseline", "value.hidden_sizes=[]", "value.steps=1"],
    ],
)
def test_validate_accepts_the_edges_of_the_new_ranges(overrides):
    validate(composed(*overrides))


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["variant.weights=bogus"], "total, rtg, or module:function"),
        (["variant=gae", "variant.weights=mine:weights"], "variant.gae_lambda=null"),
        (["variant.weights=mine:weights", "rollout=steps"], "use rollout=episodes"),
    ],
)
def test_validate_rejects_unknown_weights_and_a_plugin_with_gae_or_fixed_length_rollouts(
    overrides, says
):
    with pytest.raises(ConfigError, match=r"^variant.weights=") as info:
        validate(composed(*overrides))
    assert says in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [["variant.weights=mine:weights"], ["variant=value_baseline", "variant.weights=a.b:c"]],
)
def test_validate_accepts_a_weights_plugin(overrides):
    validate(composed(*overrides))


@pytest.mark.parametrize("preset", ["npg", "trpo"])
def test_the_natural_gradient_presets_validate(preset):
    cfg = composed(f"variant={preset}")
    validate(cfg)
    assert cfg.variant.rule == preset and cfg.variant.baseline == "value"


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["variant=npg", "variant.inner_steps=3"], "variant.rule='npg'"),
        (["variant=trpo", "variant.target_kl=0.01"], "variant.max_kl"),
        (["variant=npg", "variant.max_kl=0"], "variant.max_kl=0"),
        (["variant=trpo", "variant.line_search_shrink=1"], "variant.line_search_shrink=1"),
        (["variant=trpo", "variant.cg_iters=0"], "variant.cg_iters=0"),
        (["variant.rule=newton"], "module:function for your own"),
    ],
)
def test_validate_rejects_bad_natural_gradient_knobs(overrides, says):
    with pytest.raises(ConfigError) as info:
        validate(composed(*overrides))
    assert says in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def pgrun_alone(flag: str):
    """`pgrun <flag>` (a flag pgrun answers itself, before Hydra), finished."""
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "pgrun")
    return subprocess.run([exe, flag], capture_output=True, text=True, timeout=60)


def test_quick_help_lists_every_group_option_hydra_knows():
    """`pgrun --help` answers without composing: its groups must be the ones Hydra finds."""
    from hydra.core.global_hydra import GlobalHydra

    done = pgrun_alone("--help")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    listed = {
        line.split(":", 1)[0]: set(line.split(":", 1)[1].strip().split(", "))
        for line in done.stdout.splitlines()
        if ":" in line
        and line.split(":", 1)[0] in ("env", "policy", "variant", "experiment", "rollout")
    }
    with initialize_config_module(config_module="pgrun.configs", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()

        def options_of(group: str, prefix: str = "") -> set[str]:  # sub-groups such as env/ALE
            found = {prefix + o for o in loader.get_group_options(group)}
            for sub in loader.list_groups(group):
                found |= options_of(f"{group}/{sub}", f"{prefix}{sub}/")
            return found

        for group, options in listed.items():
            assert options == options_of(group), group
    assert set(listed) == {"env", "policy", "variant", "experiment", "rollout"}


@pytest.mark.parametrize(
    "overrides",
    [[], ["experiment=half_cheetah_value_baseline"], ["experiment=compare_variants"],
     ["env=ALE/Pong-v5", "policy=cnn"], ["variant=ppo", "optim.lr=1e-5", "+env.kwargs.a='yes'", "+env.kwargs.b='1e5'"]],
)  # fmt: skip
def test_the_config_text_is_omegaconfs_yaml(overrides):
    """The text a run logs (pgrun.config.yaml_text, libyaml) is OmegaConf.to_yaml's, byte for
    byte, quoted strings and floats included."""
    from pgrun.config import yaml_text

    cfg = composed(*overrides)
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert yaml_text(container) == OmegaConf.to_yaml(cfg, resolve=True)


def test_version_names_pgruns_own():
    """`pgrun --version` names pgrun's version (Hydra's flag named only Hydra's)."""
    from importlib.metadata import version

    done = pgrun_alone("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"pgrun {pgrun.__version__} (Hydra {version('hydra-core')})\n"
