"""Fixtures for the GIDS tests: a factory card and a personalised one, driven by raw APDUs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from applets.gids import GIDS_ATR, GidsApplet
from applets.gids.host import CardError, initialize, send
from vsc import Card
from vsc.apdu import CommandApdu

from ..store.conftest import backend, clock, store, swtpm  # noqa: F401  (the store's fixtures)

PIN = b"123456"
ADMIN_KEY = bytes(range(1, 9)) * 3
CARDID = bytes(range(16))


@dataclass
class GidsCard:
    """A GIDS card in process: raw APDUs in, status words and data out."""

    applet: GidsApplet
    card: Card

    def transmit(self, apdu: bytes) -> bytes:
        return self.card.transmit(apdu)

    def sw(self, apdu: bytes | str) -> int:
        """The status word of one command (GET RESPONSE not followed)."""
        raw = bytes.fromhex(apdu) if isinstance(apdu, str) else apdu
        return int.from_bytes(self.card.transmit(raw)[-2:], "big")

    def send(self, apdu: CommandApdu | bytes | str) -> bytes:
        """The whole answer of a command that must succeed."""
        if isinstance(apdu, str):
            apdu = bytes.fromhex(apdu)
        return send(self.card.transmit, apdu)

    def status(self, apdu: CommandApdu | bytes | str) -> int:
        """The final status word of a command, its answer fetched (chained if long)."""
        if isinstance(apdu, str):
            apdu = bytes.fromhex(apdu)
        try:
            send(self.card.transmit, apdu)
        except CardError as e:
            return e.sw
        return 0x9000

    def verify(self, pin: bytes = PIN) -> int:
        return self.status(CommandApdu(0, 0x20, 0, 0x80, pin))

    def reset(self) -> None:
        self.card.power_on()


def new_card(applet: GidsApplet | None = None) -> GidsCard:
    applet = applet if applet is not None else GidsApplet(serial=12345678)
    return GidsCard(applet, Card([applet], atr=GIDS_ATR, default=applet))


@pytest.fixture
def factory() -> GidsCard:
    """A factory-empty card: creation state, no PIN, no files."""
    return new_card()


@pytest.fixture
def gids() -> GidsCard:
    """A card personalised as gids-tool --initialize does (PIN 123456, 3DES admin key)."""
    card = new_card()
    initialize(card.transmit, pin=PIN, admin_key=ADMIN_KEY, cardid=CARDID)
    return card
