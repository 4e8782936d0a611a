"""Group ``tpm``: card open time with swtpm, and what the storage backends cost per operation.

Measured on the persistent card store (:mod:`vsc.store`), per backend
(``plain``, ``software`` with a key file, ``tpm`` on a private swtpm):

* opening a stored card (lock, database, unsealing the card key) and closing it;
* one durable record write: the cost each committed PIV change (a PIN
  try's counter decrement, its restore, a PUT DATA) will have once the PIV
  applet keeps its record in the store;
* a PIN-bound unlock with its retry counter (decrement first, unseal under
  the PIN-derived authorisation, restore): the backend's share of VERIFY.

Not measured yet: ``Card.transmit`` on a PIV card whose data and keys live
in the store (the applet is not wired to :mod:`vsc.store` yet), and TPM-held
key operations. These rows print "not measured yet" instead of a number.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .context import RunContext
from .report import GroupResult, Row
from .timing import Budget, Stats, clock, measure

PIN = b"123456"
RECORD = bytes(400)  # about a serialised PIV record


def unavailable() -> str | None:
    """Why this group cannot run, or None."""
    if importlib.util.find_spec("vsc.store") is None:
        return "vsc.store (issue 4) is not in this tree yet"
    return None


@contextmanager
def _swtpm() -> Iterator[tuple[str | None, Stats | None, str]]:
    """(TCTI, start-time stats, why not) for a private swtpm, stopped on exit."""
    from vsc.testing.swtpm import Swtpm, swtpm_skip_reason

    reason = swtpm_skip_reason()
    if reason is not None:
        yield None, None, reason
        return
    starts: list[float] = []
    for _ in range(3):  # the start time itself, on a fresh state directory each time
        process = Swtpm()
        start = clock()
        process.start()
        starts.append(clock() - start)
        process.close()
    with Swtpm() as tpm:
        from vsc.store import WINDOWS_DEFAULTS
        from vsc.store.tpm import Tpm

        # A fresh swtpm locks out after 3 failures; provision it as Windows does.
        Tpm(tpm.tcti).set_da_parameters(WINDOWS_DEFAULTS, lockout_auth=b"")
        yield tpm.tcti, Stats.of(starts), ""


def _backend_rows(
    group: GroupResult, label: str, spec: Any, directory: Path, budget: Budget
) -> None:
    from vsc.store import create_card, open_card

    path = directory / label.split()[0]
    card = create_card(path, spec)
    try:
        card.set_counter("piv/pin", 3)
        card.create_binding("piv", {"pin": PIN})
    finally:
        card.close()

    def open_close() -> None:
        open_card(path, spec).close()

    group.add(Row(f"{label}: open + close a stored card", measure(open_close, budget)))
    with open_card(path, spec) as opened:
        group.add(
            Row(
                f"{label}: durable record write (400 B)",
                measure(lambda: opened.put("piv/record", RECORD), budget),
            )
        )
        unlock: Callable[[], None] = lambda: opened.unlock(  # noqa: E731
            "piv", "pin", PIN, counter="piv/pin"
        )
        group.add(Row(f"{label}: PIN unlock with retry counter", measure(unlock, budget)))


def run(ctx: RunContext) -> GroupResult:
    group = GroupResult("tpm", "card store backends: open time and per-operation cost")
    reason = unavailable()
    if reason is not None:
        group.skipped = reason
        group.notes.append("not measured yet: card open time with swtpm, backend effect")
        return group
    from vsc.store import BackendSpec

    budget = Budget(warmup=2, samples=200, seconds=1.0, min_samples=5).scaled(ctx.scale)
    slow_budget = Budget(warmup=1, samples=20, seconds=1.0, min_samples=3).scaled(ctx.scale)
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vsc-bench-")))
        _backend_rows(group, "plain", BackendSpec.plain(), directory, budget)
        software = BackendSpec.software(key_file=directory / "store.key")
        _backend_rows(group, "software (key file)", software, directory, slow_budget)
        tcti, starts, why = stack.enter_context(_swtpm())
        if tcti is None or starts is None:
            group.notes.append(f"tpm backend not measured: {why}")
        else:
            group.add(Row("swtpm process start, fresh state (start only)", starts, anchor=True))
            _backend_rows(group, "tpm (swtpm)", BackendSpec.tpm(tcti), directory, slow_budget)
    group.notes.append(
        "durable record write: SQLite with synchronous=FULL, one WAL fsync per commit; "
        "PIN unlock: counter decrement (commit), unseal under the PIN-derived "
        "authorisation (software: scrypt 2^14; tpm: TPM2_Unseal with auth), restore (commit)"
    )
    group.notes.append(
        "not measured yet: Card.transmit of a PIV card kept in the store (the PIV applet is "
        "not wired to vsc.store), TPM-resident key operations"
    )
    if shutil.which("swtpm") is None:
        group.notes.append("swtpm missing (Debian: swtpm swtpm-tools)")
    return group
