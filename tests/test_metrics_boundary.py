"""The BSDS boundary protocol (nbmodule.metrics.boundary_scores): thinning, one-to-one matching within
max_dist x diagonal, ODS / OIS / AP, on cases whose answer is known by hand; the thinning checked against
scikit-image's independent implementation."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from nbmodule.metrics import (BoundaryMeter, EdgeProxyMeter, MetricRangeError, boundary_scores, bsds_ap, check_range,
                              thin_boundaries)
from nbmodule.metrics.boundary import _THIN_LUTS, _match_count, _min_cost_match_count


def _line(shape=(100, 100), row=50, cols=(10, 90)):
    m = np.zeros(shape)
    m[row, cols[0]:cols[1]] = 1.0
    return m


def test_a_prediction_equal_to_the_truth_scores_one():
    gt = _line()
    # AP 0: every threshold gives the same point (recall 1), and the benchmark's AP needs two distinct recalls
    assert boundary_scores([gt.copy()], [gt]) == {"ods_f": 1.0, "ois_f": 1.0, "ap": 0.0}


@pytest.mark.parametrize("shift, expected", [(1, 1.0), (2, 0.0), (3, 0.0)])
def test_a_shifted_line_matches_only_within_max_dist(shift, expected):
    # 0.011 x diagonal of 100x100 = 1.56 px: one pixel away matches, two and three do not
    scores = boundary_scores([_line(row=50 + shift)], [_line()])
    assert scores["ods_f"] == pytest.approx(expected) and scores["ois_f"] == pytest.approx(expected)


def test_ap_is_the_benchmarks_interpolated_area_not_the_precision_envelope():
    """collect_eval_bdry.m / edgesEvalDir.m: unique recalls (the first of a repeat), linear interpolation at
    recall 0, 0.01, ..., 1, levels outside the reached range count 0, sum x 0.01. Thresholds ascending:
    recall 0.9, 0.9, 0.3 with precision 0.5, 0.6, 0.9 -> the line from (0.3, 0.9) to (0.9, 0.5) at the 61
    levels 0.30 ... 0.90, mean 0.7 -> 0.427. The former score (mean over all 101 levels of the best precision
    at recall >= r) gave (31 x 0.9 + 60 x 0.6) / 101 = 0.633 on the same points."""
    assert bsds_ap([0.9, 0.9, 0.3], [0.5, 0.6, 0.9]) == pytest.approx(0.427)
    assert bsds_ap([0.9, 0.9, 0.3], [0.5, 0.6, 0.9]) != pytest.approx((31 * 0.9 + 60 * 0.6) / 101, abs=0.1)
    assert bsds_ap([1.0, 0.0], [0.5, 1.0]) == pytest.approx(0.75 * 1.01)  # all 101 levels: mean 0.75
    assert bsds_ap([0.4, 0.4], [0.3, 0.8]) == 0.0  # one distinct recall: no curve
    with pytest.raises(ValueError, match="one length"):
        bsds_ap([0.1, 0.2], [0.5])


def test_ground_truth_thinning_is_an_option():
    """A 3-pixel-wide true band and a prediction on its middle row: as given (BSDS), 80 of 240 true pixels are
    matched (recall 1/3); thinned first (seism's NYUD protocol) the band is one row and recall is 1."""
    gt = _line(row=49) + _line(row=50) + _line(row=51)
    pred = _line()
    meter = BoundaryMeter(thresholds=[0.5])
    meter.update(pred, gt)
    thin = BoundaryMeter(thresholds=[0.5], thin_gt=True)
    thin.update(pred, gt)
    assert meter.compute()["ods_recall"] == pytest.approx(1 / 3) and meter.compute()["ods_precision"] == 1.0
    # the thinned band is the middle row less its end pixels: every true pixel matched, a few predicted ones not
    n_thin = int(thin_boundaries(gt.astype(bool)).sum())
    assert n_thin < 80 and thin.compute()["ods_recall"] == 1.0
    assert thin.compute()["ods_precision"] == pytest.approx(n_thin / 80)
    assert boundary_scores([pred], [gt], thin_gt=True)["ods_f"] == pytest.approx(2 * n_thin / (80 + n_thin))


def test_matching_is_one_to_one_not_by_dilation():
    """Two parallel lines two pixels apart around one true line: each true pixel can vouch for one
    predicted pixel only, so precision is 0.5 (a dilation-based score says 1.0)."""
    pred = _line(row=49) + _line(row=51)
    gt = _line()
    meter = BoundaryMeter()
    meter.update(pred, gt)
    res = meter.compute()
    assert res["ods_precision"] == pytest.approx(0.5) and res["ods_recall"] == pytest.approx(1.0)
    assert res["ods_f"] == pytest.approx(2 * 0.5 / 1.5)
    proxy = EdgeProxyMeter(99, tolerance=2)  # the old dilation score would call this perfect
    proxy.update(torch.tensor(pred)[None, None], torch.tensor(gt)[None, None])
    assert proxy.compute()["proxy_f"] == pytest.approx(1.0)


def test_thick_predictions_are_thinned_before_matching():
    pred = _line(row=49) + _line(row=50) + _line(row=51)  # a 3-pixel-wide band on the true line
    assert boundary_scores([pred], [_line()])["ods_f"] > 0.95  # thinned to one line, not 1/3 precision
    band = np.zeros((20, 30), dtype=bool)
    band[8:13, 3:27] = True
    thin = thin_boundaries(band)
    assert thin.sum() > 0 and (thin & ~band).sum() == 0
    assert (thin.sum(axis=0) <= 1).all()  # one pixel wide
    ys = np.nonzero(thin)[0]
    assert (ys == 10).all()  # on the medial row


def _reference_thinning(mask):
    """The textbook parallel algorithm on the whole image (the oracle for the active-set implementation)."""
    kernel = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]], dtype=np.uint8)
    skel = np.pad(mask, 1).astype(np.uint8)
    changed = True
    while changed:
        changed = False
        for lut in _THIN_LUTS:
            gone = lut[ndimage.correlate(skel, kernel, mode="constant")] & (skel == 1)
            if gone.any():
                skel[gone] = 0
                changed = True
    return skel[1:-1, 1:-1].astype(bool)


def test_thinning_equals_scikit_images_independent_implementation():
    """skimage.morphology.thin (Guo & Hall's two-subiteration algorithm, written independently of ours) gives
    the same skeleton as thin_boundaries on random shapes of every thickness, one map or a stack."""
    from skimage.morphology import thin

    rng = np.random.default_rng(3)
    masks = [ndimage.gaussian_filter(rng.random((40, 50)), rng.uniform(0.5, 3.0)) > rng.uniform(0.35, 0.6)
             for _ in range(24)]
    masks += [np.ones((25, 25), dtype=bool), rng.random((30, 30)) < 0.5]
    for i, m in enumerate(masks):
        assert (thin_boundaries(m) == thin(m)).all(), i
    stack = np.stack([m[:25, :25] for m in masks])
    assert (thin_boundaries(stack) == np.stack([thin(m) for m in stack])).all()


def test_thinning_equals_the_reference_algorithm_on_random_shapes():
    rng = np.random.default_rng(0)
    masks = [ndimage.gaussian_filter(rng.random((30, 40)), s) > t for s, t in ((0.8, 0.5), (2.0, 0.45), (3, 0.4))]
    masks.append(np.ones((25, 25), dtype=bool))
    for m in masks:
        assert (thin_boundaries(m) == _reference_thinning(m)).all()
    stack = np.stack([m[:25, :25] for m in masks])
    assert (thin_boundaries(stack) == np.stack([_reference_thinning(m) for m in stack])).all()
    line = _line(shape=(10, 10), row=5, cols=(2, 8)).astype(bool)
    assert (thin_boundaries(line) == line).all()  # a thin line keeps its end points


def test_fast_matching_count_equals_the_minimum_cost_assignment():
    """The maximum flow's matching has the counts of correspondPixels' minimum-cost assignment."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = 24, 30
        pred = rng.random((h, w)) < rng.uniform(0.02, 0.2)
        gt = rng.random((h, w)) < rng.uniform(0.02, 0.2)
        radius = rng.uniform(0.8, 3.0)
        pad = int(math.floor(radius)) + 1
        r = int(math.floor(radius))
        dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
        keep = dy ** 2 + dx ** 2 <= radius ** 2 + 1e-9
        offsets = dy[keep] * (w + 2 * pad) + dx[keep]
        index = np.full((h + 2 * pad, w + 2 * pad), -1, dtype=np.int64)
        gy, gx = np.nonzero(gt)
        index[gy + pad, gx + pad] = np.arange(gy.size)
        assert _match_count(pred, index, pad, offsets, int(gt.sum())) == _min_cost_match_count(pred, gt, radius)


@pytest.mark.timeout(300)
def test_a_full_size_boundary_map_is_scored_at_all():
    """A 480x640 map of Voronoi boundaries with a blurred response and a smooth background (NYUD-like, the
    benchmark's first map): its thinned maps make layered graphs on which scipy's maximum_bipartite_matching
    takes exponential time (scipy issue #26147; this map did not return within minutes). The flow-based count
    returns, and a response centred on the true boundaries scores well."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_boundary.py"
    spec = importlib.util.spec_from_file_location("_bench_boundary_maps", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    prob, edge = bench.make_pair(np.random.default_rng(0), 480, 640)
    scores = boundary_scores([prob], [edge])
    assert 0.8 < scores["ods_f"] <= 1.0 and scores["ois_f"] >= scores["ods_f"] - 1e-12


def test_ods_pools_images_and_ois_picks_each_images_threshold():
    """Image A is perfect at t <= 0.5 and empty above; image B's prediction holds at t <= 0.8 but is a
    doubled line (P = 0.5). Hand-computed ODS, OIS and AP."""
    gt = _line()
    a = gt * 0.5
    b = (_line(row=49) + _line(row=51)) * 0.8
    meter = BoundaryMeter(thresholds=[0.3, 0.7])
    meter.update(a, gt)
    meter.update(b, gt)
    res = meter.compute()
    # t=0.3: matched 80+80, predicted 80+160, true 160 -> P = 2/3, R = 1, F = 0.8
    # t=0.7: matched 0+80, predicted 0+160 -> P = 0.5, R = 0.5, F = 0.5; interpolation cannot beat 0.8 here
    assert res["ods_f"] == pytest.approx(0.8)
    assert res["ods_threshold"] == pytest.approx(0.3)
    # OIS: A's best F is 1 (t=0.3), B's best is 2/3 at either threshold (first: 0.3): the same counts -> 0.8
    assert res["ois_f"] == pytest.approx(0.8)
    # AP: points (R 1, P 2/3) and (R 0.5, P 0.5): the line between them at the 51 levels 0.50 ... 1.00 (mean
    # 7/12), the 50 levels below 0.5 dropped: 51 x 7/12 x 0.01
    assert res["ap"] == pytest.approx(0.2975)
    assert meter.curve()["precision"] == pytest.approx([2 / 3, 0.5])


def test_bad_inputs_are_named():
    gt = _line()
    with pytest.raises(ValueError, match="probabilities must lie in \\[0, 1\\].*max 2"):
        boundary_scores([gt * 2], [gt])
    with pytest.raises(ValueError, match="must be 0 or 1, found \\[0.5\\]"):
        boundary_scores([gt], [gt * 0.5])
    with pytest.raises(ValueError, match="1 probability maps but 2"):
        boundary_scores([gt], [gt, gt])
    with pytest.raises(MetricRangeError, match="metric boundary ods_f = 1.5 is outside"):
        check_range("boundary ods_f", 1.5, 0.0, 1.0)
