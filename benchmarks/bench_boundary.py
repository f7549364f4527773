"""The BSDS boundary protocol in Python (``nbmodule.metrics.boundary_scores``): its cost on NYUD-sized data.

Setting: 100 images of 480x640 (NYU-v2's size), 99 thresholds (0.01 ... 0.99), ``max_dist`` 0.011 of the
diagonal (8.8 px), each threshold's map thinned (Lam-Lee-Suen, as ``bwmorph('thin', Inf)``) and matched one
to one (maximum flow, scipy's Dinic) to the true boundary pixels. The true boundaries are those of a random
partition into 40 regions (Voronoi cells, about 6000 boundary pixels, like NYUD_MT's object edges); the
predictions look like a trained edge head's: a blurred response on the true boundaries (gain 0.6-1.0) plus a
smooth background of up to 0.15, so the low thresholds keep large blobs to thin, as real outputs do. Timed
once over all images (one evaluation is long; the machine's load moves it), beside the dilation proxy
(``EdgeProxyMeter``, 1 px tolerance, no thinning or matching) on the same maps. Worst case, not in the
keys: an untrained head's near-uniform map of white noise thins into a mesh at every low threshold and
costs several times more per image.

Keys: ``boundary_images``, ``boundary_bsds_s_per_image``, ``boundary_bsds_100img_s`` (the 100-image time),
``boundary_proxy_s_per_image``, ``boundary_bsds_cost_ratio`` (how many times the proxy's cost),
``boundary_threads`` (numpy/scipy run single-threaded here; torch's count for the proxy).

    python benchmarks/bench_boundary.py [--quick]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbmodule.metrics import BoundaryMeter, EdgeProxyMeter  # noqa: E402
from nbmodule.profiling import BenchResults, torch_threads  # noqa: E402


def make_pair(rng: np.random.Generator, h: int, w: int, regions: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(probability map in [0, 1], true boundary map in {0, 1}), both (h, w)."""
    from scipy import ndimage

    seeds = rng.random((regions, 2)) * [h, w]
    yy, xx = np.mgrid[0:h, 0:w]
    label = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    edge = np.zeros((h, w), dtype=bool)
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    edge[:-1, :] |= label[1:, :] != label[:-1, :]
    soft = ndimage.gaussian_filter(edge.astype(float), 1.5)
    soft /= soft.max()
    background = ndimage.gaussian_filter(rng.random((h, w)), 6)
    background = (background - background.min()) / (background.max() - background.min())
    prob = np.clip(rng.uniform(0.6, 1.0) * soft + 0.15 * background, 0.0, 1.0)
    return prob, edge.astype(np.float64)


def run(quick: bool = False) -> BenchResults:
    n, (h, w) = (4, (120, 160)) if quick else (100, (480, 640))
    rng = np.random.default_rng(0)
    pairs = [make_pair(rng, h, w) for _ in range(n)]
    res = BenchResults()
    warm = BoundaryMeter(99, 0.011)  # imports (scipy.sparse.csgraph, ndimage) and first calls, untimed
    warm.update(*make_pair(np.random.default_rng(1), 64, 64, regions=4))
    with torch_threads(2 if not quick else 1) as threads:
        t0 = time.perf_counter()
        bsds = BoundaryMeter(99, 0.011)
        for prob, gt in pairs:
            bsds.update(prob, gt)
        scores = bsds.compute()
        t_bsds = time.perf_counter() - t0
        t0 = time.perf_counter()
        proxy = EdgeProxyMeter(99, 1)
        for prob, gt in pairs:
            proxy.update(torch.from_numpy(prob)[None, None].float(), torch.from_numpy(gt)[None, None].float())
        proxy.compute()
        t_proxy = time.perf_counter() - t0
    res["boundary_images"] = n
    res["boundary_bsds_s_per_image"] = t_bsds / n
    res["boundary_bsds_100img_s"] = t_bsds / n * 100
    res["boundary_proxy_s_per_image"] = t_proxy / n
    res.ratio("boundary_bsds_cost_ratio", "boundary_bsds_s_per_image", "boundary_proxy_s_per_image")
    res["boundary_threads"] = threads
    print(f"boundary: BSDS protocol {t_bsds:.1f} s for {n} images of {h}x{w} ({t_bsds / n:.2f} s/image, "
          f"{res['boundary_bsds_100img_s']:.0f} s per 100), ODS F {scores['ods_f']:.3f}; dilation proxy "
          f"{t_proxy / n:.3f} s/image (x{res['boundary_bsds_cost_ratio']:.0f})")
    res.notes["boundary"] = (f"{n} images of {h}x{w}, 99 thresholds, max_dist 0.011, timed once; synthetic maps "
                             f"(Voronoi boundaries, blurred response); {threads} torch threads for the proxy")
    return res


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
