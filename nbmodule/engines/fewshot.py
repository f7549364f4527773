"""MAML few-shot classification (Finn et al. 2017) on Omniglot and MiniImagenet: study ``fewshot``, notebook 05.

    python -m nbmodule run fewshot --config default            # the cpu experiment (real Omniglot when it can be had)
    python -m nbmodule run fewshot --config omniglot_20way1shot  # one of the paper's six settings (full scale)

:func:`run` is the study's one path (notebook 05 and the command line): :func:`obtain_data` makes the dataset
ready (real first, through ``NBM_MIRROR`` or the public mirrors; synthetic data in the same format only when
the real data cannot be had and ``data_source: auto``, or when asked for) and checks every split can hold an
episode; :func:`train` meta-trains Conv4 with second-order MAML (validation curves, resumable checkpoints on
:meth:`nbmodule.runs.RunDir.checkpointer`); :func:`evaluate_study` scores the test episodes and, under Lake
et al.'s protocol only, the 20 one-shot runs, and writes an example episode for the figures.

Protocols (stated again in ``evaluation.json`` and in the notebook):

* ``{setting}_acc`` / ``_ci95``: mean query accuracy (percent) over ``eval_episodes`` N-way K-shot episodes drawn
  from the meta-test classes (Omniglot: each character's four 90-degree rotations are classes, as in MAML),
  ``k_query`` queries per class, after ``inner_steps_test`` SGD steps of size ``inner_lr`` on the support set
  from the meta-learned initialisation, BatchNorm with the batch statistics of the set being classified (as
  MAML, i.e. transductive over the queries); ``_ci95`` is the half-width of the normal 95% interval over
  episodes (1.96 std / sqrt(episodes)), as the paper reports.
* ``omniglot_lake20_error``: error (percent) on the 20 official one-shot runs of Lake et al. (2015), 20-way
  1-shot, each run's 20 training images as the support set (the 5-way head's mean row repeated 20 times as
  the initial 20-way head), ``inner_steps_test`` steps, scored with its ``class_labels.txt``, each test item
  classified on its own with batch norm statistics from the support set (:func:`support_statistics_logits`):
  the score comparable to people's and BPL's, who classify one item at a time.
  ``omniglot_lake20_error_transductive``: the same, the 20 test items of a run classified as one batch (batch
  norm with their statistics, as MAML's episodes are scored; not comparable to people or BPL). Written only
  when the model was meta-trained on the background alphabets only (``omniglot_split: background``) and
  none of the runs' 800 images is pixel-identical to a meta-training or validation image (checked on the
  prepared arrays, ``omniglot_lake20_overlap_images``); otherwise the key is absent and ``evaluation.json``
  says why. ``_ci95``: half-width of the 95% interval over the 20 runs, Student's t with 19 degrees of freedom.

Run folder (``<out>/05_maml_fewshot/``)::

    config.json                   the config (written by nbmodule.studies.execute)
    metrics.json                  {setting}_acc, {setting}_ci95 (percent), omniglot_lake20_error (+ _ci95,
                                  percent), omniglot_lake20_error_transductive (+ _ci95),
                                  omniglot_lake20_overlap_images, synthetic (1: synthetic data),
                                  fewshot_train_s, fewshot_eval_s, fewshot_s_per_iter,
                                  fewshot_probe_{strategy}_s_per_iter (strategy="auto", measured runs only)
    strategy.json                 how the tasks of a meta-batch ran: ``name``/``ran`` what actually ran (the
                                  batched path may fall back to the loop while running: ``fallback`` says
                                  why), ``chosen`` what choose_strategy picked, each candidate's timings and
                                  estimated peak memory, what was excluded and why, the protocol
                                  (``measured``: false with ``not_measured`` saying why)
    data.json                     which data was used (real or synthetic, from where, why), the splits' sizes
    evaluation.json               the protocols, per-episode test accuracies, Lake per-run errors or why not
    example_episode.pt            one test episode (uint8 images, labels, predictions): the episode figure
    curves/fewshot_train.csv      run, seed, step, train_loss, train_acc (meta-batch query loss/accuracy after
                                  the inner steps, averaged over log_every iterations)
    curves/fewshot_val.csv        run, seed, step, val_loss, val_acc (val_episodes fixed validation episodes,
                                  inner_steps_test steps; acc in [0, 1])
    checkpoints/meta_train.pt     resume state (model, optimiser, sampler RNG, curves, seconds)
    *.png                         the figures of nbmodule.viz.fewshot

Every ``.pt`` file is read back with ``weights_only=True``. ``run`` in the curves is the setting's name,
e.g. ``omniglot_5way_1shot``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ..config import ConfigError, StudyConfig
from ..data.fewshot import (FewShotSplit, LakeRuns, episode_to_float, load_lake_runs, miniimagenet_splits,
                            omniglot_splits)
from ..meta import StrategyChoice, meta_loss
from ..meta import choose_strategy as measure_strategy
from ..metrics import mean_confidence_interval
from ..models import build_model
from ..progress import progress_bar
from ..runs import RunContext, RunDir, atomic_write_bytes, check_finite

__all__ = ["NAME", "Config", "FewShotConfig", "FewShotData", "TrainResult", "STRATEGIES", "setting_name",
           "obtain_data", "load_splits", "check_splits", "lake_overlap", "build_fewshot_model",
           "task_losses", "unmeasured_reason", "choose_strategy", "train", "evaluate", "predict", "lake20_error",
           "LAKE_MODES", "support_statistics_logits",
           "expand_head", "evaluate_study", "run"]

NAME = "fewshot"
#: Synthetic data is generated with this seed whatever the experiment's seed (the data is not the experiment).
DATA_SEED = 0
CHECKPOINT = "meta_train"


class FewShotConfig(StudyConfig):
    """Notebook 05's experiment; values in ``nbmodule/configs/fewshot/*.yaml`` (``default.yaml``: every field)."""

    STUDY: ClassVar[str] = NAME
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"meta_iterations"})
    NEUTRAL: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})

    seed: int = Field(ge=0, lt=2**31)                         # model initialisation, episode sampling
    dataset: Literal["omniglot", "miniimagenet"]
    data_source: Literal["auto", "real", "synthetic"]         # auto: real when it can be had, else synthetic
    scale: Literal["smoke", "cpu", "full"]                    # size of synthetic data (when it is used)
    omniglot_split: Literal["background", "maml"]             # background: Lake et al.; maml: MAML's 1200 chars
    n_way: int = Field(ge=2, le=1000)                         # classes per episode
    k_shot: int = Field(ge=1, le=1000)                        # support images per class
    k_query: int = Field(ge=1, le=1000)                       # query images per class
    inner_steps: int = Field(ge=1, le=100)                    # inner SGD steps in meta-training
    inner_steps_test: int = Field(ge=1, le=1000)              # inner SGD steps at validation and test
    inner_lr: float = Field(gt=0)                             # inner step size alpha
    meta_lr: float = Field(gt=0)                              # Adam step size beta of the outer loop
    meta_batch_size: int = Field(ge=1, le=4096)               # tasks per meta-iteration
    meta_iterations: int = Field(ge=1, le=100_000_000)        # outer steps (may grow on resume)
    first_order: bool                                         # first-order MAML (no second derivatives)
    hidden: int = Field(gt=0, le=1024)                        # Conv4 filters per layer
    downsample: Literal["maxpool", "stride"]                  # Conv4 blocks: max-pool, or stride-2 conv (MAML Omniglot)
    eval_episodes: int = Field(ge=1, le=1_000_000)            # test episodes behind the accuracy and its CI
    val_episodes: int = Field(ge=1, le=1_000_000)             # fixed validation episodes per validation
    eval_every: int = Field(ge=1, le=100_000_000)             # validation period (meta-iterations)
    log_every: int = Field(ge=1, le=100_000_000)              # training-curve period (meta-iterations)
    checkpoint_every: int = Field(ge=1, le=100_000_000)       # checkpoint period (meta-iterations)
    strategy: Literal["auto", "loop", "vmap", "batched"]      # how the tasks of a meta-batch run
    lake_eval: bool                                           # score Lake et al.'s 20 one-shot runs (Omniglot)


Config = FewShotConfig


def setting_name(cfg: FewShotConfig) -> str:
    return f"{cfg.dataset}_{cfg.n_way}way_{cfg.k_shot}shot"


# --- data -----------------------------------------------------------------------------------------------
@dataclass
class FewShotData:
    """The prepared dataset: meta-train/val/test splits, the Lake runs (Omniglot, when prepared with them)
    and where the data came from (``synthetic``, ``source``, ``note``: why, e.g. the reason for a fallback)."""

    splits: dict[str, FewShotSplit]
    lake: LakeRuns | None
    synthetic: bool
    source: str
    note: str
    path: Path

    def describe(self, cfg: FewShotConfig) -> dict[str, Any]:
        """``data.json``: what the run trained and was scored on."""
        return {
            "dataset": cfg.dataset, "synthetic": self.synthetic, "source": self.source, "note": self.note,
            "path": str(self.path), "data_source": cfg.data_source,
            "split": cfg.omniglot_split if cfg.dataset == "omniglot" else "ravi",
            "splits": {name: {"classes": s.n_classes, "base_classes": s.n_base_classes, "rotations": s.rotations,
                              "images": int(len(s.images)), "image_shape": list(s.image_shape),
                              "first_classes": s.class_names[:3]}
                       for name, s in self.splits.items()},
            "lake_runs": None if self.lake is None else int(len(self.lake.answer)),
        }


def load_splits(cfg: FewShotConfig, folder: str | Path, *, device: torch.device | str = "cpu"
                ) -> dict[str, FewShotSplit]:
    """Meta-train/val/test splits of a prepared folder (Omniglot: 90-degree rotations as new classes, as MAML;
    ``cfg.omniglot_split`` chooses Lake's background/evaluation split or MAML's split of all characters)."""
    if cfg.dataset == "omniglot":
        return omniglot_splits(folder, split=cfg.omniglot_split, device=device)
    return miniimagenet_splits(folder, device=device)


def check_splits(cfg: FewShotConfig, splits: dict[str, FewShotSplit], where: str = "") -> None:
    """Refuse, before any training, an episode shape a split cannot hold: fewer classes than ``n_way``, or
    fewer images per class than ``k_shot + k_query``. The message names the split and the counts."""
    src = f" ({where})" if where else ""
    for name, split in splits.items():
        if cfg.n_way > split.n_classes:
            rot = f" = {split.n_base_classes} characters x 4 rotations" if split.rotations else ""
            raise ConfigError(f"n_way={cfg.n_way}: the {name!r} split of {cfg.dataset}{src} has only "
                              f"{split.n_classes} classes{rot}, fewer than n_way; lower n_way or use more data")
        smallest = int(split.counts.min())
        if cfg.k_shot + cfg.k_query > smallest:
            raise ConfigError(f"k_shot={cfg.k_shot} + k_query={cfg.k_query} = {cfg.k_shot + cfg.k_query} images per "
                              f"class, but the smallest class of the {name!r} split of {cfg.dataset}{src} has "
                              f"{smallest} images")


def obtain_data(cfg: FewShotConfig, root: str | Path | None, *, device: torch.device | str = "cpu") -> FewShotData:
    """The dataset of ``cfg`` under the data root ``root``, ready and checked (:func:`check_splits`).

    ``data_source``: ``real`` (prepared already, ``NBM_MIRROR``, the public mirrors; an error when none
    works), ``auto`` (the same, else synthetic data at ``scale``, the reason in ``note``), ``synthetic``."""
    from data_prep import obtain

    prefer = "synthetic" if cfg.data_source == "synthetic" else "real"
    got = obtain(cfg.dataset, root, prefer=prefer, seed=DATA_SEED, scale=cfg.scale,
                 fallback=cfg.data_source == "auto")
    splits = load_splits(cfg, got.path, device=device)
    check_splits(cfg, splits, where=f"{'synthetic' if got.synthetic else 'real'} data at {got.path}")
    lake = load_lake_runs(got.path) if cfg.dataset == "omniglot" and cfg.lake_eval else None
    return FewShotData(splits, lake, bool(got.synthetic), str(got.source), str(got.note), Path(got.path))


def lake_overlap(lake: LakeRuns, splits: list[FewShotSplit]) -> int:
    """How many of the Lake runs' images (training and test items) are pixel-identical to an image of
    ``splits`` (the prepared arrays, before rotation): 0 when no run drawing was seen in meta-training."""
    seen: set[bytes] = set()
    for split in splits:
        arr = split.images.cpu().numpy()
        seen.update(row.tobytes() for row in arr.reshape(len(arr), -1))
    shape = lake.support.shape[2:]
    runs = np.concatenate([lake.support.reshape(-1, *shape), lake.query.reshape(-1, *shape)])
    return int(sum(row.tobytes() in seen for row in np.ascontiguousarray(runs, dtype=np.uint8).reshape(len(runs), -1)))


def build_fewshot_model(cfg: FewShotConfig, image_shape: tuple[int, int, int]) -> nn.Module:
    """Conv4 (``cfg.hidden`` filters, ``cfg.downsample`` blocks) for ``image_shape`` (C, H, W) with an ``n_way``
    head."""
    return build_model("conv4", in_channels=image_shape[0], n_way=cfg.n_way, hidden=cfg.hidden,
                       image_size=image_shape[1], downsample=cfg.downsample)


# --- the meta-objective: nbmodule.meta's strategies (loop, vmap, batched) and its measured choice -------------
STRATEGIES = ("loop", "vmap", "batched")


def task_losses(model: nn.Module, params: dict[str, torch.Tensor], tasks: tuple[torch.Tensor, ...], *, steps: int,
                inner_lr: float, first_order: bool, strategy: "str | StrategyChoice", report: dict | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, per_task_losses, query_logits)``: :func:`nbmodule.meta.meta_loss` with the cross-entropy;
    ``strategy`` in :data:`STRATEGIES` or a :class:`~nbmodule.meta.StrategyChoice`; ``report``: filled with
    the strategy that actually ran (see :func:`nbmodule.meta.meta_loss`)."""
    return meta_loss(model, params, tasks, F.cross_entropy, steps=steps, inner_lr=inner_lr, first_order=first_order,
                     strategy=strategy, return_outputs=True, report=report)


def unmeasured_reason(requested: str, meta_iterations: int, device: torch.device | str,
                      probe_min_iterations: int = 200) -> str | None:
    """Why :func:`choose_strategy` takes a strategy without measuring it, or None when it measures.

    ``auto`` measures, except runs shorter than ``probe_min_iterations`` on a CPU: the measurement would cost
    more than it can save there, and they take the loop, the reference, which no measurement could have shown
    slower than the loop. On a GPU ``auto`` always measures (a few fast meta-iterations): taking the batched
    path unmeasured could be slower than the loop. A strategy other than ``auto`` is used as asked."""
    device = torch.device(device)
    if requested != "auto":
        return f"strategy {requested!r} was asked for: used as given, not measured"
    if meta_iterations < probe_min_iterations and device.type == "cpu":
        return (f"{meta_iterations} meta-iterations < {probe_min_iterations} on a CPU: not measured, the loop (the "
                "reference)")
    return None


def choose_strategy(requested: str, model: nn.Module, split: FewShotSplit, cfg: FewShotConfig,
                    device: torch.device, *, repeats: int = 5, warmup: int = 1,
                    probe_min_iterations: int = 200) -> StrategyChoice:
    """The strategy to meta-train with: :func:`nbmodule.meta.choose_strategy` on a real meta-batch.

    ``requested != "auto"`` is used as given (``batched`` falls back to the loop, saying why, for a model it
    does not cover; ``vmap`` raises where its meta-gradient would be wrong). ``"auto"`` checks each valid
    candidate's memory, then times full meta-iterations of those that fit in interleaved rounds (``warmup``
    untimed, ``repeats`` timed, lowest median wins), so training is never slower than the loop on the machine
    it runs on. Runs shorter than ``probe_min_iterations`` on a CPU skip the measurement and take the loop
    (:func:`unmeasured_reason`); on a GPU ``auto`` always measures. ``protocol["measured"]`` says whether it
    measured and ``protocol["not_measured"]`` why not. What actually ran is recorded by :func:`train`."""
    device = torch.device(device)
    ep = split.sample(cfg.meta_batch_size, cfg.n_way, cfg.k_shot, cfg.k_query, torch.Generator().manual_seed(123))
    tasks = episode_to_float(ep.to(device))
    kw = dict(steps=cfg.inner_steps, inner_lr=cfg.inner_lr, first_order=cfg.first_order)
    params = _params(model)
    why = unmeasured_reason(requested, cfg.meta_iterations, device, probe_min_iterations)
    if requested == "auto" and why is not None:
        choice = measure_strategy(model, params, tasks, F.cross_entropy, requested="loop", **kw)
        choice.requested = "auto"
    else:
        choice = measure_strategy(model, params, tasks, F.cross_entropy, requested=requested, repeats=repeats,
                                  warmup=warmup, **kw)
    choice.protocol["measured"] = bool(choice.medians_s)
    if not choice.medians_s:
        choice.protocol["not_measured"] = why or "a single candidate (the others excluded): nothing to compare"
    return choice


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
    with torch.no_grad():  # every strategy takes its inner gradients with autograd on, keeping nothing
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


def support_statistics_logits(model: nn.Module, params: dict[str, torch.Tensor], xs: torch.Tensor,
                              xq: torch.Tensor) -> torch.Tensor:
    """Logits ``(Q, N)`` of one task's queries ``xq`` with ``params``, every query classified on its own: each
    batch norm normalises with the mean and (biased) variance of its input on the support set ``xs`` (the
    network with ``params`` run on ``xs``), not with the query batch's, so no prediction depends on another
    query (classifying the queries one at a time gives the same logits). Without batch norm: ``model(xq)``."""
    from ..meta import forward

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(m: nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        stats[m] = (x.mean(dims), x.var(dims, unbiased=False))

    def normalise(m: nn.Module, inputs: tuple, _out: torch.Tensor) -> torch.Tensor:
        mean, var = stats[m]
        return F.batch_norm(inputs[0], mean, var, m.weight, m.bias, False, 0.0, m.eps)

    for hook, attach in ((record, "register_forward_pre_hook"), (normalise, "register_forward_hook")):
        handles = [getattr(m, attach)(hook) for m in norms]
        try:
            out = forward(model, params, xs if hook is record else xq)
        finally:
            for h in handles:
                h.remove()
    return out


#: How the 20 test items of a Lake run are classified: ``one_at_a_time`` (batch norm with the support set's
#: statistics; each item on its own, as people and BPL classify them: the comparable score) or
#: ``transductive`` (the 20 items as one batch, batch norm with their statistics, as MAML scores its episodes).
LAKE_MODES = ("one_at_a_time", "transductive")


def lake20_error(model: nn.Module, runs: LakeRuns, *, steps: int, inner_lr: float, device: torch.device | str,
                 strategy: str = "loop", mode: str = "transductive") -> tuple[float, np.ndarray]:
    """Error rate (percent) on Lake et al.'s 20-way 1-shot runs and the per-run errors (percent).

    Each run is one task: the 20 training images (labels 0..19) are the support set; every test item is
    correct when the predicted class is the training image ``class_labels.txt`` pairs it with. ``mode``: see
    :data:`LAKE_MODES` (``one_at_a_time`` adapts each run with the loop, then
    :func:`support_statistics_logits`)."""
    if mode not in LAKE_MODES:
        raise ValueError(f"mode must be one of {LAKE_MODES}, got {mode!r}")
    xs = torch.as_tensor(runs.support).unsqueeze(2).float().div(255).to(device)  # (R, 20, 1, H, W)
    xq = torch.as_tensor(runs.query).unsqueeze(2).float().div(255).to(device)
    n = xs.shape[1]
    ys = torch.arange(n, device=device).expand(xs.shape[0], -1).contiguous()
    yq = torch.as_tensor(runs.answer, device=device)
    params = expand_head(_params(model, detach=True), n)
    if mode == "transductive":
        logits, _ = predict(model, (xs, ys, xq, yq), steps=steps, inner_lr=inner_lr, strategy=strategy,
                            params=params)
    else:
        from ..meta import adapt

        rows = []
        for r in range(xs.shape[0]):
            with torch.enable_grad():
                p = adapt(model, {k: v.detach().requires_grad_() for k, v in params.items()}, xs[r], ys[r],
                          F.cross_entropy, steps=steps, inner_lr=inner_lr, first_order=True)
            with torch.no_grad():
                rows.append(support_statistics_logits(model, {k: v.detach() for k, v in p.items()}, xs[r], xq[r]))
        logits = torch.stack(rows)
    err = (logits.argmax(-1) != yq).float().mean(-1).cpu().numpy() * 100  # (R,)
    return float(err.mean()), err



# --- training ------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`train` returns. ``strategy``: what meta-trained in this call ("" when nothing was left);
    ``probe``: seconds per meta-iteration of each candidate (``strategy="auto"`` with a probe); seconds are
    summed over every session of the run (a resumed run counts its earlier sessions)."""

    model: nn.Module
    strategy: str
    probe: dict[str, float]
    train_seconds: float   # wall time of the training loop, validation included
    step_seconds: float    # the meta-iterations alone (sampling, meta-loss, backward, Adam step)
    iterations_run: int    # in this call
    resumed_from: int


def _eval_strategy(cfg: FewShotConfig, device: torch.device) -> str:
    # evaluation is first order (no meta-gradient): for Omniglot on a CPU the batched path measured 0.270 s per
    # meta-batch against the loop's 0.431 s at 2 threads (benchmarks/bench_fewshot.py, 2026-11-29; the keys are now
    # fewshot_omniglot_fo_{1,2}t_*_s_per_iter; at 1 thread on a busy machine, 2026-12-03: 3.60 s against 5.64 s);
    # MiniImagenet's first-order evaluation is not benchmarked on a CPU, so it keeps the loop there
    if cfg.strategy != "auto":
        return cfg.strategy
    return "batched" if device.type != "cpu" or cfg.dataset == "omniglot" else "loop"


def _init_model(cfg: FewShotConfig, image_shape: tuple[int, int, int], device: torch.device) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # seeded by cfg.seed without touching the caller's global RNG
        torch.manual_seed(cfg.seed)
        model = build_fewshot_model(cfg, image_shape)
    return model.to(device)


def train(cfg: FewShotConfig, data: FewShotData | dict[str, FewShotSplit], run: RunDir, *,
          device: torch.device | str = "cpu", progress: bool = True, callback: Any = None) -> TrainResult:
    """Meta-train ``cfg`` on the ``train`` split, validating on ``val`` every ``eval_every`` iterations.

    Resumes from ``checkpoints/meta_train.pt`` (:class:`nbmodule.runs.Checkpointer`): the same settings
    continue (a larger ``meta_iterations`` continues a finished run), other settings, or the same settings on
    other data (real instead of synthetic), are refused naming the fields. Writes the curves (at every
    checkpoint) and returns the model. ``callback(step)`` runs after each meta-iteration (tests interrupt
    a run with it)."""
    device = torch.device(device)
    splits = data.splits if isinstance(data, FewShotData) else data
    kind = ("synthetic" if data.synthetic else "real") if isinstance(data, FewShotData) else "given splits"
    name = setting_name(cfg)
    model = _init_model(cfg, splits["train"].image_shape, device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.meta_lr)
    sampler = torch.Generator().manual_seed(cfg.seed)
    ck = run.checkpointer(CHECKPOINT, config={**cfg.to_dict(), "data": kind}, resumable=cfg.RESUMABLE,
                          neutral=cfg.NEUTRAL)
    saved = ck.load()
    state: dict[str, Any] = {"train_rows": [], "val_rows": [], "window": [], "seconds": 0.0, "step_seconds": 0.0}
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sampler.set_state(saved["sampler"])
        state = saved["state"]
    start = ck.step
    eval_strategy = _eval_strategy(cfg, device)

    def validate(step: int) -> float:
        model.eval()
        accs, losses = evaluate(model, splits["val"], cfg, episodes=cfg.val_episodes, device=device,
                                generator=torch.Generator().manual_seed(cfg.seed + 1), strategy=eval_strategy)
        state["val_rows"].append({"run": name, "seed": cfg.seed, "step": step, "val_loss": float(losses.mean()),
                                  "val_acc": float(accs.mean())})  # the same episodes every time
        return float(accs.mean())

    def write_curves() -> None:
        for curve, rows in (("fewshot_train", state["train_rows"]), ("fewshot_val", state["val_rows"])):
            if rows:
                run.write_curve(curve, rows)

    clock = [time.perf_counter()]

    def checkpoint_state() -> dict[str, Any]:
        now = time.perf_counter()
        state["seconds"] += now - clock[0]
        clock[0] = now
        write_curves()
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "sampler": sampler.get_state(),
                "state": state}

    strategy, probe = "", {}
    if start < cfg.meta_iterations:
        choice = choose_strategy(cfg.strategy, model, splits["train"], cfg, device)
        strategy, probe = choice.name, dict(choice.medians_s)
        ran: dict[str, Any] = {}
        written: list[Any] = [None]

        def record_strategy() -> None:
            """strategy.json: what was measured, how, what was excluded, and what actually ran (``name``)."""
            nonlocal strategy
            if ran:
                strategy = choice.name if ran["strategy"] == choice.strategy else ran["strategy"]
            now = (strategy, bool(ran), ran.get("fallback"))
            if now != written[0]:
                run.write_json("strategy.json", {**choice.to_dict(), "name": strategy, "chosen": choice.name,
                                                 "ran": strategy if ran else None, "fallback": ran.get("fallback")})
                written[0] = now

        record_strategy()
        clock[0] = time.perf_counter()
        val_acc = validate(0) if start == 0 else state["val_rows"][-1]["val_acc"] if state["val_rows"] else float("nan")
        bar = progress_bar(total=cfg.meta_iterations, initial=start, desc=f"MAML {name}", enabled=progress)
        for step in ck.steps(cfg.meta_iterations, every=cfg.checkpoint_every, state=checkpoint_state):
            model.train()
            t0 = time.perf_counter()
            ep = splits["train"].sample(cfg.meta_batch_size, cfg.n_way, cfg.k_shot, cfg.k_query, sampler).to(device)
            loss, _, logits = task_losses(model, _params(model), episode_to_float(ep), steps=cfg.inner_steps,
                                          inner_lr=cfg.inner_lr, first_order=cfg.first_order, strategy=choice,
                                          report=ran)
            record_strategy()  # rewritten only when what ran changes (the first iteration; a fallback)
            check_finite(loss, step=step, what=f"the meta-loss ({name})", run_dir=run)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["window"].append([loss.item(), (logits.argmax(-1) == ep.yq).float().mean().item()])
            state["step_seconds"] += time.perf_counter() - t0
            if step % cfg.log_every == 0 or step == cfg.meta_iterations:
                mean_loss, mean_acc = np.mean(state["window"], axis=0)
                state["train_rows"].append({"run": name, "seed": cfg.seed, "step": step,
                                            "train_loss": float(mean_loss), "train_acc": float(mean_acc)})
                state["window"] = []
            if step % cfg.eval_every == 0 or step == cfg.meta_iterations:
                val_acc = validate(step)
            bar.update(1)
            bar.set_postfix(loss=f"{state['train_rows'][-1]['train_loss'] if state['train_rows'] else loss.item():.3f}",
                            val_acc=f"{val_acc:.3f}", refresh=False)
            if callback is not None:
                callback(step)
        bar.close()
    write_curves()
    return TrainResult(model, strategy, probe, float(state["seconds"]), float(state["step_seconds"]),
                       cfg.meta_iterations - start, start)


# --- the study -----------------------------------------------------------------------------------------------
def _example_episode(model: nn.Module, split: FewShotSplit, cfg: FewShotConfig, device: torch.device,
                     strategy: str, max_per_class: int = 2) -> dict[str, Any]:
    """One test episode (uint8 images), the adapted model's predictions and the classes behind the labels
    (``example_episode.pt``; queries: at most ``max_per_class`` per class are kept, all were classified)."""
    ep = split.sample(1, cfg.n_way, cfg.k_shot, cfg.k_query, torch.Generator().manual_seed(cfg.seed + 3)).to(device)
    model.eval()
    logits, _ = predict(model, episode_to_float(ep), steps=cfg.inner_steps_test, inner_lr=cfg.inner_lr,
                        strategy=strategy)
    keep = torch.tensor([i for i in range(ep.yq.shape[1]) if i % cfg.k_query < max_per_class])
    names = []
    for c in ep.classes[0].tolist():
        base = split.class_names[c // 4 if split.rotations else c]
        names.append(f"{base} (rotated {90 * (c % 4)})" if split.rotations and c % 4 else base)
    return {"setting": setting_name(cfg), "steps": cfg.inner_steps_test, "classes": names,
            "xs": ep.xs[0].cpu(), "ys": ep.ys[0].cpu(), "xq": ep.xq[0, keep.to(device)].cpu(),
            "yq": ep.yq[0, keep.to(device)].cpu(), "pred": logits[0].argmax(-1)[keep.to(device)].cpu()}


def _protocols(cfg: FewShotConfig, data: FewShotData) -> dict[str, str]:
    test = data.splits["test"]
    classes = (f"{test.n_base_classes} characters x 4 rotations = {test.n_classes} classes" if test.rotations
               else f"{test.n_classes} classes")
    split = {"background": "meta-trained on the background alphabets (Lake et al.'s split; a seeded 10% of their "
                           "characters validate), tested on the evaluation alphabets",
             "maml": "MAML's split of all 1623 characters (1100 train, 100 validation, the rest test; a seeded shuffle "
                     "of both sets)"}[cfg.omniglot_split] if cfg.dataset == "omniglot" else \
        "Ravi & Larochelle's split (64 train, 16 validation, 20 test classes)"
    return {
        "accuracy": (f"{cfg.eval_episodes} test episodes of {cfg.n_way}-way {cfg.k_shot}-shot, {cfg.k_query} "
                     f"{'query' if cfg.k_query == 1 else 'queries'} per class, from the meta-test split ({classes}); "
                     f"{cfg.inner_steps_test} SGD steps of "
                     f"size {cfg.inner_lr} on the support set from the meta-learned initialisation; BatchNorm with "
                     "the batch statistics of the set classified (transductive, as MAML); mean accuracy in percent "
                     "with the normal 95% interval over episodes (1.96 std / sqrt(n))"),
        "split": split,
        "training": (f"{cfg.meta_iterations} meta-iterations of {cfg.meta_batch_size} tasks, "
                     f"{'first' if cfg.first_order else 'second'}-order MAML, {cfg.inner_steps} inner step(s) of "
                     f"size {cfg.inner_lr}, Adam {cfg.meta_lr}, Conv4 with {cfg.hidden} filters ({'stride-2 convolutions' if cfg.downsample == 'stride' else 'max-pooling'})"),
        "lake20": ("Lake et al.'s 20 official one-shot runs (20-way 1-shot, evaluation alphabets): each run's "
                   "training images are the support set of one task (the head's mean row repeated as the 20-way "
                   f"initial head), {cfg.inner_steps_test} SGD steps, scored with class_labels.txt; "
                   "omniglot_lake20_error: each test item classified on its own, batch norm with the support set's "
                   "statistics (as people and BPL classify: the number comparable to theirs); "
                   "omniglot_lake20_error_transductive: the run's 20 test items as one batch, batch norm with their "
                   "statistics (as MAML scores episodes; it uses the other test items, so it is not comparable to "
                   "people or BPL); error in percent, mean over the 20 runs with the 95% interval of Student's t "
                   "(19 degrees of freedom); reported only for a model meta-trained on the background alphabets "
                   "whose meta-training and validation images include none of the runs' images"),
        "data": ("synthetic data in the real format (not comparable with published numbers)" if data.synthetic
                 else "real data"),
    }


def evaluate_study(cfg: FewShotConfig, model: nn.Module, data: FewShotData, run: RunDir, *,
                   device: torch.device | str = "cpu") -> dict[str, Any]:
    """Test accuracy, the Lake score (under Lake et al.'s protocol only) and the example episode; writes
    ``evaluation.json`` and ``example_episode.pt`` and returns the metrics (see the module docstring)."""
    device = torch.device(device)
    name = setting_name(cfg)
    strategy = _eval_strategy(cfg, device)
    splits = data.splits
    t0 = time.perf_counter()
    model.eval()
    accs, losses = evaluate(model, splits["test"], cfg, episodes=cfg.eval_episodes, device=device,
                            generator=torch.Generator().manual_seed(cfg.seed + 2), strategy=strategy)
    mean, ci = mean_confidence_interval(accs * 100, z=1.96)  # normal interval over episodes, as MAML
    metrics: dict[str, Any] = {f"{name}_acc": mean, f"{name}_ci95": ci, "synthetic": int(data.synthetic)}
    lake: dict[str, Any] = {"reported": False, "errors": None, "overlap_images": None}
    if cfg.dataset != "omniglot":
        lake["reason"] = "Lake et al.'s one-shot runs are Omniglot characters; this run is on MiniImagenet"
    elif not cfg.lake_eval:
        lake["reason"] = "lake_eval is false"
    elif data.lake is None:
        lake["reason"] = f"the prepared Omniglot at {data.path} has no Lake runs (it was built without all_runs.zip)"
    else:
        n_images = int(data.lake.support.size // np.prod(data.lake.support.shape[2:]) * 2)
        overlap = lake_overlap(data.lake, [splits["train"], splits["val"]])
        metrics["omniglot_lake20_overlap_images"] = overlap
        lake["overlap_images"] = overlap
        if cfg.omniglot_split != "background":
            lake["reason"] = (f"omniglot_split is {cfg.omniglot_split!r}: {overlap} of the runs' {n_images} images are "
                              "among this model's meta-training or validation images, so its error would not be "
                              "one-shot learning of new characters. Lake et al.'s protocol meta-trains on the "
                              "background alphabets only: set omniglot_split to 'background'")
        elif overlap:
            lake["reason"] = (f"{overlap} of the runs' {n_images} images are pixel-identical to meta-training or "
                              "validation images although the split is 'background': the prepared data mixes the "
                              "sets; prepare Omniglot again from the official zips")
        else:
            kw = dict(steps=cfg.inner_steps_test, inner_lr=cfg.inner_lr, device=device, strategy=strategy)
            err, per_run = lake20_error(model, data.lake, mode="one_at_a_time", **kw)
            err_t, per_run_t = lake20_error(model, data.lake, mode="transductive", **kw)
            # Student's t with 19 degrees of freedom over the 20 runs (mean_confidence_interval's default)
            metrics["omniglot_lake20_error"] = err
            metrics["omniglot_lake20_error_ci95"] = mean_confidence_interval(per_run)[1]
            metrics["omniglot_lake20_error_transductive"] = err_t
            metrics["omniglot_lake20_error_transductive_ci95"] = mean_confidence_interval(per_run_t)[1]
            lake.update(reported=True, errors=per_run.tolist(), errors_transductive=per_run_t.tolist(),
                        reason="meta-trained on the background alphabets only; none of the runs' "
                        f"{n_images} images is among the meta-training or validation images")
    example = _example_episode(model, splits["test"], cfg, device, strategy)
    metrics["fewshot_eval_s"] = time.perf_counter() - t0
    run.write_json("evaluation.json", {
        "setting": name, "protocols": _protocols(cfg, data), "test_accs": accs.tolist(),
        "test_losses": losses.tolist(), "accuracy": mean, "ci95": ci, "lake20": lake})
    atomic_write_bytes(run.path / "example_episode.pt", lambda fh: torch.save(example, fh))
    return metrics


def run(cfg: FewShotConfig, run_dir: RunDir, ctx: RunContext) -> dict[str, Any]:
    """The study's entry point (both doors: notebook 05 and ``python -m nbmodule run fewshot``)."""
    device = torch.device(ctx.device) if ctx.device is not None else torch.device("cpu")
    data = obtain_data(cfg, ctx.data, device=device)
    if data.synthetic:
        print(f"[fewshot] SYNTHETIC DATA: {data.note}. Numbers are not comparable with published ones.")
    run_dir.write_json("data.json", data.describe(cfg))
    trained = train(cfg, data, run_dir, device=device, progress=ctx.progress)
    metrics = evaluate_study(cfg, trained.model, data, run_dir, device=device)
    metrics["fewshot_train_s"] = trained.train_seconds
    metrics["fewshot_s_per_iter"] = trained.step_seconds / cfg.meta_iterations
    metrics.update({f"fewshot_probe_{k}_s_per_iter": v for k, v in trained.probe.items()})
    return metrics
