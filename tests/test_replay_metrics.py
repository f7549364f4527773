"""The replay study's metrics and tables: mIoU at the label's own resolution (a hand-computed case where
resizing the labels instead gives another number), and the viz tables equal to the engine's definitions."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from data_prep import obtain
from nbmodule.data.voc import VOCSegmentation
from nbmodule.engines import replay as engine
from nbmodule.metrics import ConfusionMatrix
from nbmodule.viz import replay as viz


def _two_column_logits() -> torch.Tensor:
    """(2, 2, 2) logits: class 0 wins in the left column, class 1 in the right one, by a margin of 10."""
    logits = torch.zeros(2, 2, 2)
    logits[0, :, 0], logits[0, :, 1] = 5.0, -5.0
    logits[1, :, 0], logits[1, :, 1] = -5.0, 5.0
    return logits


def test_miou_is_scored_at_the_label_resolution_hand_case():
    # Label 4x4: class 0 in columns 0-2, class 1 in column 3 (a one-pixel-wide object).
    label = torch.zeros(4, 4, dtype=torch.long)
    label[:, 3] = 1
    # Bilinear 2 -> 4 (align_corners=False) samples x_src = x/2 - 1/4: columns 0, 1 lean left (class 0), columns
    # 2, 3 lean right (class 1). So the prediction is class 0 in columns 0-1 and class 1 in columns 2-3.
    cm = ConfusionMatrix(2)
    engine.add_at_label_size(cm, _two_column_logits(), label)
    # class 0: truth 12 px, predicted 8, overlap 8 -> 8 / 12; class 1: truth 4, predicted 8, overlap 4 -> 4 / 8
    assert cm.iou().tolist() == pytest.approx([2 / 3, 1 / 2])
    assert cm.miou() == pytest.approx(7 / 12)
    # Resizing the label to the logits' 2x2 instead (nearest: columns 0 and 2) erases the object: a different,
    # wrong score (class 0: 2 / 4, class 1: 0 / 2 -> 0.25).
    small = F.interpolate(label[None, None].float(), size=(2, 2), mode="nearest")[0, 0].long()
    wrong = ConfusionMatrix(2)
    wrong.update(_two_column_logits().argmax(0), small)
    assert wrong.miou() == pytest.approx(0.25)


def test_evaluation_reads_each_mask_at_its_original_size(tmp_path):
    root = obtain("voc", tmp_path, prefer="synthetic", scale="smoke").path  # 96 px images
    ds = VOCSegmentation(root, "val", image_size=64, limit=2)
    assert ds[0]["mask"].shape == (64, 64) and ds.full_mask(0).shape == (96, 96)
    assert set(ds.full_mask(0).unique().tolist()) <= set(range(21)) | {255}

    class Oracle(torch.nn.Module):  # perfect logits at 64 px: exactly right only if scored at 96 px via resize
        num_seg_classes, num_det_classes, num_cls_classes = 21, 1, 1

        def forward(self, images):
            masks = [ds.full_mask(i) for i in range(len(ds))][:len(images)]
            seg = torch.stack([F.one_hot(m.clamp(max=20), 21).permute(2, 0, 1).float() * 20 for m in masks])
            seg = F.interpolate(seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
            b = len(images)
            return {"seg": seg, "heatmap": torch.zeros(b, 1, 8, 8), "box": torch.zeros(b, 4, 8, 8),
                    "cls": torch.zeros(b, 1)}

    miou = engine.evaluate(Oracle(), "seg", ds, torch.device("cpu"), batch_size=2)["seg_miou"]
    assert 0.6 < miou <= 1.0  # scored against the 96 px label maps (boundaries blur through 64 px)


def _write_table(run, rows):
    pd.DataFrame(rows, columns=list(engine.STAGE_COLUMNS)).to_csv(run / "stage_table.csv", index=False)


def test_viz_tables_use_the_engine_definitions_and_its_layout_only(tmp_path):
    nan = float("nan")
    _write_table(tmp_path, [
        ("replay", "seg", 0.40, nan, nan, nan), ("replay", "det", 0.39, 0.20, 0.30, nan),
        ("replay", "cls", 0.381, 0.19, 0.28, 0.70),
        ("noreplay", "seg", 0.40, nan, nan, nan), ("noreplay", "det", 0.20, 0.20, 0.30, nan),
        ("noreplay", "cls", 0.10, 0.08, 0.10, 0.71)])
    drops = viz.drop_table(tmp_path).set_index(["run", "task"])
    assert drops.loc[("replay", "seg"), "drop_pct"] == pytest.approx(4.75)  # (0.40 - 0.381) / 0.40
    assert drops.loc[("replay", "seg"), "drop_points"] == pytest.approx(1.9)  # percentage points
    assert drops.loc[("noreplay", "det"), "drop_pct"] == pytest.approx(60.0)
    assert drops.loc[("replay", "seg"), "within_limit"] and not drops.loc[("noreplay", "seg"), "within_limit"]
    for (run, task), row in drops.iterrows():
        assert (row["drop_pct"], row["drop_points"]) == pytest.approx(engine.forgetting(row["end_of_own_stage"],
                                                                                          row["final"]), nan_ok=True)
    assert drops.loc[("replay", "cls"), "drop_pct"] == 0.0  # learned last: nothing to forget
    long = viz.read_stage_table(tmp_path)
    assert set(long["task"]) == set(engine.METRICS) and long["value"].count() == 16
    assert viz.plot_replay_stages(tmp_path) is not None and viz.plot_replay_forgetting(tmp_path) is not None
    # any other layout is an error naming the file, not a guess
    (tmp_path / "stage_table.csv").write_text("stage,task,value\nseg,seg_miou,0.5\n")
    with pytest.raises(ValueError, match="stage_table.csv: columns"):
        viz.read_stage_table(tmp_path)


def test_summary_table_lists_each_run_with_its_mean_drop():
    m = {"seg_miou": 0.38, "det_map": 0.19, "det_map50": 0.28, "cls_top1": 0.7, "mean_drop_pct": 4.0,
         "noreplay_seg_miou": 0.1, "noreplay_det_map": 0.08, "noreplay_det_map50": 0.1, "noreplay_cls_top1": 0.71,
         "noreplay_mean_drop_pct": 70.0, "alone_seg_miou": 0.4}
    t = viz.summary_table(m).set_index("run")
    assert list(t.index) == ["replay", "noreplay", "alone"]
    assert t.at["noreplay", "mean_drop_pct"] == 70.0 and math.isnan(t.at["alone", "det_map"])
