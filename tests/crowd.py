"""A crowd of scripts from one client address, as a separate process: ``python crowd.py URL ADDRESS
CONNECTIONS SECONDS``. Each connection classifies rasters with ``predict_each`` (batches, pipelined within
the limits the server announces) until the time is up; prints the counts of results as JSON.

A process of its own, so that the crowd's client work does not slow the test's own measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections import Counter

import numpy as np

from livedigit.client import LiveDigitClient, ServerError


def rasters() -> list[np.ndarray]:
    """Sixteen different 28x28 bars and crosses, ink high."""
    images = []
    for seed in range(16):
        image = np.zeros((28, 28), np.uint8)
        for step in range(20):
            x, y = 4 + step, 4 + (step * (seed % 7 + 1)) % 20
            image[y : y + 3, x : x + 3] = 255
        if seed >= 8:
            image[13:16, 4:24] = 255
        images.append(image)
    return images


async def connection(url: str, address: str, until: float, counts: Counter[str]) -> None:
    async with (
        LiveDigitClient(url, timeout=60, headers={"X-Forwarded-For": address}) as client,
        contextlib.aclosing(client.predict_each(itertools.cycle(rasters()), progress=False)) as results,
    ):
        async for result in results:
            counts[result.code if isinstance(result, ServerError) else type(result).__name__] += 1
            if time.monotonic() >= until:
                break


async def main(url: str, address: str, connections: int, seconds: float) -> None:
    counts: Counter[str] = Counter()
    until = time.monotonic() + seconds
    await asyncio.gather(*(connection(url, address, until, counts) for _ in range(connections)))
    print(json.dumps(counts))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
