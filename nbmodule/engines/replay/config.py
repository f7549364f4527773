"""The replay study's config: types and bounds only; every value lives in ``nbmodule/configs/replay/*.yaml``."""
from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Optional

from pydantic import Field, field_validator

from ...config import StudyConfig

__all__ = ["ReplayConfig"]

RunName = Literal["noreplay", "alone", "lwf"]


def _distinct(v: list | None) -> list | None:
    if v is not None and len(set(v)) != len(v):
        raise ValueError(f"must not repeat an entry, got {v}")
    return v


class ReplayConfig(StudyConfig):
    """Settings of the sequential replay study (notebook 02); values in ``nbmodule/configs/replay/``.

    Nothing is ``RESUMABLE``: every step count shapes its stage's learning-rate schedule (warm-up, then cosine
    decay over the stage), so a longer stage is another experiment, not a continuation. ``NEUTRAL`` fields
    change no metric: the checkpoint period, the number of timed latency repeats (``latency_ms`` is a timing)
    and how many example predictions are drawn.
    """

    STUDY: ClassVar[str] = "replay"
    RESUMABLE: ClassVar[frozenset[str]] = frozenset()
    NEUTRAL: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "latency_repeats", "n_examples"})

    seed: int = Field(ge=0, lt=2**31)                         # initialisation, batch order, replay draws, augmentation
    # data
    synthetic: bool                                           # synthetic shapes, or the real sets (synthetic fallback)
    scale: Literal["smoke", "cpu", "full"]                    # size of synthetic data
    data_seed: int = Field(ge=0, lt=2**31)                    # seed of data preparation (mini-set picks, shapes)
    n_train: Optional[Annotated[int, Field(ge=1, le=1_000_000)]]  # at most this many training images per task
    n_val: Optional[Annotated[int, Field(ge=1, le=1_000_000)]]    # ... validation images per task
    det_classes: Optional[Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=80)]]
    image_size: int = Field(ge=32, le=1024, multiple_of=32)   # training resolution (square)
    # model
    backbone: Literal["mobilenet_v3_small", "mobilenet_v3_large"]
    pretrained: bool                                          # ImageNet weights (random when they cannot be had)
    fpn_channels: int = Field(ge=8, le=256)
    head_layers: Literal[2, 3]
    # schedule
    steps_seg: int = Field(ge=1, le=1_000_000)
    steps_det: int = Field(ge=1, le=1_000_000)
    steps_cls: int = Field(ge=1, le=1_000_000)
    batch_size: int = Field(ge=1, le=512)
    lr: float = Field(gt=0, le=10)
    weight_decay: float = Field(ge=0, le=1)
    amp: bool                                                 # mixed precision: bfloat16 on CPU, float16 on CUDA
    # replay
    replay_tasks: list[Literal["seg", "det"]] = Field(max_length=2)
    replay_ratio: float = Field(ge=0, le=1)                   # replayed images per earlier task per step / batch
    replay_max: int = Field(ge=0, le=10)                      # the assignment's cap: at most 10 per step
    buffer_size: int = Field(ge=1, le=100_000)                # images kept per earlier task
    buffer_policy: Literal["reservoir", "fixed"]
    replay_weight: float = Field(ge=0, le=100)
    # LwF, the regularisation alternative
    lwf_weight: float = Field(ge=0, le=100)
    lwf_temperature: float = Field(gt=0, le=100)
    runs: list[RunName] = Field(max_length=3)                 # runs besides the main replay run
    # evaluation and reporting
    det_score_threshold: float = Field(ge=0, lt=1)
    log_every: int = Field(ge=1, le=100_000_000)
    checkpoint_every: int = Field(ge=1, le=100_000_000)       # mid-stage checkpoint period (steps)
    latency_size: int = Field(ge=32, le=2048, multiple_of=32)
    latency_repeats: int = Field(ge=1, le=10_000)
    n_examples: int = Field(ge=0, le=16)

    _unique = field_validator("replay_tasks", "runs", "det_classes")(_distinct)

    def replay_per_task(self) -> int:
        """Images replayed per earlier task per step: ``ceil(ratio * batch_size)`` capped at ``replay_max``."""
        return min(self.replay_max, math.ceil(self.replay_ratio * self.batch_size))

    def steps(self, task: str) -> int:
        return {"seg": self.steps_seg, "det": self.steps_det, "cls": self.steps_cls}[task]
