"""Command line of the MTML study, mirroring the seed's four scripts::

    python -m nbmodule.mtml train      --config configs/mtml/single_task.yaml          # main.py (single)
    python -m nbmodule.mtml train      --config configs/mtml/multi_task_baseline.yaml  # main.py (multi-task)
    python -m nbmodule.mtml meta-train --config configs/mtml/meta_multitask_baseline.yaml  # main_meta.py
    python -m nbmodule.mtml meta-test  --config configs/mtml/meta_testing.yaml         # main_meta_test.py
    python -m nbmodule.mtml test       --run runs/mtml/multi_task_baseline/phases/mtl  # test_MTL.py

``-o key=value`` overrides a config field (YAML syntax: ``-o steps=500 -o tasks=[seg,depth]``); ``--out``
and ``--device`` override ``out``/``device``. A run re-started with the same folder resumes from its
checkpoints. The run folder is ``<out>/<name or mode>/`` (see :mod:`nbmodule.engines.mtml`).
"""
from __future__ import annotations

import argparse
import json
import sys


from .config import ConfigError, load_config, parse_override

VERB_MODES = {"train": ("single", "mtl"), "meta-train": ("mtml",), "meta-test": ("meta_test",)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbmodule.mtml", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("verb", choices=[*VERB_MODES, "test"])
    parser.add_argument("--config", help="YAML config (train, meta-train, meta-test)")
    parser.add_argument("--run", help="test: a trained model's phase folder (holds checkpoints/final.pt)")
    parser.add_argument("--split", default="", help="test: the split to evaluate (default: the config's test_split)")
    parser.add_argument("--out", help="run root (overrides the config's out)")
    parser.add_argument("--device", help="auto, cpu, cuda... (overrides the config's device)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-o", "--override", action="append", type=parse_override, default=[])
    args = parser.parse_args(argv)

    from .engines.mtml import MTMLConfig, run_mode, test
    from .env import pick_device, seed_everything
    from .runs import RunDir

    try:
        if args.verb == "test":
            if not args.run:
                parser.error("test needs --run FOLDER")
            res = test(args.run, split=args.split, device=pick_device(args.device or "auto"))
            print(json.dumps(res, indent=1))
            return 0
        if not args.config:
            parser.error(f"{args.verb} needs --config FILE")
        over = dict(args.override)
        if args.out:
            over["out"] = args.out
        if args.device:
            over["device"] = args.device
        cfg = load_config(MTMLConfig, args.config, **over)
        if cfg.mode not in VERB_MODES[args.verb]:
            raise ConfigError(f"{args.config}: mode {cfg.mode!r} is not run by '{args.verb}' "
                              f"(it runs mode {' or '.join(VERB_MODES[args.verb])})")
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    run = RunDir(cfg.out, cfg.name or cfg.mode)
    metrics = run_mode(cfg, run, device=device, progress=not args.no_progress)
    print(json.dumps(metrics, indent=1))
    print(f"run folder: {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
