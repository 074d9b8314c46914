"""What TensorBoard shows of a run and of a sweep: the names of a sweep's jobs (its run names),
the HPARAMS columns, and the Custom Scalars chart of the inner steps.

A sweep's job directory (hydra.sweep.subdir) is named by the overrides that vary in the sweep,
variant first and seed last, e.g. ``variant=rtg,seed=0``: the overrides that every job shares
(``total_steps=30000``) are left out, so TensorBoard's run selector and the HPARAMS trial ids
show what tells the runs apart. When the sweep starts (:func:`exclude_constant_overrides`, from
pgrun.compare.CompareCallback) the constant keys go into Hydra's
``hydra.job.config.override_dirname.exclude_keys``; each job then knows what varies from its own
config (:func:`swept_keys`).

Imports neither torch nor tensorboard: the callback runs before any job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"
FIRST = ("variant", "env")
LAST = ("seed",)
GROUP_KEYS = {"variant": "variant.name", "env": "env.id", "policy": "policy.name"}
INNER_STATS = ("ratio_mean", "ratio_min", "ratio_max", "ess", "approx_kl")
INNER_CATEGORY = "pgrun: inner steps (ratios pi/pi_old, one curve per step k)"


def override_key(override: str) -> str:
    """'++optim.lr=0.1' -> 'optim.lr'; 'variant=rtg' -> 'variant'."""
    return override.split("=", 1)[0].lstrip("+~")


def constant_keys(task_overrides: Sequence[str], sweeper_params: Mapping[str, Any]) -> list[str]:
    """The keys a sweep gives one value for every job: its command-line overrides and its
    sweeper's params (an experiment's `hydra.sweeper.params`) that are no sweep (no `a,b`,
    `range(...)`, `choice(...)`, `interval(...)`, glob). Others, and any a parser cannot read,
    count as varying."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    lines = [*task_overrides, *(f"{k}={v}" for k, v in sweeper_params.items())]
    varying, constant = set(), set()
    for line in lines:
        key = override_key(line)
        try:
            (override,) = parser.parse_overrides([line])
            sweep = override.is_sweep_override()
        except Exception:
            sweep = True
        (varying if sweep else constant).add(key)
    return sorted(constant - varying)


def exclude_constant_overrides(config: Any) -> None:
    """At the start of a multirun (its composed config): add the sweep's constant keys to
    hydra.job.config.override_dirname.exclude_keys, as an override that every job's config is
    composed with (the launchers compose each job from the sweep config's hydra overrides). Kept
    as they are when nothing varies (each job is then named by all its overrides)."""
    from omegaconf import OmegaConf, open_dict, read_write

    task = [str(o) for o in config.hydra.overrides.task]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    constant = constant_keys(task, dict(params))
    keys = {override_key(o) for o in task} | {str(k) for k in params}
    if not constant or set(constant) >= keys:
        return
    given = [str(k) for k in OmegaConf.select(config, EXCLUDE_KEYS, default=[]) or []]
    merged = list(dict.fromkeys([*given, *constant]))
    quoted = ",".join("'" + k.replace("\\", "\\\\").replace("'", "\\'") + "'" for k in merged)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.overrides.hydra.append(f"{EXCLUDE_KEYS}=[{quoted}]")


def exclude_keys_of(config: Any) -> list[str]:
    """The exclude keys a sweep's jobs are named with: the last
    hydra.job.config.override_dirname.exclude_keys override among the sweep config's hydra
    overrides (exclude_constant_overrides appends one), else the config's own value. For a
    sweep's saved record (multirun.yaml), whose job names are computed again (pgrun.sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    keys = [str(k) for k in OmegaConf.select(config, EXCLUDE_KEYS, default=[]) or []]
    hydra_overrides = OmegaConf.select(config, "hydra.overrides.hydra", default=[]) or []
    for line in map(str, hydra_overrides):
        if override_key(line) == EXCLUDE_KEYS:
            (override,) = OverridesParser.create().parse_overrides([line])
            keys = [str(k) for k in override.value()]
    return keys


def order_overrides(overrides: Sequence[str]) -> list[str]:
    """Variant first, then env, the others as given, seed last."""

    def rank(o: str) -> int:
        key = override_key(o)
        if key in FIRST:
            return FIRST.index(key)
        return len(FIRST) + 1 if key in LAST else len(FIRST)

    return sorted(overrides, key=rank)


def job_name(overrides: Sequence[str], exclude: Sequence[str]) -> str:
    """A job's directory name: its overrides whose key is not excluded, variant first and seed
    last, joined by commas ('' when none is left)."""
    excluded = {override_key(str(k)) for k in exclude}
    kept = [str(o) for o in overrides if override_key(str(o)) not in excluded]
    return ",".join(order_overrides(kept))


def swept_keys() -> list[str] | None:
    """In a multirun job: the keys of its overrides that vary in the sweep, in job_name's order
    (e.g. ['variant', 'seed']). None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    excluded = {override_key(str(k)) for k in hydra.job.config.override_dirname.exclude_keys}
    kept = [str(o) for o in hydra.overrides.task if override_key(str(o)) not in excluded]
    return [override_key(o) for o in order_overrides(kept)]


def choose_hparams(
    flat: Mapping[str, Any], swept: Sequence[str] | None, choices: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], set[str]]:
    """The HPARAMS entry of a run, in column order, and the names to mark as differing.

    Args:
        flat: the run's config flattened to {'optim.lr': 0.05, ...}.
        swept: the keys that vary in its sweep (swept_keys()), or None for a single run.
        choices: the config groups chosen ({'experiment': 'compare_variants', ...}), for a swept
            group that has no config key of its own.
    Returns:
        (hparams, differs): the swept keys first (a group as its config key: variant ->
        variant.name, env -> env.id), then the rest by name; `differs` holds the swept ones.
        TensorBoard orders the columns by (not differs, name) and ticks the first five: the
        swept keys come first and are shown; the others are listed unticked, except those
        that fill the five columns when fewer than five keys vary.
    """
    first: dict[str, Any] = {}
    for key in swept or ():
        name = GROUP_KEYS.get(key, key)
        if name in flat:
            first[name] = flat[name]
        elif choices is not None and key in choices:
            first[key] = str(choices[key])
    rest = {k: flat[k] for k in sorted(flat) if k not in first}
    return {**first, **rest}, set(first)


def inner_step_layout(flat: Mapping[str, Any]):
    """The Custom Scalars layout of the inner/<stat>/k<k> tags, as a summary to write: one chart
    per statistic, a curve per inner step. None when the run logs none (one inner step on the
    whole batch, or diagnostics.ratios=false)."""
    steps = int(flat.get("variant.inner_steps", 1))
    minibatches = int(flat.get("variant.minibatches", 1))
    if not flat.get("diagnostics.ratios", True) or (steps <= 1 and minibatches <= 1):
        return None
    from tensorboard.plugins.custom_scalar import layout_pb2

    charts = [
        layout_pb2.Chart(
            title=stat, multiline=layout_pb2.MultilineChartContent(tag=[rf"^inner/{stat}/k\d+$"])
        )
        for stat in INNER_STATS
    ]
    return layout_summary(layout_pb2.Category(title=INNER_CATEGORY, chart=charts))


def layout_summary(category):
    """A Summary holding a Custom Scalars layout of one category (a layout_pb2.Category);
    TensorBoard merges the categories of every run by title."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    tensor = string_tensor(layout_pb2.Layout(category=[category]).SerializeToString())
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=metadata.CONFIG_SUMMARY_TAG, metadata=metadata.create_summary_metadata(), tensor=tensor
    )
    return summary


def string_tensor(value: bytes | str):
    """A scalar string TensorProto, as tensorboard's tensor_util.make_tensor_proto makes one (a
    str as UTF-8), built directly: tensor_util imports tensorboard's TensorFlow stub, a fifth of
    a second."""
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

    data = value.encode() if isinstance(value, str) else value
    shape = tensor_shape_pb2.TensorShapeProto()
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=[data])


def text_summary(tag: str, markdown: str):
    """A Summary of one text (the TEXT tab renders it as markdown), as tensorboard's
    text_pb(tag, markdown) makes it."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.text import metadata

    summary = summary_pb2.Summary()
    meta = metadata.create_summary_metadata(display_name=None, description=None)
    summary.value.add(tag=tag, metadata=meta, tensor=string_tensor(markdown))
    return summary


def group_choices() -> dict[str, Any] | None:
    """The config groups this run was composed with ({'variant': 'rtg', ...}), or None outside
    a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return {str(k): v for k, v in HydraConfig.get().runtime.choices.items()}


def trial_id(hparams: Mapping[str, Any], swept: Sequence[str] | None) -> str:
    """The HPARAMS trial id of a sweep's job: the values of its swept keys, the variant bare
    ('off_policy,seed=0'), short enough for the table's first column; '' for a single run
    (TensorBoard then shows the run's name)."""
    parts = []
    for key in swept or ():
        name = GROUP_KEYS.get(key, key)
        value = hparams.get(name, hparams.get(key))
        parts.append(str(value) if key == "variant" else f"{key}={value}")
    return ",".join(parts)


def hparams_summaries(hparams: Mapping[str, Any], differs: set[str], metric: str, group: str = ""):
    """The HPARAMS records of one run: (experiment, session start, session end) summaries. The
    experiment lists the columns in the order of `hparams`, those in `differs` marked as
    differing: TensorBoard lists those first and shows the first five columns. `group`: the
    trial id (trial_id). (Built from the protos: tensorboard's own summary helpers need
    TensorFlow, and its hparams.metadata module imports tensorboard's TensorFlow stub, a tenth
    of a second of a run's start; `hparams_metadata` is its create_summary_metadata.)"""
    import time

    from google.protobuf import struct_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    def data_type(value: Any) -> int:
        if isinstance(value, bool):
            return api_pb2.DATA_TYPE_BOOL
        if isinstance(value, (int, float)):
            return api_pb2.DATA_TYPE_FLOAT64
        return api_pb2.DATA_TYPE_STRING

    def summary(tag: str, data) -> summary_pb2.Summary:
        out = summary_pb2.Summary()
        out.value.add(tag=tag, metadata=hparams_metadata(data))
        return out

    infos = [
        api_pb2.HParamInfo(name=k, type=data_type(v), differs=k in differs)
        for k, v in hparams.items()
    ]
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=metric))]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time(), group_name=group)
    for k, v in hparams.items():
        value = struct_pb2.Value()
        if isinstance(v, bool):
            value.bool_value = v
        elif isinstance(v, (int, float)):
            value.number_value = float(v)
        else:
            value.string_value = str(v)
        start.hparams[k].CopyFrom(value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)
    return (
        summary("_hparams_/experiment", plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        summary(
            "_hparams_/session_start_info",
            plugin_data_pb2.HParamsPluginData(session_start_info=start),
        ),
        summary(
            "_hparams_/session_end_info", plugin_data_pb2.HParamsPluginData(session_end_info=end)
        ),
    )


def hparams_metadata(data):
    """The SummaryMetadata of an HPARAMS record holding `data` (an HParamsPluginData), as
    tensorboard.plugins.hparams.metadata.create_summary_metadata makes it: plugin "hparams",
    content version 0."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData()
    content.CopyFrom(data)
    content.version = 0
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name="hparams", content=content.SerializeToString()
        )
    )
