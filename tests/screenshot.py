"""Write docs/screenshot.png: the page mid-drawing, a pen digit half drawn and the live bars showing.

Run from the repository root: ``.venv/bin/python tests/screenshot.py [--url http://127.0.0.1:8000]``.
Without ``--url`` it starts ``livedigit serve`` on a free loopback port and stops it afterwards. It needs
../shared/data/pen_digits.jsonl (or LIVEDIGIT_SHARED_DATA) and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser import DigitPage, launch, stroke_with_mouse
from conftest import REPO, SHARED_DATA, ServerProcess

from livedigit import pendigits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start one")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png")
    parser.add_argument("--label", type=int, default=5, help="which digit to draw")
    parser.add_argument("--index", type=int, default=1, help="which of that digit's test samples")
    parser.add_argument("--fraction", type=float, default=0.8, help="how much of the digit's points to draw")
    parser.add_argument("--scheme", choices=["light", "dark"], default="light")
    args = parser.parse_args()

    digit = [d for d in pendigits.load(SHARED_DATA / "pen_digits.jsonl", "test") if d.label == args.label][args.index]
    server = None if args.url else ServerProcess().start(Path(tempfile.mkdtemp()))
    url = args.url if server is None else server.http_url
    try:
        with sync_playwright() as playwright:
            browser = launch(playwright)
            context = browser.new_context(
                viewport={"width": 1200, "height": 860}, device_scale_factor=1, color_scheme=args.scheme
            )
            page = DigitPage(context.new_page()).open(url)
            page.page.wait_for_selector("#model-facts .fact")
            strokes = page.fit(digit.strokes, fill=0.66)
            budget = max(2, round(args.fraction * sum(len(stroke) for stroke in strokes)))
            for stroke in strokes:
                part = stroke[:budget]
                budget -= len(part)
                if len(part) >= 2:
                    stroke_with_mouse(page.page, part, release=budget > 0)
            page.wait_for_state("live")
            page.page.wait_for_timeout(400)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.page.screenshot(path=str(args.out), full_page=True)
            print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
            browser.close()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
