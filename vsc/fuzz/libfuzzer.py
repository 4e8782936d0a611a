"""Coverage-guided fuzzing with atheris (libFuzzer): ``python -m vsc.fuzz --engine atheris``.

An optional extra: ``pip install 'vsc[fuzz]'`` brings atheris. The harness
and the mutations are the plain engine's: libFuzzer feeds bytes, which
:func:`vsc.fuzz.inputs.decode_input` turns into an input whatever they are,
and :class:`vsc.fuzz.mutate.Mutator` is its custom mutator (one mutation in
five is libFuzzer's own, on the bytes). The working corpus starts from the
seed corpus (:func:`seed_corpus_dir`). Only the card's code is instrumented
(:func:`vsc.fuzz.coverage.card_sources`): libFuzzer's edge coverage then
measures the card, not the fuzzer, and starting takes seconds, not minutes.

For a harness of your own (another factory or probe), build the target with
:func:`test_one_input` and hand it to ``atheris.Setup`` yourself.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .campaign import Summary, save_crash
from .coverage import card_sources
from .harness import Harness
from .inputs import FuzzInput, decode_input, encode_input
from .mutate import Mutator

__all__ = ["available", "run", "seed_corpus_dir", "test_one_input"]


def available() -> bool:
    """Whether atheris is installed."""
    try:
        importlib.import_module("atheris")
    except ImportError:
        return False
    return True


def seed_corpus_dir(directory: Path, seeds: Sequence[FuzzInput]) -> Path:
    """Write ``seeds`` in the binary form into libFuzzer's working corpus ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for steps in seeds:
        data = encode_input(steps)
        (directory / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)
    return directory


def test_one_input(
    harness: Harness,
    *,
    crash_dir: Path,
    summary: Summary | None = None,
    on_input: Callable[[], None] | None = None,
) -> Callable[[bytes], None]:
    """A libFuzzer target: decode, play on a fresh card, raise on a violation
    (after saving the input in the text form to ``crash_dir``)."""
    summary = summary if summary is not None else Summary(engine="atheris")
    seen: set[tuple[int, ...]] = set()

    def target(data: bytes) -> None:
        steps = decode_input(data)
        outcome = harness.run(steps)
        summary.count(outcome)
        seen.update(outcome.features)
        summary.features = len(seen)
        if outcome.violation is not None:
            path = save_crash(crash_dir, steps, outcome.violation)
            raise RuntimeError(f"{outcome.violation} (saved to {path})")
        if on_input is not None:
            on_input()

    return target


def instrument_the_card(atheris: Any) -> int:
    """Instrument the functions of the card's code already loaded; returns how many."""
    sources = card_sources()
    count = 0
    for obj in gc.get_objects():
        code = getattr(obj, "__code__", None)
        if callable(obj) and code is not None and code.co_filename in sources:
            atheris.instrument_func(obj)
            count += 1
    return count


def run(
    seeds: Sequence[FuzzInput],
    *,
    seed: int,
    timeout: float,
    crash_dir: Path,
    corpus_dir: Path,
    iterations: int | None,
    seconds: float | None,
    progress: float,
) -> int:
    """Run libFuzzer until ``iterations`` inputs or ``seconds``; never returns otherwise."""
    atheris: Any = importlib.import_module("atheris")
    harness = Harness(timeout=timeout)
    mutator = Mutator(random.Random(seed))
    summary = Summary(engine="atheris", seed=seed)
    seed_corpus_dir(corpus_dir, seeds)
    crash_dir.mkdir(parents=True, exist_ok=True)
    clock = {"start": 0.0, "report": 0.0}  # from the first input: instrumenting takes a while

    def settle() -> None:
        summary.seconds = time.monotonic() - clock["start"]
        summary.corpus = sum(1 for _ in corpus_dir.iterdir())

    def after_input() -> None:
        now = time.monotonic()
        if not clock["start"]:
            clock["start"] = clock["report"] = now
        if progress and now - clock["report"] >= progress:
            settle()
            print(f"[atheris] {summary.progress()}", file=sys.stderr, flush=True)
            clock["report"] = now
        # libFuzzer ends with exit(), which skips Python's atexit: stop here instead.
        done = iterations is not None and summary.inputs >= iterations
        if done or (seconds is not None and now - clock["start"] >= seconds):
            settle()
            print(summary.line(), flush=True)
            os._exit(0)

    def custom_mutator(data: bytes, max_size: int, mutation_seed: int) -> bytes:
        mutator.rng.seed(mutation_seed)
        if mutator.rng.random() < 0.2:
            return bytes(atheris.Mutate(data, max_size))
        return encode_input(mutator.mutate(decode_input(data), seeds))[:max_size]

    target = test_one_input(harness, crash_dir=crash_dir, summary=summary, on_input=after_input)
    argv = [sys.argv[0], str(corpus_dir), f"-seed={seed}", f"-artifact_prefix={crash_dir}/"]
    argv += [f"-timeout={int(timeout) + 1}", "-rss_limit_mb=4096", "-max_len=70000"]
    print(f"atheris: instrumented {instrument_the_card(atheris)} functions", file=sys.stderr)
    with harness:
        atheris.Setup(argv, target, custom_mutator=custom_mutator)
        atheris.Fuzz()
    return 0
