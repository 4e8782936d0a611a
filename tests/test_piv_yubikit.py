"""The PIV applet driven by yubikit's ``PivSession``, as ykman drives a YubiKey.

Every test runs over both transports of the in-process adapter: NFC (short
APDUs, command chaining, GET RESPONSE) and USB (extended APDUs). Results of
key operations are checked with ``cryptography``.
"""

from __future__ import annotations

import datetime
import gzip
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.x509.oid import NameOID
from yubikit.core import TRANSPORT, InvalidPinError, Version
from yubikit.core.smartcard import SW, ApduError
from yubikit.piv import (
    DEFAULT_MANAGEMENT_KEY,
    KEY_TYPE,
    MANAGEMENT_KEY_TYPE,
    OBJECT_ID,
    PIN_POLICY,
    SLOT,
    TOUCH_POLICY,
    PivSession,
)

from applets.piv import PivApplet
from vsc import Card
from vsc.inproc import YubikitConnection

SERIAL = 31415926
AES_KEY = bytes(range(0x20, 0x40))

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | x25519.X25519PublicKey
)
PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | x25519.X25519PrivateKey
)


class RecordingConnection(YubikitConnection):
    """The in-process adapter, remembering every command APDU yubikit sends."""

    def __init__(self, card: Card, transport: TRANSPORT) -> None:
        super().__init__(card, transport)
        self.sent: list[bytes] = []

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(bytes(apdu))
        return super().send_and_receive(apdu)


class Device:
    """A card with PIV on it and a way to (re)open yubikit sessions."""

    def __init__(self, transport: TRANSPORT) -> None:
        self.applet = PivApplet(serial=SERIAL)
        self.card = Card()
        self.card.register(self.applet, default=True)
        self.transport = transport
        self.connection: RecordingConnection | None = None

    def session(self) -> PivSession:
        """A new session, as after reconnecting: the card is reset first."""
        self.card.reset()
        self.connection = RecordingConnection(self.card, self.transport)
        return PivSession(self.connection)


@pytest.fixture(params=[TRANSPORT.NFC, TRANSPORT.USB], ids=["nfc", "usb"])
def device(request: pytest.FixtureRequest) -> Device:
    transport: TRANSPORT = request.param
    return Device(transport)


@pytest.fixture
def session(device: Device) -> PivSession:
    return device.session()


@pytest.fixture
def admin(session: PivSession) -> PivSession:
    session.authenticate(DEFAULT_MANAGEMENT_KEY)
    return session


def apdu_error(sw: int) -> pytest.RaisesExc[ApduError]:
    return pytest.raises(ApduError, check=lambda e: e.sw == sw)


def self_signed(
    subject_key: PublicKey, signer: PrivateKey | None = None, *, padding_names: int = 0
) -> x509.Certificate:
    """A certificate for ``subject_key``; ``padding_names`` DNS names make it large."""
    signer = signer if signer is not None else ec.generate_private_key(ec.SECP256R1())
    assert not isinstance(signer, x25519.X25519PrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vsc test")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if padding_names:
        names = [x509.DNSName(f"host{i:04d}.example.org") for i in range(padding_names)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm)


# -- session basics ------------------------------------------------------------------------


def test_session_sees_a_yubikey_5_7(session: PivSession) -> None:
    assert session.version == Version(5, 7, 1)
    assert session.management_key_type == MANAGEMENT_KEY_TYPE.TDES
    assert session.get_serial() == SERIAL


def test_transports_shape_the_apdus(device: Device, admin: PivSession) -> None:
    """NFC: short APDUs, chaining and GET RESPONSE; USB: extended APDUs ("Transport")."""
    admin.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.RSA2048)
    admin.put_certificate(
        SLOT.AUTHENTICATION,
        self_signed(ec.generate_private_key(ec.SECP256R1()).public_key(), padding_names=40),
    )
    assert device.connection is not None
    sent = device.connection.sent
    extended = [a for a in sent if len(a) > 5 and a[4] == 0 and len(a) >= 7]
    if device.transport == TRANSPORT.NFC:
        assert not extended and max(map(len, sent)) <= 261
        assert any(a[0] == 0x10 for a in sent)  # command chaining
        assert any(a[1] == 0xC0 for a in sent)  # GET RESPONSE
    else:
        assert extended and max(map(len, sent)) > 261
        assert not any(a[0] == 0x10 or a[1] == 0xC0 for a in sent)


def test_verify_pin(session: PivSession) -> None:
    with pytest.raises(InvalidPinError) as e:
        session.verify_pin("654321")
    assert e.value.attempts_remaining == 2
    assert session.get_pin_attempts() == 2
    session.verify_pin("123456")
    assert session.get_pin_attempts() == 3


def test_change_pin_and_puk_and_unblock(device: Device, session: PivSession) -> None:
    session.change_pin("123456", "13572468")
    assert not session.get_pin_metadata().default_value
    session.verify_pin("13572468")
    session.change_puk("12345678", "87654321")
    puk = session.get_puk_metadata()
    assert (puk.default_value, puk.total_attempts, puk.attempts_remaining) == (False, 3, 3)
    for left in (2, 1, 0):
        with pytest.raises(InvalidPinError) as e:
            session.verify_pin("000000")
        assert e.value.attempts_remaining == left
    with pytest.raises(InvalidPinError) as e:
        session.unblock_pin("12345678", "222222")
    assert e.value.attempts_remaining == 2
    session.unblock_pin("87654321", "222222")
    assert session.get_pin_attempts() == 3
    session = device.session()
    session.verify_pin("222222")


def test_pin_and_management_key_metadata(session: PivSession) -> None:
    pin = session.get_pin_metadata()
    assert (pin.default_value, pin.total_attempts, pin.attempts_remaining) == (True, 3, 3)
    mgmt = session.get_management_key_metadata()
    assert mgmt.key_type == MANAGEMENT_KEY_TYPE.TDES
    assert mgmt.default_value and mgmt.touch_policy == TOUCH_POLICY.NEVER
    with pytest.raises(Exception, match="not supported"):
        session.get_bio_metadata()


def test_wrong_management_key(session: PivSession) -> None:
    with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
        session.authenticate(bytes(24))
    with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
        session.put_object(OBJECT_ID.CHUID, b"\x30\x00")


@pytest.mark.parametrize(
    ("key_type", "key"),
    [
        (MANAGEMENT_KEY_TYPE.AES128, AES_KEY[:16]),
        (MANAGEMENT_KEY_TYPE.AES192, AES_KEY[:24]),
        (MANAGEMENT_KEY_TYPE.AES256, AES_KEY),
        (MANAGEMENT_KEY_TYPE.TDES, AES_KEY[:24]),
    ],
    ids=lambda v: v.name if isinstance(v, MANAGEMENT_KEY_TYPE) else "",
)
def test_set_management_key(
    device: Device, admin: PivSession, key_type: MANAGEMENT_KEY_TYPE, key: bytes
) -> None:
    admin.set_management_key(key_type, key)
    admin.put_object(0x5FFF00, bytes.fromhex("80038101 02"))  # still authenticated
    session = device.session()
    assert session.management_key_type == key_type
    assert not session.get_management_key_metadata().default_value
    with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
        session.authenticate(DEFAULT_MANAGEMENT_KEY[: key_type.key_len])
    session.authenticate(key)
    session.put_object(OBJECT_ID.CHUID, b"\x30\x00")


def test_management_key_touch(device: Device, admin: PivSession) -> None:
    admin.set_management_key(MANAGEMENT_KEY_TYPE.AES128, AES_KEY[:16], require_touch=True)
    session = device.session()
    assert session.get_management_key_metadata().touch_policy == TOUCH_POLICY.ALWAYS
    touched: list[int] = []

    def touch(slot: int) -> bool:
        touched.append(slot)
        return len(touched) == 1

    device.applet.touch = touch
    session.authenticate(AES_KEY[:16])
    assert touched == [0x9B]
    with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
        session.authenticate(AES_KEY[:16])


def test_set_pin_attempts(device: Device, admin: PivSession) -> None:
    with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
        admin.set_pin_attempts(5, 6)
    admin.verify_pin("123456")
    admin.set_pin_attempts(5, 6)
    pin, puk = admin.get_pin_metadata(), admin.get_puk_metadata()
    assert (pin.total_attempts, pin.attempts_remaining, pin.default_value) == (5, 5, True)
    assert (puk.total_attempts, puk.attempts_remaining) == (6, 6)
    device.session().verify_pin("123456")


# -- keys ---------------------------------------------------------------------------------


def check_key(session: PivSession, slot: SLOT, key_type: KEY_TYPE, public_key: PublicKey) -> None:
    """Use the key in ``slot`` and check the result against ``public_key``."""
    message = b"vsc test message"
    if isinstance(public_key, rsa.RSAPublicKey):
        signature = session.sign(slot, key_type, message, hashes.SHA256(), padding.PKCS1v15())
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
        signature = session.sign(slot, key_type, message, hashes.SHA256(), pss)
        public_key.verify(signature, message, pss, hashes.SHA256())
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        assert session.decrypt(slot, public_key.encrypt(message, oaep), oaep) == message
        pkcs1 = padding.PKCS1v15()
        assert session.decrypt(slot, public_key.encrypt(message, pkcs1), pkcs1) == message
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        hash_alg = hashes.SHA384() if public_key.curve.key_size == 384 else hashes.SHA256()
        signature = session.sign(slot, key_type, message, hash_alg)
        public_key.verify(signature, message, ec.ECDSA(hash_alg))
        peer = ec.generate_private_key(public_key.curve)
        secret = session.calculate_secret(slot, peer.public_key())
        assert secret == peer.exchange(ec.ECDH(), public_key)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        long_message = message * 40  # the whole message goes to the card: chained
        signature = session.sign(slot, key_type, long_message, None)
        public_key.verify(signature, long_message)
    else:
        peer_x = x25519.X25519PrivateKey.generate()
        assert session.calculate_secret(slot, peer_x.public_key()) == peer_x.exchange(public_key)


FAST_KEY_TYPES = [
    KEY_TYPE.RSA1024,
    KEY_TYPE.RSA2048,
    KEY_TYPE.ECCP256,
    KEY_TYPE.ECCP384,
    KEY_TYPE.ED25519,
    KEY_TYPE.X25519,
]


@pytest.mark.parametrize("key_type", FAST_KEY_TYPES, ids=str)
def test_generate_and_use(admin: PivSession, key_type: KEY_TYPE) -> None:
    public_key = admin.generate_key(SLOT.AUTHENTICATION, key_type)
    meta = admin.get_slot_metadata(SLOT.AUTHENTICATION)
    assert meta.key_type == key_type and meta.generated
    assert meta.pin_policy == PIN_POLICY.ONCE and meta.touch_policy == TOUCH_POLICY.NEVER
    assert meta.public_key == public_key
    with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
        check_key(admin, SLOT.AUTHENTICATION, key_type, public_key)
    admin.verify_pin("123456")
    check_key(admin, SLOT.AUTHENTICATION, key_type, public_key)


def test_generate_rsa3072(admin: PivSession) -> None:
    public_key = admin.generate_key(SLOT.CARD_AUTH, KEY_TYPE.RSA3072)
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 3072
    check_key(admin, SLOT.CARD_AUTH, KEY_TYPE.RSA3072, public_key)  # 9E: PIN never


def test_generate_rsa4096_over_nfc() -> None:
    """The slowest key, once: 512-byte blocks chained in and out."""
    session = Device(TRANSPORT.NFC).session()
    session.authenticate(DEFAULT_MANAGEMENT_KEY)
    public_key = session.generate_key(SLOT.RETIRED20, KEY_TYPE.RSA4096)
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 4096
    session.verify_pin("123456")
    message = b"four thousand and ninety-six"
    signature = session.sign(
        SLOT.RETIRED20, KEY_TYPE.RSA4096, message, hashes.SHA256(), padding.PKCS1v15()
    )
    public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    assert session.get_slot_metadata(SLOT.RETIRED20).public_key == public_key


@pytest.mark.parametrize(
    "make",
    [
        lambda: rsa.generate_private_key(65537, 2048),
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate,
        x25519.X25519PrivateKey.generate,
    ],
    ids=["RSA2048", "P256", "P384", "Ed25519", "X25519"],
)
def test_import_and_use(admin: PivSession, make: object) -> None:
    assert callable(make)
    private_key = make()
    assert isinstance(private_key, PrivateKey)
    key_type = admin.put_key(SLOT.KEY_MANAGEMENT, private_key, PIN_POLICY.NEVER)
    meta = admin.get_slot_metadata(SLOT.KEY_MANAGEMENT)
    assert not meta.generated and meta.pin_policy == PIN_POLICY.NEVER
    assert meta.public_key == private_key.public_key()
    check_key(admin, SLOT.KEY_MANAGEMENT, key_type, private_key.public_key())
    with apdu_error(SW.INCORRECT_PARAMETERS):  # 6A80: imported keys are not attested
        admin.attest_key(SLOT.KEY_MANAGEMENT)


def test_signature_slot_needs_pin_every_time(admin: PivSession) -> None:
    public_key = admin.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP256)
    assert admin.get_slot_metadata(SLOT.SIGNATURE).pin_policy == PIN_POLICY.ALWAYS
    admin.verify_pin("123456")
    signature = admin.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"one", hashes.SHA256())
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(signature, b"one", ec.ECDSA(hashes.SHA256()))
    with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
        admin.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"two", hashes.SHA256())


def test_touch_policy_reaches_the_hook(device: Device, admin: PivSession) -> None:
    admin.generate_key(SLOT.CARD_AUTH, KEY_TYPE.ED25519, touch_policy=TOUCH_POLICY.ALWAYS)
    assert admin.get_slot_metadata(SLOT.CARD_AUTH).touch_policy == TOUCH_POLICY.ALWAYS
    device.applet.touch = lambda slot: False
    with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
        admin.sign(SLOT.CARD_AUTH, KEY_TYPE.ED25519, b"m", None)
    device.applet.touch = lambda slot: slot == SLOT.CARD_AUTH
    assert len(admin.sign(SLOT.CARD_AUTH, KEY_TYPE.ED25519, b"m", None)) == 64


def test_wrong_key_type_is_6a80(admin: PivSession) -> None:
    """ykman's check_key reads 6A80 as "not this key"."""
    admin.generate_key(SLOT.CARD_AUTH, KEY_TYPE.ECCP256)
    with apdu_error(SW.INCORRECT_PARAMETERS):
        admin.sign(SLOT.CARD_AUTH, KEY_TYPE.ECCP384, b"m", hashes.SHA384())
    with apdu_error(SW.INCORRECT_PARAMETERS):
        admin.sign(SLOT.RETIRED1, KEY_TYPE.ECCP256, b"m", hashes.SHA256())


# -- certificates and objects ----------------------------------------------------------------


def test_certificates(admin: PivSession) -> None:
    cert = self_signed(admin.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256))
    admin.put_certificate(SLOT.AUTHENTICATION, cert)
    assert admin.get_certificate(SLOT.AUTHENTICATION) == cert
    admin.delete_certificate(SLOT.AUTHENTICATION)
    with apdu_error(SW.FILE_NOT_FOUND):
        admin.get_certificate(SLOT.AUTHENTICATION)


@pytest.mark.parametrize("compress", [False, True])
def test_large_certificate(admin: PivSession, compress: bool) -> None:
    """~2.9 kB DER: 12 chained chunks / 12 GET RESPONSEs over NFC."""
    cert = self_signed(rsa.generate_private_key(65537, 2048).public_key(), padding_names=110)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert 2700 < len(der) < 2990
    admin.put_certificate(SLOT.RETIRED5, cert, compress=compress)
    assert admin.get_certificate(SLOT.RETIRED5) == cert
    stored = admin.get_object(OBJECT_ID.RETIRED5)
    assert (stored[-5:] == b"\x71\x01\x01\xfe\x00") is compress
    if compress:
        assert gzip.compress(der) in stored


def test_objects(admin: PivSession) -> None:
    admin.put_object(OBJECT_ID.CHUID, b"\x30\x19" + bytes(25))
    assert admin.get_object(OBJECT_ID.CHUID) == b"\x30\x19" + bytes(25)
    assert admin.get_object(OBJECT_ID.DISCOVERY) == bytes.fromhex(
        "4F0BA0000003080000100001005F2F024000"
    )
    admin.put_object(0x5FFF42, b"any Yubico object")
    assert admin.get_object(0x5FFF42) == b"any Yubico object"
    admin.put_object(OBJECT_ID.PRINTED, b"\x88\x03\x89\x01\x00")
    with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
        admin.get_object(OBJECT_ID.PRINTED)
    admin.verify_pin("123456")
    assert admin.get_object(OBJECT_ID.PRINTED) == b"\x88\x03\x89\x01\x00"
    admin.put_object(OBJECT_ID.CHUID)
    with apdu_error(SW.FILE_NOT_FOUND):
        admin.get_object(OBJECT_ID.CHUID)


def test_put_object_needs_management_key(session: PivSession) -> None:
    with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
        session.put_object(OBJECT_ID.CHUID, b"\x30\x00")


# -- attestation -------------------------------------------------------------------------------


def test_attestation_chain(admin: PivSession) -> None:
    public_key = admin.generate_key(
        SLOT.KEY_MANAGEMENT, KEY_TYPE.ECCP384, PIN_POLICY.ALWAYS, TOUCH_POLICY.CACHED
    )
    statement = admin.attest_key(SLOT.KEY_MANAGEMENT)
    ca = admin.get_certificate(SLOT.ATTESTATION)
    ca.verify_directly_issued_by(ca)
    statement.verify_directly_issued_by(ca)
    assert statement.public_key() == public_key
    assert statement.not_valid_after_utc <= ca.not_valid_after_utc
    extensions = {e.oid.dotted_string: e.value for e in statement.extensions}
    firmware = extensions["1.3.6.1.4.1.41482.3.3"]
    policy = extensions["1.3.6.1.4.1.41482.3.8"]
    assert isinstance(firmware, x509.UnrecognizedExtension) and firmware.value == b"\x05\x07\x01"
    assert isinstance(policy, x509.UnrecognizedExtension) and policy.value == b"\x03\x03"
    with apdu_error(SW.REFERENCE_DATA_NOT_FOUND):
        admin.attest_key(SLOT.RETIRED1)


def test_attestation_key_is_per_card() -> None:
    a = Device(TRANSPORT.USB).session().get_certificate(SLOT.ATTESTATION)
    b = Device(TRANSPORT.USB).session().get_certificate(SLOT.ATTESTATION)
    assert a.public_key() != b.public_key()


# -- reset, move, delete ---------------------------------------------------------------------


def test_reset(device: Device, admin: PivSession) -> None:
    ca = admin.get_certificate(SLOT.ATTESTATION)
    public_key = admin.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    admin.put_certificate(SLOT.AUTHENTICATION, self_signed(public_key))
    admin.set_management_key(MANAGEMENT_KEY_TYPE.AES256, AES_KEY)
    admin.change_pin("123456", "999999")
    admin.reset()
    assert admin.management_key_type == MANAGEMENT_KEY_TYPE.TDES
    with apdu_error(SW.REFERENCE_DATA_NOT_FOUND):
        admin.get_slot_metadata(SLOT.AUTHENTICATION)
    with apdu_error(SW.FILE_NOT_FOUND):
        admin.get_certificate(SLOT.AUTHENTICATION)
    assert admin.get_certificate(SLOT.ATTESTATION) == ca
    session = device.session()
    session.verify_pin("123456")
    session.authenticate(DEFAULT_MANAGEMENT_KEY)
    assert session.get_pin_metadata().default_value


def test_move_and_delete_key(admin: PivSession) -> None:
    public_key = admin.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, PIN_POLICY.NEVER)
    admin.move_key(SLOT.AUTHENTICATION, SLOT.RETIRED3)
    with apdu_error(SW.REFERENCE_DATA_NOT_FOUND):
        admin.get_slot_metadata(SLOT.AUTHENTICATION)
    meta = admin.get_slot_metadata(SLOT.RETIRED3)
    assert meta.public_key == public_key and meta.pin_policy == PIN_POLICY.NEVER
    check_key(admin, SLOT.RETIRED3, KEY_TYPE.ECCP256, public_key)
    admin.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ED25519)
    with apdu_error(SW.INCORRECT_PARAMETERS):  # ykman: "DEST slot is not empty"
        admin.move_key(SLOT.RETIRED3, SLOT.AUTHENTICATION)
    admin.delete_key(SLOT.RETIRED3)
    with apdu_error(SW.REFERENCE_DATA_NOT_FOUND):
        admin.get_slot_metadata(SLOT.RETIRED3)
    with apdu_error(SW.REFERENCE_DATA_NOT_FOUND):
        admin.delete_key(SLOT.RETIRED3)


def _all_slots() -> Iterator[SLOT]:
    return (slot for slot in SLOT if slot != SLOT.ATTESTATION)


def test_fresh_card_lists_no_keys_and_no_certificates(session: PivSession) -> None:
    """What `ykman piv info` reads: every slot 6A88, every object 6A82."""
    for slot in _all_slots():
        with apdu_error(SW.REFERENCE_DATA_NOT_FOUND):
            session.get_slot_metadata(slot)
        with apdu_error(SW.FILE_NOT_FOUND):
            session.get_certificate(slot)
    for object_id in (OBJECT_ID.CHUID, OBJECT_ID.CAPABILITY, 0x5FFF00):
        with apdu_error(SW.FILE_NOT_FOUND):
            session.get_object(object_id)
