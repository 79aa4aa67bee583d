"""Screenshots of the web UI for the README, on the demo's data.

Runs `assay demo --no-serve` into a fresh SQLite store, starts `assay server` on it, and has
Playwright (Debian's Chromium) take a picture of each page into docs/screenshots/.
Run it with `make screenshots`.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, ViewportSize, sync_playwright

OUT = Path(__file__).parent / "screenshots"
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def fit_width(page: Page) -> None:
    """Widen the viewport until the page needs no horizontal scrolling (the table stops at the
    right edge of the picture, not in the middle of a column)."""
    for _ in range(5):  # a wider page may lay the table out wider again: re-measure
        width = page.viewport_size["width"] if page.viewport_size else VIEWPORT["width"]
        needed = int(page.evaluate("document.documentElement.scrollWidth"))
        if needed <= width:
            return
        page.set_viewport_size({"width": needed + 24, "height": VIEWPORT["height"]})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/demo.db"
        subprocess.run(
            [sys.executable, "-m", "assay", "demo", "--no-serve", "--store", store, "--port", "0"],
            check=True,
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "assay", "server", "--store", store, "--port", str(port),
             "--jobs-module", "assay.examples"],
        )  # fmt: skip
        try:
            for _ in range(200):
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            for n in (20, 40):
                httpx.post(f"{url}/api/v1/jobs", json={"name": "count_to", "params": {"n": n}})
            httpx.post(f"{url}/api/v1/jobs", json={"name": "add", "params": {"a": 1, "b": 2}})
            shoot(url)
        finally:
            server.terminate()
            server.wait(timeout=30)


def shoot(url: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{url}/ui/experiments")
        page.click("tr[data-experiment-id] a")
        page.wait_for_url(re.compile(r"/ui/experiments/[^/]+$"))
        page.locator("tr[data-trace-id]").first.wait_for()
        fit_width(page)  # one column per scorer: the table is wider than the default viewport
        page.screenshot(path=str(OUT / "traces.png"))
        page.set_viewport_size(VIEWPORT)
        experiment_url = page.url
        page.click("tr[data-trace-id] a")
        page.wait_for_url(re.compile(r"/ui/traces/"))
        page.screenshot(path=str(OUT / "trace.png"), full_page=True)
        page.goto(f"{experiment_url}/scorers")
        page.screenshot(path=str(OUT / "scorers.png"), full_page=True)
        page.goto(f"{url}/ui/jobs")
        page.wait_for_timeout(1500)  # let count_to make progress
        page.screenshot(path=str(OUT / "jobs.png"))
        page.click("tr[data-job-id] a")
        page.wait_for_url(re.compile(r"/ui/jobs/"))
        page.wait_for_timeout(1200)
        page.screenshot(path=str(OUT / "job.png"))
        browser.close()
    print(f"screenshots in {OUT}")


if __name__ == "__main__":
    main()
