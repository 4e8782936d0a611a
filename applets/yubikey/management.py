"""The YubiKey Management application: who the key is (serial, firmware, form factor, apps).

ykman finds a YubiKey through this application: SELECT of
``A0 00 00 05 27 47 11 17`` answers the firmware version as text, and READ
CONFIG (``00 1D <page> 00``) the device information, a length byte and TLVs
(serial, firmware, form factor, the applications each transport supports
and has enabled, ...), in pages when it is long (tag 10 says how many more).
Without it ykman takes a card for "firmware 3.0.0" with no serial, and
``--device SERIAL`` cannot find it.

The key this describes is a YubiKey 5 NFC with every application but PIV
disabled: the other applications do not exist here, and a disabled one is
not selectable (``6A82``), which is what ykman's OTP and FIDO probes get.
The configuration is fixed: WRITE CONFIG, SET MODE and DEVICE RESET answer
``6D00`` (docs/piv.md, "The device").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

from applets.piv.attestation import FormFactor
from vsc.apdu import CommandApdu
from vsc.applet import Applet, command
from vsc.masking import Mask, TraceRules
from vsc.sw import IncorrectParameters
from vsc.tlv import encode_tlv

__all__ = ["MANAGEMENT_AID", "Capability", "DeviceInfo", "FormFactor", "ManagementApplet"]

MANAGEMENT_AID = bytes.fromhex("A000000527471117")

INS_READ_CONFIG = 0x1D

# Device information tags (yubikit: yubikit/management.py).
TAG_USB_SUPPORTED = 0x01
TAG_SERIAL = 0x02
TAG_USB_ENABLED = 0x03
TAG_FORM_FACTOR = 0x04
TAG_VERSION = 0x05
TAG_AUTO_EJECT_TIMEOUT = 0x06
TAG_CHALRESP_TIMEOUT = 0x07
TAG_DEVICE_FLAGS = 0x08
TAG_CONFIG_LOCK = 0x0A
TAG_NFC_SUPPORTED = 0x0D
TAG_NFC_ENABLED = 0x0E
TAG_IAP_DETECTION = 0x0F
TAG_MORE_DATA = 0x10
TAG_FIPS_CAPABLE = 0x14
TAG_FIPS_APPROVED = 0x15
TAG_PIN_COMPLEXITY = 0x16
TAG_NFC_RESTRICTED = 0x17
TAG_RESET_BLOCKED = 0x18


class Capability(IntFlag):
    """Application bits of the supported/enabled fields (yubikit's CAPABILITY)."""

    OTP = 0x01
    U2F = 0x02
    CCID = 0x04  # "a CCID application is there": set with PIV, OpenPGP, OATH
    OPENPGP = 0x08
    PIV = 0x10
    OATH = 0x20
    HSMAUTH = 0x100
    FIDO2 = 0x200


#: What a YubiKey 5 NFC from 5.4.3 on has, on USB and on NFC alike.
YUBIKEY_5_APPLICATIONS = (
    Capability.OTP
    | Capability.U2F
    | Capability.CCID
    | Capability.OPENPGP
    | Capability.PIV
    | Capability.OATH
    | Capability.HSMAUTH
    | Capability.FIDO2
)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """The device information of one key; :meth:`pages` is what READ CONFIG answers."""

    serial: int
    version: tuple[int, int, int]
    form_factor: FormFactor = FormFactor.USB_A_KEYCHAIN
    supported: Capability = YUBIKEY_5_APPLICATIONS
    usb_enabled: Capability = Capability.PIV | Capability.CCID
    nfc_enabled: Capability = Capability.PIV

    def pages(self) -> tuple[bytes, ...]:
        """READ CONFIG's answers, page by page: a length byte, then the TLVs.

        Firmware 5.7 splits it in two pages (tag 10 on the first says one more
        follows); 5.4 answers in one.
        """
        first = [
            (TAG_USB_SUPPORTED, self.supported.to_bytes(2, "big")),
            (TAG_SERIAL, self.serial.to_bytes(4, "big")),
            (TAG_USB_ENABLED, self.usb_enabled.to_bytes(2, "big")),
            (TAG_FORM_FACTOR, bytes((self.form_factor,))),
            (TAG_VERSION, bytes(self.version)),
            (TAG_AUTO_EJECT_TIMEOUT, b"\x00\x00"),
            (TAG_CHALRESP_TIMEOUT, b"\x0f"),
            (TAG_DEVICE_FLAGS, b"\x00"),
            (TAG_NFC_SUPPORTED, self.supported.to_bytes(2, "big")),
            (TAG_NFC_ENABLED, self.nfc_enabled.to_bytes(2, "big")),
            (TAG_CONFIG_LOCK, b"\x00"),
        ]
        if self.version < (5, 7, 0):
            return (_page(first),)
        second = [
            (TAG_FIPS_CAPABLE, b"\x00\x00"),
            (TAG_FIPS_APPROVED, b"\x00\x00"),
            (TAG_PIN_COMPLEXITY, b"\x00"),
            (TAG_NFC_RESTRICTED, b"\x00"),
            (TAG_RESET_BLOCKED, b"\x00\x00"),
        ]
        first += [(TAG_IAP_DETECTION, b"\x00"), (TAG_MORE_DATA, b"\x01")]
        return _page(first), _page(second)


def _page(items: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(encode_tlv(tag, value) for tag, value in items)
    return bytes((len(body),)) + body


class ManagementApplet(Applet[None]):
    """SELECT answers the firmware version; READ CONFIG the device information."""

    aid = MANAGEMENT_AID
    # Nothing here is secret; an INS it does not know is hidden, as always.
    trace_rules = TraceRules({INS_READ_CONFIG: Mask.NONE}, default=Mask.BOTH)

    def __init__(self, info: DeviceInfo) -> None:
        self.info = info
        self._pages = info.pages()
        major, minor, patch = info.version
        self._banner = f"Virtual mgr - FW version {major}.{minor}.{patch}".encode("ascii")

    def new_session(self) -> None:
        return None

    def select(self, session: None, apdu: CommandApdu) -> bytes:
        return self._banner

    @command(INS_READ_CONFIG)
    def read_config(self, apdu: CommandApdu, session: None) -> bytes:
        if apdu.p1 >= len(self._pages) or apdu.p2:
            raise IncorrectParameters(f"no device information page {apdu.p1}")
        return self._pages[apdu.p1]
