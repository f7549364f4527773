"""MAML few-shot classification (Finn et al. 2017) on Omniglot and MiniImagenet, built on :mod:`nbmodule.meta`.

``FewShotConfig`` holds the notebook-05 parameters (the YAML files in ``configs/fewshot/`` use the same
fields); :func:`prepare_data` makes the dataset ready (synthetic, converted from local official files, or
downloaded), :func:`load_splits` gives the meta-train/val/test :class:`~nbmodule.data.fewshot.FewShotSplit`,
:func:`train` meta-trains with validation curves, checkpoints and resume, :func:`evaluate` scores test
episodes (mean accuracy and 95% CI) and :func:`lake20_error` runs Lake et al.'s 20 one-shot runs.

Run folder (``<out>/05_maml_fewshot/``; several settings may share it, told apart by ``run``)::

    config.json                  the FewShotConfig of the latest run, seed, device, versions
    metrics.json                 {dataset}_{N}way_{K}shot_acc / _ci95 (percent, over eval_episodes test
                                 episodes), omniglot_lake20_error (percent), fewshot_train_s,
                                 fewshot_s_per_iter, fewshot_synthetic (1 = synthetic data)
    curves/fewshot_train.csv     run, seed, step, train_loss, train_acc  (meta-batch query loss/accuracy
                                 after the inner steps, averaged over log_every iterations)
    curves/fewshot_val.csv       run, seed, step, val_loss, val_acc  (val_episodes fixed validation
                                 episodes, inner_steps_test steps; acc in [0, 1])
    fewshot_test_{run}.json      per-episode test accuracies and the setting, for the results notebook
    checkpoints/{run}.pt         model, optimiser, sampler RNG state, iteration, config (resume)
    *.png                        learning curves, table, test-episode figure (saved by the notebook)

``run`` is the setting's name, e.g. ``omniglot_5way_1shot``.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ..config import Config, load_config, parse_override
from ..data.fewshot import (FewShotSplit, LakeRuns, episode_to_float, load_lake_runs, miniimagenet_splits,
                            omniglot_splits)
from ..data.paths import dataset_dir
from ..meta import meta_loss, resolve_strategy
from ..metrics import mean_confidence_interval
from ..models import build_model
from ..models.conv4 import conv4_forward_tasks
from ..progress import progress_bar
from ..runs import RunDir

__all__ = ["FewShotConfig", "FewShotResult", "STRATEGIES", "setting_name", "prepare_data", "convert_local", "load_splits",
           "build_fewshot_model", "grouped_meta_loss", "task_losses", "choose_strategy",
           "train", "evaluate", "predict", "lake20_error", "expand_head"]

class FewShotConfig(Config):
    """Notebook 05's parameters. Defaults: Omniglot 5-way 1-shot as in the paper (short training)."""

    dataset: Literal["omniglot", "miniimagenet"] = "omniglot"
    n_way: int = Field(5, ge=2, description="classes per episode")
    k_shot: int = Field(1, ge=1, description="support images per class")
    k_query: int = Field(1, ge=1, description="query images per class (MAML: k_shot on Omniglot, 15 MiniImagenet)")
    inner_steps: int = Field(1, ge=1, description="inner gradient steps in meta-training")
    inner_steps_test: int = Field(3, ge=1, description="inner gradient steps at validation/test")
    inner_lr: float = Field(0.4, gt=0, description="inner-loop step size alpha")
    meta_lr: float = Field(1e-3, gt=0, description="Adam step size beta of the outer loop")
    meta_batch_size: int = Field(32, ge=1, description="tasks per meta-iteration")
    meta_iterations: int = Field(60000, ge=0, description="outer steps")
    first_order: bool = Field(False, description="first-order MAML (no second derivatives)")
    eval_episodes: int = Field(600, ge=1, description="test episodes for the mean accuracy and its 95% CI")
    # extras
    synthetic: bool = Field(False, description="generated data in the real format (offline)")
    scale: Literal["smoke", "cpu", "full"] = Field("cpu", description="size of the synthetic data")
    source_dir: str = Field("", description="folder with the official files to convert when the data is not prepared")
    omniglot_split: Literal["maml", "background"] = Field(
        "maml", description="maml: 1200 of all 1623 characters train; background: Lake's background/evaluation")
    eval_every: int = Field(500, ge=1, description="validate every this many meta-iterations")
    val_episodes: int = Field(100, ge=1, description="fixed validation episodes per validation")
    log_every: int = Field(50, ge=1, description="average the training loss over this many iterations")
    checkpoint_every: int = Field(1000, ge=1, description="checkpoint every this many meta-iterations")
    strategy: Literal["auto", "loop", "vmap", "grouped"] = Field(
        "auto", description="how the tasks of a meta-batch run (auto: the fastest, measured at the start)")
    hidden: int = Field(0, ge=0, description="conv filters; 0 = 64 for Omniglot, 32 for MiniImagenet")
    lake_eval: bool = Field(True, description="score Lake et al.'s 20 one-shot runs when available (Omniglot)")
    resume: bool = Field(True, description="continue from this setting's checkpoint when one exists")


def setting_name(cfg: FewShotConfig) -> str:
    return f"{cfg.dataset}_{cfg.n_way}way_{cfg.k_shot}shot"


# --- data -----------------------------------------------------------------------------------------------
def _synthetic_scale(folder: Path) -> str | None:
    import json

    meta = folder / "meta.json"
    if not meta.is_file():
        return None
    return json.loads(meta.read_text()).get("scale")


def prepare_data(cfg: FewShotConfig, root: str | Path | None = None, *, seed: int = 0) -> Path:
    """The prepared dataset folder for ``cfg``: synthetic data at ``cfg.scale`` (rebuilt when another scale
    is there), the real data if already prepared, converted from ``cfg.source_dir`` (official files, taken
    unchanged), or downloaded from the mirrors."""
    from data_prep import prepare
    from data_prep.registry import default_dest

    if cfg.synthetic:
        dest = default_dest(cfg.dataset, True, root)
        force = dest.is_dir() and _synthetic_scale(dest) not in (None, cfg.scale)
        return prepare(cfg.dataset, dest, synthetic=True, seed=seed, scale=cfg.scale, force=force)
    dest = default_dest(cfg.dataset, False, root)
    if (dest / "meta.json").is_file():
        return dest
    if cfg.source_dir:
        return convert_local(cfg.dataset, cfg.source_dir, dest)
    return prepare(cfg.dataset, dest)


def convert_local(dataset: str, source_dir: str | Path, dest: str | Path) -> Path:
    """Convert official files found in ``source_dir`` (read unchanged) into ``dest``: Omniglot's
    ``images_background*.zip``/``images_evaluation*.zip`` (or the unzipped folders) and ``all_runs.zip``;
    MiniImagenet's split CSVs and ``images.zip``/``images/``."""
    source_dir = Path(source_dir)
    if dataset == "omniglot":
        from data_prep.omniglot import convert_sources

        full = [source_dir / f"images_{s}{ext}" for s in ("background", "evaluation") for ext in (".zip", "")]
        chars = [p for p in full if p.exists()]
        # a folder and its zip hold the same characters: keep one of each set
        sets = {}
        for p in chars:
            sets.setdefault(p.name.split(".")[0], p)
        chars = list(sets.values()) or sorted(source_dir.glob("images_background_small*.zip"))
        runs = [p for p in (source_dir / "all_runs.zip", source_dir / "one-shot-classification") if p.exists()][:1]
        if not chars:
            raise FileNotFoundError(f"{source_dir}: no images_background*/images_evaluation* zips or folders")
        return convert_sources([*chars, *runs], dest)
    from data_prep.miniimagenet import convert_sources, find_sources

    csvs, images = find_sources(source_dir)
    return convert_sources(csvs, images, dest)


def load_splits(cfg: FewShotConfig, folder: str | Path, *, device: torch.device | str = "cpu"
                ) -> dict[str, FewShotSplit]:
    """Meta-train/val/test splits (Omniglot with 90-degree rotations as new classes, as MAML)."""
    folder = dataset_dir(cfg.dataset, path=folder, required=("meta.json",))
    if cfg.dataset == "omniglot":
        return omniglot_splits(folder, split=cfg.omniglot_split, device=device)
    return miniimagenet_splits(folder, device=device)


def build_fewshot_model(cfg: FewShotConfig, image_shape: tuple[int, int, int]) -> nn.Module:
    hidden = cfg.hidden or (64 if cfg.dataset == "omniglot" else 32)
    return build_model("conv4", in_channels=image_shape[0], n_way=cfg.n_way, hidden=hidden, image_size=image_shape[1])


# --- the meta-objective: nbmodule.meta's loop/vmap, or the task-batched ("grouped") Conv4 -------------------
STRATEGIES = ("loop", "vmap", "grouped")


def grouped_meta_loss(model: nn.Module, params: dict[str, torch.Tensor], tasks: tuple[torch.Tensor, ...], *,
                      steps: int, inner_lr: float, first_order: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAML's objective for a :class:`~nbmodule.models.conv4.Conv4`, all T tasks in one task-batched forward.

    The same math as :func:`nbmodule.meta.meta_loss` (mean over tasks of the query cross-entropy after
    ``steps`` inner SGD steps on each support set), but tasks run as groups of grouped convolutions with
    plain autograd, so second-order meta-gradients through BatchNorm are exact (vmap's are not, see
    ``nbmodule.meta``). Returns ``(loss, per_task_losses (T,) detached, query_logits (T, Q, N) detached)``.
    """
    xs, ys, xq, yq = tasks
    T = xs.shape[0]
    blocks = len(getattr(model, "features", [])) // 4 or 4
    names = list(params)
    p = [params[k].unsqueeze(0).expand(T, *params[k].shape) for k in names]  # per-task views of the meta params
    for _ in range(steps):
        logits = conv4_forward_tasks(dict(zip(names, p)), xs, blocks=blocks)  # (T, S, N)
        # sum over tasks of each task's mean support loss: task t's gradient is exactly its own
        support = F.cross_entropy(logits.flatten(0, 1), ys.flatten(), reduction="sum") / ys.shape[1]
        grads = torch.autograd.grad(support, p, create_graph=not first_order)
        p = [w - inner_lr * g for w, g in zip(p, grads)]
    logits = conv4_forward_tasks(dict(zip(names, p)), xq, blocks=blocks)  # (T, Q, N)
    per_task = F.cross_entropy(logits.flatten(0, 1), yq.flatten(), reduction="none").view(T, -1).mean(1)
    return per_task.mean(), per_task.detach(), logits.detach()


def task_losses(model: nn.Module, params: dict[str, torch.Tensor], tasks: tuple[torch.Tensor, ...], *, steps: int,
                inner_lr: float, first_order: bool, strategy: str
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, per_task_losses, query_logits)`` with ``strategy`` in :data:`STRATEGIES`."""
    if strategy == "grouped":
        return grouped_meta_loss(model, params, tasks, steps=steps, inner_lr=inner_lr, first_order=first_order)
    return meta_loss(model, params, tasks, F.cross_entropy, steps=steps, inner_lr=inner_lr, first_order=first_order,
                     strategy=strategy, return_outputs=True)


def choose_strategy(requested: str, model: nn.Module, split: FewShotSplit, cfg: FewShotConfig,
                    device: torch.device, *, repeats: int = 2, probe_min_iterations: int = 200
                    ) -> tuple[str, dict[str, float]]:
    """The strategy to meta-train with and the seconds per meta-iteration measured for each candidate.

    ``requested != "auto"`` is used as given. ``"auto"`` times one meta-iteration (after a warm-up) of every
    valid candidate (loop, grouped, and vmap for first-order MAML) on a real meta-batch and keeps the
    fastest, so training is never slower than the loop on the device it runs on. Runs shorter than
    ``probe_min_iterations`` skip the probe and take the loop on a CPU (fastest or within noise of it in
    ``benchmarks/bench_fewshot.py``) and the grouped path on a GPU."""
    if requested != "auto":
        if requested == "vmap":
            resolve_strategy("vmap", model, device, first_order=cfg.first_order)  # raises where vmap is wrong
        return requested, {}
    if cfg.meta_iterations < probe_min_iterations:
        return ("loop" if device.type == "cpu" else "grouped"), {}
    cands = ["loop", "grouped"] + (["vmap"] if cfg.first_order else [])
    ep = split.sample(cfg.meta_batch_size, cfg.n_way, cfg.k_shot, cfg.k_query, torch.Generator().manual_seed(123))
    tasks = episode_to_float(ep.to(device))
    times = {}
    for strat in cands:
        ts = []
        for _ in range(repeats + 1):  # the first run warms up (cudnn autotuning, allocations)
            _sync(device)
            t0 = time.perf_counter()
            loss, _, _ = task_losses(model, _params(model), tasks, steps=cfg.inner_steps, inner_lr=cfg.inner_lr,
                                     first_order=cfg.first_order, strategy=strat)
            loss.backward()
            _sync(device)
            ts.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        times[strat] = float(np.median(ts[1:]))
    return min(times, key=times.get), times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- evaluation -------------------------------------------------------------------------------------------
def _params(model: nn.Module, detach: bool = False) -> dict[str, torch.Tensor]:
    return {k: (v.detach() if detach else v) for k, v in model.named_parameters()}


def predict(model: nn.Module, tasks: tuple[torch.Tensor, ...], *, steps: int, inner_lr: float,
            strategy: str = "loop", params: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt to each task's support set (``steps`` steps, no meta-gradient) and return the query logits
    ``(T, Q, N)`` and per-task query losses ``(T,)``."""
    p = params if params is not None else _params(model, detach=True)
    if strategy == "grouped":  # plain autograd needs a graph for the inner gradients
        with torch.enable_grad():
            p = {k: v.detach().requires_grad_() for k, v in p.items()}
            _, losses, logits = grouped_meta_loss(model, p, tasks, steps=steps, inner_lr=inner_lr, first_order=True)
        return logits, losses
    with torch.no_grad():
        _, losses, logits = meta_loss(model, p, tasks, F.cross_entropy, steps=steps, inner_lr=inner_lr,
                                      first_order=True, strategy=strategy, return_outputs=True)
    return logits, losses


def evaluate(model: nn.Module, split: FewShotSplit, cfg: FewShotConfig, *, episodes: int,
             generator: torch.Generator, device: torch.device | str, batch: int | None = None,
             strategy: str = "loop") -> tuple[np.ndarray, np.ndarray]:
    """Per-episode query accuracies ``(episodes,)`` in [0, 1] and losses after ``inner_steps_test`` steps."""
    batch = batch or max(cfg.meta_batch_size, 8)
    accs, losses = [], []
    done = 0
    while done < episodes:
        t = min(batch, episodes - done)
        ep = split.sample(t, cfg.n_way, cfg.k_shot, cfg.k_query, generator).to(device)
        tasks = episode_to_float(ep)
        logits, loss = predict(model, tasks, steps=cfg.inner_steps_test, inner_lr=cfg.inner_lr, strategy=strategy)
        accs.append((logits.argmax(-1) == ep.yq).float().mean(-1).cpu())
        losses.append(loss.cpu())
        done += t
    return torch.cat(accs).numpy(), torch.cat(losses).numpy()


def expand_head(params: dict[str, torch.Tensor], n_way: int, head: str = "head") -> dict[str, torch.Tensor]:
    """Parameters with an ``n_way`` output layer made of the mean of the trained head's rows.

    Episode labels are a random permutation, so every row of a MAML head is an initialisation for "some
    class"; their mean, repeated, is a permutation-invariant start for any number of classes (the trick of
    Ye & Chao 2022, "How to train your MAML to excel in few-shot classification"). Used to run a 5-way
    model on Lake's 20-way runs."""
    out = dict(params)
    w, b = params[f"{head}.weight"], params[f"{head}.bias"]
    if w.shape[0] != n_way:
        out[f"{head}.weight"] = w.mean(0, keepdim=True).expand(n_way, -1).contiguous()
        out[f"{head}.bias"] = b.mean().expand(n_way).contiguous()
    return out


def lake20_error(model: nn.Module, runs: LakeRuns, *, steps: int, inner_lr: float, device: torch.device | str,
                 strategy: str = "loop") -> tuple[float, np.ndarray]:
    """Error rate (percent) on Lake et al.'s 20-way 1-shot runs and the per-run errors (percent).

    Each run is one task: the 20 training images (labels 0..19) are the support set; every test item is
    correct when the predicted class is the training image ``class_labels.txt`` pairs it with."""
    xs = torch.as_tensor(runs.support).unsqueeze(2).float().div(255).to(device)  # (R, 20, 1, H, W)
    xq = torch.as_tensor(runs.query).unsqueeze(2).float().div(255).to(device)
    n = xs.shape[1]
    ys = torch.arange(n, device=device).expand(xs.shape[0], -1).contiguous()
    yq = torch.as_tensor(runs.answer, device=device)
    params = expand_head(_params(model, detach=True), n)
    logits, _ = predict(model, (xs, ys, xq, yq), steps=steps, inner_lr=inner_lr, strategy=strategy, params=params)
    err = (logits.argmax(-1) != yq).float().mean(-1).cpu().numpy() * 100  # (R,)
    return float(err.mean()), err


# --- training ------------------------------------------------------------------------------------------------
@dataclass
class FewShotResult:
    model: nn.Module
    metrics: dict[str, float]
    test_accs: np.ndarray
    lake_errors: np.ndarray | None
    iterations_run: int
    train_seconds: float
    strategy: str
    resumed_from: int = 0
    curves: dict[str, list] = field(default_factory=dict)


_RESUME_KEYS = ("meta_iterations", "eval_episodes", "eval_every", "val_episodes", "log_every", "checkpoint_every",
                "resume", "lake_eval", "strategy", "source_dir")


def _same_setting(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in _RESUME_KEYS} == {k: v for k, v in b.items() if k not in _RESUME_KEYS}


def train(cfg: FewShotConfig, splits: dict[str, FewShotSplit], run: RunDir, *, device: torch.device | str,
          seed: int = 0, progress: bool = True, lake_runs: LakeRuns | None = None) -> FewShotResult:
    """Meta-train ``cfg`` on ``splits['train']``, validate on ``splits['val']``, test on ``splits['test']``.

    Resumes from ``checkpoints/<setting>.pt`` when it holds the same setting (training-length fields may
    differ: a longer ``meta_iterations`` continues a finished run). Writes the files in the module docstring
    and returns the trained model and metrics.
    """
    device = torch.device(device)
    name = setting_name(cfg)
    torch.manual_seed(seed)  # model initialisation
    model = build_fewshot_model(cfg, splits["train"].image_shape).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.meta_lr)
    sampler = torch.Generator().manual_seed(seed)
    strategy, strategy_times = choose_strategy(cfg.strategy, model, splits["train"], cfg, device)
    start = 0
    ckpt = run.load_checkpoint(name, map_location=device) if cfg.resume else None
    if ckpt is not None and _same_setting(ckpt["config"], cfg.to_dict()) and ckpt.get("seed") == seed:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sampler.set_state(ckpt["sampler"])
        start = int(ckpt["iteration"])
    elif ckpt is not None:
        print(f"[fewshot] checkpoint {name} holds another setting or seed; starting afresh")
    _trim_curves(run, name, seed, start)

    def checkpoint(it: int) -> None:
        run.save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "sampler": sampler.get_state(),
                             "iteration": it, "config": cfg.to_dict(), "seed": seed}, name)

    def validate(it: int) -> float:
        model.eval()
        accs, losses = evaluate(model, splits["val"], cfg, episodes=cfg.val_episodes, device=device,
                                generator=torch.Generator().manual_seed(seed + 1), strategy=eval_strategy)  # the same episodes every time
        run.log_curve("fewshot_val", [{"run": name, "seed": seed, "step": it, "val_loss": float(losses.mean()),
                                       "val_acc": float(accs.mean())}])
        return float(accs.mean())

    # evaluation is first order (no meta-gradient): the task-batched path measured 1.1-2x the loop for Omniglot
    # on a CPU, 0.8x for MiniImagenet's 84x84 images there
    if cfg.strategy != "auto":
        eval_strategy = cfg.strategy
    else:
        eval_strategy = "grouped" if device.type != "cpu" or cfg.dataset == "omniglot" else "loop"
    t0 = time.perf_counter()
    bar = progress_bar(range(start, cfg.meta_iterations), total=cfg.meta_iterations, initial=start,
                       desc=f"MAML {name}", enabled=progress)
    window: list[tuple[float, float]] = []
    val_acc = float("nan")
    if start == 0 and cfg.meta_iterations > 0:
        val_acc = validate(0)
    for it in bar:
        model.train()
        ep = splits["train"].sample(cfg.meta_batch_size, cfg.n_way, cfg.k_shot, cfg.k_query, sampler).to(device)
        tasks = episode_to_float(ep)
        loss, _, logits = task_losses(model, _params(model), tasks, steps=cfg.inner_steps, inner_lr=cfg.inner_lr,
                                      first_order=cfg.first_order, strategy=strategy)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append((loss.item(), (logits.argmax(-1) == ep.yq).float().mean().item()))
        step = it + 1
        if step % cfg.log_every == 0 or step == cfg.meta_iterations:
            l, a = np.mean(window, axis=0)
            run.log_curve("fewshot_train", [{"run": name, "seed": seed, "step": step, "train_loss": float(l),
                                             "train_acc": float(a)}])
            window = []
        if step % cfg.eval_every == 0 or step == cfg.meta_iterations:
            val_acc = validate(step)
        if step % cfg.checkpoint_every == 0 or step == cfg.meta_iterations:
            checkpoint(step)
        bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{val_acc:.3f}")
    bar.close()
    train_s = time.perf_counter() - t0
    iters = cfg.meta_iterations - start

    model.eval()
    accs, _ = evaluate(model, splits["test"], cfg, episodes=cfg.eval_episodes, device=device,
                       generator=torch.Generator().manual_seed(seed + 2), strategy=eval_strategy)
    mean, ci = mean_confidence_interval(accs * 100)
    metrics: dict[str, float] = {f"{name}_acc": mean, f"{name}_ci95": ci, "fewshot_synthetic": int(cfg.synthetic),
                                 "fewshot_train_s": train_s, "fewshot_s_per_iter": train_s / iters if iters else None}
    lake_err = None
    if cfg.dataset == "omniglot" and cfg.lake_eval and lake_runs is not None:
        err, lake_err = lake20_error(model, lake_runs, steps=cfg.inner_steps_test, inner_lr=cfg.inner_lr,
                                     device=device, strategy=eval_strategy)
        metrics["omniglot_lake20_error"] = err
    metrics.update({f"fewshot_{k}_s_per_iter_probe": v for k, v in strategy_times.items()})
    run.write_metrics(metrics)
    run.write_json(f"fewshot_test_{name}.json", {"setting": name, "config": cfg.to_dict(), "seed": seed,
                                                 "test_accs": accs.tolist(),
                                                 "lake_errors": None if lake_err is None else lake_err.tolist()})
    return FewShotResult(model, metrics, accs, lake_err, iters, train_s, strategy, resumed_from=start,
                         curves={"train": run.curve("fewshot_train"), "val": run.curve("fewshot_val")})


def _trim_curves(run: RunDir, name: str, seed: int, start: int) -> None:
    """Drop this setting's curve points past the checkpoint (all of them on a fresh start)."""
    for curve in ("fewshot_train", "fewshot_val"):
        rows = run.curve(curve)
        if not rows:
            continue
        keep = [r for r in rows if not (r["run"] == name and int(r["seed"]) == seed and
                                        (start == 0 or int(r["step"]) > start))]
        if len(keep) != len(rows):
            run.write_curve(curve, [{**r, "seed": int(r["seed"]), "step": int(r["step"])} for r in keep])


def main(argv: list[str] | None = None) -> int:
    """``python -m nbmodule.engines.fewshot --config configs/fewshot/omniglot_5way1shot.yaml [--out runs]``."""
    from ..notebook import setup

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", default="")
    ap.add_argument("--data", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
                    help="field=value overrides")
    args = ap.parse_args(argv)
    cfg = load_config(FewShotConfig, args.config, **dict(args.set))
    ctx = setup("05_maml_fewshot", seed=args.seed, device=args.device, out=args.out, data=args.data)
    folder = prepare_data(cfg, ctx.data, seed=args.seed)
    splits = load_splits(cfg, folder, device=ctx.device)
    ctx.run.save_config(cfg, seed=args.seed, device=str(ctx.device))
    res = train(cfg, splits, ctx.run, device=ctx.device, seed=args.seed, progress=True,
                lake_runs=load_lake_runs(folder) if cfg.dataset == "omniglot" else None)
    print(res.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
