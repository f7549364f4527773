"""The MTML study's config: types and bounds only; every value lives in ``nbmodule/configs/mtml/*.yaml``."""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from ...config import StudyConfig

__all__ = ["NAME", "MtmlConfig", "Task", "Mode", "MIN_SIDE", "HOLDOUT"]

NAME = "mtml"
Task = Literal["seg", "depth", "normals", "edges"]
Mode = Literal["study", "train", "meta-train", "meta-test", "test"]
#: every encoder here downsamples by 32: a side shorter than that leaves no feature map to decode
MIN_SIDE = 32
#: ``val_split`` value meaning "``val_holdout`` frames carved out of ``train_split``" (real NYU-v2 has no
#: validation split: its 654 ``val`` frames are the test set of every paper)
HOLDOUT = "holdout"

Side = Annotated[int, Field(le=4096)]
Rate = Annotated[float, Field(gt=0, le=1)]


class MtmlConfig(StudyConfig):
    """Settings of the MTML study (notebook 03, ``python -m nbmodule run mtml``); values in YAML only."""

    STUDY: ClassVar[str] = NAME
    NEUTRAL: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "n_examples"})

    # what to run
    mode: Mode                         # study | train | meta-train | meta-test | test (see the engine's docstring)
    setup: Literal["single", "mtl"]    # what mode=train trains: one model per task, or one multi-task model
    seed: int = Field(ge=0, lt=2**31)  # initialisations and data order
    # data
    dataset: Literal["nyuv2", "nyuv2_13", "taskonomy"]
    synthetic: bool                    # rendered scenes in the dataset's layout instead of the real dataset
    scale: Literal["smoke", "cpu", "full"]  # size of the synthetic set
    layout: Literal["auto", "nyud_mt", "mtan"]
    image_size: Optional[Annotated[list[Side], Field(min_length=2, max_length=2)]]  # [H, W]; None: stored size
    train_split: str = Field(min_length=1)
    val_split: str = Field(min_length=1)   # model selection; "holdout": val_holdout frames of train_split
    val_holdout: int = Field(ge=0, le=100_000)
    test_split: str = Field(min_length=1)  # every reported number
    cache: bool                        # keep decoded samples in memory
    # tasks and model
    tasks: list[Task] = Field(min_length=1, max_length=4)
    held_out: Task | Literal[""]       # left out of (meta-)training, learnt afterwards from each initialisation
    backbone: Literal["resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large"]
    pretrained: bool                   # ImageNet encoder weights (random when they cannot be downloaded)
    head_width: int = Field(gt=0, le=1024)
    # optimisation: single-task, multi-task and the outer loop of MTML (AdamW, constant learning rate)
    batch_size: int = Field(gt=0, le=1024)
    lrs: list[Rate] = Field(min_length=1, max_length=8)  # every method trains at each, keeps the best on val
    weight_decay: float = Field(ge=0, le=1)
    steps: int = Field(gt=0, le=10_000_000)       # single-task and multi-task optimiser steps
    weighting: Literal["uniform", "uncertainty"]
    amp: bool                          # mixed precision: float16 on CUDA, bfloat16 on CPU (not in meta-training)
    # meta-learning
    meta_steps: int = Field(gt=0, le=10_000_000)  # MTML outer (optimiser) steps
    inner_lr: float = Field(gt=0, le=10)
    inner_steps: int = Field(ge=1, le=100)        # also the k of the "after k adaptation steps" scores
    first_order: bool
    min_subset: int = Field(ge=1, le=4)
    compute_match: bool                # also score MTML stopped where its image passes equal MTL's (mtml_compute)
    # the held-out task: fine-tuned from scratch, from MTL and from MTML with the same budget
    finetune_steps: int = Field(gt=0, le=10_000_000)
    finetune_lrs: list[Rate] = Field(min_length=1, max_length=8)  # each start tuned over these on validation
    finetune_encoder: bool
    init_model: str                    # meta-test / test: an mtml run folder with one model, or its checkpoint
    # evaluation and checkpoints
    bn_images: int = Field(ge=0, le=100_000)  # BatchNorm statistics of each scored model re-estimated on this
    #                                    many training images; 0: the running statistics as trained
    edges_thin_gt: bool                # thin the true edge maps before matching (seism's NYUD protocol)
    eval_every: int = Field(gt=0, le=10_000_000)
    eval_batches: int = Field(ge=0, le=100_000)
    checkpoint_every: int = Field(gt=0, le=10_000_000)
    n_examples: int = Field(ge=0, le=64)

    @field_validator("image_size")
    @classmethod
    def _encoder_takes_it(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and min(v) < MIN_SIDE:
            raise ValueError(f"{v}: the encoders downsample by {MIN_SIDE}, so each side must be at least "
                             f"{MIN_SIDE} pixels")
        return v

    @field_validator("tasks", "finetune_lrs", "lrs")
    @classmethod
    def _distinct(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"must not repeat a value, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "MtmlConfig":
        if self.held_out and self.held_out not in self.tasks:
            raise ValueError(f"held_out={self.held_out!r} must be one of tasks {self.tasks}")
        if (self.dataset == "nyuv2_13" or self.layout == "mtan") and "edges" in self.tasks:
            raise ValueError("the MTAN .npy layout (nyuv2_13) has no edges: remove 'edges' from tasks")
        if self.dataset == "taskonomy" and self.layout != "auto":
            raise ValueError("layout applies to NYU-v2 only: use layout: auto with taskonomy")
        if self.val_split == self.test_split:
            raise ValueError(f"val_split and test_split are both {self.val_split!r}: choices are made on the "
                             "validation split and reported on a different test split")
        if self.test_split == self.train_split or self.val_split == self.train_split:
            raise ValueError(f"train_split {self.train_split!r} is also the val or test split; to validate on "
                             f"part of it use val_split: {HOLDOUT} with val_holdout > 0")
        if (self.val_split == HOLDOUT) != (self.val_holdout > 0):
            raise ValueError(f"val_holdout={self.val_holdout} goes with val_split: {HOLDOUT} (and only with it); "
                             f"val_split is {self.val_split!r}")
        if not self.first_order and self.backbone.startswith("mobilenet"):
            raise ValueError(f"first_order=false (second-order MTML) cannot run through {self.backbone}: PyTorch has "
                             "no second derivative of its hardsigmoid; use a resnet backbone or first_order: true")
        if self.mode in ("meta-test", "test") and not self.init_model:
            raise ValueError(f"mode={self.mode!r} needs init_model: a trained model, "
                             "<run folder>/checkpoints/<phase>.pt (e.g. mtml_lr0.001.pt) of an mtml run")
        if self.mode == "meta-test" and not self.held_out:
            raise ValueError("mode='meta-test' fine-tunes held_out: name the task")
        if self.mode in ("train", "meta-train") and not self.train_tasks:
            raise ValueError(f"mode={self.mode!r}: tasks {self.tasks} minus held_out leaves nothing to train")
        return self

    @property
    def train_tasks(self) -> list[str]:
        """The tasks trained jointly (and by single-task models): ``tasks`` without ``held_out``."""
        return [t for t in self.tasks if t != self.held_out]
