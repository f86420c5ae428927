"""Drive the drawing page in Debian's chromium through Playwright, as a person would.

Shared by ``tests/test_page.py`` and ``tests/screenshot.py``: launching the browser, fitting pen-digit
strokes into the canvas, drawing them with a mouse or a finger (real touch input through the DevTools
protocol, which the browser turns into ``pointerType: "touch"`` pointer events), and watching the page
for console errors, CSP violations and the WebSocket frames it exchanges.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, CDPSession, ConsoleMessage, FloatRect, Page, Playwright, WebSocket

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

Point = tuple[float, float]

RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
});
"""


def launch(playwright: Playwright) -> Browser:
    """Debian's chromium, headless, with nothing reaching out to the network by itself."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)


def fit(strokes: Sequence[Sequence[Sequence[float]]], box: FloatRect, fill: float = 0.7) -> list[list[Point]]:
    """Scale and centre strokes so their longer side is ``fill`` of the canvas ``box`` (page pixels)."""
    xs = [x for stroke in strokes for x, _ in stroke]
    ys = [y for stroke in strokes for _, y in stroke]
    extent = max(max(xs) - min(xs), max(ys) - min(ys), 1e-9)
    side = min(box["width"], box["height"])
    scale = fill * side / extent
    left = box["x"] + (box["width"] - (max(xs) - min(xs)) * scale) / 2
    top = box["y"] + (box["height"] - (max(ys) - min(ys)) * scale) / 2
    return [[(left + (x - min(xs)) * scale, top + (y - min(ys)) * scale) for x, y in stroke] for stroke in strokes]


def draw_with_mouse(page: Page, strokes: Iterable[Sequence[Point]], pause_ms: float = 0) -> None:
    """Press, move through every point and release, stroke by stroke."""
    for stroke in strokes:
        stroke_with_mouse(page, stroke, pause_ms=pause_ms)


def stroke_with_mouse(page: Page, stroke: Sequence[Point], pause_ms: float = 0, release: bool = True) -> None:
    page.mouse.move(*stroke[0])
    page.mouse.down()
    for point in stroke[1:]:
        page.mouse.move(*point)
        if pause_ms:
            page.wait_for_timeout(pause_ms)
    if release:
        page.mouse.up()


def draw_with_touch(cdp: CDPSession, strokes: Iterable[Sequence[Point]]) -> None:
    """One finger per stroke: touchStart, touchMove through the points, touchEnd."""
    for stroke in strokes:
        first = stroke[0]
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [_touch(first)]})
        for point in stroke[1:]:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [_touch(point)]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def _touch(point: Point) -> dict[str, float]:
    return {"x": point[0], "y": point[1], "radiusX": 4, "radiusY": 4, "force": 1, "id": 1}


@dataclass
class Watch:
    """Everything the page logs as an error, throws, or has blocked by its Content-Security-Policy,
    and every WebSocket frame it sends and receives (text frames parsed as JSON)."""

    page: Page
    errors: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    sockets: list[WebSocket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.add_init_script(RECORD_CSP_VIOLATIONS)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on("websocket", self._socket)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _socket(self, socket: WebSocket) -> None:
        self.sockets.append(socket)
        socket.on("framesent", lambda payload: self._record(self.sent, payload))
        socket.on("framereceived", lambda payload: self._record(self.received, payload))

    @staticmethod
    def _record(into: list[dict[str, Any]], payload: str | bytes) -> None:
        if isinstance(payload, str):
            into.append(json.loads(payload))

    def requests(self) -> list[dict[str, Any]]:
        """The messages that ask the model something (everything but heartbeats)."""
        return [message for message in self.sent if message.get("type") != "ping"]

    def replies(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") not in ("hello", "pong") and kind in (None, m.get("type"))]

    def problems(self, allow: Callable[[str], bool] = lambda text: False) -> list[str]:
        """Console errors, uncaught exceptions and CSP violations, minus those ``allow`` expects."""
        violations = self.page.evaluate("window.__cspViolations || []")
        return [text for text in [*self.errors, *(f"CSP: {v}" for v in violations)] if not allow(text)]


class DigitPage:
    """The drawing page as a test sees it: what it shows, and the controls a person uses."""

    def __init__(self, page: Page, allow: Callable[[str], bool] = lambda text: False) -> None:
        self.page = page
        self.watch = Watch(page)
        self.allow = allow
        """Which console errors are expected (see :meth:`Watch.problems`)."""

    def problems(self) -> list[str]:
        return self.watch.problems(self.allow)

    def open(self, url: str) -> DigitPage:
        self.page.goto(url)
        self.wait_for_status("connected")
        return self

    def wait_for_status(self, state: str, timeout: float = 15_000) -> None:
        self.page.wait_for_selector(f"#status[data-state='{state}']", timeout=timeout)

    def canvas_box(self) -> FloatRect:
        box = self.page.locator("#pad").bounding_box()
        assert box is not None, "the canvas is not visible"
        return box

    def fit(self, strokes: Sequence[Sequence[Sequence[float]]], fill: float = 0.7) -> list[list[Point]]:
        return fit(strokes, self.canvas_box(), fill)

    def draw(self, strokes: Sequence[Sequence[Sequence[float]]], pause_ms: float = 0) -> None:
        draw_with_mouse(self.page, self.fit(strokes), pause_ms=pause_ms)

    @property
    def state(self) -> str:
        return self.page.get_attribute("#results", "data-state") or ""

    @property
    def digit(self) -> int | None:
        value = self.page.get_attribute("#results", "data-digit")
        return None if value is None else int(value)

    @property
    def verdict(self) -> str | None:
        """The verdict the panel shows (``digit``, ``unsure``, ``not_a_digit``), or ``None`` without an answer."""
        return self.page.get_attribute("#results", "data-verdict")

    def answer(self) -> tuple[str, str, str]:
        """The panel's big answer, its label and its detail, as shown."""
        digit, label, detail = (
            self.page.locator(f"#answer-{part}").inner_text() for part in ("digit", "label", "detail")
        )
        return digit, label, detail

    def bars(self) -> list[float]:
        """The ten bar heights the page shows, 0..1."""
        return self.page.evaluate(
            "[...document.querySelectorAll('#bars .bar')]"
            ".map((bar) => parseFloat(bar.style.getPropertyValue('--p') || '0'))"
        )

    def wait_for_bars(self, probabilities: Sequence[float], timeout: float = 10_000) -> None:
        """Wait until the bars show exactly these probabilities (as rendered, to 4 decimals)."""
        expected = [round(p, 4) for p in probabilities]
        self.page.wait_for_function(
            "(expected) => [...document.querySelectorAll('#bars .bar')].every((bar, i) =>"
            " Math.abs(parseFloat(bar.style.getPropertyValue('--p') || '0') - expected[i]) < 1e-3)",
            arg=expected,
            timeout=timeout,
        )

    def wait_for_state(self, state: str, timeout: float = 10_000) -> None:
        self.page.wait_for_selector(f"#results[data-state='{state}']", timeout=timeout)

    def submit(self, timeout: float = 10_000) -> int | None:
        """Press Submit and return the digit of the final answer the page shows."""
        assert self.state != "final", "the page already shows a final answer"
        self.page.click("#submit")
        self.wait_for_state("final", timeout=timeout)
        return self.digit

    def clear(self) -> None:
        self.page.click("#clear")
