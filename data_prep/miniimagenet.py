"""MiniImagenet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) split: 64 / 16 / 20 classes x 600.

Real data: ``images.zip`` (the ``images/<wnid><8 digits>.jpg`` folder; Google Drive, see the mirrors) and
the split CSVs ``train.csv``/``val.csv``/``test.csv`` (``filename,label``) of github.com/twitter/meta-learning-lstm.
Conversion reads every image the CSVs name straight from the archive (zip or tar) or an unzipped folder,
resizes it once to 84x84 RGB (PIL Lanczos, as the usual preprocessing scripts) and writes the few-shot
array layout of :mod:`data_prep.formats` with parts ``train``/``val``/``test``.

Synthetic data: per class a coloured oriented grating (class-specific frequency, angle and palette) with
random phase, shift, contrast and noise per image, written in the RAW layout (84x84 JPEGs in
``raw/images.zip`` + the three CSVs) and converted by the same code.
"""
from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from pathlib import Path
import numpy as np
from PIL import Image

from .extract import archive_errors
from .fetch import Mirror, RemoteFile
from .formats import ClassArrays, save_class_arrays
from .registry import DatasetSpec

__all__ = ["SPEC", "convert", "convert_sources", "from_folder", "find_sources", "synthesize", "is_ready", "SCALES",
           "SPLITS"]

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
CSV_BASE = ("https://raw.githubusercontent.com/twitter/meta-learning-lstm/"
            "0df7fc747a219b7dd04e846d75eb8164483b304b/data/miniImagenet")
CSV_SHA256 = {
    "train.csv": "498519cd8e49ce97ed26a4a3638966698ae41ab35e9c68538319fc9b46ba7d2f",
    "val.csv": "5658a59921ca027ee76af92949869c5d6f41d77592ff3b18db325a9d10c893b9",
    "test.csv": "2b7cfa78342995761a572a8158e539bc4e0a80f9bbd7d00c1e17a460fbbb93fa",
}

FILES = (
    # No checksum is published for the images archive (several repackagings circulate).
    RemoteFile("images.zip", (
        Mirror("gdrive://1HkgrkAwukzEZA0TpO7010PkAOREb2Nuk", "MAML reimplementations' MiniImagenet (dragen1860)"),
        Mirror("gdrive://0B3Irx3uQNoBMQ1FlNXJsZUdYWEE", "Ravi & Larochelle's images.zip (meta-learning-lstm README)"),
    )),
    *(RemoteFile(name, (Mirror(f"{CSV_BASE}/{name}", "twitter/meta-learning-lstm"),
                        Mirror(f"https://raw.githubusercontent.com/ethanhe42/mini-ImageNet/master/{name}",
                               "byte-identical copy")), sha256=sha)
      for name, sha in CSV_SHA256.items()),
)

#: synthetic sizes: (train, val, test classes, images per class)
SCALES = {"smoke": (12, 5, 5, 30), "cpu": (24, 8, 10, 60), "full": (64, 16, 20, 600)}


def _read_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"filename", "label"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: header {reader.fieldnames}, expected 'filename,label'")
        rows = [(r["filename"], r["label"]) for r in reader]
    if not rows:
        raise ValueError(f"{path}: no rows (expected a 'filename,label' header and one row per image)")
    return rows


class _ImageSource:
    """Image bytes by file name from a zip, a tar or a folder (matched on the base name)."""

    def __init__(self, path: Path):
        self.path = path
        self._zip = self._tar = None
        if not path.exists():
            raise FileNotFoundError(f"MiniImagenet images not found: {path}")
        with archive_errors(path):
            if path.is_dir():
                self.index = {p.name: p for p in path.rglob("*") if p.is_file()}
            elif zipfile.is_zipfile(path):
                self._zip = zipfile.ZipFile(path)
                self.index = {n.rsplit("/", 1)[-1]: n for n in self._zip.namelist() if not n.endswith("/")}
            else:
                self._tar = tarfile.open(path)
                self.index = {m.name.rsplit("/", 1)[-1]: m for m in self._tar.getmembers() if m.isfile()}

    def read(self, name: str) -> bytes:
        if name not in self.index:
            raise KeyError(f"{self.path}: no image named {name!r} (is this the MiniImagenet images archive?)")
        item = self.index[name]
        with archive_errors(self.path):
            if self._zip is not None:
                return self._zip.read(item)
            if self._tar is not None:
                return self._tar.extractfile(item).read()  # type: ignore[union-attr]
        return Path(item).read_bytes()

    def close(self) -> None:
        for h in (self._zip, self._tar):
            if h is not None:
                h.close()


def _to_array(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.LANCZOS)
        return np.asarray(im, dtype=np.uint8)


def convert_sources(csvs: dict[str, Path], images: Path, dest: str | Path, *, image_size: int = IMAGE_SIZE,
                    synthetic: bool = False, scale: str | None = None) -> Path:
    """``csvs``: split name -> CSV path; ``images``: the images archive or folder -> arrays at ``dest``."""
    missing = [s for s in SPLITS if s not in csvs]
    if missing:
        raise ValueError(f"MiniImagenet needs the split CSVs {', '.join(f'{s}.csv' for s in missing)}")
    src = _ImageSource(Path(images))
    parts = {}
    try:
        for split in SPLITS:
            rows = _read_csv(Path(csvs[split]))
            classes = sorted({label for _, label in rows})
            cls_index = {c: i for i, c in enumerate(classes)}
            arrays = np.empty((len(rows), image_size, image_size, 3), dtype=np.uint8)
            labels = np.empty(len(rows), dtype=np.int32)
            for i, (fname, label) in enumerate(rows):
                arrays[i] = _to_array(src.read(fname), image_size)
                labels[i] = cls_index[label]
            parts[split] = ClassArrays(arrays, labels, classes)
    finally:
        src.close()
    return save_class_arrays(dest, parts, dataset="miniimagenet", synthetic=synthetic, scale=scale,
                             source=f"{Path(images).name} + {', '.join(Path(csvs[s]).name for s in SPLITS)}")


def convert(files: dict[str, Path], dest: Path, *, image_size: int = IMAGE_SIZE) -> None:
    """``DatasetSpec.convert``: images archive + split CSVs -> arrays."""
    convert_sources({s: files[f"{s}.csv"] for s in SPLITS}, files["images.zip"], dest, image_size=image_size)


def from_folder(folder: str | Path, dest: Path, *, image_size: int = IMAGE_SIZE) -> None:
    """``DatasetSpec.from_folder``: the split CSVs and ``images.zip``/``images.tar``/``images/`` in ``folder``."""
    csvs, images = find_sources(folder)
    convert_sources(csvs, images, dest, image_size=image_size)


def is_ready(dest: Path) -> bool:
    return (dest / "meta.json").is_file() and all((dest / f"{s}_images.npy").is_file() for s in SPLITS)


# --- synthetic -----------------------------------------------------------------------------------------
def _class_style(rng: np.random.RandomState) -> dict:
    return {"freq": rng.uniform(2.0, 9.0), "angle": rng.uniform(0, np.pi), "freq2": rng.uniform(1.0, 5.0),
            "angle2": rng.uniform(0, np.pi), "colors": rng.uniform(0, 255, size=(2, 3))}


def _render(style: dict, rng: np.random.RandomState, size: int = IMAGE_SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = style["angle"] + rng.normal(0, 0.15)
    wave = np.sin(2 * np.pi * style["freq"] * (xx * np.cos(a) + yy * np.sin(a)) + rng.uniform(0, 2 * np.pi))
    a2 = style["angle2"] + rng.normal(0, 0.15)
    wave2 = np.sin(2 * np.pi * style["freq2"] * (xx * np.cos(a2) + yy * np.sin(a2)) + rng.uniform(0, 2 * np.pi))
    mix = (0.5 + 0.35 * rng.uniform(0.6, 1.0) * (0.7 * wave + 0.3 * wave2))[..., None]
    c0, c1 = style["colors"] + rng.normal(0, 20, size=(2, 3))
    img = c0 * (1 - mix) + c1 * mix + rng.normal(0, 18, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def synthesize(dest: Path, *, seed: int = 0, scale: str = "cpu", image_size: int = IMAGE_SIZE) -> Path:
    """Write synthetic MiniImagenet: ``raw/images.zip`` + CSVs in the official format, converted into ``dest``."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    sizes = dict(zip(SPLITS, SCALES[scale][:3]))
    per_class = SCALES[scale][3]
    rng = np.random.RandomState(seed)
    raw = Path(dest) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    csvs = {}
    wnid = 1000000
    with zipfile.ZipFile(raw / "images.zip", "w", zipfile.ZIP_STORED) as zf:
        for split in SPLITS:
            rows = []
            for _ in range(sizes[split]):
                wnid += 1
                label = f"n{wnid:08d}"
                style = _class_style(rng)
                for i in range(per_class):
                    fname = f"{label}{i + 1:08d}.jpg"
                    buf = io.BytesIO()
                    Image.fromarray(_render(style, rng)).save(buf, format="JPEG", quality=92)
                    zf.writestr(f"images/{fname}", buf.getvalue())
                    rows.append((fname, label))
            csvs[split] = raw / f"{split}.csv"
            with open(csvs[split], "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["filename", "label"])
                w.writerows(rows)
    return convert_sources(csvs, raw / "images.zip", dest, image_size=image_size, synthetic=True, scale=scale)


def find_sources(folder: str | Path) -> tuple[dict[str, Path], Path]:
    """The split CSVs and the images (``images.zip``/``images.tar``/``images/``) inside ``folder``."""
    folder = Path(folder)
    csvs = {s: folder / f"{s}.csv" for s in SPLITS if (folder / f"{s}.csv").is_file()}
    for cand in ("images.zip", "images.tar", "images.tar.gz", "mini-imagenet.zip", "images"):
        if (folder / cand).exists():
            return csvs, folder / cand
    raise FileNotFoundError(f"{folder}: no images.zip, images.tar or images/ folder with the MiniImagenet images")


SPEC = DatasetSpec(
    name="miniimagenet",
    summary="MiniImagenet, Ravi & Larochelle split: 64/16/20 classes x 600 images (84x84 RGB uint8 arrays)",
    files=FILES,
    convert=convert,
    synthesize=synthesize,
    is_ready=is_ready,
    from_folder=from_folder,
    homepage="https://github.com/twitter/meta-learning-lstm",
    notes="Split CSVs: MIT (Twitter). Images: ImageNet terms of access (non-commercial research).",
    options={"image_size": IMAGE_SIZE, "scale": "cpu (synthetic: smoke | cpu | full)"},
)
