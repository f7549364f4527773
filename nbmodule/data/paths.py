"""Finding a prepared dataset on disk, with a message that says how to get it when it is missing.

Studies obtain their data with :func:`data_prep.obtain` (real first, synthetic fallback, freshness decided by
data_prep's marker); this module only locates a folder that is already there."""
from __future__ import annotations

from pathlib import Path

from ..env import data_root

__all__ = ["DatasetNotFoundError", "dataset_dir"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder is missing or incomplete; the message says how to obtain it."""


def dataset_dir(name: str, *, root: str | Path | None = None, synthetic: bool = False,
                path: str | Path | None = None, required: tuple[str, ...] = ()) -> Path:
    """The folder of dataset ``name``: ``path`` if given, else ``<data root>/[synthetic/]<name>``.

    ``required`` lists relative paths that must exist inside it (e.g. ``("train.csv",)``).
    """
    folder = Path(path) if path else data_root(root) / ("synthetic" if synthetic else "") / name
    missing = [r for r in required if not (folder / r).exists()]
    if not folder.is_dir() or missing:
        what = f"missing {', '.join(missing)} in {folder}" if folder.is_dir() else f"no folder {folder}"
        raise DatasetNotFoundError(
            f"dataset {name!r} not found ({what}). Get it with `python -m data_prep {name} --dest {folder}` "
            f"(NBM_MIRROR may name a local mirror; or notebook 00_data), or make offline synthetic data with "
            f"`python -m data_prep {name} --synthetic`.")
    return folder
