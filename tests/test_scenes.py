"""The synthetic scene generator: labels geometrically consistent, layouts readable by the loaders."""
import numpy as np
import pytest
import torch

from data_prep import scenes
from data_prep.scenes import NYU40, backproject, render_scene


@pytest.fixture(scope="module")
def views():
    rng = np.random.default_rng(3)
    return [render_scene(rng, (48, 64)) for _ in range(6)]


def test_normals_are_perpendicular_to_the_depth_surface_on_planes(views):
    for sc in views:
        p = backproject(sc.depth)
        same = (sc.surface[:, :-1] == sc.surface[:, 1:]) & (sc.surface[:, :-1] < 6)  # room planes, same plane
        same &= (sc.depth[:, :-1] > 0) & (sc.depth[:, 1:] > 0)
        step = p[:, 1:] - p[:, :-1]
        dot = np.abs((step * sc.normals[:, :-1]).sum(-1))[same]
        assert same.sum() > 100
        assert dot.max() < 1e-4 * np.abs(step[same]).max(initial=1) + 1e-5


def test_normals_are_unit_face_the_camera_and_depth_is_positive(views):
    for sc in views:
        valid = sc.depth > 0
        assert np.allclose(np.linalg.norm(sc.normals[valid], axis=-1), 1, atol=1e-5)
        assert ((sc.normals * backproject(sc.depth)).sum(-1)[valid] < 0).all()
        assert (sc.depth[valid] > 0.05).all() and sc.depth.max() < 12


def test_windows_have_no_depth_or_normals_and_edges_outline_segments(views):
    seen_window = False
    for sc in views:
        win = sc.seg == NYU40["window"]
        seen_window |= bool(win.any())
        assert (sc.depth[win] == 0).all() and (sc.normals[win] == 0).all()
        assert (sc.depth[~win] > 0).all()
        change = sc.seg[:, :-1] != sc.seg[:, 1:]
        assert (sc.edges[:, :-1][change] == 1).all()  # every class boundary is an edge
        assert 0.005 < sc.edges.mean() < 0.3
        assert set(np.unique(sc.seg)) <= set(NYU40.values())
    assert seen_window


def test_same_seed_same_scene_different_seed_different_scene():
    a = render_scene(np.random.default_rng(0), (24, 32))
    b = render_scene(np.random.default_rng(0), (24, 32))
    c = render_scene(np.random.default_rng(1), (24, 32))
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth)
    assert not np.array_equal(a.depth, c.depth)


def test_layouts_load_with_the_same_loaders(tmp_path):
    from nbmodule.data.nyuv2 import NYUDv2
    from nbmodule.data.taskonomy import Taskonomy

    counts = {"train": 3, "val": 2, "test": 2}
    scenes.write_nyud_mt(tmp_path / "mt", seed=5, scale="smoke", counts=counts)
    scenes.write_mtan_npy(tmp_path / "mtan", seed=5, scale="smoke", counts=counts)
    scenes.write_taskonomy(tmp_path / "tk", seed=5, scale="smoke", counts=counts)
    mt = NYUDv2(tmp_path / "mt", "test")
    mtan = NYUDv2(tmp_path / "mtan", "val", tasks=("seg", "depth", "normals"))
    tk = Taskonomy(tmp_path / "tk", "test")
    assert (mt.layout, mtan.layout, len(mt), len(mtan), len(tk)) == ("nyud_mt", "mtan", 2, 2, 2)
    a, b, c = mt[0], mtan[0], tk[0]
    assert a["image"].shape == (3, 48, 64) and a["seg"].dtype == torch.int64
    # same scene in three encodings: depth agrees (jpeg/png aside), the MTAN label is the 13-class map
    assert torch.allclose(a["depth"], b["depth"]) and torch.equal(a["depth_mask"], b["depth_mask"])
    assert (c["depth"] - a["depth"]).abs().max() <= 1 / 512 + 1e-6
    assert torch.equal(c["depth_mask"], a["depth_mask"])
    assert torch.allclose(a["normals"], b["normals"], atol=1e-5)
    assert (c["normals"] - a["normals"]).abs().max() < 0.02
    assert torch.equal(c["edges"], a["edges"])
    lut = torch.full((256,), 255, dtype=torch.int64)
    for k40, k13 in scenes.NYU40_TO_13.items():
        lut[k40 - 1] = k13 - 1
    assert torch.equal(lut[a["seg"].clamp(max=255)], b["seg"])
    assert a["seg"].max() < 40 and b["seg"][b["seg"] != 255].max() < 13
