"""The MTML study's one entry point, :func:`run`, behind both doors (notebook 03 and the command line)."""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ...config import ConfigError
from ...runs import RunContext, RunDir, atomic_write_bytes
from .config import MtmlConfig
from .data import Splits, collate, load_splits, prepare_data
from .evaluate import curve_metric, evaluate, flat, relative_scores, steps_to_target
from .phases import (PhaseResult, adapted_copy, file_sha256, finetune, fresh_model, load_trained, meta_train,
                     task_subsets, train_dense)

__all__ = ["run", "SALT"]

#: seed salts: each phase's initialisation and data order depend on ``cfg.seed`` and its salt only. MTL and
#: MTML start from the same initialisation; the three starts of the held-out task see the same head seed
#: and the same batches; MTL and MTML are adapted on the same support batch.
SALT = {"single": 10, "multi": 100, "finetune": 300, "adapt": 400}
#: the fields a trained model's data must share with a meta-test / test run of it
DATA_FIELDS = ("dataset", "layout", "synthetic", "scale", "image_size")


def _seed(cfg: MtmlConfig, salt: str, offset: int = 0) -> int:
    return cfg.seed * 1000 + SALT[salt] + offset


def _ev(cfg: MtmlConfig, splits: Splits, ctx: RunContext) -> dict[str, Any]:
    return dict(device=ctx.device, batch_size=max(cfg.batch_size, 16), num_classes=splits.num_classes, amp=cfg.amp)


def _train_rows(name: str, cfg: MtmlConfig, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"run": name, "seed": cfg.seed, **r} for r in rows]


class _Study:
    """The state of one run: what was trained, scored and logged, and the metrics written at the end."""

    def __init__(self, cfg: MtmlConfig, run: RunDir, ctx: RunContext, splits: Splits):
        self.cfg, self.run, self.ctx, self.splits = cfg, run, ctx, splits
        self.metrics: dict[str, Any] = {}
        self.results: dict[str, dict[str, dict[str, float]]] = {}  # row -> task -> metric -> value
        self.models: dict[str, dict[str, nn.Module]] = {}  # row -> task -> the model predicting it (examples)
        self.train_rows: list[dict[str, Any]] = []
        self.pr_rows: list[dict[str, Any]] = []
        self.heldout_rows: list[dict[str, Any]] = []
        self.pretrained: list[int] = []
        self.noted = False

    # -- scoring ----------------------------------------------------------------------------------------
    def score(self, row: str, model: nn.Module, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
        """Test metrics of ``model`` on ``tasks`` under ``row`` (``{row}_{task}_{metric}``)."""
        pr: dict[str, Any] = {}
        res = evaluate(model, self.splits.test, list(tasks), pr_curves=pr, **_ev(self.cfg, self.splits, self.ctx))
        if "edges" in pr:
            c = pr["edges"]
            self.pr_rows += [{"run": row, "threshold": t, "precision": p, "recall": r}
                             for t, p, r in zip(c["threshold"], c["precision"], c["recall"])]
        self.results.setdefault(row, {}).update(res)
        self.models.setdefault(row, {}).update({t: model for t in tasks})
        self.metrics.update(flat(row, res))
        return res

    def note_encoder(self, model: nn.Module) -> None:
        self.pretrained.append(int(getattr(model, "encoder_weights", "random") == "imagenet"))
        note = getattr(getattr(model, "encoder", None), "weights_note", "")
        if note and not self.noted:
            print(f"[mtml] {note}")
            self.noted = True

    # -- phases -------------------------------------------------------------------------------------------
    def singles(self) -> None:
        """One model per training task, trained from scratch: the Δm baseline (row ``single``)."""
        cfg, s = self.cfg, self.splits
        seconds = 0.0
        for t in cfg.train_tasks:
            i = ("seg", "depth", "normals", "edges").index(t)
            model = fresh_model(cfg, [t], s.num_classes, _seed(cfg, "single", i), self.ctx.device)
            self.note_encoder(model)
            res = train_dense(cfg, self.run, f"single_{t}", model, [t], s.train, steps=cfg.steps, lr=cfg.lr,
                              device=self.ctx.device, seed=_seed(cfg, "single", i), progress=self.ctx.progress)
            self.train_rows += _train_rows(f"single_{t}", cfg, res.train_rows)
            seconds += res.train_s
            self.score("single", res.model, [t])
        self.metrics.update(single_optimizer_steps=cfg.steps, single_train_s=seconds)

    def multi(self, kind: str) -> nn.Module:
        """MTL (``kind="mtl"``) or MTML (``"mtml"``) on the training tasks, from the same initialisation, scored
        as trained (row ``{kind}``) and after ``inner_steps`` adaptation steps (row ``{kind}_adapted``)."""
        cfg, s, device = self.cfg, self.splits, self.ctx.device
        tasks = cfg.train_tasks
        model = fresh_model(cfg, tasks, s.num_classes, _seed(cfg, "multi"), device)
        self.note_encoder(model)
        if kind == "mtl":
            res = train_dense(cfg, self.run, "mtl", model, tasks, s.train, steps=cfg.steps, lr=cfg.lr, device=device,
                              seed=_seed(cfg, "multi"), weighting=cfg.weighting, progress=self.ctx.progress)
            model, rows, seconds = res.model, res.train_rows, res.train_s
            self.metrics.update(mtl_optimizer_steps=cfg.steps, mtl_train_images=cfg.steps * cfg.batch_size)
        else:
            model, info = meta_train(cfg, self.run, "mtml", model, tasks, s.train, device=device,
                                     seed=_seed(cfg, "multi"), progress=self.ctx.progress)
            rows, seconds = info["train_rows"], info["train_s"]
            n_sub = len(task_subsets(tasks, cfg.min_subset))
            self.metrics.update(mtml_optimizer_steps=cfg.meta_steps, mtml_subsets=n_sub,
                                mtml_inner_steps=cfg.meta_steps * n_sub * cfg.inner_steps,
                                mtml_train_images=cfg.meta_steps * 2 * cfg.batch_size)
        self.train_rows += _train_rows(kind, cfg, rows)
        self.metrics[f"{kind}_train_s"] = seconds
        self.score(kind, model, tasks)
        adapted = adapted_copy(cfg, model, tasks, s.train, device=device, seed=_seed(cfg, "adapt"))
        self.score(f"{kind}_adapted", adapted, tasks)
        self.metrics[f"{kind}_adapted_steps"] = cfg.inner_steps
        return model

    def relative(self, rows: Sequence[str]) -> None:
        """Δm and Δp of ``rows`` against the single-task models, over the training tasks."""
        base = {t: self.results["single"][t] for t in self.cfg.train_tasks}
        for row in rows:
            res = {t: self.results[row][t] for t in self.cfg.train_tasks}
            self.metrics.update(relative_scores(row, res, base))

    def heldout(self, starts: Mapping[str, nn.Module | None], check: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Learn the held-out task from each start (None: from scratch) with the same budget: every learning
        rate of ``finetune_lrs`` for ``finetune_steps`` steps, the one with the best final *validation* value
        kept, its *test* curve and test metrics reported. Returns ``{start: PhaseResult}`` of the kept runs."""
        cfg, s, device = self.cfg, self.splits, self.ctx.device
        held = cfg.held_out
        metric, lower = curve_metric(held)
        kept: dict[str, Any] = {}
        seconds = 0.0
        for start, init in starts.items():
            runs: list[tuple[float, PhaseResult]] = []
            for lr in cfg.finetune_lrs:
                base = init if init is not None else fresh_model(cfg, [held], s.num_classes,
                                                                   _seed(cfg, "finetune"), device)
                phase = f"ft_{start}_{held}_lr{lr:g}"
                res = finetune(cfg, self.run, phase, base, held, s, lr=lr, device=device, seed=_seed(cfg, "finetune"),
                               progress=self.ctx.progress, check=check)
                runs.append((lr, res))
                seconds += res.train_s
                self.train_rows += _train_rows(phase, cfg, res.train_rows)
            finals = [r.curve[-1][f"val_{metric}"] for _, r in runs]
            best = min(range(len(runs)), key=lambda i: finals[i] if lower else -finals[i])
            for i, (lr, res) in enumerate(runs):
                self.heldout_rows += [{"run": start, "lr": lr, "selected": int(i == best), "seed": cfg.seed, **r}
                                      for r in res.curve]
            lr, res = runs[best]
            self.metrics[f"{start}_finetune_lr"] = lr
            self.score(start, res.model, [held])
            kept[start] = res
        self.metrics.update(heldout_finetune_steps=cfg.finetune_steps, finetune_s=seconds)
        return kept

    def targets(self, kept: Mapping[str, PhaseResult]) -> None:
        """Steps each start needed to reach the from-scratch run's final test value, on the test curves."""
        cfg = self.cfg
        metric, lower = curve_metric(cfg.held_out)
        target = kept["single"].curve[-1][f"test_{metric}"]
        self.metrics["heldout_target"] = target
        for start, res in kept.items():
            self.metrics[f"{start}_steps_to_target"] = steps_to_target(res.curve, f"test_{metric}", target, lower)
        reached = self.metrics.get("mtml_steps_to_target")
        self.metrics["mtml_reaches_target_in_half"] = int(reached is not None and reached <= cfg.finetune_steps / 2)

    # -- files --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def save_examples(self) -> None:
        """``examples.pt``: the first ``n_examples`` test images, their targets and every row's predictions
        (tensors and plain values only, loadable with ``weights_only=True``)."""
        n = min(self.cfg.n_examples, len(self.splits.test))
        if n == 0 or not self.models:
            return
        batch = collate([self.splits.test[i] for i in range(n)], self.ctx.device)
        preds: dict[str, dict[str, torch.Tensor]] = {}
        for row, per_task in self.models.items():
            preds[row] = {}
            for t, m in per_task.items():
                was = m.training
                m.eval()
                o = m(batch["image"], tasks=[t])[t].float()
                m.train(was)
                preds[row][t] = (o.argmax(1) if t == "seg" else o.sigmoid() if t == "edges" else o).cpu()
        tasks = [t for t in ("seg", "depth", "normals", "edges") if t in batch]
        buf = io.BytesIO()
        torch.save({"batch": {k: v.cpu() for k, v in batch.items()}, "preds": preds, "tasks": tasks}, buf)
        atomic_write_bytes(self.run.path / "examples.pt", buf.getvalue())

    def write(self) -> dict[str, Any]:
        if self.train_rows:
            self.run.write_curve("train", self.train_rows)
        if self.heldout_rows:
            self.run.write_curve("heldout", self.heldout_rows)
        if self.pr_rows:
            self.run.write_curve("edges_pr", self.pr_rows)
        self.save_examples()
        if self.pretrained:
            self.metrics["encoder_pretrained"] = int(all(self.pretrained))
        return self.metrics


def _check_same_data(cfg: MtmlConfig, trained: Mapping[str, Any], path: str) -> None:
    differ = [f for f in DATA_FIELDS if f in trained and trained[f] != getattr(cfg, f)]
    if differ:
        diffs = ", ".join(f"{f} (model {trained[f]!r}, now {getattr(cfg, f)!r})" for f in differ)
        raise ConfigError(f"init_model {path} was trained on other data: {diffs}; set these fields as the "
                          "model's run had them")


def run(cfg: MtmlConfig, run_dir: RunDir, ctx: RunContext) -> dict[str, Any]:
    """The study (both doors): prepare the data, run what ``cfg.mode`` asks for, compute every metric, write
    the run folder (see :mod:`nbmodule.engines.mtml`) and return the metrics."""
    init: nn.Module | None = None
    if cfg.mode in ("meta-test", "test"):  # before any data work: a bad or unsafe model file fails at once
        init, trained, init_path = load_trained(cfg.init_model, ctx.device)
        _check_same_data(cfg, trained, str(init_path))
    got = prepare_data(cfg, ctx.data)
    splits = load_splits(cfg, got.path)
    st = _Study(cfg, run_dir, ctx, splits)
    st.metrics["synthetic"] = int(got.synthetic)
    if cfg.mode == "study":
        st.singles()
        mtl, mtml = st.multi("mtl"), st.multi("mtml")
        st.relative(["mtl", "mtl_adapted", "mtml", "mtml_adapted"])
        if cfg.held_out:
            kept = st.heldout({"single": None, "mtl": mtl, "mtml": mtml})
            st.targets(kept)
            for start in ("mtl", "mtml"):  # the examples show the held-out task from the fine-tuned model
                st.models[start][cfg.held_out] = kept[start].model
    elif cfg.mode == "train":
        if cfg.setup == "single":
            st.singles()
        else:
            st.multi("mtl")
    elif cfg.mode == "meta-train":
        st.multi("mtml")
    elif cfg.mode == "meta-test":
        assert init is not None
        st.note_encoder(init)
        missing = [t for t in init.tasks if t not in cfg.tasks]
        if missing:
            raise ConfigError(f"init_model {cfg.init_model} predicts {missing}, which tasks {cfg.tasks} lacks")
        st.heldout({"meta_test": init}, check={"init_model_sha256": file_sha256(init_path)})
    else:  # test
        assert init is not None
        missing = [t for t in init.tasks if t not in cfg.tasks]
        if missing:
            raise ConfigError(f"init_model {cfg.init_model} predicts {missing}: add them to tasks so their labels "
                              "are loaded")
        st.score("test", init, list(init.tasks))
    return st.write()
