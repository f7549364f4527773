"""``python -m data_prep DATASET|all [--dest DIR] [--source URL|FILE ...] [--synthetic] [-o key=value ...]``,
``python -m data_prep list``, ``python -m data_prep check DATASET [--dest DIR] [--synthetic] [--deep]``,
``python -m data_prep dry-mirror --shared DIR --dest DIR``.

Every error prints one line ``error: ...`` and exits 2; ``check`` exits 0 when ready, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
import tarfile
import zipfile

from .extract import ArchiveError
from .fetch import ChecksumError, DownloadError
from .options import OptionError, parse_key_value
from .registry import DATASETS, DataPrepError, check, get_spec, prepare
from .roots import DataRootError

ERRORS = (DataPrepError, DownloadError, ChecksumError, ArchiveError, OptionError, DataRootError, OSError,
          ValueError, KeyError, zipfile.BadZipFile, tarfile.TarError)


class UsageError(Exception):
    """Bad command-line usage (argparse's complaint)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise UsageError(message)


def _option(text: str):
    try:
        return parse_key_value(text, what="option")
    except OptionError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(err).__name__


def _prepare_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m data_prep", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=[*DATASETS, "all", "list"], metavar="DATASET",
                        help=f"one of {', '.join(DATASETS)}, 'all' or 'list' (also: check, dry-mirror)")
    parser.add_argument("--dest", help="output folder (default: $NBM_DATA/<dataset>, or .../synthetic/<dataset>)")
    parser.add_argument("--source", action="append", default=[],
                        help="a local archive or a URL to use instead of the mirrors (repeatable)")
    parser.add_argument("--source-dir", help="a folder of official files (archives or unpacked) to convert")
    parser.add_argument("--mirror", action="append", default=None,
                        help="a local mirror folder or URL prefix tried before the public mirrors "
                             "(repeatable; default $NBM_MIRROR)")
    parser.add_argument("--synthetic", action="store_true", help="write offline synthetic data in the same format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the destination is ready")
    parser.add_argument("--no-verify", action="store_true",
                        help="accept files whose checksum differs from the published one (repackaged copies)")
    parser.add_argument("--option", "-o", action="append", type=_option, default=[],
                        help="dataset-specific option key=value (e.g. n_train=240, scale=smoke)")
    return parser


def _check_main(argv: list[str]) -> int:
    parser = _Parser(prog="python -m data_prep check", description="Is a prepared dataset ready?")
    parser.add_argument("dataset", choices=list(DATASETS), metavar="DATASET")
    parser.add_argument("--dest")
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deep", action="store_true", help="verify every recorded checksum, not only sizes")
    parser.add_argument("--option", "-o", action="append", type=_option, default=[])
    args = parser.parse_args(argv)
    status = check(args.dataset, args.dest, synthetic=args.synthetic, seed=args.seed, deep=args.deep,
                   **dict(args.option))
    print(f"{args.dataset}: {status}")
    return 0 if status.ready else 1


def _dry_mirror_main(argv: list[str]) -> int:
    from .fixtures import build_dry_mirror

    parser = _Parser(prog="python -m data_prep dry-mirror",
                     description="Build an offline mirror of every dataset in its published layout.")
    parser.add_argument("--shared", required=True, help="the shared real-data folder (shared/data)")
    parser.add_argument("--dest", required=True, help="the mirror folder to write (new, or a dry mirror)")
    parser.add_argument("--frames", type=int, default=2, help="rendered scenes per split (NYU-v2, Taskonomy)")
    args = parser.parse_args(argv)
    path = build_dry_mirror(args.dest, shared=args.shared, frames=args.frames)
    print(f"dry mirror ready at {path}; use it with NBM_MIRROR={path}")
    return 0


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "check":
        return _check_main(argv[1:])
    if argv and argv[0] == "dry-mirror":
        return _dry_mirror_main(argv[1:])
    args = _prepare_parser().parse_args(argv)
    if args.dataset == "list":
        for name in DATASETS:
            print(f"{name:14s} {get_spec(name).summary}")
        return 0
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    if len(names) > 1 and (args.dest or args.source or args.source_dir):
        raise UsageError("--dest, --source and --source-dir need a single dataset")
    options = {}
    for key, value in args.option:
        if key in options:
            raise UsageError(f"option {key!r} is given twice")
        options[key] = value
    for name in names:
        prepare(name, args.dest, sources=args.source, synthetic=args.synthetic, seed=args.seed, force=args.force,
                verify_checksums=not args.no_verify, mirrors=args.mirror, source_dir=args.source_dir, **options)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except UsageError as err:
        print(f"error: {_one_line(err)} (see python -m data_prep --help)", file=sys.stderr)
    except ERRORS as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
