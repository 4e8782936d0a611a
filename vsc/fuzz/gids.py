"""The GIDS fuzz target (``python -m vsc.fuzz --target gids``): card, macro, probe, seeds.

:func:`gids_card` is a factory-empty GIDS card (with the echo applet) for
every input, so inputs reach both life cycles: the seeds personalise it the
way gids-tool does, then use it as OpenSC's driver does. The AUTHENTICATE
macro (:func:`gids_authenticate`) answers the administrator challenge with a
key computed live, as the minidriver does; :func:`gids_probe` checks after
each input that a power cycle left a card that answers as GIDS, shows no
authenticated state and refuses what needs the PIN or the administrator.

The seeds are recorded from :mod:`applets.gids.host` flows against an
in-process card (:func:`gids_seeds`), so they are exactly what vsc's
personalisation sends; keys are P-256 except one RSA-1024 seed (RSA key
generation would dominate every input that replays it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from applets.echo import EchoApplet
from applets.gids import FCI, GIDS_AID, GIDS_ATR, GidsApplet
from applets.gids.crypto import admin_encrypt
from applets.gids.host import admin_key_do, external_response, initialize, key_file_fcp

from ..apdu import CommandApdu
from ..card import Card
from ..tlv import encode_tlv
from .inputs import ECHO_AID, FuzzInput, Step, StepKind
from .law import ProbeFailed

if TYPE_CHECKING:
    from .harness import Run

__all__ = ["GIDS_FUZZ_SERIAL", "gids_authenticate", "gids_card", "gids_probe", "gids_seeds"]

GIDS_FUZZ_SERIAL = 24_681_357
#: The PIN and administrator key the seeds personalise with.
FUZZ_PIN = b"12345678"
FUZZ_ADMIN_KEY = bytes(range(1, 9)) * 3

Transmit = Callable[[bytes], bytes]
_SELECT = bytes.fromhex("00A4040009") + GIDS_AID[:9] + b"\x00"
_MSE_ADMIN = bytes.fromhex("0022C1A403830180")


def gids_card() -> Card:
    """The fuzz target: an empty GIDS card (default) and echo, keys in memory."""
    applet = GidsApplet(serial=GIDS_FUZZ_SERIAL)
    card = Card(atr=GIDS_ATR)
    card.register(applet, default=True)
    card.register(EchoApplet())
    return card


def gids_authenticate(run: Run, data: bytes) -> None:
    """The macro: external authentication with the key in ``data`` (``CLA ALG KEY``;
    the seeds' key by default), the card's challenge encrypted live."""
    cla = data[0] & 0x03 if data else 0
    key = data[2:] if len(data) > 2 else FUZZ_ADMIN_KEY
    key = key[:32] if len(key) >= 32 else key[:24] if len(key) >= 24 else key[:16]
    if len(key) not in (16, 24, 32):
        key = FUZZ_ADMIN_KEY
    run.transmit(bytes((cla,)) + _MSE_ADMIN[1:])
    answer = run.transmit(bytes((cla, 0x87, 0, 0, 4, 0x7C, 2, 0x81, 0, 0)))
    challenge = answer[4:-2]
    header = bytes((0x7C, len(challenge) + 2, 0x81, len(challenge)))
    if answer[-2:] != b"\x90\x00" or len(challenge) not in (8, 16) or answer[:4] != header:
        return
    response = encode_tlv(0x7C, encode_tlv(0x82, admin_encrypt(key, challenge)))
    run.transmit(bytes((cla, 0x87, 0, 0, len(response))) + response)


def _expect(send: Transmit, command: bytes, want: int | bytes | set[int], what: str) -> bytes:
    resp = send(command)
    sw = int.from_bytes(resp[-2:], "big")
    if isinstance(want, bytes):
        ok = resp == want
    elif isinstance(want, set):
        ok = sw in want
    else:
        ok = sw == want
    if not ok:
        raise ProbeFailed(f"{what}: {resp.hex().upper()} (wanted {want!r})")
    return resp[:-2]


def gids_probe(run: Run) -> None:
    """Is the GIDS+echo card still usable and unauthenticated after a power cycle?

    The ATR and the FCI are exact; the PIN status object is absent (no PIN) or
    consistent, and VERIFY's status query does not say "verified"; an
    operational card refuses, without authentication, to write the card
    identifier, the administrator key or a container key and to unblock the
    PIN; a card still being personalised refuses GENERAL AUTHENTICATE. Then
    the engine paths: echo, chaining, GET RESPONSE, a logical channel.
    """
    run.power(StepKind.POWER_OFF)
    run.power(StepKind.POWER_ON)
    send = run.transmit
    _expect(send, _SELECT, FCI + b"\x90\x00", "SELECT GIDS")
    status = send(bytes.fromhex("00CB3FFF045C027F7100"))
    if status[-2:] == b"\x6a\x88":
        _expect(send, bytes.fromhex("00200080"), 0x6A88, "VERIFY status without a PIN")
    else:
        body = status[:-2]
        if status[-2:] != b"\x90\x00" or len(body) != 9 or body[:5] != bytes.fromhex("7F71069701"):
            raise ProbeFailed(f"PIN status {status.hex().upper()}")
        left, limit = body[5], body[8]
        if body[6:8] != b"\x93\x01" or left > limit:
            raise ProbeFailed(f"PIN status {status.hex().upper()}")
        want = 0x6983 if left == 0 else 0x63C0 | min(left, 15)
        _expect(send, bytes.fromhex("00200080"), want, "VERIFY status after a power cycle")
    operational = send(bytes.fromhex("0087000004 7C028100".replace(" ", "")))[-2:] != b"\x69\x86"
    if operational:
        refused = {0x6982, 0x6A82, 0x6A88, 0x6985}
        _expect(send, bytes.fromhex("00DBA01205DF2002AAAA"), refused, "PUT DATA cardid")
        _expect(send, _put_admin_key(), refused, "PUT DATA admin key")
        _expect(send, bytes.fromhex("002C0280 04 31323334".replace(" ", "")), 0x6982, "unblock")
        _expect(send, bytes.fromhex("0047000008AC06800106830181"), refused, "GENERATE")
    _probe_engine(send)
    _expect(send, _SELECT, FCI + b"\x90\x00", "SELECT GIDS again")


def _put_admin_key() -> bytes:
    return CommandApdu(0, 0xDB, 0x3F, 0xFF, admin_key_do(bytes(24))).encode()


def _probe_engine(send: Transmit) -> None:
    _expect(send, bytes.fromhex("00A4040006") + ECHO_AID, b"\x90\x00", "SELECT echo")
    _expect(send, bytes.fromhex("1001000003AABBCC"), b"\x90\x00", "chained echo, first chunk")
    _expect(send, bytes.fromhex("0001000002DDEE00"), bytes.fromhex("AABBCCDDEE9000"), "echo")
    pattern = bytes(range(256))
    _expect(send, bytes.fromhex("0002012C00"), pattern + b"\x61\x2c", "long response")
    _expect(send, bytes.fromhex("00C0000000"), pattern[:44] + b"\x90\x00", "GET RESPONSE")
    channel = _expect(send, bytes.fromhex("0070000001"), 0x9000, "MANAGE CHANNEL open")
    if len(channel) != 1 or not 1 <= channel[0] <= 3:
        raise ProbeFailed(f"MANAGE CHANNEL opened {channel.hex()}")
    cla = channel[0]
    _expect(send, bytes((cla,)) + _SELECT[1:], FCI + b"\x90\x00", "SELECT GIDS on a channel")
    _expect(send, bytes((0, 0x70, 0x80, cla)), b"\x90\x00", "MANAGE CHANNEL close")


# -- seeds -----------------------------------------------------------------------------------


class _Recorder:
    """Records what a host flow sends to an in-process card, with the answers' SWs."""

    def __init__(self) -> None:
        self.card = gids_card()
        self.steps: list[Step] = []

    def __call__(self, command: bytes) -> bytes:
        response = self.card.transmit(command)
        self.steps.append(Step(StepKind.APDU, command, int.from_bytes(response[-2:], "big")))
        return response

    def send(self, command: CommandApdu | str) -> bytes:
        raw = bytes.fromhex(command) if isinstance(command, str) else command.encode()
        return self(raw)

    def authenticate(self) -> None:
        self.steps.append(Step(StepKind.AUTHENTICATE, b"\x00\x00" + FUZZ_ADMIN_KEY, 0x9000))
        # Keep the recording card in step with what the macro does.
        self.card.transmit(_MSE_ADMIN)
        answer = self.card.transmit(bytes.fromhex("00870000047C02810000"))
        response = external_response(FUZZ_ADMIN_KEY, answer[4:-2])
        template = encode_tlv(0x7C, encode_tlv(0x82, response))
        self.card.transmit(CommandApdu(0, 0x87, 0, 0, template).encode())


def _personalised() -> _Recorder:
    recorder = _Recorder()
    initialize(recorder, pin=FUZZ_PIN, admin_key=FUZZ_ADMIN_KEY, cardid=bytes(range(16)))
    return recorder


def _container(recorder: _Recorder, ref: int, algorithm: int) -> None:
    recorder.send(CommandApdu(0, 0x20, 0, 0x80, FUZZ_PIN))
    fcp = key_file_fcp(ref, algorithm, decipher=algorithm < 0x0A)
    recorder.send(CommandApdu(0, 0xE0, 0, 0, fcp))
    recorder.send("00440000")
    generate = encode_tlv(0xAC, bytes((0x80, 1, algorithm, 0x83, 1, ref)))
    recorder.send(CommandApdu(0, 0x47, 0, 0, generate, 256))


def gids_seeds() -> dict[str, FuzzInput]:
    """Recorded host flows against a factory-empty card, by name, with their SWs."""
    seeds: dict[str, FuzzInput] = {}
    r = _Recorder()
    r.send(_SELECT.hex())
    r.send("00CBA000045C02DF1F00")  # gids-tool: "is it new?"
    r.send("00CB3FFF045C027F7100")
    seeds["factory-probe"] = tuple(r.steps)

    seeds["gids-tool-initialize"] = tuple(_personalised().steps)

    r = _personalised()
    r.send(CommandApdu(0, 0x24, 0x01, 0x81, b"87654321"))  # refused: operational, no admin
    _container(r, 0x81, 0x0C)
    r.send("002241B6068001 0C840181".replace(" ", ""))
    r.send(CommandApdu(0, 0x2A, 0x9E, 0x9A, bytes(range(32)), 256))
    r.send("00CB3FFF0A70088401 81A5037F498000".replace(" ", ""))
    r.send("00200082")
    r.send(CommandApdu(0, 0x2A, 0x9E, 0x9A, bytes(range(32)), 256))
    seeds["ecc-key-sign-logout"] = tuple(r.steps)

    r = _personalised()
    _container(r, 0x81, 0x06)
    r.send("002241B8068001468401 81".replace(" ", ""))
    r.send(CommandApdu(0, 0x2A, 0x80, 0x86, bytes(128), 256))
    r.send("002241B6068001568401 81".replace(" ", ""))
    r.send(CommandApdu(0, 0x2A, 0x9E, 0x9A, bytes(51), 256))
    seeds["rsa-key-decipher-sign"] = tuple(r.steps)

    r = _personalised()
    for _ in range(3):
        r.send(CommandApdu(0, 0x20, 0, 0x80, b"00000000"))
    r.authenticate()
    r.send(CommandApdu(0, 0x2C, 0x02, 0x80, b"24681357"))
    r.send(CommandApdu(0, 0x20, 0, 0x80, b"24681357"))
    r.send(CommandApdu(0, 0x24, 0x00, 0x80, b"24681357" + FUZZ_PIN))
    seeds["block-unblock-change"] = tuple(r.steps)

    r = _personalised()
    r.authenticate()
    r.send(CommandApdu(0, 0xDB, 0x3F, 0xFF, admin_key_do(bytes(range(16)))))
    r.send(CommandApdu(0, 0xDB, 0xA0, 0x12, encode_tlv(0xDF20, bytes(16))))
    r.send("00A4000C02B080")
    r.send("00E40000")
    seeds["admin-rekey-delete"] = tuple(r.steps)

    r = _personalised()
    r.send(CommandApdu(0, 0x20, 0, 0x80, FUZZ_PIN))
    r.send(CommandApdu(0x10, 0xDB, 0xA0, 0x10, bytes.fromhex("DF248201F4") + bytes(250)))
    r.send(CommandApdu(0, 0xDB, 0xA0, 0x10, bytes(250)))
    r.send(CommandApdu(0, 0xCB, 0xA0, 0x10, bytes.fromhex("5C02DF24"), 256))
    r.send("00C0000000")
    r.send(CommandApdu(0, 0xDB, 0xA0, 0x10, bytes.fromhex("DF2400")))
    r.send(CommandApdu(0, 0xDB, 0xA0, 0x10, bytes.fromhex("DF2400")))
    seeds["certificate-object"] = tuple(r.steps)
    return seeds
