"""Multi-task meta-learning for dense prediction (study ``mtml``, notebook 03): single-task, multi-task (MTL)
and meta multi-task (MTML) training of segmentation, depth, surface normals and edges, then learning a
held-out task from each.

    python -m nbmodule run mtml --profile cpu                                  # the notebook's study
    python -m nbmodule run mtml --mode train --config single_task --name mtml_single
    python -m nbmodule run mtml --mode train --config multi_task_baseline --name mtml_mtl
    python -m nbmodule run mtml --mode meta-train --config meta_multitask_baseline --name mtml_meta
    python -m nbmodule run mtml --mode meta-test --config meta_testing --name mtml_meta_test
    python -m nbmodule run mtml --mode test --config default --name t \
        init_model=runs/mtml_meta/checkpoints/mtml_lr0.001.pt
    python -m nbmodule run mtml --profile cpu seed=1 --name seed_1   # one more seed; summarize_seeds reduces them

(``--mode M`` is the override ``mode=M``; a run folder holds one mode's results, hence ``--name``.)

``mode`` (one phase sequence, :func:`run`):

* ``study`` (notebook 03): everything below, then Δm, Δp and the held-out comparison.
* ``train``: ``setup: single``, one model per training task from scratch (row ``single``, the Δm baseline);
  ``setup: mtl``, one shared encoder with a head per training task, summed (or Kendall uncertainty-weighted)
  losses (rows ``mtl`` and ``mtl_adapted``).
* ``meta-train``: MTML (rows ``mtml`` and ``mtml_adapted``): each outer step draws a support and a query batch
  from the training split; for every subset of at least ``min_subset`` training tasks the shared encoder
  and the subset's heads take ``inner_steps`` SGD steps on the support loss, functionally, and the subset's
  query loss with the fast weights is back-propagated to the initial weights (first order unless
  ``first_order: false``); the mean over subsets is one AdamW step. MTL and MTML start from the same
  initialisation. With ``compute_match``, the same run's weights at the step where its image passes equal
  MTL's are kept as well (rows ``mtml_compute``, ``mtml_compute_adapted``: the rate is constant, so this is
  MTML trained for that many steps).
* ``meta-test``: learn ``held_out`` from ``init_model`` (a finished phase checkpoint), selected on validation.
* ``test``: score ``init_model`` on the test split (row ``test``).

Protocols (each number in ``metrics.json`` follows exactly one):

* every reported metric is on ``test_split``; every choice is made on ``val_split`` (real NYU-v2 has no
  validation split: ``val_split: holdout`` carves ``val_holdout`` fixed frames out of the training split, and
  its 654 ``val`` frames are the test set): the training rate of every method from the one grid ``lrs``
  (each single-task model by its task's metric, MTL, MTML and ``mtml_compute`` by validation Δm against the
  single-task models; ``{row}_lr``, every candidate in ``curves/selection.csv``) and the held-out task's
  fine-tuning rate;
* batch norm: every scored model (each row, each point of a held-out curve) is scored with running
  statistics re-estimated for its own weights on the same ``bn_images`` training images (a fixed subset;
  ``torch.optim.swa_utils.update_bn``, cumulative average), never with the statistics training left behind
  (MTML's query passes run adapted weights, so its running statistics describe adapted networks);
  ``bn_images: 0`` keeps the running statistics;
* two budgets side by side: equal optimiser steps (``mtl`` vs ``mtml``) and equal compute (``mtl`` vs
  ``mtml_compute``); ``{row}_image_passes`` counts images through a forward and a backward pass in the
  training loops (single: summed over its per-task models; MTML: per subset ``inner_steps`` support passes
  and one query pass; evaluation and batch-norm passes, forward only, are not counted), per trained model
  (every rate of the grid costs as much again, for every method alike);
* ``{row}_{task}_{metric}`` for rows ``single``, ``mtl``, ``mtml`` ("as trained") and ``mtl_adapted``,
  ``mtml_adapted`` (after ``inner_steps`` SGD steps of ``inner_lr`` on one training support batch of all
  training tasks, the same batch for both); ``{row}_optimizer_steps`` say the optimiser steps each got,
  ``mtml_inner_steps`` the inner steps, ``{row}_train_images`` the images drawn;
* ``{row}_delta_m``: Δm (%) of Maninis et al. / Vandenhende et al. over the *training* tasks against the
  single-task models (one metric per task: mIoU, depth RMSE, mean angle error, edge ODS F);
  ``{row}_delta_p``: LibMTL's multi-metric Δp (see :mod:`nbmodule.metrics`);
* the held-out task is learnt from scratch (row ``single``), from the MTL model and from the MTML models with
  the same budget (``finetune_steps`` AdamW steps at a constant rate) and the same tuning (each start tries
  every rate of ``finetune_lrs`` and keeps the best final *validation* value: ``{start}_finetune_lr``); its
  test metrics are ``{start}_{held_out}_{metric}``, its test curve is in ``curves/heldout.csv``;
  ``heldout_target`` is the from-scratch run's final test value, ``{start}_steps_to_target`` the first
  curve point at or beyond it, ``mtml_reaches_target_in_half`` whether MTML's is at most half the budget;
* edges: the BSDS protocol (:func:`nbmodule.metrics.boundary_scores`: thinning, one-to-one matching within
  0.011 of the diagonal, 99 thresholds) gives ``ods_f``, ``ois_f`` and the benchmark's ``ap`` (%; BSDS
  ``collect_eval_bdry.m``: the PR curve interpolated, recall levels outside the reached range counting 0);
  the true maps are matched as given (BSDS) or, with ``edges_thin_gt: true``, thinned first (seism's NYUD
  numbers); the learning curves of a held-out ``edges`` task use the fast dilation proxy ``proxy_f`` instead
  (a training-time number only);
* ``synthetic`` = 1 when the data are rendered scenes (``data_prep.scenes``) rather than the real dataset;
  ``encoder_pretrained`` = 1 only when ImageNet weights were actually loaded.

Run folder (``<out>/03_mtml/`` from either door)::

    config.json         the study, the config, device, versions (nbmodule.studies.execute)
    metrics.json        the keys above, plus timings (*_s)
    curves/train.csv    run (phase), seed, step, train_loss (MTML: the mean query loss)
    curves/heldout.csv  run (single | mtl | mtml | mtml_compute | meta_test), lr, selected, seed, step,
                        val_<m>, test_<m>
    curves/edges_pr.csv run (row), threshold, precision, recall: the BSDS curve of every row with edges
    curves/selection.csv run, seed, lr, criterion, value, selected: every training rate tried, on validation
    examples.pt         a few test images, their targets and every row's predictions (weights_only-safe)
    checkpoints/<phase>.pt  resume state of single_<task>_lr<lr>, mtl_lr<lr>, mtml_lr<lr> (its equal-compute
                        snapshot inside), ft_<start>_<task>_lr<lr>; a finished
                        one holds its model and spec and is what init_model takes

Seeds: each seed is a run folder of its own (``seed=S``); :func:`summarize_seeds` gives the mean and the 95%
interval (Student's t) of every metric over them. The figures are in :mod:`nbmodule.viz.mtml`.
"""
from __future__ import annotations

from .config import HOLDOUT, MIN_SIDE, NAME, MtmlConfig
from .data import BatchStream, Splits, load_splits, prepare_data
from .evaluate import bn_batches, curve_metric, evaluate, primary, recalibrated, steps_to_target, task_loss
from .phases import (adapted_copy, episode_loss, finetune, fresh_model, load_trained, meta_passes_per_step,
                     meta_train, task_subsets, train_dense)
from .seeds import summarize_seeds
from .study import run

Config = MtmlConfig
MTMLConfig = MtmlConfig

__all__ = ["NAME", "Config", "MtmlConfig", "MTMLConfig", "run", "HOLDOUT", "MIN_SIDE", "prepare_data",
           "load_splits", "Splits", "BatchStream", "task_loss", "evaluate", "primary", "curve_metric", "steps_to_target",
           "train_dense", "meta_train", "episode_loss", "adapted_copy", "finetune", "fresh_model", "load_trained",
           "task_subsets", "meta_passes_per_step", "bn_batches", "recalibrated", "summarize_seeds"]
