"""The PIN binding shared by the PIV and GIDS adapters (vsc.store.pinbinding), on each applet."""

from __future__ import annotations

import logging

import pytest

from applets.gids import GIDS_ATR
from applets.gids.host import initialize
from applets.piv.state import DEFAULT_PIN
from vsc import Card
from vsc.store import BackendSpec, CardStore
from vsc.store.gids import open_gids
from vsc.store.piv import open_piv

GIDS_PIN = b"pin-4e1d7b22"
GIDS_ADMIN = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778")


def _sw(card: Card, apdu: bytes) -> int:
    return int.from_bytes(card.transmit(apdu)[-2:], "big")


def _verify(pin: bytes) -> bytes:
    return bytes((0, 0x20, 0, 0x80, len(pin))) + pin


@pytest.mark.parametrize("applet", ["piv", "gids"])
def test_a_role_missing_from_the_binding_is_damage(
    store: CardStore, applet: str, caplog: pytest.LogCaptureFixture
) -> None:
    stored = store.create("alice", BackendSpec.plain())
    try:
        if applet == "piv":
            card = Card([open_piv(stored, provision=True)])
            pin = DEFAULT_PIN
            assert _sw(card, bytes.fromhex("00A4040005A000000308")) == 0x9000
        else:
            gids = open_gids(stored, provision=True)
            card = Card([gids], atr=GIDS_ATR, default=gids)
            initialize(card.transmit, pin=GIDS_PIN, admin_key=GIDS_ADMIN)
            pin = GIDS_PIN
        stored.remove_role(applet, "pin")
        with caplog.at_level(logging.ERROR, logger="vsc.store.events"):
            # Damaged files (6581, logged), not a crash of the card (6F00) nor a wrong PIN.
            assert _sw(card, _verify(pin)) == 0x6581
        assert f"has no seal in binding {applet!r}" in caplog.text
        assert not stored.is_unlocked(applet)
    finally:
        stored.close()
