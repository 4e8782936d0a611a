"""The ``vsc`` command line: one subcommand (group) per feature.

Each feature module offers ``register(subparsers)``, which adds its
subcommand and sets ``handler`` (:data:`vsc.cliutil.Handler`) on its
parsers with ``set_defaults``; :func:`main` parses, configures logging once
and calls the handler. To add a command, write its ``register`` and append
it to :data:`COMMANDS`. What the features share (the ``Subparsers`` type,
exit statuses, messages) is in :mod:`vsc.cliutil`, which imports none of
them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final

from .cliutil import EXIT_BROKEN_PIPE, Handler, Subparsers
from .lifecycle import cli as lifecycle_cli
from .share import cli as share_cli
from .trace import TRACE

__all__ = ["COMMANDS", "build_parser", "main"]

#: The registered subcommands, in help order.
COMMANDS: Final[tuple[Callable[[Subparsers], None], ...]] = (
    lifecycle_cli.register,
    share_cli.register,
)

_LEVELS: Final = (logging.WARNING, logging.INFO, logging.DEBUG, TRACE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsc", description="vsc: a virtual smart card.")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: progress; -vv: debug; -vvv: also the APDU trace (secrets masked)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # here, not at exit, where a closed pipe prints a traceback
    except BrokenPipeError:
        # Whoever read stdout has gone (`vsc audit --json | head -1`): stop quietly, with
        # the status a shell gives a writer killed by SIGPIPE. Later flushes go nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = _LEVELS[min(args.verbose, len(_LEVELS) - 1)]
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
