"""The lifecycle API on a store: create, list, info, lock, unlock, unblock, provision, destroy.

Most tests run on the plain backend with a clock the test moves (the logic);
``test_the_whole_workflow_on_each_backend`` runs the central path on the
plain, software and tpm (swtpm) backends, where the admin role of the PIN
binding is unsealed by the TPM itself. Cards are checked through their APDU
interface, the card the emulator would serve (:func:`vsc.emulator.open_card`).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from applets.piv import PivApplet
from applets.piv.mgmt import ManagementKey
from vsc.emulator import open_card
from vsc.inproc import CardConnection
from vsc.lifecycle import (
    PENDING_LIFETIME,
    AdminKeyBlocked,
    CapacityExceeded,
    CardManager,
    Created,
    NoPendingRequest,
    NotManaged,
    PinPolicyViolation,
    ProvisioningError,
    Refused,
    Request,
    WrongAdminKey,
    compute_response,
    parse_admin_key,
)
from vsc.lifecycle.offline import Purpose
from vsc.store import BackendSpec, CardExists, CardStore, ManualClock, StoredCard
from vsc.tlv import encode_tlv, parse_tlv, parse_tlvs

from .conftest import NEW_PIN, PIN

OK, BLOCKED, LOCKED = 0x9000, 0x6983, 0x6283


def block(pin: str) -> bytes:
    return pin.encode().ljust(8, b"\xff")


class Served:
    """The card as the emulator serves it: APDUs in, status words out."""

    def __init__(self, manager: CardManager, name: str) -> None:
        assert manager.backend is not None
        card, self.stored = open_card(name, manager.backend, store=manager.store.root)
        (piv,) = [a for a in card.applets if isinstance(a, PivApplet)]
        piv.wall_clock = manager.store.clock.now  # the test's clock, as the manager's
        self.conn = CardConnection(card)
        assert self.sw(0xA4, 0x04, 0x00, bytes.fromhex("A000000308")) == OK

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stored.close()

    def send(self, ins: int, p1: int, p2: int, data: bytes = b"") -> tuple[bytes, int]:
        return self.conn.send(0x00, ins, p1, p2, data, 256 if ins == 0xCB else None)

    def sw(self, ins: int, p1: int, p2: int, data: bytes = b"") -> int:
        return self.send(ins, p1, p2, data)[1]

    def verify(self, pin: str) -> int:
        return self.sw(0x20, 0x00, 0x80, block(pin))

    def sign_9a(self, digest: bytes) -> tuple[bytes, int]:
        template = encode_tlv(0x7C, encode_tlv(0x82, b"") + encode_tlv(0x81, digest))
        out, sw = self.send(0x87, 0x11, 0x9A, template)
        if sw != OK:
            return b"", sw
        return parse_tlv(parse_tlv(out, 0x7C).value, 0x82).value, sw

    def admin(self, key: ManagementKey) -> None:
        """GA 9B single authentication, as a remote tool does it."""
        out, sw = self.send(0x87, 0x03, 0x9B, bytes.fromhex("7C028100"))
        assert sw == OK
        challenge = parse_tlv(parse_tlv(out, 0x7C).value, 0x81).value
        answer = encode_tlv(0x7C, encode_tlv(0x82, key.encrypt(challenge)))
        assert self.sw(0x87, 0x03, 0x9B, answer) == OK


def certificate(manager: CardManager, name: str, slot: str = "9A") -> x509.Certificate:
    """The slot's certificate, read with GET DATA."""
    report = manager.info(name)
    (entry,) = [s for s in report.slots if s.slot == slot]
    assert entry.certificate is not None and entry.certificate.matches_key
    tag = bytes.fromhex({"9A": "5FC105", "9C": "5FC10A"}[slot])
    with Served(manager, name) as served:
        out, sw = served.send(0xCB, 0x3F, 0xFF, encode_tlv(0x5C, tag))
        assert sw == OK, hex(sw)
    value = parse_tlv(out, 0x53).value
    cert = {t.tag: t.value for t in parse_tlvs(value)}[0x70]
    return x509.load_der_x509_certificate(cert)


def check_signature(cert: x509.Certificate, signature: bytes, data: bytes) -> None:
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def respond(created: Created, challenge: str) -> str:
    assert created.admin_key is not None
    return compute_response(created.admin_key.key, Request.decode(challenge))


def sign_works(manager: CardManager, name: str, pin: str) -> None:
    cert = certificate(manager, name)
    data = b"lifecycle test data"
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    with Served(manager, name) as served:
        assert served.verify(pin) == OK
        signature, sw = served.sign_9a(digest.finalize())
        assert sw == OK, hex(sw)
    check_signature(cert, signature, data)


# -- creation ---------------------------------------------------------------------------------


def test_create_personalises_a_managed_card(manager: CardManager) -> None:
    created = manager.create("alice", pin=PIN, generate=True)
    assert created.admin_key is not None and not created.admin_key.is_default
    assert created.generated == (0x9A, 0x9C)
    report = manager.info("alice")
    assert report.managed and report.profile == "yubikey-5.4" and report.lock == "unlocked"
    assert report.serial == created.serial
    assert report.pin_tries == (3, 3) and not report.pin_is_default
    assert not report.puk_is_default and report.puk_kind == "disabled"
    assert report.puk_state == "disabled" and report.puk_tries == (3, 0)
    assert report.pin_state == "set"
    assert report.admin_tries == (10, 10) and report.admin_unblock
    assert report.admin_key_algorithm == "TDES" and not report.admin_key_is_default
    slots = {s.slot: s for s in report.slots}
    assert slots["9A"].algorithm == "ECCP256" and slots["9A"].origin == "generated"
    assert slots["9C"].pin_policy == "always"
    assert slots["9A"].certificate is not None and slots["9A"].certificate.subject == "CN=alice"
    sign_works(manager, "alice", PIN)
    summary = manager.list()
    assert [(c.name, c.serial, c.profile, c.state) for c in summary] == [
        ("alice", created.serial, "yubikey-5.4", "unlocked")
    ]


def test_duplicates_and_capacity_are_refused_clearly(store: CardStore) -> None:
    manager = CardManager(store, BackendSpec.plain(), capacity=2)
    manager.create("a", pin=PIN)
    with pytest.raises(CardExists, match="'a' already exists"):
        manager.create("a", pin=PIN)
    manager.create("b", pin=PIN)
    with pytest.raises(CapacityExceeded, match=r"already holds 2 cards \(a, b\).*capacity is 2"):
        manager.create("c", pin=PIN)
    assert store.names() == ["a", "b"]
    manager.destroy("b")
    manager.create("c", pin=PIN)


def test_the_pin_policy_is_enforced_on_create(manager: CardManager) -> None:
    with pytest.raises(PinPolicyViolation, match="rule min-length") as raised:
        manager.create("w", profile="windows")  # the factory PIN 123456 is too short
    assert raised.value.rule == "min-length" and "factory PIN" in str(raised.value)
    with pytest.raises(PinPolicyViolation, match="rule lowercase"):
        manager.create("p", profile="piv", pin="abcdefgh")
    with pytest.raises(PinPolicyViolation, match="rule symbols"):
        manager.create("p", profile="piv", pin="123456!")
    with pytest.raises(PinPolicyViolation, match="rule printable"):
        manager.create("y", pin="12345é")
    assert manager.store.names() == []  # nothing half-made is left
    manager.create("w", profile="windows", pin="Abcd123!")
    assert manager.info("w").pin_policy[0] == "length: exactly 8 characters"


def test_a_card_created_locked_works_only_after_an_unlock(manager: CardManager) -> None:
    created = manager.create("backup", pin=PIN, locked=True)
    assert manager.info("backup").locked
    with Served(manager, "backup") as served:
        assert served.verify(PIN) == LOCKED
    pending = manager.begin_unlock("backup", 8 * 60)
    manager.complete("backup", respond(created, pending.challenge))
    with Served(manager, "backup") as served:
        assert served.verify(PIN) == OK


# -- locks and time-limited access ------------------------------------------------------------


def test_unlock_for_a_while_relocks_by_itself(manager: CardManager, clock: ManualClock) -> None:
    created = manager.create("alice", pin=PIN)
    manager.lock("alice")
    pending = manager.begin_unlock("alice", 8 * 60)
    assert pending.request.describe() == "unlock the card for 8 hours"
    request = manager.complete("alice", respond(created, pending.challenge))
    assert request.minutes == 480
    assert manager.info("alice").lock.startswith("unlocked until")
    clock.advance(8 * 3600 - 1)
    with Served(manager, "alice") as served:
        assert served.verify(PIN) == OK
    clock.advance(1)
    with Served(manager, "alice") as served:
        assert served.verify(PIN) == LOCKED
    assert manager.info("alice").lock == "locked"


def test_a_stretched_duration_is_refused_and_costs_a_try(manager: CardManager) -> None:
    created = manager.create("alice", pin=PIN)
    manager.lock("alice")
    pending = manager.begin_unlock("alice", 8 * 60)
    # The user reads out a challenge edited to ask for a week; the helpdesk answers that.
    edited = Request(Purpose.UNLOCK, 7 * 24 * 60, pending.request.nonce).encode()
    with pytest.raises(WrongAdminKey, match="9 tries left"):
        manager.complete("alice", respond(created, edited))
    assert manager.info("alice").locked and manager.info("alice").admin_tries == (10, 9)
    manager.complete("alice", respond(created, pending.challenge))  # the real one still works
    assert manager.info("alice").admin_tries == (10, 10)


def test_lock_at_a_time_and_lock_never_extends(manager: CardManager, clock: ManualClock) -> None:
    manager.create("alice", pin=PIN)
    at = manager.lock("alice", clock.now() + 3600)
    assert at == clock.now() + 3600
    assert manager.lock("alice", clock.now() + 7200) == at  # a later lock changes nothing
    assert not manager.info("alice").locked
    clock.advance(3600)
    assert manager.info("alice").locked
    assert manager.lock("alice", clock.now() - 100) == at  # already locked since then


def test_responses_must_answer_the_pending_challenge(
    manager: CardManager, clock: ManualClock
) -> None:
    created = manager.create("alice", pin=PIN)
    with pytest.raises(NoPendingRequest):
        manager.complete("alice", "00000-00000")
    first = manager.begin_unlock("alice", 8 * 60)
    second = manager.begin_unlock("alice", 8 * 60)  # replaces the first
    with pytest.raises(WrongAdminKey):
        manager.complete("alice", respond(created, first.challenge))
    with pytest.raises(Refused, match="mistyped"):
        manager.complete("alice", "00000-00000")
    assert manager.info("alice").admin_tries == (10, 9)  # the typo cost nothing
    clock.advance(PENDING_LIFETIME)
    with pytest.raises(NoPendingRequest):
        manager.complete("alice", respond(created, second.challenge))
    third = manager.begin_unlock("alice", 8 * 60)
    manager.complete("alice", respond(created, third.challenge))
    with pytest.raises(NoPendingRequest):  # used up
        manager.complete("alice", respond(created, third.challenge))


def test_wrong_responses_block_the_admin_key_until_it_recovers(
    manager: CardManager, clock: ManualClock
) -> None:
    created = manager.create("alice", pin=PIN, admin_tries=3, admin_recovery=600)
    pending = manager.begin_unblock("alice")
    wrong = Created("x", 0, "", parse_admin_key("11" * 24), (), False)
    for left in (2, 1, 0):
        with pytest.raises(WrongAdminKey, match=f"{left} tries left"):
            manager.complete("alice", respond(wrong, pending.challenge), new_pin=NEW_PIN)
    with pytest.raises(AdminKeyBlocked, match="10 minutes"):
        manager.complete("alice", respond(created, pending.challenge), new_pin=NEW_PIN)
    clock.advance(600)
    manager.complete("alice", respond(created, pending.challenge), new_pin=NEW_PIN)
    assert manager.info("alice").admin_tries == (3, 3)


def test_not_managed_cards_are_refused(manager: CardManager) -> None:
    _, stored = open_card("plain", BackendSpec.plain(), store=manager.store.root)
    stored.close()
    with pytest.raises(NotManaged):
        manager.lock("plain")
    with pytest.raises(NotManaged):
        manager.begin_unblock("plain")
    assert manager.info("plain").lock == "not managed (no lock)"


# -- unblock ------------------------------------------------------------------------------------


def block_the_pin(manager: CardManager, name: str) -> None:
    with Served(manager, name) as served:
        for _ in range(3):
            served.verify("00000000")
        assert served.verify(PIN) == BLOCKED


def test_unblock_resets_pin_and_counter_and_the_keys_work(manager: CardManager) -> None:
    created = manager.create("alice", pin=PIN, generate=True)
    block_the_pin(manager, "alice")
    pending = manager.begin_unblock("alice")
    assert manager.info("alice").pending == "unblock the PIN"
    with pytest.raises(PinPolicyViolation, match="rule min-length"):
        manager.complete("alice", respond(created, pending.challenge), new_pin="123")
    assert manager.info("alice").admin_tries == (10, 10)  # a refused PIN costs no try
    manager.complete("alice", respond(created, pending.challenge), new_pin=NEW_PIN)
    assert manager.info("alice").pin_tries == (3, 3)
    sign_works(manager, "alice", NEW_PIN)  # the PIN-bound key, re-sealed via the admin role


def test_unblock_follows_a_management_key_changed_through_the_card(manager: CardManager) -> None:
    created = manager.create("alice", pin=PIN, generate=True)
    assert created.admin_key is not None
    new_key = bytes(range(0x40, 0x58))
    with Served(manager, "alice") as served:
        served.admin(created.admin_key)
        assert served.sw(0xFF, 0xFF, 0xFF, bytes((0x03, 0x9B, 24)) + new_key) == OK
    block_the_pin(manager, "alice")
    pending = manager.begin_unblock("alice")
    new = Created("alice", 0, "", parse_admin_key(new_key.hex()), (), False)
    manager.complete("alice", respond(new, pending.challenge), new_pin=NEW_PIN)
    sign_works(manager, "alice", NEW_PIN)


# -- provisioning -----------------------------------------------------------------------------


def make_key_and_cert(tmp_path: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, path


def test_provision_pkcs8_and_pkcs12_renew_and_reprovision(
    manager: CardManager, tmp_path: Path
) -> None:
    created = manager.create("alice", pin=PIN)
    assert created.admin_key is not None
    admin = created.admin_key
    key, cert_path = make_key_and_cert(tmp_path, "server-issued")
    pkcs8 = tmp_path / "key.p8"
    pkcs8.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ProvisioningError, match="encrypted"):
        manager.provision("alice", admin, 0x9A, pkcs8, certificate=cert_path)
    report = manager.provision(
        "alice", admin, 0x9A, pkcs8, certificate=cert_path, password=b"secret"
    )
    assert report.origin == "imported" and report.certificate is not None
    assert report.certificate.subject == "CN=server-issued" and report.certificate.matches_key
    sign_works(manager, "alice", PIN)

    # PKCS#12, its certificate inside, into 9C.
    key2, cert2_path = make_key_and_cert(tmp_path, "p12")
    cert2 = x509.load_pem_x509_certificate(cert2_path.read_bytes())
    p12 = tmp_path / "alice.p12"
    p12.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"alice", key2, cert2, None, serialization.BestAvailableEncryption(b"pw")
        )
    )
    report = manager.provision("alice", admin, 0x9C, p12, password=b"pw")
    assert report.certificate is not None and report.certificate.subject == "CN=p12"

    # Renew: a new certificate for the key already in 9A; a certificate for another key is refused.
    with pytest.raises(ProvisioningError, match="not for the key in slot 9A"):
        manager.renew("alice", admin, 0x9A, cert2_path)
    renewed = x509.CertificateBuilder(
        issuer_name=cert2.issuer,
        subject_name=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "renewed")]),
        public_key=key.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=cert2.not_valid_before_utc,
        not_valid_after=cert2.not_valid_after_utc,
    ).sign(key2, hashes.SHA256())
    renewed_path = tmp_path / "renewed.crt"
    renewed_path.write_bytes(renewed.public_bytes(serialization.Encoding.DER))
    old_serial = manager.info("alice").slots[0].certificate
    report = manager.renew("alice", admin, 0x9A, renewed_path)
    assert report.certificate is not None and report.certificate.subject == "CN=renewed"
    assert old_serial is not None and report.certificate.serial != old_serial.serial
    # A wrong admin key is refused and counted.
    with pytest.raises(WrongAdminKey):
        manager.renew("alice", parse_admin_key("00" * 24), 0x9A, renewed_path)
    assert manager.info("alice").admin_tries == (10, 9)

    # Reprovision: content gone, the card (serial, admin key, lock) kept.
    manager.lock("alice")
    erased = manager.reprovision("alice", admin, pin=NEW_PIN, generate=True)
    assert erased == (0x9A, 0x9C)
    report_after = manager.info("alice")
    assert report_after.serial == created.serial and report_after.locked
    assert {s.slot for s in report_after.slots} == {"9A", "9C", "F9"}
    assert all(s.origin == "generated" for s in report_after.slots)
    events = [e["event"] for e in manager.audit.events("alice")]
    assert events[-4:] == ["renew", "admin-key-refused", "lock", "reprovision"]


def test_csr_is_signed_by_the_card(manager: CardManager) -> None:
    manager.create("alice", pin=PIN, generate=True)
    with pytest.raises(Refused, match="wrong PIN"):
        manager.signing_request("alice", 0x9A, "CN=alice", pin="00000000")
    der = manager.signing_request("alice", 0x9A, "CN=alice,O=Example", pin=PIN)
    request = x509.load_der_x509_csr(der)
    assert request.is_signature_valid
    assert request.subject.rfc4514_string() == "CN=alice,O=Example"
    assert manager.info("alice").pin_tries == (3, 3)


def test_provisioning_refuses_bad_inputs(manager: CardManager, tmp_path: Path) -> None:
    created = manager.create("alice", pin=PIN)
    assert created.admin_key is not None
    key, _ = make_key_and_cert(tmp_path, "a")
    _, other_cert = make_key_and_cert(tmp_path, "b")
    path = tmp_path / "a.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ProvisioningError, match="not for this key"):
        manager.provision("alice", created.admin_key, 0x9A, path, certificate=other_cert)
    with pytest.raises(ProvisioningError, match="not a key slot"):
        manager.provision("alice", created.admin_key, 0xF9, path)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x30\x03\x02\x01\x00")
    with pytest.raises(ProvisioningError, match="neither PKCS#8 nor"):
        manager.provision("alice", created.admin_key, 0x9A, garbage)
    rsa_key = rsa.generate_private_key(65537, 1024)
    ok = tmp_path / "rsa.pem"
    ok.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    report = manager.provision("alice", created.admin_key, 0x82, ok)
    assert report.algorithm == "RSA1024" and report.certificate is None


# -- destruction, audit -------------------------------------------------------------------------


def test_destroy_removes_the_card(manager: CardManager) -> None:
    manager.create("alice", pin=PIN)
    path = manager.store.path_of("alice")
    manager.destroy("alice")
    assert not path.exists() and manager.store.names() == []
    assert [e["event"] for e in manager.audit.events("alice")][-1] == "destroy"


def test_the_audit_log_records_everything_and_no_secret(manager: CardManager) -> None:
    created = manager.create("alice", pin=PIN, puk="87654321", generate=True)
    assert created.admin_key is not None
    manager.lock("alice")
    unlock = manager.begin_unlock("alice", 480)
    unlock_response = respond(created, unlock.challenge)
    manager.complete("alice", unlock_response)
    block_the_pin(manager, "alice")
    unblock = manager.begin_unblock("alice")
    unblock_response = respond(created, unblock.challenge)
    manager.complete("alice", unblock_response, new_pin=NEW_PIN)
    manager.destroy("alice")
    events = list(manager.audit.events("alice"))
    kinds = [e["event"] for e in events]
    assert kinds == [
        "create",
        "personalise",
        "lock",
        "challenge",
        "unlock",
        "pin-blocked",  # the last wrong PIN, through the card
        "challenge",
        "unblock",
        "destroy",
    ]
    (unlocked,) = [e for e in events if e["event"] == "unlock"]
    assert unlocked["minutes"] == 480 and unlocked["duration"] == "8 hours"
    assert unlocked["until"] and unlocked["time"].endswith("+00:00")
    text = manager.audit.path.read_text()
    key_hex = created.admin_key.key.hex()
    for secret in (PIN, NEW_PIN, "87654321", key_hex, key_hex.upper(), unlock_response,
                   unblock_response, unlock_response.replace("-", "")):  # fmt: skip
        assert secret not in text
    assert manager.audit.path.stat().st_mode & 0o777 == 0o600


# -- every backend --------------------------------------------------------------------------


def test_the_whole_workflow_on_each_backend(tmp_path: Path, any_backend: BackendSpec) -> None:
    """Create, lock, unlock, block, unblock and sign: with the tpm backend the admin role
    is unsealed by the TPM, and the PIN-bound key signs after the unblock."""
    manager = CardManager(CardStore(tmp_path / "store"), any_backend)
    created = manager.create("alice", pin=PIN, generate=True)
    manager.lock("alice")
    with Served(manager, "alice") as served:
        assert served.verify(PIN) == LOCKED
    pending = manager.begin_unlock("alice", 8 * 60)
    manager.complete("alice", respond(created, pending.challenge))
    block_the_pin(manager, "alice")
    pending = manager.begin_unblock("alice")
    manager.complete("alice", respond(created, pending.challenge), new_pin=NEW_PIN)
    sign_works(manager, "alice", NEW_PIN)
    report = manager.info("alice")
    assert report.backend_kind == any_backend.kind and report.pin_tries == (3, 3)
    stored: StoredCard = manager.store.open("alice", any_backend)
    try:
        assert "admin" in stored.bindings()["piv"]
    finally:
        stored.close()
    manager.destroy("alice")


def test_the_response_try_is_spent_before_the_comparison(
    manager: CardManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that dies while comparing (here: the comparison raises) has spent the try."""
    created = manager.create("alice", pin=PIN)
    pending = manager.begin_unblock("alice")

    def dies(*args: object) -> bool:
        raise SystemExit("killed while comparing")

    monkeypatch.setattr("vsc.lifecycle.helpdesk.check_response", dies)
    with pytest.raises(SystemExit):
        manager.complete("alice", respond(created, pending.challenge), new_pin=NEW_PIN)
    monkeypatch.undo()
    assert manager.info("alice").admin_tries == (10, 9)
    manager.complete("alice", respond(created, pending.challenge), new_pin=NEW_PIN)
    assert manager.info("alice").admin_tries == (10, 10)
