"""The papermill runner: execute the numbered notebooks in order under a profile.

    python -m nbmodule.suite --profile {smoke,cpu,gpu,gpu-dry} [--only 02,04] [--out DIR]
                             [-p name value ...] [-y YAML] [--notebooks DIR]

Profiles live in ``nbmodule/profiles.yaml`` (see :mod:`nbmodule.profiles`: a study notebook gets every field of
its config, resolved from a config file plus overrides, exactly what ``python -m nbmodule run <study> --profile``
runs). Before anything runs, every selected notebook is checked: it must
have exactly one cell tagged ``parameters`` (papermill alone would silently let the notebook's defaults win)
and must declare every name the profile injects; a ``-p`` name must be declared by at least one selected
notebook. Each notebook runs in its own ``python3`` kernel (this environment's), with ``notebooks/`` as the
working directory; a failure is recorded and the next notebook still runs. ``DIR`` receives the executed
notebooks, each notebook's run folder ``DIR/<stem>/`` and ``summary.json`` (the latest result of every notebook
ever run into ``DIR``, merged and written atomically); the exit status is 1 when a notebook of this invocation
failed, and the failing cell's source and traceback are printed. ``DIR`` is checked to be writable first.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nbformat
import yaml

from .config import ConfigError
from .env import REPO_ROOT, runs_root
from .profiles import PROFILE_NAMES, PROFILES, load_profiles, notebook_parameters, suite_settings
from .progress import progress_bar
from .runs import _read_json, atomic_write_text, versions
from .config import parse_yaml, pick
from .studies import check_writable, study_for_notebook

__all__ = ["PROFILES", "PROFILE_NAMES", "SuiteError", "NotebookResult", "load_profiles", "find_notebooks",
           "declared_parameters", "plan", "run_suite", "main"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class SuiteError(ConfigError):
    """A problem found before any notebook runs (bad profile, missing parameters cell, unknown name)."""


@dataclass
class NotebookResult:
    notebook: str
    status: str  # "ok" | "failed"
    seconds: float
    output: str
    error_cell: int | None = None
    error: str | None = None
    traceback: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    profile: str = ""
    finished: str = ""


def default_notebooks_dir() -> Path:
    if REPO_ROOT is not None and (REPO_ROOT / "notebooks").is_dir():
        return REPO_ROOT / "notebooks"
    return Path.cwd() / "notebooks"


def find_notebooks(folder: str | Path, only: Sequence[str] = ()) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` in order, restricted to the ``only`` prefixes if given. The
    results notebook (``NN_results``) runs last whatever its number: it reads the other notebooks' run folders."""
    folder = Path(folder)
    books = sorted(folder.glob("[0-9][0-9]_*.ipynb"), key=lambda p: (p.stem.endswith("_results"), p.name))
    if not books:
        raise SuiteError(f"no numbered notebooks (NN_*.ipynb) in {folder}")
    if only:
        wanted = [o.strip() for o in only]
        if not all(wanted):
            raise SuiteError(f"--only {','.join(only)!r} holds an empty notebook prefix; give prefixes such as "
                             f"02,04 (have: {', '.join(b.stem for b in books)})")
        chosen = [b for b in books if any(b.stem == w or b.stem.startswith(w) for w in wanted)]
        unmatched = [w for w in wanted if not any(b.stem == w or b.stem.startswith(w) for b in books)]
        if unmatched:
            raise SuiteError(f"--only {','.join(unmatched)} matches no notebook in {folder} "
                             f"(have: {', '.join(b.stem for b in books)})")
        books = chosen
    return books


def declared_parameters(path: str | Path) -> dict[str, Any]:
    """Names (and default source text) declared in the notebook's single ``parameters`` cell."""
    import papermill

    nb = nbformat.read(str(path), as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in (c.get("metadata", {}).get("tags") or [])]
    if not tagged:
        raise SuiteError(f"{path}: no cell tagged 'parameters' (papermill would silently keep the notebook's "
                         "defaults); tag the cell holding the parameters")
    if len(tagged) > 1:
        raise SuiteError(f"{path}: {len(tagged)} cells tagged 'parameters' (cells {tagged}); keep exactly one")
    seen = {name: info["default"] for name, info in papermill.inspect_notebook(str(path)).items()}
    try:
        tree = ast.parse(nb.cells[tagged[0]].source)
    except SyntaxError as err:
        raise SuiteError(f"{path}: the parameters cell is not valid Python ({err})") from None
    assigned = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    lost = sorted(assigned - set(seen))
    if lost:
        raise SuiteError(f"{path}: papermill cannot parse the parameters cell lines of {', '.join(lost)} "
                         "(a quote or apostrophe in a trailing comment?), so they could not be overridden")
    return seen


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def plan(notebooks: Sequence[Path], profile: str, profiles: dict[str, Any], user_params: dict[str, Any],
         out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Check every notebook and build its parameters; raise :class:`SuiteError` before anything runs."""
    problems: list[str] = []
    result = []
    used: set[str] = set()
    for nb in notebooks:
        try:
            declared = declared_parameters(nb)
        except SuiteError as err:
            problems.append(str(err))
            continue
        try:
            params = notebook_parameters(profiles, profile, nb.stem)
        except ConfigError as err:
            problems.append(f"{nb}: {err}")
            continue
        unknown = sorted(set(params) - set(declared))
        if unknown:
            problems.append(f"{nb}: profile {profile!r} injects {', '.join(unknown)}, which the notebook's "
                            f"parameters cell does not declare (declared: {', '.join(declared)})")
        for name, value in user_params.items():
            if name in declared:
                params[name] = value
                used.add(name)
        if "out" in declared and "out" not in user_params:
            params["out"] = str(out)
        study = study_for_notebook(nb.stem)
        if study is not None:  # a -p value the config refuses fails now, not after the notebooks before it ran
            try:
                study.config_class.from_values(pick(params, study.config_class), source=f"-p/-y for {nb.stem}")
            except ConfigError as err:
                problems.append(str(err))
        result.append((nb, params))
    unused = sorted(set(user_params) - used)
    if unused:
        problems.append(f"parameter(s) {', '.join(unused)} given with -p/-y are declared by none of the "
                        f"selected notebooks ({', '.join(nb.stem for nb in notebooks)})")
    if problems:
        raise SuiteError("the suite cannot start:\n  - " + "\n  - ".join(problems))
    return result


def _failed_cell(output: Path) -> int | None:
    """Index of the cell papermill marked as failed or still running in an executed notebook."""
    try:
        nb = nbformat.read(str(output), as_version=4)
    except Exception:  # the output may not have been written at all
        return None
    for i, cell in enumerate(nb.cells):
        status = cell.get("metadata", {}).get("papermill", {}).get("status")
        if status in ("failed", "running"):
            return i
    return None


def _run_one(nb: Path, params: dict[str, Any], output: Path, cwd: Path, timeout: int | None) -> NotebookResult:
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    start = time.perf_counter()
    res = NotebookResult(notebook=nb.stem, status="ok", seconds=0.0, output=str(output), parameters=params)
    try:
        papermill.execute_notebook(
            str(nb), str(output), parameters=params, kernel_name="python3", cwd=str(cwd),
            progress_bar=False, execution_timeout=timeout, request_save_on_cell_execute=True, log_output=False)
    except PapermillExecutionError as err:
        res.status, res.error_cell = "failed", err.cell_index
        res.error = f"{err.ename}: {err.evalue}"
        res.traceback = _ANSI.sub("", "\n".join(err.traceback))
        res.traceback = f"cell {err.cell_index} source:\n{err.source}\n\n{res.traceback}"
    except CellTimeoutError as err:
        res.status, res.error_cell = "failed", _failed_cell(output)
        res.error = f"CellTimeoutError: a cell ran longer than {timeout} s ({err})"
    except DeadKernelError as err:
        res.status, res.error_cell = "failed", _failed_cell(output)
        res.error = f"DeadKernelError: the kernel died ({err}); out of memory?"
    except Exception as err:  # papermill/nbclient raise others (e.g. NoSuchKernel); record, keep going
        res.status, res.error_cell = "failed", _failed_cell(output)
        res.error = f"{type(err).__name__}: {err}"
        res.traceback = traceback.format_exc()
    res.seconds = round(time.perf_counter() - start, 2)
    return res


def _export_report(output: Path, run_dir: Path) -> str | None:
    """The results notebook becomes a standalone HTML report in its run folder."""
    try:
        from .viz.report import export_html
    except ImportError:
        return None
    dest = run_dir / "report.html"
    export_html(output, dest)
    return str(dest)


def _merge_summary(path: Path, summary: dict[str, Any], result: dict[str, Any]) -> None:
    """Keep the latest result of every notebook ever run into this folder; write atomically."""
    by_name = {r["notebook"]: r for r in summary["results"]}
    by_name[result["notebook"]] = result
    summary["results"] = [by_name[k] for k in sorted(by_name)]
    summary["failed"] = [r["notebook"] for r in summary["results"] if r["status"] != "ok"]
    summary["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_text(path, json.dumps(summary, indent=2, default=str))


def _previous_summary(path: Path) -> list[dict[str, Any]]:
    """The results of an earlier ``summary.json``; a damaged one is kept as ``summary.json.bad`` (never
    overwritten by the new summary) and a new one is started."""
    if not path.exists():
        return []
    try:
        old = _read_json(path, dict)
    except ConfigError as err:
        bad = path.with_name(path.name + ".bad")
        os.replace(path, bad)
        print(f"[suite] warning: {err}; kept it as {bad} and starting a new summary", file=sys.stderr)
        return []
    results = old.get("results", [])
    return [r for r in results if isinstance(r, dict) and "notebook" in r] if isinstance(results, list) else []


def run_suite(profile: str = "cpu", *, only: Sequence[str] = (), out: str | Path | None = None,
              params: dict[str, Any] | None = None, notebooks_dir: str | Path | None = None,
              profiles_path: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the suite; return the summary (also in ``<out>/summary.json``) with ``this_run``: the notebooks
    run now and ``this_run_failed``: those of them that failed."""
    profiles = load_profiles(profiles_path or PROFILES)
    out = Path(out).expanduser().resolve() if out else runs_root() / profile
    folder = Path(notebooks_dir).resolve() if notebooks_dir else default_notebooks_dir()
    books = find_notebooks(folder, only)
    jobs = plan(books, profile, profiles, dict(params or {}), out)
    try:
        check_writable(out)
    except ConfigError as err:
        raise SuiteError(str(err)) from None
    timeout = suite_settings(profiles, profile).get("execution_timeout")
    # The venv's own kernelspec first, whatever user-level "python3" kernelspec may exist.
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(Path(sys.prefix) / "share" / "jupyter"), os.environ.get("JUPYTER_PATH", "")]).strip(os.pathsep)
    path = out / "summary.json"
    summary: dict[str, Any] = {"out": str(out), "notebooks_dir": str(folder), "versions": versions(),
                               "results": _previous_summary(path)}
    this_run: list[str] = []
    failed_now: list[str] = []
    bar = progress_bar(jobs, desc=f"suite[{profile}]", enabled=progress, unit="nb")
    for nb, nb_params in bar:
        bar.set_postfix_str(nb.stem)
        output = out / nb.name
        result = _run_one(nb, nb_params, output, folder, timeout)
        result.profile, result.finished = profile, time.strftime("%Y-%m-%dT%H:%M:%S")
        if result.status == "ok" and nb.stem.endswith("_results"):
            summary["report"] = _export_report(output, out / nb.stem)
        this_run.append(nb.stem)
        if result.status != "ok":
            failed_now.append(nb.stem)
        _merge_summary(path, summary, asdict(result))
        mark = "ok" if result.status == "ok" else "FAILED"
        print(f"[suite] {nb.stem}: {mark} in {result.seconds:.1f} s", flush=True)
        if result.status != "ok":
            print(f"[suite] {nb.stem} failed at cell {result.error_cell}: {result.error}\n"
                  f"{result.traceback or ''}\n[suite] executed notebook: {output}", file=sys.stderr, flush=True)
    return {**summary, "this_run": this_run, "this_run_failed": failed_now}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nbmodule.suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=PROFILE_NAMES)
    parser.add_argument("--only", default="", help="comma-separated notebook prefixes, e.g. 02,04")
    parser.add_argument("--out", default=None, help="output folder (default: runs/<profile> at the repo root)")
    parser.add_argument("-p", "--parameters", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                        help="override a parameter (value parsed as YAML: 3, 0.1, true, [a, b])")
    parser.add_argument("-y", "--parameters_yaml", action="append", default=[],
                        help="YAML mapping of parameters (a string, or a path to a YAML file)")
    parser.add_argument("--notebooks", default=None, help="folder of the numbered notebooks")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    params: dict[str, Any] = {}
    for text in args.parameters_yaml:
        if Path(text).is_file():
            source = Path(text).read_text()
        elif text.rstrip().endswith((".yaml", ".yml")) and "\n" not in text and ":" not in text:
            print(f"error: -y {text}: no such file", file=sys.stderr)
            return 2
        else:
            source = text
        try:
            loaded = parse_yaml(source)
        except yaml.YAMLError as err:
            print(f"error: -y {text!r} is not valid YAML: {str(err).splitlines()[0]}", file=sys.stderr)
            return 2
        if not isinstance(loaded, dict):
            print(f"error: -y {text!r} is not a YAML mapping of name: value", file=sys.stderr)
            return 2
        params.update(loaded)
    for name, value in args.parameters:
        params[name] = _parse_value(value)
    try:
        summary = run_suite(args.profile, only=args.only.split(",") if args.only else (), out=args.out,
                            params=params, notebooks_dir=args.notebooks, progress=not args.no_progress)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ok = len(summary["this_run"]) - len(summary["this_run_failed"])
    print(f"[suite] {ok}/{len(summary['this_run'])} notebooks succeeded; results in {summary['out']} "
          f"(summary.json, executed notebooks, one run folder per notebook)")
    return 1 if summary["this_run_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
