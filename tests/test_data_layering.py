"""data_prep is the lower layer: none of its modules imports nbmodule (nbmodule imports data_prep)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_no_data_prep_module_imports_nbmodule():
    code = (
        "import importlib, pkgutil, sys\n"
        "import data_prep\n"
        "mods = ['data_prep.' + m.name for m in pkgutil.iter_modules(data_prep.__path__)]\n"
        "for m in mods:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k == 'nbmodule' or k.startswith('nbmodule.'))\n"
        "print(len(mods), bad)\n"
        "sys.exit(1 if bad or len(mods) < 10 else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_nbmodule_reads_the_formats_data_prep_defines():
    import data_prep.formats as formats
    from nbmodule import env
    from nbmodule.data import fewshot, voc

    assert fewshot.ClassArrays is formats.ClassArrays and fewshot.save_class_arrays is formats.save_class_arrays
    assert fewshot.FORMAT == formats.FEWSHOT_FORMAT and voc.voc_palette is formats.voc_palette
    assert env.data_root is __import__("data_prep.roots").roots.data_root
