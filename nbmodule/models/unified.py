"""``UnifiedModel``: one MobileNetV3 backbone, one FPN neck, ONE shared head serving three tasks.

The head is a single branch of ``head_layers`` convolutions (2 or 3, the last a 1x1) applied to the finest
FPN level (stride 8). Its output channels are split, not branched:

- ``[0, C_seg)``: per-pixel segmentation logits (upsampled bilinearly to the input size),
- ``[C_seg, C_seg + C_det)``: CenterNet-style class heatmap logits (one peak per object centre),
- next 4: box regression at each cell, ``(dx, dy, log w/stride, log h/stride)``,
- last ``C_cls``: classification evidence, global-average pooled to image logits.

So every output of every task comes from the same head weights. :func:`decode_detections` turns the dense
detection outputs into ``N x (x1, y1, x2, y2, score, label)`` boxes with torchvision's batched NMS.

ImageNet weights: ``pretrained=True`` tries torchvision's weights (downloaded to the torch hub cache); when
they cannot be loaded (offline) the backbone stays random and ``model.weights_source`` says so.
"""
from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import models as tvm
from torchvision.ops import FeaturePyramidNetwork, batched_nms

from . import register_model

__all__ = ["UnifiedModel", "decode_detections", "build_unified", "DET_STRIDE"]

DET_STRIDE = 8  # the head runs on the stride-8 FPN level

_BACKBONES = {
    "mobilenet_v3_small": (tvm.mobilenet_v3_small, tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
}


def _load_backbone(name: str, pretrained: bool) -> tuple[nn.Sequential, str]:
    """The backbone's ``features`` and where its weights came from ("imagenet" or "random (...)")."""
    if name not in _BACKBONES:
        raise ValueError(f"backbone {name!r} unknown; choose one of {sorted(_BACKBONES)}")
    ctor, weights = _BACKBONES[name]
    if pretrained:
        try:
            return ctor(weights=weights).features, f"imagenet ({weights})"
        except Exception as err:  # noqa: BLE001 - offline / corrupt cache: fall back, and say so
            reason = f"{type(err).__name__}: {err}"
            warnings.warn(f"ImageNet weights for {name} could not be loaded ({reason}); using random init",
                          stacklevel=2)
            return ctor(weights=None).features, f"random (ImageNet weights unavailable: {reason})"
    return ctor(weights=None).features, "random (pretrained=False)"


class UnifiedModel(nn.Module):
    """Backbone -> FPN (strides 8/16/32) -> one shared head on stride 8.

    ``forward(images)`` with ``images: (B, 3, H, W)`` normalised, H and W multiples of 32, returns a dict:
    ``seg (B, C_seg, H, W)`` logits, ``heatmap (B, C_det, H/8, W/8)`` logits, ``box (B, 4, H/8, W/8)``,
    ``cls (B, C_cls)`` logits. The dict's keys and shapes never depend on the mode.
    """

    def __init__(self, num_seg_classes: int = 21, num_det_classes: int = 10, num_cls_classes: int = 10,
                 backbone: str = "mobilenet_v3_small", pretrained: bool = False, fpn_channels: int = 96,
                 head_layers: Literal[2, 3] = 3, bn_momentum: float | None = 0.1):
        super().__init__()
        if head_layers not in (2, 3):
            raise ValueError(f"head_layers must be 2 or 3, got {head_layers}")
        self.num_seg_classes, self.num_det_classes, self.num_cls_classes = (
            num_seg_classes, num_det_classes, num_cls_classes)
        self.backbone, self.weights_source = _load_backbone(backbone, pretrained)
        if bn_momentum is not None:
            # torchvision's MobileNetV3 uses momentum 0.01: its running statistics need ~500 steps to forget
            # their initial values, so a short schedule evaluates with stale statistics (eval outputs collapse)
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = bn_momentum
        self.backbone_name = backbone
        self.taps, channels = self._find_taps()
        self.neck = FeaturePyramidNetwork(channels, fpn_channels)
        layers: list[nn.Module] = []
        for _ in range(head_layers - 1):
            layers += [nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(fpn_channels), nn.ReLU(inplace=True)]
        self.out_channels = num_seg_classes + num_det_classes + 4 + num_cls_classes
        layers.append(nn.Conv2d(fpn_channels, self.out_channels, 1))
        self.head = nn.Sequential(*layers)
        # CenterNet's prior: heatmap logits start at p=0.1 so the focal loss does not explode at step 0.
        with torch.no_grad():
            last = self.head[-1]
            last.bias[num_seg_classes:num_seg_classes + num_det_classes].fill_(-2.19)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def _find_taps(self) -> tuple[list[int], list[int]]:
        """Indices of the last backbone block at strides 8, 16, 32 and their channel counts."""
        x = torch.zeros(1, 3, 64, 64)
        last: dict[int, tuple[int, int]] = {}
        was_training = self.backbone.training
        self.backbone.eval()
        for i, block in enumerate(self.backbone):
            x = block(x)
            last[64 // x.shape[-1]] = (i, x.shape[1])
        self.backbone.train(was_training)
        taps = [last[s] for s in (8, 16, 32)]
        return [t[0] for t in taps], [t[1] for t in taps]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The stride-8 FPN map ``(B, fpn_channels, H/8, W/8)`` that the shared head reads."""
        x = (images - self.mean) / self.std
        feats: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.backbone):
            x = block(x)
            if i in self.taps:
                feats[f"p{len(feats)}"] = x
            if i == self.taps[-1]:
                break
        return self.neck(feats)["p0"]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images``: (B, 3, H, W) float in [0, 1] (normalised inside)."""
        out = self.head(self.features(images))  # (B, C_out, H/8, W/8)
        s, d = self.num_seg_classes, self.num_det_classes
        seg = F.interpolate(out[:, :s], size=images.shape[-2:], mode="bilinear", align_corners=False)
        return {
            "seg": seg,                                        # (B, C_seg, H, W)
            "heatmap": out[:, s:s + d],                        # (B, C_det, H/8, W/8)
            "box": out[:, s + d:s + d + 4],                    # (B, 4, H/8, W/8)
            "cls": out[:, s + d + 4:].mean(dim=(2, 3)),        # (B, C_cls)
        }


@torch.no_grad()
def decode_detections(heatmap: torch.Tensor, box: torch.Tensor, *, stride: int = DET_STRIDE, topk: int = 100,
                      score_threshold: float = 0.05, iou_threshold: float = 0.5) -> list[dict[str, torch.Tensor]]:
    """Dense CenterNet outputs -> per image ``{"boxes" (N, 4) xyxy px, "scores" (N,), "labels" (N,)}``.

    Peaks are local maxima of the sigmoid heatmap (3x3 max-pool), the ``topk`` best are kept, boxes come
    from the regressed offset and log-size, then class-wise NMS (``torchvision.ops.batched_nms``).
    """
    b, c, h, w = heatmap.shape
    prob = heatmap.sigmoid()
    peaks = prob * (F.max_pool2d(prob, 3, stride=1, padding=1) == prob)
    scores, idx = peaks.flatten(1).topk(min(topk, c * h * w))  # (B, K)
    labels = idx // (h * w)
    cell = idx % (h * w)
    ys, xs = (cell // w).float(), (cell % w).float()
    reg = box.flatten(2).gather(2, cell.unsqueeze(1).expand(-1, 4, -1))  # (B, 4, K)
    cx = (xs + reg[:, 0]) * stride
    cy = (ys + reg[:, 1]) * stride
    bw = reg[:, 2].clamp(max=10).exp() * stride
    bh = reg[:, 3].clamp(max=10).exp() * stride
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)  # (B, K, 4)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w * stride)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h * stride)
    results = []
    for i in range(b):
        keep = scores[i] > score_threshold
        bx, sc, lb = boxes[i][keep], scores[i][keep], labels[i][keep]
        keep = batched_nms(bx, sc, lb, iou_threshold)
        results.append({"boxes": bx[keep], "scores": sc[keep], "labels": lb[keep]})
    return results


@register_model("unified")
def build_unified(**cfg) -> UnifiedModel:
    """``build_model("unified", num_seg_classes=21, num_det_classes=10, num_cls_classes=10, ...)``."""
    return UnifiedModel(**cfg)
