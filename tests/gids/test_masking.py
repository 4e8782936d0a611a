"""GIDS's secrets in traces: the card's and a relay's hide the same bytes, and only those."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from applets.catalog import trace_rules_for
from applets.gids import GIDS_AID, GIDS_TRACE_RULES
from applets.gids.host import (
    admin_key_do,
    authenticate_mutual,
    initialize,
    key_file_fcp,
    send,
)
from vsc.apdu import CommandApdu
from vsc.masking import Mask
from vsc.share.masking import ApduTrace
from vsc.testing.traces import leaks
from vsc.tlv import encode_tlv
from vsc.trace import TRACE

from .conftest import GidsCard, new_card

PIN = b"pin-7a9c1e33"
NEW_PIN = b"pin-0b5d2f48"
ADMIN = bytes.fromhex("5a17c0de9be2f4a6d3c8b1e07f296d4a8c3e5b7102f9a6d4")
NEW_ADMIN = bytes.fromhex("c3e5b7102f9a6d4a5a17c0de9be2f4a6d3c8b1e07f296d4a")
PLAINTEXT = b"the-deciphered-plaintext"


def test_the_catalog_resolves_gids_by_its_selected_prefix() -> None:
    assert trace_rules_for(GIDS_AID[:9]) is GIDS_TRACE_RULES
    assert trace_rules_for(GIDS_AID) is GIDS_TRACE_RULES


@pytest.mark.parametrize(
    ("ins", "p1", "p2", "mask"),
    [
        (0x20, 0x00, 0x80, Mask.COMMAND),  # VERIFY
        (0x24, 0x00, 0x80, Mask.COMMAND),  # CHANGE REFERENCE DATA
        (0x2C, 0x02, 0x80, Mask.COMMAND),  # RESET RETRY COUNTER
        (0x87, 0x00, 0x00, Mask.BOTH),  # the administrator's cryptograms
        (0xDB, 0x3F, 0xFF, Mask.COMMAND),  # key import, administrator key
        (0xDB, 0xA0, 0x13, Mask.COMMAND),  # a private file
        (0xDB, 0xA0, 0x10, Mask.NONE),  # the minidriver's common files
        (0xCB, 0xA0, 0x14, Mask.RESPONSE),
        (0xCB, 0xA0, 0x00, Mask.NONE),
        (0xCB, 0x3F, 0xFF, Mask.NONE),  # public keys, PIN counters
        (0x2A, 0x80, 0x86, Mask.RESPONSE),  # deciphered plaintext
        (0x2A, 0x9E, 0x9A, Mask.NONE),
        (0x47, 0x00, 0x00, Mask.NONE),
        (0xF0, 0x00, 0x00, Mask.BOTH),  # anything unknown
    ],
)
def test_rules(ins: int, p1: int, p2: int, mask: Mask) -> None:
    assert GIDS_TRACE_RULES.classify(ins, p1, p2, b"\x00" * 8) == mask


def _session(card: GidsCard) -> list[tuple[bytes, bytes]]:
    """Personalise, unblock with the admin key, import a key, decipher: every exchange."""
    exchanges: list[tuple[bytes, bytes]] = []

    def transmit(apdu: bytes) -> bytes:
        response = card.transmit(apdu)
        exchanges.append((apdu, response))
        return response

    initialize(transmit, pin=PIN, admin_key=ADMIN)
    for _ in range(3):
        transmit(CommandApdu(0, 0x20, 0, 0x80, b"wrong-pin").encode())
    authenticate_mutual(transmit, ADMIN)
    send(transmit, CommandApdu(0, 0x2C, 0x02, 0x80, NEW_PIN))
    authenticate_mutual(transmit, ADMIN)
    send(transmit, CommandApdu(0, 0xDB, 0x3F, 0xFF, admin_key_do(NEW_ADMIN)))
    send(transmit, CommandApdu(0, 0x20, 0, 0x80, NEW_PIN))
    send(transmit, CommandApdu(0, 0xE0, 0, 0, key_file_fcp(0x81, 0x06, decipher=True)))
    send(transmit, CommandApdu(0, 0x44, 0, 0))
    value = bytes.fromhex("830102840100") + encode_tlv(0x87, _PRIVATE_DER)
    key_do = encode_tlv(0x70, bytes.fromhex("840181") + encode_tlv(0xA5, value))
    send(transmit, CommandApdu(0, 0xDB, 0x3F, 0xFF, key_do))
    send(transmit, CommandApdu(0, 0x22, 0x41, 0xB8, bytes.fromhex("800146840181")))
    cryptogram = _PRIVATE.public_key().encrypt(PLAINTEXT, padding.PKCS1v15())
    assert send(transmit, CommandApdu(0, 0x2A, 0x80, 0x86, cryptogram, 256)) == PLAINTEXT
    return exchanges


_PRIVATE = rsa.generate_private_key(65537, 1024)
_PRIVATE_DER = _PRIVATE.private_bytes(
    serialization.Encoding.DER,
    serialization.PrivateFormat.TraditionalOpenSSL,
    serialization.NoEncryption(),
)


def test_a_whole_session_leaks_no_secret_and_hides_no_public_byte(
    caplog: pytest.LogCaptureFixture,
) -> None:
    card = new_card()
    with caplog.at_level(TRACE, logger="vsc.apdu"):
        exchanges = _session(card)
    card_text = caplog.text
    caplog.clear()
    relay = ApduTrace("relay")
    with caplog.at_level(TRACE, logger="vsc.share.apdu"):
        for command, response in exchanges:
            relay.exchange(command, response)
    relay_text = caplog.text
    secrets = {
        "PIN": PIN,
        "new PIN": NEW_PIN,
        "admin key": ADMIN,
        "new admin key": NEW_ADMIN,
        "private key": _PRIVATE_DER[40:],
        "plaintext": PLAINTEXT,
    }
    assert leaks(card_text, secrets) == []
    assert leaks(relay_text, secrets) == []
    # What is public stays readable: the file table's "cardapps" entry, the FCI.
    for text in (card_text, relay_text):
        assert b"cardapps".hex(" ").upper() in text
        assert "A0 00 00 03 97 42 54 46 59 02 01" in text
