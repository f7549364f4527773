"""Profiles: which experiment each notebook runs under ``smoke``, ``cpu``, ``gpu`` and ``gpu-dry``.

``nbmodule/profiles.yaml`` maps a study notebook to one of its config files plus a few overrides, never to a
copy of the values; other notebooks (00, 01, 06) get plain parameters. The suite injects the resolved values
into the notebook and ``python -m nbmodule run <study> --profile P`` runs the very same config, so both
doors train the same model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, StudyConfig, parse_yaml

__all__ = ["PROFILES", "PROFILE_NAMES", "RUNTIME", "ProfileError", "load_profiles", "suite_settings",
           "notebook_parameters", "study_profile"]

PROFILES = Path(__file__).with_name("profiles.yaml")
PROFILE_NAMES = ("smoke", "cpu", "gpu", "gpu-dry")
#: Parameters of every notebook that say where and how to run, never what (they are not config fields).
RUNTIME = ("device", "out", "data", "mount_drive", "progress", "threads", "restart")


class ProfileError(ConfigError):
    """A profile that cannot be used (unknown name, malformed block, a value its config refuses)."""


def load_profiles(path: str | Path = PROFILES) -> dict[str, Any]:
    path = Path(path)
    try:
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ProfileError(f"cannot read profiles {path}: {err}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of notebook stem -> profile -> parameters")
    for key, block in data.items():
        if not isinstance(block, dict) or not set(block) <= set(PROFILE_NAMES):
            raise ProfileError(f"{path}: block {key!r} must map profile names {PROFILE_NAMES} to parameter dicts")
        for prof, params in block.items():
            if not isinstance(params or {}, dict):
                raise ProfileError(f"{path}: {key}.{prof} must be a mapping of parameters")
    return data


def _check(profile: str) -> None:
    if profile not in PROFILE_NAMES:
        raise ProfileError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_NAMES)}")


def suite_settings(profiles: dict[str, Any], profile: str) -> dict[str, Any]:
    """Runner settings of a profile (e.g. the per-cell ``execution_timeout``)."""
    _check(profile)
    return dict((profiles.get("_suite") or {}).get(profile) or {})


def _block(profiles: dict[str, Any], profile: str, stem: str) -> dict[str, Any]:
    _check(profile)
    return dict((profiles.get(stem) or {}).get(profile) or {})


def study_profile(profiles: dict[str, Any], profile: str, stem: str, config_class: type[StudyConfig]
                  ) -> tuple[StudyConfig, dict[str, Any]]:
    """A study notebook's config and runtime parameters under ``profile``.

    The block's ``config`` names a file of the study (default: ``default``); its other keys override config
    fields, or are runtime parameters (:data:`RUNTIME`), which ``_all`` also supplies."""
    block = _block(profiles, profile, stem)
    name = block.pop("config", "default")
    fields = set(config_class.model_fields)
    overrides = {k: v for k, v in block.items() if k in fields}
    runtime = dict((profiles.get("_all") or {}).get(profile) or {})
    for key, value in block.items():
        if key in fields:
            continue
        if key not in RUNTIME:
            raise ProfileError(f"profiles.yaml {stem}.{profile}: {key!r} is neither a field of "
                               f"{config_class.__name__} nor a runtime parameter ({', '.join(RUNTIME)})")
        runtime[key] = value
    cfg = config_class.from_file(name, overrides, override_source=f"profiles.yaml {stem}.{profile}")
    return cfg, runtime


def notebook_parameters(profiles: dict[str, Any], profile: str, stem: str) -> dict[str, Any]:
    """Everything the suite injects into notebook ``stem``: for a study, every config field (resolved from
    its file and overrides) plus the runtime parameters; for other notebooks, ``_all`` plus their block."""
    from .studies import study_for_notebook

    study = study_for_notebook(stem)
    if study is None:
        params = dict((profiles.get("_all") or {}).get(profile) or {})
        params.update(_block(profiles, profile, stem))
        return params
    cfg, runtime = study_profile(profiles, profile, stem, study.config_class)
    return {**cfg.to_dict(), **runtime}
