"""``python -m vsc.fuzz``: run a campaign, replay findings, write the seed corpus.

A campaign prints a progress line every ``--progress`` seconds (default 10)
on stderr: elapsed time, inputs and inputs per second (overall and over the
last interval), APDUs per second, violations, corpus size, features and the
sampled line coverage of the card's code; then one summary line on stdout.
It exits 1 if it found a violation (saved to ``--crash-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from . import libfuzzer
from .campaign import Fuzzer, Summary, load_seeds, replay
from .coverage import LineCoverage
from .gids import gids_authenticate, gids_card, gids_probe, gids_seeds
from .harness import DEFAULT_TIMEOUT, Harness
from .inputs import FuzzInput
from .seeds import write_seeds

__all__ = ["DEFAULT_CORPUS", "main", "parse_args"]

_ROOT = Path(__file__).resolve().parent.parent.parent
#: The checked-in seeds and recorded client transcripts (in a source checkout).
DEFAULT_CORPUS = (_ROOT / "fixtures" / "corpus", _ROOT / "fixtures" / "transcripts")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vsc.fuzz", description=__doc__.split("\n")[0])
    p.add_argument(
        "--target",
        choices=("piv", "gids"),
        default="piv",
        help="the card: PIV (default; seeds from the corpus) or an empty GIDS card (seeds "
        "recorded from vsc's own GIDS flows)",
    )
    p.add_argument("--iterations", type=int, help="inputs to run (default 10000 if no --seconds)")
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--corpus", type=Path, action="append", help="seed files/directories")
    p.add_argument("--crash-dir", default="fuzz-crashes", help="where violating inputs go")
    p.add_argument("--jobs", type=int, default=1, help="parallel workers (plain engine)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per card call")
    p.add_argument("--engine", choices=("auto", "plain", "atheris"), default="plain")
    p.add_argument("--atheris-corpus", default="fuzz-corpus", help="libFuzzer's working corpus")
    p.add_argument("--stop-on-violation", action="store_true", help="stop at the first one")
    p.add_argument(
        "--progress", type=float, default=10.0, help="a progress line every S seconds (0: none)"
    )
    p.add_argument(
        "--coverage-every",
        type=int,
        default=64,
        metavar="N",
        help="measure line coverage on one input in N (0: not at all)",
    )
    p.add_argument("--replay", type=Path, nargs="+", help="replay saved inputs and exit")
    p.add_argument("--write-seeds", type=Path, help="write the seed corpus to DIR and exit")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    if args.iterations is None and args.seconds is None:
        args.iterations = 10_000
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.coverage_every < 0:
        p.error("--coverage-every must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_seeds is not None:
        for path in write_seeds(args.write_seeds):
            print(path)
        return 0
    if args.replay:
        return _replay_main(args.replay, harness(args))
    if args.target == "gids":
        seeds = list(gids_seeds().values()) + (load_seeds(args.corpus) if args.corpus else [])
    else:
        seeds = load_seeds(args.corpus or DEFAULT_CORPUS)
    engine = args.engine
    if engine != "plain" and args.target != "piv":
        if args.engine == "atheris":
            print("the atheris engine fuzzes the PIV card only", file=sys.stderr)
            return 2
        engine = "plain"
    if engine == "auto":
        engine = "atheris" if libfuzzer.available() else "plain"
    if engine == "atheris":
        return libfuzzer.run(
            seeds,
            seed=args.seed,
            timeout=args.timeout,
            crash_dir=Path(args.crash_dir),
            corpus_dir=Path(args.atheris_corpus),
            iterations=args.iterations,
            seconds=args.seconds,
            progress=args.progress,
        )
    if args.jobs > 1:
        summary = run_jobs(args, seeds)
    else:
        summary = _plain(args, seeds, args.seed, args.iterations)
    print(summary.line(), flush=True)
    for crash in summary.crashes[:20]:
        print(f"  saved {crash}")
    return 1 if summary.violations else 0


def harness(args: argparse.Namespace) -> Harness:
    """The harness of ``--target``: its card, probe and AUTHENTICATE macro."""
    if args.target == "gids":
        return Harness(gids_card, gids_probe, timeout=args.timeout, authenticate=gids_authenticate)
    return Harness(timeout=args.timeout)


def _plain(
    args: argparse.Namespace, seeds: list[FuzzInput], seed: int, iterations: int | None
) -> Summary:
    coverage = LineCoverage() if args.coverage_every else None
    fuzzer = Fuzzer(
        harness(args),
        seeds,
        seed=seed,
        crash_dir=Path(args.crash_dir),
        coverage=coverage,
        coverage_every=args.coverage_every or 1,
    )

    def progress(s: Summary, recent: float) -> None:
        print(f"[seed {seed}] {s.progress(recent)}", file=sys.stderr, flush=True)

    every = args.progress if args.progress else float("inf")
    return fuzzer.run(
        iterations, args.seconds, progress, every, stop_on_violation=args.stop_on_violation
    )


def run_jobs(args: argparse.Namespace, seeds: list[FuzzInput]) -> Summary:
    """``--jobs N``: N forked workers with seeds seed, seed+1, ...; summaries via pipes."""
    workers: list[tuple[int, int]] = []
    share = None if args.iterations is None else -(-args.iterations // args.jobs)
    for job in range(args.jobs):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_end)
            code = 1
            try:
                s = _plain(args, seeds, args.seed + job, share)
                os.write(write_end, json.dumps(asdict(s)).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        workers.append((pid, read_end))
    total = Summary(engine=f"plain x{args.jobs}", seed=args.seed)
    for pid, read_end in workers:
        with os.fdopen(read_end, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        if data:
            total.add(Summary(**json.loads(data)))
        else:
            total.by_kind["worker-died"] = total.by_kind.get("worker-died", 0) + 1
            total.violations += 1
    return total


def _replay_main(paths: Sequence[Path], harness: Harness) -> int:
    failed = 0
    for path in paths:
        outcome, log = replay(path, harness)
        print(f"== {path}")
        print("\n".join(log))
        print(f"-> {outcome.violation or 'no violation'}")
        failed += outcome.violation is not None
    return 1 if failed else 0
