"""A small Taskonomy subset (Zamir et al. 2018) for multi-task dense prediction.

Domains: ``rgb``, ``segment_semantic``, ``depth_zbuffer`` and ``depth_euclidean``, ``normal``,
``edge_texture``. Taskonomy is distributed as one tar per (building, domain), ``<building>_<domain>.tar``,
whose top folder is the domain; files are ``point_<p>_view_<v>_domain_<domain>.png``. Mirrors, tried in order:

1. EPFL's omnidata host ``https://datasets.epfl.ch/taskonomy/<building>_<domain>.tar`` (the links of
   omnidata-tools' ``TaskonomyMetadata``),
2. Stanford's original host ``http://downloads.cs.stanford.edu/downloads/taskonomy_data/<domain>/<building>_<domain>.tar``.

No checksums are published per tar here (omnidata-tools fetches md5s from its own index); the sha256 is
printed after download. Default subset: one building per split of the official *tiny* split
(``allensville`` train, ``collierville`` val, ``ihlen`` test); ``-o buildings=...`` cannot add files to a
download, so larger subsets are fetched by passing more tars with ``--source``.

Layout written: ``<dest>/<building>/<domain>/*.png`` and ``<dest>/splits/{train,val,test}.txt`` (buildings).
Encodings (kept as published): depth in 1/512 m as 16-bit PNG, 65535 = no depth; normals 8-bit RGB centred
on 127.5; edge_texture 16-bit; segment_semantic 8-bit class ids (0 = unlabeled, read as ignore).
``--synthetic`` writes rendered scenes (:mod:`data_prep.scenes`) in this layout.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from . import scenes
from .extract import confined, extract
from .fetch import Mirror, RemoteFile
from .registry import DatasetSpec

__all__ = ["SPEC", "DOMAINS", "BUILDINGS", "FILES", "convert", "synthesize", "is_ready", "remote_file"]

DOMAINS = ("rgb", "segment_semantic", "depth_zbuffer", "depth_euclidean", "normal", "edge_texture")
#: the default subset: split -> buildings (from the official tiny split)
BUILDINGS = {"train": ("allensville",), "val": ("collierville",), "test": ("ihlen",)}
EPFL = "https://datasets.epfl.ch/taskonomy"
STANFORD = "http://downloads.cs.stanford.edu/downloads/taskonomy_data"


def remote_file(building: str, domain: str) -> RemoteFile:
    name = f"{building}_{domain}.tar"
    return RemoteFile(name, (Mirror(f"{EPFL}/{name}", "EPFL omnidata host"),
                             Mirror(f"{STANFORD}/{domain}/{name}", "Stanford original host")))


FILES = tuple(remote_file(b, d) for bs in BUILDINGS.values() for b in bs for d in DOMAINS)


def _domain_dir(tree: Path, domain: str) -> Path:
    for cand in [tree / domain, *sorted(p for p in tree.rglob(domain) if p.is_dir())]:
        if cand.is_dir() and any(cand.rglob(f"*domain_{domain}.png")):
            return cand
    raise ValueError(f"no {domain}/ folder with *_domain_{domain}.png files in the extracted archive")


def convert(files: dict[str, Path], dest: Path) -> None:
    """Extract each ``<building>_<domain>.tar`` into ``dest/<building>/<domain>/`` and write the splits."""
    dest = Path(dest)
    seen: dict[str, set[str]] = {}
    for name, path in sorted(files.items()):
        stem = name.removesuffix(".tar")
        domain = next((d for d in DOMAINS if stem.endswith("_" + d)), None)
        if domain is None:
            raise ValueError(f"{name}: not a <building>_<domain>.tar of the domains {', '.join(DOMAINS)}")
        building = stem[: -len(domain) - 1]
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            extract(path, tmp)
            src = _domain_dir(Path(tmp), domain)
            target = confined(dest, building, domain, what="archive name")
            target.mkdir(parents=True, exist_ok=True)
            for f in src.rglob(f"*domain_{domain}.png"):
                shutil.move(str(f), confined(target, f.name, what=f"{name} member"))
        seen.setdefault(building, set()).add(domain)
    (dest / "splits").mkdir(parents=True, exist_ok=True)
    for split, buildings in BUILDINGS.items():
        have = [b for b in buildings if b in seen]
        (dest / "splits" / f"{split}.txt").write_text("".join(f"{b}\n" for b in have))
    for b, doms in seen.items():
        missing = set(DOMAINS) - doms
        if missing:
            print(f"[data_prep] taskonomy: building {b} lacks domains {sorted(missing)}")


def synthesize(dest: Path, seed: int = 0, scale: str = "cpu", size: tuple[int, int] | None = None,
               counts: dict[str, int] | None = None) -> None:
    """Rendered scenes as Taskonomy buildings (one per split)."""
    scenes.write_taskonomy(dest, seed=seed, scale=scale, size=size, counts=counts)


def is_ready(dest: Path) -> bool:
    dest = Path(dest)
    return (dest / "splits" / "train.txt").is_file() and any(dest.glob("*/rgb/*.png"))


SPEC = DatasetSpec(
    name="taskonomy",
    summary="Taskonomy subset: rgb, segment_semantic, depth, normal, edge_texture (3 buildings of the tiny split)",
    files=FILES, convert=convert, synthesize=synthesize, is_ready=is_ready,
    homepage="https://github.com/StanfordVL/taskonomy/tree/master/data",
    notes="one tar per (building, domain); mirrors: EPFL omnidata host, Stanford host",
    options={"scale": "cpu"},
)
