"""Multi-task dense prediction: a shared torchvision encoder and one light decoder head per task.

``build_model("mtl", tasks={"seg": 40, "depth": 1}, backbone="mobilenet_v3_small")``. The encoder is a
torchvision backbone cut before its classifier, returning features at strides 4, 8 and the last stage;
each head fuses them top-down (a tiny FPN: 1x1 projections, upsample-and-add, one 3x3 conv at stride 4)
and predicts ``out_channels`` maps upsampled to the input size. Heads hold no batch norm, so a new head can
be fine-tuned on small batches and adapted functionally without running statistics.

Weights: random initialisation by default. ``pretrained=True`` loads torchvision's ImageNet weights for
the encoder (downloaded by torchvision on first use, then cached). When they cannot be had (offline, a dead
host), the encoder falls back to the random initialisation it would have had with ``pretrained=False``,
with a warning; ``model.encoder_weights`` says which it got ("imagenet" or "random") and
``model.encoder.weights_note`` why.
"""
from __future__ import annotations

import warnings
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from . import register_model

__all__ = ["BACKBONES", "DenseEncoder", "DenseHead", "MultiTaskNet", "build_mtl"]

BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large")
_MEAN = (0.485, 0.456, 0.406)
#: backbone -> why its ImageNet weights could not be had (downloads are tried once per process)
_UNAVAILABLE: dict[str, str] = {}
_STD = (0.229, 0.224, 0.225)


class DenseEncoder(nn.Module):
    """A torchvision backbone returning ``[f4, f8, f_last]`` (strides 4, 8 and 16 or 32).

    ``width_mult`` scales MobileNet-v3 channels (torchvision's own argument); ResNets ignore it.
    """

    def __init__(self, backbone: str = "resnet18", pretrained: bool = False, width_mult: float = 1.0):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        ctor = getattr(torchvision.models, backbone)
        kwargs = {}
        if backbone.startswith("mobilenet") and width_mult != 1.0:
            if pretrained:
                raise ValueError("ImageNet weights exist only for width_mult=1.0")
            kwargs["width_mult"] = width_mult
        self.weights, self.weights_note = "random", ""
        rng = torch.get_rng_state()
        try:
            if pretrained and backbone in _UNAVAILABLE:  # failed before in this process: do not wait again
                raise OSError(_UNAVAILABLE[backbone])
            net = ctor(weights="DEFAULT" if pretrained else None, **kwargs)
            self.weights = "imagenet" if pretrained else "random"
        except (OSError, RuntimeError) as err:  # URLError is an OSError; a corrupt download a RuntimeError
            first = str(err).splitlines()[0] if str(err) else ""
            _UNAVAILABLE.setdefault(backbone, f"{type(err).__name__}: {first}")
            self.weights_note = (f"ImageNet weights of {backbone} unavailable ({_UNAVAILABLE[backbone]}); "
                                 "the encoder starts from random weights")
            warnings.warn(self.weights_note, stacklevel=2)
            torch.set_rng_state(rng)  # the same random initialisation as pretrained=False
            net = ctor(weights=None, **kwargs)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        if backbone.startswith("resnet"):
            self.stages = nn.ModuleList([
                nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),  # stride 4
                net.layer2,  # stride 8
                nn.Sequential(net.layer3, net.layer4),  # stride 32
            ])
        else:  # MobileNet-v3: split ``features`` where the stride reaches 4 and 8
            feats = list(net.features)
            cuts, stride, size = [], 1, 64
            x = torch.zeros(1, 3, size, size)
            with torch.no_grad():
                for i, layer in enumerate(feats):
                    x = layer.eval()(x)
                    s = size // x.shape[-1]
                    if s != stride and stride in (4, 8):
                        cuts.append(i)  # layer i is the first of the next stride
                    stride = s
            a, b = cuts[0], cuts[1]
            self.stages = nn.ModuleList([nn.Sequential(*feats[:a]), nn.Sequential(*feats[a:b]),
                                         nn.Sequential(*feats[b:])])
        with torch.no_grad():
            outs = self.forward(torch.zeros(1, 3, 64, 64), normalize=False)
        self.channels = [o.shape[1] for o in outs]
        self.train()

    def forward(self, x: torch.Tensor, normalize: bool = True) -> list[torch.Tensor]:
        """``x``: (B, 3, H, W) float in [0, 1] -> three feature maps (B, C_i, H/s_i, W/s_i)."""
        if normalize:
            x = (x - self.mean) / self.std
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class DenseHead(nn.Module):
    """A light decoder: top-down fusion of the three encoder levels, one 3x3 conv, a 1x1 predictor."""

    def __init__(self, in_channels: list[int], out_channels: int, width: int = 32):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in in_channels])
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.predict = nn.Conv2d(width, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        y = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            y = F.interpolate(y, size=f.shape[-2:], mode="bilinear", align_corners=False) + lat(f)
        y = self.predict(self.fuse(F.relu(y)))  # (B, out, H/4, W/4)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class MultiTaskNet(nn.Module):
    """Shared encoder + ``heads[task]``. ``forward(images)`` -> ``{task: (B, out_channels, H, W)}``.

    Outputs are raw: class logits for segmentation, metres for depth, unnormalised normals, edge logits.
    ``tasks`` (forward argument) restricts which heads run (single-task steps skip the others).
    """

    def __init__(self, tasks: Mapping[str, int], backbone: str = "resnet18", pretrained: bool = False,
                 head_width: int = 32, width_mult: float = 1.0):
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskNet needs at least one task")
        self.backbone = backbone
        self.head_width = head_width
        self.width_mult = width_mult
        self.encoder = DenseEncoder(backbone, pretrained, width_mult)
        self.heads = nn.ModuleDict()
        for name, out in tasks.items():
            self.add_task(name, out)

    @property
    def encoder_weights(self) -> str:
        return self.encoder.weights

    @property
    def tasks(self) -> dict[str, int]:
        return {name: head.out_channels for name, head in self.heads.items()}

    def spec(self) -> dict:
        """What :func:`build_mtl` needs to rebuild this model (saved beside its weights)."""
        return {"tasks": self.tasks, "backbone": self.backbone, "head_width": self.head_width,
                "width_mult": self.width_mult}

    def add_task(self, name: str, out_channels: int) -> DenseHead:
        """Attach a new, randomly initialised head (e.g. a held-out task to a trained model)."""
        if name in self.heads:
            raise ValueError(f"task {name!r} already has a head; fine-tune it instead of adding it")
        head = DenseHead(self.encoder.channels, out_channels, self.head_width)
        ref = next(self.encoder.parameters())
        self.heads[name] = head.to(device=ref.device, dtype=ref.dtype)
        return self.heads[name]

    def forward(self, images: torch.Tensor, tasks: list[str] | tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        feats = self.encoder(images)
        size = images.shape[-2:]
        names = list(self.heads) if tasks is None else list(tasks)
        return {t: self.heads[t](feats, size) for t in names}


@register_model("mtl")
def build_mtl(tasks: Mapping[str, int], backbone: str = "resnet18", pretrained: bool = False,
              head_width: int = 32, width_mult: float = 1.0) -> MultiTaskNet:
    return MultiTaskNet(tasks, backbone=backbone, pretrained=pretrained, head_width=head_width,
                        width_mult=width_mult)
