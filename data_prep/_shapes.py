"""Drawing helpers for the offline synthetic vision datasets (VOC, COCO, Imagenette layouts).

The content is learnable: an object's class fixes its shape (rectangle, ellipse, triangle, diamond) and its
hue; position, size, brightness and the textured background are random. Every generator takes ``scale`` in
``smoke``/``cpu``/``full``, which sets the number of images and their resolution.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("rectangle", "ellipse", "triangle", "diamond")

#: scale -> (train images, val images, image side in px)
SCALES = {"smoke": (24, 12, 96), "cpu": (240, 60, 160), "full": (240, 60, 320)}


def scale_sizes(scale: str, n_train: int | None, n_val: int | None, size: int | None) -> tuple[int, int, int]:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    t, v, s = SCALES[scale]
    return int(n_train or t), int(n_val or v), int(size or s)


def class_colour(c: int, n: int, rng: np.random.Generator, offset: float = 0.0) -> tuple[int, int, int]:
    """Hue spaced by class (``offset`` shifts the wheel per dataset), small random brightness jitter."""
    hue = (offset + c / n) % 1.0
    val = 0.75 + 0.25 * rng.random()
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, val)
    return int(r * 255), int(g * 255), int(b * 255)


def background(size: int, rng: np.random.Generator) -> Image.Image:
    """A dim, low-saturation noisy texture (smooth blobs plus pixel noise)."""
    coarse = rng.integers(30, 110, size=(4, 4, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.int16)
    noise = rng.integers(-12, 13, size=(size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def shape_polygon(kind: str, box: tuple[float, float, float, float], n_ellipse: int = 20) -> list[tuple[float, float]]:
    """The outline of ``kind`` inscribed in ``box`` (x1, y1, x2, y2) as a polygon (for COCO segmentation)."""
    x1, y1, x2, y2 = box
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    if kind == "rectangle":
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    if kind == "ellipse":
        return [(cx + rx * math.cos(2 * math.pi * k / n_ellipse), cy + ry * math.sin(2 * math.pi * k / n_ellipse))
                for k in range(n_ellipse)]
    if kind == "triangle":
        return [(cx, y1), (x2, y2), (x1, y2)]
    if kind == "diamond":
        return [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
    raise ValueError(f"unknown shape {kind!r}")


def draw_shape(img: Image.Image, kind: str, box: tuple[float, float, float, float], colour) -> list:
    """Draw a filled shape on ``img``; returns its polygon."""
    poly = shape_polygon(kind, box)
    ImageDraw.Draw(img).polygon(poly, fill=colour)
    return poly


def random_box(size: int, rng: np.random.Generator, min_frac: float, max_frac: float) -> tuple[float, ...]:
    w = size * rng.uniform(min_frac, max_frac)
    h = w * rng.uniform(0.7, 1.4)
    h = min(h, size * max_frac)
    x1 = rng.uniform(0, size - w)
    y1 = rng.uniform(0, size - h)
    return (x1, y1, x1 + w, y1 + h)


def boundary(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels within ``width`` of a label change (VOC marks object outlines 255 = ignore)."""
    edge = np.zeros_like(mask, dtype=bool)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            if dx == 0 and dy == 0:
                continue
            shifted = np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
            edge |= shifted != mask
    edge[:width], edge[-width:], edge[:, :width], edge[:, -width:] = False, False, False, False
    return edge
