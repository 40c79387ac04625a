"""Saves the response-time chart of a report as a PNG (the picture of the README and chapter 1).

    .venv/bin/python loadtest/chart_png.py results/report.html docs/images/response-time.png

Uses Debian's Chromium through Playwright, as the browser tests do.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main(report: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900}, device_scale_factor=1)
        page.goto(report.resolve().as_uri())
        page.locator('svg[data-chart="response-time"]').screenshot(path=str(out))
        browser.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
