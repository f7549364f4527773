"""The 4-block convolutional network of few-shot learning (Vinyals et al. 2016; MAML, Finn et al. 2017).

Each block: 3x3 conv (padding 1) -> BatchNorm -> ReLU -> 2x2 max-pool; then flatten and a linear layer to
``n_way`` logits. 64 filters for Omniglot (28x28 -> 1x1x64), 32 for MiniImagenet (84x84 -> 5x5x32).
BatchNorm uses ``track_running_stats=False``: statistics always come from the current batch, i.e. from
each task's support (or query) set, as in MAML, so there is no running state to leak between tasks and
the model is a pure function of its parameters under ``torch.func.functional_call``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_model

__all__ = ["Conv4", "conv4", "conv4_forward_tasks"]


class Conv4(nn.Module):
    """x: (B, C, H, W) float -> logits (B, n_way)."""

    def __init__(self, in_channels: int = 1, n_way: int = 5, hidden: int = 64, image_size: int = 28,
                 blocks: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for _ in range(blocks):
            layers += [nn.Conv2d(ch, hidden, 3, padding=1),
                       nn.BatchNorm2d(hidden, track_running_stats=False),
                       nn.ReLU(inplace=False),  # functorch transforms dislike in-place ops
                       nn.MaxPool2d(2)]
            ch = hidden
        self.features = nn.Sequential(*layers)
        side = image_size
        for _ in range(blocks):
            side //= 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for {blocks} pooling blocks")
        self.n_features = hidden * side * side
        self.head = nn.Linear(self.n_features, n_way)
        self.n_way = n_way

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@register_model("conv4")
def conv4(in_channels: int = 1, n_way: int = 5, hidden: int = 64, image_size: int = 28, blocks: int = 4) -> Conv4:
    """``build_model("conv4", in_channels=1, n_way=5, hidden=64, image_size=28)`` (Omniglot defaults);
    MiniImagenet: ``in_channels=3, hidden=32, image_size=84``."""
    return Conv4(in_channels, n_way, hidden, image_size, blocks)


def conv4_forward_tasks(params: dict[str, torch.Tensor], x: torch.Tensor, *, blocks: int = 4,
                        eps: float = 1e-5) -> torch.Tensor:
    """Conv4 for T tasks at once, each with its own parameters: a task-batched functional forward.

    ``params``: the names of :class:`Conv4`'s ``named_parameters()`` with a leading task dim T
    (``features.0.weight: (T, 64, C, 3, 3)``...); ``x``: (T, B, C, H, W) -> logits (T, B, n_way).
    Tasks become groups of a grouped convolution (channels ``t * C + c``), so BatchNorm's per-channel batch
    statistics are exactly per-task statistics, and plain autograd (not vmap) differentiates it to any order.
    """
    T, B = x.shape[:2]
    h = x.transpose(0, 1).reshape(B, T * x.shape[2], *x.shape[3:])  # (B, T*C, H, W)
    for i in range(blocks):
        w = params[f"features.{4 * i}.weight"]  # (T, Co, Ci, 3, 3)
        h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), params[f"features.{4 * i}.bias"].reshape(-1), padding=1, groups=T)
        h = F.batch_norm(h, None, None, params[f"features.{4 * i + 1}.weight"].reshape(-1),
                         params[f"features.{4 * i + 1}.bias"].reshape(-1), training=True, eps=eps)
        h = F.max_pool2d(F.relu(h), 2)
    feats = h.reshape(B, T, -1)  # per task: (Co, s, s) flattened, as Conv4's flatten(1)
    return torch.einsum("btf,tnf->tbn", feats, params["head.weight"]) + params["head.bias"].unsqueeze(1)
