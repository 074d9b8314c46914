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
    assert names == set(PRESETS)


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
    validate(cfg)  # every shipped combination is in range


def test_defaults(default_cfg):
    cfg = default_cfg
    assert cfg.variant.name == "rtg_baseline"
    assert cfg.env.id == "CartPole-v1"
    assert cfg.seed == 0
    assert list(cfg.policy.hidden_sizes) == [32]


@pytest.mark.parametrize("variant", sorted(PRESETS))
def test_load_variant_matches_the_composed_preset(variant):
    preset = load_variant(variant)
    assert isinstance(preset, VariantConfig)
    cfg = composed(f"variant={variant}")
    assert plain(preset.weights) == plain(cfg.variant.weights)
    assert plain(preset.baseline) == plain(cfg.variant.baseline)
    assert preset.inner_steps == cfg.variant.inner_steps


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
        "variant.weights=bogus",
        "variant.baseline=mean",
        "optim.name=rmsprop",
        "discount_from_start=maybe",
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
    validate(cfg)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
