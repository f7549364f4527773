"""The explorer in a real browser: Voila serves it on localhost, headless Debian chromium drives it.

Checks that the controls and the plot image are on the page, changes the metric dropdown, waits for the plot
to change, and saves ``test-artifacts/explorer.png`` at the repository root. Skips only when
``/usr/bin/chromium`` is missing (``apt-get install chromium``; never ``playwright install``).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from viz_fake_runs import make_fake_runs

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                       "(apt-get install -y chromium); Playwright must not download its own browser here"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"voila did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def voila_explorer(tmp_path):
    """Serve a one-cell explorer notebook over fake runs with Voila; yield its URL; always stop the server."""
    runs = make_fake_runs(tmp_path / "runs", seeds=2, steps=12)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        f"from nbmodule import viz\nviz.explore({str(runs)!r}, study='04_maml_sampling')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book = tmp_path / "explorer.ipynb"
    nbformat.write(nb, book)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1",
               # this environment's kernelspec, whatever user-level python3 kernelspec may exist
               JUPYTER_PATH=os.pathsep.join([str(Path(sys.prefix) / "share" / "jupyter"),
                                             os.environ.get("JUPYTER_PATH", "")]).strip(os.pathsep))
    log = tmp_path / "voila.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voila", str(book), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
             "--show_tracebacks=True"],
            cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, proc, log, timeout=60)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_explorer_renders_and_reacts_in_chromium(voila_explorer):
    from playwright.sync_api import sync_playwright

    url, log = voila_explorer
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1100})
            page.set_default_timeout(90_000)
            page.goto(url, wait_until="domcontentloaded")
            try:
                page.wait_for_selector(".nbm-explorer .nbm-plot img, .nbm-explorer img.nbm-plot", state="visible")
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "explorer-failed.png"), full_page=True)
                raise AssertionError(f"the explorer did not render; voila log:\n{log.read_text()[-3000:]}")
            for control in ("study", "metric", "x", "runs", "smoothing", "logy"):
                assert page.locator(f".nbm-{control}").count() == 1, f"control {control!r} missing from the page"
            img = page.locator(".nbm-plot img, img.nbm-plot").first
            page.wait_for_function("el => el.naturalWidth > 100", arg=img.element_handle())
            before = img.get_attribute("src")
            table_before = page.locator("div.nbm-table").inner_text()
            assert "test_mse_1step" in table_before and "uniform" in table_before

            page.locator(".nbm-metric select").select_option(label="train: train_loss")
            page.wait_for_function("([el, old]) => el.src !== old && el.naturalWidth > 100",
                                   arg=[img.element_handle(), before])
            page.wait_for_function("el => el.innerText.includes('train_loss')",
                                   arg=page.locator("div.nbm-table").element_handle())
            assert img.get_attribute("src") != before
            assert "train_loss" in page.locator("div.nbm-table").inner_text()
            page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "explorer.png").stat().st_size > 10_000
