"""Clocks for the anti-hammering model: the system's, and one that tests move by hand."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Seconds since some fixed epoch; the store persists values of it, so it must not reset."""

    def now(self) -> float: ...


class SystemClock:
    """Wall-clock time (``time.time``): survives restarts, unlike a monotonic clock."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that stands still until a test advances it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a ManualClock only moves forward; use set() to go back")
        self._now += seconds

    def set(self, when: float) -> None:
        self._now = when
