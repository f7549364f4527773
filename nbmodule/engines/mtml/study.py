"""The MTML study's one entry point, :func:`run`, behind both doors (notebook 03 and the command line)."""
from __future__ import annotations

import copy
import io
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ...config import ConfigError
from ...runs import RunContext, RunDir, atomic_write_bytes
from .config import MtmlConfig
from .data import Splits, collate, load_splits, prepare_data
from ...metrics import UndefinedRelativeChange, delta_m
from .evaluate import bn_batches, curve_metric, evaluate, flat, primary, recalibrated, relative_scores, steps_to_target
from .phases import (PhaseResult, adapted_copy, file_sha256, finetune, fresh_model, load_trained, meta_passes_per_step,
                     meta_train, task_subsets, train_dense)

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
        self.results: dict[str, dict[str, dict[str, float]]] = {}  # row -> task -> metric -> value (test)
        self.val: dict[str, dict[str, dict[str, float]]] = {}  # row -> task -> metric -> value (validation)
        self.models: dict[str, dict[str, nn.Module]] = {}  # row -> task -> the model predicting it (examples)
        self.starts: dict[str, nn.Module] = {}  # the trained multi-task models the held-out task is learnt from
        self.train_rows: list[dict[str, Any]] = []
        self.pr_rows: list[dict[str, Any]] = []
        self.heldout_rows: list[dict[str, Any]] = []
        self.selection_rows: list[dict[str, Any]] = []
        self.pretrained: list[int] = []
        self.noted = False
        self.bn = bn_batches(splits.train, cfg.bn_images, max(cfg.batch_size, 16))

    # -- scoring ----------------------------------------------------------------------------------------
    def _evaluate(self, model: nn.Module, data, tasks: Sequence[str], pr: dict[str, Any] | None = None):
        """Metrics of ``model`` on ``data`` with BatchNorm statistics re-estimated for these weights (protocol)."""
        scored = recalibrated(model, self.bn, self.ctx.device)
        return evaluate(scored, data, list(tasks), pr_curves=pr, thin_gt=self.cfg.edges_thin_gt,
                        **_ev(self.cfg, self.splits, self.ctx))

    def score(self, row: str, model: nn.Module, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
        """Test metrics of ``model`` on ``tasks`` under ``row`` (``{row}_{task}_{metric}``)."""
        pr: dict[str, Any] = {}
        res = self._evaluate(model, self.splits.test, tasks, pr)
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

    def _select(self, row: str, candidates: Sequence[tuple[float, nn.Module]], tasks: Sequence[str]) -> int:
        """The index of the candidate (one per rate of ``lrs``) with the best *validation* score: one task, its
        primary metric; several, Δm against the single-task models' validation scores (against the first
        candidate's when this run trains no single-task models: Δm's ranking does not depend on the
        reference beyond its per-task scale). Every candidate's value goes to ``curves/selection.csv``."""
        vals = [self._evaluate(m, self.splits.val, tasks) for _, m in candidates]
        if len(tasks) == 1:
            metric, lower = primary(tasks[0])
            crit, scores = f"val_{metric}", [v[tasks[0]][metric] for v in vals]
            keyed = [(s if lower else -s) if math.isfinite(s) else math.inf for s in scores]
        else:
            ref = self.val.get("single") if all(t in self.val.get("single", {}) for t in tasks) else vals[0]
            crit, scores = "val_delta_m", []
            for v in vals:
                try:
                    scores.append(delta_m({t: v[t] for t in tasks}, {t: ref[t] for t in tasks}))
                except UndefinedRelativeChange as err:
                    print(f"[mtml] {row}: the rate cannot be chosen by validation Δm ({err}); the first kept")
                    scores = [math.nan] * len(vals)
                    break
            keyed = [-s if math.isfinite(s) else math.inf for s in scores]
        best = min(range(len(vals)), key=lambda i: (keyed[i], i))
        self.selection_rows += [{"run": row, "seed": self.cfg.seed, "lr": lr, "criterion": crit, "value": sc,
                                 "selected": int(i == best)} for i, ((lr, _), sc) in enumerate(zip(candidates, scores))]
        self.val.setdefault(row, {}).update(vals[best])
        return best

    # -- phases -------------------------------------------------------------------------------------------
    def singles(self) -> None:
        """One model per training task, trained from scratch at every rate of ``lrs``, the best on validation
        kept: the Δm baseline (row ``single``)."""
        cfg, s = self.cfg, self.splits
        seconds, passes = 0.0, 0
        for t in cfg.train_tasks:
            i = ("seg", "depth", "normals", "edges").index(t)
            runs = []
            for lr in cfg.lrs:
                model = fresh_model(cfg, [t], s.num_classes, _seed(cfg, "single", i), self.ctx.device)
                self.note_encoder(model)
                phase = f"single_{t}_lr{lr:g}"
                res = train_dense(cfg, self.run, phase, model, [t], s.train, steps=cfg.steps, lr=lr,
                                  device=self.ctx.device, seed=_seed(cfg, "single", i), progress=self.ctx.progress)
                self.train_rows += _train_rows(phase, cfg, res.train_rows)
                seconds += res.train_s
                runs.append((lr, res))
            best = self._select(f"single_{t}", [(lr, r.model) for lr, r in runs], [t])
            lr, res = runs[best]
            self.val.setdefault("single", {}).update(self.val.pop(f"single_{t}"))
            self.metrics[f"single_{t}_lr"] = lr
            passes += res.image_passes
            self.score("single", res.model, [t])
        self.metrics.update(single_optimizer_steps=cfg.steps, single_image_passes=passes, single_train_s=seconds)

    def multi(self, kind: str) -> None:
        """MTL (``kind="mtl"``) or MTML (``"mtml"``, and ``"mtml_compute"``: the same run stopped where its image
        passes equal MTL's) on the training tasks, from the same initialisation, at every rate of ``lrs``, the
        best on validation kept; scored as trained (row ``{row}``) and after ``inner_steps`` adaptation steps
        (row ``{row}_adapted``)."""
        cfg, s, device = self.cfg, self.splits, self.ctx.device
        tasks = cfg.train_tasks
        batch = min(cfg.batch_size, len(s.train))
        n_sub = len(task_subsets(tasks, cfg.min_subset))
        per_step = meta_passes_per_step(cfg, n_sub, batch)
        # equal compute: the MTML step whose image passes are closest to MTL's cfg.steps x batch
        matched = min(cfg.meta_steps, max(1, round(cfg.steps * batch / per_step)))
        rows = ["mtl"] if kind == "mtl" else ["mtml"] + (["mtml_compute"] if cfg.compute_match else [])
        cands: dict[str, list[tuple[float, nn.Module, int, int]]] = {r: [] for r in rows}  # lr, model, steps, passes
        seconds = 0.0
        for lr in cfg.lrs:
            model = fresh_model(cfg, tasks, s.num_classes, _seed(cfg, "multi"), device)
            self.note_encoder(model)
            phase = f"{kind}_lr{lr:g}"
            if kind == "mtl":
                res = train_dense(cfg, self.run, phase, model, tasks, s.train, steps=cfg.steps, lr=lr, device=device,
                                  seed=_seed(cfg, "multi"), weighting=cfg.weighting, progress=self.ctx.progress)
                cands["mtl"].append((lr, res.model, cfg.steps, res.image_passes))
                train_rows, seconds = res.train_rows, seconds + res.train_s
            else:
                model, info = meta_train(cfg, self.run, phase, model, tasks, s.train, device=device, lr=lr,
                                         seed=_seed(cfg, "multi"), progress=self.ctx.progress,
                                         snapshots=[matched] if cfg.compute_match else [])
                cands["mtml"].append((lr, model, cfg.meta_steps, info["image_passes"]))
                if cfg.compute_match:
                    snap = info["snapshots"][matched]
                    early = copy.deepcopy(model)
                    early.load_state_dict(snap["model"])
                    cands["mtml_compute"].append((lr, early, matched, snap["image_passes"]))
                train_rows, seconds = info["train_rows"], seconds + info["train_s"]
            self.train_rows += _train_rows(phase, cfg, train_rows)
        self.metrics[f"{kind}_train_s"] = seconds
        if kind == "mtml":
            self.metrics.update(mtml_subsets=n_sub, mtml_inner_steps=cfg.meta_steps * n_sub * cfg.inner_steps)
        for row in rows:
            best = self._select(row, [(lr, m) for lr, m, _, _ in cands[row]], tasks)
            lr, model, steps, passes = cands[row][best]
            per = batch if row == "mtl" else 2 * batch
            self.metrics.update({f"{row}_lr": lr, f"{row}_optimizer_steps": steps, f"{row}_image_passes": passes,
                                 f"{row}_train_images": steps * per})
            self.score(row, model, tasks)
            adapted = adapted_copy(cfg, model, tasks, s.train, device=device, seed=_seed(cfg, "adapt"))
            self.score(f"{row}_adapted", adapted, tasks)
            self.metrics[f"{row}_adapted_steps"] = cfg.inner_steps
            self.metrics[f"{row}_adapted_image_passes"] = cfg.inner_steps * batch
            self.starts[row] = model

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
                               progress=self.ctx.progress, check=check, bn=self.bn)
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
        self.metrics.update(heldout_finetune_steps=cfg.finetune_steps, finetune_s=seconds,
                            heldout_image_passes=cfg.finetune_steps * min(cfg.batch_size, len(s.train)))
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
        if self.selection_rows:
            self.run.write_curve("selection", self.selection_rows)
        self.save_examples()
        if self.pretrained:
            self.metrics["encoder_pretrained"] = int(all(self.pretrained))
        self.metrics["bn_images"] = sum(int(b.shape[0]) for b in self.bn)
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
    if cfg.amp and torch.device(ctx.device).type == "cpu":
        from ...env import cpu_bfloat16

        print(f"[mtml] amp: {cpu_bfloat16()[1]}")
    if cfg.mode == "study":
        st.singles()
        st.multi("mtl")
        st.multi("mtml")
        st.relative([r for s in st.starts for r in (s, f"{s}_adapted")])
        if cfg.held_out:
            kept = st.heldout({"single": None, **st.starts})
            st.targets(kept)
            for start in st.starts:  # the examples show the held-out task from the fine-tuned model
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
