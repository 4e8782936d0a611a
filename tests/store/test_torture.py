"""SIGKILL torture: a child changes a card at random and is killed at random instants.

Theory of operation
-------------------
The child (``torture_child.py``) reports ``B i OP`` before each operation
and ``D i`` after it returned. A ``D`` proves the commit happened; a missing
``B`` proves the operation never started. So after each SIGKILL the card
must be in exactly the state of the model after every ``D``-reported
operation, or (for the one operation in flight) in one of the states that
operation passes through, never anything else: no committed record lost, no
half-applied group, no counter restored without a ``succeed``, no
anti-hammering failure taken back without a correct PIN, no PIN that is
neither the old nor the new one. The card must then open (the kernel freed
the child's lock) and pass SQLite's integrity check.

``VSC_TORTURE_KILLS`` (default 200) and ``VSC_TORTURE_TPM_KILLS`` (default
40) set the number of kills; ``VSC_TORTURE_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from vsc.store import AuthFailed, BackendSpec, CardStore, DaParameters, StoredCard, bound
from vsc.testing.swtpm import Swtpm

from . import torture_child as child

CHILD = Path(__file__).with_name("torture_child.py")
TIMEOUT = 10.0
FIRST_PIN = b"first pin"
NO_LOCKOUT = DaParameters(max_tries=1_000_000, recovery_time=1_000_000, lockout_recovery=1)


@dataclass(frozen=True, slots=True)
class State:
    """Everything observable about the card, comparable as a whole."""

    records: frozenset[tuple[str, str]]
    counters: frozenset[tuple[str, int]]
    pin: str
    failed_tries: int

    def put(self, name: str, value: str) -> State:
        others = {(n, v) for n, v in self.records if n != name}
        return replace(self, records=frozenset(others | {(name, value)}))

    def delete(self, name: str) -> State:
        return replace(self, records=frozenset((n, v) for n, v in self.records if n != name))

    def counter(self, name: str, value: int) -> State:
        others = {(n, v) for n, v in self.counters if n != name}
        return replace(self, counters=frozenset(others | {(name, value)}))

    def remaining(self, name: str) -> int:
        return dict(self.counters)[name]


def path_through(state: State, op: list[str], store_counts: bool) -> list[State]:
    """The states ``op`` passes through, committed one after the other; the last is final.

    ``store_counts``: the store's anti-hammering pre-counts each PIN try and takes
    it back after a correct one (software, plain); a TPM counts only failures.
    """
    failed = state.failed_tries
    precount = [replace(state, failed_tries=failed + 1), state] if store_counts else []
    match op:
        case ["put", name, value]:
            return [state.put(name, value)]
        case ["del", name]:
            return [state.delete(name)]
        case ["group", a, va, b, vb, remaining]:
            return [state.put(a, va).put(b, vb).counter(child.GROUP_COUNTER[0], int(remaining))]
        case ["dec", name]:
            return [state.counter(name, state.remaining(name) - 1)]
        case ["ok", name]:
            return [state.counter(name, child.ATTEMPT_COUNTERS[name])]
        case ["rebind", new]:
            return [*precount, replace(state, pin=new)]
        case ["wrong"]:
            return [replace(state, failed_tries=failed + 1)]
        case ["right"]:
            return [*precount, state]
    raise AssertionError(f"unknown op {op}")


def initial_state() -> State:
    counters = {**child.ATTEMPT_COUNTERS, child.GROUP_COUNTER[0]: child.GROUP_COUNTER[1]}
    return State(frozenset(), frozenset(counters.items()), FIRST_PIN.hex(), 0)


def personalise(card: StoredCard) -> None:
    for name, maximum in child.ATTEMPT_COUNTERS.items():
        card.set_counter(name, maximum)
    card.set_counter(*child.GROUP_COUNTER)
    card.create_binding(child.BINDING, {"pin": FIRST_PIN, "puk": child.PUK})


def observe(card: StoredCard, pins: list[str]) -> State:
    """Read the whole state; then clear the anti-hammering counter our own checks moved."""
    card.integrity_check()
    failed = card.anti_hammer.status().failed_tries
    counters = frozenset((c.name, c.remaining) for c in card.counters())
    card.unlock(child.BINDING, "puk", child.PUK)
    records = frozenset((name, (card.get(name) or b"").hex()) for name in card.names())
    card.lock()
    pin = "none of the candidates"
    for candidate in dict.fromkeys(pins):
        try:
            card.unlock(child.BINDING, "pin", bytes.fromhex(candidate))
        except AuthFailed:
            continue
        pin = candidate
        break
    card.lock()
    card.anti_hammer.reset(lockout_auth=b"")
    return State(records, counters, pin, failed)


@dataclass
class Run:
    """One child's life: the events it reported before it died."""

    done: list[list[str]]
    in_flight: list[str] | None
    returncode: int
    stderr: str


def run_child(argv: list[str], rng: random.Random, stderr_path: Path) -> Run:
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    fd, out = proc.stdout.fileno(), b""
    try:
        if rng.random() < 0.1:
            time.sleep(rng.uniform(0, 0.15))  # sometimes while it is still opening the card
        else:
            deadline = time.monotonic() + TIMEOUT
            while b"R\n" not in out:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"child never got ready: {stderr_path.read_text()}")
                if select.select([fd], [], [], 0.1)[0]:
                    out += os.read(fd, 65536)
            time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
        while chunk := os.read(fd, 65536):  # the dead child's last lines, up to EOF
            out += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        proc.stdout.close()
    begun: dict[int, list[str]] = {}
    done: list[list[str]] = []
    for line in out.decode().splitlines():
        tag, *rest = line.split()
        if tag == "B":
            begun[int(rest[0])] = rest[1:]
        elif tag == "D":
            done.append(begun.pop(int(rest[0])))
    assert len(begun) <= 1, begun
    in_flight = next(iter(begun.values()), None)
    return Run(done, in_flight, proc.returncode, stderr_path.read_text(errors="replace"))


def torture(
    store: CardStore, spec: BackendSpec, backend_arg: str, kills: int, tmp_path: Path
) -> dict[str, int]:
    seed = int(os.environ.get("VSC_TORTURE_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    with store.create("victim", spec, da=NO_LOCKOUT) as card:
        if card.anti_hammer.enforced_by == "tpm":
            card.anti_hammer.set_parameters(NO_LOCKOUT, lockout_auth=b"")
        personalise(card)
    store_counts = spec.kind != "tpm"
    model = initial_state()
    stats = {"kills": 0, "ops": 0, "in_flight": 0, "in_flight_landed": 0, "midway": 0}
    for k in range(kills):
        argv = [sys.executable, str(CHILD), str(store.path_of("victim")), backend_arg]
        argv += [str(seed + k), model.pin]
        run = run_child(argv, rng, tmp_path / "child.err")
        assert run.returncode == -signal.SIGKILL, f"child died by itself:\n{run.stderr}"
        for op in run.done:
            model = path_through(model, op, store_counts)[-1]
        allowed = [model]
        if run.in_flight is not None:
            allowed += path_through(model, run.in_flight, store_counts)
        with store.open("victim", spec) as card:
            seen = observe(card, [s.pin for s in allowed])
        assert seen in allowed, (
            f"seed {seed}, kill {k}: state after SIGKILL is none of the allowed ones;\n"
            f"in flight: {run.in_flight}\nseen: {seen}\nallowed: {allowed}"
        )
        stats["kills"] += 1
        stats["ops"] += len(run.done)
        if run.in_flight is not None:
            stats["in_flight"] += 1
            landed = allowed.index(seen)
            stats["in_flight_landed"] += landed == len(allowed) - 1 and landed > 0
            stats["midway"] += 0 < landed < len(allowed) - 1
        model = replace(seen, failed_tries=0)  # observe() reset the counter
    return stats


def test_sigkill_torture(store: CardStore, tmp_path: Path) -> None:
    kills = int(os.environ.get("VSC_TORTURE_KILLS", "200"))
    key_file = tmp_path / "store.key"
    spec = BackendSpec.software(key_file=key_file, passphrase_log2_n=4, auth_log2_n=4)
    stats = torture(store, spec, f"software:{key_file}", kills, tmp_path)
    assert stats["kills"] == kills
    assert stats["in_flight"] >= kills // 4, stats  # the kills did land inside operations
    print(f"\nSIGKILL torture (software): {stats}")


def test_sigkill_torture_tpm(tmp_path: Path, swtpm: Swtpm) -> None:
    kills = int(os.environ.get("VSC_TORTURE_TPM_KILLS", "40"))
    store = CardStore(tmp_path / "store")
    stats = torture(store, BackendSpec.tpm(swtpm.tcti), f"tpm:{swtpm.tcti}", kills, tmp_path)
    assert stats["kills"] == kills
    print(f"\nSIGKILL torture (tpm): {stats}")


def test_model_rejects_a_restored_counter() -> None:
    """The checker can fail: a counter back at its maximum without ``ok`` is not allowed."""
    state = initial_state()
    after = path_through(state, ["dec", "c0"], store_counts=True)[-1]
    restored = after.counter("c0", 3)
    allowed = [after]
    assert restored not in allowed and restored == state
    lost = state.put("r0", "aa").delete("r0")
    assert lost not in [state.put("r0", "aa")]


def test_bound_protection_name_matches_child() -> None:
    assert child.protection("s0") == bound(child.BINDING)
