"""Typed, validated experiment configs whose values live in YAML only.

Every study's values are in ``nbmodule/configs/<study>/*.yaml`` (shipped inside the package, so a notebook
opened from Colab finds them after a plain ``pip install``): ``default.yaml`` holds every field, the other
files start with ``base: default.yaml`` (or another file) and change a few. The pydantic class holds the
types and bounds, never a value: :meth:`StudyConfig.from_values` starts from ``default.yaml``.

A mistyped or out-of-range value fails *before* any training, with one message naming where it came from
(a YAML path, an override ``key=value``, the notebook's parameters cell), the field and what is allowed.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
import typing
from typing import Any, ClassVar, Iterable, Literal, Mapping, TypeVar

import yaml
from data_prep.options import OptionError, parse_key_value, parse_key_values
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

__all__ = ["Config", "StudyConfig", "ConfigError", "CONFIG_ROOT", "config_path", "list_configs", "make_config",
           "load_config", "load_yaml", "parse_yaml", "parse_override", "parse_overrides", "pick"]

#: Where the studies' YAML configs live (inside the installed package).
CONFIG_ROOT = Path(__file__).with_name("configs")


class ConfigError(ValueError):
    """A config that cannot be used: names the source, the field and what is allowed."""


class Config(BaseModel):
    """Base class of every config: unknown fields are errors, assignments are validated, numbers are finite
    (NaN and infinities are refused), and a boolean is never taken for a number nor a number or a string
    for a boolean (``meta_iterations=true`` and ``first_order: 'yes'`` are refused, not read as 1 and True)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_number_mixups(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None:
            _check_scalar(field.annotation, value)
        return value

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (for the run folder's ``config.json``)."""
        return self.model_dump(mode="json")


def _scalar_kinds(annotation: Any) -> tuple[set[type], Any]:
    """The scalar types a field accepts at its top level (through Optional, Union, Annotated, Literal), and
    the annotation of its items when it is a list."""
    kinds: set[type] = set()
    items = None
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _scalar_kinds(typing.get_args(annotation)[0])
    if origin is Literal:
        return {type(v) for v in typing.get_args(annotation)}, None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(annotation):
            k, i = _scalar_kinds(arg)
            kinds |= k
            items = items or i
        return kinds, items
    if origin is list:
        args = typing.get_args(annotation)
        return {list}, args[0] if args else None
    if isinstance(annotation, type):
        kinds.add(annotation)
    return kinds, items


def _check_scalar(annotation: Any, value: Any) -> None:
    kinds, items = _scalar_kinds(annotation)
    if isinstance(value, bool):
        if bool not in kinds and kinds & {int, float}:
            raise ValueError(f"a boolean ({str(value).lower()}) where a number is expected")
    elif value is not None and bool in kinds and not kinds - {bool, type(None)}:
        raise ValueError(f"must be true or false (a YAML boolean), not {type(value).__name__} {value!r}")
    if items is not None and isinstance(value, list):
        for item in value:
            _check_scalar(items, item)


class StudyConfig(Config):
    """A study's config: its fields have no defaults in Python, they come from ``configs/<STUDY>/default.yaml``.

    ``RESUMABLE``: fields that may grow when a run is continued (an iteration budget): a run folder made with
    a smaller value resumes. ``NEUTRAL``: fields that never change results (logging, checkpoint periods),
    free to differ on resume. Any other difference between a run folder and the current config is refused.
    """

    STUDY: ClassVar[str] = ""
    RESUMABLE: ClassVar[frozenset[str]] = frozenset()
    NEUTRAL: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's default, from ``configs/<STUDY>/default.yaml``."""
        if not cls.STUDY:
            raise ConfigError(f"{cls.__name__} names no STUDY, so it has no default.yaml")
        return dict(_cached_yaml(str(config_path(cls.STUDY, "default"))))

    @classmethod
    def from_values(cls: type[C], values: Mapping[str, Any] | None = None, *, source: str = "parameters") -> C:
        """``default.yaml`` updated with ``values``; :class:`ConfigError` names ``source`` on bad input."""
        return make_config(cls, {**cls.defaults(), **dict(values or {})}, source=source)

    @classmethod
    def from_file(cls: type[C], path: str | Path, overrides: Mapping[str, Any] | None = None,
                  *, override_source: str = "command line") -> C:
        """A YAML file of this study (a path, or a name in its config folder) over ``default.yaml``, then
        ``overrides``. Errors in the file name the file; errors in an override name the override."""
        path = config_path(cls.STUDY, path)
        file_values = load_yaml(path)
        base = {**cls.defaults(), **file_values}
        make_config(cls, base, source=str(path))  # the file alone must be valid: blame it, not the override
        return make_config(cls, {**base, **dict(overrides or {})}, source=override_source)


C = TypeVar("C", bound=Config)


def _format_errors(cls: type[Config], err: ValidationError, source: str) -> str:
    lines = [f"invalid {cls.__name__} from {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<config>"
        if e["type"] == "extra_forbidden":
            known = ", ".join(sorted(cls.model_fields))
            lines.append(f"  - unknown field {field!r} (known fields: {known})")
        elif e["type"] == "missing":
            lines.append(f"  - field {field!r} is missing (every field needs a value; see the study's default.yaml)")
        else:
            lines.append(f"  - field {field!r}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def make_config(cls: type[C], values: Mapping[str, Any] | None = None, *, source: str = "parameters",
                **overrides: Any) -> C:
    """Build ``cls`` from ``values`` updated with ``overrides``; raise :class:`ConfigError` on bad input.

    No defaults are added: use :meth:`StudyConfig.from_values` for a study's config.
    """
    merged = {**dict(values or {}), **overrides}
    try:
        return cls.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_errors(cls, err, source)) from None


def config_path(study: str, name: str | Path) -> Path:
    """A config file: an existing path as given, else ``<name>[.yaml]`` in the study's config folder."""
    path = Path(name)
    if path.is_file():
        return path
    folder = CONFIG_ROOT / study
    for candidate in (folder / path.name, folder / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(list_configs(study)) or "none"
    raise ConfigError(f"config {str(name)!r} not found: neither a file nor a config of study {study!r} "
                      f"(its configs in {folder}: {known})")


def list_configs(study: str) -> list[str]:
    """Names of the study's YAML configs (without ``.yaml``), ``default`` first."""
    folder = CONFIG_ROOT / study
    names = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
    return sorted(names, key=lambda n: (n != "default", n))


@lru_cache(maxsize=None)
def _cached_yaml(path: str) -> dict[str, Any]:
    return load_yaml(path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (which one should win? PyYAML
    silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found the key {key!r} twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a mapping key given twice (:class:`yaml.YAMLError` naming it)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping, following an optional ``base:`` key (a path relative to the file) first."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"config file {path}: its base: chain loops ({cycle})")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as "
                          "UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        data = {**load_yaml(path.parent / str(base), (*_chain, resolved)), **data}
    return data


def load_config(cls: type[C], path: str | Path, **overrides: Any) -> C:
    """Load a YAML file into ``cls`` (over the study's ``default.yaml`` for a :class:`StudyConfig`)."""
    if isinstance(cls, type) and issubclass(cls, StudyConfig) and cls.STUDY:
        return cls.from_file(path, overrides)
    return make_config(cls, load_yaml(path), source=str(path), **overrides)


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` from a command line -> ``(key, value)``, the value read as YAML (``3``, ``0.1``,
    ``true``, ``[a, b]``); :class:`ConfigError` names the override when it cannot be read. The parser is
    data_prep's (one parser of such texts in the project)."""
    try:
        return parse_key_value(text, what="override")
    except OptionError as err:
        raise ConfigError(str(err)) from None


def parse_overrides(texts: Iterable[str]) -> dict[str, Any]:
    """Several ``key=value`` overrides; a key given twice is an error (which one should win?)."""
    try:
        return parse_key_values(texts, what="override")
    except OptionError as err:
        raise ConfigError(str(err)) from None


def pick(values: Mapping[str, Any], cls: type[Config]) -> dict[str, Any]:
    """The entries of ``values`` (e.g. a notebook's ``globals()``) that are fields of ``cls``."""
    return {k: values[k] for k in cls.model_fields if k in values}
