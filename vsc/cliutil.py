"""The plumbing every ``vsc`` command shares: the parser type, exit statuses, messages.

A leaf module: it imports nothing of vsc. The top-level command
(:mod:`vsc.cli`) imports each feature's ``register``, and the features
import their plumbing from here, so every import, including those only the
type checker follows, points one way.

Exit statuses, the same for every verb: 0 done; 1 failure; 2 usage;
3 refused (the card's or the service's rules said no); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, Final, TypeAlias

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "Handler",
    "Subparsers",
    "UsageError",
    "dump_json",
    "fail",
]

# argparse has no public name for it; subscripted only for the type checker.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: What ``set_defaults(handler=...)`` gives each parser: the parsed arguments to an exit status.
Handler: TypeAlias = Callable[[argparse.Namespace], int]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_REFUSED: Final = 3
EXIT_INTERRUPTED: Final = 130


class UsageError(Exception):
    """A usage error found after parsing (exit status 2)."""


def fail(message: str, status: int = EXIT_FAILURE, *, prog: str = "vsc") -> int:
    """``prog: message`` on stderr; returns ``status``."""
    print(f"{prog}: {message}", file=sys.stderr)
    return status


def dump_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (anything JSON lacks as its ``str``)."""
    print(json.dumps(value, indent=2, default=str))
