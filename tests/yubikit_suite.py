"""What ykman 5.x and yubikit do with a YubiKey's PIV application, as one test suite.

:class:`YubiKeyPivSuite` holds the tests; a test module subclasses it and
provides the ``device`` fixture (a :class:`Device`): in this process through
:class:`vsc.inproc.YubikitConnection` (tests/test_piv_yubikit.py), or through
pcscd + vpcd and the emulator process (tests/e2e/test_piv_yubikit.py). Every
test runs for each YubiKey profile (docs/piv.md, "Profiles"); where the 5.4
and 5.7 firmware differ, the test checks what the device's profile promises,
by yubikit's own gates (it refuses 5.7 features on a 5.4 key before sending
anything) and by the card's answer when asked anyway.

Results of key operations are checked with ``cryptography``, never with the
card's own helpers.
"""

from __future__ import annotations

import datetime
import gzip
from collections.abc import Callable, Iterator
from typing import Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.x509.oid import NameOID
from yubikit.core import TRANSPORT, InvalidPinError, NotSupportedError, Version
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

from applets.piv import YUBIKEY_5_7, PivProfile
from applets.piv.keys import PrivateKey, PublicKey

PIN = "123456"
PUK = "12345678"
AES_KEY = bytes(range(0x20, 0x40))


#: yubikit's names of the profiles' algorithms.
_KEY_TYPES = {
    0x06: KEY_TYPE.RSA1024,
    0x07: KEY_TYPE.RSA2048,
    0x05: KEY_TYPE.RSA3072,
    0x16: KEY_TYPE.RSA4096,
    0x11: KEY_TYPE.ECCP256,
    0x14: KEY_TYPE.ECCP384,
    0xE0: KEY_TYPE.ED25519,
    0xE1: KEY_TYPE.X25519,
}
#: Generated in every test run: fast enough (RSA-3072/4096 have tests of their own).
FAST_KEY_TYPES = [
    KEY_TYPE.RSA1024,
    KEY_TYPE.RSA2048,
    KEY_TYPE.ECCP256,
    KEY_TYPE.ECCP384,
    KEY_TYPE.ED25519,
    KEY_TYPE.X25519,
]


class Device(Protocol):
    """A card with the PIV applet, reachable by yubikit."""

    profile: PivProfile
    transport: TRANSPORT
    serial: int

    def session(self) -> PivSession:
        """A new session on a new connection (the card reset in between)."""
        ...

    def set_touch(self, approve: Callable[[int], bool]) -> None:
        """Install the touch hook (skips the test where the card is out of reach)."""
        ...

    def sent(self) -> list[bytes]:
        """The command APDUs of the current session (skips where they are not seen)."""
        ...


def apdu_error(sw: int) -> pytest.RaisesExc[ApduError]:
    return pytest.raises(ApduError, check=lambda e: e.sw == sw)


def supports(device: Device, key_type: KEY_TYPE) -> bool:
    return any(_KEY_TYPES[int(t)] == key_type for t in device.profile.key_types)


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


def _all_slots() -> Iterator[SLOT]:
    return (slot for slot in SLOT if slot != SLOT.ATTESTATION)


def raw(session: PivSession, ins: int, p1: int, p2: int, data: bytes = b"") -> int:
    """The status word of one APDU sent past yubikit's version gates."""
    try:
        session.protocol.send_apdu(0, ins, p1, p2, data)
    except ApduError as e:
        return e.sw
    return SW.OK


class YubiKeyPivSuite:
    """The tests; a subclass provides the ``device`` fixture (see the module docstring)."""

    @pytest.fixture
    def session(self, device: Device) -> PivSession:
        return device.session()

    @pytest.fixture
    def admin(self, session: PivSession) -> PivSession:
        session.authenticate(DEFAULT_MANAGEMENT_KEY)
        return session

    # -- the session, info ---------------------------------------------------------------

    def test_session_sees_the_profile(self, device: Device, session: PivSession) -> None:
        version = device.profile.version
        assert version is not None
        assert session.version == Version(*version)
        factory = device.profile.management_key_type
        assert session.management_key_type == MANAGEMENT_KEY_TYPE(factory)
        assert session.get_serial() == device.serial

    def test_piv_info(self, device: Device, session: PivSession) -> None:
        """What `ykman piv info` prints, through ykman's own function."""
        from ykman.piv import get_piv_info

        info, *lines = get_piv_info(session)
        version = device.profile.version
        assert version is not None
        assert str(info["PIV version"]) == ".".join(map(str, version))
        assert (info["PIN tries remaining"], info["PUK tries remaining"]) == ("3/3", "3/3")
        factory = MANAGEMENT_KEY_TYPE(device.profile.management_key_type)
        assert info["Management key algorithm"] == factory.name
        assert "WARNING: Using default Management key!" in lines
        objects = lines[-1]
        assert objects == {"CHUID": "No data available", "CCC": "No data available"}

    def test_transports_shape_the_apdus(self, device: Device, admin: PivSession) -> None:
        """NFC: short APDUs, chaining and GET RESPONSE; USB: extended APDUs."""
        admin.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.RSA2048)
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        admin.put_certificate(SLOT.AUTHENTICATION, self_signed(public, padding_names=40))
        assert admin.get_certificate(SLOT.AUTHENTICATION).public_key() == public
        sent = device.sent()
        extended = [a for a in sent if len(a) > 5 and a[4] == 0 and len(a) >= 7]
        if device.transport == TRANSPORT.NFC:
            assert not extended and max(map(len, sent)) <= 261
            assert any(a[0] == 0x10 for a in sent)  # command chaining
            assert any(a[1] == 0xC0 for a in sent)  # GET RESPONSE
        else:
            assert extended and max(map(len, sent)) > 261
            assert not any(a[0] == 0x10 or a[1] == 0xC0 for a in sent)

    def test_fresh_card_lists_no_keys_and_no_certificates(self, session: PivSession) -> None:
        """What `ykman piv info` reads: every slot 6A88, every object 6A82."""
        for slot in _all_slots():
            with apdu_error(SW.REFERENCE_DATA_NOT_FOUND):
                session.get_slot_metadata(slot)
            with apdu_error(SW.FILE_NOT_FOUND):
                session.get_certificate(slot)
        for object_id in (OBJECT_ID.CHUID, OBJECT_ID.CAPABILITY, 0x5FFF00):
            with apdu_error(SW.FILE_NOT_FOUND):
                session.get_object(object_id)

    # -- PIN, PUK, retries ----------------------------------------------------------------

    def test_verify_pin(self, session: PivSession) -> None:
        with pytest.raises(InvalidPinError) as e:
            session.verify_pin("654321")
        assert e.value.attempts_remaining == 2
        assert session.get_pin_attempts() == 2
        session.verify_pin(PIN)
        assert session.get_pin_attempts() == 3

    def test_change_pin_and_puk_and_unblock(self, device: Device, session: PivSession) -> None:
        session.change_pin(PIN, "13572468")
        assert not session.get_pin_metadata().default_value
        session.verify_pin("13572468")
        session.change_puk(PUK, "87654321")
        puk = session.get_puk_metadata()
        assert (puk.default_value, puk.total_attempts, puk.attempts_remaining) == (False, 3, 3)
        for left in (2, 1, 0):
            with pytest.raises(InvalidPinError) as e:
                session.verify_pin("000000")
            assert e.value.attempts_remaining == left
        with pytest.raises(InvalidPinError) as e:
            session.unblock_pin(PUK, "222222")
        assert e.value.attempts_remaining == 2
        session.unblock_pin("87654321", "222222")
        assert session.get_pin_attempts() == 3
        session = device.session()
        session.verify_pin("222222")

    def test_new_puk_bytes(self, device: Device, session: PivSession) -> None:
        """5.7 takes PUK bytes 00-7F only (6985, ykman: "complexity"); 5.4 any byte."""
        high = bytes.fromhex("C3A9C3A9C3A9").decode()  # "ééé": bytes above 7F
        if device.profile.puk_any_byte:
            session.change_puk(PUK, high)
            session.change_puk(high, PUK)
        else:
            with apdu_error(SW.CONDITIONS_NOT_SATISFIED):
                session.change_puk(PUK, high)
        assert session.get_puk_metadata().default_value

    def test_pin_and_management_key_metadata(self, device: Device, session: PivSession) -> None:
        pin = session.get_pin_metadata()
        assert (pin.default_value, pin.total_attempts, pin.attempts_remaining) == (True, 3, 3)
        mgmt = session.get_management_key_metadata()
        assert mgmt.key_type == MANAGEMENT_KEY_TYPE(device.profile.management_key_type)
        assert mgmt.default_value and mgmt.touch_policy == TOUCH_POLICY.NEVER
        with pytest.raises(NotSupportedError):
            session.get_bio_metadata()

    def test_set_pin_attempts(self, device: Device, admin: PivSession) -> None:
        with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
            admin.set_pin_attempts(5, 6)
        admin.verify_pin(PIN)
        admin.set_pin_attempts(5, 6)
        pin, puk = admin.get_pin_metadata(), admin.get_puk_metadata()
        assert (pin.total_attempts, pin.attempts_remaining, pin.default_value) == (5, 5, True)
        assert (puk.total_attempts, puk.attempts_remaining) == (6, 6)
        device.session().verify_pin(PIN)

    # -- the management key -------------------------------------------------------------------

    def test_wrong_management_key(self, session: PivSession) -> None:
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
        self, device: Device, admin: PivSession, key_type: MANAGEMENT_KEY_TYPE, key: bytes
    ) -> None:
        admin.set_management_key(key_type, key)
        admin.put_object(0x5FFF00, bytes.fromhex("8003810102"))  # still authenticated
        session = device.session()
        assert session.management_key_type == key_type
        assert not session.get_management_key_metadata().default_value
        with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
            session.authenticate(DEFAULT_MANAGEMENT_KEY[: key_type.key_len])
        session.authenticate(key)
        session.put_object(OBJECT_ID.CHUID, b"\x30\x00")

    def test_protected_management_key(self, device: Device, admin: PivSession) -> None:
        """`ykman piv access change-management-key -a AES256 --protect`: the key goes into
        PIN-protected data (5FC109), ykman's admin data (5FFF00) says so."""
        from ykman.piv import get_pivman_data, get_pivman_protected_data, pivman_set_mgm_key

        admin.verify_pin(PIN)
        pivman_set_mgm_key(admin, AES_KEY, MANAGEMENT_KEY_TYPE.AES256, store_on_device=True)
        session = device.session()
        assert get_pivman_data(session).has_protected_key
        with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
            session.get_object(OBJECT_ID.PRINTED)  # the PIN guards it
        session.verify_pin(PIN)
        stored = get_pivman_protected_data(session).key
        assert stored == AES_KEY
        session.authenticate(stored)
        session.generate_key(SLOT.CARD_AUTH, KEY_TYPE.ECCP256)

    def test_management_key_touch(self, device: Device, admin: PivSession) -> None:
        admin.set_management_key(MANAGEMENT_KEY_TYPE.AES128, AES_KEY[:16], require_touch=True)
        touched: list[int] = []

        def touch(slot: int) -> bool:
            touched.append(slot)
            return len(touched) == 1

        device.set_touch(touch)
        session = device.session()
        assert session.get_management_key_metadata().touch_policy == TOUCH_POLICY.ALWAYS
        session.authenticate(AES_KEY[:16])
        assert touched == [0x9B]
        with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
            session.authenticate(AES_KEY[:16])

    # -- keys ------------------------------------------------------------------------------

    @pytest.mark.parametrize("key_type", FAST_KEY_TYPES, ids=str)
    def test_generate_use_and_attest(
        self, device: Device, admin: PivSession, key_type: KEY_TYPE
    ) -> None:
        if not supports(device, key_type):
            with pytest.raises(NotSupportedError):  # yubikit knows the firmware
                admin.generate_key(SLOT.AUTHENTICATION, key_type)
            template = bytes((0xAC, 3, 0x80, 1, key_type))
            assert raw(admin, 0x47, 0, SLOT.AUTHENTICATION, template) == SW.INCORRECT_PARAMETERS
            return
        public_key = admin.generate_key(SLOT.AUTHENTICATION, key_type)
        meta = admin.get_slot_metadata(SLOT.AUTHENTICATION)
        assert meta.key_type == key_type and meta.generated
        assert meta.pin_policy == PIN_POLICY.ONCE and meta.touch_policy == TOUCH_POLICY.NEVER
        assert meta.public_key == public_key
        with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
            check_key(admin, SLOT.AUTHENTICATION, key_type, public_key)
        admin.verify_pin(PIN)
        check_key(admin, SLOT.AUTHENTICATION, key_type, public_key)
        statement = admin.attest_key(SLOT.AUTHENTICATION)
        statement.verify_directly_issued_by(admin.get_certificate(SLOT.ATTESTATION))
        assert statement.public_key() == public_key

    def test_generate_rsa3072(self, device: Device, admin: PivSession) -> None:
        if not supports(device, KEY_TYPE.RSA3072):
            with pytest.raises(NotSupportedError):
                admin.generate_key(SLOT.CARD_AUTH, KEY_TYPE.RSA3072)
            return
        public_key = admin.generate_key(SLOT.CARD_AUTH, KEY_TYPE.RSA3072)
        assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 3072
        check_key(admin, SLOT.CARD_AUTH, KEY_TYPE.RSA3072, public_key)  # 9E: PIN never

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
    def test_import_and_use(self, device: Device, admin: PivSession, make: object) -> None:
        assert callable(make)
        private_key = make()
        assert isinstance(private_key, PrivateKey)
        key_type = KEY_TYPE.from_public_key(private_key.public_key())
        if not supports(device, key_type):
            with pytest.raises(NotSupportedError):
                admin.put_key(SLOT.KEY_MANAGEMENT, private_key)
            return
        admin.put_key(SLOT.KEY_MANAGEMENT, private_key, PIN_POLICY.NEVER)
        meta = admin.get_slot_metadata(SLOT.KEY_MANAGEMENT)
        assert not meta.generated and meta.pin_policy == PIN_POLICY.NEVER
        assert meta.public_key == private_key.public_key()
        check_key(admin, SLOT.KEY_MANAGEMENT, key_type, private_key.public_key())
        with apdu_error(SW.INCORRECT_PARAMETERS):  # 6A80: imported keys are not attested
            admin.attest_key(SLOT.KEY_MANAGEMENT)

    def test_signature_slot_needs_pin_every_time(self, admin: PivSession) -> None:
        public_key = admin.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP256)
        assert admin.get_slot_metadata(SLOT.SIGNATURE).pin_policy == PIN_POLICY.ALWAYS
        admin.verify_pin(PIN)
        signature = admin.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"one", hashes.SHA256())
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(signature, b"one", ec.ECDSA(hashes.SHA256()))
        with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
            admin.sign(SLOT.SIGNATURE, KEY_TYPE.ECCP256, b"two", hashes.SHA256())

    def test_touch_policy_reaches_the_hook(self, device: Device, admin: PivSession) -> None:
        admin.generate_key(SLOT.CARD_AUTH, KEY_TYPE.ECCP256, touch_policy=TOUCH_POLICY.ALWAYS)
        assert admin.get_slot_metadata(SLOT.CARD_AUTH).touch_policy == TOUCH_POLICY.ALWAYS
        device.set_touch(lambda slot: False)
        with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
            admin.sign(SLOT.CARD_AUTH, KEY_TYPE.ECCP256, b"m", hashes.SHA256())
        device.set_touch(lambda slot: slot == SLOT.CARD_AUTH)
        admin.sign(SLOT.CARD_AUTH, KEY_TYPE.ECCP256, b"m", hashes.SHA256())

    def test_wrong_key_type_is_6a80(self, admin: PivSession) -> None:
        """ykman's check_key reads 6A80 as "not this key"."""
        admin.generate_key(SLOT.CARD_AUTH, KEY_TYPE.ECCP256)
        with apdu_error(SW.INCORRECT_PARAMETERS):
            admin.sign(SLOT.CARD_AUTH, KEY_TYPE.ECCP384, b"m", hashes.SHA384())
        with apdu_error(SW.INCORRECT_PARAMETERS):
            admin.sign(SLOT.RETIRED1, KEY_TYPE.ECCP256, b"m", hashes.SHA256())

    # -- certificates and objects --------------------------------------------------------------

    def test_certificates(self, admin: PivSession) -> None:
        cert = self_signed(admin.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256))
        admin.put_certificate(SLOT.AUTHENTICATION, cert)
        assert admin.get_certificate(SLOT.AUTHENTICATION) == cert
        admin.delete_certificate(SLOT.AUTHENTICATION)
        with apdu_error(SW.FILE_NOT_FOUND):
            admin.get_certificate(SLOT.AUTHENTICATION)

    @pytest.mark.parametrize("compress", [False, True])
    def test_large_certificate(self, admin: PivSession, compress: bool) -> None:
        """~2.9 kB DER: 12 chained chunks / 12 GET RESPONSEs over NFC."""
        cert = self_signed(rsa.generate_private_key(65537, 2048).public_key(), padding_names=110)
        der = cert.public_bytes(serialization.Encoding.DER)
        assert 2700 < len(der) < 2990
        admin.put_certificate(SLOT.RETIRED5, cert, compress=compress)
        assert admin.get_certificate(SLOT.RETIRED5) == cert
        stored = admin.get_object(OBJECT_ID.RETIRED5)
        assert (stored[-5:] == b"\x71\x01\x01\xfe\x00") is compress
        if compress:
            # (not gzip.compress(der) in stored: the gzip header holds a time in seconds)
            stream = stored[stored.index(b"\x1f\x8b\x08") : -5]
            assert gzip.decompress(stream) == der

    def test_objects_export_and_import(self, admin: PivSession) -> None:
        """`ykman piv objects import/export`: any tag 5F0000-5FFFFF, as a YubiKey stores them."""
        admin.put_object(OBJECT_ID.CHUID, b"\x30\x19" + bytes(25))
        assert admin.get_object(OBJECT_ID.CHUID) == b"\x30\x19" + bytes(25)
        assert admin.get_object(OBJECT_ID.DISCOVERY) == bytes.fromhex(
            "4F0BA0000003080000100001005F2F024000"
        )
        for tag, value in ((0x5F0001, b"\x00\x1b[31mred"), (0x5FFF42, b"Yubico"), (0x5FC104, b"")):
            admin.put_object(tag, value or b"unassigned")
            assert admin.get_object(tag) == (value or b"unassigned")
        admin.put_object(OBJECT_ID.PRINTED, b"\x88\x03\x89\x01\x00")
        with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
            admin.get_object(OBJECT_ID.PRINTED)
        admin.verify_pin(PIN)
        assert admin.get_object(OBJECT_ID.PRINTED) == b"\x88\x03\x89\x01\x00"
        admin.put_object(OBJECT_ID.CHUID)
        with apdu_error(SW.FILE_NOT_FOUND):
            admin.get_object(OBJECT_ID.CHUID)

    def test_object_limits(self, device: Device, admin: PivSession) -> None:
        """3063 bytes per object (over NFC; yubikit's USB path stops at 3062-byte APDUs, as
        with a real key); tags outside 5F0000-5FFFFF (and 7E, 7F61) are 6A80."""
        if device.transport == TRANSPORT.USB:
            with pytest.raises(NotSupportedError):
                admin.put_object(0x5F0002, bytes(3063))
        else:
            admin.put_object(0x5F0002, bytes(3063))
            assert admin.get_object(0x5F0002) == bytes(3063)
            with apdu_error(SW.NO_SPACE):
                admin.put_object(0x5F0002, bytes(3064))
        for tag in (0x5E0000, 0x600000):
            with apdu_error(SW.INCORRECT_PARAMETERS):  # yubikit's name for 6A80
                admin.put_object(tag, b"x")
            with apdu_error(SW.INCORRECT_PARAMETERS):
                admin.get_object(tag)
        with apdu_error(SW.FUNCTION_NOT_SUPPORTED):
            admin.put_object(OBJECT_ID.DISCOVERY, b"\x4f\x00")

    def test_put_object_needs_management_key(self, session: PivSession) -> None:
        with apdu_error(SW.SECURITY_CONDITION_NOT_SATISFIED):
            session.put_object(OBJECT_ID.CHUID, b"\x30\x00")

    # -- attestation -----------------------------------------------------------------------------

    def test_attestation_chain(self, device: Device, admin: PivSession) -> None:
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
        serial = extensions["1.3.6.1.4.1.41482.3.7"]
        policy = extensions["1.3.6.1.4.1.41482.3.8"]
        version = device.profile.version
        assert version is not None
        assert isinstance(firmware, x509.UnrecognizedExtension)
        assert firmware.value == bytes(version)
        assert isinstance(serial, x509.UnrecognizedExtension)
        assert serial.value[2:] == device.serial.to_bytes(serial.value[1], "big")
        assert isinstance(policy, x509.UnrecognizedExtension) and policy.value == b"\x03\x03"
        with apdu_error(SW.REFERENCE_DATA_NOT_FOUND):
            admin.attest_key(SLOT.RETIRED1)

    # -- reset, move, delete ---------------------------------------------------------------------

    def test_reset(self, device: Device, admin: PivSession) -> None:
        ca = admin.get_certificate(SLOT.ATTESTATION)
        public_key = admin.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
        admin.put_certificate(SLOT.AUTHENTICATION, self_signed(public_key))
        admin.set_management_key(MANAGEMENT_KEY_TYPE.AES256, AES_KEY)
        admin.change_pin(PIN, "999999")
        admin.reset()
        factory = MANAGEMENT_KEY_TYPE(device.profile.management_key_type)
        assert admin.management_key_type == factory
        with apdu_error(SW.REFERENCE_DATA_NOT_FOUND):
            admin.get_slot_metadata(SLOT.AUTHENTICATION)
        with apdu_error(SW.FILE_NOT_FOUND):
            admin.get_certificate(SLOT.AUTHENTICATION)
        assert admin.get_certificate(SLOT.ATTESTATION) == ca
        session = device.session()
        assert session.management_key_type == factory
        session.verify_pin(PIN)
        session.authenticate(DEFAULT_MANAGEMENT_KEY)
        assert session.get_pin_metadata().default_value

    def test_move_and_delete_key(self, device: Device, admin: PivSession) -> None:
        public_key = admin.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, PIN_POLICY.NEVER)
        if device.profile is not YUBIKEY_5_7:
            with pytest.raises(NotSupportedError):  # yubikit: "requires YubiKey 5.7"
                admin.move_key(SLOT.AUTHENTICATION, SLOT.RETIRED3)
            assert raw(admin, 0xF6, SLOT.RETIRED3, SLOT.AUTHENTICATION) == SW.INVALID_INSTRUCTION
            assert raw(admin, 0xF6, 0xFF, SLOT.AUTHENTICATION) == SW.INVALID_INSTRUCTION
            assert admin.get_slot_metadata(SLOT.AUTHENTICATION).public_key == public_key
            return
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
