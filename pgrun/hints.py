"""Command-line conveniences and warnings that keep a first run from surprising: `env.id=<id>`
takes that env's file when it has one, and a learned value bootstrapped with gamma = 1 at a time
limit is named before it trains.

Imports neither torch nor gymnasium.
"""

from __future__ import annotations

import logging
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from pgrun.config import NO_FILE_KEYS, NO_FILE_OVERRIDES, UserError


def env_file(env_id: str) -> Path:
    """configs/env/<env_id>.yaml (ALE/Pong-v5 -> configs/env/ALE/Pong-v5.yaml), there or not."""
    path = resources.files("pgrun.configs") / "env"
    for part in env_id.split("/"):
        path = path / part
    return Path(str(path.parent / f"{path.name}.yaml"))


def env_file_exists(env_id: str) -> bool:
    """Whether configs/env/<env_id>.yaml exists."""
    return env_file(env_id).is_file() if env_id else False


def env_id_argv(args: list[str]) -> list[str]:
    """`env.id=<id>` -> `env=<id>` when configs/env/<id>.yaml exists, so the run gets that env's
    settings and threshold; for an id without a file, the default env file's other settings stay
    and its solved_return and random_return are dropped (`env.solved_return=null`, unless given).
    A comma list of ids is treated the same way when all or none have a file. Other arguments,
    and `env.id` next to an `env=` choice, are returned unchanged."""
    keys = [a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a]
    if "env" in keys and "env.id" in keys:
        _warn_other_env_file(args)
    if "env" in keys or "env.id" not in keys:
        return args
    out, extra = [], []
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") != "env.id" or "(" in value or not value:
            out.append(arg)
            continue
        ids = value.split(",")
        with_file = [env_file_exists(i) for i in ids]
        if all(with_file):
            out.append(f"env={value}")
        elif not any(with_file):
            out.append(arg)
            extra += [f"{k}=null" for k in NO_FILE_KEYS if k not in keys]
        else:
            named = ", ".join(i for i, f in zip(ids, with_file, strict=True) if f)
            raise UserError(
                f"{arg}: {named} has an env file and the others have none; sweep "
                f"env=<ids with a file> and env.id=<the others> separately"
            )
    return out + extra


class HideNoFileOverrides(logging.Filter):
    """The launchers' line for each job (`#0 : env.id=CartPole-v0 seed=0`) without the
    overrides env_id_argv adds: the user did not type them, and every such job has them."""

    _added = re.compile(" (?:" + "|".join(re.escape(o) for o in NO_FILE_OVERRIDES) + ")(?= |$)")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("\t#"):
            record.msg = self._added.sub("", record.msg)
        return True


def _warn_other_env_file(args: list[str]) -> None:
    """One line when `env=<file>` and `env.id=<another id>` are both given: the file's settings
    (horizon, solved_return, random_return, ...) then hold for the other env, which is meant for
    an env of your own (`module:id`, said nothing of) and rarely for another registered one:
    its threshold then says "solved" of another env's returns."""
    values = {a.split("=", 1)[0].lstrip("+~"): a.split("=", 1)[1] for a in args if "=" in a}
    env, env_id = values["env"], values["env.id"]
    if any(c in env + env_id for c in ",()") or env == env_id:
        return
    has_file = env_file_exists(env_id)
    if ":" in env_id and not has_file:  # an env of your own (module:id)
        return
    own = (
        f"env={env_id} takes its own"
        if has_file
        else f"env.id={env_id} alone takes none of them ({env_id} has no env file)"
    )
    print(
        f"pgrun: warning: env.id={env_id} with env={env}: {env}'s env file settings (horizon, "
        f"solved_return, random_return, ...) hold for {env_id}; {own}",
        file=sys.stderr,
    )


def value_gamma_warning(cfg: Any, time_limit: int | None) -> str | None:
    """One line when a learned V is bootstrapped at a time limit with gamma = 1: V(s) cannot see
    the steps left, so its target (the return to go, continued with V itself) is ill-defined."""
    if cfg.variant.baseline != "value" or cfg.gamma < 1.0 or time_limit is None:
        return None
    if str(getattr(cfg.env.truncation, "value", cfg.env.truncation)) != "bootstrap":
        return None
    return (
        f"pgrun: warning: variant.baseline=value with gamma=1 bootstraps V at {cfg.env.id}'s "
        f"time limit ({time_limit} steps), where a V that cannot see the time left is "
        "ill-defined; set gamma<1 (e.g. gamma=0.99, as experiment=cartpole_value_baseline does) "
        "or env.truncation=terminate"
    )
