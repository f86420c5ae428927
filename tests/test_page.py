"""The drawing page end to end: Debian's chromium, driven by Playwright, against a real server.

Digits are real pen trajectories from the pen-digits test split, drawn with the mouse or a finger onto
the canvas, so the whole path a person exercises runs: pointer events, stroke capture, the WebSocket,
preprocessing, the model, and the page's rendering of the replies.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import re
import signal
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from browser import CHROMIUM, DigitPage, draw_with_mouse, draw_with_touch, launch, stroke_with_mouse
from labelutil import exported
from playwright.sync_api import Browser, Page, WebSocketRoute, sync_playwright

from livedigit.labels import database
from livedigit.pendigits import PenDigit
from livedigit.preprocess import Strokes, preprocess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CONNECTION_REFUSED = re.compile(r"WebSocket connection to '.*' failed")
"""What chromium logs for each reconnect attempt while a server is down: expected during a restart."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found: the browser tests drive Debian's chromium (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., DigitPage]]:
    """Factory: ``open_page(url, **context_options)`` opens the page and waits until it is connected.

    After the test, every page must have logged no console error, thrown nothing and broken no rule of
    the Content-Security-Policy (a reconnecting page's refused connection attempts excepted)."""
    contexts = []
    pages: list[DigitPage] = []

    def open_(
        url: str,
        allow: Callable[[str], bool] = lambda text: False,
        setup: Callable[[Page], None] = lambda page: None,
        **options,
    ) -> DigitPage:
        context = browser.new_context(**{"viewport": {"width": 1100, "height": 900}, **options})
        contexts.append(context)
        page = DigitPage(context.new_page(), allow)
        pages.append(page)
        setup(page.page)
        return page.open(url)

    yield open_
    problems = [problem for page in pages for problem in page.problems()]
    for context in contexts:
        context.close()
    assert problems == [], f"the page reported problems: {problems}"


@pytest.fixture(scope="module")
def samples(pen_test: list[PenDigit]) -> list[PenDigit]:
    """Twenty digits, two per class, from different writers: the first and third quartiles of each class."""
    by_class: dict[int, list[PenDigit]] = {}
    for digit in pen_test:
        by_class.setdefault(digit.label, []).append(digit)
    return [group[len(group) * q // 4] for label, group in sorted(by_class.items()) for q in (1, 3)]


def two_stroke_digit(pen_test: list[PenDigit], label: int) -> PenDigit:
    return next(d for d in pen_test if d.label == label and len(d.strokes) == 2 and min(map(len, d.strokes)) >= 4)


def origin(page: DigitPage) -> tuple[float, float]:
    """The canvas's top-left corner in page coordinates."""
    box = page.canvas_box()
    return box["x"], box["y"]


class SlowNetwork:
    """Routes the page's WebSocket through Playwright to the real server and holds back the server
    messages ``hold`` picks until :meth:`release`: replies that are late, or arrive out of order."""

    def __init__(self, hold: Callable[[dict], bool] = lambda message: False) -> None:
        self.hold = hold
        self.held: list[str] = []
        self.delivered: list[dict] = []
        self.sent: list[dict] = []
        """What the page sent, in order."""
        self.routes: list[WebSocketRoute] = []

    def install(self, page: Page) -> None:
        page.route_web_socket(re.compile(r"/ws$"), self._route)

    def _route(self, socket: WebSocketRoute) -> None:
        self.routes.append(socket)
        upstream = socket.connect_to_server()

        def from_server(message: str | bytes) -> None:
            parsed = json.loads(message)
            if self.hold(parsed):
                self.held.append(message)
                return
            self.delivered.append(parsed)
            socket.send(message)

        def from_page(message: str | bytes) -> None:
            self.sent.append(json.loads(message))
            upstream.send(message)

        upstream.on_message(from_server)
        socket.on_message(from_page)

    def release(self) -> None:
        for message in self.held:
            self.routes[-1].send(message)
        self.held.clear()


def wait_until(page: Page, condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a Python-side condition while letting Playwright deliver events (frames, console)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        page.wait_for_timeout(25)


def test_page_is_served_with_a_strict_csp_and_describes_the_model(server, open_page) -> None:
    page = open_page(server.http_url)
    response = page.page.request.get(server.http_url + "/")
    policy = response.headers.get("content-security-policy", "")
    assert "script-src" in policy or "default-src" in policy, f"no Content-Security-Policy: {response.headers}"
    assert "unsafe-inline" not in policy
    assert page.page.locator("#status-text").inner_text() == "Connected"
    model = page.page.request.get(server.http_url + "/api/model").json()
    page.page.wait_for_selector("#model-facts .fact")
    facts = page.page.locator("#model-facts").inner_text()
    assert model["name"] in facts
    assert page.page.locator("#pad").get_attribute("aria-label")
    assert page.page.locator("#announcer").get_attribute("aria-live") == "polite"
    for control in ("Undo", "Clear", "Submit"):
        assert page.page.get_by_role("button", name=control).count() == 1


def test_empty_canvas_sends_no_request(server, open_page) -> None:
    page = open_page(server.http_url)
    page.page.keyboard.press("Escape")
    page.page.keyboard.press("Control+z")
    page.page.keyboard.press("Enter")
    page.page.click("#submit")
    page.page.wait_for_timeout(300)
    assert page.watch.requests() == []
    assert page.state == "idle"
    assert page.bars() == [0.0] * 10
    assert "Draw a digit first" in page.page.locator("#message").inner_text()


RECORD_SEND_TIMES = """
window.sendTimes = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (typeof data === "string" && data.includes('"snapshot"')) { window.sendTimes.push(performance.now()); }
  return send.call(this, data);
};
"""


def test_bars_follow_the_pen_before_submit(server, open_page, samples) -> None:
    page = open_page(server.http_url, setup=lambda raw: raw.add_init_script(RECORD_SEND_TIMES))
    box = page.canvas_box()
    stroke = page.fit(samples[6].strokes)[0]  # a 3, one long stroke
    half = len(stroke) // 2
    stroke_with_mouse(page.page, stroke[:half], pause_ms=15, release=False)
    page.wait_for_state("live")  # the pen is still down: the guess came from a live snapshot

    # The bars show the latest prediction: wait until every snapshot sent so far is answered. A reply
    # may release the drawing the page held back meanwhile (one snapshot unanswered at a time), so wait
    # again after that one has had time to go out: the pen is still, so nothing follows it.
    def all_answered() -> bool:
        return len(page.watch.replies()) == sum(m["type"] != "ping" for m in page.watch.sent)

    wait_until(page.page, all_answered, what="a reply to every snapshot sent")
    page.page.wait_for_timeout(300)
    wait_until(page.page, all_answered, what="a reply to the snapshot held back, if any")
    snapshots = [m for m in page.watch.sent if m["type"] == "snapshot"]
    assert snapshots and all(m["preview"] is True and len(m["surface"]) == 2 for m in snapshots)
    live = page.watch.replies("prediction")[-1]
    assert live["final"] is False
    page.wait_for_bars(live["probabilities"])
    assert abs(sum(page.bars()) - 1.0) < 0.01
    assert page.page.evaluate(
        "() => { const c = document.querySelector('#preview');"
        " return c.getContext('2d').getImageData(0, 0, 28, 28).data.some((v, i) => i % 4 === 0 && v > 0); }"
    ), "the preview of the model input stays black"
    for point in stroke[half:]:
        page.page.mouse.move(*point)
        page.page.wait_for_timeout(5)
    moving = page.page.evaluate("window.sendTimes")
    page.page.mouse.up()
    # Lifting the pen always sends the finished stroke, its last point included.
    end = [stroke[-1][0] - box["x"], stroke[-1][1] - box["y"]]
    wait_until(
        page.page,
        lambda: (
            page.watch.sent[-1]["type"] == "snapshot"
            and page.watch.sent[-1]["strokes"][0][-1] == pytest.approx(end, abs=1.0)
        ),
        what="the snapshot sent when the pen lifts",
    )
    gaps = [later - earlier for earlier, later in itertools.pairwise(moving)]
    assert len(moving) >= 3 and min(gaps) >= 55, f"snapshots while moving came too close: {gaps}"
    page.page.keyboard.press("Enter")
    page.wait_for_state("final")
    final = page.watch.replies("prediction")[-1]
    assert final["final"] is True and page.digit == final["digit"]
    confidence = f"{math.floor(final['confidence'] * 100 + 0.5)}%"
    assert confidence in page.page.locator("#answer-detail").inner_text()
    page.page.wait_for_function(
        "(text) => document.querySelector('#announcer').textContent.includes(text)", arg=confidence
    )  # the polite live region tells screen-reader users the answer


def test_submit_recognises_most_pen_digits(server, open_page, samples) -> None:
    page = open_page(server.http_url)
    answers = []
    for digit in samples:
        page.draw(digit.strokes)
        answers.append((digit.label, page.submit()))
        page.page.keyboard.press("Escape")
        page.wait_for_state("idle")
    finals = [m for m in page.watch.replies() if m.get("final")]
    assert [m["digit"] for m in finals] == [answer for _, answer in answers]
    # What the page sent is the digit as written: the model input matches the pen trajectory's own.
    for digit, final in zip(samples, finals, strict=True):
        seen = np.frombuffer(base64.b64decode(final["preview"]), dtype=np.uint8).reshape(28, 28) / 255.0
        expected = preprocess(Strokes(digit.strokes))
        assert shifted_distance(seen, expected) < 0.03, f"the model saw a different {digit.label}"
    right = sum(label == answer for label, answer in answers)
    assert right >= 17, f"only {right}/20 right: {answers}"


HANDWRITTEN_H = [[[-5, -12], [-5, 9]], [[-5, -1], [-2, -4], [0, -5], [3, -5], [5, -4], [6, -1], [6, 9]]]
"""A lowercase h as the Hershey simplex font draws it: a letter unlike any digit, and one the shipped
model answers not_a_digit for however large it is drawn (rejection score 0.1000, threshold 0.1048)."""

ONE_OR_NINE = 1265
"""A pen-digits test 9: the shipped model's top two are a 9 and a 1, 0.0-0.27 apart (under the 0.5 margin)
at any size and rounding of its points, and its rejection score (0.112) is above the threshold (0.1048):
unsure."""


def test_the_answer_says_when_the_model_is_unsure_or_sees_no_digit(server, open_page, samples, pen_test) -> None:
    """A clear digit is named; two digits too close to call are both named; a letter is not called a digit.
    The ten bars show the probabilities in every case."""
    page = open_page(server.http_url)
    shown = []
    for strokes in (samples[6].strokes, HANDWRITTEN_H, pen_test[ONE_OR_NINE].strokes):
        page.draw(strokes)
        page.submit()
        final = page.watch.replies("prediction")[-1]
        assert final["final"] is True and page.verdict == final["verdict"]
        page.wait_for_bars(final["probabilities"])
        assert abs(sum(page.bars()) - 1.0) < 0.01
        shown.append((final, page.answer()))
        page.clear()
        page.wait_for_state("idle")
        assert page.verdict is None
    (digit, digit_shown), (letter, letter_shown), (close, close_shown) = shown
    assert digit["verdict"] == "digit" and digit_shown[:2] == ("3", "It's a 3")
    assert letter["verdict"] == "not_a_digit"
    assert letter_shown[:2] == ("?", "That doesn't look like a digit")
    assert f"Closest is {letter['digit']}" in letter_shown[2]
    assert close["verdict"] == "unsure" and sorted(close["candidates"]) == [1, 9]
    first, second = close["candidates"]
    doubt = f"Not sure: a {first} or a {second}?"
    assert close_shown[:2] == (str(first), doubt)
    page.page.wait_for_function(
        f"() => document.querySelector('#announcer').textContent.startsWith({doubt!r})"
    )  # the final answer is announced with its doubt


def test_touch_draws_without_scrolling_the_page(server, open_page, samples) -> None:
    page = open_page(
        server.http_url, viewport={"width": 390, "height": 700}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page.page.evaluate(
        "() => { window.pointerTypes = []; document.querySelector('#pad').addEventListener('pointerdown',"
        " (event) => window.pointerTypes.push(event.pointerType)); }"
    )
    assert page.page.evaluate("document.documentElement.scrollHeight > innerHeight"), "the page cannot scroll"
    cdp = page.page.context.new_cdp_session(page.page)
    digit = samples[14]  # a 7
    draw_with_touch(cdp, page.fit(digit.strokes))
    page.wait_for_state("live")
    assert set(page.page.evaluate("window.pointerTypes")) == {"touch"}
    assert page.page.evaluate("scrollY") == 0, "drawing scrolled the page"
    sent = page.watch.sent[-1]
    assert len(sent["strokes"]) == len(digit.strokes)
    assert min(len(stroke) for stroke in sent["strokes"]) >= 3, "a touch stroke was cut short"
    page.page.tap("#submit")  # at once: a tap right after a stroke must not be swallowed as a gesture
    page.wait_for_state("final")
    assert page.digit == page.watch.replies("prediction")[-1]["digit"]
    page.page.tap("#feedback [data-label='7']")  # the label control takes a finger too
    assert page.page.get_attribute("#feedback", "data-state") == "chosen"


def test_clear_resets_and_ignores_late_replies(server, open_page, samples) -> None:
    network = SlowNetwork()
    page = open_page(server.http_url, setup=network.install)
    page.draw(samples[4].strokes)
    page.wait_for_state("live")
    page.clear()
    assert page.state == "idle" and page.bars() == [0.0] * 10
    # The canvas repaints on the next animation frame, which a busy machine may delay.
    page.page.wait_for_function(
        "() => { const c = document.querySelector('#pad');"
        " return !c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v) => v > 0); }",
        timeout=5000,
    )
    assert page.page.locator("#clear").is_disabled() and page.page.locator("#undo").is_disabled()
    # Clear while replies are still on their way: when they arrive, they describe a drawing that is gone.
    network.hold = lambda message: message.get("type") == "prediction"
    page.draw(samples[8].strokes)
    wait_until(page.page, lambda: len(network.held) > 0, what="replies in flight")
    page.page.keyboard.press("Delete")
    network.release()
    page.page.wait_for_timeout(300)
    assert page.state == "idle" and page.bars() == [0.0] * 10


def test_undo_removes_the_last_stroke_and_predicts_again(server, open_page, pen_test) -> None:
    page = open_page(server.http_url)
    digit = two_stroke_digit(pen_test, 4)
    page.draw(digit.strokes)
    wait_until(page.page, lambda: len(page.watch.replies()) == len(page.watch.requests()), what="replies")
    whole = page.watch.replies("prediction")[-1]
    page.wait_for_bars(whole["probabilities"])
    assert len(page.watch.sent[-1]["strokes"]) == 2
    sent = len(page.watch.requests())
    page.page.keyboard.press("Control+z")
    wait_until(page.page, lambda: len(page.watch.requests()) > sent, what="the snapshot after undo")
    again = page.watch.requests()[-1]
    assert again["type"] == "snapshot" and len(again["strokes"]) == 1
    wait_until(page.page, lambda: page.watch.replies()[-1]["id"] == again["id"], what="the reply after undo")
    reply = page.watch.replies()[-1]
    assert reply["type"] == "prediction"
    page.wait_for_bars(reply["probabilities"])
    assert reply["probabilities"] != whole["probabilities"]
    sent = len(page.watch.requests())
    page.page.click("#undo")
    assert page.state == "idle" and page.bars() == [0.0] * 10
    page.page.wait_for_timeout(200)
    assert len(page.watch.requests()) == sent, "undoing the last stroke sent a request for an empty canvas"


def test_server_error_is_shown_and_the_page_recovers(start_server, open_page, samples) -> None:
    server = start_server("--max-strokes", "2")
    page = open_page(server.http_url)
    page.draw(samples[0].strokes)
    page.wait_for_state("live")
    short = [[(10, 10), (40, 60)], [(60, 10), (60, 80)]]
    draw_with_mouse(page.page, [[(x + origin(page)[0], y + origin(page)[1]) for x, y in s] for s in short])
    message = page.page.locator("#message")
    message.wait_for(state="visible")
    assert message.get_attribute("role") == "alert"
    assert "strokes" in message.inner_text()
    page.page.keyboard.press("Control+z")
    message.wait_for(state="hidden")
    page.wait_for_state("live")


def test_page_survives_a_server_restart(start_server, open_page, samples) -> None:
    first = start_server()
    page = open_page(first.http_url, allow=lambda text: bool(CONNECTION_REFUSED.search(text)))
    page.draw(samples[2].strokes)  # a 1
    page.wait_for_state("live")
    first.stop(signal.SIGTERM)
    page.wait_for_status("reconnecting")
    assert "server restarting" in page.page.locator("#status-text").inner_text().lower()
    replies = len(page.watch.replies())
    start_server(port=first.port)
    page.wait_for_status("connected", timeout=30_000)
    # The page re-sends what is on the canvas: a fresh live guess without touching it.
    wait_until(
        page.page,
        lambda: len(page.watch.replies("prediction")) > 0 and len(page.watch.replies()) > replies,
        what="a prediction after reconnecting",
    )
    assert len(page.watch.sockets) >= 2
    assert page.submit() == page.watch.replies("prediction")[-1]["digit"]


def test_a_late_reply_never_replaces_a_newer_one(server, open_page, samples) -> None:
    """Even if replies arrived out of order, the page keeps the newest: here the network holds back the
    reply to the first live snapshot and hands it to the page after the final answer to the submit."""
    network = SlowNetwork()
    network.hold = lambda message: message.get("type") == "prediction" and not network.held
    page = open_page(server.http_url, setup=network.install)
    draw_with_mouse(page.page, page.fit(samples[16].strokes), pause_ms=10)  # an 8
    wait_until(page.page, lambda: bool(network.held), what="the first live reply, held")
    assert page.submit() is not None
    final = [m for m in network.delivered if m.get("type") == "prediction"][-1]
    stale = json.loads(network.held[0])
    assert final["final"] is True and stale["id"] < final["id"] and stale["probabilities"] != final["probabilities"]
    network.hold = lambda message: False
    network.release()
    page.page.wait_for_timeout(300)
    assert page.state == "final" and page.digit == final["digit"]
    assert page.bars() == pytest.approx([round(p, 4) for p in final["probabilities"]], abs=1e-3)


def test_one_live_snapshot_is_unanswered_at_a_time(server, open_page, samples) -> None:
    """While the reply to a live snapshot is late, the page sends no other; when it comes, the page sends
    the drawing as it is by then, and shows what the model makes of that one."""
    network = SlowNetwork()
    network.hold = lambda message: message.get("type") == "prediction" and not network.held
    page = open_page(server.http_url, setup=network.install)
    strokes = page.fit(samples[16].strokes)  # an 8
    draw_with_mouse(page.page, strokes, pause_ms=10)
    wait_until(page.page, lambda: bool(network.held), what="the first live reply, held")
    page.page.wait_for_timeout(500)  # several snapshot intervals: a page without the rule would send more

    def snapshots() -> list[dict]:
        return [m for m in network.sent if m["type"] == "snapshot"]

    before = snapshots()
    held = json.loads(network.held[0])
    assert before[-1]["id"] == held["id"], "a snapshot was sent while the reply to an earlier one was awaited"
    network.hold = lambda message: False
    network.release()
    wait_until(page.page, lambda: len(snapshots()) > len(before), what="the drawing sent once the late reply came")
    newest = snapshots()[-1]
    box = page.canvas_box()
    end = [strokes[-1][-1][0] - box["x"], strokes[-1][-1][1] - box["y"]]
    assert len(newest["strokes"]) == len(strokes) and newest["strokes"][-1][-1] == pytest.approx(end, abs=1.0)
    assert newest["strokes"] != before[-1]["strokes"]
    wait_until(
        page.page,
        lambda: any(m.get("id") == newest["id"] for m in network.delivered),
        what="the reply to the newest drawing",
    )
    reply = next(m for m in network.delivered if m.get("id") == newest["id"])
    page.wait_for_bars(reply["probabilities"])
    assert len(snapshots()) == len(before) + 1, "the drawing did not change, yet another snapshot was sent"


def test_a_correction_tapped_on_the_page_is_stored_with_its_label(start_server, open_page, samples, tmp_path) -> None:
    """Draw a 1, submit, tap "Wrong? It was: 7": when the drawing is cleared the label goes to the server,
    is answered ``stored`` and is in the export with label 7, the strokes the submit carried and this
    browser's id. Mistaken choices before it (a tap undone with Undo, a key undone with Ctrl+Z) send
    nothing, and nothing on the page moves while the control changes."""
    target = tmp_path / "labels" / database.SQLITE_FILE
    server = start_server("--data-dir", str(target.parent))
    page = open_page(server.http_url)
    raw = page.page
    feedback = raw.locator("#feedback")

    def state() -> str | None:
        return feedback.get_attribute("data-state")

    def bars_top() -> float:
        box = raw.locator("#bars").bounding_box()
        assert box is not None
        return box["y"]

    top = bars_top()
    assert state() == "off" and not feedback.is_visible()
    page.draw(samples[2].strokes)  # a 1
    shown = page.submit()
    submit = [message for message in page.watch.sent if message["type"] == "submit"][-1]
    assert state() == "ask" and raw.get_by_role("button", name="Right").is_enabled()
    assert "keys 0 to 9" in raw.locator("#feedback-status").inner_text()
    assert raw.locator("#feedback-status").get_attribute("aria-live") == "polite"
    assert bars_top() == top

    raw.get_by_role("button", name="It was 3").click()  # a slip of the finger...
    assert state() == "chosen" and raw.get_attribute("[data-label='3']", "aria-pressed") == "true"
    assert "it was a 3" in raw.locator("#feedback-status").inner_text() and bars_top() == top
    raw.get_by_role("button", name="Undo choice").click()  # ...undone
    assert state() == "ask" and raw.get_attribute("[data-label='3']", "aria-pressed") == "false"
    raw.locator("#pad").focus()
    raw.keyboard.press("5")
    assert state() == "chosen" and raw.get_attribute("[data-label='5']", "aria-pressed") == "true"
    raw.keyboard.press("Control+z")  # undoes the choice, not a stroke
    assert state() == "ask" and page.state == "final"

    raw.get_by_role("button", name="It was 7").click()
    assert state() == "chosen" and bars_top() == top
    raw.wait_for_timeout(200)
    assert [message for message in page.watch.sent if message["type"] == "label"] == []  # held while on screen
    raw.keyboard.press("Escape")
    raw.wait_for_selector("#feedback[data-state='saved']")
    assert "Saved: it was a 7" in raw.locator("#feedback-status").inner_text() and bars_top() == top

    labels = [message for message in page.watch.sent if message["type"] == "label"]
    assert len(labels) == 1
    sent = labels[0]
    writer = raw.evaluate("localStorage.getItem('livedigit-writer')")
    assert (sent["digit"], sent["predicted"], sent["submit_id"], sent["writer"]) == (7, shown, submit["id"], writer)
    assert sent["strokes"] == submit["strokes"] and sent["surface"] == submit["surface"]
    stored = page.watch.replies("stored")
    assert [reply["id"] for reply in stored] == [sent["id"]]
    rows = exported(str(target), tmp_path / "labels.jsonl")
    assert len(rows) == 1 and rows[0]["id"] == f"label#{stored[0]['label_id']}"
    row = rows[0]
    assert (row["label"], row["writer"], row["submit_id"]) == (7, writer, str(submit["id"]))
    assert row["strokes"] == submit["strokes"] and row["surface"] == submit["surface"]
    assert (
        row["model"]["digit"] == shown
        and row["model"]["probabilities"] == page.watch.replies("prediction")[-1]["probabilities"]
    )
    assert raw.context.cookies() == []
    raw.reload()
    page.wait_for_status("connected")
    assert raw.evaluate("localStorage.getItem('livedigit-writer')") == writer  # one id per browser


def test_a_silent_connection_is_detected_and_replaced(server, open_page) -> None:
    """A connection that stays open but answers nothing (a dead mobile link) fails the heartbeat: the page
    says so, opens a new one, and shows the round-trip time once pongs come back."""
    network = SlowNetwork(hold=lambda message: message.get("type") == "pong")
    page = open_page(server.http_url, setup=network.install)
    assert page.page.locator("#status-rtt").is_hidden()
    # Every status the page shows, as it shows it: the page reconnects at once, so the "no reply" status
    # may be gone again before a test could read it.
    page.page.evaluate(
        """() => {
            const status = document.getElementById("status"), text = document.getElementById("status-text");
            window.shown = [];
            new MutationObserver(() => window.shown.push(status.dataset.state + ": " + text.textContent))
                .observe(status, {attributes: true, childList: true, characterData: true, subtree: true});
        }"""
    )
    page.page.wait_for_function(
        "() => window.shown.some(s => s.startsWith('reconnecting') && s.toLowerCase().includes('no reply'))",
        timeout=15_000,
    )
    network.hold = lambda message: False
    page.wait_for_status("connected", timeout=15_000)
    page.page.wait_for_selector("#status-rtt:not([hidden])")
    assert re.fullmatch(r"(<1|\d+) ms", page.page.locator("#status-rtt").inner_text())
    assert len(network.routes) >= 2


def shifted_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean pixel difference, allowing a one-pixel shift: mouse positions are whole pixels, so the
    centre of mass of the page's drawing can round to the neighbouring pixel of the trajectory's."""
    return min(float(np.abs(np.roll(a, (dy, dx), axis=(0, 1)) - b).mean()) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
