"""Group ``tpm``: what the card store costs: card open time (with swtpm) and the PIV hot path.

Per protection backend of :mod:`vsc.store` (``plain``; ``software`` with a
key file; ``tpm`` on a private swtpm):

* the store itself: opening a card (lock, database, unsealing the card key)
  and closing it; one durable record write; a PIN-bound unlock with its
  retry counter (decrement first, unseal under the PIN-derived
  authorisation, restore);
* PIV on the store (:func:`vsc.store.piv.open_piv`, what ``python -m
  vsc.emulator --card`` serves): opening the card with its PIV data, and
  ``Card.transmit`` of a provisioned card (P-256 key in 9A, CHUID) for the
  APDUs of the hot path: VERIFY status query, VERIFY with the PIN, GET DATA
  CHUID, GENERAL AUTHENTICATE sign P-256. Each is shown next to the same
  APDU on an in-memory card measured in this group, so the difference is
  the store's share.

On the tpm backend the keys live in the TPM (``docs/security.md``): the
P-256 key above is wrapped into it, and the rows "key in the TPM" measure
GENERAL AUTHENTICATE sign per algorithm (RSA-2048, P-256, P-384: a key the
TPM generated) and ECDH (P-256), each next to the same APDU with a software
key (the in-memory card) and to tpm2-tools doing the same operation on the
same swtpm in the same run (``tpm2_sign`` / ``tpm2_ecdhzgen`` on a key it
loaded, one process per operation, as a script would use it). The goal is
within 1.2x of tpm2_sign.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from applets.piv.keys import KeyType, PinPolicy, TouchPolicy
from applets.piv.objects import ObjectId
from vsc import Card

from . import fixtures as fx
from .context import RunContext
from .report import GroupResult, Row, Target
from .timing import Budget, Stats, clock, measure, measure_parts

#: The goal of issue 14 for a TPM-resident signature, against tpm2_sign on the same swtpm.
TPM2_SIGN_FACTOR = 1.2

PIN = b"123456"
RECORD = bytes(400)  # about a serialised PIV record
_DIGEST = hashlib.sha256(b"vsc store benchmark").digest()

Transmit = Callable[[bytes], bytes]


class BadResponse(RuntimeError):
    """An APDU did not answer 9000: its row would time an error path."""


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


def _apdu(transmit: Transmit, name: str, apdu: bytes) -> Callable[[], bytes]:
    """``transmit(apdu)`` as a timed op, after checking once that it answers 9000."""
    answer = transmit(apdu)
    if answer[-2:] != b"\x90\x00":
        raise BadResponse(f"{name}: card answered {answer.hex()}")
    return lambda: transmit(apdu)


#: The PIV rows: (label, APDU, slow?) -- slow ones get the small budget.
_PIV_APDUS = (
    ("VERIFY status query", fx.VERIFY_QUERY, False),
    ("VERIFY with the PIN", fx.VERIFY_PIN, True),
    ("GET DATA CHUID", fx.GET_DATA_CHUID, False),
    ("GA sign P-256", fx.ga_sign(KeyType.ECCP256, fx.SLOT_P256, _DIGEST), True),
)


def _provision(applet: Any) -> Card:
    """The P-256 key in 9A (PIN policy ONCE) and the CHUID; selected, PIN verified."""
    keys = fx.key_set()
    applet.keys.import_key(
        fx.SLOT_P256, KeyType.ECCP256, keys.p256, PinPolicy.ONCE, TouchPolicy.NEVER
    )
    applet.data.put_object(ObjectId.CHUID, fx.CHUID)
    card = Card([applet], default=applet)
    card.power_on()
    for setup in (fx.SELECT_PIV, fx.VERIFY_PIN):
        _apdu(card.transmit, "setup", setup)
    return card


def _memory_rows(group: GroupResult, fast: Budget, slow: Budget) -> dict[str, Stats]:
    """The same APDUs on an in-memory PIV card: the reference for the store's share."""
    from applets.piv import PivApplet

    card = _provision(PivApplet())
    reference: dict[str, Stats] = {}
    for label, apdu, is_slow in _PIV_APDUS:
        stats = measure(_apdu(card.transmit, label, apdu), slow if is_slow else fast)
        reference[label] = stats
        group.add(Row(f"in memory (no store): {label}", stats, anchor=True))
    return reference


def _backend_rows(
    group: GroupResult,
    label: str,
    spec: Any,
    directory: Path,
    budgets: tuple[Budget, Budget],
    reference: dict[str, Stats],
) -> None:
    from vsc.store import create_card, open_card
    from vsc.store.piv import open_piv

    fast, slow = budgets
    path = directory / label.split()[0]
    card = create_card(path, spec)
    try:
        card.set_counter("piv/pin", 3)
        card.create_binding("piv", {"pin": PIN})
    finally:
        card.close()

    def open_close() -> None:
        open_card(path, spec).close()

    group.add(Row(f"{label}: open + close a stored card", measure(open_close, slow)))
    with open_card(path, spec) as opened:
        group.add(
            Row(
                f"{label}: durable record write (400 B)",
                measure(lambda: opened.put("piv/record", RECORD), fast),
            )
        )
        unlock: Callable[[], None] = lambda: opened.unlock(  # noqa: E731
            "piv", "pin", PIN, counter="piv/pin"
        )
        group.add(Row(f"{label}: PIN unlock with retry counter", measure(unlock, slow)))

    # PIV on the store: a card of its own, provisioned once, then opened as the emulator does.
    piv_path = directory / f"{label.split()[0]}-piv"
    stored = create_card(piv_path, spec)
    try:
        _provision(open_piv(stored, provision=True)).power_off()
    finally:
        stored.close()

    def open_piv_card() -> None:
        handle = open_card(piv_path, spec)
        try:
            open_piv(handle)
        finally:
            handle.close()

    group.add(Row(f"{label}: open a PIV card (open_piv) + close", measure(open_piv_card, slow)))
    handle = open_card(piv_path, spec)
    try:
        applet = open_piv(handle)
        piv = Card([applet], default=applet)
        piv.power_on()
        _apdu(piv.transmit, "SELECT", fx.SELECT_PIV)
        _apdu(piv.transmit, "VERIFY", fx.VERIFY_PIN)  # the PIN binding stays open for GA
        for name, apdu, is_slow in _PIV_APDUS:
            stats = measure(_apdu(piv.transmit, name, apdu), slow if is_slow else fast)
            memory = reference[name]
            extra = (stats.median_ns - memory.median_ns) / 1000
            group.add(
                Row(
                    f"{label}: {name}",
                    stats,
                    comparison=f"{stats.median_ns / memory.median_ns:,.1f}x in memory, "
                    f"{extra:+,.1f} us",
                    ratio=stats.median_ns / memory.median_ns,
                )
            )
        piv.power_off()
    finally:
        handle.close()


#: The TPM-resident rows: (label, PIV key type, tpm2-tools key algorithm).
_TPM_KEYS = (
    ("RSA-2048", KeyType.RSA2048, "rsa2048"),
    ("P-256", KeyType.ECCP256, "ecc256"),
    ("P-384", KeyType.ECCP384, "ecc384"),
)
_TPM_SLOT = 0x9A


def _sign_apdu(key_type: KeyType) -> bytes:
    if key_type == KeyType.RSA2048:
        block = fx.pkcs1v15_sign_block(_DIGEST)
        return fx.extended_apdu(0x87, key_type, _TPM_SLOT, fx.ga_template(block))
    size = 48 if key_type == KeyType.ECCP384 else 32
    return fx.ga_sign(key_type, _TPM_SLOT, hashlib.sha384(_DIGEST).digest()[:size])


def _ecdh_apdu(peer: bytes) -> bytes:
    return fx.short_apdu(0x87, KeyType.ECCP256, _TPM_SLOT, fx.ga_template(peer, tag=0x85))


def _piv_with_key(applet: Any, key_type: KeyType) -> tuple[Card, bytes]:
    """A card whose 9A key (generated on it) is ``key_type``; selected, PIN verified."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = applet.keys.generate(_TPM_SLOT, key_type, PinPolicy.ONCE, TouchPolicy.NEVER).public_key
    card = Card([applet], default=applet)
    card.power_on()
    for setup in (fx.SELECT_PIV, fx.VERIFY_PIN):
        _apdu(card.transmit, "setup", setup)
    point = (
        public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        if (key_type == KeyType.ECCP256)
        else b""
    )
    return card, point


class Tpm2Tools:
    """tpm2-tools on the benchmark's swtpm: a key of each algorithm, one process per use.

    Without a resource manager the tools leave what they loaded in the TPM (it
    has three object slots): every run is followed by ``tpm2_flushcontext -t``
    and ``-l``, outside the timed part.
    """

    def __init__(self, tcti: str, directory: Path) -> None:
        self.tcti = tcti
        self.dir = directory
        self._run("tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256",
                  "-c", "primary.ctx")  # fmt: skip
        (directory / "digest").write_bytes(_DIGEST)

    def _run(self, *argv: str) -> int:
        """Run one tool; the ns it took (the flush after it not counted)."""
        start = clock()
        done = subprocess.run(
            [*argv, "-T", self.tcti], cwd=self.dir, capture_output=True, text=True, timeout=60
        )
        took = clock() - start
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()[-300:]}")
        for kind in ("-t", "-l"):  # transient objects, loaded sessions
            subprocess.run(
                ["tpm2_flushcontext", kind, "-T", self.tcti],
                cwd=self.dir, check=True, capture_output=True, timeout=60,
            )  # fmt: skip
        return took

    def key(self, algorithm: str) -> str:
        """A key loaded from its blobs into a saved context file; the file's name."""
        self._run("tpm2_create", "-C", "primary.ctx", "-G", algorithm, "-u", f"{algorithm}.pub",
                  "-r", f"{algorithm}.priv")  # fmt: skip
        self._run("tpm2_load", "-C", "primary.ctx", "-u", f"{algorithm}.pub",
                  "-r", f"{algorithm}.priv", "-c", f"{algorithm}.ctx")  # fmt: skip
        return f"{algorithm}.ctx"

    def sign(self, context: str) -> Callable[[], int]:
        return lambda: self._run("tpm2_sign", "-c", context, "-g", "sha256", "-d",
                                 "-o", "signature", "digest")  # fmt: skip

    def ecdh(self, context: str) -> Callable[[], int]:
        self._run("tpm2_ecdhkeygen", "-c", context, "-u", "peer", "-o", "z0")
        return lambda: self._run("tpm2_ecdhzgen", "-c", context, "-u", "peer", "-o", "z")


def _tpm_key_rows(group: GroupResult, tcti: str, directory: Path, budget: Budget) -> None:
    """TPM-resident sign and ECDH next to the software-key path and tpm2-tools."""
    from applets.piv import PivApplet
    from vsc.store import BackendSpec, create_card
    from vsc.store.piv import open_piv

    tools: Tpm2Tools | None = None
    if shutil.which("tpm2_sign") is None:
        group.notes.append("tpm2-tools missing (Debian: tpm2-tools): no tpm2_sign anchor")
    else:
        work = directory / "tpm2-tools"
        work.mkdir()
        tools = Tpm2Tools(tcti, work)
    for label, key_type, algorithm in _TPM_KEYS:
        stored = create_card(directory / f"tpm-{algorithm}", BackendSpec.tpm(tcti))
        try:
            card, point = _piv_with_key(open_piv(stored, provision=True), key_type)
            software, _ = _piv_with_key(PivApplet(), key_type)
            ops = [(f"GA sign {label}", _sign_apdu(key_type), "sign")]
            if point:
                ops.append((f"GA ECDH {label}", _ecdh_apdu(point), "ecdh"))
            context = tools.key(algorithm) if tools is not None else ""
            for name, apdu, kind in ops:
                in_tpm = measure(_apdu(card.transmit, name, apdu), budget)
                soft = measure(_apdu(software.transmit, name, apdu), budget)
                group.add(Row(f"{name}, software key (in memory)", soft, anchor=True))
                anchor = None
                if tools is not None:
                    tool = tools.sign(context) if kind == "sign" else tools.ecdh(context)
                    tool_name = "tpm2_sign" if kind == "sign" else "tpm2_ecdhzgen"
                    anchor = measure_parts(tool, budget)
                    group.add(Row(f"{tool_name} {label} (tpm2-tools, same swtpm)", anchor,
                                  anchor=True))  # fmt: skip
                group.add(_tpm_row(f"{name}, key in the TPM", in_tpm, soft, anchor, kind))
            card.power_off()
        finally:
            stored.close()


def _tpm_row(name: str, stats: Stats, soft: Stats, anchor: Stats | None, kind: str) -> Row:
    comparison = f"{stats.median_ns / soft.median_ns:,.1f}x software key"
    if anchor is None:
        return Row(name, stats, comparison=comparison)
    ratio = stats.median_ns / anchor.median_ns
    tool = "tpm2_sign" if kind == "sign" else "tpm2_ecdhzgen"
    target = Target(f"<= {TPM2_SIGN_FACTOR:g}x {tool}", ratio <= TPM2_SIGN_FACTOR)
    return Row(name, stats, comparison=f"{ratio:.2f}x {tool}, {comparison}", ratio=ratio,
               target=target)  # fmt: skip


def run(ctx: RunContext) -> GroupResult:
    group = GroupResult("tpm", "card store backends: open time, PIV APDUs on a stored card")
    reason = unavailable()
    if reason is not None:
        group.skipped = reason
        group.notes.append("not measured: card open time with swtpm, backend effect")
        return group
    from vsc.store import BackendSpec

    fast = Budget(warmup=20, samples=2000, seconds=1.0, min_samples=20).scaled(ctx.scale)
    slow = Budget(warmup=2, samples=200, seconds=1.0, min_samples=5).scaled(ctx.scale)
    # scrypt 2^14 per PIN check (software) takes ~50 ms: fewer samples, same rows.
    slower = Budget(warmup=1, samples=20, seconds=1.0, min_samples=3).scaled(ctx.scale)
    reference = _memory_rows(group, fast, slow)
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vsc-bench-")))
        _backend_rows(group, "plain", BackendSpec.plain(), directory, (fast, slow), reference)
        software = BackendSpec.software(key_file=directory / "store.key")
        _backend_rows(group, "software (key file)", software, directory, (fast, slower), reference)
        tcti, starts, why = stack.enter_context(_swtpm())
        if tcti is None or starts is None:
            group.notes.append(f"tpm backend not measured: {why}")
        else:
            group.add(Row("swtpm process start, fresh state (start only)", starts, anchor=True))
            _backend_rows(
                group, "tpm (swtpm)", BackendSpec.tpm(tcti), directory, (fast, slower), reference
            )
            _tpm_key_rows(group, tcti, directory, slower)
    group.notes.append(
        "durable record write: SQLite with synchronous=FULL, one WAL fsync per commit; "
        "PIN unlock: counter decrement (commit), unseal under the PIN-derived "
        "authorisation (software: scrypt 2^14; tpm: TPM2_Unseal with auth), restore (commit)"
    )
    group.notes.append(
        "PIV on the store: VERIFY with the PIN = two durable PIV record commits (counter "
        "down before the comparison, restored after) + the backend's PIN check, i.e. the PIN "
        "binding unsealed (plain/software: the store's anti-hammering state committed before "
        "and after it, two more fsyncs; tpm: TPM2_Unseal, the TPM counts); GA sign reads and "
        "decrypts the PIN-bound private key for every signature; the status query and GET "
        "DATA touch no file (objects are kept in memory)"
    )
    group.notes.append(
        "tpm backend: the keys live in the TPM; a GA sign or ECDH is one TPM connection, the "
        "SRK (its saved context loaded), a salted parameter-encrypted session, TPM2_Load, the "
        "operation (TPM2_RSA_Decrypt with no scheme, TPM2_Sign, TPM2_ECDH_ZGen) and the "
        "flushes; tpm2_sign / tpm2_ecdhzgen: a process that loads a saved key context and "
        "runs the operation (no salted session), which is what a script pays per operation"
    )
    if shutil.which("swtpm") is None:
        group.notes.append("swtpm missing (Debian: swtpm swtpm-tools)")
    return group
