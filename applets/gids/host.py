"""The host side of GIDS: personalisation, key containers, administrator authentication.

What a card management system sends to a GIDS card, as APDUs through any
``transmit(command) -> response`` (an in-process :class:`vsc.Card`, a PC/SC
connection). ``vsc create --applet gids`` personalises with
:func:`initialize` the way ``gids-tool --initialize`` does (the same files,
rules and minidriver layout, so OpenSC and Windows read the card alike), and
``vsc unblock`` answers the card's challenge with :func:`external_response`.
Every helper raises :class:`CardError` with the status word on a refusal.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vsc.apdu import CommandApdu
from vsc.tlv import encode_tlv, parse_tlv

from . import minidriver
from .applet import GIDS_AID
from .crypto import admin_block_size, admin_decrypt, admin_encrypt

__all__ = [
    "CardError",
    "Transmit",
    "authenticate_mutual",
    "external_challenge",
    "external_response",
    "initialize",
    "key_file_fcp",
    "send",
]

Transmit = Callable[[bytes], bytes]


class CardError(Exception):
    """The card refused a command: ``sw`` says why."""

    def __init__(self, what: str, sw: int) -> None:
        super().__init__(f"{what}: the card answered {sw:04X}")
        self.sw = sw


def send(transmit: Transmit, apdu: CommandApdu | bytes, what: str = "command") -> bytes:
    """One command (chained when over 255 bytes), its whole answer fetched; ``9000`` or
    :class:`CardError`."""
    cmd = CommandApdu.parse(apdu) if isinstance(apdu, bytes) else apdu
    data = cmd.data
    pieces = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        cla = cmd.cla | (0 if last else 0x10)
        le = (cmd.le if cmd.le is not None else 256) if last else None
        response = transmit(CommandApdu(cla, cmd.ins, cmd.p1, cmd.p2, piece, le).encode())
        if not last and response[-2:] != b"\x90\x00":
            raise CardError(what, int.from_bytes(response[-2:], "big"))
    out = response[:-2]
    while response[-2] == 0x61:
        response = transmit(bytes((cmd.cla & 0x03, 0xC0, 0, 0, response[-1])))
        out += response[:-2]
    sw = int.from_bytes(response[-2:], "big")
    if sw != 0x9000:
        raise CardError(what, sw)
    return out


# -- files ----------------------------------------------------------------------------

#: The data files gids-tool creates: (FID, access rules) - everyone reads the common
#: files and the card identifier; the user or the administrator writes them, only the
#: administrator the card identifier.
DATA_FILES: Sequence[tuple[int, bytes]] = (
    (0xA000, bytes.fromhex("033000")),  # the file table and key map
    (0xA010, bytes.fromhex("033000")),  # everyone reads, user writes
    (0xA011, bytes.fromhex("0330FF")),  # user writes, nobody reads
    (0xA012, bytes.fromhex("032000")),  # everyone reads, administrator writes
    (0xA013, bytes.fromhex("033030")),  # user reads and writes
    (0xA014, bytes.fromhex("032020")),  # administrator reads and writes
)
#: The administrator key's file: MSE always, replaced by the administrator, never read.
ADMIN_KEY_FCP = bytes.fromhex("621A8201188302B0808C0487 0020FFA50BA4098001028301809501C0")


def data_file_fcp(fid: int, rules: bytes) -> bytes:
    body = (
        encode_tlv(0x82, b"\x39")
        + encode_tlv(0x83, fid.to_bytes(2, "big"))
        + encode_tlv(0x8C, rules)
    )
    return encode_tlv(0x62, body)


def key_file_fcp(key_ref: int, algorithm: int, *, decipher: bool) -> bytes:
    """A container's key file: generated, replaced and used by the user, public part public.

    RSA: signature templates for raw and PKCS#1 padding (and, with ``decipher``,
    decipherment templates for raw, PKCS#1 and OAEP), as the minidriver and OpenSC
    write them for a key exchange or signature key. ECC (``0A``-``0E``): one
    signature template with the bare algorithm (no padding to choose).
    """

    def crt(tag: int, alg: int) -> bytes:
        return encode_tlv(
            tag,
            encode_tlv(0x80, bytes((alg,)))
            + encode_tlv(0x83, bytes((key_ref,)))
            + encode_tlv(0x95, b"\x40"),
        )

    if algorithm >= 0x0A:
        templates = crt(0xB6, algorithm)
    else:
        templates = crt(0xB6, 0x10 | algorithm) + crt(0xB6, 0x50 | algorithm)
    if decipher and algorithm < 0x0A:
        templates = (
            crt(0xB8, algorithm)
            + crt(0xB8, 0x80 | algorithm)
            + crt(0xB8, 0x40 | algorithm)
            + templates
        )
    body = (
        encode_tlv(0x82, b"\x18")
        + encode_tlv(0x83, bytes((0xB0, key_ref)))
        + encode_tlv(0x8C, bytes.fromhex("8F10101000"))
        + encode_tlv(0xA5, templates)
    )
    return encode_tlv(0x62, body)


def _create(transmit: Transmit, fcp: bytes, what: str) -> None:
    send(transmit, CommandApdu(0x00, 0xE0, 0, 0, fcp), f"create {what}")
    send(transmit, CommandApdu(0x00, 0x44, 0, 0), f"activate {what}")


def put_object(transmit: Transmit, fid: int, tag: int, value: bytes) -> None:
    apdu = CommandApdu(0x00, 0xDB, fid >> 8, fid & 0xFF, encode_tlv(tag, value))
    send(transmit, apdu, f"write {fid:04X}/{tag:04X}")


def get_object(transmit: Transmit, fid: int, tag: int) -> bytes:
    name = encode_tlv(0x5C, tag.to_bytes(2, "big"))
    answer = send(transmit, CommandApdu(0x00, 0xCB, fid >> 8, fid & 0xFF, name, 256))
    return parse_tlv(answer, tag).value


def admin_key_do(key: bytes) -> bytes:
    """PUT DATA 3FFF's value that writes the administrator key (key reference 80)."""
    return encode_tlv(0x70, encode_tlv(0x84, b"\x80") + encode_tlv(0xA5, encode_tlv(0x87, key)))


def initialize(
    transmit: Transmit,
    *,
    pin: bytes,
    admin_key: bytes,
    cardid: bytes | None = None,
    puk: bytes | None = None,
) -> bytes:
    """Personalise a factory card as gids-tool ``--initialize`` does; returns the cardid.

    PIN (and PUK), the six data files, the administrator key, the minidriver's
    file table, cardapps, cardcf, an empty cmapfile and the card identifier;
    then the application is activated.
    """
    cardid = cardid if cardid is not None else secrets.token_bytes(16)
    if len(cardid) != 16:
        raise ValueError("a cardid has 16 bytes")
    send(transmit, CommandApdu(0x00, 0xA4, 0x04, 0x00, GIDS_AID, 256), "select GIDS")
    send(transmit, CommandApdu(0x00, 0x24, 0x01, 0x80, pin), "set the PIN")
    if puk is not None:
        send(transmit, CommandApdu(0x00, 0x24, 0x01, 0x81, puk), "set the PUK")
    for fid, rules in DATA_FILES:
        _create(transmit, data_file_fcp(fid, rules), f"file {fid:04X}")
    _create(transmit, ADMIN_KEY_FCP, "the administrator key file")
    send(transmit, CommandApdu(0x00, 0xDB, 0x3F, 0xFF, admin_key_do(admin_key)), "admin key")
    put_object(
        transmit, *minidriver.FILE_TABLE, minidriver.encode_file_table(minidriver.INITIAL_FILES)
    )
    put_object(transmit, *minidriver.CARDAPPS_LOCATION, minidriver.CARDAPPS)
    put_object(transmit, *minidriver.CARDCF, minidriver.CardCache().encode())
    put_object(transmit, *minidriver.CMAPFILE, b"")
    put_object(transmit, *minidriver.CARDID, cardid)
    send(transmit, CommandApdu(0x00, 0xA4, 0x00, 0x0C, b"\x3f\xff"), "select the application")
    send(transmit, CommandApdu(0x00, 0x44, 0x00, 0x00), "activate the application")
    return cardid


# -- the administrator key --------------------------------------------------------------

SELECT_ADMIN_KEY = CommandApdu(0x00, 0x22, 0xC1, 0xA4, bytes.fromhex("830180"))


def external_challenge(transmit: Transmit) -> bytes:
    """Ask the card for a challenge to answer with the administrator key."""
    send(transmit, SELECT_ADMIN_KEY, "select the administrator key")
    template = encode_tlv(0x7C, encode_tlv(0x81, b""))
    answer = send(transmit, CommandApdu(0x00, 0x87, 0, 0, template, 256), "challenge")
    return parse_tlv(parse_tlv(answer, 0x7C).value, 0x81).value


def external_response(key: bytes, challenge: bytes) -> bytes:
    """The answer to an external-authentication challenge: its encryption under the key."""
    if len(challenge) != admin_block_size(key):
        raise ValueError(f"a challenge for this key has {admin_block_size(key)} bytes")
    return admin_encrypt(key, challenge)


def answer_challenge(transmit: Transmit, response: bytes) -> None:
    template = encode_tlv(0x7C, encode_tlv(0x82, response))
    send(transmit, CommandApdu(0x00, 0x87, 0, 0, template), "administrator answer")


@dataclass(frozen=True, slots=True)
class MutualResult:
    """Whether the card proved it holds the key too."""

    card_proved: bool


def authenticate_mutual(transmit: Transmit, key: bytes) -> MutualResult:
    """The minidriver's mutual authentication (what gids-tool ``-U``/``-C`` do)."""
    send(transmit, SELECT_ADMIN_KEY, "select the administrator key")
    host = secrets.token_bytes(16)
    template = encode_tlv(0x7C, encode_tlv(0x81, host))
    answer = send(transmit, CommandApdu(0x00, 0x87, 0, 0, template, 256), "mutual step 1")
    card = parse_tlv(parse_tlv(answer, 0x7C).value, 0x81).value
    z1 = secrets.token_bytes(admin_block_size(key) - 1) + b"\x80"
    proof = encode_tlv(0x7C, encode_tlv(0x82, admin_encrypt(key, card + host + z1)))
    answer = send(transmit, CommandApdu(0x00, 0x87, 0, 0, proof, 256), "mutual step 2")
    plain = admin_decrypt(key, parse_tlv(parse_tlv(answer, 0x7C).value, 0x82).value)
    return MutualResult(plain[:32] == host + card and plain[-1] == 0x80)
