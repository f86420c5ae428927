"""``livedigit bench``: how many people can draw at once before live predictions feel slow.

Each simulated person is one WebSocket client replaying a real pen trajectory from the pen-digits test
split as it was drawn: every ``1/rate`` seconds the pen advances ``--points`` points and the client sends
the drawing so far as a snapshot, then submits the finished digit and starts the next one. Clients are
open-loop (they keep their schedule whatever the replies do, as a person keeps drawing), so a slow server
shows up as latency and dropped snapshots rather than as a quietly reduced load.

The report gives offered and achieved rates, client-measured round-trip percentiles for snapshots and
submits, dropped snapshots by reason, errors, the batch sizes the server formed (from ``/metrics``), the
server's CPU and resident memory, the accuracy of the submits, and the bench's own CPU per message, with a
warning when the bench itself may have limited the run. Reference points in the same run:
the model alone in this process (the ceiling), the server with batching disabled (``--max-batch 1``),
and one HTTP request per prediction (``POST /api/predict``, one at a time per client). ``--sweep`` adds
clients step by step to find the knee, the load at which p99 live latency passes ``--knee-ms``, with
batching on and off. Every target is a loopback address; every loop is bounded in count and time.

The modules, from the command line inwards:

- :mod:`~livedigit.bench.command`: the options, imported by ``livedigit`` for every subcommand (light);
- :mod:`~livedigit.bench.main`: the checks, the servers started, the runs and the sweep;
- :mod:`~livedigit.bench.served`: ``livedigit serve`` in a child process on a free port (the tests' too);
- :mod:`~livedigit.bench.measure`: one measured run;
- :mod:`~livedigit.bench.workload`: the pen digits cut into frames, dealt out and scheduled;
- :mod:`~livedigit.bench.people`: the simulated people, over WebSocket or HTTP;
- :mod:`~livedigit.bench.recorder`: every outcome counted, latency percentiles;
- :mod:`~livedigit.bench.scrape`: ``/metrics`` and the run's part of its histograms;
- :mod:`~livedigit.bench.resources`: CPU and memory of the server, the bench and the machine;
- :mod:`~livedigit.bench.ceiling`: the model alone, and the reference digit;
- :mod:`~livedigit.bench.report`: the printed tables.

The package imports nothing itself, so importing one module loads only what that module needs.
"""
