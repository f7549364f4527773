"""The executed results notebook as a standalone HTML report (figures embedded, no server needed)."""
from __future__ import annotations

from pathlib import Path

from ..config import Config

__all__ = ["ResultsConfig", "export_html"]


class ResultsConfig(Config):
    """Notebook 06's settings (its ``parameters`` cell uses the same names)."""

    runs: str = ""          # run root to read; "" = the root this notebook writes into (the suite's --out)
    benchmarks: str = ""    # path of benchmarks/results.json; "" = the repository's benchmarks/results.json
    explorer: bool = True   # show the interactive explorer at the end


def export_html(executed_notebook: str | Path, dest: str | Path, exclude_input: bool = False) -> Path:
    """Convert an executed notebook to one self-contained HTML file at ``dest`` and return its path.

    Images are embedded as data URIs by nbconvert's ``HTMLExporter`` (its ``embed_images`` also inlines
    markdown images), so the file can be mailed or opened offline. ``exclude_input=True`` hides the code.
    """
    import nbformat
    from nbconvert import HTMLExporter

    src = Path(executed_notebook)
    if not src.is_file():
        raise FileNotFoundError(f"executed notebook not found: {src}")
    nb = nbformat.read(str(src), as_version=4)
    exporter = HTMLExporter(template_name="lab", embed_images=True, exclude_input=exclude_input)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": src.stem}})
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(body, encoding="utf-8")
    return dest
