"""Detection pieces: COCO mAP wrapper vs pycocotools semantics, CenterNet targets/decoding, losses; mIoU, top-1."""
from __future__ import annotations

import math

import torch

from nbmodule.losses import centernet_targets, detection_loss, focal_heatmap_loss, segmentation_loss
from nbmodule.metrics import ConfusionMatrix, coco_map, top1_accuracy
from nbmodule.models.unified import decode_detections


def _gt(boxes, labels, crowd=None):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels), "width": 100,
            "height": 100, **({"iscrowd": torch.tensor(crowd)} if crowd is not None else {})}


def _pred(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_perfect_predictions_score_one():
    gt = [_gt([[10, 10, 50, 50], [60, 60, 90, 95]], [0, 1]), _gt([[5, 5, 40, 30]], [2])]
    pr = [_pred([[10, 10, 50, 50], [60, 60, 90, 95]], [0.9, 0.8], [0, 1]), _pred([[5, 5, 40, 30]], [0.7], [2])]
    res = coco_map(gt, pr, num_classes=3)
    assert math.isclose(res["map"], 1.0, abs_tol=1e-6) and math.isclose(res["map50"], 1.0, abs_tol=1e-6)


def test_shifted_box_counts_only_below_its_iou():
    # GT 0..40 x 0..40; prediction shifted by 8 px in x: IoU = 32*40 / (48*40) = 0.667
    gt = [_gt([[0, 0, 40, 40]], [0])]
    pr = [_pred([[8, 0, 48, 40]], [0.9], [0])]
    res = coco_map(gt, pr, num_classes=1)
    assert math.isclose(res["map50"], 1.0, abs_tol=1e-6)
    # matched at IoU thresholds .50 .55 .60 .65 (4 of 10), missed at .70 ... .95
    assert math.isclose(res["map"], 0.4, abs_tol=1e-6)


def test_wrong_class_no_predictions_and_crowd():
    gt = [_gt([[0, 0, 40, 40]], [0])]
    assert coco_map(gt, [_pred([[0, 0, 40, 40]], [0.9], [1])], 2)["map"] == 0.0
    assert coco_map(gt, [_pred(torch.zeros(0, 4).tolist(), [], [])], 2) == {"map": 0.0, "map50": 0.0}
    # a detection on a crowd region is ignored, not a false positive
    gt_c = [_gt([[0, 0, 40, 40], [50, 50, 99, 99]], [0, 0], crowd=[0, 1])]
    res = coco_map(gt_c, [_pred([[0, 0, 40, 40], [50, 50, 99, 99]], [0.5, 0.9], [0, 0])], 1)
    assert math.isclose(res["map"], 1.0, abs_tol=1e-6)


def test_miou_ignores_255_and_classes_absent_from_both():
    truth = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 3, 1, 0]])
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred, truth)
    # class 0: tp 2, truth 3, pred 3 -> 2/4; class 1: tp 3, truth 4, pred 4 -> 3/5; class 2, 3 absent (255 pixel ignored)
    iou = cm.iou()
    assert math.isclose(iou[0].item(), 0.5) and math.isclose(iou[1].item(), 0.6)
    assert math.isnan(iou[2].item()) and math.isnan(iou[3].item())
    assert math.isclose(cm.miou(), 0.55)


def test_top1():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]])
    assert math.isclose(top1_accuracy(logits, torch.tensor([0, 1, 1])), 2 / 3, rel_tol=1e-6)


def test_centernet_targets_then_decode_recovers_the_box():
    boxes, labels = [torch.tensor([[16.0, 24.0, 48.0, 56.0]])], [torch.tensor([2])]
    tgt = centernet_targets(boxes, labels, num_classes=3, size=(8, 8), stride=8)
    assert tgt["heatmap"][0, 2].max() == 1.0 and tgt["mask"].sum() == 1
    assert tgt["heatmap"][0, 2, 5, 4] == 1.0  # centre (32, 40) px -> cell (x=4, y=5)
    logits = torch.logit(tgt["heatmap"].clamp(1e-4, 1 - 1e-4))
    det = decode_detections(logits, tgt["box"], stride=8, score_threshold=0.5)[0]
    assert det["labels"].tolist() == [2]
    assert torch.allclose(det["boxes"][0], boxes[0][0], atol=1e-3)


def test_nms_removes_a_duplicate_of_the_same_class():
    heat = torch.full((1, 1, 8, 8), -10.0)
    heat[0, 0, 3, 3] = 5.0
    heat[0, 0, 3, 4] = 4.0  # a second peak one cell away, same size: IoU 32/48 = 0.67
    box = torch.zeros(1, 4, 8, 8)
    box[:, 2:] = math.log(5.0)  # 40 x 40 px
    det = decode_detections(heat, box, stride=8, iou_threshold=0.5)[0]
    assert len(det["boxes"]) == 1 and math.isclose(det["scores"][0].item(), torch.sigmoid(torch.tensor(5.0)).item(), rel_tol=1e-6)


def test_focal_loss_is_small_for_right_and_large_for_wrong_heatmaps():
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 1, 1] = 1.0
    good = torch.full_like(target, -8.0)
    good[0, 0, 1, 1] = 8.0
    assert focal_heatmap_loss(good, target) < 1e-3 < focal_heatmap_loss(-good, target)


def test_detection_and_segmentation_losses_decrease_when_optimised():
    torch.manual_seed(0)
    tgt = centernet_targets([torch.tensor([[8.0, 8.0, 40.0, 32.0]])], [torch.tensor([0])], 2, (8, 8), 8)
    heat = torch.zeros(1, 2, 8, 8, requires_grad=True)
    reg = torch.zeros(1, 4, 8, 8, requires_grad=True)
    opt = torch.optim.Adam([heat, reg], lr=0.1)
    first = None
    for _ in range(30):
        loss = detection_loss(heat, reg, tgt)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    mask = torch.tensor([[[0, 1], [255, 2]]])
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    l0 = segmentation_loss(logits, mask)
    assert math.isclose(l0.item(), math.log(3), rel_tol=1e-5)  # 255 ignored: mean over 3 pixels of log(3)
