"""``python -m data_prep DATASET [--dest DIR] [--source URL|FILE ...] [--synthetic]``."""
from __future__ import annotations

import argparse
import sys

from nbmodule.config import parse_override

from .extract import ArchiveError
from .fetch import ChecksumError, DownloadError
from .registry import DATASETS, get_spec, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    parser.add_argument("dataset", choices=[*DATASETS, "all", "list"])
    parser.add_argument("--dest", help="output folder (default: $NBM_DATA/<dataset>, or .../synthetic/<dataset>)")
    parser.add_argument("--source", action="append", default=[],
                        help="a local archive or a URL to use instead of the mirrors (repeatable)")
    parser.add_argument("--synthetic", action="store_true", help="write offline synthetic data in the same format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the destination looks ready")
    parser.add_argument("--no-verify", action="store_true",
                        help="accept files whose checksum differs from the published one (repackaged copies)")
    parser.add_argument("--option", "-o", action="append", type=parse_override, default=[],
                        help="dataset-specific option key=value (e.g. n_train=240)")
    args = parser.parse_args(argv)
    if args.dataset == "list":
        for name in DATASETS:
            spec = get_spec(name)
            print(f"{name:14s} {spec.summary}")
        return 0
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    if args.dest and len(names) > 1:
        parser.error("--dest needs a single dataset")
    try:
        for name in names:
            prepare(name, args.dest, sources=args.source, synthetic=args.synthetic, seed=args.seed,
                    force=args.force, verify_checksums=not args.no_verify, **dict(args.option))
    except (DownloadError, ChecksumError, ArchiveError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
