"""Run settings shared by the benchmark groups."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .timing import Budget

#: The repository root (benchmarks/ lives directly under it).
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class RunContext:
    """How long to measure. ``quick`` is a smoke run: same rows, ~1/10 the samples."""

    quick: bool = False
    #: Pin the end-to-end chain (client, pcscd, cards) to one CPU (see benchmarks.e2e).
    pin: bool = True

    @property
    def scale(self) -> float:
        return 0.1 if self.quick else 1.0

    @property
    def fast(self) -> Budget:
        """APDUs of a few microseconds."""
        return Budget(warmup=500, samples=30_000, seconds=1.0).scaled(self.scale)

    @property
    def slow(self) -> Budget:
        """Crypto APDUs (40 us to a few ms)."""
        return Budget(warmup=50, samples=5_000, seconds=1.0).scaled(self.scale)

    @property
    def e2e_seconds(self) -> float:
        """Per end-to-end row."""
        return 0.3 if self.quick else 2.0

    @property
    def stalled_seconds(self) -> float:
        """vicc as shipped manages ~21 APDU/s: a short, bounded run."""
        return 1.0 if self.quick else 3.0
