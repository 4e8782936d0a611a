"""The PIV applet through raw APDUs (``Card.transmit``), byte for byte.

Expected bytes and status words come from the reference in docs/piv.md (its
sections are named where it helps); cryptographic results are checked with
``cryptography``, never with the applet's own helpers.
"""

from __future__ import annotations

import datetime
import hmac
import itertools
import secrets
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from applets.echo import ECHO_AID, EchoApplet
from applets.piv import YUBIKEY_5_7, PivApplet, PivData, PivRecord
from applets.piv import state as piv_state
from applets.piv.mgmt import ManagementKey, ManagementKeyType
from vsc import Card
from vsc.apdu import CommandApdu
from vsc.inproc import CardConnection
from vsc.tlv import encode_tlv, parse_dict, parse_tlv
from vsc.trace import TRACE

DEFAULT_KEY = bytes(range(1, 9)) * 3
PIN = b"123456\xff\xff"
PUK = b"12345678"
APT = bytes.fromhex("61114F0600001000010079074F05A000000308")
DISCOVERY = bytes.fromhex("7E124F0BA0000003080000100001005F2F024000")
SERIAL = 12345678

OK = 0x9000
SECURITY = 0x6982
BLOCKED = 0x6983
CONDITIONS = 0x6985
INVALID_DATA = 0x6A80
NOT_SUPPORTED = 0x6A81
NOT_FOUND = 0x6A82
NO_SPACE = 0x6A84
BAD_P1P2 = 0x6A86
REF_NOT_FOUND = 0x6A88
BAD_INS = 0x6D00

KEY_SLOTS = [0x9A, 0x9C, 0x9D, 0x9E, *range(0x82, 0x96)]
# Every container of SP 800-73-4 Part 1 Table 3 (5FC101-5FC123) and Yubico's.
STORED_OBJECTS = [*range(0x5FC101, 0x5FC124), 0x5FFF00, 0x5FFF01, 0x5FFF10, 0x5FFFFF]
PIN_OBJECTS = {0x5FC103, 0x5FC108, 0x5FC109, 0x5FC121}  # a YubiKey's (5FC123: no PIN)


def pin_block(pin: str) -> bytes:
    return pin.encode().ljust(8, b"\xff")


def ecb(key: bytes, block: bytes, *, decrypt: bool = False) -> bytes:
    algorithm = TripleDES(key) if len(block) == 8 else algorithms.AES(key)
    cipher = Cipher(algorithm, modes.ECB())
    op = cipher.decryptor() if decrypt else cipher.encryptor()
    return op.update(block) + op.finalize()


class Piv:
    """A card with PIV as the default applet, and short-APDU helpers.

    By default a YubiKey 5.7 (every instruction and algorithm) whose management
    key is the factory key as 3DES, as an older YubiKey has it: the raw APDUs and
    vectors below are 3DES ones. Profile differences: tests/test_piv_profiles.py.
    """

    def __init__(self, applet: PivApplet | None = None) -> None:
        if applet is None:
            applet = PivApplet(serial=SERIAL, profile=YUBIKEY_5_7)
            applet.data.set_management_key(ManagementKey(ManagementKeyType.TDES, DEFAULT_KEY))
        self.applet = applet
        self.card = Card()
        self.card.register(self.applet, default=True)
        self.card.register(EchoApplet())
        self.conn = CardConnection(self.card)

    def raw(self, apdu: str | bytes) -> tuple[bytes, int]:
        """One APDU exactly as given (no chaining, no GET RESPONSE)."""
        data = bytes.fromhex(apdu) if isinstance(apdu, str) else apdu
        return self.conn.transmit(data)

    def send(
        self, ins: int, p1: int = 0, p2: int = 0, data: bytes = b"", le: int | None = None
    ) -> tuple[bytes, int]:
        """A short APDU, chained and with GET RESPONSE as clients do."""
        return self.conn.send(0x00, ins, p1, p2, data, le)

    def sw(self, ins: int, p1: int = 0, p2: int = 0, data: bytes = b"") -> int:
        return self.send(ins, p1, p2, data)[1]

    def ok(self, ins: int, p1: int = 0, p2: int = 0, data: bytes = b"") -> bytes:
        out, sw = self.send(ins, p1, p2, data)
        assert sw == OK, f"INS {ins:02X}: SW {sw:04X}"
        return out

    def verify(self, pin: bytes = PIN) -> int:
        return self.sw(0x20, 0x00, 0x80, pin)

    def authenticate(self, key: bytes = DEFAULT_KEY, alg: int = 0x03) -> None:
        """Mutual authentication as ykman does it."""
        size = 8 if alg == 0x03 else 16
        out = self.ok(0x87, alg, 0x9B, bytes.fromhex("7C028000"))
        witness = parse_tlv(parse_tlv(out, 0x7C).value, 0x80).value
        assert len(witness) == size
        challenge = bytes(range(size))
        plain = ecb(key, witness, decrypt=True)
        body = encode_tlv(0x80, plain) + encode_tlv(0x81, challenge)
        out = self.ok(0x87, alg, 0x9B, encode_tlv(0x7C, body))
        assert parse_tlv(parse_tlv(out, 0x7C).value, 0x82).value == ecb(key, challenge)

    def get_object(self, tag: int) -> tuple[bytes, int]:
        tag_bytes = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
        return self.send(0xCB, 0x3F, 0xFF, encode_tlv(0x5C, tag_bytes))

    def put_object(self, tag: int, value: bytes) -> int:
        tag_bytes = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
        return self.sw(0xDB, 0x3F, 0xFF, encode_tlv(0x5C, tag_bytes) + encode_tlv(0x53, value))

    def generate(self, slot: int, alg: int, pin: int = 0, touch: int = 0) -> bytes:
        body = encode_tlv(0x80, bytes((alg,)))
        if pin:
            body += encode_tlv(0xAA, bytes((pin,)))
        if touch:
            body += encode_tlv(0xAB, bytes((touch,)))
        return self.ok(0x47, 0x00, slot, encode_tlv(0xAC, body))

    def metadata(self, ref: int) -> dict[int, bytes]:
        return parse_dict(self.ok(0xF7, 0x00, ref))

    def ga(self, alg: int, slot: int, tag: int, payload: bytes) -> tuple[bytes, int]:
        body = encode_tlv(0x82, b"") + encode_tlv(tag, payload)
        out, sw = self.send(0x87, alg, slot, encode_tlv(0x7C, body))
        if sw != OK:
            return out, sw
        return parse_tlv(parse_tlv(out, 0x7C).value, 0x82).value, sw


@pytest.fixture
def piv() -> Piv:
    return Piv()


@pytest.fixture
def admin(piv: Piv) -> Piv:
    piv.authenticate()
    return piv


@pytest.fixture
def fixed_random(monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes], None]:
    """Make the card's next random values the given bytes (cut to the size asked)."""
    values: list[bytes] = []
    real_token_bytes = secrets.token_bytes

    def token_bytes(n: int | None = None) -> bytes:
        if not values:
            return real_token_bytes(n)
        value = values.pop(0)
        assert len(value) == n
        return value

    monkeypatch.setattr(secrets, "token_bytes", token_bytes)
    return values.append


def recorder(touched: list[int]) -> Callable[[int], bool]:
    """A touch hook that approves and remembers the slots it was asked about."""

    def touch(slot: int) -> bool:
        touched.append(slot)
        return True

    return touch


def public_key(template: bytes) -> dict[int, bytes]:
    return parse_dict(parse_tlv(template, 0x7F49).value)


# -- SELECT, version, serial ------------------------------------------------------------


@pytest.mark.parametrize(
    "aid", ["A000000308", "A00000030800001000", "A000000308000010000100"], ids=len
)
def test_select_answers_the_yubikey_apt(piv: Piv, aid: str) -> None:
    """Any prefix of ≥ 5 bytes; exactly the YubiKey's 19-byte APT ("Commands", SELECT)."""
    assert piv.raw("00A40400" + f"{len(aid) // 2:02X}" + aid + "00") == (APT, OK)
    assert piv.raw("00A40400" + f"{len(aid) // 2:02X}" + aid) == (APT, OK)


def test_select_rejects_short_prefix_and_other_aids_without_losing_state(piv: Piv) -> None:
    assert piv.verify() == OK
    assert piv.raw("00A4040004A0000003")[1] == NOT_FOUND
    assert piv.raw("00A4040007A0000005272001")[1] == NOT_FOUND
    assert piv.raw("00A404000CA00000030800001000010000")[1] == NOT_FOUND
    assert piv.raw("00200080") == (b"", OK)  # still verified, still selected


def test_piv_is_selected_after_power_up(piv: Piv) -> None:
    """PIV is the default application; OpenSC's first GET DATA works ("Choices", A.3)."""
    piv.card.power_off()
    assert piv.raw("00CB3FFF035C017E00") == (DISCOVERY, OK)


def test_version_and_serial(piv: Piv) -> None:
    assert piv.raw("00FD000000") == (bytes((5, 7, 1)), OK)
    assert piv.raw("00FD000003") == (bytes((5, 7, 1)), OK)
    assert piv.raw("00F8000000") == (bytes.fromhex("00BC614E"), OK)


def test_default_serial_is_random_but_fixed() -> None:
    a = Piv(PivApplet())
    b = Piv(PivApplet())
    serial = a.ok(0xF8)
    assert a.ok(0xF8) == serial and len(serial) == 4
    assert 10_000_000 <= int.from_bytes(serial, "big") < 100_000_000
    assert b.ok(0xF8) != serial  # 1 in 9e7 chance of a false failure


def test_unknown_instruction(piv: Piv) -> None:
    assert piv.raw("00E0000000")[1] == BAD_INS


def test_trace_masks_pins_and_protected_management_key(caplog: pytest.LogCaptureFixture) -> None:
    applet = PivApplet()
    applet.data.put_object(0x5FC109, bytes.fromhex("881A8918") + bytes(range(0x40, 0x58)))
    card = Card([applet])
    card.transmit(bytes.fromhex("00A4040005A000000308"))
    with caplog.at_level(TRACE, logger="vsc.apdu"):
        card.transmit(bytes.fromhex("0020008008") + pin_block("123456"))
        assert card.transmit(bytes.fromhex("00CB3FFF055C035FC10900"))[-2:] == b"\x90\x00"
        card.transmit(bytes.fromhex("00CB3FFF055C035FC10200"))
        card.transmit(bytes.fromhex("00FD000000"))
    text = caplog.text
    assert pin_block("123456").hex(" ").upper() not in text
    assert "00 20 00 80 <9 secret bytes>" in text
    assert "00 CB 3F FF 05 5C 03 5F C1 09 00" in text  # the name of 5FC109 is no secret...
    assert "< <30 secret bytes> 90 00" in text  # ... its value is
    assert "40 41 42" not in text
    assert "00 CB 3F FF 05 5C 03 5F C1 02 00" in text  # CHUID stays readable
    assert "00 FD 00 00 00" in text


# -- factory state ----------------------------------------------------------------------------


def test_factory_state(piv: Piv) -> None:
    for slot in KEY_SLOTS:
        assert piv.sw(0xF7, 0x00, slot) == REF_NOT_FOUND
    assert piv.metadata(0x80) == {0x01: b"\xff", 0x05: b"\x01", 0x06: b"\x03\x03"}
    assert piv.metadata(0x81) == {0x01: b"\xff", 0x05: b"\x01", 0x06: b"\x03\x03"}
    assert piv.ok(0xF7, 0x00, 0x9B) == bytes.fromhex("01010302020001050101")
    assert piv.verify() == OK
    for tag in STORED_OBJECTS:
        expected = OK if tag == 0x5FFF01 else NOT_FOUND
        assert piv.get_object(tag)[1] == expected, hex(tag)
    f9 = piv.metadata(0xF9)
    assert f9[0x03] == b"\x01"  # generated on the card


def test_attestation_certificate_is_in_5fff01_and_self_signed(piv: Piv) -> None:
    value, sw = piv.get_object(0x5FFF01)
    assert sw == OK
    fields = parse_dict(parse_tlv(value, 0x53).value)
    assert fields[0x71] == b"\x00" and fields[0xFE] == b""
    cert = x509.load_der_x509_certificate(fields[0x70])
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    f9 = parse_dict(piv.metadata(0xF9)[0x04])[0x86]
    assert cert.public_key() == ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), f9)


# -- GET DATA / PUT DATA ----------------------------------------------------------------------


def test_discovery_object_exact_and_with_opensc_probe(piv: Piv) -> None:
    assert piv.raw("00CB3FFF035C017E") == (DISCOVERY, OK)
    assert piv.raw("00CB3FFF035C017E08") == (DISCOVERY[:8], 0x610C)
    assert piv.raw("00C000000C") == (DISCOVERY[8:], OK)


def test_get_data_errors(piv: Piv) -> None:
    assert piv.raw("00CB3FFE055C035FC102")[1] == BAD_P1P2
    assert piv.raw("00CB3FFF055D035FC102")[1] == INVALID_DATA
    assert piv.raw("00CB3FFF065C045FC10201")[1] == INVALID_DATA
    assert piv.raw("00CB3FFF075C035FC1025300")[1] == INVALID_DATA  # trailing TLV
    assert piv.raw("00CB3FFF025C00")[1] == INVALID_DATA
    assert piv.raw("00CB3FFF055C035FC102") == (b"", NOT_FOUND)  # a fresh card has no CHUID
    assert piv.raw("00CB3FFF055C035FC201")[1] == NOT_FOUND  # not a PIV object
    assert piv.raw("00CB3FFF045C027F61")[1] == NOT_FOUND  # BIT group absent


def test_put_data_needs_the_management_key(piv: Piv) -> None:
    assert piv.put_object(0x5FC102, b"\x30\x00") == SECURITY
    piv.authenticate()
    assert piv.put_object(0x5FC102, b"\x30\x00") == OK


@pytest.mark.parametrize("tag", STORED_OBJECTS, ids=hex)
def test_every_container_round_trips_with_its_access_rule(admin: Piv, tag: int) -> None:
    value = bytes((tag & 0xFF,)) * 40
    assert admin.put_object(tag, value) == OK
    if tag in PIN_OBJECTS:
        assert admin.get_object(tag)[1] == SECURITY
        assert admin.verify() == OK
    assert admin.get_object(tag) == (encode_tlv(0x53, value), OK)
    assert admin.put_object(tag, b"") == OK  # 53 00 deletes
    assert admin.get_object(tag)[1] == NOT_FOUND


def test_absent_pin_protected_objects_answer_6a82_before_the_pin(admin: Piv) -> None:
    """A YubiKey says "absent" first (OpenSC flags YubiKeys "leaks file not found")."""
    for tag in sorted(PIN_OBJECTS):
        assert admin.get_object(tag)[1] == NOT_FOUND
    assert admin.put_object(0x5FC108, b"face") == OK
    assert admin.get_object(0x5FC108)[1] == SECURITY
    assert admin.verify() == OK
    assert admin.get_object(0x5FC108) == (encode_tlv(0x53, b"face"), OK)


def test_pin_protected_read_needs_pin_again_after_reset(admin: Piv) -> None:
    assert admin.put_object(0x5FC109, b"\x88\x00") == OK
    assert admin.verify() == OK
    assert admin.get_object(0x5FC109)[1] == OK
    admin.card.reset()
    assert admin.get_object(0x5FC109)[1] == SECURITY


def test_put_data_errors(admin: Piv) -> None:
    assert admin.sw(0xDB, 0x3F, 0xFE, bytes.fromhex("5C035FC1025300")) == BAD_P1P2
    assert admin.sw(0xDB, 0x3F, 0xFF, bytes.fromhex("5C035FC102")) == INVALID_DATA
    assert admin.sw(0xDB, 0x3F, 0xFF, bytes.fromhex("53005C035FC102")) == INVALID_DATA
    assert admin.sw(0xDB, 0x3F, 0xFF, bytes.fromhex("5C035FC1025305AA")) == INVALID_DATA
    assert admin.put_object(0x5E0000, b"\x01") == INVALID_DATA  # not a YubiKey object
    assert admin.put_object(0x600000, b"\x01") == INVALID_DATA
    assert admin.get_object(0x600000)[1] == INVALID_DATA
    assert admin.get_object(0x5E0000)[1] == INVALID_DATA
    assert admin.put_object(0x7E, DISCOVERY[2:]) == NOT_SUPPORTED
    assert admin.sw(0xDB, 0x3F, 0xFF, DISCOVERY) == NOT_SUPPORTED
    assert admin.raw("00CB3FFF035C017E") == (DISCOVERY, OK)


def test_bit_group_template_is_returned_in_its_own_template(admin: Piv) -> None:
    value = bytes.fromhex("0201010" + "1") + bytes(4)
    assert admin.put_object(0x7F61, value) == OK
    assert admin.get_object(0x7F61) == (encode_tlv(0x7F61, value), OK)
    assert admin.sw(0xDB, 0x3F, 0xFF, encode_tlv(0x7F61, b"\x02\x01\x00")) == OK
    assert admin.get_object(0x7F61) == (bytes.fromhex("7F6103020100"), OK)


def test_large_object_both_ways(admin: Piv) -> None:
    """3063 bytes in (13 chained chunks) and out (61xx / GET RESPONSE)."""
    value = bytes(i & 0xFF for i in range(3063))
    assert admin.put_object(0x5FC105, value) == OK
    out, sw = admin.get_object(0x5FC105)
    assert (out, sw) == (encode_tlv(0x53, value), OK)
    # The first short answer is 256 bytes and 61 00 (more than 255 left).
    first = admin.raw("00CB3FFF055C035FC10500")
    assert first == (out[:256], 0x6100)
    assert admin.put_object(0x5FC105, value + b"\x00") == NO_SPACE
    assert admin.get_object(0x5FC105)[0] == out  # unchanged


def test_every_object_fits_the_yubikey_buffer(admin: Piv) -> None:
    """3063 bytes per object (a 3072-byte buffer less the 5C/53 framing), any tag."""
    value = b"\xfa" * 3063
    assert admin.put_object(0x5FC108, value) == OK
    assert admin.put_object(0x5FC108, value + b"\x00") == NO_SPACE
    assert admin.put_object(0x5F0001, value + b"\x00") == NO_SPACE
    assert admin.verify() == OK
    assert admin.get_object(0x5FC108) == (encode_tlv(0x53, value), OK)


def test_extended_apdus_carry_a_whole_certificate(admin: Piv) -> None:
    value = b"\x70" * 3000
    data = encode_tlv(0x5C, b"\x5f\xc1\x0a") + encode_tlv(0x53, value)
    assert admin.raw(CommandApdu(0, 0xDB, 0x3F, 0xFF, data, extended=True).encode())[1] == OK
    get = CommandApdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC10A"), extended=True)
    assert admin.raw(get.encode()) == (encode_tlv(0x53, value), OK)


# -- VERIFY -----------------------------------------------------------------------------------


def test_verify_status_query_never_costs_a_try(piv: Piv) -> None:
    for _ in range(5):
        assert piv.raw("00200080")[1] == 0x63C3
        assert piv.raw("0020008000")[1] == 0x63C3  # lone P3 is Le, not Lc
    assert piv.metadata(0x80)[0x06] == b"\x03\x03"


def test_verify_counts_down_blocks_and_resets(piv: Piv) -> None:
    assert piv.verify(pin_block("654321")) == 0x63C2
    assert piv.verify(PIN) == OK
    assert piv.raw("00200080")[1] == OK
    assert piv.metadata(0x80)[0x06] == b"\x03\x03"  # restored after a correct PIN
    for left in (2, 1, 0):
        assert piv.verify(b"\xff" * 8) == 0x63C0 | left  # ykman reset blocks this way
    assert piv.raw("00200080")[1] == BLOCKED
    assert piv.verify(PIN) == BLOCKED  # no comparison once blocked
    assert piv.metadata(0x80)[0x06] == b"\x03\x00"


def test_wrong_pin_clears_pin_status(piv: Piv) -> None:
    assert piv.verify() == OK
    assert piv.verify(pin_block("000000")) == 0x63C2
    assert piv.raw("00200080")[1] == 0x63C2


def test_verify_p1_ff_clears_pin_status(piv: Piv) -> None:
    assert piv.verify() == OK
    assert piv.raw("0020FF8000") == (b"", OK)
    assert piv.raw("00200080")[1] == 0x63C3
    assert piv.raw("0020FF80") == (b"", OK)  # also when not verified


def test_verify_parameter_errors(piv: Piv) -> None:
    assert piv.sw(0x20, 0x01, 0x80, PIN) == BAD_P1P2
    assert piv.sw(0x20, 0x00, 0x81, PUK) == REF_NOT_FOUND
    assert piv.sw(0x20, 0x00, 0x00, PIN) == REF_NOT_FOUND  # global PIN
    assert piv.raw("0020009600")[1] == REF_NOT_FOUND  # ykman's Bio probe
    assert piv.sw(0x20, 0x00, 0x80, PIN[:7]) == INVALID_DATA
    assert piv.sw(0x20, 0x00, 0x80, PIN + b"\xff") == INVALID_DATA
    assert piv.metadata(0x80)[0x06] == b"\x03\x03"  # none of these cost a try


class RecordingStore:
    """A PivStore that remembers every committed record, optionally failing."""

    def __init__(self) -> None:
        self.records: list[PivRecord] = []
        self.fail_after: int | None = None

    def save(self, record: PivRecord) -> None:
        if self.fail_after is not None and len(self.records) >= self.fail_after:
            raise OSError("simulated power loss")
        self.records.append(record)


def test_retry_counter_is_committed_before_the_comparison() -> None:
    store = RecordingStore()
    piv = Piv(PivApplet(data=PivData(PivRecord.factory(SERIAL), store=store)))
    store.records.clear()  # the factory F9 certificate
    assert piv.verify(PIN) == OK
    assert [r.pin_tries.remaining for r in store.records] == [2, 3]
    store.records.clear()
    assert piv.verify(pin_block("999999")) == 0x63C2
    assert [r.pin_tries.remaining for r in store.records] == [2]
    # Power lost while restoring the counter after a correct PIN: the try is spent.
    store.fail_after = len(store.records) + 1
    assert piv.verify(PIN) == 0x6F00
    assert piv.applet.data.tries(piv_state.Reference.PIN).remaining == 1
    assert piv.raw("00200080")[1] == 0x63C1


def test_failed_commit_leaves_the_data_unchanged() -> None:
    store = RecordingStore()
    piv = Piv(PivApplet(data=PivData(PivRecord.factory(SERIAL), store=store)))
    store.fail_after = 0
    assert piv.verify(PIN) == 0x6F00  # the decrement could not be made durable
    assert piv.applet.data.tries(piv_state.Reference.PIN).remaining == 3
    assert piv.raw("00200080")[1] == 0x63C3  # and the PIN was not accepted


def test_pin_comparison_is_constant_time(piv: Piv, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare_digest = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert piv.verify(pin_block("000000")) == 0x63C2
    assert (PIN, pin_block("000000")) in calls


# -- CHANGE REFERENCE DATA and RESET RETRY COUNTER --------------------------------------------


def test_change_pin(piv: Piv) -> None:
    new = pin_block("87654321")
    assert piv.sw(0x24, 0x00, 0x80, PIN + new) == OK
    assert piv.raw("00200080")[1] == OK  # the PIN status becomes TRUE
    assert piv.metadata(0x80)[0x05] == b"\x00"
    assert piv.verify(PIN) == 0x63C2
    assert piv.verify(new) == OK


def test_change_pin_wrong_old_counts_and_clears_status(piv: Piv) -> None:
    assert piv.verify() == OK
    new = pin_block("111111")
    assert piv.sw(0x24, 0x00, 0x80, pin_block("222222") + new) == 0x63C2
    assert piv.raw("00200080")[1] == 0x63C2
    assert piv.sw(0x24, 0x00, 0x80, pin_block("222222") + new) == 0x63C1
    assert piv.sw(0x24, 0x00, 0x80, pin_block("222222") + new) == 0x63C0
    assert piv.sw(0x24, 0x00, 0x80, PIN + new) == BLOCKED


@pytest.mark.parametrize(
    "new",
    [
        pin_block("12345"),  # too short
        b"1234\xff678",  # padding in the middle
        b"\xff" * 8,  # empty
    ],
)
def test_change_pin_rejects_malformed_new_pin_after_checking_the_old(piv: Piv, new: bytes) -> None:
    assert piv.sw(0x24, 0x00, 0x80, PIN + new) == CONDITIONS  # a YubiKey's 6985
    assert piv.metadata(0x80)[0x06] == b"\x03\x03"  # old PIN was right: counter full
    assert piv.verify(PIN) == OK  # unchanged


def test_change_reference_parameter_errors(piv: Piv) -> None:
    assert piv.sw(0x24, 0x01, 0x80, PIN + PIN) == BAD_P1P2
    assert piv.sw(0x24, 0x00, 0x9B, PIN + PIN) == REF_NOT_FOUND
    assert piv.sw(0x24, 0x00, 0x80, PIN + PIN[:7]) == INVALID_DATA
    assert piv.metadata(0x80)[0x06] == b"\x03\x03"


def test_change_puk(piv: Piv) -> None:
    new = pin_block("abcdef")
    assert piv.sw(0x24, 0x00, 0x81, PUK + new) == OK
    assert piv.metadata(0x81)[0x05] == b"\x00"
    assert piv.sw(0x24, 0x00, 0x81, PUK + new) == 0x63C2
    assert piv.sw(0x24, 0x00, 0x81, new + PUK) == OK
    assert piv.metadata(0x81) == {0x01: b"\xff", 0x05: b"\x01", 0x06: b"\x03\x03"}
    assert piv.raw("00200080")[1] == 0x63C3  # a PUK change does not verify the PIN


def test_a_5_7_puk_takes_bytes_00_to_7f_only(piv: Piv) -> None:
    """Firmware 5.7 refuses PUK bytes above 7F (6985); the PUK stays as it was."""
    new = bytes.fromhex("8081829091a0")
    assert piv.sw(0x24, 0x00, 0x81, PUK + new.ljust(8, b"\xff")) == CONDITIONS
    assert piv.sw(0x24, 0x00, 0x81, PUK + bytes(range(1, 9))) == OK


def test_reset_retry_counter(piv: Piv) -> None:
    for _ in range(3):
        piv.verify(pin_block("000000"))
    assert piv.raw("00200080")[1] == BLOCKED
    new = pin_block("246810")
    assert piv.sw(0x2C, 0x00, 0x80, PUK + new) == OK
    assert piv.raw("00200080")[1] == 0x63C3  # counter back, status unchanged (FALSE)
    assert piv.verify(new) == OK


def test_reset_retry_counter_checks_puk_first(piv: Piv) -> None:
    """ykman's `piv reset` blocks the PUK with 16 bytes of FF and needs 63Cx."""
    ff = b"\xff" * 16
    assert [piv.sw(0x2C, 0x00, 0x80, ff) for _ in range(4)] == [0x63C2, 0x63C1, 0x63C0, BLOCKED]
    assert piv.sw(0x2C, 0x00, 0x80, PUK + PIN) == BLOCKED


def test_reset_retry_counter_errors(piv: Piv) -> None:
    assert piv.sw(0x2C, 0x00, 0x81, PUK + PIN) == REF_NOT_FOUND
    assert piv.sw(0x2C, 0x01, 0x80, PUK + PIN) == BAD_P1P2
    assert piv.sw(0x2C, 0x00, 0x80, PUK) == INVALID_DATA
    assert piv.sw(0x2C, 0x00, 0x80, PUK + pin_block("123")) == CONDITIONS
    assert piv.metadata(0x81)[0x06] == b"\x03\x03"
    assert piv.verify(PIN) == OK  # the PIN did not change


# -- management key ---------------------------------------------------------------------------


def test_mutual_authentication_vector(piv: Piv, fixed_random: Callable[[bytes], None]) -> None:
    fixed_random(bytes.fromhex("0011223344556677"))
    assert piv.raw("0087039B047C028000") == (bytes.fromhex("7C0A800826604D88E55BD3E7"), OK)
    step2 = "0087039B167C1480080011223344556677810888 99AABBCCDDEEFF".replace(" ", "")
    assert piv.raw(step2) == (bytes.fromhex("7C0A820883E96CD48A9D7151"), OK)
    assert piv.put_object(0x5FC102, b"\x01") == OK


def test_mutual_authentication_accepts_trailing_82_00(
    piv: Piv, fixed_random: Callable[[bytes], None]
) -> None:
    fixed_random(bytes.fromhex("0011223344556677"))
    piv.raw("0087039B047C028000")
    step2 = "0087039B187C168008001122334455667781088899AABBCCDDEEFF8200"
    assert piv.raw(step2) == (bytes.fromhex("7C0A820883E96CD48A9D7151"), OK)


def test_single_authentication_vector(piv: Piv, fixed_random: Callable[[bytes], None]) -> None:
    fixed_random(bytes.fromhex("D4BD9B1DA5D26CDA"))
    assert piv.raw("0087039B047C028100") == (bytes.fromhex("7C0A8108D4BD9B1DA5D26CDA"), OK)
    assert piv.raw("0087039B0C7C0A8208B5A85C0F0207FCF1") == (b"", OK)
    assert piv.put_object(0x5FC102, b"\x01") == OK


def test_single_authentication_wrong_response(
    piv: Piv, fixed_random: Callable[[bytes], None]
) -> None:
    fixed_random(bytes.fromhex("D4BD9B1DA5D26CDA"))
    piv.raw("0087039B047C028100")
    assert piv.raw("0087039B0C7C0A8208B5A85C0F0207FCF0")[1] == SECURITY
    assert piv.put_object(0x5FC102, b"\x01") == SECURITY


def test_wrong_witness_fails_and_clears_admin(piv: Piv) -> None:
    piv.authenticate()
    piv.raw("0087039B047C028000")
    wrong = encode_tlv(0x80, bytes(8)) + encode_tlv(0x81, bytes(8))
    assert piv.sw(0x87, 0x03, 0x9B, encode_tlv(0x7C, wrong)) == SECURITY
    assert piv.put_object(0x5FC102, b"\x01") == SECURITY


def test_challenge_is_forgotten_after_the_next_command(
    piv: Piv, fixed_random: Callable[[bytes], None]
) -> None:
    fixed_random(bytes.fromhex("0011223344556677"))
    piv.raw("0087039B047C028000")
    assert piv.raw("00FD000000")[1] == OK
    step2 = "0087039B167C14800800112233445566778108 8899AABBCCDDEEFF".replace(" ", "")
    assert piv.raw(step2)[1] == SECURITY


def test_challenge_is_single_use(piv: Piv, fixed_random: Callable[[bytes], None]) -> None:
    fixed_random(bytes.fromhex("D4BD9B1DA5D26CDA"))
    piv.raw("0087039B047C028100")
    assert piv.raw("0087039B0C7C0A8208B5A85C0F0207FCF1")[1] == OK
    assert piv.raw("0087039B0C7C0A8208B5A85C0F0207FCF1")[1] == SECURITY


def test_challenge_does_not_survive_reselect(
    piv: Piv, fixed_random: Callable[[bytes], None]
) -> None:
    fixed_random(bytes.fromhex("D4BD9B1DA5D26CDA"))
    piv.raw("0087039B047C028100")
    piv.raw("00A4040005A000000308")
    assert piv.raw("0087039B0C7C0A8208B5A85C0F0207FCF1")[1] == SECURITY


def test_management_authentication_errors(piv: Piv) -> None:
    assert piv.raw("0087089B047C028000")[1] == BAD_P1P2  # AES P1 for a 3DES key
    assert piv.raw("0087009B047C028000")[1] == BAD_P1P2  # P1 00 only for the RNG
    assert piv.raw("0087039B047C02AA00")[1] == INVALID_DATA
    assert piv.raw("0087039B037C0180")[1] == INVALID_DATA
    assert piv.raw("0087039B027C00")[1] == INVALID_DATA
    assert piv.raw("0087039B067C0480008100")[1] == INVALID_DATA


def test_opensc_random_numbers_via_9b(piv: Piv) -> None:
    """`00 87 00 9B 04 7C 02 81 00 00` → 8 random bytes ("Choices", A.2)."""
    first, sw = piv.raw("0087009B047C02810000")
    second, _ = piv.raw("0087009B047C02810000")
    assert sw == OK and first[:4] == bytes.fromhex("7C0A8108") and len(first) == 12
    assert first != second


@pytest.mark.parametrize(
    ("alg", "key", "witness", "encrypted"),
    [
        (0x08, bytes(range(16)), bytes(range(16)), "0A940BB5416EF045F1C39458C653EA5A"),
        (0x0A, DEFAULT_KEY, bytes(range(16)), "3F92E2FCE73F9D83187C140D035F7EDC"),
        (0x0C, bytes(range(32)), bytes(range(16)), "5A6E045708FB7196F02E553D02C3A692"),
    ],
    ids=["AES128", "AES192", "AES256"],
)
def test_aes_management_keys(
    admin: Piv,
    fixed_random: Callable[[bytes], None],
    alg: int,
    key: bytes,
    witness: bytes,
    encrypted: str,
) -> None:
    assert admin.sw(0xFF, 0xFF, 0xFF, bytes((alg, 0x9B, len(key))) + key) == OK
    assert admin.put_object(0x5FC102, b"\x01") == OK  # still authenticated
    meta = admin.metadata(0x9B)
    assert meta[0x01] == bytes((alg,)) and meta[0x02] == b"\x00\x01"
    assert meta[0x05] == (b"\x01" if key == DEFAULT_KEY else b"\x00")
    admin.card.reset()
    fixed_random(witness)
    out = admin.ok(0x87, alg, 0x9B, bytes.fromhex("7C028000"))
    assert out == bytes.fromhex("7C128010" + encrypted)
    admin.authenticate(key, alg)
    assert admin.put_object(0x5FC102, b"\x02") == OK
    assert admin.sw(0x87, 0x03, 0x9B, bytes.fromhex("7C028000")) == BAD_P1P2


def test_set_management_key_errors(piv: Piv) -> None:
    new = bytes(range(24))
    assert piv.sw(0xFF, 0xFF, 0xFF, b"\x03\x9b\x18" + new) == SECURITY
    piv.authenticate()
    assert piv.sw(0xFF, 0xFE, 0xFF, b"\x03\x9b\x18" + new) == BAD_P1P2
    assert piv.sw(0xFF, 0xFF, 0x00, b"\x03\x9b\x18" + new) == BAD_P1P2
    assert piv.sw(0xFF, 0xFF, 0xFF, b"\x03\x9b\x10" + new[:16]) == INVALID_DATA
    assert piv.sw(0xFF, 0xFF, 0xFF, b"\x09\x9b\x18" + new) == INVALID_DATA
    assert piv.sw(0xFF, 0xFF, 0xFF, b"\x03\x9a\x18" + new) == INVALID_DATA
    assert piv.sw(0xFF, 0xFF, 0xFF, b"\x03") == INVALID_DATA
    assert piv.metadata(0x9B)[0x05] == b"\x01"  # nothing changed


def test_set_management_key_3des_and_back(admin: Piv) -> None:
    new = bytes(range(24))
    assert admin.sw(0xFF, 0xFF, 0xFF, b"\x03\x9b\x18" + new) == OK
    assert admin.metadata(0x9B) == {0x01: b"\x03", 0x02: b"\x00\x01", 0x05: b"\x00"}
    admin.card.reset()
    with pytest.raises(AssertionError):
        admin.authenticate()
    admin.authenticate(new)
    assert admin.sw(0xFF, 0xFF, 0xFF, b"\x03\x9b\x18" + DEFAULT_KEY) == OK
    assert admin.metadata(0x9B)[0x05] == b"\x01"


@pytest.mark.parametrize(("p2", "policy"), [(0xFE, 0x02), (0xFD, 0x03)])
def test_management_key_touch(admin: Piv, p2: int, policy: int) -> None:
    assert admin.sw(0xFF, 0xFF, p2, b"\x03\x9b\x18" + DEFAULT_KEY) == OK
    assert admin.metadata(0x9B)[0x02] == bytes((0, policy))
    touched: list[int] = []
    admin.applet.touch = recorder(touched)
    admin.card.reset()
    admin.authenticate()
    assert touched == [0x9B]
    admin.applet.touch = lambda slot: False
    admin.card.reset()
    with pytest.raises(AssertionError):
        admin.authenticate()  # touch refused: 6982
    assert admin.put_object(0x5FC102, b"\x01") == SECURITY


# -- GENERATE ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "prefix", "length"),
    [
        (0x11, "7F49438641 04", 70),
        (0x14, "7F49638661 04", 102),
        (0xE0, "7F49228620", 37),
        (0xE1, "7F49228620", 37),
        (0x06, "7F498188818180", 140),
        (0x07, "7F4982010981820100", 270),
    ],
    ids=["P256", "P384", "Ed25519", "X25519", "RSA1024", "RSA2048"],
)
def test_generate_answers_minimal_7f49(admin: Piv, alg: int, prefix: str, length: int) -> None:
    out = admin.generate(0x9A, alg)
    assert out.startswith(bytes.fromhex(prefix.replace(" ", ""))), out[:10].hex()
    assert len(out) == length
    if alg in (0x06, 0x07):
        assert out.endswith(bytes.fromhex("8203010001"))
    meta = admin.metadata(0x9A)
    assert meta[0x01] == bytes((alg,)) and meta[0x03] == b"\x01"
    assert meta[0x04] == parse_tlv(out, 0x7F49).value


def test_generate_over_short_apdus_uses_get_response(admin: Piv) -> None:
    out, sw = admin.raw("0047009A08AC06800107AA0101")
    assert sw == 0x610E and len(out) == 256
    rest, sw = admin.raw("00C0000000")
    assert sw == OK and len(rest) == 14


def test_generate_errors(piv: Piv) -> None:
    ac = bytes.fromhex("AC03800111")
    assert piv.sw(0x47, 0x00, 0x9A, ac) == SECURITY
    piv.authenticate()
    assert piv.sw(0x47, 0x01, 0x9A, ac) == BAD_P1P2
    assert piv.sw(0x47, 0x00, 0x9B, ac) == BAD_P1P2
    assert piv.sw(0x47, 0x00, 0x81, ac) == BAD_P1P2
    assert piv.sw(0x47, 0x00, 0x9A, bytes.fromhex("AC03800199")) == INVALID_DATA
    assert piv.sw(0x47, 0x00, 0x9A, bytes.fromhex("AC00")) == INVALID_DATA
    assert piv.sw(0x47, 0x00, 0x9A, bytes.fromhex("AD03800111")) == INVALID_DATA
    assert piv.sw(0x47, 0x00, 0x9A, bytes.fromhex("AC06800111AA0104")) == INVALID_DATA
    assert piv.sw(0x47, 0x00, 0x9A, bytes.fromhex("AC06800111AA0105")) == INVALID_DATA
    assert piv.sw(0x47, 0x00, 0x9A, bytes.fromhex("AC06800111AB0104")) == INVALID_DATA
    assert piv.sw(0x47, 0x00, 0x9A, bytes.fromhex("AC06800111810111")) == INVALID_DATA
    assert piv.sw(0xF7, 0x00, 0x9A) == REF_NOT_FOUND  # nothing was generated


@pytest.mark.parametrize(
    ("slot", "pin"), [(0x9A, 2), (0x9C, 3), (0x9D, 2), (0x9E, 1), (0x82, 2), (0x95, 2)]
)
def test_default_pin_policies_are_resolved(admin: Piv, slot: int, pin: int) -> None:
    admin.generate(slot, 0x11)
    assert admin.metadata(slot)[0x02] == bytes((pin, 0x01))


def test_generate_in_every_slot_and_f9(admin: Piv) -> None:
    for slot in [*KEY_SLOTS, 0xF9]:
        admin.generate(slot, 0xE0)
    assert all(admin.metadata(slot)[0x01] == b"\xe0" for slot in KEY_SLOTS)


# -- GENERAL AUTHENTICATE with keys -----------------------------------------------------------


def ec_key(template: bytes, curve: ec.EllipticCurve) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, public_key(template)[0x86])


def rsa_key(template: bytes) -> rsa.RSAPublicKey:
    fields = public_key(template)
    n, e = (int.from_bytes(fields[t], "big") for t in (0x81, 0x82))
    return rsa.RSAPublicNumbers(e, n).public_key()


def pkcs1_sign_block(message: bytes, k: int) -> bytes:
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420")
    h = hashes.Hash(hashes.SHA256())
    h.update(message)
    t = digest_info + h.finalize()
    return b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t


def test_rsa_sign_and_decrypt(admin: Piv) -> None:
    key = rsa_key(admin.generate(0x9E, 0x07))  # 9E: PIN policy NEVER
    block = pkcs1_sign_block(b"hello", 256)
    signature, sw = admin.ga(0x07, 0x9E, 0x81, block)  # chained: 264 bytes of data
    assert sw == OK and len(signature) == 256
    key.verify(signature, b"hello", padding.PKCS1v15(), hashes.SHA256())
    ciphertext = key.encrypt(b"secret", padding.PKCS1v15())
    plain, sw = admin.ga(0x07, 0x9E, 0x81, ciphertext)
    assert sw == OK and len(plain) == 256
    assert plain[0:2] == b"\x00\x02" and plain.endswith(b"\x00secret")


def test_rsa_output_is_left_padded(admin: Piv) -> None:
    key = rsa_key(admin.generate(0x9E, 0x06))
    n = key.public_numbers().n
    # Find an input whose raw result has a leading zero byte: m = s^e for small s.
    s = 0x1234
    block = pow(s, 65537, n).to_bytes(128, "big")
    out, sw = admin.ga(0x06, 0x9E, 0x81, block)
    assert sw == OK and out == s.to_bytes(128, "big")


def test_rsa_input_errors(admin: Piv) -> None:
    key = rsa_key(admin.generate(0x9E, 0x06))
    n = key.public_numbers().n
    assert admin.ga(0x06, 0x9E, 0x81, n.to_bytes(128, "big"))[1] == INVALID_DATA
    assert admin.ga(0x06, 0x9E, 0x81, b"\x00" * 127)[1] == INVALID_DATA
    assert admin.ga(0x06, 0x9E, 0x85, b"\x04" * 65)[1] == INVALID_DATA


@pytest.mark.parametrize(
    ("alg", "curve", "hash_alg"),
    [(0x11, ec.SECP256R1(), hashes.SHA256()), (0x14, ec.SECP384R1(), hashes.SHA384())],
)
def test_ecdsa_and_ecdh(
    admin: Piv, alg: int, curve: ec.EllipticCurve, hash_alg: hashes.HashAlgorithm
) -> None:
    key = ec_key(admin.generate(0x9D, alg), curve)
    assert admin.verify() == OK
    h = hashes.Hash(hash_alg)
    h.update(b"message")
    digest = h.finalize()
    signature, sw = admin.ga(alg, 0x9D, 0x81, digest)
    assert sw == OK and signature[0] == 0x30
    key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hash_alg)))
    peer = ec.generate_private_key(curve)
    point = peer.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    secret, sw = admin.ga(alg, 0x9D, 0x85, point)
    assert sw == OK and secret == peer.exchange(ec.ECDH(), key)


def test_ecdsa_p384_with_a_sha256_hash(admin: Piv) -> None:
    """ykman sends a 32-byte value to a P-384 key; it is e as is."""
    key = ec_key(admin.generate(0x9E, 0x14), ec.SECP384R1())
    digest = bytes(range(32))
    signature, sw = admin.ga(0x14, 0x9E, 0x81, digest)
    assert sw == OK
    key.verify(signature, bytes(16) + digest, ec.ECDSA(utils.Prehashed(hashes.SHA384())))


def test_ed25519_and_x25519(admin: Piv) -> None:
    ed = ed25519.Ed25519PublicKey.from_public_bytes(public_key(admin.generate(0x9E, 0xE0))[0x86])
    message = bytes(range(256)) * 2  # the whole message, chained
    signature, sw = admin.ga(0xE0, 0x9E, 0x81, message)
    assert sw == OK and len(signature) == 64
    ed.verify(signature, message)
    assert admin.ga(0xE0, 0x9E, 0x85, bytes(32))[1] == INVALID_DATA

    xk = x25519.X25519PublicKey.from_public_bytes(public_key(admin.generate(0x9D, 0xE1))[0x86])
    peer = x25519.X25519PrivateKey.generate()
    raw = peer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert admin.verify() == OK
    secret, sw = admin.ga(0xE1, 0x9D, 0x85, raw)
    assert sw == OK and secret == peer.exchange(xk)
    assert admin.ga(0xE1, 0x9D, 0x81, b"x")[1] == INVALID_DATA


def test_general_authenticate_errors(admin: Piv) -> None:
    assert admin.ga(0x11, 0x9A, 0x81, bytes(32))[1] == INVALID_DATA  # empty slot
    admin.generate(0x9E, 0x11)
    assert admin.ga(0x14, 0x9E, 0x81, bytes(32))[1] == INVALID_DATA  # wrong algorithm
    assert admin.ga(0x11, 0x01, 0x81, bytes(32))[1] == BAD_P1P2
    assert admin.ga(0x11, 0xF9, 0x81, bytes(32))[1] == BAD_P1P2  # attestation key
    assert admin.sw(0x87, 0x11, 0x9E, bytes.fromhex("7C22812000")) == INVALID_DATA
    assert admin.sw(0x87, 0x11, 0x9E, bytes.fromhex("7D0482008100")) == INVALID_DATA
    assert admin.sw(0x87, 0x11, 0x9E, bytes.fromhex("7C0482018100")) == INVALID_DATA
    assert admin.sw(0x87, 0x11, 0x9E, bytes.fromhex("7C06820081008500")) == INVALID_DATA
    assert admin.sw(0x87, 0x11, 0x9E, bytes.fromhex("7C0482008000")) == INVALID_DATA
    assert admin.ga(0x11, 0x9E, 0x85, b"\x04" + bytes(64))[1] == INVALID_DATA  # not on curve


def test_pin_policy_once(admin: Piv) -> None:
    admin.generate(0x9A, 0x11)
    assert admin.ga(0x11, 0x9A, 0x81, bytes(32))[1] == SECURITY
    assert admin.verify() == OK
    assert admin.ga(0x11, 0x9A, 0x81, bytes(32))[1] == OK
    assert admin.ga(0x11, 0x9A, 0x81, bytes(32))[1] == OK
    admin.card.reset()
    assert admin.ga(0x11, 0x9A, 0x81, bytes(32))[1] == SECURITY


def test_pin_policy_always(admin: Piv) -> None:
    """PIN-always: VERIFY must immediately precede each use."""
    admin.generate(0x9C, 0x11)
    assert admin.ga(0x11, 0x9C, 0x81, bytes(32))[1] == SECURITY
    assert admin.verify() == OK
    assert admin.ga(0x11, 0x9C, 0x81, bytes(32))[1] == OK
    assert admin.ga(0x11, 0x9C, 0x81, bytes(32))[1] == SECURITY
    assert admin.verify() == OK
    assert admin.raw("00CB3FFF035C017E")[1] == OK
    assert admin.ga(0x11, 0x9C, 0x81, bytes(32))[1] == SECURITY
    assert admin.verify() == OK
    assert admin.raw("00E0000000")[1] == BAD_INS  # even an unknown INS disarms
    assert admin.ga(0x11, 0x9C, 0x81, bytes(32))[1] == SECURITY
    assert admin.verify() == OK
    assert admin.raw("00200080")[1] == OK  # another VERIFY keeps it armed
    assert admin.verify() == OK
    assert admin.ga(0x11, 0x9C, 0x81, bytes(32))[1] == OK


def test_pin_always_over_chained_rsa(admin: Piv) -> None:
    """pkcs11-tool's flow: VERIFY, then a chained GA."""
    key = rsa_key(admin.generate(0x9C, 0x07))
    assert admin.verify() == OK
    signature, sw = admin.ga(0x07, 0x9C, 0x81, pkcs1_sign_block(b"m", 256))
    assert sw == OK
    key.verify(signature, b"m", padding.PKCS1v15(), hashes.SHA256())


def test_pin_policy_never_and_explicit_policies(admin: Piv) -> None:
    admin.generate(0x9C, 0x11, pin=0x01)
    assert admin.metadata(0x9C)[0x02] == b"\x01\x01"
    assert admin.ga(0x11, 0x9C, 0x81, bytes(32))[1] == OK
    admin.generate(0x9E, 0x11, pin=0x03)
    assert admin.ga(0x11, 0x9E, 0x81, bytes(32))[1] == SECURITY


@pytest.mark.parametrize("pin_policy", [0x01, 0x02])
def test_touch_policy_always(admin: Piv, pin_policy: int) -> None:
    admin.generate(0x9A, 0x11, pin=pin_policy, touch=0x02)
    assert admin.metadata(0x9A)[0x02] == bytes((pin_policy, 0x02))
    assert admin.verify() == OK
    touched: list[int] = []
    admin.applet.touch = recorder(touched)
    assert admin.ga(0x11, 0x9A, 0x81, bytes(32))[1] == OK
    assert admin.ga(0x11, 0x9A, 0x81, bytes(32))[1] == OK
    assert touched == [0x9A, 0x9A]
    admin.applet.touch = lambda slot: False
    assert admin.ga(0x11, 0x9A, 0x81, bytes(32))[1] == SECURITY


def test_touch_policy_cached(admin: Piv) -> None:
    admin.generate(0x9E, 0x11, touch=0x03)
    now = [1000.0]
    touched: list[int] = []
    admin.applet.clock = lambda: now[0]
    admin.applet.touch = recorder(touched)
    assert admin.ga(0x11, 0x9E, 0x81, bytes(32))[1] == OK
    now[0] += 14.0
    assert admin.ga(0x11, 0x9E, 0x81, bytes(32))[1] == OK
    assert touched == [0x9E]
    now[0] += 2.0
    assert admin.ga(0x11, 0x9E, 0x81, bytes(32))[1] == OK
    assert touched == [0x9E, 0x9E]


def test_touch_not_asked_when_policy_never(admin: Piv) -> None:
    admin.generate(0x9E, 0x11)
    admin.applet.touch = lambda slot: False
    assert admin.ga(0x11, 0x9E, 0x81, bytes(32))[1] == OK


# -- IMPORT -----------------------------------------------------------------------------------


def import_data(private_key: object) -> tuple[int, bytes]:
    if isinstance(private_key, rsa.RSAPrivateKey):
        n = private_key.private_numbers()
        half = private_key.key_size // 16
        parts = (n.p, n.q, n.dmp1, n.dmq1, n.iqmp)
        alg = {1024: 0x06, 2048: 0x07}[private_key.key_size]
        return alg, b"".join(
            encode_tlv(i + 1, v.to_bytes(half, "big")) for i, v in enumerate(parts)
        )
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        size = private_key.curve.key_size // 8
        alg = 0x11 if size == 32 else 0x14
        return alg, encode_tlv(
            0x06, private_key.private_numbers().private_value.to_bytes(size, "big")
        )
    raw_format = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return 0xE0, encode_tlv(
            0x07, private_key.private_bytes(*raw_format, serialization.NoEncryption())
        )
    assert isinstance(private_key, x25519.X25519PrivateKey)
    return 0xE1, encode_tlv(
        0x08, private_key.private_bytes(*raw_format, serialization.NoEncryption())
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: rsa.generate_private_key(65537, 1024),
        lambda: rsa.generate_private_key(65537, 2048),
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate,
        x25519.X25519PrivateKey.generate,
    ],
    ids=["RSA1024", "RSA2048", "P256", "P384", "Ed25519", "X25519"],
)
def test_import_key(admin: Piv, make: Callable[[], object]) -> None:
    private_key = make()
    alg, data = import_data(private_key)
    data += bytes.fromhex("AA0101AB0101")  # PIN never, touch never
    assert admin.sw(0xFE, alg, 0x9A, data) == OK
    meta = admin.metadata(0x9A)
    assert meta[0x01] == bytes((alg,)) and meta[0x02] == b"\x01\x01" and meta[0x03] == b"\x02"
    assert hasattr(private_key, "public_key")
    pub = private_key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        k = pub.key_size // 8
        sig, sw = admin.ga(alg, 0x9A, 0x81, pkcs1_sign_block(b"i", k))
        assert sw == OK
        pub.verify(sig, b"i", padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        sig, sw = admin.ga(alg, 0x9A, 0x81, bytes(range(32)))
        assert sw == OK
        digest = bytes(range(32)).rjust(pub.curve.key_size // 8, b"\x00")
        hash_alg = hashes.SHA256() if pub.curve.key_size == 256 else hashes.SHA384()
        pub.verify(sig, digest, ec.ECDSA(utils.Prehashed(hash_alg)))
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        sig, sw = admin.ga(alg, 0x9A, 0x81, b"imported")
        assert sw == OK
        pub.verify(sig, b"imported")
    else:
        assert isinstance(private_key, x25519.X25519PrivateKey)
        peer = x25519.X25519PrivateKey.generate()
        raw = peer.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        secret, sw = admin.ga(alg, 0x9A, 0x85, raw)
        assert sw == OK and secret == private_key.exchange(peer.public_key())
    assert admin.sw(0xF9, 0x9A, 0x00) == INVALID_DATA  # imported keys are not attested


def test_import_errors(piv: Piv) -> None:
    alg, data = import_data(ec.generate_private_key(ec.SECP256R1()))
    assert piv.sw(0xFE, alg, 0x9A, data) == SECURITY
    piv.authenticate()
    assert piv.sw(0xFE, 0x42, 0x9A, data) == BAD_P1P2
    assert piv.sw(0xFE, alg, 0x9B, data) == BAD_P1P2
    assert piv.sw(0xFE, 0x07, 0x9A, data) == INVALID_DATA  # an EC scalar for RSA-2048
    assert piv.sw(0xFE, alg, 0x9A, data + bytes.fromhex("AA0109")) == INVALID_DATA
    assert piv.sw(0xFE, alg, 0x9A, data + bytes.fromhex("AA0102AA0102")) == INVALID_DATA
    assert piv.sw(0xFE, alg, 0x9A, encode_tlv(0x06, bytes(32))) == INVALID_DATA
    assert piv.sw(0xFE, alg, 0x9A, b"\x06") == INVALID_DATA
    assert piv.sw(0xF7, 0x00, 0x9A) == REF_NOT_FOUND


# -- GET METADATA -----------------------------------------------------------------------------


def test_metadata_of_a_generated_key_has_exact_tags(admin: Piv) -> None:
    out = admin.generate(0x9A, 0x11, touch=0x02)
    meta = admin.ok(0xF7, 0x00, 0x9A)
    assert meta == bytes.fromhex("010111 02020202 030101") + encode_tlv(
        0x04, parse_tlv(out, 0x7F49).value
    )


def test_metadata_errors(piv: Piv) -> None:
    assert piv.raw("00F7009600")[1] == REF_NOT_FOUND  # ykman's Bio probe
    assert piv.raw("00F7009A00")[1] == REF_NOT_FOUND
    assert piv.raw("00F7000100")[1] == REF_NOT_FOUND
    assert piv.raw("00F7019B00")[1] == BAD_P1P2


def test_rsa_metadata_needs_get_response(admin: Piv) -> None:
    admin.generate(0x9A, 0x07)
    out, sw = admin.raw("00F7009A00")
    assert sw >> 8 == 0x61 and len(out) == 256
    assert len(admin.metadata(0x9A)[0x04]) == 265


# -- SET PIN RETRIES (FA), RESET (FB) ---------------------------------------------------------


def test_set_pin_retries_needs_management_key_and_pin(piv: Piv) -> None:
    assert piv.sw(0xFA, 5, 4) == SECURITY
    piv.authenticate()
    assert piv.sw(0xFA, 5, 4) == SECURITY
    assert piv.verify() == OK
    piv.card.reset()
    assert piv.verify() == OK
    assert piv.sw(0xFA, 5, 4) == SECURITY


def test_set_pin_retries(admin: Piv) -> None:
    assert admin.sw(0x24, 0x00, 0x80, PIN + pin_block("999999")) == OK
    assert admin.sw(0xFA, 0, 4) == BAD_P1P2
    assert admin.sw(0xFA, 5, 4) == OK
    assert admin.metadata(0x80) == {0x01: b"\xff", 0x05: b"\x01", 0x06: b"\x05\x05"}
    assert admin.metadata(0x81) == {0x01: b"\xff", 0x05: b"\x01", 0x06: b"\x04\x04"}
    assert admin.raw("00200080")[1] == 0x63C5  # PIN status cleared, PIN back to 123456
    assert admin.put_object(0x5FC102, b"\x01") == OK  # management key status kept
    assert admin.verify() == OK


def test_set_pin_retries_shows_at_most_15_in_the_status_word(admin: Piv) -> None:
    assert admin.verify() == OK
    assert admin.sw(0xFA, 20, 20) == OK
    assert admin.raw("00200080")[1] == 0x63CF
    assert admin.verify(pin_block("000000")) == 0x63CF
    assert admin.metadata(0x80)[0x06] == bytes((20, 19))


def block_pin_and_puk(piv: Piv) -> None:
    while piv.verify(b"\xff" * 8) != BLOCKED:
        pass
    while piv.sw(0x2C, 0x00, 0x80, b"\xff" * 16) != BLOCKED:
        pass


def test_reset_needs_pin_and_puk_blocked(piv: Piv) -> None:
    assert piv.raw("00FB0000")[1] == CONDITIONS
    for _ in range(3):
        piv.verify(b"\xff" * 8)
    assert piv.raw("00FB0000")[1] == CONDITIONS
    assert piv.raw("00FB0001")[1] == BAD_P1P2


def test_reset(admin: Piv) -> None:
    f9_before = admin.metadata(0xF9)
    attestation_before = admin.get_object(0x5FFF01)
    admin.generate(0x9A, 0x11)
    admin.generate(0x85, 0xE0)
    for tag in (0x5FC102, 0x5FC105, 0x5FFF00, 0x5FC109):
        assert admin.put_object(tag, b"\x01\x02") == OK
    assert admin.sw(0xFF, 0xFF, 0xFF, b"\x08\x9b\x10" + bytes(16)) == OK
    assert admin.sw(0x24, 0x00, 0x81, PUK + pin_block("7654321")) == OK
    block_pin_and_puk(admin)
    assert admin.raw("00FB0000") == (b"", OK)
    assert admin.put_object(0x5FC102, b"\x01") == SECURITY  # admin status cleared
    assert admin.sw(0xF7, 0x00, 0x9A) == REF_NOT_FOUND
    assert admin.sw(0xF7, 0x00, 0x85) == REF_NOT_FOUND
    assert admin.metadata(0xF9) == f9_before  # the attestation key survives
    assert admin.get_object(0x5FFF01) == attestation_before
    # The 5.7 factory key: the same 24 bytes, as AES-192.
    assert admin.ok(0xF7, 0x00, 0x9B) == bytes.fromhex("01010A02020001050101")
    assert admin.metadata(0x80) == {0x01: b"\xff", 0x05: b"\x01", 0x06: b"\x03\x03"}
    assert admin.metadata(0x81) == {0x01: b"\xff", 0x05: b"\x01", 0x06: b"\x03\x03"}
    assert admin.verify() == OK
    for tag in (0x5FC102, 0x5FC105, 0x5FFF00, 0x5FC109):
        assert admin.get_object(tag)[1] == NOT_FOUND
    admin.authenticate(alg=0x0A)


def test_reset_clears_security_state_on_other_channels(admin: Piv) -> None:
    channel, sw = admin.raw("0070000000")
    assert sw == OK and channel == b"\x01"
    assert admin.raw("01200080" + "08" + PIN.hex())[1] == OK
    block_pin_and_puk(admin)
    assert admin.raw("00FB0000")[1] == OK
    assert admin.raw("01200080")[1] == 0x63C3
    assert admin.raw("01DB3FFF075C035FC1025300")[1] == SECURITY


# -- ATTEST -----------------------------------------------------------------------------------


def test_attest_a_generated_key(admin: Piv) -> None:
    pub = ec_key(admin.generate(0x9A, 0x11, pin=0x02, touch=0x03), ec.SECP256R1())
    statement, sw = admin.send(0xF9, 0x9A, 0x00)
    assert sw == OK and statement[0] == 0x30
    cert = x509.load_der_x509_certificate(statement)
    f9_value = parse_dict(parse_tlv(admin.get_object(0x5FFF01)[0], 0x53).value)[0x70]
    f9 = x509.load_der_x509_certificate(f9_value)
    cert.verify_directly_issued_by(f9)
    assert cert.public_key() == pub
    ext = {e.oid.dotted_string: e.value for e in cert.extensions}
    version = ext["1.3.6.1.4.1.41482.3.3"]
    policy = ext["1.3.6.1.4.1.41482.3.8"]
    assert isinstance(version, x509.UnrecognizedExtension) and version.value == b"\x05\x07\x01"
    assert isinstance(policy, x509.UnrecognizedExtension) and policy.value == b"\x02\x03"
    serial = ext["1.3.6.1.4.1.41482.3.7"]
    assert isinstance(serial, x509.UnrecognizedExtension)
    assert serial.value == bytes.fromhex("020400BC614E")


def test_attest_uses_the_certificate_in_5fff01_as_issuer(admin: Piv) -> None:
    """A user may replace the F9 certificate; statements then name its subject."""
    f9_value = parse_dict(parse_tlv(admin.get_object(0x5FFF01)[0], 0x53).value)[0x70]
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Replaced CA")])
    f9_pub = x509.load_der_x509_certificate(f9_value).public_key()
    now = datetime.datetime.now(datetime.UTC)
    replaced = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(f9_pub)
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    der = replaced.public_bytes(serialization.Encoding.DER)
    assert admin.put_object(0x5FFF01, encode_tlv(0x70, der) + bytes.fromhex("710100FE00")) == OK
    admin.generate(0x9C, 0x11)
    cert = x509.load_der_x509_certificate(admin.ok(0xF9, 0x9C, 0x00))
    assert cert.issuer == name
    cert.verify_directly_issued_by(replaced)


def test_attest_errors(piv: Piv) -> None:
    assert piv.raw("00F99A0000")[1] == REF_NOT_FOUND
    assert piv.raw("00F9F90000")[1] == BAD_P1P2
    assert piv.raw("00F99B0000")[1] == BAD_P1P2
    assert piv.raw("00F99A0100")[1] == BAD_P1P2


# -- MOVE and DELETE KEY ----------------------------------------------------------------------


def test_move_key(admin: Piv) -> None:
    out = admin.generate(0x9A, 0x11, pin=0x01, touch=0x02)
    meta = admin.metadata(0x9A)
    assert admin.raw("00F69C9A")[1] == OK
    assert admin.sw(0xF7, 0x00, 0x9A) == REF_NOT_FOUND
    assert admin.metadata(0x9C) == meta  # policies and origin travel with it
    assert admin.metadata(0x9C)[0x04] == parse_tlv(out, 0x7F49).value


def test_move_and_delete_errors(piv: Piv) -> None:
    assert piv.raw("00F69C9A")[1] == SECURITY
    piv.authenticate()
    assert piv.raw("00F69C9A")[1] == REF_NOT_FOUND  # empty source
    assert piv.raw("00F6FF9A")[1] == REF_NOT_FOUND
    piv.generate(0x9A, 0x11)
    piv.generate(0x9C, 0x11)
    assert piv.raw("00F69C9A")[1] == INVALID_DATA  # ykman: "DEST slot is not empty"
    assert piv.raw("00F69A9A")[1] == BAD_P1P2
    assert piv.raw("00F6F99A")[1] == BAD_P1P2
    assert piv.raw("00F69AF9")[1] == BAD_P1P2
    assert piv.raw("00F6FFF9")[1] == BAD_P1P2
    assert piv.raw("00F6819A")[1] == BAD_P1P2


def test_delete_key(admin: Piv) -> None:
    admin.generate(0x9D, 0x11)
    assert admin.raw("00F6FF9D")[1] == OK
    assert admin.sw(0xF7, 0x00, 0x9D) == REF_NOT_FOUND
    assert admin.raw("00F6FF9D")[1] == REF_NOT_FOUND


# -- volatile state ---------------------------------------------------------------------------


def test_power_cycle_and_reset_clear_security_state(piv: Piv) -> None:
    for drop in (piv.card.reset, piv.card.power_off):
        piv.authenticate()
        assert piv.verify() == OK
        drop()
        assert piv.raw("00200080")[1] == 0x63C3
        assert piv.put_object(0x5FC102, b"\x01") == SECURITY


def test_selecting_another_applet_clears_security_state(piv: Piv) -> None:
    piv.authenticate()
    assert piv.verify() == OK
    assert piv.raw(bytes.fromhex("00A4040006") + ECHO_AID)[1] == OK
    assert piv.raw("00A4040005A000000308")[1] == OK
    assert piv.raw("00200080")[1] == 0x63C3
    assert piv.put_object(0x5FC102, b"\x01") == SECURITY


def test_reselecting_piv_keeps_security_state(piv: Piv) -> None:
    piv.authenticate()
    assert piv.verify() == OK
    assert piv.raw("00A4040005A000000308")[1] == OK
    assert piv.raw("00200080")[1] == OK
    assert piv.put_object(0x5FC102, b"\x01") == OK


def test_channels_have_separate_security_state(piv: Piv) -> None:
    assert piv.raw("0070000000") == (b"\x01", OK)
    assert piv.verify() == OK
    assert piv.raw("01200080")[1] == 0x63C3
    assert piv.raw("01A4040005A000000308") == (APT, OK)


# -- persistent data object --------------------------------------------------------------


def test_record_json_round_trip(admin: Piv) -> None:
    assert admin.put_object(0x5FC102, b"\x30\x01\x02") == OK
    assert admin.sw(0xFF, 0xFF, 0xFE, b"\x0c\x9b\x20" + bytes(32)) == OK
    assert admin.sw(0x24, 0x00, 0x80, PIN + pin_block("555555")) == OK
    record = admin.applet.data.record
    assert PivRecord.from_json(record.to_json()) == record
    assert repr(pin_block("555555")) not in repr(record)  # no secrets in a repr
    assert "key=b" not in repr(record)
    with pytest.raises(ValueError):
        PivRecord.from_json('{"serial": 1}')


def test_applet_on_existing_data_keeps_it(admin: Piv) -> None:
    assert admin.put_object(0x5FC102, b"\x30") == OK
    again = Piv(PivApplet(admin.applet.keys, data=admin.applet.data))
    assert again.get_object(0x5FC102) == (bytes.fromhex("530130"), OK)
    assert again.ok(0xF8) == SERIAL.to_bytes(4, "big")
    with pytest.raises(ValueError):
        PivApplet(admin.applet.keys, data=admin.applet.data, serial=SERIAL + 1)


def test_existing_key_store_brings_its_attestation_certificate(admin: Piv) -> None:
    keys = admin.applet.keys
    f9 = keys.get(0xF9)
    again = Piv(PivApplet(keys, serial=SERIAL))
    assert again.applet.keys.get(0xF9) == f9  # no new attestation key
    assert again.get_object(0x5FFF01) == admin.get_object(0x5FFF01)


# -- robustness ---------------------------------------------------------------------------


def _iter_ins() -> Iterator[int]:
    return itertools.chain(PivApplet.commands, (0xC0, 0xA4))


def _fuzz_card() -> Piv:
    piv = Piv()
    piv.authenticate()
    piv.generate(0x9A, 0x11)
    piv.generate(0x9E, 0xE1)
    assert piv.verify() == OK
    return piv


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ins=st.sampled_from(sorted(set(_iter_ins()))),
    p1=st.sampled_from([0x00, 0x03, 0x11, 0x3F, 0x80, 0x9A, 0x9B, 0xE0, 0xF9, 0xFF]),
    p2=st.sampled_from([0x00, 0x80, 0x81, 0x96, 0x9A, 0x9B, 0x9C, 0x9E, 0xF9, 0xFF]),
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(
            encode_tlv,
            st.sampled_from([0x7C, 0xAC, 0x5C, 0x53, 0x9B, 0x7F61]),
            st.binary(max_size=80),
        ),
    ),
)
def test_no_command_makes_the_applet_fail(ins: int, p1: int, p2: int, data: bytes) -> None:
    """Whatever arrives, the answer is a PIV status word, never 6F00."""
    piv = _fuzz_card()
    _, sw = piv.send(ins, p1, p2, data)
    assert sw != 0x6F00, f"{ins:02X} {p1:02X} {p2:02X} {data.hex()}"
    _, sw = piv.send(ins, p1, p2, encode_tlv(0x7C, data))
    assert sw != 0x6F00, f"{ins:02X} {p1:02X} {p2:02X} 7C {data.hex()}"
