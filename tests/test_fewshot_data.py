"""Few-shot episodes, the MAML Omniglot split and the Conv4 model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nbmodule.data.fewshot import (ClassArrays, FewShotSplit, episode_to_float, maml_omniglot_split,
                                   omniglot_splits, save_class_arrays)
from nbmodule.models import build_model, count_parameters


def _split(n_classes=10, per_class=6, size=8, rotations=False):
    # image of class c, drawing i: constant value c * 10 + i, with a marker pixel so rotations are visible
    imgs = np.zeros((n_classes * per_class, size, size), np.uint8)
    labels = np.repeat(np.arange(n_classes), per_class)
    for j, (c, i) in enumerate(zip(labels, np.tile(np.arange(per_class), n_classes))):
        imgs[j] = c * 10 + i + 1
        imgs[j, 0, 0] = 255
    names = [f"c{i}" for i in range(n_classes)]
    return FewShotSplit(imgs, labels, range(n_classes), names, rotations=rotations, name="t"), imgs, labels


def test_episode_shapes_labels_and_class_purity():
    split, _, _ = _split()
    ep = split.sample(3, 4, 2, 3, torch.Generator().manual_seed(0))
    assert ep.xs.shape == (3, 8, 1, 8, 8) and ep.xq.shape == (3, 12, 1, 8, 8) and ep.xs.dtype == torch.uint8
    assert ep.ys[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and ep.yq[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for t in range(3):
        assert len(set(ep.classes[t].tolist())) == 4  # distinct classes per task
        for x, y in ((ep.xs[t], ep.ys[t]), (ep.xq[t], ep.yq[t])):
            cls = (x[:, 0, 1, 1].long() - 1) // 10  # the class encoded in the image value
            assert torch.equal(cls, ep.classes[t][y])  # every image belongs to its label's class
        # support and query images of a class are distinct drawings
        vals_s, vals_q = set(ep.xs[t, :, 0, 1, 1].tolist()), set(ep.xq[t, :, 0, 1, 1].tolist())
        assert not vals_s & vals_q and len(vals_s) == 8 and len(vals_q) == 12


def test_episodes_reproducible_and_labels_shuffled():
    split, _, _ = _split()
    a = split.sample(50, 5, 1, 1, torch.Generator().manual_seed(7))
    b = split.sample(50, 5, 1, 1, torch.Generator().manual_seed(7))
    c = split.sample(50, 5, 1, 1, torch.Generator().manual_seed(8))
    assert torch.equal(a.xs, b.xs) and torch.equal(a.classes, b.classes)
    assert not torch.equal(a.classes, c.classes)
    # label 0 is not tied to one class: across episodes it maps to many classes, roughly uniformly
    counts = torch.bincount(a.classes[:, 0], minlength=10)
    assert (counts > 0).sum() >= 8


def test_rotations_are_new_classes():
    split, _, _ = _split(n_classes=3, rotations=True)
    assert split.n_classes == 12
    ep = split.sample(20, 12, 1, 0, torch.Generator().manual_seed(0))  # every (class, rotation) once
    for t in range(20):
        for j, c in enumerate(ep.classes[t].tolist()):
            img = ep.xs[t, j, 0]
            corner = {0: (0, 0), 1: (7, 0), 2: (7, 7), 3: (0, 7)}[c % 4]  # where rot90 moves pixel (0, 0)
            assert img[corner] == 255


def test_sampler_errors_name_the_problem():
    split, _, _ = _split(n_classes=3, per_class=4)
    with pytest.raises(ValueError, match="fewer than n_way=5"):
        split.sample(1, 5, 1, 1)
    with pytest.raises(ValueError, match="exceeds the 4 images"):
        split.sample(1, 2, 2, 3)


def test_maml_split_sizes_and_disjoint():
    tr, va, te = maml_omniglot_split(1623)
    assert (len(tr), len(va), len(te)) == (1100, 100, 423)
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    assert maml_omniglot_split(1623) == (tr, va, te)  # fixed seed
    tr, va, te = maml_omniglot_split(100)
    assert len(tr) + len(va) + len(te) == 100 and len(tr) == 68


def test_omniglot_splits_background_protocol(tmp_path):
    names = [f"background/A/c{i}" for i in range(20)] + [f"evaluation/B/c{i}" for i in range(8)]
    imgs = np.zeros((28 * 2, 28, 28), np.uint8)
    save_class_arrays(tmp_path, {"all": ClassArrays(imgs, np.repeat(np.arange(28), 2), names)},
                      dataset="omniglot", synthetic=True, source="test")
    s = omniglot_splits(tmp_path, split="background")
    assert all(n.startswith("evaluation/") for n in s["test"].class_names)
    assert s["train"].n_base_classes + s["val"].n_base_classes == 20
    m = omniglot_splits(tmp_path, split="maml")
    assert m["train"].n_classes == 4 * m["train"].n_base_classes


def test_episode_to_float_range():
    split, _, _ = _split()
    xs, ys, xq, yq = episode_to_float(split.sample(2, 3, 1, 1, torch.Generator().manual_seed(0)))
    assert xs.dtype == torch.float32 and 0 <= xs.min() and xs.max() == 1.0


@pytest.mark.parametrize("in_ch,hidden,size,n_way,features", [(1, 64, 28, 5, 64), (3, 32, 84, 5, 800)])
def test_conv4_shapes_and_batchnorm_has_no_state(in_ch, hidden, size, n_way, features):
    model = build_model("conv4", in_channels=in_ch, n_way=n_way, hidden=hidden, image_size=size)
    assert model.n_features == features
    assert model(torch.rand(3, in_ch, size, size)).shape == (3, n_way)
    assert not list(model.buffers())  # track_running_stats=False: batch statistics per task, nothing to leak
    model.eval()  # still batch statistics in eval mode, as in MAML
    x = torch.rand(4, in_ch, size, size)
    assert not torch.allclose(model(x)[:1], model(torch.cat([x[:1], x[:1] * 0 + 1]))[:1])
    # 4 conv blocks with bias, BN affine, head
    conv = sum(hidden * c * 9 + hidden + 2 * hidden for c in [in_ch, hidden, hidden, hidden])
    assert count_parameters(model) == conv + features * n_way + n_way
