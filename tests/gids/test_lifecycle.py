"""GIDS cards in the lifecycle: ``vsc create --applet gids``, ``info``, ``unblock``, ``respond``.

The API on the plain backend (the logic) and on the TPM (the PIN binding's
administrator role), then the commands as a user types them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from applets.gids import GIDS_ATR
from applets.gids.host import CardError, send
from vsc import Card
from vsc.apdu import CommandApdu
from vsc.lifecycle import AuditLog, CardManager
from vsc.lifecycle.errors import (
    LifecycleError,
    NoPendingRequest,
    PinPolicyViolation,
    WrongAdminKey,
)
from vsc.lifecycle.gids import GidsCards, gids_response, is_gids_challenge
from vsc.store import BackendSpec, CardStore, ManualClock
from vsc.store.gids import open_gids

from ..lifecycle.conftest import Vsc

PIN = "pin-for-gids-1"
NEW_PIN = "pin-for-gids-2"
KEY = bytes(range(0x20, 0x38))


@pytest.fixture
def cards(tmp_path: Path) -> GidsCards:
    store = CardStore(tmp_path / "store", clock=ManualClock())
    return GidsCards(CardManager(store, BackendSpec.plain()))


def verify(cards: GidsCards, name: str, pin: str) -> int:
    """VERIFY through the card's APDUs; its status word."""
    stored = cards.manager.store.open(name, BackendSpec.plain())
    try:
        applet = open_gids(stored)
        card = Card([applet], atr=GIDS_ATR, default=applet)
        try:
            send(card.transmit, CommandApdu(0, 0x20, 0, 0x80, pin.encode()))
        except CardError as e:
            return e.sw
        return 0x9000
    finally:
        stored.close()


def test_create_personalises_as_tpmvscmgr(cards: GidsCards) -> None:
    created = cards.create("alice", pin=PIN)
    assert created.admin_key is not None and len(created.admin_key) == 24
    assert created.puk == "none" and len(created.cardid) == 16
    report = cards.info("alice")
    assert report.operational and report.pin_tries == (3, 3) and report.puk_tries is None
    assert report.admin_key_algorithm == "3DES" and report.admin_tries == (10, 10)
    assert report.cardid == created.cardid.hex()
    assert report.pin_policy[0] == "length: 8 to 127 characters"
    assert verify(cards, "alice", PIN) == 0x9000
    events = [e["event"] for e in AuditLog(cards.manager.store.root).events("alice")]
    assert events == ["create", "personalise"]
    assert created.admin_key.hex() not in (cards.manager.store.root / "audit.log").read_text()


def test_create_with_the_defaults_and_a_puk(cards: GidsCards) -> None:
    created = cards.create("bob", admin_key="default", puk="default")
    assert created.admin_key is None
    assert verify(cards, "bob", "12345678") == 0x9000
    assert cards.info("bob").puk_tries == (3, 3)


def test_a_pin_the_policy_refuses_makes_no_card(cards: GidsCards) -> None:
    with pytest.raises(PinPolicyViolation) as refused:
        cards.create("carol", pin="1234")
    assert refused.value.rule == "min-length"
    assert not cards.manager.store.exists("carol")


def test_unblock_by_challenge_and_response(cards: GidsCards) -> None:
    cards.create("alice", pin=PIN, admin_key=KEY.hex())
    for _ in range(3):
        verify(cards, "alice", "wrong-pin-0")
    assert verify(cards, "alice", PIN) == 0x6983
    pending = cards.begin_unblock("alice")
    assert len(pending.challenge) == 8 and is_gids_challenge(pending.text)
    assert cards.info("alice").pending == pending.text
    encryptor = Cipher(TripleDES(KEY), modes.ECB()).encryptor()
    expected = encryptor.update(pending.challenge) + encryptor.finalize()
    response = gids_response(KEY, pending.text)
    assert bytes.fromhex(response) == expected
    with pytest.raises(WrongAdminKey) as wrong:
        cards.complete_unblock("alice", "00" * 8, NEW_PIN)
    assert wrong.value.tries_left == 9
    cards.complete_unblock("alice", response, NEW_PIN)
    assert verify(cards, "alice", NEW_PIN) == 0x9000
    assert cards.info("alice").admin_tries == (10, 10)
    with pytest.raises(NoPendingRequest):  # used up
        cards.complete_unblock("alice", response, NEW_PIN)
    events = [e["event"] for e in AuditLog(cards.manager.store.root).events("alice")]
    assert events[-3:] == ["challenge", "admin-key-refused", "unblock"]


def test_a_challenge_expires_and_a_refused_pin_costs_no_try(cards: GidsCards) -> None:
    cards.create("alice", pin=PIN, admin_key=KEY.hex())
    pending = cards.begin_unblock("alice")
    with pytest.raises(PinPolicyViolation):
        cards.complete_unblock("alice", gids_response(KEY, pending.text), "short")
    assert cards.info("alice").admin_tries == (10, 10)
    clock = cards.manager.store.clock
    assert isinstance(clock, ManualClock)
    clock.advance(3601)
    with pytest.raises(NoPendingRequest):
        cards.complete_unblock("alice", gids_response(KEY, pending.text), NEW_PIN)


def test_the_piv_commands_leave_a_gids_card_alone(cards: GidsCards) -> None:
    cards.create("alice", pin=PIN)
    with pytest.raises(LifecycleError, match="GIDS card"):
        cards.manager.lock("alice")
    stored = cards.manager.store.open("alice", BackendSpec.plain())
    try:
        assert stored.names("piv/") == []
    finally:
        stored.close()


def test_unblock_on_the_tpm_keeps_the_keys_sealed_to_the_pin(tmp_path: Path, swtpm: object) -> None:
    from vsc.testing.swtpm import Swtpm

    assert isinstance(swtpm, Swtpm)
    store = CardStore(tmp_path / "tpm-store", clock=ManualClock())
    cards = GidsCards(CardManager(store, BackendSpec.tpm(swtpm.tcti)))
    cards.create("alice", pin=PIN, admin_key=KEY.hex())
    pending = cards.begin_unblock("alice")
    cards.complete_unblock("alice", gids_response(KEY, pending.text), NEW_PIN)
    stored = store.open("alice", BackendSpec.tpm(swtpm.tcti))
    try:
        applet = open_gids(stored)
        card = Card([applet], atr=GIDS_ATR, default=applet)
        send(card.transmit, CommandApdu(0, 0x20, 0, 0x80, NEW_PIN.encode()))
        assert stored.is_unlocked("gids")  # the TPM unsealed the binding with the new PIN
    finally:
        stored.close()


def test_the_commands(tmp_path: Path) -> None:
    vsc = Vsc(tmp_path / "store", ["--insecure-plain"])
    created = vsc.run("create", "g", "--applet", "gids", "--pin", PIN, "--json").json()
    assert created["applet"] == "gids" and len(created["admin_key"]) == 48
    key = created["admin_key"]
    info = vsc.run("info", "g").stdout
    assert "GIDS card g" in info and "PIN:           3 of 3 tries left" in info
    assert "PUK:           none" in info

    issued = vsc.run("unblock", "g").stdout
    challenge = re.search(r"^  ((?:[0-9A-F]{2} ){7}[0-9A-F]{2})$", issued, re.M)
    assert challenge is not None, issued
    answered = vsc.run("respond", challenge.group(1), "--admin-key", key, backend=False).stdout
    response = answered.split("Response: ")[1].strip()
    vsc.run("unblock", "g", "--pin", NEW_PIN, "--response", response)
    assert "PIN reset" in vsc.audit_text()

    refused = vsc.run("create", "h", "--applet", "gids", "--pin", "1234", status=3)
    assert "min-length" in refused.output
    wrong = vsc.run("create", "h", "--applet", "gids", "--generate", status=3)
    assert "--generate is for PIV cards" in wrong.output


def test_the_admin_key_from_a_file_the_environment_and_warned_hex(tmp_path: Path) -> None:
    vsc = Vsc(tmp_path / "store", ["--insecure-plain"])
    key = KEY.hex()
    path = tmp_path / "admin.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    created = vsc.run(
        "create", "g", "--applet", "gids", "--pin", PIN, "--admin-key-file", str(path), "--json"
    ).json()
    assert created["admin_key"] is None  # chosen, so never printed
    issued = vsc.run("unblock", "g").stdout
    challenge = re.search(r"^  ((?:[0-9A-F]{2} ){7}[0-9A-F]{2})$", issued, re.M)
    assert challenge is not None, issued
    answered = vsc.run("respond", challenge.group(1), backend=False, env={"VSC_ADMIN_KEY": key})
    response = answered.stdout.split("Response: ")[1].strip()
    assert response == gids_response(KEY, challenge.group(1))
    vsc.run("unblock", "g", "--pin", NEW_PIN, "--response", response)
    assert "PIN reset" in vsc.audit_text() and key not in vsc.audit_text()
    hex_given = vsc.run("create", "h", "--applet", "gids", "--pin", PIN, "--admin-key", key)
    assert "visible to every user" in hex_given.stderr
