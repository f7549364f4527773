"""Acquire every dataset of the suite (download, verify, extract, convert) or synthesise it offline.

``python -m data_prep DATASET [--dest DIR] [--source URL|FILE] [--synthetic]``; see ``registry.DATASETS``.
"""
from .extract import ArchiveError, UnsafeArchiveError, extract
from .fetch import ChecksumError, DownloadError, Mirror, RemoteFile, fetch, verify
from .registry import DATASETS, DatasetSpec, default_dest, get_spec, prepare, prepare_many

__all__ = ["ArchiveError", "UnsafeArchiveError", "extract", "ChecksumError", "DownloadError", "Mirror",
           "RemoteFile", "fetch", "verify", "DATASETS", "DatasetSpec", "default_dest", "get_spec", "prepare", "prepare_many"]
