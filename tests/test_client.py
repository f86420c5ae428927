"""The Python client and ``livedigit predict`` against a real server on a loopback port."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageDraw

from livedigit import cli
from livedigit.bench.served import free_port
from livedigit.bench.workload import drawing
from livedigit.client import (
    ConnectionClosed,
    Dropped,
    Empty,
    LiveDigit,
    LiveDigitClient,
    LiveDigitError,
    Prediction,
    ServerError,
)
from livedigit.config import DEFAULT_MODEL
from livedigit.preprocess import Pixels, Strokes, pen_path, preprocess
from livedigit.runtime import load_runtime
from livedigit.verdict import card_rule

REPO = Path(__file__).resolve().parent.parent

SEVEN = [[[20.0, 20.0], [120.0, 20.0], [70.0, 160.0]]]
"""A 7 drawn as one polyline, screen coordinates."""


def raster(strokes: list, side: int = 200) -> np.ndarray:
    """The strokes drawn white-on-black into a uint8 square (ink high), as a canvas would hold them."""
    points = np.concatenate([np.asarray(stroke, dtype=float) for stroke in strokes])
    low, extent = points.min(axis=0), float((points.max(axis=0) - points.min(axis=0)).max())
    canvas = PILImage.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in strokes:
        xy = [tuple((np.asarray(p) - low) / extent * (side * 0.8) + side * 0.1) for p in stroke]
        draw.line(xy, fill=255, width=max(2, side // 14), joint="curve")
    return np.asarray(canvas)


def png_bytes(ink: np.ndarray) -> bytes:
    """A dark-ink-on-white PNG of ``ink``, the way a canvas export looks."""
    buffer = io.BytesIO()
    PILImage.fromarray(255 - ink).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model():
    return load_runtime(DEFAULT_MODEL)


def expected(model, image) -> np.ndarray:
    """The probabilities the shipped model gives ``image`` in this process, through the same preprocessing
    and the same calibration as the server."""
    return card_rule(DEFAULT_MODEL).calibrate(model.predict(preprocess(image)[None], pen_path(image)[None]))[0]


async def test_predict_numpy_png_and_strokes_match_the_model(server, model, pen_test):
    digit = pen_test[0]
    ink = raster(digit.strokes)
    async with LiveDigitClient(server.ws_url) as client:
        assert client.hello["protocol"] == 1
        from_uint8 = await client.predict(ink)
        from_float = await client.predict(ink.astype(np.float32) / 255.0)
        async with LiveDigitClient(server.ws_url, binary=False) as json_client:
            from_json = await json_client.predict(Pixels(ink))
        from_png = await client.predict(png_bytes(ink))
        from_strokes = await client.predict(digit.strokes)
    for result in (from_uint8, from_float, from_json, from_png, from_strokes):
        assert isinstance(result, Prediction)
        assert result.final is True
        assert result.digit == int(np.argmax(result.probabilities))
        assert result.confidence == pytest.approx(max(result.probabilities))
        assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-3)
    raster_expected = expected(model, Pixels(ink))
    for result in (from_uint8, from_float, from_json):
        np.testing.assert_allclose(result.probabilities, raster_expected, atol=1e-3)
    np.testing.assert_allclose(from_png.probabilities, raster_expected, atol=2e-2)
    np.testing.assert_allclose(from_strokes.probabilities, expected(model, Strokes(digit.strokes)), atol=1e-3)


async def test_predict_png_file_and_preview(server, tmp_path):
    path = tmp_path / "seven.png"
    path.write_bytes(png_bytes(raster(SEVEN)))
    async with LiveDigitClient(server.ws_url) as client:
        by_path = await client.predict(path)
        by_name = await client.predict(str(path))
        with_preview = await client.predict(path, preview=True)
    assert isinstance(by_path, Prediction) and by_path.probabilities == by_name.probabilities
    assert with_preview.preview is not None and with_preview.preview.shape == (28, 28)
    assert with_preview.preview.max() > 128 and with_preview.preview[0, 0] == 0


async def test_no_ink_and_a_dot_are_empty(server):
    async with LiveDigitClient(server.ws_url) as client:
        assert isinstance(await client.predict(np.zeros((50, 50), np.uint8)), Empty)
        assert isinstance(await client.predict([[[10, 10]]]), Empty)
        assert isinstance(await client.snapshot([[[10, 10]]]), Empty)


async def test_snapshot_stream_yields_one_ordered_reply_per_frame(server, pen_test):
    digit = pen_test[1]
    frames = drawing(digit, points=4).frames
    async with LiveDigitClient(server.ws_url) as client:
        replies = [reply async for reply in client.stream(frames, rate=20)]
        single = await client.snapshot(digit.strokes)
    assert len(replies) == len(frames)
    ids = [reply.id for reply in replies]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(isinstance(reply, (Prediction, Empty, Dropped)) for reply in replies)
    assert all(reply.final is False for reply in replies if not isinstance(reply, Dropped))
    assert isinstance(replies[-1], Prediction)
    assert isinstance(single, Prediction) and single.final is False


async def test_a_burst_of_snapshots_is_answered_latest_wins(server, pen_test):
    """Sent without waiting, older snapshots may be dropped as stale; the newest is always predicted."""
    frames = [pen_test[2].strokes] * 25
    async with LiveDigitClient(server.ws_url) as client:
        replies = await asyncio.gather(*[client.send_snapshot(frame) for frame in frames])
    assert len(replies) == 25
    assert isinstance(replies[-1], Prediction)
    assert all(reply.reason == "stale" for reply in replies if isinstance(reply, Dropped))


async def test_server_error_raises_with_its_code_and_the_connection_stays_usable(server):
    async with LiveDigitClient(server.ws_url) as client:
        with pytest.raises(ServerError) as too_wide:
            await client.predict(np.zeros((2, 2000), np.uint8))
        with pytest.raises(ServerError) as too_many:
            await client.snapshot([[[i, 0], [i, 10]] for i in range(100)])
        assert isinstance(await client.predict(SEVEN), Prediction)
        assert await client.ping() > 0
    assert too_wide.value.code == "bad_image" and "1024" in too_wide.value.message
    assert too_many.value.code == "bad_image" and too_many.value.request_id is not None


async def test_a_message_over_the_servers_limit_is_refused_before_sending(start_server):
    server = start_server("--max-message-bytes", "2048")
    async with LiveDigitClient(server.ws_url) as client:
        with pytest.raises(LiveDigitError, match="at most 2048"):
            await client.predict(np.zeros((100, 100), np.uint8))
        assert isinstance(await client.predict(SEVEN), Prediction)


async def test_server_shutdown_raises_connection_closed(start_server):
    server = start_server()
    async with LiveDigitClient(server.ws_url) as client:
        assert isinstance(await client.predict(SEVEN), Prediction)
        await asyncio.to_thread(server.stop)
        with pytest.raises(ConnectionClosed) as closed:
            await client.predict(SEVEN)
    assert closed.value.code == 1001
    assert closed.value.retryable


async def test_connecting_to_nothing_raises_connection_closed(start_server):
    with pytest.raises(ConnectionClosed) as refused:
        async with LiveDigitClient(f"ws://127.0.0.1:{free_port()}/ws"):
            pass
    assert refused.value.code is None and "cannot connect" in str(refused.value)


@pytest.mark.slow
async def test_reconnect_survives_a_server_restart(start_server):
    server = start_server()
    client = LiveDigitClient(server.ws_url, reconnect=True, retries=40, backoff=0.1, max_backoff=1.0)
    async with client:
        assert isinstance(await client.predict(SEVEN), Prediction)
        await asyncio.to_thread(server.stop)
        waiting = asyncio.ensure_future(client.predict(SEVEN))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await asyncio.to_thread(start_server, port=server.port)
        assert isinstance(await asyncio.wait_for(waiting, 60), Prediction)
        assert isinstance(await client.snapshot(SEVEN), Prediction)
        assert client.connects == 2


def test_sync_wrapper(server, tmp_path):
    with LiveDigit(server.http_url) as client:
        assert client.hello["type"] == "hello"
        result = client.predict(raster(SEVEN))
        assert isinstance(result, Prediction) and result.final
        assert isinstance(client.snapshot(SEVEN), Prediction)
        assert client.ping() > 0
        with pytest.raises(ServerError) as error:
            client.predict(np.zeros((2000, 1), np.uint8))
        assert error.value.code == "bad_image"
    with pytest.raises(ConnectionClosed):
        client.predict(SEVEN)


@pytest.fixture
def files(tmp_path, pen_test):
    """Two readable digits (PNG and .npy), and three files that cannot be predicted."""
    good_png = tmp_path / "seven.png"
    good_png.write_bytes(png_bytes(raster(SEVEN)))
    good_npy = tmp_path / "pen.npy"
    np.save(good_npy, raster(pen_test[3].strokes).astype(np.float32) / 255.0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    wrong_type = tmp_path / "notes.txt"
    wrong_type.write_text("7")
    return {
        "good": [str(good_png), str(good_npy)],
        "bad": [str(broken), str(wrong_type), str(tmp_path / "missing.png")],
    }


def test_predict_command_locally(files, capsys):
    assert cli.main(["predict", *files["good"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == files["good"]
    for line in lines:
        _, digit, confidence, verdict = line.split("\t")
        assert 0 <= int(digit) <= 9 and 0.0 < float(confidence) <= 1.0
        assert verdict in ("digit", "unsure", "not_a_digit")


def test_predict_command_json_local_and_through_the_server_agree(server, files, capsys):
    assert cli.main(["predict", "--json", *files["good"]]) == 0
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cli.main(["predict", "--json", "--url", server.ws_url, *files["good"]]) == 0
    remote = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [item["file"] for item in local] == [item["file"] for item in remote] == files["good"]
    for here, there in zip(local, remote, strict=True):
        assert here["type"] == there["type"] == "prediction"
        assert here["digit"] == there["digit"] and here["verdict"] == there["verdict"]
        np.testing.assert_allclose(here["probabilities"], there["probabilities"], atol=1e-3)


@pytest.mark.parametrize("where", ["local", "url"])
def test_predict_command_reports_bad_files_and_goes_on(server, files, capsys, where):
    url = ["--url", server.ws_url] if where == "url" else []
    mixed = [files["bad"][0], files["good"][0], files["bad"][1], files["bad"][2], files["good"][1]]
    assert cli.main(["predict", "--json", *url, *mixed]) == 1
    captured = capsys.readouterr()
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert [item["file"] for item in results] == mixed
    assert [item["type"] for item in results] == ["error", "prediction", "error", "error", "prediction"]
    codes = {item["file"]: item["code"] for item in results if item["type"] == "error"}
    assert codes == {files["bad"][0]: "bad_image", files["bad"][1]: "bad_image", files["bad"][2]: "unreadable"}
    for path in files["bad"]:
        assert path in captured.err
    assert ".txt" in captured.err and "PNG" in captured.err


def test_predict_command_without_a_server_fails_clearly(files, capsys):
    assert cli.main(["predict", "--url", f"ws://127.0.0.1:{free_port()}/ws", *files["good"]]) == 2
    assert "cannot connect" in capsys.readouterr().err


def test_livedigit_predict_entry_point(server, files):
    done = subprocess.run(
        [sys.executable, "-m", "livedigit", "predict", "--url", server.http_url, *files["good"]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == files["good"]


async def test_predict_many_answers_in_order_with_each_images_own_error(server, model, pen_test, tmp_path):
    """Rasters, strokes, a PNG path, a blank, an image the server refuses and one the client cannot
    read, in one call: a result per image, in order, each what predict() gives that image alone."""
    missing = tmp_path / "missing.png"
    ink = [raster(digit.strokes) for digit in pen_test[:70]]
    images: list = [
        *ink[:3],
        pen_test[5].strokes,
        np.zeros((28, 28), np.uint8),
        np.zeros((2, 2000), np.uint8),
        missing,
        png_bytes(ink[3]),
        *ink[3:],
    ]
    async with LiveDigitClient(server.ws_url) as client:
        results = await client.predict_many(images)
        alone = [await client.predict(image) for image in images[:5]]
    assert len(results) == len(images)
    assert [type(result).__name__ for result in results[:8]] == [
        "Prediction", "Prediction", "Prediction", "Prediction", "Empty", "ServerError", "ServerError", "Prediction",
    ]  # fmt: skip
    assert results[5].code == "bad_image" and "1024" in results[5].message
    assert results[6].code == "unreadable"
    for got, single in zip(results[:5], alone, strict=True):
        assert type(got) is type(single) and getattr(got, "digit", None) == getattr(single, "digit", None)
    for got, image in zip(results[8:], ink[3:], strict=True):
        np.testing.assert_allclose(got.probabilities, expected(model, Pixels(image)), atol=1e-3)


async def test_predict_many_stays_within_the_announced_limits_and_waits_when_refused(start_server):
    """A server that lets one client queue only 5 images and counts every submit beyond 2 a second as
    over its rate (busy_queue_share 0): the client packs 3-image messages (never more than 5 unanswered),
    sends the refused ones again after the hinted wait, and every image gets its prediction in order."""
    server = start_server(
        "--max-pending-submits", "10", "--client-queue-share", "0.5", "--max-batch-items", "3",
        "--busy-queue-share", "0", "--submit-rate", "20", "--submit-burst", "2",
    )  # fmt: skip
    digits = [np.rot90(raster(SEVEN), k % 2).copy() for k in range(12)]
    async with LiveDigitClient(server.ws_url) as client:
        started = asyncio.get_running_loop().time()
        results = await client.predict_many(digits)
        elapsed = asyncio.get_running_loop().time() - started
    assert all(isinstance(result, Prediction) for result in results)
    assert [result.digit for result in results] == [results[0].digit, results[1].digit] * 6
    metrics = await asyncio.to_thread(scrape_metrics, server.http_url)
    assert metrics.get('livedigit_errors_total{code="rate_limited"}', 0) > 0  # refused, then sent again
    assert metrics.get('livedigit_errors_total{code="overloaded"}', 0) == 0  # never over its queue share
    assert elapsed > (12 - 2) / 20 * 0.5  # the refused ones waited for the bucket


def scrape_metrics(http_url: str) -> dict[str, float]:
    from hardutil import scrape

    return scrape(http_url)


def test_predict_many_sync_and_progress_only_when_asked(server, capsys):
    images = [raster(SEVEN)] * 5
    with LiveDigit(server.ws_url) as client:
        quiet = client.predict_many(images)
        assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bar
        shown = client.predict_many(images, progress=True)
    assert all(isinstance(result, Prediction) for result in quiet + shown)
    assert "5/5" in capsys.readouterr().err


def test_predict_command_on_a_folder_through_the_server(server, files, tmp_path, capsys):
    folder = tmp_path / "digits"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.png").write_bytes(png_bytes(raster(SEVEN)))
    (folder / "nested" / "b.npy").write_bytes(Path(files["good"][1]).read_bytes())
    (folder / "notes.txt").write_text("not an image")
    assert cli.main(["predict", "--json", "--url", server.ws_url, str(folder)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(folder / "a.png"), str(folder / "nested" / "b.npy")]
    assert all(line["type"] == "prediction" for line in lines)
    assert cli.main(["predict", str(tmp_path / "digits" / "nested" / "none")]) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["predict", str(empty)]) == 2
    assert "no .png or .npy files" in capsys.readouterr().err
