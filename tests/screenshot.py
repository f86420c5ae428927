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

from browser import DigitPage, launch, stroke_with_mouse  # noqa: E402
from conftest import REPO, SHARED_DATA, ServerProcess  # noqa: E402

from livedigit import pendigits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start one")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png")
    parser.add_argument("--label", type=int, default=3, help="which digit to draw")
    parser.add_argument("--scheme", choices=["light", "dark"], default="light")
    args = parser.parse_args()

    digits = [d for d in pendigits.load(SHARED_DATA / "pen_digits.jsonl", "test") if d.label == args.label]
    digit = max(digits[:40], key=lambda d: sum(len(s) for s in d.strokes))
    server = None
    if args.url is None:
        server = ServerProcess().start(Path(tempfile.mkdtemp()))
    url = args.url or server.http_url
    try:
        with sync_playwright() as playwright:
            browser = launch(playwright)
            context = browser.new_context(viewport={"width": 1200, "height": 860}, device_scale_factor=1,
                                          color_scheme=args.scheme)
            page = DigitPage(context.new_page()).open(url)
            page.page.wait_for_selector("#model-facts .fact")
            strokes = page.fit(digit.strokes, fill=0.66)
            first = strokes[0]
            cut = max(2, int(len(first) * 0.8)) if len(strokes) == 1 else len(first)
            stroke_with_mouse(page.page, first[:cut], release=len(strokes) > 1)
            for stroke in strokes[1:-1]:
                stroke_with_mouse(page.page, stroke)
            if len(strokes) > 1:
                last = strokes[-1]
                stroke_with_mouse(page.page, last[: max(2, len(last) // 2)], release=False)
            page.wait_for_state("live")
            page.page.wait_for_timeout(400)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.page.screenshot(path=str(args.out))
            print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
            browser.close()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
