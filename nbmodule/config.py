"""Typed, validated experiment configs.

Every engine takes one config object. The notebooks' ``parameters`` cell holds plain values; the next cell
turns them into a config with :func:`make_config`, so a mistyped or out-of-range value fails *before* any
training, with a message naming the field and the allowed values. YAML files under ``configs/`` use the
same field names (load them with :func:`load_config`), so the CLI and the notebooks run the same
experiments.

pydantic does the validation (types, ``Literal`` choices, bounds); this module only gives every config the
same strictness (unknown fields rejected) and turns pydantic's report into one readable error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["Config", "ConfigError", "make_config", "load_config", "load_yaml", "parse_override", "pick"]


class ConfigError(ValueError):
    """A config that cannot be used: names the source, the field and what is allowed."""


class Config(BaseModel):
    """Base class of every experiment config: unknown fields are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (for the run folder's ``config.json``)."""
        return self.model_dump(mode="json")


C = TypeVar("C", bound=Config)


def _format_errors(cls: type[Config], err: ValidationError, source: str) -> str:
    lines = [f"invalid {cls.__name__} from {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<config>"
        if e["type"] == "extra_forbidden":
            known = ", ".join(sorted(cls.model_fields))
            lines.append(f"  - unknown field {field!r} (known fields: {known})")
        else:
            lines.append(f"  - field {field!r}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def make_config(cls: type[C], values: Mapping[str, Any] | None = None, *, source: str = "parameters",
                **overrides: Any) -> C:
    """Build ``cls`` from ``values`` updated with ``overrides``; raise :class:`ConfigError` on bad input.

    ``source`` names where the values came from (a YAML path, "parameters cell") for the message.
    Keys present in ``values`` but not fields of ``cls`` are rejected, not ignored.
    """
    merged = {**dict(values or {}), **overrides}
    try:
        return cls.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_errors(cls, err, source)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, following an optional ``base:`` key (a path relative to the file) first."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        data = {**load_yaml(path.parent / base), **data}
    return data


def load_config(cls: type[C], path: str | Path, **overrides: Any) -> C:
    """Load a YAML config file (with its ``base:`` chain) into ``cls``, then apply ``overrides``."""
    return make_config(cls, load_yaml(path), source=str(path), **overrides)


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` from a command line -> ``(key, value)``, the value read as YAML (``3``, ``0.1``,
    ``true``, ``[a, b]``); an ``argparse`` ``type=`` for every CLI's ``-o key=value``."""
    import argparse

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def pick(values: Mapping[str, Any], cls: type[Config]) -> dict[str, Any]:
    """The entries of ``values`` (e.g. a notebook's ``globals()``) that are fields of ``cls``."""
    return {k: values[k] for k in cls.model_fields if k in values}
