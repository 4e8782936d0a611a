"""In-process connections: drive a :class:`~vsc.card.Card` without a reader.

:class:`CardConnection` is what an embedding application or a test harness
uses: it sends APDUs straight to the card and can collect long responses
through GET RESPONSE the way a PC/SC client does. :class:`YubikitConnection`
adapts a card to yubikit's ``SmartCardConnection`` so that yubikit's
``PivSession`` talks to it as if through a reader (needs yubikey-manager).
"""

from __future__ import annotations

from yubikit.core import TRANSPORT
from yubikit.core.smartcard import SmartCardConnection

from .apdu import CommandApdu
from .card import Card

__all__ = ["TRANSPORT", "CardConnection", "YubikitConnection"]


class CardConnection:
    """A direct line to a card: raw APDUs in, raw responses out."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self.atr = card.power_on() if not card.powered else card.atr

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        """Send one APDU; returns (data, SW)."""
        resp = self.card.transmit(apdu)
        return resp[:-2], int.from_bytes(resp[-2:], "big")

    def send(
        self, cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None
    ) -> tuple[bytes, int]:
        """Send a command, chaining it if needed and collecting 61xx responses."""
        while len(data) > 255:
            chunk = CommandApdu(cla | 0x10, ins, p1, p2, data[:255]).encode()
            _, sw = self.transmit(chunk)
            if sw != 0x9000:
                return b"", sw
            data = data[255:]
        out, sw = self.transmit(CommandApdu(cla, ins, p1, p2, data, le).encode())
        while sw >> 8 == 0x61:
            more, sw = self.transmit(bytes((cla & 0x03, 0xC0, 0, 0, sw & 0xFF)))
            out += more
        return out, sw

    def power_cycle(self) -> bytes:
        self.card.power_off()
        self.atr = self.card.power_on()
        return self.atr


class YubikitConnection(SmartCardConnection):
    """yubikit's connection interface over an in-process card.

    ``transport`` decides how yubikit formats APDUs: NFC gives short APDUs
    with command chaining and GET RESPONSE, USB gives extended APDUs.
    """

    def __init__(self, card: Card, transport: TRANSPORT = TRANSPORT.NFC) -> None:
        self.card = card
        self._transport = transport
        if not card.powered:
            card.power_on()

    @property
    def transport(self) -> TRANSPORT:
        return self._transport

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        resp = self.card.transmit(apdu)
        return resp[:-2], int.from_bytes(resp[-2:], "big")

    def close(self) -> None:
        # A reader disconnect with SCARD_RESET_CARD: volatile state goes.
        self.card.reset()
