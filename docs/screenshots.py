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
from playwright.sync_api import sync_playwright

OUT = Path(__file__).parent / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


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
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/ui/experiments")
        page.click("tr[data-experiment-id] a")
        page.wait_for_url(re.compile(r"/ui/experiments/[^/]+$"))
        page.screenshot(path=str(OUT / "traces.png"))
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
