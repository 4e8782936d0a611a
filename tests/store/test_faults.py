"""A full disk and a read-only store: every change refused with 6581, nothing lost.

Theory of operation
-------------------
Each scenario runs in a child process in a private mount namespace
(``unshare -m``), so its mounts are invisible to everyone else and vanish
with it. The child runs a PIV card on the store in-process (the emulator's
path: ``vsc.store.piv.open_piv`` + ``vsc.Card``), personalises it, breaks the
storage, tries every kind of state change, lifts the fault and reopens the
card; it prints one ``RESULT {json}`` line. It finally copies the closed card
out of its mount, and the parent reopens that copy in its own process:
integrity check, and every record exactly as the child last committed it.

* **full disk**: the store on a 4 MiB tmpfs, filled up by a filler file
  (``ENOSPC``, SQLite's ``SQLITE_FULL``); the fault is lifted by deleting it.
* **a file system turning read-only under the open card**: the store on an
  ext4 image on a loop device, mounted ``errors=remount-ro``; ext4's own
  error trigger (``/sys/fs/ext4/DEV/trigger_fs_error``) makes it read-only
  as a failing disk would. Lifted by ``e2fsck`` and mounting it again (root
  and loop devices only; skipped otherwise). A read-only *bind* mount cannot
  be made under an open card: the kernel refuses to remount a mount with
  open writers (EBUSY).
* **a read-only store at open**: a read-only bind mount; the open (and the
  emulator's start) fails with a clear error and the card stays intact.

Under the fault each change must answer ``6581`` (memory failure; never
``6F00``, never an internal error logged by the card), the card's records
must be exactly those committed before, reads must keep working, and a PIN
try whose counter decrement could not be committed must not have been
compared: even the right PIN answers ``6581`` and leaves the session
unverified, and the counter does not move.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from yubikit.core import TRANSPORT
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, OBJECT_ID, PIN_POLICY, SLOT, PivSession

from applets.piv import YUBIKEY_5_7
from vsc import Card
from vsc.inproc import YubikitConnection
from vsc.store import (
    BackendSpec,
    CardStore,
    StorageFailure,
    StoredCard,
    StoreError,
    open_card,
)
from vsc.store.piv import open_piv
from vsc.sw import ApduError
from vsc.testing.pcscd import unshare_argv

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 180.0
SERIAL = 31415926
PIN, PUK = b"123456\xff\xff", b"12345678"
NEW_PIN = b"24681357"
WRONG_PIN = b"99999999"
CHUID = b"\x30\x19" + bytes(25)
MESSAGE = b"signed while the disk was full"
NEW_AES_KEY = "08" + "9B" + "10" + "00112233445566778899AABBCCDDEEFF"  # AES-128

# Every kind of state change; under the fault each must answer 6581.
CHANGES = {
    "verify wrong PIN": "0020008008" + WRONG_PIN.hex(),
    "verify right PIN": "0020008008" + PIN.hex(),
    "change PIN": "0024008010" + PIN.hex() + NEW_PIN.hex(),
    "unblock PIN with PUK": "002C008010" + PUK.hex() + NEW_PIN.hex(),
    "put data": "00DB3FFF" + "21" + "5C035FC102" + "531A" + "3019" + "11" * 24,
    "generate 9C": "0047009C05AC03800111",
    "delete 9E": "00F6FF9E",
    "move 9E to 82": "00F6829E",
    "set management key": "00FFFFFF" + f"{len(NEW_AES_KEY) // 2:02X}" + NEW_AES_KEY,
}


# -- the child's side -----------------------------------------------------------------------------


def backend_spec(kind: str, key_file: Path) -> BackendSpec:
    if kind == "plain":
        return BackendSpec.plain()
    return BackendSpec.software(key_file=key_file, passphrase_log2_n=4, auth_log2_n=4)


class Bench:
    """One stored PIV card, served in-process as the emulator does."""

    def __init__(self, root: Path, backend: BackendSpec) -> None:
        self.store = CardStore(root / "store")
        self.backend = backend
        self.stored: StoredCard | None = None
        self.card = Card()
        self.session: PivSession | None = None

    def open(self) -> None:
        exists = self.store.exists("victim")
        if exists:
            stored = self.store.open("victim", self.backend)
        else:
            stored = self.store.create("victim", self.backend)
        self.stored = stored
        self.card = Card()
        self.card.register(
            open_piv(stored, serial=SERIAL, profile=YUBIKEY_5_7, provision=not exists), default=True
        )
        self.session = PivSession(YubikitConnection(self.card, TRANSPORT.USB))

    def close(self) -> None:
        self.card.power_off()
        if self.stored is not None:
            self.stored.close()
        self.stored = self.session = None

    @property
    def s(self) -> PivSession:
        assert self.session is not None
        return self.session

    @property
    def path(self) -> Path:
        return self.store.path_of("victim")

    def sw(self, apdu: str) -> int:
        return int.from_bytes(self.card.transmit(bytes.fromhex(apdu))[-2:], "big")

    def records(self) -> dict[str, str]:
        assert self.stored is not None
        return records_of(self.stored)


def records_of(stored: StoredCard) -> dict[str, str]:
    """Everything the card committed: records (bound ones by name: they need the PIN),
    the store's counters, the anti-hammering counter."""
    result = {}
    for name in stored.names():
        if (stored.protection_of(name) or "").startswith("bound:"):
            result[name] = "bound"
        else:
            result[name] = (stored.get(name) or b"").hex()
    for counter in stored.counters():
        result[f"counter {counter.name}"] = f"{counter.remaining}/{counter.maximum}"
    result["failed tries"] = str(stored.anti_hammer.status().failed_tries)
    return result


def personalise(bench: Bench) -> dict[str, str]:
    """Keys in 9A (PIN once) and 9E (PIN never), a certificate, CHUID, one wrong PIN."""
    s = bench.s
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    public_9a = s.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    s.put_key(SLOT.CARD_AUTH, ec.generate_private_key(ec.SECP256R1()), PIN_POLICY.NEVER)
    s.put_object(OBJECT_ID.CHUID, CHUID)
    s.put_object(OBJECT_ID.AUTHENTICATION, b"\x70\x03cer\x71\x01\x00")
    assert isinstance(public_9a, ec.EllipticCurvePublicKey)
    assert bench.sw("0020008008" + WRONG_PIN.hex()) == 0x63C2
    assert bench.stored is not None
    bench.stored.set_counter("x/pin", 3)  # a counter of the store's own API
    return bench.records()


def sign_9e(bench: Bench) -> bool:
    """A signature by the PIN-never key, checked against its public key."""
    public = bench.s.get_slot_metadata(SLOT.CARD_AUTH).public_key
    assert isinstance(public, ec.EllipticCurvePublicKey)
    signature = bench.s.sign(SLOT.CARD_AUTH, KEY_TYPE.ECCP256, MESSAGE, hashes.SHA256())
    public.verify(signature, MESSAGE, ec.ECDSA(hashes.SHA256()))
    return True


def reads_work(bench: Bench) -> dict[str, Any]:
    """What a card whose storage failed must still do: everything that changes nothing."""
    s = bench.s
    return {
        "serial": s.get_serial(),
        "chuid": s.get_object(OBJECT_ID.CHUID).hex(),
        "pin_attempts": s.get_pin_attempts(),
        "sign_9e": sign_9e(bench),
        "attest_9a": s.attest_key(SLOT.AUTHENTICATION).serial_number > 0,
        "verify_status": bench.sw("00200080"),
    }


def try_changes(bench: Bench) -> dict[str, int]:
    """Every kind of change, each on a card whose management key is authenticated."""
    answers = {}
    for what, apdu in CHANGES.items():
        bench.s.authenticate(DEFAULT_MANAGEMENT_KEY)
        answers[what] = bench.sw(apdu)
    return answers


def store_level(bench: Bench) -> dict[str, str]:
    """The store's own API under the fault: what each call raised."""
    stored = bench.stored
    assert stored is not None
    attempts: dict[str, Callable[[], object]] = {
        "put": lambda: stored.put("x/new", b"new"),
        "begin_attempt": lambda: stored.begin_attempt("x/pin"),
        "delete": lambda: stored.delete("piv/object/5FC102"),
        "create another card": lambda: bench.store.create("other", bench.backend).close(),
    }
    return {what: outcome(attempt) for what, attempt in attempts.items()}


def outcome(attempt: Callable[[], object]) -> str:
    try:
        attempt()
    except StoreError as e:
        sw = f" {e.sw:04X}" if isinstance(e, ApduError) else ""
        return f"{type(e).__name__}{sw}: {e}"
    return "done"


class ErrorCounter(logging.Handler):
    """Counts ERROR records of the card (``6F00`` with a traceback is a crash)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run(argv: list[str], timeout: float = 60.0) -> None:
    subprocess.run(argv, check=True, timeout=timeout, capture_output=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system has no byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    os.write(fd, bytes(size))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def faulty_life(
    bench: Bench, break_it: Callable[[], None], repair: Callable[[], None]
) -> dict[str, Any]:
    """Personalise, break, try every change, check reads and records, repair, reopen."""
    errors = ErrorCounter()
    logging.getLogger("vsc").addHandler(errors)
    report: dict[str, Any] = {}
    bench.open()
    committed = personalise(bench)
    report["reads_before"] = reads_work(bench)
    assert bench.stored is not None
    bench.stored.scrub()  # an empty WAL: the next commit has to grow a file
    break_it()
    report["changes"] = try_changes(bench)
    report["reads_during"] = reads_work(bench)
    report["store_level"] = store_level(bench)
    report["records_kept"] = bench.records() == committed
    report["close"] = outcome(bench.close)
    report["reopen"] = outcome(bench.open)  # still broken: opens for reads, or a clear error
    if report["reopen"] == "done":
        report["reads_reopened"] = reads_work(bench)
        report["changes_reopened"] = try_changes(bench)
        bench.close()
    repair()
    bench.open()
    assert bench.stored is not None
    bench.stored.integrity_check()
    report["records_after_repair"] = bench.records() == committed
    report["reads_after_repair"] = reads_work(bench)
    report["verify_after_repair"] = bench.sw("0020008008" + PIN.hex())
    bench.s.authenticate(DEFAULT_MANAGEMENT_KEY)
    report["changes_after_repair"] = {
        "put data": bench.sw(CHANGES["put data"]),
        "generate 9C": bench.sw(CHANGES["generate 9C"]),
    }
    report["records"] = bench.records()
    bench.close()
    report["errors_logged"] = errors.messages
    return report


def child_full_disk(mnt: Path, out: Path, backend: str) -> dict[str, Any]:
    run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=700", "vsc-full-disk", str(mnt)])
    bench = Bench(mnt, backend_spec(backend, out / "store.key"))
    filler: list[Path] = []
    report = faulty_life(bench, lambda: filler.append(fill(mnt)), lambda: filler[0].unlink())
    shutil.copytree(bench.path, out / "victim")
    return report


def child_fs_error(mnt: Path, out: Path, image: Path, backend: str) -> dict[str, Any]:
    def mount() -> None:
        run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)])

    def device() -> str:
        source = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(mnt)],
            check=True, timeout=10, capture_output=True, text=True,
        )  # fmt: skip
        return Path(source.stdout.strip()).name

    def break_it() -> None:
        Path(f"/sys/fs/ext4/{device()}/trigger_fs_error").write_text("1")
        try:
            (mnt / "probe").write_bytes(b"x")
        except OSError:
            return
        raise AssertionError("the file system did not turn read-only")

    def repair() -> None:
        run(["umount", str(mnt)])
        fsck = subprocess.run(["e2fsck", "-fy", str(image)], timeout=60, capture_output=True)
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors corrected
        mount()

    try:
        mount()
    except subprocess.CalledProcessError as e:  # no usable loop device here
        return {"skip": f"cannot mount an ext4 image: {e.stderr.decode(errors='replace')}"}
    if not Path(f"/sys/fs/ext4/{device()}/trigger_fs_error").exists():
        run(["umount", str(mnt)])
        return {"skip": "this kernel's ext4 has no trigger_fs_error"}
    bench = Bench(mnt, backend_spec(backend, out / "store.key"))
    report = faulty_life(bench, break_it, repair)
    shutil.copytree(bench.path, out / "victim")
    run(["umount", str(mnt)])
    return report


def child_read_only_open(store_root: Path, key_file: Path) -> dict[str, Any]:
    run(["mount", "--bind", str(store_root), str(store_root)])
    run(["mount", "-o", "remount,bind,ro", str(store_root)])
    report: dict[str, Any] = {}
    try:
        CardStore(store_root / "store").open("victim", backend_spec("software", key_file))
        report["open"] = "opened"
    except StoreError as e:
        report["open"] = f"{type(e).__name__}: {e}"
    emulator = subprocess.run(
        [sys.executable, "-m", "vsc.emulator", "--card", str(store_root / "store/cards/victim"),
         "--key-file", str(key_file), "--port", "1"],
        timeout=60, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    report["emulator"] = {"status": emulator.returncode, "stderr": emulator.stderr[-2000:]}
    return report


def child_main(argv: list[str]) -> None:
    scenario, *args = argv
    if scenario == "full-disk":
        report = child_full_disk(Path(args[0]), Path(args[1]), args[2])
    elif scenario == "fs-error":
        report = child_fs_error(Path(args[0]), Path(args[1]), Path(args[2]), args[3])
    elif scenario == "read-only-open":
        report = child_read_only_open(Path(args[0]), Path(args[1]))
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print("RESULT " + json.dumps(report), flush=True)


# -- the parent's side ----------------------------------------------------------------------------


def namespace_skip_reason() -> str | None:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return "needs Linux mount namespaces (unshare)"
    probe = subprocess.run(
        [*unshare_argv(), "true"], capture_output=True, text=True, timeout=10, check=False
    )
    if probe.returncode != 0:
        return f"cannot create a private mount namespace: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def namespaces() -> None:
    reason = namespace_skip_reason()
    if reason is not None:
        pytest.skip(reason)


def in_namespace(*args: str) -> dict[str, Any]:
    """Run one scenario in a child in its own mount namespace; its report."""
    argv = [*unshare_argv(), "--", sys.executable, "-m", "tests.store.test_faults", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT
    )
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    assert child.returncode == 0 and lines, (
        f"child {args[0]} failed ({child.returncode}):\n{child.stdout}\n{child.stderr}"
    )
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return report


def check_the_copy(out: Path, backend: str, expected: dict[str, str]) -> None:
    """The parent's own look at the card the child left: intact, as last committed."""
    stored = open_card(out / "victim", backend_spec(backend, out / "store.key"))
    try:
        stored.integrity_check()
        assert records_of(stored) == expected
    finally:
        stored.close()


def check_fault_report(report: dict[str, Any], fault: str, reason: str) -> None:
    for what, sw in report["changes"].items():
        assert sw == 0x6581, f"{what} under {fault}: {sw:04X}, not 6581"
    # The PIN tries above were not compared: the counter did not move (2 after the
    # one wrong PIN of personalise) and even the right PIN left the session unverified.
    before = report["reads_before"]
    assert (before["pin_attempts"], before["verify_status"]) == (2, 0x63C2)
    assert report["reads_during"] == before  # and everything that reads still works
    assert report["records_kept"], f"a change refused under {fault} left a trace"
    for what, result in report["store_level"].items():
        assert result.startswith("StorageFailure 6581:"), f"{what}: {result}"
    assert reason in report["store_level"]["put"]
    assert report["close"] == "done"
    assert report["records_after_repair"], "the repaired card lost committed data"
    assert report["reads_after_repair"] == before
    assert report["verify_after_repair"] == 0x9000  # the PIN it had, counter back to 3
    assert report["changes_after_repair"] == {"put data": 0x9000, "generate 9C": 0x9000}
    assert report["errors_logged"] == [], "the card logged an internal error"


@pytest.mark.parametrize("backend", ["plain", "software"])
def test_full_disk(tmp_path: Path, namespaces: None, backend: str) -> None:
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    report = in_namespace("full-disk", str(mnt), str(out), backend)
    check_fault_report(report, "a full disk", "the disk is full")
    # Closed and opened again on the full disk, the card serves reads and refuses changes.
    assert report["reopen"] == "done"
    assert report["reads_reopened"] == report["reads_before"]
    assert set(report["changes_reopened"].values()) == {0x6581}
    check_the_copy(out, backend, report["records"])


def fs_error_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices)"
    for tool in ("mkfs.ext4", "e2fsck", "losetup", "findmnt"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian: e2fsprogs, mount)"
    if not Path("/sys/fs/ext4").is_dir():
        return "no ext4 in this kernel"
    probe = subprocess.run(["losetup", "-f"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return f"no free loop device: {probe.stderr.strip()}"
    return None


def test_file_system_turning_read_only_under_the_card(tmp_path: Path, namespaces: None) -> None:
    reason = fs_error_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    mnt, out, image = tmp_path / "mnt", tmp_path / "out", tmp_path / "store.ext4"
    mnt.mkdir()
    out.mkdir()
    with image.open("wb") as f:
        f.truncate(32 << 20)
    run(["mkfs.ext4", "-q", "-F", str(image)])
    report = in_namespace("fs-error", str(mnt), str(out), str(image), "software")
    if "skip" in report:
        pytest.skip(report["skip"])
    # ext4 answers the open card's writes with EIO, new opens with EROFS.
    check_fault_report(report, "a file system turned read-only", "I/O error")
    assert report["reopen"].startswith("StorageFailure 6581:")
    assert "the store is read-only" in report["reopen"]
    assert "read-only" in report["store_level"]["create another card"]
    check_the_copy(out, "software", report["records"])


def test_read_only_store_at_open(tmp_path: Path, namespaces: None) -> None:
    key_file = tmp_path / "store.key"
    bench = Bench(tmp_path, backend_spec("software", key_file))
    bench.open()
    committed = personalise(bench)
    bench.close()
    report = in_namespace("read-only-open", str(tmp_path), str(key_file))
    assert report["open"].startswith("StorageFailure:"), report["open"]
    assert "read-only" in report["open"]
    assert report["emulator"]["status"] == 2, report["emulator"]
    assert "read-only" in report["emulator"]["stderr"]
    assert "Traceback" not in report["emulator"]["stderr"]
    # The card is intact and opens read-write again outside the namespace.
    bench.open()
    assert bench.stored is not None
    bench.stored.integrity_check()
    assert bench.records() == committed
    assert bench.sw("0020008008" + PIN.hex()) == 0x9000
    bench.close()


# -- the store alone: the rollback and scrub paths, with SQLite's failure injected -------------


class FailingConnection:
    """A sqlite3 connection whose next statement matching ``what`` fails as on a full disk.

    Before failing it rolls back, as SQLite itself does after ``SQLITE_FULL``
    inside a transaction.
    """

    def __init__(self, real: sqlite3.Connection, what: str) -> None:
        self.real = real
        self.what = what
        self.armed = True

    def execute(self, sql: str, *args: Any) -> Any:
        if self.armed and self.what in sql:
            self.armed = False
            if self.real.in_transaction:
                self.real.execute("ROLLBACK")
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise error
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_write_failing_after_sqlites_own_rollback_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our ROLLBACK after SQLite's must not replace the storage failure with its own error."""
    card = CardStore(tmp_path / "store").create("victim", BackendSpec.plain())
    card.set_counter("pin", 3)
    card.put("r", b"kept")
    failing = FailingConnection(card._db._conn, "UPDATE counters")
    monkeypatch.setattr(card._db, "_conn", failing)
    with pytest.raises(StorageFailure, match="disk is full") as e:
        card.begin_attempt("pin")
    assert e.value.sw == 0x6581
    assert card.counter("pin").remaining == 3  # not decremented, so nothing may be compared
    assert card.begin_attempt("pin") == 2  # the connection works on
    assert card.get("r") == b"kept"
    card.close()


def test_a_scrub_failing_after_the_commit_keeps_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint needs room too; its failure must not report a durable change as failed."""
    card = CardStore(tmp_path / "store").create("victim", BackendSpec.plain())
    card.put("secret", b"old")
    failing = FailingConnection(card._db._conn, "wal_checkpoint")
    monkeypatch.setattr(card._db, "_conn", failing)
    with caplog.at_level(logging.WARNING, logger="vsc.store.db"):
        assert card.delete("secret")  # committed; then the scrub fails: no exception
    assert "stays in the WAL" in caplog.text
    assert card.get("secret") is None
    assert card._db._scrub_pending  # retried after the next commit...
    card.put("other", b"x")
    assert not card._db._scrub_pending  # ...which succeeds
    card.close()


if __name__ == "__main__":
    child_main(sys.argv[1:])
