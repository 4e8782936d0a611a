"""Timing primitives: warm-up, many timed calls, order statistics.

Every figure is a distribution of single-call times taken with
``time.perf_counter_ns`` around one call (or one short sequence of calls).
The median is the headline (robust against the scheduler hiccups of a
shared 2-vCPU machine); p99 shows the tail where latency matters. The
garbage collector runs as usual: it is part of what a card costs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: The clock every benchmark uses.
clock = time.perf_counter_ns


@dataclass(frozen=True, slots=True)
class Stats:
    """Order statistics of per-operation times, in nanoseconds."""

    n: int
    median_ns: float
    p99_ns: float
    min_ns: float
    mean_ns: float

    @property
    def median_us(self) -> float:
        return self.median_ns / 1000

    @property
    def p99_us(self) -> float:
        return self.p99_ns / 1000

    @property
    def rate(self) -> float:
        """Operations per second at the mean (what a busy loop sustains)."""
        return 1e9 / self.mean_ns if self.mean_ns else 0.0

    @classmethod
    def of(cls, samples_ns: Sequence[float]) -> Stats:
        if not samples_ns:
            raise ValueError("no samples")
        ordered = sorted(samples_ns)
        n = len(ordered)
        p99 = ordered[min(n - 1, int(n * 0.99))]
        return cls(n, statistics.median(ordered), p99, ordered[0], statistics.fmean(ordered))


@dataclass(frozen=True, slots=True)
class Budget:
    """How long to measure one row: a warm-up count, then samples until the
    count or the time budget runs out (whichever comes first, at least
    ``min_samples``)."""

    warmup: int
    samples: int
    seconds: float
    min_samples: int = 20

    def scaled(self, factor: float) -> Budget:
        return Budget(
            max(1, int(self.warmup * factor)),
            max(self.min_samples, int(self.samples * factor)),
            self.seconds * factor,
            self.min_samples,
        )


def measure(op: Callable[[], object], budget: Budget) -> Stats:
    """Time ``op()`` one call at a time."""
    for _ in range(budget.warmup):
        op()
    samples: list[float] = []
    append = samples.append
    deadline = clock() + int(budget.seconds * 1e9)
    while len(samples) < budget.samples:
        start = clock()
        op()
        append(clock() - start)
        if len(samples) >= budget.min_samples and clock() > deadline:
            break
    return Stats.of(samples)


def measure_parts(op: Callable[[], int], budget: Budget) -> Stats:
    """Like :func:`measure`, for an ``op`` that times itself and returns ns.

    For sequences with untimed work between the timed calls (e.g. the host's
    half of a challenge-response), so only the card's share is counted.
    """
    for _ in range(budget.warmup):
        op()
    samples: list[float] = []
    deadline = clock() + int(budget.seconds * 1e9)
    while len(samples) < budget.samples:
        samples.append(op())
        if len(samples) >= budget.min_samples and clock() > deadline:
            break
    return Stats.of(samples)


def measure_pair(
    first: Callable[[], object], second: Callable[[], object], budget: Budget, block: int = 10
) -> tuple[Stats, Stats]:
    """Time two ops in alternating blocks of ``block`` calls.

    For a ratio or difference between an APDU and the raw operation behind
    it: both see the same machine state (frequency, neighbours), so drift
    cancels instead of landing on one side.
    """
    for _ in range(budget.warmup):
        first()
        second()
    samples: tuple[list[float], list[float]] = ([], [])
    deadline = clock() + int(budget.seconds * 2e9)
    while len(samples[0]) < budget.samples:
        for op, out in ((first, samples[0]), (second, samples[1])):
            for _ in range(block):
                start = clock()
                op()
                out.append(clock() - start)
        if len(samples[0]) >= budget.min_samples and clock() > deadline:
            break
    return Stats.of(samples[0]), Stats.of(samples[1])
