"""``python -m vsc.emulator --applet gids``: the factory card it serves."""

from __future__ import annotations

import pytest

from applets.gids import FCI, GIDS_ATR
from vsc.emulator import default_card, main


def test_the_gids_card_has_the_gids_atr_and_application() -> None:
    card = default_card(applet="gids")
    assert card.power_on() == GIDS_ATR
    assert card.transmit(bytes.fromhex("00A4040009A0000003974254465900")) == FCI + b"\x90\x00"
    # Factory-empty: nothing to read until it is personalised.
    assert card.transmit(bytes.fromhex("00CBA000045C02DF1F00")) == b"\x6a\x82"


def test_piv_stays_the_default() -> None:
    assert default_card().power_on() != GIDS_ATR


def test_an_unknown_applet_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--applet", "openpgp"])
    assert exit_.value.code == 2
    assert "invalid choice: 'openpgp'" in capsys.readouterr().err
