"""The stack's floor: a server that answers every frame without doing any of livedigit's work.

``python -m livedigit.bench.floor serve FLAGS`` reads ``livedigit serve``'s command line and runs uvicorn
with the server's own configuration (:func:`livedigit.server.config`: the same WebSocket implementation,
limits, keepalive and event loop), but its ``/ws`` only sends a hello and answers each frame with one
fixed ``prediction`` carrying the frame's id, and ``/readyz`` answers 200. ``livedigit bench --floor``
runs the same people against it: its CPU per answered frame is what uvicorn, Starlette and the kernel's
loopback cost per frame on this machine that day, the part of the server's figure livedigit cannot
spend less than while it serves through them; the rest is livedigit's own.
"""

from __future__ import annotations

import argparse
import sys

import msgspec
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from livedigit import protocol, server, threadnames
from livedigit.config import Settings

FLOOR_MODEL = "floor"
"""The model name its hello gives: no model answers."""

ANSWER = protocol.prediction(None, False, np.full(10, 0.1, dtype=np.float32), 0.0)
"""Every answer, but for its id: a prediction's fields and ten probabilities, none of them computed."""


class _Id(msgspec.Struct):
    """The only field of a frame the floor reads (a server reads at least this much of every frame)."""

    id: int | str | None = None


_read_id = msgspec.json.Decoder(_Id).decode


async def _ready(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ready")


async def _answer(websocket: WebSocket) -> None:
    """Hello, then one fixed prediction for each frame, with the id of a JSON frame (none otherwise)."""
    await websocket.accept()
    await websocket.send_text(protocol.dumps(protocol.hello(FLOOR_MODEL, FLOOR_MODEL, {})).decode())
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        try:
            message_id = _read_id(message.get("text") or "").id
        except msgspec.DecodeError:
            message_id = None
        await websocket.send_text(protocol.dumps({**ANSWER, "id": message_id}).decode())


def create_floor() -> Starlette:
    """The app: ``/ws`` and ``/readyz``, nothing else."""
    return Starlette(routes=[Route("/readyz", _ready), WebSocketRoute("/ws", _answer)])


def main(argv: list[str]) -> int:
    """``serve FLAGS`` as ``livedigit serve`` takes them; serve the floor until SIGTERM or Ctrl+C."""
    parser = argparse.ArgumentParser(prog="python -m livedigit.bench.floor")
    commands = parser.add_subparsers(dest="command", required=True)
    Settings.add_arguments(commands.add_parser("serve"))
    settings = Settings.from_arguments(parser.parse_args(argv))
    threadnames.name_this_thread(threadnames.EVENT_LOOP)
    uvicorn.Server(server.config(settings, create_floor())).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
