"""The plumbing every ``vsc`` command shares: the parser type, exit statuses, messages.

A leaf module: it imports nothing of vsc. The top-level command
(:mod:`vsc.cli`) imports each feature's ``register``, and the features
import their plumbing from here, so every import, including those only the
type checker follows, points one way.

Exit statuses, the same for every verb: 0 done; 1 failure; 2 usage;
3 refused (the card's or the service's rules said no); 130 interrupted;
141 (128 + SIGPIPE, what a shell reports for ``yes | head -1``'s writer)
when whoever read stdout went away: ``vsc audit --json | head -1`` ends
quietly.

Secrets a command takes (an admin key, ...) come from a :class:`SecretOption`:
``--NAME-file PATH``, ``--NAME-prompt``, an environment variable, or
``--NAME VALUE`` on the command line, which every user of the machine can
read (``ps``, ``/proc/PID/cmdline``) and which therefore earns a warning.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "CliError",
    "Handler",
    "Secret",
    "SecretOption",
    "Subparsers",
    "UsageError",
    "dump_json",
    "fail",
    "read_secret_file",
    "warn",
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
EXIT_BROKEN_PIPE: Final = 141


#: The most a secret file may hold: a secret, not a document.
SECRET_FILE_MAX = 4096


class CliError(Exception):
    """A failure a command reports with a message and the exit status ``status``."""

    status: int = EXIT_FAILURE

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class UsageError(CliError):
    """A usage error found after parsing (exit status 2)."""

    status = EXIT_USAGE


def fail(message: str, status: int = EXIT_FAILURE, *, prog: str = "vsc") -> int:
    """``prog: message`` on stderr; returns ``status``."""
    print(f"{prog}: {message}", file=sys.stderr)
    return status


def warn(message: str, *, prog: str = "vsc") -> None:
    """``prog: warning: message`` on stderr."""
    print(f"{prog}: warning: {message}", file=sys.stderr)


def read_secret_file(path: str) -> str:
    """The secret in ``path`` (``-``: standard input), without its final newline.

    A regular file that other users can read or write is refused (as ssh
    refuses such a private key): the secret may already be theirs. Pipes
    (``-``, ``<(...)``) are accepted: nobody else holds them.
    """
    if path == "-":
        return _one_secret(sys.stdin.read(SECRET_FILE_MAX + 1), "standard input")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise CliError(f"cannot read the secret file {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            raise CliError(
                f"the secret file {path} can be read or written by other users (mode"
                f" {stat.S_IMODE(st.st_mode):04o}): make it yours alone (chmod 600 {path})",
                EXIT_REFUSED,
            )
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            raise CliError(f"the secret file {path} is not a file or a pipe")
        raw = f.read(SECRET_FILE_MAX + 1)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise CliError(f"the secret file {path} is not text") from None
    return _one_secret(text, path)


def _one_secret(text: str, where: str) -> str:
    if len(text) > SECRET_FILE_MAX:
        raise CliError(f"{where} holds more than {SECRET_FILE_MAX} characters: not a secret")
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise CliError(f"{where} is empty")
    return value


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret and where it came from (said in messages; never the value)."""

    value: str
    source: str

    def __repr__(self) -> str:
        return f"Secret(source={self.source!r})"


@dataclass(frozen=True, slots=True)
class SecretOption:
    """One secret a command takes, from (first given wins):

    ``--NAME-file PATH`` (refused if others can read it; ``-``: stdin),
    ``--NAME-prompt``, ``--NAME VALUE`` (warned: every user can read a
    command line), then the environment variable ``env``. ``keywords`` are
    values of ``--NAME`` that are not secrets (e.g. ``random``): no warning.
    """

    name: str
    what: str
    env: str | None = None
    metavar: str = "VALUE"
    keywords: tuple[str, ...] = ()
    #: What the prompt says (default: ``what`` capitalised).
    prompt_text: str | None = None

    @property
    def _dest(self) -> str:
        return self.name.replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser, *, value_help: str | None = None) -> None:
        """Add the mutually exclusive ``--NAME``, ``--NAME-file``, ``--NAME-prompt``."""
        group = parser.add_mutually_exclusive_group()
        env = f"; default: ${self.env}" if self.env else ""
        group.add_argument(
            f"--{self.name}-file",
            metavar="PATH",
            help=f"read {self.what} from this file, readable by you alone (-: stdin){env}",
        )
        group.add_argument(
            f"--{self.name}-prompt", action="store_true", help=f"ask for {self.what}"
        )
        group.add_argument(
            f"--{self.name}",
            metavar=self.metavar,
            help=(value_help or self.what)
            + " (on the command line, every user can read it: prefer the file, the"
            + (f" ${self.env} variable" if self.env else "")
            + " or the prompt)",
        )

    def given(self, args: argparse.Namespace) -> bool:
        """Whether an option (not the environment) names this secret."""
        return bool(
            getattr(args, f"{self._dest}_file", None)
            or getattr(args, f"{self._dest}_prompt", False)
            or getattr(args, self._dest, None) is not None
        )

    def read(
        self,
        args: argparse.Namespace,
        *,
        confirm: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> Secret | None:
        """The secret from the first source given; None if none is (the caller decides)."""
        path = getattr(args, f"{self._dest}_file", None)
        if path:
            return Secret(read_secret_file(path), f"--{self.name}-file")
        if getattr(args, f"{self._dest}_prompt", False):
            return Secret(self.prompt(confirm=confirm), "the prompt")
        value: str | None = getattr(args, self._dest, None)
        if value is not None:
            if value not in self.keywords:
                warn(
                    f"{self.what} on the command line is visible to every user of this machine"
                    f" (ps, /proc/PID/cmdline): use --{self.name}-file"
                    + (f", ${self.env}" if self.env else "")
                    + f" or --{self.name}-prompt"
                )
            return Secret(value, f"--{self.name}")
        environ = os.environ if environ is None else environ
        if self.env and environ.get(self.env):
            return Secret(environ[self.env], f"${self.env}")
        return None

    def prompt(self, *, confirm: bool = False) -> str:
        """Ask on the terminal (stdin without one); twice if ``confirm``."""
        value = getpass.getpass(self.prompt_text or f"{self.what[0].upper()}{self.what[1:]}: ")
        if confirm and getpass.getpass("Again: ") != value:
            raise CliError("the two entries differ", EXIT_REFUSED)
        return value


def dump_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (anything JSON lacks as its ``str``)."""
    print(json.dumps(value, indent=2, default=str))
