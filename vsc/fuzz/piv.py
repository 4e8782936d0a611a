"""The default fuzz target: a PIV card (with the echo applet), and its usability probe.

:func:`piv_card` builds a fresh card for every input; :func:`piv_probe` runs
after each input and fails unless the card still answers like a PIV card and
the power cycle cleared its security state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from applets.echo import EchoApplet
from applets.piv import YUBIKEY_5_7, PivApplet
from applets.piv.mgmt import ManagementKey, ManagementKeyType

from ..card import Card
from .inputs import DEFAULT_MANAGEMENT_KEY, DEFAULT_PIN, DEFAULT_PUK, ECHO_AID, PIV_AID, StepKind
from .law import ProbeFailed

if TYPE_CHECKING:
    from .harness import Run

__all__ = ["FUZZ_SERIAL", "management_cipher", "piv_card", "piv_probe"]

FUZZ_SERIAL = 13_572_468

APT = bytes.fromhex("61114F0600001000010079074F05A000000308")
DISCOVERY = bytes.fromhex("7E124F0BA0000003080000100001005F2F024000")
#: The widest profile: every instruction and algorithm a client can reach.
PROFILE = YUBIKEY_5_7
PIV_VERSION = bytes(PROFILE.version or ())

Transmit = Callable[[bytes], bytes]


def piv_card() -> Card:
    """The fuzz target: PIV (default) and echo, a fixed serial, keys in memory.

    A YubiKey 5.7 whose management key is the factory key as 3DES (as older
    YubiKeys ship it; the seeds authenticate with 3DES); after a RESET it is
    the 5.7 factory key, AES-192.
    """
    applet = PivApplet(serial=FUZZ_SERIAL, profile=PROFILE)
    applet.data.set_management_key(ManagementKey(ManagementKeyType.TDES, DEFAULT_MANAGEMENT_KEY))
    card = Card()
    card.register(applet, default=True)
    card.register(EchoApplet())
    return card


def management_cipher(alg: int, key: bytes, block: bytes, *, decrypt: bool = False) -> bytes:
    """One block of a management-key algorithm (03: 3DES, 08/0A/0C: AES), ECB."""
    cipher = Cipher(TripleDES(key) if alg == 0x03 else algorithms.AES(key), modes.ECB())
    op = cipher.decryptor() if decrypt else cipher.encryptor()
    return op.update(block) + op.finalize()


def _tlvs(data: bytes) -> dict[int, bytes]:
    """Single-byte-tag TLVs with short lengths (GET METADATA answers)."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 2 <= len(data):
        tag, length = data[pos], data[pos + 1]
        if length >= 0x80:
            n = length & 0x7F
            length = int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
            pos += n
        out[tag] = data[pos + 2 : pos + 2 + length]
        pos += 2 + length
    return out


def _expect(send: Transmit, command: str | bytes, want: bytes | int, what: str) -> bytes:
    cmd = bytes.fromhex(command) if isinstance(command, str) else command
    resp = send(cmd)
    if isinstance(want, int):
        if int.from_bytes(resp[-2:], "big") != want:
            raise ProbeFailed(f"{what}: {resp.hex().upper()} (wanted SW {want:04X})")
    elif resp != want:
        raise ProbeFailed(f"{what}: {resp.hex().upper()} (wanted {want.hex().upper()})")
    return resp[:-2]


def piv_probe(run: Run) -> None:
    """Is the PIV+echo card still usable after whatever happened? Raises ProbeFailed.

    After a power cycle: the ATR; SELECT PIV answers the exact APT; GET
    VERSION and the discovery object are exact; the PIN is not verified
    (``63Cx`` matching GET METADATA's counter, or ``6983`` at 0) and PUT DATA
    is ``6982``: the power cycle cleared the security state. Then the
    secrets: a factory management key must authenticate (the card's answer
    is checked with our own cipher) and let a written object read back; a
    blocked PIN and PUK must allow RESET; a default PUK must unblock; a
    default, unblocked PIN must verify. Last the engine paths: the echo
    applet, chaining, 61xx/GET RESPONSE and a logical channel.
    """
    run.power(StepKind.POWER_OFF)
    run.power(StepKind.POWER_ON)
    send = run.transmit
    select = bytes.fromhex("00A404000B") + PIV_AID
    _expect(send, select, APT + b"\x90\x00", "SELECT PIV")
    _expect(send, "00FD000000", PIV_VERSION + b"\x90\x00", "GET VERSION")
    _expect(send, "00CB3FFF035C017E00", DISCOVERY + b"\x90\x00", "GET DATA discovery")
    _expect(send, "00F8000000", FUZZ_SERIAL.to_bytes(4, "big") + b"\x90\x00", "GET SERIAL")
    pin = _tlvs(_expect(send, "00F7008000", 0x9000, "GET METADATA PIN"))
    puk = _tlvs(_expect(send, "00F7008100", 0x9000, "GET METADATA PUK"))
    if len(pin.get(6, b"")) != 2 or len(puk.get(6, b"")) != 2:
        raise ProbeFailed(f"PIN/PUK metadata without retries: {pin} {puk}")
    left = pin[6][1]
    status = 0x6983 if left == 0 else 0x63C0 | min(left, 15)
    _expect(send, "0020008000", status, "VERIFY status after power cycle")
    put = bytes.fromhex("00DB3FFF0A5C035FFF10530301020300")
    _expect(send, put, 0x6982, "PUT DATA without the management key")
    _probe_management_key(send, put)
    if left == 0 and puk[6][1] == 0:
        _expect(send, "00FB0000", 0x9000, "RESET with PIN and PUK blocked")
        pin = {5: b"\x01", 6: b"\x03\x03"}
    elif left == 0 and puk.get(5) == b"\x01" and puk[6][1] > 0:
        unblock = bytes.fromhex("002C008010") + DEFAULT_PUK + DEFAULT_PIN
        _expect(send, unblock, 0x9000, "RESET RETRY COUNTER with the factory PUK")
        pin = {5: b"\x01", 6: b"\x01\x01"}
    if pin.get(5) == b"\x01" and pin[6][1] > 0:
        _expect(send, bytes.fromhex("0020008008") + DEFAULT_PIN, 0x9000, "VERIFY factory PIN")
        _expect(send, "0020008000", 0x9000, "VERIFY status after VERIFY")
    _probe_engine(send)
    _expect(send, select, APT + b"\x90\x00", "SELECT PIV again")


def _probe_management_key(send: Transmit, put: bytes) -> None:
    meta = _tlvs(_expect(send, "00F7009B00", 0x9000, "GET METADATA 9B"))
    alg = meta.get(1, b"\x03")[0]
    if alg not in (0x03, 0x08, 0x0A, 0x0C):
        raise ProbeFailed(f"management key algorithm {alg:02X}")
    b = 8 if alg == 0x03 else 16
    witness_cmd = bytes((0, 0x87, alg, 0x9B, 4, 0x7C, 2, 0x80, 0))
    witness = _expect(send, witness_cmd, 0x9000, "GA 9B witness request")
    if witness[:4] != bytes((0x7C, b + 2, 0x80, b)) or len(witness) != b + 4:
        raise ProbeFailed(f"GA 9B witness {witness.hex().upper()}")
    if meta.get(5) != b"\x01":
        return
    key = DEFAULT_MANAGEMENT_KEY[: {0x08: 16, 0x0C: 32}.get(alg, 24)]
    if alg == 0x0C:
        return  # the factory bytes are 24 long: no AES-256 key can be "default"
    challenge = bytes(range(0xA0, 0xA0 + b))
    plain = management_cipher(alg, key, witness[4:], decrypt=True)
    body = bytes((0x7C, 2 * b + 4, 0x80, b)) + plain + bytes((0x81, b)) + challenge
    answer = _expect(send, bytes((0, 0x87, alg, 0x9B, len(body))) + body, 0x9000, "GA 9B")
    if answer != bytes((0x7C, b + 2, 0x82, b)) + management_cipher(alg, key, challenge):
        raise ProbeFailed(f"GA 9B answered {answer.hex().upper()}, not E(challenge)")
    _expect(send, put, 0x9000, "PUT DATA as administrator")
    _expect(send, "00CB3FFF055C035FFF1000", bytes.fromhex("5303010203 9000"), "GET DATA back")


def _probe_engine(send: Transmit) -> None:
    _expect(send, bytes.fromhex("00A4040006") + ECHO_AID, b"\x90\x00", "SELECT echo")
    _expect(send, "1001000003AABBCC", b"\x90\x00", "chained echo, first chunk")
    _expect(send, "0001000002DDEE00", bytes.fromhex("AABBCCDDEE9000"), "chained echo, last")
    pattern = bytes(range(256))
    _expect(send, "0002012C00", pattern + b"\x61\x2c", "long response")
    _expect(send, "00C0000000", pattern[:44] + b"\x90\x00", "GET RESPONSE")
    channel = _expect(send, "0070000001", 0x9000, "MANAGE CHANNEL open")
    if len(channel) != 1 or not 1 <= channel[0] <= 3:
        raise ProbeFailed(f"MANAGE CHANNEL opened {channel.hex()}")
    cla = channel[0]
    # Opened from channel 0, the new channel has the default applet: PIV.
    _expect(send, bytes((cla, 0xFD, 0, 0, 0)), PIV_VERSION + b"\x90\x00", "GET VERSION on channel")
    _expect(send, bytes((0, 0x70, 0x80, cla)), b"\x90\x00", "MANAGE CHANNEL close")
