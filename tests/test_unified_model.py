"""UnifiedModel: < 8M parameters all counted, one shared head, output shapes, weight fallback, latency."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nbmodule.models import build_model, count_parameters
from nbmodule.models import unified as unified_mod
from nbmodule.profiling import measure_latency


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_parameter_budget_counts_frozen_parameters_too(backbone):
    model = build_model("unified", backbone=backbone, fpn_channels=96)
    n = count_parameters(model)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == n < 8_000_000


def test_outputs_of_every_task_come_from_one_head():
    model = build_model("unified", num_seg_classes=21, num_det_classes=10, num_cls_classes=7, fpn_channels=32,
                        head_layers=2)
    convs = [m for m in model.head if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and convs[-1].out_channels == 21 + 10 + 4 + 7
    out = model(torch.rand(2, 3, 96, 128))
    assert out["seg"].shape == (2, 21, 96, 128)
    assert out["heatmap"].shape == (2, 10, 12, 16) and out["box"].shape == (2, 4, 12, 16)
    assert out["cls"].shape == (2, 7)
    # a gradient from every task reaches the same last head layer
    for key in ("seg", "heatmap", "box", "cls"):
        model.zero_grad()
        out = model(torch.rand(1, 3, 64, 64))
        out[key].sum().backward()
        assert convs[-1].weight.grad.abs().sum() > 0


def test_missing_imagenet_weights_fall_back_to_random_and_say_so(monkeypatch):
    def offline(*args, weights=None, **kwargs):
        if weights is not None:
            raise OSError("no internet")
        return real(weights=None)

    real = unified_mod.tvm.mobilenet_v3_small
    monkeypatch.setitem(unified_mod._BACKBONES, "mobilenet_v3_small",
                        (offline, unified_mod._BACKBONES["mobilenet_v3_small"][1]))
    with pytest.warns(UserWarning, match="could not be loaded"):
        model = build_model("unified", pretrained=True)
    assert model.weights_source.startswith("random") and "no internet" in model.weights_source
    assert build_model("unified").weights_source == "random (pretrained=False)"


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="head_layers"):
        build_model("unified", head_layers=4)
    with pytest.raises(ValueError, match="backbone"):
        build_model("unified", backbone="resnet50")


def test_measure_latency_reports_median_resolution_and_device():
    model = build_model("unified", fpn_channels=16)
    model.train()
    res = measure_latency(model, (1, 3, 64, 64), "cpu", repeats=3, warmup=1)
    assert res["median_ms"] > 0 and res["min_ms"] <= res["median_ms"] <= res["p90_ms"] + 1e-9
    assert res["resolution"] == "64x64" and res["batch"] == 1 and res["device"].startswith("cpu")
    assert model.training  # mode restored
    with pytest.raises(ValueError):
        measure_latency(model, (1, 3, 64, 64), repeats=0)
