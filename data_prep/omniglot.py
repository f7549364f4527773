"""Omniglot (Lake et al. 2015): 1623 handwritten characters x 20 drawers, plus the 20 one-shot runs.

Real data: the official zips of github.com/brendenlake/omniglot (``python/images_background.zip``,
``python/images_evaluation.zip``, ``python/one-shot-classification/all_runs.zip``). They are read as they
are (zip members or unzipped folders, the small ``images_background_small1/2.zip`` too), resized once to
28x28 (PIL Lanczos, strokes = 255 as MAML's inverted images) and written in the few-shot array layout of
:mod:`data_prep.formats` (one part ``all``; ``lake20.npz`` for the runs), read by :mod:`nbmodule.data.fewshot`.

Synthetic data: characters made of 2-4 random pen strokes; each of the 20 "drawers" perturbs the control
points, the pen width and a small affine transform, so a class is a stroke pattern a network can learn and
5-way 1-shot accuracy lands well above chance. It writes the RAW layout (105x105 1-bit PNGs in zips named
like the official ones, under ``raw/``) and then runs the same converter, so real and synthetic data go
through one code path and one loader.
"""
from __future__ import annotations

import io
import math
import re
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from .extract import open_zip
from .fetch import Mirror, RemoteFile
from .formats import ClassArrays, LakeRuns, save_class_arrays, save_lake_runs
from .registry import DatasetSpec

__all__ = ["SPEC", "convert", "convert_sources", "from_folder", "synthesize", "is_ready", "read_lake_runs", "SCALES"]

BASE = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
GH = "https://github.com/brendenlake/omniglot/raw/master/python"

FILES = (
    RemoteFile("images_background.zip", (Mirror(f"{BASE}/images_background.zip", "brendenlake/omniglot"),
                                         Mirror(f"{GH}/images_background.zip", "github raw redirect")),
               md5="68d2efa1b9178cc56df9314c21c6e718"),
    RemoteFile("images_evaluation.zip", (Mirror(f"{BASE}/images_evaluation.zip", "brendenlake/omniglot"),
                                         Mirror(f"{GH}/images_evaluation.zip", "github raw redirect")),
               md5="6b91aef0f799c5bb55b94e3f2daec811"),
    RemoteFile("all_runs.zip", (Mirror(f"{BASE}/one-shot-classification/all_runs.zip", "brendenlake/omniglot"),
                                Mirror(f"{GH}/one-shot-classification/all_runs.zip", "github raw redirect")),
               sha256="437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325"),
)

IMAGE_SIZE = 28
#: synthetic sizes: (background characters, evaluation characters); 20 drawers each, like the real set
SCALES = {"smoke": (40, 30), "cpu": (240, 160), "full": (964, 659)}
_SET_RE = re.compile(r"images_(background|evaluation)")


# --- reading the official files -------------------------------------------------------------------
def _members(source: Path) -> Iterator[tuple[str, bytes]]:
    """(relative posix path, bytes) of every PNG in a zip or a folder."""
    if source.is_dir():
        for p in sorted(source.rglob("*.png")):
            yield f"{source.name}/{p.relative_to(source).as_posix()}", p.read_bytes()
        return
    with open_zip(source) as zf:
        for name in sorted(zf.namelist()):
            if name.lower().endswith(".png") and not name.startswith("__MACOSX"):
                yield name, zf.read(name)


def _to_array(data: bytes, size: int) -> np.ndarray:
    """105x105 1-bit PNG -> (size, size) uint8 with strokes = 255 (MAML's ``1 - image``)."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("L")
        if im.size != (size, size):
            im = im.resize((size, size), Image.LANCZOS)
        return 255 - np.asarray(im, dtype=np.uint8)


def _read_characters(sources: Iterable[Path], size: int) -> ClassArrays:
    """Characters of every background/evaluation source, deduplicated by ``<set>/<alphabet>/<character>``."""
    per_class: dict[str, list[tuple[str, np.ndarray]]] = {}
    owner: dict[str, Path] = {}
    for source in sources:
        for name, data in _members(source):
            parts = name.split("/")
            m = _SET_RE.search(parts[0]) if len(parts) >= 4 else None
            if m is None:
                continue  # not <images_xxx>/<alphabet>/<character>/<file>.png
            key = f"{m.group(1)}/{parts[-3]}/{parts[-2]}"
            if owner.setdefault(key, source) != source:
                continue  # the same character from a second archive (the small zips overlap)
            per_class.setdefault(key, []).append((parts[-1], _to_array(data, size)))
    if not per_class:
        raise ValueError("no Omniglot character images found (expected images_background*/<alphabet>/"
                         "<character>/*.png in the given archives or folders)")
    classes = sorted(per_class, key=lambda k: (not k.startswith("background/"), k))
    images, labels = [], []
    for i, key in enumerate(classes):
        for _, arr in sorted(per_class[key], key=lambda t: t[0]):
            images.append(arr)
            labels.append(i)
    return ClassArrays(np.stack(images), np.asarray(labels, dtype=np.int32), classes)


def read_lake_runs(source: Path, size: int = IMAGE_SIZE) -> LakeRuns:
    """The 20 one-shot runs of ``all_runs.zip`` (or its unzipped folder), scored by ``class_labels.txt``."""
    files: dict[str, bytes] = {}
    labels: dict[str, str] = {}
    if source.is_dir():
        for p in source.rglob("*"):
            if p.is_file():
                files[p.relative_to(source).as_posix()] = p.read_bytes()
    else:
        with open_zip(source) as zf:
            files = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
    # normalise "prefix/runNN/..." to "runNN/..."
    norm = {}
    for name, data in files.items():
        m = re.search(r"(run\d+/.*)$", name)
        if m:
            norm[m.group(1)] = data
    runs = sorted({n.split("/")[0] for n in norm if n.endswith("class_labels.txt")})
    if not runs:
        raise ValueError(f"{source}: no runNN/class_labels.txt found (is this all_runs.zip?)")
    supports, queries, answers = [], [], []
    for run in runs:
        labels = {}
        for line in norm[f"{run}/class_labels.txt"].decode().splitlines():
            if line.strip():
                test, train = line.split()
                labels[test] = train
        train_names = sorted(n for n in norm if n.startswith(f"{run}/training/") and n.endswith(".png"))
        test_names = sorted(n for n in norm if n.startswith(f"{run}/test/") and n.endswith(".png"))
        index = {n: j for j, n in enumerate(train_names)}
        missing = [t for t in test_names if t not in labels or labels[t] not in index]
        if missing:
            raise ValueError(f"{source}: {run}/class_labels.txt gives no training image for {missing[:3]}")
        supports.append(np.stack([_to_array(norm[n], size) for n in train_names]))
        queries.append(np.stack([_to_array(norm[n], size) for n in test_names]))
        answers.append([index[labels[t]] for t in test_names])
    return LakeRuns(np.stack(supports), np.stack(queries), np.asarray(answers, dtype=np.int64))


def convert_sources(sources: Iterable[str | Path], dest: str | Path, *, image_size: int = IMAGE_SIZE,
                    synthetic: bool = False, scale: str | None = None) -> Path:
    """Convert official Omniglot files (zips or unzipped folders, any of ``images_background*``,
    ``images_evaluation*``, ``all_runs*``) into the few-shot array layout at ``dest``."""
    sources = [Path(s) for s in sources]
    runs = [s for s in sources if "all_runs" in s.name or "one-shot" in s.name]
    chars = [s for s in sources if s not in runs]
    arrays = _read_characters(chars, image_size)
    dest = Path(dest)
    if runs:
        dest.mkdir(parents=True, exist_ok=True)
        save_lake_runs(dest, read_lake_runs(runs[0], image_size))
    save_class_arrays(dest, {"all": arrays}, dataset="omniglot", synthetic=synthetic, scale=scale,
                      source=", ".join(s.name for s in sources))
    return dest


def convert(files: dict[str, Path], dest: Path, *, image_size: int = IMAGE_SIZE) -> None:
    """``DatasetSpec.convert``: the downloaded official zips -> arrays (see module docstring)."""
    convert_sources(files.values(), dest, image_size=image_size)


def from_folder(folder: str | Path, dest: Path, *, image_size: int = IMAGE_SIZE) -> None:
    """``DatasetSpec.from_folder``: official files in ``folder``, read unchanged: ``images_background``/
    ``images_evaluation`` as zips or unzipped folders (else the ``images_background_small*.zip``), plus
    ``all_runs.zip`` or the unzipped ``one-shot-classification`` runs when present."""
    folder = Path(folder)
    sets: dict[str, Path] = {}
    for s in ("background", "evaluation"):
        for ext in (".zip", ""):  # a folder and its zip hold the same characters: keep one of each set
            p = folder / f"images_{s}{ext}"
            if p.exists():
                sets.setdefault(s, p)
    chars = list(sets.values()) or sorted(folder.glob("images_background_small*.zip"))
    if not chars:
        raise FileNotFoundError(f"{folder}: no images_background*/images_evaluation* zips or folders")
    runs = [p for p in (folder / "all_runs.zip", folder / "one-shot-classification") if p.exists()][:1]
    convert_sources([*chars, *runs], dest, image_size=image_size)


def is_ready(dest: Path) -> bool:
    return (dest / "meta.json").is_file() and (dest / "all_images.npy").is_file()


# --- synthetic ---------------------------------------------------------------------------------------
def _character(rng: np.random.RandomState) -> list[np.ndarray]:
    """A character: 2-4 strokes, each 3-5 control points in the unit square."""
    strokes = []
    for _ in range(rng.randint(2, 5)):
        n = rng.randint(3, 6)
        start = rng.uniform(0.15, 0.85, size=2)
        steps = rng.normal(0, 0.22, size=(n - 1, 2))
        pts = np.clip(np.vstack([start, start + np.cumsum(steps, 0)]), 0.1, 0.9)
        strokes.append(pts)
    return strokes


def _draw(strokes: list[np.ndarray], rng: np.random.RandomState, size: int = 105) -> bytes:
    """One drawer's rendition: jittered points, random pen width, small rotation/scale/shift; 1-bit PNG."""
    angle = rng.uniform(-0.2, 0.2)
    scale = rng.uniform(0.85, 1.1)
    shift = rng.normal(0, 0.04, size=2)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * scale
    im = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(im)
    width = int(rng.randint(3, 6))
    for pts in strokes:
        p = (pts + rng.normal(0, 0.025, size=pts.shape) - 0.5) @ rot.T + 0.5 + shift
        xy = [tuple(float(v) for v in q * size) for q in p]
        draw.line(xy, fill=0, width=width, joint="curve")
    buf = io.BytesIO()
    im.convert("1").save(buf, format="PNG")
    return buf.getvalue()


def _write_set(path: Path, top: str, n_chars: int, rng: np.random.RandomState,
               per_alphabet: int = 20) -> list[list[np.ndarray]]:
    chars = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for c in range(n_chars):
            strokes = _character(rng)
            chars.append(strokes)
            folder = f"{top}/Synthetic_{c // per_alphabet + 1:02d}/character{c % per_alphabet + 1:02d}"
            for d in range(20):  # 20 drawers per character, named <charid>_<drawer>.png like the real files
                zf.writestr(f"{folder}/{c + 1:04d}_{d + 1:02d}.png", _draw(strokes, rng))
    return chars


def _write_runs(path: Path, eval_chars: list[list[np.ndarray]], rng: np.random.RandomState, n_runs: int = 20) -> None:
    """Lake-style ``all_runs.zip``: per run 20 evaluation characters, one training and one test drawing."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for r in range(1, n_runs + 1):
            chosen = rng.choice(len(eval_chars), size=20, replace=False)
            order = rng.permutation(20)  # test item i shows the character of training class order[i]
            lines = []
            for j, c in enumerate(chosen):
                zf.writestr(f"run{r:02d}/training/class{j + 1:02d}.png", _draw(eval_chars[c], rng))
            for i, j in enumerate(order):
                zf.writestr(f"run{r:02d}/test/item{i + 1:02d}.png", _draw(eval_chars[chosen[j]], rng))
                lines.append(f"run{r:02d}/test/item{i + 1:02d}.png run{r:02d}/training/class{j + 1:02d}.png")
            zf.writestr(f"run{r:02d}/class_labels.txt", "\n".join(lines) + "\n")


def synthesize(dest: Path, *, seed: int = 0, scale: str = "cpu", image_size: int = IMAGE_SIZE) -> Path:
    """Write synthetic Omniglot: raw official-style zips under ``dest/raw/``, converted into ``dest``."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    n_bg, n_ev = SCALES[scale]
    rng = np.random.RandomState(seed)
    raw = Path(dest) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    _write_set(raw / "images_background.zip", "images_background", n_bg, rng)
    ev = _write_set(raw / "images_evaluation.zip", "images_evaluation", n_ev, rng)
    _write_runs(raw / "all_runs.zip", ev, rng)
    return convert_sources([raw / "images_background.zip", raw / "images_evaluation.zip", raw / "all_runs.zip"],
                           dest, image_size=image_size, synthetic=True, scale=scale)


SPEC = DatasetSpec(
    name="omniglot",
    summary="Omniglot: 1623 characters x 20 drawings (28x28 uint8 arrays) + Lake's 20 one-shot runs",
    files=FILES,
    convert=convert,
    synthesize=synthesize,
    is_ready=is_ready,
    from_folder=from_folder,
    homepage="https://github.com/brendenlake/omniglot",
    notes="MIT licence. Lake, Salakhutdinov & Tenenbaum (2015), Science 350(6266).",
    options={"image_size": IMAGE_SIZE, "scale": "cpu (synthetic: smoke | cpu | full)"},
)
