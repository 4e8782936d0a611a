"""Robustness fuzzing of a card: ``python -m vsc.fuzz``.

Theory of operation
-------------------
The law (docs/robustness.md): *any input yields a well-formed response and
the card stays usable.* One input (:mod:`vsc.fuzz_corpus`) is a sequence of
APDUs and power events played against a **fresh** card, so every finding
replays from its crash file alone. :class:`Harness` plays it and judges:

* every ``Card.transmit`` answer has at least 2 bytes, a valid status word
  (SW1 61-6F or 90-9F), never ``6Cxx``, and no more data than the command's
  Ne (no data at all for an APDU that does not parse);
* nothing raises out of ``transmit``, ``power_on``, ``power_off``, ``reset``;
* no unexpected exception inside the card (the card answers ``6F00`` and logs
  it; we count that as a violation too: it is a bug even if the SW is valid);
* no single card call takes longer than ``timeout`` seconds (a hang). The
  slowest legitimate call is an RSA-4096 GENERATE (≈0.5 s mean, 1.3 s worst
  in our measurements), so the default of 30 s only catches real hangs. An input
  has at most MAX_STEPS steps, which bounds the time per input;
* after the sequence, :func:`piv_probe` checks the card is still usable and
  that the power cycle cleared its security state (see its docstring).

:class:`Fuzzer` is the plain mutational loop: it plays every seed, then
mutates inputs picked from a growing corpus (an input joins when it produced
an ``(INS, SW)`` or ``(previous INS, INS, SW)`` pair not seen before: cheap
feedback without instrumentation). With atheris installed, ``--engine
atheris`` runs the same harness under libFuzzer with coverage feedback and
:class:`Mutator` as its custom mutator.

A violating input is saved to the crash directory in the text form and
replays with ``python -m vsc.fuzz --replay FILE``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .apdu import CommandApdu
from .card import Card
from .fuzz_corpus import (
    DEFAULT_MANAGEMENT_KEY,
    DEFAULT_PIN,
    DEFAULT_PUK,
    ECHO_AID,
    MAX_STEPS,
    PIV_AID,
    FuzzInput,
    Step,
    StepKind,
    decode_input,
    encode_input,
    format_input,
    load_corpus,
    minimal_seeds,
    parse_input,
    split_authenticate,
    write_seeds,
)
from .fuzz_mutate import Mutator
from .sw import is_valid_sw

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = (ROOT / "fixtures" / "corpus", ROOT / "fixtures" / "transcripts")
DEFAULT_TIMEOUT = 30.0
FUZZ_SERIAL = 13_572_468

APT = bytes.fromhex("61114F0600001000010079074F05A000000308")
DISCOVERY = bytes.fromhex("7E124F0BA0000003080000100001005F2F024000")
PIV_VERSION = bytes((5, 7, 1))

Transmit = Callable[[bytes], bytes]
CardFactory = Callable[[], Card]
Probe = Callable[["Run"], None]


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken law: ``kind`` is law, exception, internal, hang or probe."""

    kind: str
    message: str
    step: int | None = None

    def __str__(self) -> str:
        where = "probe" if self.step is None else f"step {self.step}"
        return f"{self.kind} at {where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Outcome:
    violation: Violation | None
    apdus: int
    features: frozenset[tuple[int, ...]]


@dataclass(slots=True)
class Summary:
    engine: str = "plain"
    seed: int = 0
    inputs: int = 0
    apdus: int = 0
    violations: int = 0
    corpus: int = 0
    seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        kinds = ",".join(f"{k}={v}" for k, v in sorted(self.by_kind.items())) or "none"
        return (
            f"fuzz: engine={self.engine} seed={self.seed} inputs={self.inputs} "
            f"apdus={self.apdus} violations={self.violations} ({kinds}) "
            f"corpus={self.corpus} seconds={self.seconds:.1f} inputs/s={rate:.0f}"
        )

    def add(self, other: Summary) -> None:
        self.inputs += other.inputs
        self.apdus += other.apdus
        self.violations += other.violations
        self.corpus += other.corpus
        self.seconds = max(self.seconds, other.seconds)
        for kind, n in other.by_kind.items():
            self.by_kind[kind] = self.by_kind.get(kind, 0) + n
        self.crashes += other.crashes


class _Abort(Exception):
    def __init__(self, violation: Violation) -> None:
        super().__init__(str(violation))
        self.violation = violation


class Hang(BaseException):
    """Raised into the main thread when a card call outlives its budget.

    A BaseException, so the card's ``except Exception`` cannot swallow it.
    """


# -- hang detection -----------------------------------------------------------------------


class Watchdog:
    """Interrupts the main thread with :class:`Hang` when a call overruns.

    A daemon thread polls the deadline and sends SIGUSR1 to the main thread,
    which interrupts blocking system calls too. SIGALRM is left alone
    (pytest-timeout uses it). Only usable from the main thread.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._deadline: float | None = None
        self._stop = threading.Event()
        self._previous: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watchdog:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the fuzz watchdog needs the main thread")
        self._previous = signal.signal(signal.SIGUSR1, self._on_signal)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="fuzz-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._deadline = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        signal.signal(signal.SIGUSR1, self._previous)

    def call(self, fn: Callable[[], bytes | None]) -> bytes | None:
        self._deadline = time.monotonic() + self.timeout
        try:
            return fn()
        finally:
            self._deadline = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        deadline = self._deadline
        # A late signal for a call that already finished is ignored.
        if deadline is not None and time.monotonic() >= deadline:
            self._deadline = None
            raise Hang(f"a card call took longer than {self.timeout:g} s")

    def _watch(self) -> None:
        interval = min(0.1, self.timeout / 4)
        main = threading.main_thread().ident
        assert main is not None
        while not self._stop.wait(interval):
            deadline = self._deadline
            if deadline is not None and time.monotonic() >= deadline:
                signal.pthread_kill(main, signal.SIGUSR1)


# -- internal errors ------------------------------------------------------------------------


class _ErrorCatcher(logging.Handler):
    """Collects ERROR records of the ``vsc`` loggers (the card's 6F00 tracebacks)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def describe(self) -> str:
        record = self.records[0]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            return f"{record.getMessage()}: {type(exc).__name__}: {exc}"
        return record.getMessage()


# -- the law --------------------------------------------------------------------------------


def check_response(command: bytes, response: bytes) -> str | None:
    """Why ``response`` is not a well-formed answer to ``command``, or None."""
    if not isinstance(response, bytes | bytearray):
        return f"response is {type(response).__name__}, not bytes"
    if len(response) < 2:
        return f"response of {len(response)} bytes"
    sw = int.from_bytes(response[-2:], "big")
    if not is_valid_sw(sw):
        return f"invalid status word {sw:04X}"
    if sw >> 8 == 0x6C:
        return f"6Cxx ({sw:04X}) is never sent"
    try:
        ne = CommandApdu.parse(command).ne
    except Exception:
        ne = 0
    if len(response) - 2 > ne:
        return f"{len(response) - 2} data bytes for Ne {ne}"
    return None


# -- the usability probe ----------------------------------------------------------------------


def _encrypt(alg: int, key: bytes, block: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(TripleDES(key) if alg == 0x03 else algorithms.AES(key), modes.ECB())
    op = cipher.decryptor() if decrypt else cipher.encryptor()
    return op.update(block) + op.finalize()


def _tlvs(data: bytes) -> dict[int, bytes]:
    """Single-byte-tag TLVs with short lengths (GET METADATA answers)."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 2 <= len(data):
        tag, length = data[pos], data[pos + 1]
        if length >= 0x80:
            n = length & 0x7F
            length = int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
            pos += n
        out[tag] = data[pos + 2 : pos + 2 + length]
        pos += 2 + length
    return out


class _ProbeFailed(Exception):
    pass


def _expect(send: Transmit, command: str | bytes, want: bytes | int, what: str) -> bytes:
    cmd = bytes.fromhex(command) if isinstance(command, str) else command
    resp = send(cmd)
    if isinstance(want, int):
        if int.from_bytes(resp[-2:], "big") != want:
            raise _ProbeFailed(f"{what}: {resp.hex().upper()} (wanted SW {want:04X})")
    elif resp != want:
        raise _ProbeFailed(f"{what}: {resp.hex().upper()} (wanted {want.hex().upper()})")
    return resp[:-2]


def piv_probe(run: Run) -> None:
    """Is the PIV+echo card still usable after whatever happened? Raises _ProbeFailed.

    After a power cycle: the ATR; SELECT PIV answers the exact APT; GET
    VERSION and the discovery object are exact; the PIN is not verified
    (``63Cx`` matching GET METADATA's counter, or ``6983`` at 0) and PUT DATA
    is ``6982``: the power cycle cleared the security state. Then the
    secrets: a factory management key must authenticate (the card's answer
    is checked with our own cipher) and let a written object read back; a
    blocked PIN and PUK must allow RESET; a default PUK must unblock; a
    default, unblocked PIN must verify. Last the engine paths: the echo
    applet, chaining, 61xx/GET RESPONSE and a logical channel.
    """
    run.power(StepKind.POWER_OFF)
    run.power(StepKind.POWER_ON)
    send = run.transmit
    select = bytes.fromhex("00A404000B") + PIV_AID
    _expect(send, select, APT + b"\x90\x00", "SELECT PIV")
    _expect(send, "00FD000000", PIV_VERSION + b"\x90\x00", "GET VERSION")
    _expect(send, "00CB3FFF035C017E00", DISCOVERY + b"\x90\x00", "GET DATA discovery")
    _expect(send, "00F8000000", FUZZ_SERIAL.to_bytes(4, "big") + b"\x90\x00", "GET SERIAL")
    pin = _tlvs(_expect(send, "00F7008000", 0x9000, "GET METADATA PIN"))
    puk = _tlvs(_expect(send, "00F7008100", 0x9000, "GET METADATA PUK"))
    if len(pin.get(6, b"")) != 2 or len(puk.get(6, b"")) != 2:
        raise _ProbeFailed(f"PIN/PUK metadata without retries: {pin} {puk}")
    left = pin[6][1]
    status = 0x6983 if left == 0 else 0x63C0 | min(left, 15)
    _expect(send, "0020008000", status, "VERIFY status after power cycle")
    put = bytes.fromhex("00DB3FFF0A5C035FFF10530301020300")
    _expect(send, put, 0x6982, "PUT DATA without the management key")
    _probe_management_key(send, put)
    if left == 0 and puk[6][1] == 0:
        _expect(send, "00FB0000", 0x9000, "RESET with PIN and PUK blocked")
        pin = {5: b"\x01", 6: b"\x03\x03"}
    elif left == 0 and puk.get(5) == b"\x01" and puk[6][1] > 0:
        unblock = bytes.fromhex("002C008010") + DEFAULT_PUK + DEFAULT_PIN
        _expect(send, unblock, 0x9000, "RESET RETRY COUNTER with the factory PUK")
        pin = {5: b"\x01", 6: b"\x01\x01"}
    if pin.get(5) == b"\x01" and pin[6][1] > 0:
        _expect(send, bytes.fromhex("0020008008") + DEFAULT_PIN, 0x9000, "VERIFY factory PIN")
        _expect(send, "0020008000", 0x9000, "VERIFY status after VERIFY")
    _probe_engine(send)
    _expect(send, select, APT + b"\x90\x00", "SELECT PIV again")


def _probe_management_key(send: Transmit, put: bytes) -> None:
    meta = _tlvs(_expect(send, "00F7009B00", 0x9000, "GET METADATA 9B"))
    alg = meta.get(1, b"\x03")[0]
    if alg not in (0x03, 0x08, 0x0A, 0x0C):
        raise _ProbeFailed(f"management key algorithm {alg:02X}")
    b = 8 if alg == 0x03 else 16
    witness_cmd = bytes((0, 0x87, alg, 0x9B, 4, 0x7C, 2, 0x80, 0))
    witness = _expect(send, witness_cmd, 0x9000, "GA 9B witness request")
    if witness[:4] != bytes((0x7C, b + 2, 0x80, b)) or len(witness) != b + 4:
        raise _ProbeFailed(f"GA 9B witness {witness.hex().upper()}")
    if meta.get(5) != b"\x01":
        return
    key = DEFAULT_MANAGEMENT_KEY[: {0x08: 16, 0x0C: 32}.get(alg, 24)]
    if alg == 0x0C:
        return  # the factory bytes are 24 long: no AES-256 key can be "default"
    challenge = bytes(range(0xA0, 0xA0 + b))
    plain = _encrypt(alg, key, witness[4:], decrypt=True)
    body = bytes((0x7C, 2 * b + 4, 0x80, b)) + plain + bytes((0x81, b)) + challenge
    answer = _expect(send, bytes((0, 0x87, alg, 0x9B, len(body))) + body, 0x9000, "GA 9B")
    if answer != bytes((0x7C, b + 2, 0x82, b)) + _encrypt(alg, key, challenge):
        raise _ProbeFailed(f"GA 9B answered {answer.hex().upper()}, not E(challenge)")
    _expect(send, put, 0x9000, "PUT DATA as administrator")
    _expect(send, "00CB3FFF055C035FFF1000", bytes.fromhex("5303010203 9000"), "GET DATA back")


def _probe_engine(send: Transmit) -> None:
    _expect(send, bytes.fromhex("00A4040006") + ECHO_AID, b"\x90\x00", "SELECT echo")
    _expect(send, "1001000003AABBCC", b"\x90\x00", "chained echo, first chunk")
    _expect(send, "0001000002DDEE00", bytes.fromhex("AABBCCDDEE9000"), "chained echo, last")
    pattern = bytes(range(256))
    _expect(send, "0002012C00", pattern + b"\x61\x2c", "long response")
    _expect(send, "00C0000000", pattern[:44] + b"\x90\x00", "GET RESPONSE")
    channel = _expect(send, "0070000001", 0x9000, "MANAGE CHANNEL open")
    if len(channel) != 1 or not 1 <= channel[0] <= 3:
        raise _ProbeFailed(f"MANAGE CHANNEL opened {channel.hex()}")
    cla = channel[0]
    # Opened from channel 0, the new channel has the default applet: PIV.
    _expect(send, bytes((cla, 0xFD, 0, 0, 0)), PIV_VERSION + b"\x90\x00", "GET VERSION on channel")
    _expect(send, bytes((0, 0x70, 0x80, cla)), b"\x90\x00", "MANAGE CHANNEL close")


# -- the card under test ----------------------------------------------------------------------


def piv_card() -> Card:
    """The fuzz target: PIV (default) and echo, a fixed serial, keys in memory."""
    from applets.echo import EchoApplet
    from applets.piv import PivApplet

    card = Card()
    card.register(PivApplet(serial=FUZZ_SERIAL), default=True)
    card.register(EchoApplet())
    return card


# -- playing one input ------------------------------------------------------------------------


class Harness:
    """Plays inputs on fresh cards and judges them. Use as a context manager
    (it installs the watchdog and the log catcher)."""

    def __init__(
        self,
        factory: CardFactory = piv_card,
        probe: Probe | None = piv_probe,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        internal_errors_are_violations: bool = True,
    ) -> None:
        self.factory = factory
        self.probe = probe
        self.watchdog = Watchdog(timeout)
        self.strict = internal_errors_are_violations
        self._errors = _ErrorCatcher()
        self._log = logging.getLogger("vsc")
        self._saved = True
        self._entered = 0

    def __enter__(self) -> Harness:
        if not self._entered:
            self.watchdog.__enter__()
            self._saved = self._log.propagate
            self._log.addHandler(self._errors)
            self._log.propagate = False  # a 6F00 traceback per input would flood stderr
        self._entered += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._entered -= 1
        if not self._entered:
            self._log.removeHandler(self._errors)
            self._log.propagate = self._saved
            self.watchdog.__exit__()

    def run(self, steps: Sequence[Step], log: list[str] | None = None) -> Outcome:
        """Play ``steps`` on a fresh card, then the probe. ``log`` collects a transcript."""
        if not self._entered:
            with self:
                return self.run(steps, log)
        features: set[tuple[int, ...]] = set()
        state = Run(self, log, features)
        try:
            state.card = self.factory()
            for index, step in enumerate(steps[:MAX_STEPS]):
                state.step = index
                state.play(step)
            state.step = None
            if self.probe is not None:
                if log is not None:
                    log.append("# probe")
                try:
                    self.probe(state)
                except _ProbeFailed as e:
                    raise _Abort(Violation("probe", str(e))) from None
                state.check_errors()
        except _Abort as e:
            return Outcome(e.violation, state.apdus, frozenset(features))
        except Hang as e:
            return Outcome(Violation("hang", str(e), state.step), state.apdus, frozenset(features))
        except Exception as e:
            violation = Violation("exception", f"{type(e).__name__}: {e}", state.step)
            return Outcome(violation, state.apdus, frozenset(features))
        finally:
            self._errors.records.clear()
        return Outcome(None, state.apdus, frozenset(features))


class Run:
    """One input being played: the card, counters, feedback features.

    Probes use :meth:`transmit` and :meth:`power`, which apply the law and
    the watchdog like the input's own steps.
    """

    def __init__(
        self, harness: Harness, log: list[str] | None, features: set[tuple[int, ...]]
    ) -> None:
        self.harness = harness
        self.log = log
        self.features = features
        self.card: Card | None = None
        self.step: int | None = None
        self.apdus = 0
        self.previous_ins = -1

    def check_errors(self) -> None:
        errors = self.harness._errors
        if errors.records and self.harness.strict:
            raise _Abort(Violation("internal", errors.describe(), self.step))
        errors.records.clear()

    def transmit(self, command: bytes) -> bytes:
        card = self.card
        assert card is not None
        resp = self.harness.watchdog.call(lambda: card.transmit(command))
        assert resp is not None
        self.apdus += 1
        if self.log is not None:
            self.log.append(f"> {command.hex(' ').upper()}")
            self.log.append(f"< {resp.hex(' ').upper()}")
        problem = check_response(command, resp)
        if problem is not None:
            raise _Abort(
                Violation("law", f"{problem}; command {command[:16].hex().upper()}", self.step)
            )
        self.check_errors()
        ins = command[1] if len(command) > 1 else -1
        sw = int.from_bytes(resp[-2:], "big")
        self.features.add((ins, sw))
        self.features.add((self.previous_ins, ins, sw))
        self.previous_ins = ins
        return resp

    def play(self, step: Step) -> None:
        if step.kind is StepKind.APDU:
            self.transmit(step.data)
        elif step.kind is StepKind.AUTHENTICATE:
            self._authenticate(step.data)
        else:
            self.power(step.kind)

    def power(self, kind: StepKind) -> None:
        card = self.card
        assert card is not None
        call = self.harness.watchdog.call
        if self.log is not None:
            self.log.append(_POWER_NAMES[kind])
        if kind is StepKind.RESET:
            atr: bytes | None = call(card.reset)
        elif kind is StepKind.POWER_ON:
            atr = call(card.power_on)
        else:
            atr = call(lambda: card.power_off())
        if kind is not StepKind.POWER_OFF and atr != card.atr:
            raise _Abort(Violation("law", f"{kind.name} returned {atr!r}", self.step))
        self.check_errors()

    def _authenticate(self, data: bytes) -> None:
        """Mutual authentication with the given key: what ykman does, computed live."""
        cla, alg, key = split_authenticate(data)
        resp = self.transmit(bytes((cla, 0x87, alg, 0x9B, 4, 0x7C, 2, 0x80, 0)))
        b = 8 if alg == 0x03 else 16
        if resp[-2:] != b"\x90\x00" or len(resp) != b + 6 or alg not in (3, 8, 10, 12):
            return
        plain = _encrypt(alg, key, resp[4:-2], decrypt=True)
        body = bytes((0x7C, 2 * b + 4, 0x80, b)) + plain + bytes((0x81, b)) + bytes(range(b))
        self.transmit(bytes((cla, 0x87, alg, 0x9B, len(body))) + body)


_POWER_NAMES = {
    StepKind.RESET: "reset",
    StepKind.POWER_OFF: "power-off",
    StepKind.POWER_ON: "power-on",
}


# -- the campaign -------------------------------------------------------------------------------


class Fuzzer:
    """The plain mutational loop around a :class:`Harness`."""

    def __init__(
        self,
        harness: Harness,
        seeds: Iterable[FuzzInput],
        *,
        seed: int = 0,
        crash_dir: Path | None = None,
        max_corpus: int = 4000,
    ) -> None:
        self.harness = harness
        self.rng = random.Random(seed)
        self.seed = seed
        self.mutator = Mutator(self.rng)
        self.seeds = [s for s in seeds if s] or minimal_seeds()
        self.corpus: list[FuzzInput] = list(self.seeds)
        self.max_corpus = max_corpus
        self.crash_dir = crash_dir
        self.seen: set[tuple[int, ...]] = set()
        self.summary = Summary(engine="plain", seed=seed)

    def run(
        self,
        iterations: int | None = None,
        seconds: float | None = None,
        progress: Callable[[Summary], None] | None = None,
        progress_every: float = 60.0,
        *,
        stop_on_violation: bool = False,
    ) -> Summary:
        """Fuzz until ``iterations`` inputs or ``seconds`` passed (whichever first),
        or the first violation if ``stop_on_violation``."""
        start = time.monotonic()
        next_report = start + progress_every
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
                    summary.seconds = now - start
                    summary.corpus = len(self.corpus)
                    progress(summary)
                    next_report = now + progress_every
                self.one(self._next_input())
        summary.seconds = time.monotonic() - start
        summary.corpus = len(self.corpus)
        return summary

    def _next_input(self) -> FuzzInput:
        n = self.summary.inputs
        if n < len(self.seeds):
            return self.seeds[n]  # every seed once, unmutated
        parent = self.rng.choice(self.corpus)
        return self.mutator.mutate(parent, self.corpus)

    def one(self, steps: FuzzInput) -> Outcome:
        outcome = self.harness.run(steps)
        summary = self.summary
        summary.inputs += 1
        summary.apdus += outcome.apdus
        if outcome.violation is not None:
            summary.violations += 1
            kind = outcome.violation.kind
            summary.by_kind[kind] = summary.by_kind.get(kind, 0) + 1
            if self.crash_dir is not None:
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
    existing = [p for p in paths if p.exists()]
    return load_corpus(existing) or minimal_seeds()


# -- atheris ------------------------------------------------------------------------------------


def run_atheris(args: argparse.Namespace, seeds: list[FuzzInput]) -> int:
    """libFuzzer through atheris; the harness and the mutator are the same."""
    atheris: Any = importlib.import_module("atheris")
    harness = Harness(timeout=args.timeout)
    mutator = Mutator(random.Random(args.seed))
    crash_dir = Path(args.crash_dir)
    summary = Summary(engine="atheris", seed=args.seed)
    clock = {"start": 0.0}  # set at the first input: instrumenting takes a while
    corpus_dir = Path(args.atheris_corpus)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for steps in seeds:
        data = encode_input(steps)
        (corpus_dir / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)

    def report() -> None:
        summary.seconds = time.monotonic() - clock["start"]
        summary.corpus = sum(1 for _ in corpus_dir.iterdir())
        print(summary.line(), flush=True)

    def test_one_input(data: bytes) -> None:
        if not clock["start"]:
            clock["start"] = time.monotonic()
        steps = decode_input(data)
        outcome = harness.run(steps)
        summary.inputs += 1
        summary.apdus += outcome.apdus
        if outcome.violation is not None:
            summary.violations += 1
            kind = outcome.violation.kind
            summary.by_kind[kind] = summary.by_kind.get(kind, 0) + 1
            path = save_crash(crash_dir, steps, outcome.violation)
            report()
            raise RuntimeError(f"{outcome.violation} (saved to {path})")
        # libFuzzer ends with exit(), which skips Python's atexit: stop here instead.
        done = args.iterations is not None and summary.inputs >= args.iterations
        elapsed = time.monotonic() - clock["start"]
        if done or (args.seconds is not None and elapsed >= args.seconds):
            report()
            os._exit(0)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        mutator.rng.seed(seed)
        if mutator.rng.random() < 0.2:
            return bytes(atheris.Mutate(data, max_size))
        out = encode_input(mutator.mutate(decode_input(data), seeds))
        return out[:max_size]

    argv = [sys.argv[0], str(corpus_dir), f"-seed={args.seed}", f"-artifact_prefix={crash_dir}/"]
    argv += [f"-timeout={int(args.timeout) + 1}", "-rss_limit_mb=4096", "-max_len=70000"]
    crash_dir.mkdir(parents=True, exist_ok=True)
    atheris.instrument_all()
    with harness:
        atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
        atheris.Fuzz()
    return 0


def atheris_available() -> bool:
    try:
        importlib.import_module("atheris")
    except ImportError:
        return False
    return True


# -- parallel plain fuzzing ---------------------------------------------------------------------


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


def _plain(
    args: argparse.Namespace, seeds: list[FuzzInput], seed: int, iterations: int | None
) -> Summary:
    harness = Harness(timeout=args.timeout)
    fuzzer = Fuzzer(harness, seeds, seed=seed, crash_dir=Path(args.crash_dir))

    def progress(s: Summary) -> None:
        print(f"[seed {seed}] {s.line()}", file=sys.stderr, flush=True)

    every = args.progress if args.progress else float("inf")
    return fuzzer.run(
        iterations, args.seconds, progress, every, stop_on_violation=args.stop_on_violation
    )


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vsc.fuzz", description=__doc__.split("\n")[0])
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
    p.add_argument("--progress", type=float, default=0.0, help="progress line every S seconds")
    p.add_argument("--replay", type=Path, nargs="+", help="replay saved inputs and exit")
    p.add_argument("--write-seeds", type=Path, help="write the seed corpus to DIR and exit")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    if args.iterations is None and args.seconds is None:
        args.iterations = 10_000
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_seeds is not None:
        for path in write_seeds(args.write_seeds):
            print(path)
        return 0
    if args.replay:
        return _replay_main(args.replay, args.timeout)
    seeds = load_seeds(args.corpus or DEFAULT_CORPUS)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if atheris_available() else "plain"
    if engine == "atheris":
        return run_atheris(args, seeds)
    if args.jobs > 1:
        summary = run_jobs(args, seeds)
    else:
        summary = _plain(args, seeds, args.seed, args.iterations)
    print(summary.line(), flush=True)
    for crash in summary.crashes[:20]:
        print(f"  saved {crash}")
    return 1 if summary.violations else 0


def _replay_main(paths: Sequence[Path], timeout: float) -> int:
    failed = 0
    for path in paths:
        outcome, log = replay(path, Harness(timeout=timeout))
        print(f"== {path}")
        print("\n".join(log))
        print(f"-> {outcome.violation or 'no violation'}")
        failed += outcome.violation is not None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
