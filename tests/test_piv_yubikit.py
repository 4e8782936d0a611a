"""The PIV applet driven by yubikit's ``PivSession``, as ykman drives a YubiKey, in process.

The suite (tests/yubikit_suite.py) runs for each YubiKey profile over both
transports of the in-process adapter: NFC (short APDUs, command chaining, GET
RESPONSE) and USB (extended APDUs). The same suite runs through pcscd + vpcd
in tests/e2e/test_piv_yubikit.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from yubikit.core import TRANSPORT
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, SLOT, PivSession

from applets.cards import build_card
from applets.piv import YUBIKEY_5_4, YUBIKEY_5_7, PivApplet, PivProfile
from vsc import Card
from vsc.inproc import YubikitConnection

from .yubikit_suite import PIN, YubiKeyPivSuite

SERIAL = 31415926


class RecordingConnection(YubikitConnection):
    """The in-process adapter, remembering every command APDU yubikit sends."""

    def __init__(self, card: Card, transport: TRANSPORT) -> None:
        super().__init__(card, transport)
        self.sent: list[bytes] = []

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(bytes(apdu))
        return super().send_and_receive(apdu)


class InProcessDevice:
    """A card of ``profile`` in this process and a way to (re)open yubikit sessions."""

    def __init__(self, profile: PivProfile, transport: TRANSPORT) -> None:
        self.profile = profile
        self.transport = transport
        self.serial = SERIAL
        self.applet = PivApplet(serial=SERIAL, profile=profile)
        self.card = build_card(self.applet)
        self.connection: RecordingConnection | None = None

    def session(self) -> PivSession:
        """A new session, as after reconnecting: the card is reset first."""
        self.card.reset()
        self.connection = RecordingConnection(self.card, self.transport)
        return PivSession(self.connection)

    def set_touch(self, approve: Callable[[int], bool]) -> None:
        self.applet.touch = approve

    def sent(self) -> list[bytes]:
        assert self.connection is not None
        return self.connection.sent


@pytest.fixture(
    params=[
        (YUBIKEY_5_4, TRANSPORT.NFC),
        (YUBIKEY_5_4, TRANSPORT.USB),
        (YUBIKEY_5_7, TRANSPORT.NFC),
        (YUBIKEY_5_7, TRANSPORT.USB),
    ],
    ids=["5.4-nfc", "5.4-usb", "5.7-nfc", "5.7-usb"],
)
def device(request: pytest.FixtureRequest) -> InProcessDevice:
    profile, transport = request.param
    return InProcessDevice(profile, transport)


class TestInProcess(YubiKeyPivSuite):
    pass


def test_generate_rsa4096_over_nfc() -> None:
    """The slowest key, once: 512-byte blocks chained in and out."""
    session = InProcessDevice(YUBIKEY_5_7, TRANSPORT.NFC).session()
    session.authenticate(DEFAULT_MANAGEMENT_KEY)
    public_key = session.generate_key(SLOT.RETIRED20, KEY_TYPE.RSA4096)
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 4096
    session.verify_pin(PIN)
    message = b"four thousand and ninety-six"
    signature = session.sign(
        SLOT.RETIRED20, KEY_TYPE.RSA4096, message, hashes.SHA256(), padding.PKCS1v15()
    )
    public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    assert session.get_slot_metadata(SLOT.RETIRED20).public_key == public_key


def test_attestation_key_is_per_card() -> None:
    a = InProcessDevice(YUBIKEY_5_4, TRANSPORT.USB).session().get_certificate(SLOT.ATTESTATION)
    b = InProcessDevice(YUBIKEY_5_4, TRANSPORT.USB).session().get_certificate(SLOT.ATTESTATION)
    assert a.public_key() != b.public_key()
