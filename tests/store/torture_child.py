"""The child of the SIGKILL torture test: random state changes on one card until killed.

Usage: ``python torture_child.py CARD_PATH BACKEND SEED PIN_HEX`` where BACKEND
is ``plain``, ``software:KEY_FILE`` or ``tpm:TCTI``. It writes one line to
stdout per event, each with a single ``write`` (atomic on a pipe):
``R`` once the card is open, ``B i OP ARGS...`` *before* operation ``i``
starts, ``D i`` *after* it returned (its commit is durable). So for the
parent, an operation with a ``D`` line is committed, and at most one
operation (a ``B`` without ``D``) is in flight when the kill lands.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import sys

from vsc.store import AuthFailed, BackendSpec, StoredCard, open_card

BINDING = "b"
PUK = b"puk-secret"
CARD_RECORDS = ("r0", "r1", "r2", "r3")
CLEAR_RECORDS = ("p0", "p1")
BOUND_RECORDS = ("s0", "s1", "s2")
ATTEMPT_COUNTERS = {"c0": 3, "c1": 5}
GROUP_COUNTER = ("g", 9)


def backend_spec(text: str) -> BackendSpec:
    if text == "plain":
        return BackendSpec.plain()
    kind, _, arg = text.partition(":")
    if kind == "software":
        return BackendSpec.software(key_file=arg, passphrase_log2_n=4, auth_log2_n=4)
    return BackendSpec.tpm(arg)


def protection(name: str) -> str:
    return {"r": "card", "p": "clear", "s": f"bound:{BINDING}"}[name[0]]


def say(line: str) -> None:
    os.write(1, line.encode() + b"\n")


def choose(rng: random.Random, card: StoredCard) -> list[str]:
    names = CARD_RECORDS + CLEAR_RECORDS + BOUND_RECORDS
    value = rng.randbytes(rng.randrange(1, 48)).hex()
    kind = rng.choice(
        ["put"] * 4 + ["del", "group", "attempt", "attempt", "rebind", "wrong", "right"]
    )
    if kind == "put":
        return ["put", rng.choice(names), value]
    if kind == "del":
        return ["del", rng.choice(names)]
    if kind == "group":
        a, b = rng.sample(names, 2)
        return ["group", a, value, b, value[::-1], str(rng.randrange(GROUP_COUNTER[1] + 1))]
    if kind == "attempt":
        counter = rng.choice(sorted(ATTEMPT_COUNTERS))
        left = card.counter(counter).remaining
        return ["dec" if left and rng.random() < 0.7 else "ok", counter]
    if kind == "rebind":
        return ["rebind", rng.randbytes(8).hex()]
    return [kind]


def run(card: StoredCard, op: list[str], pin: bytes) -> bytes:
    """Do ``op``; the current PIN afterwards."""
    match op:
        case ["put", name, value]:
            card.put(name, bytes.fromhex(value), protection=protection(name))
        case ["del", name]:
            card.delete(name)
        case ["group", a, va, b, vb, remaining]:
            with card.transaction():
                card.put(a, bytes.fromhex(va), protection=protection(a))
                card.put(b, bytes.fromhex(vb), protection=protection(b))
                card.set_counter(GROUP_COUNTER[0], GROUP_COUNTER[1], int(remaining))
        case ["dec", counter]:
            card.begin_attempt(counter)
        case ["ok", counter]:
            card.succeed(counter)
        case ["rebind", new]:
            card.lock()
            card.unlock(BINDING, "puk", PUK)
            card.rebind(BINDING, "pin", bytes.fromhex(new))
            return bytes.fromhex(new)
        case ["wrong"]:
            with contextlib.suppress(AuthFailed):
                card.unlock(BINDING, "pin", b"not the pin")
        case ["right"]:
            card.unlock(BINDING, "pin", pin)
        case _:
            raise ValueError(op)
    return pin


def main(argv: list[str]) -> None:
    path, backend, seed, pin = argv[1], argv[2], int(argv[3]), bytes.fromhex(argv[4])
    rng = random.Random(seed)
    card = open_card(path, backend_spec(backend))
    say("R")
    for i in itertools.count():
        op = choose(rng, card)
        say(f"B {i} {' '.join(op)}")
        pin = run(card, op, pin)
        say(f"D {i}")


if __name__ == "__main__":
    main(sys.argv)
