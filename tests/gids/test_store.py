"""GIDS over the card store, in process, on every backend (plain, software, tpm on a real swtpm).

Each test personalises a stored card, closes it and opens it again, as a
restart of the emulator would: what must survive does, what must not be
stored is not in the files, and keys stay sealed to the PIN.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from applets.gids import GIDS_ATR
from applets.gids.host import (
    CardError,
    admin_key_do,
    authenticate_mutual,
    initialize,
    key_file_fcp,
    send,
)
from applets.gids.state import Reference
from applets.piv.handles import KeyLocation
from vsc import Card
from vsc.apdu import CommandApdu
from vsc.lifecycle import AuditLog
from vsc.store import BackendSpec, CardStore, CorruptStore, StoredCard, bound
from vsc.store.gids import BINDING, RECORD, StoredGidsApplet, open_gids
from vsc.store.store import CARD_DB
from vsc.testing.swtpm import Swtpm
from vsc.tlv import parse_dict, parse_tlv

PIN = b"pin-4e1d7b22"
NEW_PIN = b"pin-9c0a3f57"
ADMIN = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778")
NEW_ADMIN = bytes(range(0x30, 0x48))
DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


@dataclass
class Stored:
    stored: StoredCard
    applet: StoredGidsApplet
    card: Card

    def send(self, apdu: CommandApdu | str) -> bytes:
        return send(self.card.transmit, bytes.fromhex(apdu) if isinstance(apdu, str) else apdu)

    def status(self, apdu: CommandApdu | str) -> int:
        try:
            self.send(apdu)
        except CardError as e:
            return e.sw
        return 0x9000

    def verify(self, pin: bytes) -> int:
        return self.status(CommandApdu(0, 0x20, 0, 0x80, pin))

    def sign(self, digest: bytes) -> bytes:
        self.send(CommandApdu(0, 0x22, 0x41, 0xB6, bytes.fromhex("800156840181")))
        return self.send(CommandApdu(0, 0x2A, 0x9E, 0x9A, DIGEST_INFO + digest, 256))

    def close(self) -> None:
        self.card.power_off()
        self.stored.close()


class Cards:
    def __init__(self, store: CardStore, backend: BackendSpec) -> None:
        self.store = store
        self.backend = backend

    def open(self, name: str = "alice") -> Stored:
        exists = self.store.exists(name)
        stored = (
            self.store.open(name, self.backend) if exists else self.store.create(name, self.backend)
        )
        applet = open_gids(stored, provision=not exists)
        card = Card([applet], atr=GIDS_ATR, default=applet)
        return Stored(stored, applet, card)

    def personalised(self) -> tuple[Stored, rsa.RSAPublicKey]:
        """A personalised card with an RSA-1024 key in container 0 (key 81)."""
        card = self.open()
        initialize(card.card.transmit, pin=PIN, admin_key=ADMIN)
        card.send(CommandApdu(0, 0x20, 0, 0x80, PIN))
        card.send(CommandApdu(0, 0xE0, 0, 0, key_file_fcp(0x81, 0x06, decipher=True)))
        card.send("00440000")
        answer = card.send(CommandApdu(0, 0x47, 0, 0, bytes.fromhex("AC06800106830181"), 256))
        fields = parse_dict(parse_tlv(answer, 0x7F49).value)
        n, e = (int.from_bytes(fields[t], "big") for t in (0x81, 0x82))
        return card, rsa.RSAPublicNumbers(e, n).public_key()


@pytest.fixture
def cards(store: CardStore, backend: BackendSpec) -> Iterator[Cards]:
    yield Cards(store, backend)


def _check(key: rsa.RSAPublicKey, signature: bytes, digest: bytes) -> None:
    key.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def test_a_personalised_card_survives_a_restart(cards: Cards) -> None:
    card, key = cards.personalised()
    serial = card.applet.data.serial
    card.send(CommandApdu(0, 0xDB, 0xA0, 0x10, bytes.fromhex("DF24 03 414243".replace(" ", ""))))
    card.close()

    card = cards.open()
    assert card.applet.data.serial == serial
    assert card.send("00CBA010045C02DF2400") == bytes.fromhex("DF2403414243")
    digest = hashlib.sha256(b"after a restart").digest()
    assert card.status(CommandApdu(0, 0x22, 0x41, 0xB6, bytes.fromhex("800156840181"))) == 0x6982
    assert card.verify(PIN) == 0x9000
    _check(key, card.sign(digest), digest)
    assert card.stored.protection_of("gids/key/81/key") == bound(BINDING)
    card.close()


def test_wrong_pins_are_counted_durably(cards: Cards) -> None:
    card, _ = cards.personalised()
    card.send("00200082")
    assert card.verify(b"wrong-pin") == 0x63C2
    card.stored.close()  # no power-off, no goodbye: as if killed

    card = cards.open()
    assert card.verify(b"wrong-pin") == 0x63C1
    assert card.verify(PIN) == 0x9000
    card.close()


def test_the_administrator_unblocks_and_keys_still_work(cards: Cards) -> None:
    card, key = cards.personalised()
    card.send("00200082")
    for _ in range(3):
        card.verify(b"wrong-pin")
    card.close()

    card = cards.open()
    assert card.verify(PIN) == 0x6983
    authenticate_mutual(card.card.transmit, ADMIN)
    card.send(CommandApdu(0, 0x2C, 0x02, 0x80, NEW_PIN))
    card.close()

    card = cards.open()
    assert card.verify(PIN) == 0x63C2
    assert card.verify(NEW_PIN) == 0x9000
    digest = hashlib.sha256(b"unblocked").digest()
    _check(key, card.sign(digest), digest)
    card.close()


def test_pin_and_admin_key_changes_persist(cards: Cards) -> None:
    card, key = cards.personalised()
    card.send(CommandApdu(0, 0x24, 0x00, 0x80, PIN + NEW_PIN))
    authenticate_mutual(card.card.transmit, ADMIN)
    card.send(CommandApdu(0, 0xDB, 0x3F, 0xFF, admin_key_do(NEW_ADMIN)))
    card.close()

    card = cards.open()
    assert card.verify(PIN) == 0x63C2
    with pytest.raises(CardError):
        authenticate_mutual(card.card.transmit, ADMIN)
    authenticate_mutual(card.card.transmit, NEW_ADMIN)
    card.send(CommandApdu(0, 0x2C, 0x02, 0x80, PIN))  # the admin role follows the new key
    card.send(CommandApdu(0, 0x20, 0, 0x80, PIN))
    digest = hashlib.sha256(b"changed").digest()
    _check(key, card.sign(digest), digest)
    card.close()


def test_a_deleted_key_is_gone_from_the_files(cards: Cards) -> None:
    card, _ = cards.personalised()
    card.send("00A4000C02B081")
    card.send("00E40000")
    assert card.stored.names("gids/key/") == []
    assert "gids/file/B081" not in card.stored.names("gids/file/")
    card.close()


def test_personalisation_interrupted_starts_over(cards: Cards) -> None:
    card = cards.open()
    card.send(CommandApdu(0, 0x24, 0x01, 0x80, PIN))
    card.stored.close()  # killed before activation: values in the record, no binding
    card = cards.open()
    assert BINDING not in card.stored.bindings()
    assert card.applet.data.secret(Reference.PIN) is not None
    initialize_rest = CommandApdu(0, 0x24, 0x01, 0x80, NEW_PIN)
    card.send(initialize_rest)  # personalisation may still set a new PIN
    card.send("00A4000C023FFF")
    card.send("00440000")
    assert set(card.stored.bindings()[BINDING]) == {"pin"}
    assert card.verify(NEW_PIN) == 0x9000
    card.close()


def test_no_pin_is_left_in_the_files_after_activation(cards: Cards) -> None:
    """The record that held the PIN while the card was personalised is scrubbed, and the
    records that remain hold no PIN value."""
    card = cards.open()
    card.send(CommandApdu(0, 0x24, 0x01, 0x80, PIN))
    database = cards.store.path_of("alice") / CARD_DB
    with contextlib.closing(sqlite3.connect(database)) as connection:
        (with_pin,) = connection.execute(
            "SELECT value FROM records WHERE name = 'gids/record'"
        ).fetchone()
    initialize(card.card.transmit, pin=PIN, admin_key=ADMIN)  # sets the PIN again, activates
    card.send(CommandApdu(0, 0x24, 0x00, 0x80, PIN + NEW_PIN))
    files = b"".join(p.read_bytes() for p in sorted(database.parent.glob(f"{CARD_DB}*")))
    assert bytes(with_pin) not in files
    for name in card.stored.names():
        if card.stored.protection_of(name) == bound(BINDING):
            continue
        value = card.stored.get(name) or b""
        assert PIN.hex().encode() not in value and NEW_PIN.hex().encode() not in value, name
    record = json.loads(card.stored.get(RECORD) or b"")
    assert record["pin"]["value"] == "" and record["pin"]["length"] == len(NEW_PIN)
    card.close()


def test_security_events_reach_the_audit_log(cards: Cards, tmp_path: Path) -> None:
    card, _ = cards.personalised()
    audit = AuditLog(tmp_path / "audit")
    card.applet.events = audit.card_hook("alice")
    with pytest.raises(CardError):
        authenticate_mutual(card.card.transmit, NEW_ADMIN)
    authenticate_mutual(card.card.transmit, ADMIN)
    card.send(CommandApdu(0, 0x2C, 0x02, 0x80, NEW_PIN))
    card.close()
    events = [(e["event"], e.get("tries_left")) for e in audit.events("alice")]
    assert events == [("admin-key-refused", 9), ("unblock", None)]
    text = audit.path.read_text()
    assert PIN.decode() not in text and NEW_PIN.decode() not in text
    for secret in (PIN, NEW_PIN, ADMIN, NEW_ADMIN):
        assert secret.hex() not in text.lower()


def test_a_card_missing_its_record_is_refused_not_reset(cards: Cards) -> None:
    card, _ = cards.personalised()
    card.stored.delete(RECORD)
    card.close()
    stored = cards.store.open("alice", cards.backend)
    try:
        with pytest.raises(CorruptStore, match="its GIDS record gids/record is missing"):
            open_gids(stored)
        assert stored.names("gids/key/")  # nothing was wiped
    finally:
        stored.close()


def test_keys_live_in_the_tpm_on_the_tpm_backend(store: CardStore, swtpm: Swtpm) -> None:
    """A GIDS key generated on a tpm card is made by the TPM and used there: its record is
    the TPM's wrapped blob (fixedTPM, fixedParent, sensitiveDataOrigin) and its authValue."""
    from vsc.store.tpm import _KEY_BLOB_VERSION, _parse_blob
    from vsc.store.tpmkeys import decode_record, is_tpm_record

    card, key = Cards(store, BackendSpec.tpm(swtpm.tcti)).personalised()
    digest = hashlib.sha256(b"signed in the TPM").digest()
    _check(key, card.sign(digest), digest)
    info = card.applet.keys.get(0x81)
    assert info is not None and info.location == KeyLocation.TPM
    record = card.stored.get("gids/key/81/key")
    assert record is not None and is_tpm_record(record)
    _, public = _parse_blob(decode_record(0x81, record).blob, _KEY_BLOB_VERSION)
    attributes = str(public.publicArea.objectAttributes)
    assert all(a in attributes for a in ("fixedtpm", "fixedparent", "sensitivedataorigin"))
    card.close()
