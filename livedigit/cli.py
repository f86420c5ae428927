"""The ``livedigit`` command: ``serve``, ``predict``, ``bench`` and ``labels``.

Each subcommand's options live with the code they configure: ``serve`` takes one flag per
:class:`livedigit.config.Settings` field, ``predict``, ``bench`` and ``labels`` are defined in
:mod:`livedigit.predict`, :mod:`livedigit.bench.command` (which loads the bench itself only when it runs)
and :mod:`livedigit.labels.command`.
"""

from __future__ import annotations

import argparse
import sys

from livedigit import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livedigit", description="Real-time handwritten digit recognition.")
    parser.add_argument("--version", action="version", version=f"livedigit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from livedigit import predict, server
    from livedigit.bench import command as bench
    from livedigit.config import Settings

    serve = commands.add_parser(
        "serve",
        help="run the web server (page, WebSocket, REST)",
        description="Run the web server. Every flag also reads an environment variable.",
    )
    Settings.add_arguments(serve)
    serve.set_defaults(run=lambda args: server.run(Settings.from_arguments(args)))

    predict_command = commands.add_parser(
        "predict", help="predict image files locally or through a server", description=predict.main.__doc__
    )
    predict.add_arguments(predict_command)
    predict_command.set_defaults(run=predict.main)

    load = commands.add_parser(
        "bench", help="measure the server under many drawing clients", description=bench.DESCRIPTION
    )
    bench.add_arguments(load)
    load.set_defaults(run=bench.run)

    from livedigit.labels import command as labels_command

    labels = commands.add_parser(
        "labels", help="export or count the corrections people made", description=labels_command.__doc__
    )
    labels_command.add_arguments(labels)

    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
