"""The command line: one door to every study, the same as its notebook.

    python -m nbmodule list
    python -m nbmodule run <study> (--config FILE | --profile NAME) [--out DIR] [--name NAME] [--data DIR]
                               [--device D] [--threads N] [--restart] [--no-progress] [--mode M] [key=value ...]

``--config`` takes a file of the study (``python -m nbmodule list`` names them; a path works too) over its
``default.yaml``; ``--profile`` runs exactly the config the suite injects into the study's notebook under that
profile (and its thread count). ``key=value`` overrides a field (YAML values: ``3``, ``0.1``, ``[a, b]``). The run
folder is ``<out>/<notebook stem>/`` (``--name`` changes the last part); ``--out`` defaults to ``runs/`` (with
``--profile``: ``runs/<profile>/``, where the suite writes). A run started again on the same folder resumes; one
with different settings is refused unless ``--restart``. Bad input exits with status 2 and one ``error:`` line.
"""
from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path
from typing import Sequence

from .config import ConfigError, parse_overrides

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nbmodule", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the studies, their notebooks, configs and profiles")
    run = sub.add_parser("run", help="run a study", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("study", help="a study name (python -m nbmodule list), notebook stem or number")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a config of the study (name or path), over its default.yaml")
    src.add_argument("--profile", help="smoke, cpu, gpu or gpu-dry: the config its notebook gets from the suite")
    run.add_argument("--out", help="run root (default: runs/, or runs/<profile>/ with --profile)")
    run.add_argument("--name", help="run folder name under --out (default: the notebook's stem)")
    run.add_argument("--data", default="", help="data root (default: $NBM_DATA or data/)")
    run.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1...")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the profile's, or torch's)")
    run.add_argument("--restart", action="store_true", help="discard the run folder's results instead of resuming")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--mode", help="studies with modes (mtml: train, meta-train, meta-test, test): same as mode=M")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")
    from . import sweep

    sweep.add_arguments(sub.add_parser("sweep", help="run a study's grid cell by cell, in parallel on Ray",
                                       description=sweep.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    report = sub.add_parser("report", help="the README's results tables, rendered from committed run folders")
    report.add_argument("results", help="the results folder (results/)")
    report.add_argument("--markdown", action="store_true", help="print the Markdown (the default)")
    report.add_argument("--readme", help="a README holding the generated block; with --check or --write")
    report.add_argument("--check", action="store_true", help="exit 1, printing a diff, when the README disagrees")
    report.add_argument("--write", action="store_true", help="replace the README's generated block")
    return parser


def _list() -> int:
    from .profiles import PROFILE_NAMES, load_profiles
    from .studies import STUDIES, get_study

    profiles = load_profiles()
    print("studies (python -m nbmodule run <study> --config NAME | --profile PROFILE):")
    for name in STUDIES:
        try:
            study = get_study(name)
        except ConfigError:
            continue
        have = [p for p in PROFILE_NAMES if p in (profiles.get(study.notebook) or {})]
        print(f"  {study.name:14s} notebook {study.notebook}: {study.title}")
        print(f"  {'':14s} configs:  {', '.join(study.configs())}")
        print(f"  {'':14s} profiles: {', '.join(have)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .env import runs_root
    from .profiles import load_profiles, study_profile
    from .runs import RunContext, RunDir
    from .studies import check_writable, execute, get_study

    study = get_study(args.study)
    overrides = parse_overrides(args.overrides)
    if args.mode:
        if "mode" not in study.config_class.model_fields:
            raise ConfigError(f"--mode: study {study.name!r} has no modes")
        overrides.setdefault("mode", args.mode)
    runtime: dict = {}
    if args.profile:
        cfg, runtime = study_profile(load_profiles(), args.profile, study.notebook, study.config_class)
        if overrides:
            cfg = study.config_class.from_values({**cfg.to_dict(), **overrides}, source="command line")
        root = Path(args.out) if args.out else runs_root() / args.profile
    else:
        cfg = study.config(args.config, overrides)
        root = Path(args.out) if args.out else runs_root()
    threads = args.threads if args.threads is not None else int(runtime.get("threads", 0) or 0)
    if threads < 0:
        raise ConfigError(f"--threads {threads}: must be 0 (torch's default) or a positive number of threads")
    progress = not args.no_progress and bool(runtime.get("progress", True))
    ctx = RunContext.create(device=args.device, data=args.data, progress=progress, threads=threads,
                            restart=args.restart)
    folder = check_writable(root.expanduser().resolve() / (args.name or study.notebook))
    print(f"[nbmodule] {study.name} -> {folder} (device {ctx.device}, data {ctx.data})", flush=True)
    metrics = execute(study, cfg, RunDir(folder), ctx)
    print(json.dumps(metrics, indent=1, sort_keys=True))
    print(f"[nbmodule] run folder: {folder}")
    return 0


def _anticipated() -> tuple[type[BaseException], ...]:
    """Errors a user can cause and fix (bad input, a busy or damaged run folder, no data offline, a diverged
    run, too little memory): one ``error:`` line and exit status 2. Anything else keeps its traceback."""
    from data_prep.fetch import DownloadError
    from data_prep.roots import DataRootError

    from .runs import CheckpointError, DivergenceError, MemoryEstimateError

    return (ConfigError, CheckpointError, DivergenceError, MemoryEstimateError, DownloadError, DataRootError)


# OS errors of the machine, not of the code: a full disk, a folder made read-only, a file where a folder should be
_OS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO,
              errno.ENOTDIR, errno.EISDIR}


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and not isinstance(err, _anticipated()):
        where = f": {err.filename}" if err.filename else ""
        return f"cannot write or read{where}: {err.strerror or err} (errno {errno.errorcode.get(err.errno, err.errno)})"
    return " ".join(str(err).split()) if "\n" not in str(err).strip() else str(err)


def _interrupted() -> str:
    from .runs import current_step

    where = current_step()
    if where.get("step"):
        saved = f", last checkpoint at step {where['saved']}" if where.get("saved") else ""
        return f"interrupted at step {where['step']} ({where['name']}{saved}); the same command resumes"
    return "interrupted before training started; the same command starts again"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # key=value may come after options (argparse alone would not take positionals interleaved with them)
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if "=" not in e or e.startswith("-")]
    if unknown:  # one error line, as for every other bad input (argparse's own adds its usage)
        hint = "; overrides are key=value" if any(not e.startswith("-") for e in unknown) else ""
        print(f"error: unrecognized arguments: {' '.join(unknown)}{hint} (python -m nbmodule {args.command} --help)",
              file=sys.stderr)
        return 2
    if extra:
        if args.command not in ("run", "sweep"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        if args.command == "sweep":
            from .sweep import command

            return command(args)
        if args.command == "report":
            from .viz.report import main as report

            return report(args.results, args.readme, check=args.check, write=args.write)
        return _list() if args.command == "list" else _run(args)
    except KeyboardInterrupt:
        print(_interrupted(), file=sys.stderr)
        return 130
    except Exception as err:
        if isinstance(err, _anticipated()) or (isinstance(err, OSError) and err.errno in _OS_ERRNOS):
            print(f"error: {_one_line(err)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
