"""End to end: real pen trajectories sent as strokes over /ws are recognised exactly as offline: the
model's probabilities, calibrated and judged by the rule in its card."""

from __future__ import annotations

import json

import numpy as np
import pytest
from modelutil import raw_outputs
from wsutil import open_ws, replies

from livedigit.config import DEFAULT_MODEL
from livedigit.preprocess import Strokes
from livedigit.verdict import card_rule

SAMPLE = 300


@pytest.mark.slow
async def test_pen_digits_over_the_websocket_match_offline_predictions(  # type: ignore[no-untyped-def]
    app_server, pen_test, model_runtime
) -> None:
    digits = pen_test[:: max(1, len(pen_test) // SAMPLE)][:SAMPLE]
    live = app_server(submit_rate=0)
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        for index, digit in enumerate(digits):
            await ws.send(json.dumps({"type": "submit", "id": index, "strokes": digit.strokes}))
        answers = await replies(ws, len(digits))
    assert [a["id"] for a in answers] == list(range(len(digits)))
    assert all(a["type"] == "prediction" for a in answers)
    raw = raw_outputs(model_runtime, [Strokes(d.strokes) for d in digits])
    offline, verdicts = card_rule(DEFAULT_MODEL).judge(raw)
    served = np.array([a["probabilities"] for a in answers])
    assert [a["digit"] for a in answers] == offline.argmax(axis=1).tolist()
    np.testing.assert_allclose(served, offline, atol=1e-5)
    assert [a["verdict"] for a in answers] == verdicts
    labels = np.array([d.label for d in digits])
    assert np.mean(served.argmax(axis=1) == labels) == np.mean(offline.argmax(axis=1) == labels)
    assert max(live.runtime.batch_sizes) > 1
