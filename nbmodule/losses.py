"""Losses: pure functions on tensors. Sections are owned by the study that needs them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__: list[str] = []
