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
    folder = check_writable(root.expanduser().resolve() / (args.name or study.notebook))
    threads = args.threads if args.threads is not None else int(runtime.get("threads", 0) or 0)
    progress = not args.no_progress and bool(runtime.get("progress", True))
    ctx = RunContext.create(device=args.device, data=args.data, progress=progress, threads=threads,
                            restart=args.restart)
    print(f"[nbmodule] {study.name} -> {folder} (device {ctx.device}, data {ctx.data})", flush=True)
    metrics = execute(study, cfg, RunDir(folder), ctx)
    print(json.dumps(metrics, indent=1, sort_keys=True))
    print(f"[nbmodule] run folder: {folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # key=value may come after options (argparse alone would not take positionals interleaved with them)
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if "=" not in e or e.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        if args.command != "run":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return _list() if args.command == "list" else _run(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
