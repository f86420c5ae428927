"""Attacks on a served process, each run the way it was found to hurt: what the attacker gets back, and what
a bystander, the server's memory and its log show meanwhile (:class:`hardutil.Siege`).

Every attacker here talks from threads with blocking sockets, so the event loop that times the bystander
is never held up by the attack itself.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from hardutil import Siege, lying_png, repeat
from wsutil import ask, http_json, open_ws

pytestmark = pytest.mark.slow


# 1. A PNG whose header lies.


async def test_a_png_whose_header_lies_is_refused_before_it_is_decoded(start_server) -> None:  # type: ignore[no-untyped-def]
    """15 KB of PNG: an IHDR of 1x1, then one of 6000x6000 at 1 bit a pixel and its data. Pillow decodes the
    last header (36 megapixels, over a gigabyte once converted, seconds of the preprocessing thread). Sent
    over the WebSocket and over HTTP, each at 4 a second (within the rate limits), for 4 s: the server
    refuses every one before decoding anything."""
    server = start_server()
    png = base64.b64encode(lying_png(6000)).decode()
    ws, _ = await open_ws(server.ws_url)

    async def both() -> tuple[dict[str, Any], tuple[int, dict[str, str], Any]]:
        paced = asyncio.create_task(asyncio.sleep(0.25))
        answer = await ask(ws, {"type": "submit", "id": 1, "png": png})
        response = await asyncio.to_thread(http_json, server.http_url + "/api/predict", {"png": png})
        await paced
        return answer, response

    async with Siege(server, "1 lying PNG header, 4 a second over /ws and over HTTP") as siege:
        sent = await repeat(both)
        siege.note(f"{len(sent)} over each")
    await ws.close()
    for answer, (status, _, body) in sent:
        assert (answer["type"], answer.get("code")) == ("error", "bad_image"), answer
        assert "more than one IHDR" in answer["message"]
        assert (status, body.get("code")) == (400, "bad_image"), body
