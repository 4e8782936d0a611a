"""Shared mode under load, through two real pcscds: nobody resets the card under anyone.

A local application (pyscard, PC/SC shared mode, its sequences in
transactions) verifies the PIN and then runs at least 10,000 APDUs that each
ask whether its PIN is still verified, while the remote side runs OpenSC's
``pkcs11-tool --test``, a key generation with yubico-piv-tool and a signature
with pkcs11-tool, through the share. Before shared mode gave the remote
session its own logical channel, every remote connect reset the card: the
local loop saw SCARD_W_RESET_CARD and lost its PIN (this test failed so).

The reverse direction: a remote application that keeps its PIN verified and
never pauses, while local applications connect, transact and disconnect.
Before the service bounded how long it holds a transaction, the local
applications waited for ever (this test failed so).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .sharebed import (
    CLIENT_TIMEOUT,
    PIN,
    SELECT_PIV,
    Process,
    ShareBed,
    _pkcs11_module,
    prepare_local_key,
    remote_sign,
    share_bed,
)

pytestmark = pytest.mark.e2e

LOCAL_APDUS = 10_000
LOOP_TIMEOUT = 90.0

#: The local application: verify the PIN, then loop PIN-status queries in transactions of 50
#: until told to stop (and at least ``minimum``); write what it saw as JSON.
LOCAL_LOOP = r"""
import json, os, sys, time
from smartcard import scard

reader, pin, stop_path, out_path, minimum = sys.argv[1:6]
SELECT = bytes.fromhex("00A4040005A000000308")
STATUS = bytes.fromhex("0020008000")
VERIFY = bytes.fromhex("0020008008") + pin.encode() + b"\xff" * (8 - len(pin))
hr, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
assert hr == 0, scard.SCardGetErrorMessage(hr)
hr, card, protocol = scard.SCardConnect(
    context, reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
)
assert hr == 0, scard.SCardGetErrorMessage(hr)
pci = scard.SCARD_PCI_T1 if protocol == scard.SCARD_PROTOCOL_T1 else scard.SCARD_PCI_T0
errors, count, failures = [], 0, 0


def transmit(apdu):
    hr, response = scard.SCardTransmit(card, pci, list(apdu))
    if hr != 0:
        raise RuntimeError(scard.SCardGetErrorMessage(hr))
    return bytes(response)


scard.SCardBeginTransaction(card)
transmit(SELECT)
assert transmit(VERIFY) == b"\x90\x00"
scard.SCardEndTransaction(card, scard.SCARD_LEAVE_CARD)
open(out_path + ".ready", "w").close()
while count < int(minimum) or not os.path.exists(stop_path):
    hr = scard.SCardBeginTransaction(card)
    if hr != 0:
        failures += 1
        errors.append("begin: " + scard.SCardGetErrorMessage(hr))
        time.sleep(0.05)
        continue
    for _ in range(50):
        count += 1
        try:
            response = transmit(STATUS)
        except RuntimeError as exc:
            failures += 1
            errors.append(str(exc))
            continue
        if response != b"\x90\x00":
            failures += 1
            errors.append(response.hex())
    scard.SCardEndTransaction(card, scard.SCARD_LEAVE_CARD)
    time.sleep(0.02)  # the other side's turn between our sequences
with open(out_path, "w") as out:
    json.dump({"count": count, "failures": failures, "errors": errors[:20]}, out)
scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)
"""


@pytest.fixture
def bed(e2e_available: None, tool: Callable[[str], str]) -> Iterator[ShareBed]:
    yield from share_bed(tool)


def wait_for(path_exists: Callable[[], bool], process: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path_exists():
        assert process.running(), process.text()
        assert time.monotonic() < deadline, process.text()
        time.sleep(0.1)


def test_shared_mode_resets_nobody_under_load(bed: ShareBed) -> None:
    public = prepare_local_key(bed)
    endpoint = bed.attach(session="shared-session", mode="shared")
    bed.remote_card(process=endpoint)
    stop, out = bed.workdir / "stop", bed.workdir / "local.json"
    argv = [sys.executable, "-c", LOCAL_LOOP, bed.local.reader(0), PIN, str(stop), str(out)]
    local = Process([*argv, str(LOCAL_APDUS)], bed.workdir / "local.log", env=bed.local.env)
    try:
        wait_for((bed.workdir / "local.json.ready").exists, local, CLIENT_TIMEOUT)

        # The remote session does not inherit the PIN the local application verified.
        reader = bed.remote.reader(0)
        query = ["opensc-tool", "-r", reader, "-s", SELECT_PIV, "-s", "0020008000"]
        status = bed.remote.run(query, timeout=CLIENT_TIMEOUT)
        assert status.returncode == 0 and "SW1=0x63, SW2=0xC3" in status.stdout, status.stdout

        module = _pkcs11_module()
        test = bed.remote.run(
            ["pkcs11-tool", "--module", module, "--login", "--pin", PIN, "--test"],
            timeout=CLIENT_TIMEOUT * 2,
        )
        assert test.returncode == 0, bed.describe(test)
        assert "No errors" in test.stdout, test.stdout
        generate = bed.remote.run(
            ["yubico-piv-tool", "-r", reader, "-a", "generate", "-s", "9c",
             "-A", "ECCP256"],
            timeout=CLIENT_TIMEOUT,
        )  # fmt: skip
        assert generate.returncode == 0, bed.describe(generate)
        assert "BEGIN PUBLIC KEY" in generate.stdout, generate.stdout
        message = b"shared, never reset"
        public.verify(remote_sign(bed, message), message, ec.ECDSA(hashes.SHA256()))
        stop.touch()
        assert local.wait(LOOP_TIMEOUT) == 0, local.text()
    finally:
        stop.touch()
        if local.running():
            local.stop()
    seen = json.loads(out.read_text())
    assert seen["count"] >= LOCAL_APDUS, seen
    assert seen["failures"] == 0, seen  # every local APDU answered 9000: PIN still verified
    shared = [e for e in bed.events("service") if e["event"] == "shared-state"]
    assert not shared, shared  # vsc's card has logical channels: nothing shared


def test_local_applications_do_not_reset_the_remote_session(bed: ShareBed) -> None:
    """The reverse direction: local connects, transactions and disconnects leave the remote
    session's verified PIN alone (each of the remote loop's APDUs checks it)."""
    endpoint = bed.attach(session="shared-session", mode="shared")
    bed.remote_card(process=endpoint)
    stop, out = bed.workdir / "stop", bed.workdir / "remote.json"
    argv = [sys.executable, "-c", LOCAL_LOOP, bed.remote.reader(0), PIN, str(stop), str(out)]
    remote = Process([*argv, "500"], bed.workdir / "remote-loop.log", env=bed.remote.env)
    try:
        wait_for((bed.workdir / "remote.json.ready").exists, remote, CLIENT_TIMEOUT)
        reader = bed.local.reader(0)
        for _ in range(3):  # each a connect, a transaction, a disconnect
            local = bed.local.run(
                ["opensc-tool", "-r", reader, "-s", SELECT_PIV, "-s", "0020008000"],
                timeout=CLIENT_TIMEOUT,
            )
            assert local.returncode == 0, bed.describe(local)
            # The local application does not see the PIN the remote session verified.
            assert "SW1=0x63, SW2=0xC3" in local.stdout, local.stdout
        listing = bed.local.run(["pkcs11-tool", "--module", _pkcs11_module(), "--list-objects"])
        assert listing.returncode == 0, bed.describe(listing)
        stop.touch()
        assert remote.wait(LOOP_TIMEOUT) == 0, remote.text()
    finally:
        stop.touch()
        if remote.running():
            remote.stop()
    seen = json.loads(out.read_text())
    assert seen["count"] >= 500 and seen["failures"] == 0, seen
