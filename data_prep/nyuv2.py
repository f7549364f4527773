"""NYU-Depth-v2 for multi-task dense prediction, in the two layouts the multi-task literature distributes.

``nyuv2`` (:data:`SPEC`): NYUD_MT of Maninis et al. (ASTMT), used by MTI-Net, Vandenhende et al.'s
multi-task benchmark and the MTML seed: ``images/*.jpg``, ``segmentation/*.png`` (40 classes, 0 =
unlabeled), ``depth/*.npy``, ``normals/*.npy``, ``edge/*.npy``, ``gt_sets/{train,val}.txt`` (795/654),
480x640. One archive, ``NYUD_MT.tgz``, from several mirrors tried in order (each failure is named):

1. the multi-task benchmark's Google Drive copy (Vandenhende et al., Multi-Task-Learning-PyTorch),
2. the original ETH host of ASTMT (``data.vision.ee.ethz.ch/kmaninis``),
3. the MTML seed's Google Drive copy (the seed's README; the archive format is detected by content).

No checksum is published for it, so the sha256 is printed after the first download for pinning.

``nyuv2_13`` (:data:`SPEC_13`, module ``data_prep.nyuv2_13``): the pre-processed 13-class 288x384 set of
MTAN (Liu et al. 2019), also used by Auto-Lambda and LibMTL: ``{train,val}/{image,label,depth,normal}/<i>.npy``
(795/654 frames). All three projects point to MTAN's Dropbox folder (``?dl=1`` serves it as one zip);
Dropbox has throttled it for users, so a local copy can be passed with ``--source nyuv2.zip``.

Offline: ``--synthetic`` writes rendered scenes (:mod:`data_prep.scenes`) in the same layouts.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .extract import extract
from .fetch import Mirror, RemoteFile
from .registry import DatasetSpec
from . import scenes

__all__ = ["SPEC", "SPEC_13", "FILES", "FILES_13", "convert", "convert_13", "synthesize", "synthesize_13",
           "is_ready", "is_ready_13", "find_layout_root"]

FILES = (
    RemoteFile("NYUD_MT.tgz", (
        Mirror("gdrive://14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw", "multi-task benchmark (Multi-Task-Learning-PyTorch)"),
        Mirror("https://data.vision.ee.ethz.ch/kmaninis/share/MTL/NYUD_MT.tgz", "ASTMT original host (ETH)"),
        Mirror("gdrive://11pWuQXMFBNMIIB4VYMzi9RPE-nMOBU8g", "MTML seed README"),
    ), size=None),
)
FILES_13 = (
    RemoteFile("nyuv2.zip", (
        Mirror("https://www.dropbox.com/sh/86nssgwm6hm3vkb/AACrnUQ4GxpdrBbLjb6n-mWNa?dl=1",
               "MTAN's Dropbox folder (linked by MTAN, Auto-Lambda and LibMTL)"),
    )),
)
EXPECTED = {"train": 795, "val": 654}


def find_layout_root(tree: Path, layout: str) -> Path:
    """The folder inside an extracted archive that holds ``layout`` ("nyud_mt" or "mtan")."""
    marker = (lambda p: (p / "gt_sets").is_dir() and (p / "images").is_dir()) if layout == "nyud_mt" else \
        (lambda p: (p / "train" / "image").is_dir())
    for cand in [tree, *sorted(p for p in tree.rglob("*") if p.is_dir())]:
        if marker(cand):
            return cand
    found = sorted(str(p.relative_to(tree)) for p in tree.iterdir())[:20]
    want = "images/ and gt_sets/" if layout == "nyud_mt" else "train/image/"
    raise ValueError(f"the archive holds no folder with {want} (top level: {found}); is it the right file?")


def _move_tree(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        shutil.move(str(item), dest / item.name)


def _convert(files: dict[str, Path], dest: Path, layout: str) -> None:
    archive = next(iter(files.values()))
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tree = Path(tmp)
        if archive.is_dir():
            tree = archive
        else:
            extract(archive, tree)
        root = find_layout_root(tree, layout)
        if archive.is_dir():
            shutil.copytree(root, dest, dirs_exist_ok=True)
        else:
            _move_tree(root, dest)
    for split, n in EXPECTED.items():
        if layout == "nyud_mt":
            lst = dest / "gt_sets" / f"{split}.txt"
            got = len(lst.read_text().split()) if lst.is_file() else 0
        else:
            got = len(list((dest / split / "image").glob("*.npy"))) if (dest / split / "image").is_dir() else 0
        if got != n:
            name = "nyuv2" if layout == "nyud_mt" else "nyuv2_13"
            print(f"[data_prep] {name}: {split} has {got} frames, the published split has {n}")


def convert(files: dict[str, Path], dest: Path) -> None:
    """Extract NYUD_MT (tgz or zip, possibly nested one folder deep) into ``dest``."""
    _convert(files, Path(dest), "nyud_mt")


def convert_13(files: dict[str, Path], dest: Path) -> None:
    """Extract MTAN's 13-class ``.npy`` set into ``dest`` (``dest/train/image/0.npy`` ...)."""
    _convert(files, Path(dest), "mtan")


def synthesize(dest: Path, seed: int = 0, scale: str = "cpu", size: tuple[int, int] | None = None,
               counts: dict[str, int] | None = None) -> None:
    """Rendered scenes in the NYUD_MT layout (``scale``: smoke, cpu or full; ``size`` (H, W) and ``counts``
    per split override it)."""
    scenes.write_nyud_mt(dest, seed=seed, scale=scale, size=size, counts=counts)


def synthesize_13(dest: Path, seed: int = 0, scale: str = "cpu", size: tuple[int, int] | None = None,
                  counts: dict[str, int] | None = None) -> None:
    """Rendered scenes in MTAN's 13-class ``.npy`` layout."""
    scenes.write_mtan_npy(dest, seed=seed, scale=scale, size=size, counts=counts)


def is_ready(dest: Path) -> bool:
    dest = Path(dest)
    return (dest / "gt_sets" / "train.txt").is_file() and (dest / "images").is_dir()


def is_ready_13(dest: Path) -> bool:
    return (Path(dest) / "train" / "image").is_dir() and (Path(dest) / "val" / "image").is_dir()


SPEC = DatasetSpec(
    name="nyuv2",
    summary="NYU-v2 NYUD_MT (40 classes, depth, normals, edges; 795/654, 480x640)",
    files=FILES, convert=convert, synthesize=synthesize, is_ready=is_ready,
    homepage="https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html",
    notes="NYUD_MT of ASTMT / the multi-task benchmark; 13-class MTAN layout: dataset nyuv2_13",
    options={"scale": "cpu"},
)
SPEC_13 = DatasetSpec(
    name="nyuv2_13",
    summary="NYU-v2 13-class 288x384 .npy layout of MTAN / Auto-Lambda / LibMTL (795/654, no edges)",
    files=FILES_13, convert=convert_13, synthesize=synthesize_13, is_ready=is_ready_13,
    homepage="https://github.com/lorenmt/mtan",
    notes="normals are Eigen & Fergus's; depth 0 and zero normals mark invalid pixels",
    options={"scale": "cpu"},
)
