"""Acquire every dataset of the suite (download, verify, extract, convert) or synthesise it offline.

Front door for studies: :func:`obtain` (real data first, synthetic fallback with the reason). Also
:func:`prepare` (one kind, returns the folder), :func:`check` (ready / stale / damaged / missing, from the
marker every build writes), :func:`build_dry_mirror` (an offline mirror of every dataset in its published
layout, for the GPU dry run). ``python -m data_prep DATASET [--dest DIR] [--source URL|FILE] [--synthetic]``;
``python -m data_prep list | check NAME | dry-mirror --shared DIR --dest DIR``. ``data_prep`` never imports
``nbmodule`` (the layers go one way).
"""
from .extract import ArchiveError, UnsafeArchiveError, UnsafePathError, confined, extract
from .fetch import ChecksumError, DownloadError, Mirror, RemoteFile, fetch, verify
from .fixtures import build_dry_mirror
from .marker import MARKER, Status
from .registry import (DATASETS, DataPrepError, DatasetSpec, DestinationError, OptionsError, Prepared, check,
                       default_dest, get_spec, obtain, prepare, prepare_many)
from .roots import DataRootError, data_root, mirror_roots

__all__ = ["ArchiveError", "UnsafeArchiveError", "UnsafePathError", "confined", "extract", "ChecksumError",
           "DownloadError", "Mirror", "RemoteFile", "fetch", "verify", "build_dry_mirror", "MARKER", "Status",
           "DATASETS", "DataPrepError", "DatasetSpec", "DestinationError", "OptionsError", "Prepared", "check",
           "default_dest", "get_spec", "obtain", "prepare", "prepare_many", "DataRootError", "data_root",
           "mirror_roots"]
