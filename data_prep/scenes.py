"""Offline synthetic indoor scenes with geometrically consistent RGB, depth, normals, segmentation and edges.

Each scene is a room (floor, ceiling, four walls) holding boxes (furniture) and spheres (objects), with
windows and pictures on the walls, seen by a pinhole camera at a random height, yaw and pitch. Every
label is computed from the same ray cast, so the four tasks are related the way they are in NYU-v2:

* depth is the z-buffer depth (metres along the optical axis, like NYU's Kinect depth); windows return no
  depth (0 = invalid), as glass does for a structured-light sensor;
* normals are the unit surface normals in the camera frame (x right, y down, z forward), facing the
  camera; zero vectors where depth is invalid (NYU's normals are computed from depth);
* segmentation uses NYU-40 class ids (1 wall, 2 floor, 22 ceiling, 3 cabinet, 4 bed, 7 table, 9 window,
  11 picture, 40 otherprop; 0 = unlabeled);
* edges are the boundaries between surfaces (object outlines, occlusions and creases between box faces),
  one pixel wide, as NYUD_MT's edges are instance boundaries;
* RGB is Lambertian shading of per-surface albedo and textures under a ceiling light, plus sensor noise.

The writers lay scenes out as NYUD_MT (``images/*.jpg`` ...), as the 13-class ``.npy`` layout of
MTAN/Auto-Lambda/LibMTL, or as Taskonomy's per-domain PNGs, so one loader reads real and synthetic data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SCALES", "NYU40", "NYU40_TO_13", "Scene", "intrinsics", "backproject", "render_scene", "write_nyud_mt", "write_mtan_npy",
           "write_taskonomy", "NYU40_TO_TASKONOMY"]

#: split sizes and image size (H, W) per ``scale``; NYU-v2 is 480x640 (3:4), so are these.
SCALES: dict[str, dict] = {
    "smoke": {"train": 48, "val": 16, "test": 16, "size": (48, 64)},
    "cpu": {"train": 480, "val": 64, "test": 96, "size": (60, 80)},
    "full": {"train": 795, "val": 654, "test": 654, "size": (240, 320)},
}

#: the NYU-40 ids the generator uses
NYU40 = {"wall": 1, "floor": 2, "cabinet": 3, "bed": 4, "table": 7, "window": 9, "bookshelf": 10,
         "picture": 11, "ceiling": 22, "otherprop": 40}
#: NYU-40 -> NYU-13 (1 bed, 3 ceiling, 5 floor, 6 furniture, 7 objects, 8 picture, 10 table, 12 wall,
#: 13 window) for the classes above, after Couprie et al.'s 13-class mapping.
NYU40_TO_13 = {1: 12, 2: 5, 3: 6, 4: 1, 7: 10, 9: 13, 10: 6, 11: 8, 22: 3, 40: 7}
#: NYU-40 -> Taskonomy-style semantic ids (0 unlabeled, 1 background/stuff, then one id per object class)
NYU40_TO_TASKONOMY = {1: 1, 2: 1, 22: 1, 3: 2, 4: 3, 7: 4, 9: 5, 10: 6, 11: 7, 40: 8}

_BOX_CLASSES = ("cabinet", "bed", "table", "bookshelf")
_EPS = 1e-6


@dataclass
class Scene:
    """One rendered view: ``rgb`` (H, W, 3) uint8, ``depth`` (H, W) float32 m (0 invalid), ``normals``
    (H, W, 3) float32 unit camera-frame (0 invalid), ``seg`` (H, W) uint8 NYU-40 ids, ``edges`` (H, W)
    float32 in {0, 1}, ``surface`` (H, W) int32 surface ids."""

    rgb: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    seg: np.ndarray
    edges: np.ndarray
    surface: np.ndarray


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])  # about the vertical (y) axis
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # about x: positive looks down
    return r_yaw @ r_pitch


def intrinsics(size: tuple[int, int]) -> tuple[float, float, float]:
    """Pinhole focal length and principal point ``(f, cx, cy)`` in pixels for an image of ``size`` (H, W);
    pixel (v, u) looks along ``((u + 0.5 - cx) / f, (v + 0.5 - cy) / f, 1)``."""
    h, w = size
    return 0.85 * w, w / 2, h / 2  # NYU's Kinect: 519 px at 640 wide, i.e. 0.81 W


def backproject(depth: np.ndarray) -> np.ndarray:
    """Camera-frame 3D points (H, W, 3) of a z-buffer depth map (H, W) rendered by :func:`render_scene`."""
    h, w = depth.shape
    f, cx, cy = intrinsics((h, w))
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([(u + 0.5 - cx) / f * depth, (v + 0.5 - cy) / f * depth, depth], -1)


def render_scene(rng: np.random.Generator, size: tuple[int, int] = (96, 128)) -> Scene:
    """Ray-cast one random room at ``size`` (H, W)."""
    h, w = size
    f, cx, cy = intrinsics(size)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    d_cam = np.stack([(u + 0.5 - cx) / f, (v + 0.5 - cy) / f, np.ones_like(u)], -1)
    d_cam /= np.linalg.norm(d_cam, axis=-1, keepdims=True)  # (H, W, 3) unit rays, camera frame
    rot = _rotation(rng.uniform(-0.45, 0.45), rng.uniform(-0.35, -0.05))  # negative pitch looks down
    d = d_cam @ rot.T  # world-frame rays (camera at the origin; world y points down)

    cam_h = rng.uniform(1.1, 1.6)
    room_h = rng.uniform(2.5, 3.0)
    half_w = rng.uniform(1.8, 3.0)
    back = rng.uniform(3.5, 6.0)
    # room planes: (axis, value, inward normal, class, id)
    planes = [(1, cam_h, (0, -1, 0), NYU40["floor"]), (1, cam_h - room_h, (0, 1, 0), NYU40["ceiling"]),
              (0, -half_w, (1, 0, 0), NYU40["wall"]), (0, half_w, (-1, 0, 0), NYU40["wall"]),
              (2, back, (0, 0, -1), NYU40["wall"]), (2, -1.5, (0, 0, 1), NYU40["wall"])]

    shape = (h, w)
    t_best = np.full(shape, np.inf)
    normal = np.zeros(shape + (3,))
    cls = np.zeros(shape, np.int32)
    sid = np.zeros(shape, np.int32)
    albedo = np.zeros(shape + (3,))
    texture = np.zeros(shape)  # extra shading pattern per surface
    invalid = np.zeros(shape, bool)

    def take(mask, t, n, c, i, col):
        nonlocal t_best
        t_best = np.where(mask, t, t_best)
        normal[mask] = n[mask] if np.ndim(n) == 3 else n
        cls[mask] = c
        sid[mask] = i
        albedo[mask] = col

    base_cols = {c: rng.uniform(0.35, 0.9, 3) for c in NYU40.values()}
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, (axis, value, n, c) in enumerate(planes):
            t = value / np.where(np.abs(d[..., axis]) < _EPS, _EPS, d[..., axis])
            hit = (t > _EPS) & (t < t_best)
            take(hit, t, np.array(n, float), c, i, base_cols[c] * rng.uniform(0.85, 1.15, 3))
        p = d * t_best[..., None]  # hit points on the room
        # floor checkerboard and wall stripes: texture that is not geometry (no depth/normal change)
        floor = sid == 0
        texture[floor] = 0.15 * ((np.floor(p[floor, 0] * 2) + np.floor(p[floor, 2] * 2)) % 2)
        wall = cls == NYU40["wall"]
        texture[wall] = 0.05 * np.sin(p[wall, 1] * rng.uniform(3, 9))

        # windows and pictures: rectangles on the side and back walls (same plane, new surface)
        next_id = len(planes)
        for _ in range(rng.integers(1, 4)):
            wall_i = int(rng.integers(2, 5))
            axis = planes[wall_i][0]
            along = 2 if axis == 0 else 0  # the horizontal in-plane axis
            lo_y = rng.uniform(cam_h - room_h + 0.3, cam_h - 1.4)
            hi_y = lo_y + rng.uniform(0.5, 1.1)
            centre = rng.uniform(0.5, back - 0.8) if along == 2 else rng.uniform(-half_w + 0.6, half_w - 0.6)
            half = rng.uniform(0.3, 0.7)
            inside = ((sid == wall_i) & (p[..., 1] > lo_y) & (p[..., 1] < hi_y)
                      & (np.abs(p[..., along] - centre) < half))
            kind = "window" if rng.random() < 0.5 else "picture"
            cls[inside] = NYU40[kind]
            sid[inside] = next_id
            albedo[inside] = (rng.uniform(0.75, 0.95, 3) if kind == "window" else rng.uniform(0.1, 0.9, 3))
            if kind == "window":
                invalid |= inside
            else:
                texture[inside] = 0.2 * np.sin(p[inside, 1] * 25 + p[inside, along] * rng.uniform(-20, 20))
            next_id += 1

        # boxes standing on the floor
        for _ in range(rng.integers(2, 5)):
            sx, sy, sz = rng.uniform(0.4, 1.4), rng.uniform(0.4, 1.4), rng.uniform(0.4, 1.2)
            cx = rng.uniform(-half_w + sx / 2, half_w - sx / 2)
            cz = rng.uniform(1.6, back - sz / 2)
            lo = np.array([cx - sx / 2, cam_h - sy, cz - sz / 2])
            hi = np.array([cx + sx / 2, cam_h, cz + sz / 2])
            dd = np.where(np.abs(d) < _EPS, _EPS, d)
            t1, t2 = lo / dd, hi / dd
            tmin_ax, tmax_ax = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin, tmax = tmin_ax.max(-1), tmax_ax.min(-1)
            hit = (tmax >= tmin) & (tmin > _EPS) & (tmin < t_best)
            ax = tmin_ax.argmax(-1)  # the slab entered last is the face hit
            n = np.zeros(shape + (3,))
            np.put_along_axis(n, ax[..., None], -np.sign(np.take_along_axis(d, ax[..., None], -1)), -1)
            c = NYU40[_BOX_CLASSES[rng.integers(len(_BOX_CLASSES))]]
            face_id = next_id + ax * 2 + (np.take_along_axis(d, ax[..., None], -1)[..., 0] > 0)
            take(hit, tmin, n, c, 0, base_cols[c] * rng.uniform(0.7, 1.3, 3))
            sid[hit] = face_id[hit]
            texture[hit] = 0.0
            next_id += 6

        # spheres resting on the floor or on nothing in particular (objects)
        for _ in range(rng.integers(1, 4)):
            r = rng.uniform(0.15, 0.45)
            ctr = np.array([rng.uniform(-half_w + r, half_w - r), cam_h - r - rng.uniform(0, 0.8),
                            rng.uniform(1.5, back - r)])
            b = d @ ctr
            disc = b ** 2 - (ctr @ ctr - r * r)
            t = b - np.sqrt(np.maximum(disc, 0))
            hit = (disc > 0) & (t > _EPS) & (t < t_best)
            n = (d * t[..., None] - ctr) / r
            take(hit, t, n, NYU40["otherprop"], next_id, rng.uniform(0.2, 0.95, 3))
            texture[hit] = 0.0
            next_id += 1

    p = d * t_best[..., None]
    n_cam = normal @ rot  # world -> camera frame (rot is orthonormal: R^T n, row-vector form)
    depth = t_best * d_cam[..., 2]  # z-buffer depth along the optical axis

    # Lambertian shading from a point light under the ceiling, plus ambient light
    light = np.array([rng.uniform(-1, 1), cam_h - room_h + 0.3, rng.uniform(1, back - 1)])
    to_l = light - p
    dist = np.linalg.norm(to_l, axis=-1, keepdims=True)
    lambert = np.clip((normal * to_l / dist).sum(-1), 0, 1) / (1 + 0.05 * dist[..., 0] ** 2)
    shade = 0.3 + 0.8 * lambert
    rgb = albedo * (shade + texture)[..., None]
    rgb += rng.normal(0, 0.02, rgb.shape)
    rgb = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)

    depth = np.where(invalid, 0.0, depth).astype(np.float32)
    n_cam = np.where(invalid[..., None], 0.0, n_cam).astype(np.float32)
    edges = np.zeros(shape, np.float32)
    edges[:, :-1] = np.maximum(edges[:, :-1], sid[:, :-1] != sid[:, 1:])
    edges[:-1, :] = np.maximum(edges[:-1, :], sid[:-1, :] != sid[1:, :])
    return Scene(rgb=rgb, depth=depth, normals=n_cam, seg=cls.astype(np.uint8), edges=edges, surface=sid)


def _scale(scale: str, size: tuple[int, int] | None, counts: dict[str, int] | None) -> tuple[dict, tuple]:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    spec = dict(SCALES[scale])
    hw = tuple(size) if size else spec.pop("size")
    spec.pop("size", None)
    if counts:
        spec.update(counts)
    return spec, hw


def _scenes(seed: int, splits: dict[str, int], size: tuple[int, int]):
    # one child stream per split name, so changing the val count does not change the training images, and
    # every layout renders the same scenes for the same split
    keys = {"train": 0, "val": 1, "test": 2}
    for split, n in splits.items():
        rng = np.random.default_rng([seed, keys.get(split, 3)])
        for i in range(n):
            yield split, i, render_scene(rng, size)


def write_nyud_mt(dest: str | Path, *, seed: int = 0, scale: str = "cpu", size: tuple[int, int] | None = None,
                  counts: dict[str, int] | None = None, names: dict[str, list[str]] | None = None) -> Path:
    """Write scenes in the NYUD_MT layout: ``images/<id>.jpg``, ``segmentation/<id>.png`` (NYU-40 ids,
    0 unlabeled), ``depth/<id>.npy`` (H, W) m, ``normals/<id>.npy`` (H, W, 3), ``edge/<id>.npy`` (H, W),
    ``gt_sets/{train,val,test}.txt``. ``names``: the ids of each split (only those splits are written);
    default ``<split>_<i>``."""
    from PIL import Image

    dest = Path(dest)
    splits, hw = _scale(scale, size, {s: len(v) for s, v in names.items()} if names else counts)
    if names:
        splits = {s: len(v) for s, v in names.items()}
    for sub in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {s: [] for s in splits}
    for split, i, sc in _scenes(seed, splits, hw):
        name = names[split][i] if names else f"{split}_{i:05d}"
        Image.fromarray(sc.rgb).save(dest / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(sc.seg).save(dest / "segmentation" / f"{name}.png")
        np.save(dest / "depth" / f"{name}.npy", sc.depth)
        np.save(dest / "normals" / f"{name}.npy", sc.normals)
        np.save(dest / "edge" / f"{name}.npy", sc.edges)
        ids[split].append(name)
    for split, names in ids.items():
        (dest / "gt_sets" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return dest


def write_mtan_npy(dest: str | Path, *, seed: int = 0, scale: str = "cpu", size: tuple[int, int] | None = None,
                   counts: dict[str, int] | None = None) -> Path:
    """Write scenes in the MTAN/Auto-Lambda/LibMTL layout ``{train,val}/{image,label,depth,normal}/<i>.npy``:
    image (H, W, 3) float in [0, 1], label (H, W) float 13-class 0..12 with -1 unlabeled, depth (H, W, 1)
    m with 0 invalid, normal (H, W, 3) with 0 invalid. The ``test`` count goes to ``val`` as in MTAN."""
    dest = Path(dest)
    splits, hw = _scale(scale, size, counts)
    splits = {"train": splits["train"], "test": splits.get("test", splits.get("val", 0))}
    lut = np.full(256, -1.0, np.float32)
    for k40, k13 in NYU40_TO_13.items():
        lut[k40] = k13 - 1
    for split, i, sc in _scenes(seed, splits, hw):
        split = "val" if split == "test" else split  # MTAN's "val" is NYU-v2's test split
        for sub in ("image", "label", "depth", "normal"):
            (dest / split / sub).mkdir(parents=True, exist_ok=True)
        np.save(dest / split / "image" / f"{i}.npy", (sc.rgb / 255.0).astype(np.float32))
        np.save(dest / split / "label" / f"{i}.npy", lut[sc.seg])
        np.save(dest / split / "depth" / f"{i}.npy", sc.depth[..., None])
        np.save(dest / split / "normal" / f"{i}.npy", sc.normals)
    return dest


def write_taskonomy(dest: str | Path, *, seed: int = 0, scale: str = "cpu", size: tuple[int, int] | None = None,
                    counts: dict[str, int] | None = None) -> Path:
    """Write scenes as Taskonomy buildings ``<building>/<domain>/point_<i>_view_0_domain_<domain>.png``
    (one synthetic building per split, listed in ``splits/<split>.txt``): rgb 8-bit, depth_zbuffer and
    depth_euclidean 16-bit in 1/512 m with 65535 invalid, normal 8-bit RGB centred on 127.5, edge_texture
    16-bit, segment_semantic 8-bit ids (0 unlabeled, 1 stuff, 2.. objects)."""
    from PIL import Image

    dest = Path(dest)
    splits, hw = _scale(scale, size, counts)
    (dest / "splits").mkdir(parents=True, exist_ok=True)
    lut = np.zeros(256, np.uint8)
    for k40, kt in NYU40_TO_TASKONOMY.items():
        lut[k40] = kt
    for split in splits:
        (dest / "splits" / f"{split}.txt").write_text(f"synthetic_{split}\n")
    for split, i, sc in _scenes(seed, splits, hw):
        bdir = dest / f"synthetic_{split}"
        stem = f"point_{i}_view_0_domain_"
        for dom in ("rgb", "depth_zbuffer", "depth_euclidean", "normal", "edge_texture", "segment_semantic"):
            (bdir / dom).mkdir(parents=True, exist_ok=True)
        Image.fromarray(sc.rgb).save(bdir / "rgb" / f"{stem}rgb.png")
        valid = sc.depth > 0
        z = np.where(valid, np.clip(sc.depth * 512, 0, 65534), 65535).astype(np.uint16)
        Image.fromarray(z).save(bdir / "depth_zbuffer" / f"{stem}depth_zbuffer.png")
        dist = np.linalg.norm(backproject(sc.depth), axis=-1)  # Euclidean distance to the camera centre
        e = np.where(valid, np.clip(dist * 512, 0, 65534), 65535).astype(np.uint16)
        Image.fromarray(e).save(bdir / "depth_euclidean" / f"{stem}depth_euclidean.png")
        nrm = np.clip(np.round((sc.normals + 1) * 127.5), 0, 255).astype(np.uint8)
        Image.fromarray(nrm).save(bdir / "normal" / f"{stem}normal.png")
        Image.fromarray((sc.edges * 65535).astype(np.uint16)).save(bdir / "edge_texture" / f"{stem}edge_texture.png")
        Image.fromarray(lut[sc.seg]).save(bdir / "segment_semantic" / f"{stem}segment_semantic.png")
    return dest
