"""What a batch costs a core that sat idle before it: the server's scoring, back to back and with pauses.

    python bench/idle.py [--pen-digits ../shared/data/pen_digits.jsonl] [--pauses-ms 0,0.1,0.5,3]

At light load a worker gets a batch of about three drawings every few milliseconds and sleeps in
between (100 people drawing: batches of 3.4, every 3 ms). This scores whole pen-digits test drawings with
:class:`livedigit.workers.Scorer`, what a worker and the event loop run, in batches of ``--batch``,
sleeping ``P`` ms after each, for every ``P`` of ``--pauses-ms`` in turn, and prints the CPU time per
image of the whole batch and of its two stages (``Finished``'s own CPU figures). Pin it to one core
(``taskset -c 1``) so that every pause is spent idle on the core that runs the next batch. On a virtual
machine, a core that slept comes back slower: the figure with pauses over the one without is what
waking a process for each batch costs at light load (docs/benchmarks.md, "The event loop scores at
light load").
"""

from __future__ import annotations

import argparse
import time

from livedigit import pendigits
from livedigit.config import DEFAULT_MODEL
from livedigit.preprocess import DEFAULT_LIMITS
from livedigit.runtime import load_runtime
from livedigit.verdict import card_rule
from livedigit.workers import Scorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pen-digits", default=str(pendigits.DEFAULT_PATH), help="pen-digits JSONL file")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model base path (its card gives the verdict rule)")
    parser.add_argument("--images", type=int, default=600, help="test drawings scored per pause")
    parser.add_argument("--batch", type=int, default=3, help="drawings per batch")
    parser.add_argument("--pauses-ms", default="0,0.1,0.5,3", help="comma-separated sleeps after each batch, in ms")
    parser.add_argument("--rounds", type=int, default=2, help="passes per pause; the last one is reported")
    args = parser.parse_args()

    images = [digit.image() for digit in pendigits.load(args.pen_digits, "test")[: args.images]]
    scorer = Scorer(load_runtime(args.model), card_rule(args.model), DEFAULT_LIMITS)
    print(f"{len(images)} pen-digits test drawings, batches of {args.batch}; CPU time per image, in us")
    print(f"{'pause ms':>9} {'batch':>8} {'preprocess':>11} {'model':>8}")
    for pause in (float(ms) / 1000.0 for ms in args.pauses_ms.split(",")):
        for _ in range(max(1, args.rounds)):
            total = preprocess = model = 0.0
            for start in range(0, len(images) - args.batch + 1, args.batch):
                cpu = time.thread_time()
                finished = scorer(images[start : start + args.batch])
                total += time.thread_time() - cpu
                preprocess += sum(finished.preprocess_cpu_seconds)
                model += finished.model_cpu_seconds
                if pause:
                    time.sleep(pause)
        scored = len(images) // args.batch * args.batch
        print(
            f"{pause * 1000:>9g} {total / scored * 1e6:>8.1f} {preprocess / scored * 1e6:>11.1f} "
            f"{model / scored * 1e6:>8.1f}"
        )


if __name__ == "__main__":
    main()
