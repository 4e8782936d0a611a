"""``vsc create --profile``: the card profile is chosen per card, kept, shown and served.

The lifecycle profiles yubikey-5.4 (default), yubikey-5.7 and piv make the PIV
applet the card of the same name (docs/piv.md, "Profiles"); ``vsc info`` shows
it from the card's own record, and the emulator serves a stored card as what it
was made (refusing ``--profile`` naming another).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from applets.piv import PIV, YUBIKEY_5_4, YUBIKEY_5_7, PivProfile
from vsc.emulator import CardOpenError, open_card
from vsc.inproc import CardConnection
from vsc.store import BackendSpec

from .conftest import Vsc

SELECT_PIV = bytes.fromhex("00A4040005A000000308")


@pytest.fixture
def plain(tmp_path: Path) -> Vsc:
    return Vsc(tmp_path / "store", ["--insecure-plain"])


@pytest.mark.parametrize(
    ("name", "card", "admin_key"),
    [
        ("yubikey-5.4", YUBIKEY_5_4, "TDES"),
        ("yubikey-5.7", YUBIKEY_5_7, "AES192"),
        ("piv", PIV, "TDES"),
        ("yubikey", YUBIKEY_5_4, "TDES"),  # the older name of yubikey-5.4
    ],
)
def test_create_chooses_the_card_and_info_shows_it(
    plain: Vsc, name: str, card: PivProfile, admin_key: str
) -> None:
    pin = "24681357"
    created = plain.run("create", "c", "--profile", name, "--pin", pin, "--serial", "31415926",
                        "--json").json()  # fmt: skip
    assert created["serial"] == 31415926
    info = plain.run("info", "c", "--json").json()
    assert info["card_profile"] == card.name
    assert info["serial"] == 31415926
    assert info["admin_key_algorithm"] == admin_key
    assert f"  card:          {card.title} ({card.name})\n" in plain.run("info", "c").stdout

    # The emulator serves it as that card: its answer to SELECT, GET VERSION where it has one.
    backend = BackendSpec.plain()
    served, stored = open_card("c", backend, store=plain.store)
    try:
        connection = CardConnection(served)
        assert connection.transmit(SELECT_PIV) == (card.apt, 0x9000)
        version = connection.transmit(bytes.fromhex("00FD000000"))
        assert version == ((bytes(card.version), 0x9000) if card.version else (b"", 0x6D00))
    finally:
        stored.close()
    with pytest.raises(CardOpenError, match=f"is a {card.name} card"):
        other = PIV if card is not PIV else YUBIKEY_5_7
        open_card("c", backend, store=plain.store, profile=other)


def test_serial_is_checked(plain: Vsc) -> None:
    for bad in ("0", "4294967296", "x"):
        usage = plain.run("create", "c", "--serial", bad, status=2)
        assert "--serial" in usage.stderr
    assert plain.run("list", "--json").json() == []
