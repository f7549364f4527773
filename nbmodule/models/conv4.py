"""The 4-block convolutional network of few-shot learning (Vinyals et al. 2016; MAML, Finn et al. 2017).

Two ways to halve the maps, as in MAML's code (cbfinn/maml ``utils.conv_block`` and ``maml.forward_conv``):

* ``downsample="maxpool"`` (MAML on MiniImagenet, Vinyals et al.): 3x3 conv (stride 1, padding 1) -> BatchNorm
  -> ReLU -> 2x2 max-pool; then flatten and a linear layer to ``n_way`` logits. 64 filters for Omniglot
  (28x28 -> 1x1x64), 32 for MiniImagenet (84x84 -> 5x5x32).
* ``downsample="stride"`` (MAML on Omniglot): 3x3 conv with stride 2 (padding 1; TensorFlow's ``SAME`` pads
  only bottom/right, the same output sizes) -> BatchNorm -> ReLU, no pooling; then the mean over the last
  maps (28 -> 14 -> 7 -> 4 -> 2, averaged to 64 features) and the linear layer.

BatchNorm uses ``track_running_stats=False``: statistics always come from the current batch, i.e. from
each task's support (or query) set, as in MAML, so there is no running state to leak between tasks and
the model is a pure function of its parameters under ``torch.func.functional_call``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import register_model

__all__ = ["Conv4", "conv4", "DOWNSAMPLE"]

#: How a block halves its maps: max-pooling after a stride-1 conv, or a stride-2 conv (see the module docstring).
DOWNSAMPLE = ("maxpool", "stride")


class Conv4(nn.Module):
    """x: (B, C, H, W) float -> logits (B, n_way)."""

    def __init__(self, in_channels: int = 1, n_way: int = 5, hidden: int = 64, image_size: int = 28,
                 blocks: int = 4, downsample: str = "maxpool"):
        super().__init__()
        if downsample not in DOWNSAMPLE:
            raise ValueError(f"downsample={downsample!r}: use one of {', '.join(DOWNSAMPLE)}")
        strided = downsample == "stride"
        layers: list[nn.Module] = []
        ch = in_channels
        for _ in range(blocks):
            layers += [nn.Conv2d(ch, hidden, 3, stride=2 if strided else 1, padding=1),
                       nn.BatchNorm2d(hidden, track_running_stats=False),
                       nn.ReLU(inplace=False)]  # functorch transforms dislike in-place ops
            if not strided:
                layers.append(nn.MaxPool2d(2))
            ch = hidden
        side = image_size
        for _ in range(blocks):
            side = (side + 1) // 2 if strided else side // 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for {blocks} pooling blocks")
        if strided:  # MAML's Omniglot network averages the last maps (tf.reduce_mean over H, W)
            layers.append(nn.AdaptiveAvgPool2d(1))
            side = 1
        self.features = nn.Sequential(*layers)
        self.downsample = downsample
        self.n_features = hidden * side * side
        self.head = nn.Linear(self.n_features, n_way)
        self.n_way = n_way

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@register_model("conv4")
def conv4(in_channels: int = 1, n_way: int = 5, hidden: int = 64, image_size: int = 28, blocks: int = 4,
          downsample: str = "maxpool") -> Conv4:
    """``build_model("conv4", in_channels=1, n_way=5, hidden=64, image_size=28)`` (Omniglot defaults);
    MiniImagenet: ``in_channels=3, hidden=32, image_size=84``; MAML's Omniglot network: ``downsample="stride"``."""
    return Conv4(in_channels, n_way, hidden, image_size, blocks, downsample)
