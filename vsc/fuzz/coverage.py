"""Which lines of the card's code a campaign has run: sampled line coverage.

The plain fuzzer's feedback is behavioural (``(INS, SW)`` pairs); a long
campaign also wants to know how much of the card it reaches. Tracing every
input would slow the campaign several times over, so :class:`LineCoverage`
traces only the inputs it is handed (the campaign hands it one in N) with a
``sys.settrace`` tracer that follows only frames of the card's code: the
engine and applet modules loaded when it is created (everything under
``vsc/`` and ``applets/`` except the fuzzer, the test support and other
adapters that the card under test does not run). The total is the
executable lines of those files, so the figure is a fraction of the card.

libFuzzer's own ``cov:`` figure (``--engine atheris``) counts edges of the
instrumented code instead (:mod:`vsc.fuzz.libfuzzer`); both only grow.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["LineCoverage", "card_sources"]

T = TypeVar("T")

_ROOT = Path(__file__).resolve().parent.parent.parent
#: Parts of the tree that are not the card: the fuzzer, test support and I/O adapters.
_NOT_THE_CARD = ("vsc/fuzz/", "vsc/testing/", "vsc/share/", "vsc/lifecycle/", "vsc/store/")


def card_sources(modules: Iterable[Any] | None = None) -> frozenset[str]:
    """The files of the card's code among ``modules`` (default: every loaded module)."""
    files = set()
    for module in list(sys.modules.values()) if modules is None else modules:
        name = getattr(module, "__file__", None)
        if not name or not name.endswith(".py"):
            continue
        path = Path(name).resolve()
        try:
            relative = path.relative_to(_ROOT).as_posix()
        except ValueError:
            continue
        if relative.startswith(("vsc/", "applets/")) and not relative.startswith(_NOT_THE_CARD):
            files.add(str(path))
    return frozenset(files)


def _function_lines(code: types.CodeType) -> set[int]:
    """Lines of the functions in ``code`` (not module or class bodies, which run at import)."""
    lines: set[int] = set()
    if code.co_flags & inspect.CO_NEWLOCALS:
        lines = {line for _, _, line in code.co_lines() if line is not None}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            lines |= _function_lines(const)
    return lines


def executable_lines(path: str) -> set[int]:
    """The line numbers of the functions in ``path`` (from its compiled code)."""
    return _function_lines(compile(Path(path).read_text(), path, "exec"))


class LineCoverage:
    """Lines of the card's code run by the inputs measured so far."""

    def __init__(self, sources: frozenset[str] | None = None) -> None:
        self.sources = card_sources() if sources is None else sources
        self.seen: set[tuple[str, int]] = set()
        self._lines: frozenset[tuple[str, int]] | None = None

    @property
    def lines(self) -> frozenset[tuple[str, int]]:
        """The executable lines of the card's files (counted once)."""
        if self._lines is None:
            self._lines = frozenset(
                (path, line) for path in self.sources for line in executable_lines(path)
            )
        return self._lines

    @property
    def total(self) -> int:
        return len(self.lines)

    @property
    def covered(self) -> int:
        return len(self.seen & self.lines)

    def measure(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` with the card's lines recorded."""
        sources, seen = self.sources, self.seen

        def local(frame: types.FrameType, event: str, arg: object) -> Any:
            if event == "line":
                seen.add((frame.f_code.co_filename, frame.f_lineno))
            return local

        def call(frame: types.FrameType, event: str, arg: object) -> Any:
            if frame.f_code.co_filename in sources:
                seen.add((frame.f_code.co_filename, frame.f_lineno))
                return local
            return None

        previous = sys.gettrace()
        sys.settrace(call)
        try:
            return fn()
        finally:
            sys.settrace(previous)

    def describe(self) -> str:
        total = self.total
        share = 100.0 * self.covered / total if total else 0.0
        return f"{self.covered}/{total} lines ({share:.1f}%)"
