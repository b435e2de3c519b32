"""`meet-train` flags for CODER's hyper-parameters, generated from CoderConfig.

Numbers take `--name VALUE`; each part is switched off by `--no_<part>` (the MEET convention):
--no_momentum_queue --no_adaptive_weighting --no_concept_branch --no_cluster_loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from meet_milvus_training.coder.config import CoderConfig

_TYPES = {int: int, float: float}


def coder_options(f: Callable) -> Callable:
    """Adds one click option per CoderConfig field (default None = the config's default)."""
    defaults = CoderConfig()
    for name, field in reversed(CoderConfig.model_fields.items()):
        help_ = field.description or name.replace("_", " ")
        if field.annotation is bool:
            f = click.option(
                f"--no_{name}", f"coder_no_{name}", is_flag=True, help=f"CODER: {name} off"
            )(f)
        else:
            f = click.option(
                f"--{name}",
                f"coder_{name}",
                type=_TYPES[field.annotation],
                default=None,
                help=f"CODER: {help_} [{getattr(defaults, name)}]",
            )(f)
    return f


def coder_values(kw: dict[str, Any]) -> dict[str, Any]:
    """Pops the CODER flags out of a command's keyword arguments; returns those that were given."""
    values: dict[str, Any] = {}
    for name, field in CoderConfig.model_fields.items():
        if field.annotation is bool:
            if kw.pop(f"coder_no_{name}"):
                values[name] = False
        else:
            value = kw.pop(f"coder_{name}")
            if value is not None:
                values[name] = value
    return values
