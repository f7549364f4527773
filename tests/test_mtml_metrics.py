"""MTML losses and metrics on hand-computed cases (edges: tests/test_metrics_boundary.py)."""
import math

import pytest
import torch

from nbmodule.losses import balanced_bce_loss, depth_l1_loss, normals_cosine_loss, seg_loss
from nbmodule.metrics import (ConfusionMatrix, DepthMeter, EdgeProxyMeter, MetricRangeError, NormalsMeter,
                              UndefinedRelativeChange, delta_m, delta_p)


def test_seg_loss_ignores_255_and_all_ignored_is_zero():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # (1, 2 classes, 1, 2)
    target = torch.tensor([[[0, 255]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert seg_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    zero = seg_loss(logits.requires_grad_(), torch.full((1, 1, 2), 255))
    assert zero.item() == 0.0 and zero.requires_grad


def test_depth_l1_only_on_valid_pixels():
    pred = torch.tensor([1.0, 2.0, 10.0]).view(1, 1, 1, 3)
    target = torch.tensor([2.0, 2.5, 0.0]).view(1, 1, 1, 3)  # last pixel invalid (0)
    assert depth_l1_loss(pred, target).item() == pytest.approx((1.0 + 0.5) / 2)


def test_normals_cosine_loss_normalises_prediction_and_masks():
    target = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]).view(1, 3, 1, 2)  # second pixel invalid
    pred = torch.tensor([[3.0, 1.0], [0.0, 1.0], [3.0, 1.0]]).view(1, 3, 1, 2)  # 45 degrees off, scaled
    assert normals_cosine_loss(pred, target).item() == pytest.approx(1 - math.cos(math.pi / 4), rel=1e-6)


def test_balanced_bce_weights_positives_by_negative_fraction():
    logits = torch.zeros(1, 1, 1, 4)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)
    # beta = 3/4 on the one positive, 1/4 on three negatives; each term log 2; mean over 4 pixels
    expected = (0.75 * math.log(2) + 3 * 0.25 * math.log(2)) / 4
    assert balanced_bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_miou_is_per_class_not_pooled():
    cm = ConfusionMatrix(3, ignore_index=255)
    target = torch.tensor([0, 0, 0, 0, 1, 1, 255])
    pred = torch.tensor([0, 0, 0, 0, 1, 0, 2])
    cm.update(pred, target)
    # class 0: tp 4, union 5 -> 0.8; class 1: tp 1, union 2 -> 0.5; class 2 absent everywhere counted -> excluded
    assert cm.miou() == pytest.approx((0.8 + 0.5) / 2)
    assert cm.pixel_accuracy() == pytest.approx(5 / 6)


def test_depth_meter_rmse_has_square_root_and_pools_pixels():
    m = DepthMeter()
    m.update(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]))
    m.update(torch.tensor([4.0, 7.0]), torch.tensor([4.0, 0.0]))  # second pixel invalid
    r = m.compute()
    assert r["abs_err"] == pytest.approx(2 / 3)
    assert r["rel_err"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert r["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert r["delta1"] == pytest.approx(1 / 3)  # ratios 2, 1.5, 1


def test_normals_meter_angles_median_and_thresholds():
    angles = [0.0, 10.0, 20.0, 40.0, 90.0]
    rad = torch.deg2rad(torch.tensor(angles))
    pred = torch.stack([torch.sin(rad), torch.zeros(5), torch.cos(rad)]).view(1, 3, 1, 5)
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 5)
    m = NormalsMeter()
    m.update(pred * 2.0, target)
    r = m.compute()
    assert r["mean"] == pytest.approx(sum(angles) / 5, abs=1e-6)
    assert r["median"] == pytest.approx(20.0, abs=0.01)
    assert r["within_11_25"] == pytest.approx(40.0)
    assert r["within_22_5"] == pytest.approx(60.0)
    assert r["within_30"] == pytest.approx(60.0)


def test_normals_meter_skips_invalid_targets():
    m = NormalsMeter()
    pred = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    target = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]).view(1, 3, 1, 2)
    m.update(pred, target)
    assert m.n == 1 and m.compute()["mean"] == pytest.approx(0.0)


def test_edge_proxy_exact_and_with_tolerance():
    gt = torch.zeros(1, 1, 1, 6)
    gt[..., 1] = 1
    gt[..., 4] = 1
    prob = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.0]).view(1, 1, 1, 6)
    # tolerance 0, threshold 0.25..0.3: predicts {1, 3, 4}: P = 2/3, R = 1 -> F = 0.8 (the best)
    m = EdgeProxyMeter(thresholds=[0.85, 0.5, 0.25], tolerance=0)
    m.update(prob, gt)
    r = m.compute()
    assert r["proxy_f"] == pytest.approx(0.8)
    assert r["proxy_threshold"] == pytest.approx(0.25)
    # with 1 px tolerance, predicting {1, 3} at 0.5 matches both edges: F = 1
    m1 = EdgeProxyMeter(thresholds=[0.5], tolerance=1)
    m1.update(prob, gt)
    assert m1.compute()["proxy_f"] == pytest.approx(1.0)


BASE = {"seg": {"miou": 40.0, "pixel_acc": 60.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2, "rmse": 1.0},
        "normals": {"mean": 20.0, "median": 15.0, "within_11_25": 30.0, "within_22_5": 60.0, "within_30": 70.0},
        "edges": {"ods_f": 50.0}}


def test_delta_m_uses_one_metric_per_task_as_maninis_and_vandenhende():
    """Δm averages mIoU, depth RMSE, mean angle and ODS F only: a change in any other metric leaves it alone."""
    new = {t: dict(v) for t, v in BASE.items()}
    new["seg"]["miou"] = 44.0        # +10%
    new["depth"]["rmse"] = 0.9       # lower is better: +10%
    new["normals"]["mean"] = 22.0    # worse: -10%
    new["edges"]["ods_f"] = 55.0     # +10%
    new["depth"]["abs_err"] = 0.1    # not a Δm metric
    new["normals"]["within_30"] = 99.0
    assert delta_m(new, BASE) == pytest.approx((10 + 10 - 10 + 10) / 4)
    assert delta_m(BASE, BASE) == 0.0


def test_delta_p_averages_every_metric_within_a_task_first():
    new = {t: dict(v) for t, v in BASE.items()}
    new["seg"]["pixel_acc"] = 66.0   # seg: (0 + 10) / 2 = 5
    new["depth"]["abs_err"] = 0.45   # depth: (10 + 0) / 2 = 5 (rmse is not one of LibMTL's depth metrics)
    new["depth"]["rmse"] = 2.0
    # normals and edges unchanged: (5 + 5 + 0 + 0) / 4
    assert delta_p(new, BASE) == pytest.approx(2.5)
    assert delta_m(new, BASE) == pytest.approx(-100 / 4)  # only the rmse change counts for Δm


def test_delta_m_refuses_missing_or_zero_baselines():
    with pytest.raises(UndefinedRelativeChange, match="depth.rmse"):
        delta_m({t: BASE[t] for t in BASE if t != "depth"} | {"depth": {"rmse": float("nan")}}, BASE)
    with pytest.raises(UndefinedRelativeChange, match="seg.miou"):
        delta_m({"seg": {"miou": 3.0}}, {"seg": {"miou": 0.0}})


@pytest.mark.parametrize("fn", [delta_m, delta_p])
def test_a_task_on_one_side_only_is_named_not_skipped(fn):
    """Before, a task missing from either side was left out silently and the score averaged the rest."""
    partial = {t: BASE[t] for t in ("seg", "depth")}
    with pytest.raises(ValueError, match=r"\['normals', 'edges'\] in the baseline but not in the metrics") as err:
        fn(partial, BASE)
    assert not isinstance(err.value, UndefinedRelativeChange)  # a bug to fix, not a null score
    with pytest.raises(ValueError, match=r"\['seg'\] in the metrics but not in the baseline"):
        fn({"seg": BASE["seg"], "depth": BASE["depth"]}, {"depth": BASE["depth"]})
    with pytest.raises(ValueError, match="none of the tasks"):
        fn({}, {})


def test_metrics_refuse_values_outside_their_range():
    cm = ConfusionMatrix(2, ignore_index=None)
    cm.mat = torch.tensor([[5, -3], [0, 1]])  # a corrupted count
    with pytest.raises(MetricRangeError, match="IoU of class 0 = .* outside \\[0, 1\\]"):
        cm.miou()
    m = DepthMeter()
    m.update(torch.tensor([1.0]), torch.tensor([2.0]))
    m.d1 = 5  # more accurate pixels than pixels
    with pytest.raises(MetricRangeError, match="depth delta1 = 5.0"):
        m.compute()
