"""PIV over the card store, in-process, on every backend (plain, software, tpm on a real swtpm).

yubikit's ``PivSession`` drives the card as ykman would; raw APDUs where the
test needs channels or exact status words. Results of key operations are
checked with ``cryptography``; what is stored is checked in the card's files.
"""

from __future__ import annotations

import datetime
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yubikit.core import TRANSPORT, InvalidPinError
from yubikit.core.smartcard import SW, ApduError
from yubikit.piv import (
    DEFAULT_MANAGEMENT_KEY,
    KEY_TYPE,
    MANAGEMENT_KEY_TYPE,
    OBJECT_ID,
    PIN_POLICY,
    SLOT,
    PivSession,
)

from applets.piv import YUBIKEY_5_7
from applets.piv.state import PivRecord, Reference
from vsc import Card
from vsc.emulator import open_card as emulator_open_card
from vsc.inproc import YubikitConnection
from vsc.store import (
    CARD,
    BackendMismatch,
    BackendSpec,
    BindingLocked,
    CardSettings,
    CardStore,
    DaParameters,
    StoredCard,
    bound,
)
from vsc.store.piv import BINDING, RECORD, StoredPivApplet, StoredPivStore, open_piv
from vsc.store.store import CARD_DB
from vsc.testing.swtpm import Swtpm

PIN, PUK = "123456", "12345678"
NEW_PIN = "87654321"
AES_KEY = bytes(range(0x40, 0x60))
SERIAL = 27182818
MESSAGE = b"signed by a persistent card"


@dataclass
class Piv:
    """One open stored card with PIV, and a yubikit session on it."""

    stored: StoredCard
    applet: StoredPivApplet
    card: Card
    session: PivSession

    def transmit(self, apdu: str) -> int:
        """A raw APDU; its status word."""
        return int.from_bytes(self.card.transmit(bytes.fromhex(apdu))[-2:], "big")

    def close(self) -> None:
        self.card.power_off()
        self.stored.close()


def open_piv_card(
    store: CardStore,
    backend: BackendSpec,
    name: str = "alice",
    *,
    settings: CardSettings | None = None,
) -> Piv:
    """The PIV card ``name``; made (with ``settings``) and provisioned if it does not exist."""
    exists = store.exists(name)
    stored = store.open(name, backend) if exists else store.create(name, backend, settings=settings)
    applet = open_piv(stored, serial=SERIAL, profile=YUBIKEY_5_7, provision=not exists)
    card = Card()
    card.register(applet, default=True)
    return Piv(stored, applet, card, PivSession(YubikitConnection(card, TRANSPORT.USB)))


@pytest.fixture
def piv(store: CardStore, backend: BackendSpec) -> Iterator[Piv]:
    card = open_piv_card(store, backend)
    yield card
    if not card.stored.closed:
        card.close()


def reopen(piv: Piv, store: CardStore, backend: BackendSpec) -> Piv:
    piv.close()
    return open_piv_card(store, backend)


def certificate(public_key: ec.EllipticCurvePublicKey) -> x509.Certificate:
    signer = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vsc persistence")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(signer, hashes.SHA256())
    )


def sign_and_check(session: PivSession, slot: SLOT, public: ec.EllipticCurvePublicKey) -> None:
    signature = session.sign(slot, KEY_TYPE.ECCP256, MESSAGE, hashes.SHA256())
    public.verify(signature, MESSAGE, ec.ECDSA(hashes.SHA256()))


def card_files(piv: Piv) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(piv.stored.path.glob("card.db*")))


def seal_of(piv: Piv, role: str) -> bytes:
    with sqlite3.connect(piv.stored.path / CARD_DB) as conn:
        row = conn.execute(
            "SELECT blob FROM binding_seals WHERE binding = ? AND role = ?", (BINDING, role)
        ).fetchone()
    conn.close()
    return bytes(row[0])


def binding_public(piv: Piv) -> bytes:
    with sqlite3.connect(piv.stored.path / CARD_DB) as conn:
        row = conn.execute("SELECT public FROM bindings WHERE name = ?", (BINDING,)).fetchone()
    conn.close()
    return bytes(row[0])


def wrong_pin(session: PivSession, pin: str = "000000") -> int:
    with pytest.raises(InvalidPinError) as e:
        session.verify_pin(pin)
    return e.value.attempts_remaining


# -- persistence ---------------------------------------------------------------------------------


def test_data_keys_and_counters_survive_reopen(
    piv: Piv, store: CardStore, backend: BackendSpec
) -> None:
    s = piv.session
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    public_9a = s.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    assert isinstance(public_9a, ec.EllipticCurvePublicKey)
    cert = certificate(public_9a)
    s.put_certificate(SLOT.AUTHENTICATION, cert)
    imported = ec.generate_private_key(ec.SECP256R1())
    s.put_key(SLOT.CARD_AUTH, imported, PIN_POLICY.NEVER)
    s.put_object(OBJECT_ID.CHUID, b"\x30\x19" + bytes(25))
    s.set_management_key(MANAGEMENT_KEY_TYPE.AES256, AES_KEY)
    f9 = s.get_certificate(SLOT.ATTESTATION)
    assert wrong_pin(s) == 2
    with pytest.raises(InvalidPinError):
        s.unblock_pin("00000000", PIN)

    piv = reopen(piv, store, backend)
    s = piv.session
    assert s.get_serial() == SERIAL
    assert s.get_pin_attempts() == 2
    assert s.get_puk_metadata().attempts_remaining == 2
    assert s.get_certificate(SLOT.AUTHENTICATION) == cert
    assert s.get_certificate(SLOT.ATTESTATION) == f9  # the same F9 key and certificate
    assert s.get_object(OBJECT_ID.CHUID) == b"\x30\x19" + bytes(25)
    meta = s.get_slot_metadata(SLOT.AUTHENTICATION)
    assert meta.public_key == public_9a and meta.generated
    assert meta.pin_policy == PIN_POLICY.ONCE
    # The management key changed, durably.
    assert s.management_key_type == MANAGEMENT_KEY_TYPE.AES256
    with pytest.raises(ApduError):
        s.authenticate(DEFAULT_MANAGEMENT_KEY[:16])
    s.authenticate(AES_KEY)
    # 9E (PIN policy never) signs without the PIN; 9A needs it.
    sign_and_check(s, SLOT.CARD_AUTH, imported.public_key())
    with pytest.raises(ApduError) as e:
        s.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, MESSAGE, hashes.SHA256())
    assert e.value.sw == SW.SECURITY_CONDITION_NOT_SATISFIED
    s.verify_pin(PIN)
    sign_and_check(s, SLOT.AUTHENTICATION, public_9a)
    assert s.get_pin_attempts() == 3
    # Attestation (F9, stored card-encrypted) works on the reopened card.
    attestation = s.attest_key(SLOT.AUTHENTICATION)
    assert attestation.public_key() == public_9a
    attestation.verify_directly_issued_by(f9)
    piv.close()


def test_pin_protected_keys_are_sealed_to_the_pin_binding(
    piv: Piv, store: CardStore, backend: BackendSpec
) -> None:
    s = piv.session
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    s.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP256)
    s.generate_key(SLOT.CARD_AUTH, KEY_TYPE.ECCP256)  # 9E: PIN policy never by default
    stored = piv.stored
    assert stored.protection_of("piv/slot/9c/key") == bound(BINDING)
    assert stored.protection_of("piv/slot/9e/key") == CARD
    assert stored.protection_of("piv/slot/f9/key") == CARD  # ATTEST needs no PIN
    assert stored.protection_of(RECORD) == CARD

    piv = reopen(piv, store, backend)
    assert not piv.stored.is_unlocked(BINDING)
    with pytest.raises(BindingLocked):
        piv.stored.get("piv/slot/9c/key")
    assert piv.stored.get("piv/slot/9e/key") is not None
    piv.close()


def test_the_pin_is_never_stored(piv: Piv, store: CardStore, backend: BackendSpec) -> None:
    s = piv.session
    s.change_pin(PIN, NEW_PIN)
    s.change_puk(PUK, "87651234")
    assert not s.get_pin_metadata().default_value
    assert not s.get_puk_metadata().default_value
    files = card_files(piv)
    for secret in (NEW_PIN.encode(), b"87651234", NEW_PIN.encode().hex().encode()):
        assert secret not in files
    assert b'"pin": ""' in (piv.stored.get(RECORD) or b"")

    piv = reopen(piv, store, backend)
    assert not piv.session.get_pin_metadata().default_value
    piv.session.verify_pin(NEW_PIN)
    piv.session.change_pin(NEW_PIN, PIN)  # back to the default: reported as such
    assert piv.session.get_pin_metadata().default_value
    piv.close()


def test_store_never_writes_a_secret_pin(piv: Piv) -> None:
    # Defence in depth: whatever record the applet commits, the stored one has no secret.
    record = piv.applet.data.record.with_secret(Reference.PIN, b"24681357")
    record = record.with_secret(Reference.PUK, b"97531864")
    StoredPivStore(piv.stored).save(record)
    assert b"24681357" not in card_files(piv) and b"97531864" not in card_files(piv)
    stored = PivRecord.from_json((piv.stored.get(RECORD) or b"").decode())
    assert (stored.pin, stored.puk) == (b"", b"")


def test_replacing_a_key_destroys_the_old_blob(piv: Piv) -> None:
    s = piv.session
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    for slot in (SLOT.AUTHENTICATION, SLOT.CARD_AUTH):  # PIN-bound and card-encrypted
        s.generate_key(slot, KEY_TYPE.ECCP256)
        name = f"piv/slot/{slot:02x}/key"
        with sqlite3.connect(piv.stored.path / CARD_DB) as conn:
            (old,) = conn.execute("SELECT value FROM records WHERE name = ?", (name,)).fetchone()
        conn.close()
        s.generate_key(slot, KEY_TYPE.ECCP256)
        assert bytes(old) not in card_files(piv)


# -- the PIN binding's lifetime -------------------------------------------------------------------


def test_binding_is_unlocked_only_while_a_channel_has_the_pin(piv: Piv) -> None:
    stored = piv.stored
    assert not stored.is_unlocked(BINDING)
    assert piv.transmit("00200080083939393939393939") == 0x63C2  # wrong PIN
    assert not stored.is_unlocked(BINDING)
    assert piv.transmit("0020008008313233343536FFFF") == 0x9000
    assert stored.is_unlocked(BINDING)
    assert piv.transmit("0020FF80") == 0x9000  # VERIFY P1=FF: PIN status cleared
    assert not stored.is_unlocked(BINDING)

    assert piv.transmit("0020008008313233343536FFFF") == 0x9000
    assert piv.transmit("0070000001") == 0x9000  # open channel 1 (PIV selected there)
    assert piv.transmit("01200080083939393939393939") == 0x63C2  # channel 1: wrong PIN
    assert stored.is_unlocked(BINDING)  # channel 0 still has the PIN
    assert piv.transmit("0120008008313233343536FFFF") == 0x9000
    assert piv.transmit("0020FF80") == 0x9000  # channel 0 drops it; channel 1 has it
    assert stored.is_unlocked(BINDING)
    assert piv.transmit("00708001") == 0x9000  # closing channel 1 ends its session
    assert not stored.is_unlocked(BINDING)

    assert piv.transmit("0020008008313233343536FFFF") == 0x9000
    piv.card.reset()
    assert not stored.is_unlocked(BINDING)
    assert piv.transmit("0020008008313233343536FFFF") == 0x9000
    piv.card.power_off()
    assert not stored.is_unlocked(BINDING)


def test_puk_unlocks_the_binding_only_for_its_command(piv: Piv) -> None:
    assert piv.transmit("002C008010" + PUK.encode().hex() + "383838383838FFFF") == 0x9000
    assert not piv.stored.is_unlocked(BINDING)
    piv.session.verify_pin("888888")


# -- PIN, PUK and retries ----------------------------------------------------------------------


def test_pin_change_reseals_and_destroys_the_old_blob(
    piv: Piv, store: CardStore, backend: BackendSpec
) -> None:
    s = piv.session
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = s.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    old_pin_seal, old_puk_seal = seal_of(piv, "pin"), seal_of(piv, "puk")

    s.change_pin(PIN, NEW_PIN)

    new_seal = seal_of(piv, "pin")
    assert new_seal != old_pin_seal
    assert old_pin_seal not in card_files(piv)  # the old PIN would still open it
    assert seal_of(piv, "puk") == old_puk_seal
    piv = reopen(piv, store, backend)
    assert wrong_pin(piv.session, PIN) == 2
    piv.session.verify_pin(NEW_PIN)
    sign_and_check(piv.session, SLOT.AUTHENTICATION, public)  # same binding, new seal
    piv.close()


def test_puk_reset_of_a_blocked_pin_keeps_the_keys(
    piv: Piv, store: CardStore, backend: BackendSpec
) -> None:
    s = piv.session
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = s.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for left in (2, 1, 0):
        assert wrong_pin(s) == left
    piv = reopen(piv, store, backend)
    assert piv.session.get_pin_attempts() == 0
    piv.session.unblock_pin(PUK, NEW_PIN)
    piv = reopen(piv, store, backend)
    piv.session.verify_pin(NEW_PIN)
    sign_and_check(piv.session, SLOT.AUTHENTICATION, public)
    piv.close()


def test_set_pin_retries_rebinds_to_the_defaults(
    piv: Piv, store: CardStore, backend: BackendSpec
) -> None:
    s = piv.session
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = s.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    s.change_pin(PIN, NEW_PIN)
    s.verify_pin(NEW_PIN)
    s.set_pin_attempts(5, 4)
    assert not piv.stored.is_unlocked(BINDING)

    piv = reopen(piv, store, backend)
    s = piv.session
    assert s.get_pin_attempts() == 5
    assert s.get_puk_metadata().total_attempts == 4
    assert s.get_pin_metadata().default_value
    assert wrong_pin(s, NEW_PIN) == 4
    s.verify_pin(PIN)
    sign_and_check(s, SLOT.AUTHENTICATION, public)  # the keys stay usable
    piv.close()


def test_reset_destroys_the_keys_and_makes_a_new_binding(
    piv: Piv, store: CardStore, backend: BackendSpec
) -> None:
    s = piv.session
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    s.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    s.generate_key(SLOT.CARD_AUTH, KEY_TYPE.ECCP256)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    s.put_certificate(SLOT.AUTHENTICATION, certificate(other))
    f9 = s.get_certificate(SLOT.ATTESTATION)
    binding_key, seal = binding_public(piv), seal_of(piv, "pin")
    for _ in range(3):
        wrong_pin(s)
    for _ in range(3):
        with pytest.raises(InvalidPinError):
            s.unblock_pin("00000000", PIN)

    s.reset()

    assert binding_public(piv) != binding_key and seal_of(piv, "pin") != seal  # a new binding
    assert piv.stored.bindings() == {BINDING: ("pin", "puk")}
    assert seal not in card_files(piv)
    assert sorted(piv.stored.names("piv/slot/")) == ["piv/slot/f9/info", "piv/slot/f9/key"]
    piv = reopen(piv, store, backend)
    s = piv.session
    assert s.get_pin_attempts() == 3
    assert s.get_certificate(SLOT.ATTESTATION) == f9
    with pytest.raises(ApduError):
        s.get_certificate(SLOT.AUTHENTICATION)
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = s.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    s.verify_pin(PIN)
    sign_and_check(s, SLOT.AUTHENTICATION, public)
    piv.close()


def test_move_and_delete_need_no_pin(piv: Piv, store: CardStore, backend: BackendSpec) -> None:
    s = piv.session
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = s.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    s.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP256)
    piv = reopen(piv, store, backend)
    s = piv.session
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    s.move_key(SLOT.AUTHENTICATION, SLOT.RETIRED1)
    s.delete_key(SLOT.SIGNATURE)
    assert not piv.stored.is_unlocked(BINDING)
    piv = reopen(piv, store, backend)
    s = piv.session
    assert sorted(piv.stored.names("piv/slot/")) == [
        "piv/slot/82/info", "piv/slot/82/key", "piv/slot/f9/info", "piv/slot/f9/key",
    ]  # fmt: skip
    s.verify_pin(PIN)
    sign_and_check(s, SLOT.RETIRED1, public)
    piv.close()


def test_key_blobs_swapped_between_slots_are_refused(piv: Piv) -> None:
    s = piv.session
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    s.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    s.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP256)
    # Someone with write access to the file swaps the two PIN-bound blobs.
    with sqlite3.connect(piv.stored.path / CARD_DB) as conn:
        blobs = dict(conn.execute("SELECT name, value FROM records WHERE name LIKE '%/key'"))
        for a, b in (("9a", "9c"), ("9c", "9a")):
            conn.execute(
                "UPDATE records SET value = ? WHERE name = ?",
                (blobs[f"piv/slot/{b}/key"], f"piv/slot/{a}/key"),
            )
    conn.close()
    s.verify_pin(PIN)
    with pytest.raises(ApduError) as e:
        s.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, MESSAGE, hashes.SHA256())
    assert e.value.sw == 0x6581  # damaged store: the card refuses a key that is not the slot's


# -- anti-hammering and the TPM ------------------------------------------------------------------

VERIFY_PIN = "0020008008313233343536FFFF"
UNBLOCK = "002C008010" + PUK.encode().hex() + "313233343536FFFF"


def test_wrong_pins_through_verify_trip_the_lockout(piv: Piv, backend: BackendSpec) -> None:
    anti_hammer = piv.stored.anti_hammer
    anti_hammer.set_parameters(DaParameters(2, 1000, 1000), lockout_auth=b"")
    s = piv.session
    assert wrong_pin(s) == 2
    assert wrong_pin(s) == 1
    status = anti_hammer.status()
    assert status.locked_out and status.failed_tries == 2
    assert status.enforced_by == ("tpm" if backend.kind == "tpm" else "store")

    # In lockout not even the right PIN or PUK is compared: 6985 (temporary, not
    # "blocked"), and the card's own counters get their try back.
    assert piv.transmit(VERIFY_PIN) == 0x6985
    assert piv.transmit(UNBLOCK) == 0x6985
    assert s.get_pin_attempts() == 1
    assert s.get_puk_metadata().attempts_remaining == 3
    assert not piv.stored.is_unlocked(BINDING)

    anti_hammer.reset(lockout_auth=b"")
    s.verify_pin(PIN)
    assert s.get_pin_attempts() == 3


def test_copied_store_fails_on_another_tpm(tmp_path: Path, store: CardStore, swtpm: Swtpm) -> None:
    backend = BackendSpec.tpm(swtpm.tcti)
    piv = open_piv_card(store, backend)
    piv.session.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    piv.close()
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy)

    with Swtpm() as other, pytest.raises(BackendMismatch, match="different TPM"):
        emulator_open_card("alice", BackendSpec.tpm(other.tcti), store=copy)
    assert not CardStore(copy).info("alice").in_use

    # On its own TPM the copy opens: it is as new as the card (not rolled back).
    card, stored = emulator_open_card("alice", backend, store=copy)
    try:
        session = PivSession(YubikitConnection(card, TRANSPORT.USB))
        session.verify_pin(PIN)
        sign_and_check(session, SLOT.AUTHENTICATION, public)
    finally:
        stored.close()


def test_tpm_card_survives_a_tpm_restart(store: CardStore, swtpm: Swtpm) -> None:
    backend = BackendSpec.tpm(swtpm.tcti)
    piv = open_piv_card(store, backend)
    piv.session.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.session.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP256)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    piv.close()
    swtpm.restart()  # Shutdown(CLEAR), stop, start on the same state: same seed, same SRK
    piv = open_piv_card(store, backend)
    piv.session.verify_pin(PIN)  # 9C is PIN-always: VERIFY right before the signature
    sign_and_check(piv.session, SLOT.SIGNATURE, public)
    piv.close()


def test_interrupted_provisioning_leaves_no_piv_data(
    store: CardStore, backend: BackendSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = store.create("alice", backend)

    def power_cut(*args: object, **kwargs: object) -> bytes:
        raise OSError("power cut while provisioning F9")

    with monkeypatch.context() as patch:
        patch.setattr("applets.piv.applet.create_attestation_key", power_cut)
        with pytest.raises(OSError, match="power cut"):
            open_piv(stored, provision=True)
    assert stored.names() == [] and stored.bindings() == {}
    applet = open_piv(stored, serial=SERIAL, provision=True)  # provisioned from scratch
    assert applet.data.serial == SERIAL
    assert stored.bindings() == {BINDING: ("pin", "puk")}
    assert applet.keys.get(0xF9) is not None
    stored.close()
