"""Whole cards: a PIV applet of some profile, the device around it, and its ATR.

A card profile (docs/piv.md, "Profiles") is more than the PIV applet: a
YubiKey also has its Management application (ykman reads the key's serial,
firmware and applications there) and an ATR that says "YubiKey"; a plain PIV
card has neither, and an ATR of its own that OpenSC does not take for a
YubiKey. :func:`build_card` puts them together, with the echo applet every
vsc card carries.

A YubiKey's ATR depends on how it is plugged in, which the card cannot see:
over USB a YubiKey 5 answers a USB-style ATR (interface bytes TA1..TD1, so
ykman uses extended APDUs) in a reader named "Yubico YubiKey ..."; tapped on
an NFC reader it answers the contactless ATR, in any reader. ykman only
accepts the USB one in a reader whose name says Yubico (otherwise it finds
no USB product id and gives up), so :class:`Transport` NFC, the default, is
right for vpcd's stock "Virtual PCD" readers, and USB for a vpcd reader
configured with ``FRIENDLYNAME "Yubico YubiKey CCID"``.
"""

from __future__ import annotations

import enum

from vsc.card import Card

from .echo import EchoApplet
from .piv import PivApplet
from .piv.attestation import FormFactor
from .piv.profile import PivProfile
from .yubikey import DeviceInfo, ManagementApplet

__all__ = [
    "PIV_ATR",
    "YUBIKEY_NFC_ATR",
    "YUBIKEY_READER_NAME",
    "YUBIKEY_USB_ATR",
    "Transport",
    "atr_of",
    "build_card",
    "device_info",
]


class Transport(enum.StrEnum):
    """How a YubiKey is attached (yubikit's TRANSPORT): what its ATR looks like."""

    NFC = "nfc"
    USB = "usb"


#: A YubiKey 5 NFC on an NFC reader: no TA1..TD1 (ykman: NFC, short APDUs), "YubiKey".
YUBIKEY_NFC_ATR = bytes.fromhex("3B8D80018073C021C057597562694B6579F9")
#: A YubiKey 5 over USB: TA1..TD1 present (ykman: USB, extended APDUs), "YubiKey".
YUBIKEY_USB_ATR = bytes.fromhex("3BFD1300008131FE158073C021C057597562694B657940")
#: The plain PIV card's own contact ATR: T=1 (IFSC 254), historical bytes with only
#: the card capabilities (chaining, extended Lc/Le): OpenSC's generic PIV driver.
PIV_ATR = bytes.fromhex("3B858131FE458073C021C05C")
#: The reader name a YubiKey's USB CCID interface has (pcscd adds " 00 00").
YUBIKEY_READER_NAME = "Yubico YubiKey CCID"

_YUBIKEY_ATRS = {Transport.NFC: YUBIKEY_NFC_ATR, Transport.USB: YUBIKEY_USB_ATR}


def atr_of(profile: PivProfile, transport: Transport = Transport.NFC) -> bytes:
    """The ATR a card of ``profile`` answers, attached by ``transport``."""
    return _YUBIKEY_ATRS[transport] if profile.is_yubikey else PIV_ATR


def device_info(profile: PivProfile, serial: int) -> DeviceInfo | None:
    """What a YubiKey of ``profile`` tells through its Management application."""
    if profile.version is None:
        return None
    return DeviceInfo(serial, profile.version, FormFactor.USB_A_KEYCHAIN)


def build_card(
    piv: PivApplet, transport: Transport = Transport.NFC, *, card_class: type[Card] = Card
) -> Card:
    """The card ``piv``'s profile describes: PIV (selected after reset), the
    Management application of a YubiKey, the echo applet."""
    profile = piv.profile
    result = card_class(atr=atr_of(profile, transport))
    result.register(piv, default=True)
    info = device_info(profile, piv.data.serial)
    if info is not None:
        result.register(ManagementApplet(info))
    result.register(EchoApplet())
    return result
