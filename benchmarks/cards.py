"""Group ``cards``: 100 cards in one process, memory per card and aggregate throughput.

Memory is measured in a fresh subprocess per card kind (``python -m
benchmarks.cards probe KIND N``), so earlier groups' garbage and allocator
state do not leak into the figure. Two figures per kind:

* the Python heap per card (``tracemalloc``), which misses what OpenSSL
  allocates for key objects;
* the resident set growth per card (``/proc/self/statm``), which includes
  it. The issue's 2 MB target is judged on this one.

Provisioned cards own their key objects (each loaded from DER), as a card
restored from storage would; a factory-fresh PIV card holds its attestation
key (F9) and certificate only.

Throughput: the same APDU sent to one card, and round-robin to 100 cards,
in alternating bursts; the aggregate rate over 100 cards is compared with
the single card's.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

from applets.piv.keys import KeyType
from vsc import Card

from . import fixtures as fx
from .context import RunContext
from .report import GroupResult, Row, Target
from .timing import Stats, clock

CARDS = 100
#: Issue 7: per-card memory limit.
MAX_BYTES_PER_CARD = 2_000_000
#: "Without throughput loss", with room for this machine's noise.
MIN_THROUGHPUT_SHARE = 0.95
ROUNDS = 10

KINDS = {
    "echo": "echo card (engine floor)",
    "factory": "PIV, factory-fresh (F9 key + cert)",
    "provisioned": "PIV, 4 keys + 2 KB cert + CHUID",
}


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maker(kind: str) -> Callable[[], object]:
    keys = fx.key_set()
    if kind == "echo":
        return fx.echo_card
    if kind == "factory":
        return lambda: fx.piv_card(None)
    return lambda: fx.piv_card(keys, fresh_keys=True)


def probe(kind: str, count: int) -> dict[str, float]:
    """Bytes per card of ``kind``: RSS growth, then (a second batch) traced Python heap."""
    make = _maker(kind)
    keep: list[object] = [make()]  # first card: imports, caches, one-time allocations
    gc.collect()
    before = _rss()
    keep += [make() for _ in range(count)]
    gc.collect()
    rss = (_rss() - before) / count
    tracemalloc.start()
    gc.collect()
    traced_before, _ = tracemalloc.get_traced_memory()
    keep += [make() for _ in range(count)]
    gc.collect()
    traced_after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rss_per_card": rss, "traced_per_card": (traced_after - traced_before) / count}


def _probe_subprocess(kind: str, count: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cards", "probe", kind, str(count)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def _alternate(
    ops: dict[str, Callable[[], object]], seconds: float, warmup: int
) -> dict[str, Stats]:
    """Per-call statistics of each op, measured in alternating time-sliced bursts."""
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for op in ops.values():
        for _ in range(warmup):
            op()
    for _ in range(ROUNDS):
        for name, op in ops.items():
            out = samples[name]
            deadline = clock() + int(seconds / ROUNDS * 1e9)
            while True:
                start = clock()
                op()
                end = clock()
                out.append(end - start)
                if end > deadline:
                    break
    return {name: Stats.of(s) for name, s in samples.items()}


def _round_robin(cards: list[Card], apdu: bytes) -> Callable[[], object]:
    transmits = [card.transmit for card in cards]
    index = 0
    n = len(transmits)

    def op() -> object:
        nonlocal index
        index = index + 1 if index + 1 < n else 0
        return transmits[index](apdu)

    return op


def run(ctx: RunContext) -> GroupResult:
    group = GroupResult("cards", f"{CARDS} cards in one process")
    count = 20 if ctx.quick else CARDS

    for kind, label in KINDS.items():
        result = _probe_subprocess(kind, count)
        rss, traced = result["rss_per_card"], result["traced_per_card"]
        target = None
        if kind == "provisioned":
            target = Target("<= 2 MB per card (RSS)", rss <= MAX_BYTES_PER_CARD)
        group.add(
            Row(
                f"memory per card, {label}",
                value=rss,
                unit="bytes",
                comparison=f"Python heap {traced / 1e3:.1f} kB",
                target=target,
            )
        )

    keys = fx.key_set()
    single, _ = fx.piv_card(keys, fresh_keys=True)
    many = [fx.piv_card(keys, fresh_keys=True)[0] for _ in range(count)]
    for card in [single, *many]:
        for apdu in (fx.SELECT_PIV, fx.VERIFY_PIN):
            if card.transmit(apdu)[-2:] != b"\x90\x00":
                raise RuntimeError("card setup failed")
    sign = fx.ga_sign(KeyType.ECCP256, fx.SLOT_P256, bytes(range(32)))
    seconds = ctx.fast.seconds * 2
    for name, apdu in (
        ("VERIFY status query", fx.VERIFY_QUERY),
        ("GET DATA CHUID", fx.GET_DATA_CHUID),
        ("GA sign P-256", sign),
    ):
        stats = _alternate(
            {
                "one": functools.partial(single.transmit, apdu),
                "many": _round_robin(many, apdu),
            },
            seconds,
            warmup=ctx.fast.warmup,
        )
        one, all_cards = stats["one"], stats["many"]
        # Judged on medians: a neighbour's burst of CPU use lands on one side's mean.
        share = one.median_ns / all_cards.median_ns
        group.add(Row(f"{name}, 1 card", one, anchor=True))
        group.add(
            Row(
                f"{name}, round-robin over {count} cards",
                all_cards,
                comparison=f"{share:.0%} of 1 card's rate (p50), "
                f"{all_cards.rate / one.rate:.0%} (mean)",
                ratio=share,
                target=Target(
                    f">= {MIN_THROUGHPUT_SHARE:.0%} of 1 card", share >= MIN_THROUGHPUT_SHARE
                ),
            )
        )
    group.notes.append(
        "memory: resident set growth per card in a fresh process (includes OpenSSL's key "
        "objects); 'Python heap' is tracemalloc's share of it"
    )
    group.notes.append(
        "throughput: one thread; 1-card and round-robin bursts alternate in "
        f"{ROUNDS} rounds; 'per s' = 1 / mean latency; the target is judged on the "
        "median per-APDU time"
    )
    return group


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "probe" or argv[1] not in KINDS:
        print(f"usage: python -m benchmarks.cards probe {{{','.join(KINDS)}}} N", file=sys.stderr)
        return 2
    result: dict[str, Any] = probe(argv[1], int(argv[2]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
