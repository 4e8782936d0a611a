"""The plain fuzzing campaign: mutate, play, keep what finds new behaviour, report.

:class:`Fuzzer` plays every seed once, then mutates inputs picked from a
growing corpus; an input joins the corpus when it produced a feature (an
``(INS, SW)`` or ``(previous INS, INS, SW)`` pair) not seen before: cheap
feedback without instrumentation. A violating input is saved to the crash
directory in the text form (:func:`save_crash`) and replays with
``python -m vsc.fuzz --replay FILE``. :class:`Summary` is what a campaign
reports, as it goes and at the end.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .corpus import load_corpus
from .coverage import LineCoverage
from .harness import Harness, Outcome
from .inputs import FuzzInput, format_input, parse_input
from .law import Violation
from .mutate import Mutator
from .seeds import minimal_seeds

__all__ = ["Fuzzer", "Summary", "load_seeds", "replay", "save_crash"]


@dataclass(slots=True)
class Summary:
    """What a campaign reports: counts, rates, what it reached, what broke."""

    engine: str = "plain"
    seed: int = 0
    inputs: int = 0
    apdus: int = 0
    violations: int = 0
    corpus: int = 0
    seconds: float = 0.0
    #: Distinct (INS, SW) and (previous INS, INS, SW) pairs seen: behaviour covered.
    features: int = 0
    #: Lines of the card's code run by the sampled inputs, of ``lines_total`` (0: not measured).
    lines: int = 0
    lines_total: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the end of a campaign: everything, machine-greppable."""
        rate = self.inputs / self.seconds if self.seconds else 0.0
        kinds = ",".join(f"{k}={v}" for k, v in sorted(self.by_kind.items())) or "none"
        return (
            f"fuzz: engine={self.engine} seed={self.seed} inputs={self.inputs} "
            f"apdus={self.apdus} violations={self.violations} ({kinds}) "
            f"corpus={self.corpus} features={self.features}{self._coverage(' lines=')} "
            f"seconds={self.seconds:.1f} inputs/s={rate:.0f}"
        )

    def progress(self, recent: float | None = None) -> str:
        """One line while a campaign runs: elapsed, rates, violations, coverage."""
        minutes, seconds = divmod(int(self.seconds), 60)
        rate = self.inputs / self.seconds if self.seconds else 0.0
        now = f" (now {recent:,.0f}/s)" if recent is not None else ""
        apdu_rate = self.apdus / self.seconds if self.seconds else 0.0
        return (
            f"{minutes // 60:d}:{minutes % 60:02d}:{seconds:02d} inputs={self.inputs:,} "
            f"{rate:,.0f}/s{now} apdus/s={apdu_rate:,.0f} violations={self.violations} "
            f"corpus={self.corpus} features={self.features}{self._coverage(' coverage=')}"
        )

    def _coverage(self, label: str) -> str:
        if not self.lines_total:
            return ""
        share = 100.0 * self.lines / self.lines_total
        return f"{label}{self.lines}/{self.lines_total}({share:.1f}%)"

    def count(self, outcome: Outcome) -> None:
        """Count one played input."""
        self.inputs += 1
        self.apdus += outcome.apdus
        if outcome.violation is not None:
            self.violations += 1
            kind = outcome.violation.kind
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def add(self, other: Summary) -> None:
        """Add a parallel worker's summary (features and lines: the best worker's)."""
        self.inputs += other.inputs
        self.apdus += other.apdus
        self.violations += other.violations
        self.corpus += other.corpus
        self.seconds = max(self.seconds, other.seconds)
        self.features = max(self.features, other.features)
        if other.lines_total:
            self.lines, self.lines_total = max(self.lines, other.lines), other.lines_total
        for kind, n in other.by_kind.items():
            self.by_kind[kind] = self.by_kind.get(kind, 0) + n
        self.crashes += other.crashes


class Fuzzer:
    """The plain mutational loop around a :class:`Harness`.

    With ``coverage``, one input in ``coverage_every`` runs under its line
    tracer (:mod:`vsc.fuzz.coverage`), which keeps the campaign's cost down.
    """

    def __init__(
        self,
        harness: Harness,
        seeds: Iterable[FuzzInput],
        *,
        seed: int = 0,
        crash_dir: Path | None = None,
        max_corpus: int = 4000,
        coverage: LineCoverage | None = None,
        coverage_every: int = 64,
    ) -> None:
        self.harness = harness
        self.rng = random.Random(seed)
        self.seed = seed
        self.mutator = Mutator(self.rng)
        self.seeds = [s for s in seeds if s] or minimal_seeds()
        self.corpus: list[FuzzInput] = list(self.seeds)
        self.max_corpus = max_corpus
        self.crash_dir = crash_dir
        self.coverage = coverage
        self.coverage_every = max(1, coverage_every)
        self.seen: set[tuple[int, ...]] = set()
        self.summary = Summary(engine="plain", seed=seed)

    def run(
        self,
        iterations: int | None = None,
        seconds: float | None = None,
        progress: Callable[[Summary, float], None] | None = None,
        progress_every: float = 60.0,
        *,
        stop_on_violation: bool = False,
    ) -> Summary:
        """Fuzz until ``iterations`` inputs or ``seconds`` passed (whichever first),
        or the first violation if ``stop_on_violation``. ``progress(summary,
        recent rate)`` is called every ``progress_every`` seconds."""
        start = time.monotonic()
        next_report = start + progress_every
        last = (start, 0)
        summary = self.summary
        with self.harness:
            while True:
                if iterations is not None and summary.inputs >= iterations:
                    break
                if stop_on_violation and summary.violations:
                    break
                now = time.monotonic()
                if seconds is not None and now - start >= seconds:
                    break
                if progress is not None and now >= next_report:
                    self._settle(now - start)
                    recent = (summary.inputs - last[1]) / max(now - last[0], 1e-9)
                    progress(summary, recent)
                    last = (now, summary.inputs)
                    next_report = now + progress_every
                self.one(self._next_input())
        self._settle(time.monotonic() - start)
        return summary

    def _settle(self, seconds: float) -> None:
        summary = self.summary
        summary.seconds = seconds
        summary.corpus = len(self.corpus)
        summary.features = len(self.seen)
        if self.coverage is not None:
            summary.lines, summary.lines_total = self.coverage.covered, self.coverage.total

    def _next_input(self) -> FuzzInput:
        n = self.summary.inputs
        if n < len(self.seeds):
            return self.seeds[n]  # every seed once, unmutated
        parent = self.rng.choice(self.corpus)
        return self.mutator.mutate(parent, self.corpus)

    def one(self, steps: FuzzInput) -> Outcome:
        """Play one input, count it, keep it if it found something new."""
        summary = self.summary
        if self.coverage is not None and summary.inputs % self.coverage_every == 0:
            outcome = self.coverage.measure(lambda: self.harness.run(steps))
        else:
            outcome = self.harness.run(steps)
        summary.count(outcome)
        if outcome.violation is not None and self.crash_dir is not None:
            summary.crashes.append(str(save_crash(self.crash_dir, steps, outcome.violation)))
        new = outcome.features - self.seen
        if new:
            self.seen |= new
            if len(self.corpus) < self.max_corpus:
                self.corpus.append(steps)
            else:
                self.corpus[self.rng.randrange(len(self.seeds), self.max_corpus)] = steps
        return outcome


def save_crash(directory: Path, steps: FuzzInput, violation: Violation) -> Path:
    """Write a violating input in the text form; the name is its content hash."""
    directory.mkdir(parents=True, exist_ok=True)
    body = format_input(steps)
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    path = directory / f"violation-{violation.kind}-{digest}.fuzz"
    comment = f"{violation}\nreplay: python -m vsc.fuzz --replay {path}"
    path.write_text(format_input(steps, comment))
    return path


def replay(path: Path, harness: Harness) -> tuple[Outcome, list[str]]:
    """Play one saved input with a transcript."""
    log: list[str] = []
    outcome = harness.run(parse_input(path.read_text()), log)
    return outcome, log


def load_seeds(paths: Sequence[Path]) -> list[FuzzInput]:
    """The inputs in ``paths`` that exist, or the minimal seeds if there are none."""
    existing = [p for p in paths if p.exists()]
    return load_corpus(existing) or minimal_seeds()
