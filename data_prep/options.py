"""``key=value`` options of the ``data_prep`` command line (``-o n_train=240``), values read as YAML.

This is the one parser of such overrides; ``nbmodule.config`` may wrap it (the layers go one way)."""
from __future__ import annotations

from typing import Any, Iterable

import yaml

__all__ = ["OptionError", "parse_key_value", "parse_key_values"]


class OptionError(ValueError):
    """A ``key=value`` text that cannot be read; the message names it."""


def parse_key_value(text: str, *, what: str = "option") -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``, the value read as YAML (``3``, ``0.1``, ``true``, ``[a, b]``)."""
    if "=" not in text:
        raise OptionError(f"{what} {text!r}: expected key=value (e.g. n_train=240)")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise OptionError(f"{what} {text!r}: the key before '=' is empty")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as err:
        msg = str(err).splitlines()[0]
        raise OptionError(f"{what} {text!r}: the value {value!r} is not valid YAML ({msg}); "
                          "lists are written [a, b], strings with spaces in quotes") from None


def parse_key_values(texts: Iterable[str], *, what: str = "option") -> dict[str, Any]:
    """Several ``key=value`` texts; a key given twice is an error (which one should win?)."""
    out: dict[str, Any] = {}
    for text in texts:
        key, value = parse_key_value(text, what=what)
        if key in out:
            raise OptionError(f"{what} {key!r} is given twice")
        out[key] = value
    return out
