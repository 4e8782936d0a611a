"""Playing one fuzz input against a fresh card and judging what happens.

Theory of operation
-------------------
One input (:mod:`vsc.fuzz.inputs`) is a sequence of APDUs and power events
played against a **fresh** card, so every finding replays from its crash
file alone. :class:`Harness` plays it and judges:

* every ``Card.transmit`` answer keeps the law (:func:`vsc.fuzz.law.check_response`):
  at least 2 bytes, a valid status word (SW1 61-6F or 90-9F), never
  ``6Cxx``, and no more data than the command's Ne (no data at all for an
  APDU that does not parse);
* nothing raises out of ``transmit``, ``power_on``, ``power_off``, ``reset``;
* no unexpected exception inside the card (the card answers ``6F00`` and logs
  it; we count that as a violation too: it is a bug even if the SW is valid);
* no single card call takes longer than ``timeout`` seconds (a hang). The
  slowest legitimate call is an RSA-4096 GENERATE (about 0.5 s mean, 1.3 s
  worst in our measurements), so the default of 30 s only catches real
  hangs. An input has at most MAX_STEPS steps, which bounds the time per input;
* after the sequence, the probe (:func:`vsc.fuzz.piv.piv_probe` by default)
  checks the card is still usable and that the power cycle cleared its
  security state.

The harness also returns the input's *features*: the ``(INS, SW)`` and
``(previous INS, INS, SW)`` pairs it produced, the cheap feedback of the
plain fuzzer (:mod:`vsc.fuzz.campaign`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..card import Card
from .inputs import MAX_STEPS, Step, StepKind, split_authenticate
from .law import ProbeFailed, Violation, check_response
from .piv import management_cipher, piv_card, piv_probe

__all__ = ["DEFAULT_TIMEOUT", "Hang", "Harness", "Outcome", "Run", "Watchdog"]

DEFAULT_TIMEOUT = 30.0

CardFactory = Callable[[], Card]
Probe = Callable[["Run"], None]
#: Plays an AUTHENTICATE step (its data) on a run: the target's administrator macro.
Authenticate = Callable[["Run", bytes], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    violation: Violation | None
    apdus: int
    features: frozenset[tuple[int, ...]]


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
        authenticate: Authenticate | None = None,
    ) -> None:
        self.factory = factory
        self.probe = probe
        #: How AUTHENTICATE steps are played (default: PIV's GA 9B mutual authentication).
        self.authenticate = authenticate
        self.watchdog = Watchdog(timeout)
        self.strict = internal_errors_are_violations
        self._errors = _ErrorCatcher()
        self._log = logging.getLogger("vsc")
        # The applets' own warnings (a wrong PIN, a wrong administrator key) are what
        # fuzzing provokes by the thousand: kept off stderr while the harness runs.
        self._applets = logging.getLogger("applets")
        self._applets_saved = True
        self._quiet = logging.NullHandler()
        self._saved = True
        self._entered = 0

    def __enter__(self) -> Harness:
        if not self._entered:
            self.watchdog.__enter__()
            self._saved = self._log.propagate
            self._log.addHandler(self._errors)
            self._log.propagate = False  # a 6F00 traceback per input would flood stderr
            self._applets_saved = self._applets.propagate
            self._applets.addHandler(self._quiet)
            self._applets.propagate = False
        self._entered += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._entered -= 1
        if not self._entered:
            self._log.removeHandler(self._errors)
            self._log.propagate = self._saved
            self._applets.removeHandler(self._quiet)
            self._applets.propagate = self._applets_saved
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
                except ProbeFailed as e:
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
            if self.harness.authenticate is not None:
                self.harness.authenticate(self, step.data)
            else:
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
        plain = management_cipher(alg, key, resp[4:-2], decrypt=True)
        body = bytes((0x7C, 2 * b + 4, 0x80, b)) + plain + bytes((0x81, b)) + bytes(range(b))
        self.transmit(bytes((cla, 0x87, alg, 0x9B, len(body))) + body)


_POWER_NAMES = {
    StepKind.RESET: "reset",
    StepKind.POWER_OFF: "power-off",
    StepKind.POWER_ON: "power-on",
}
