"""The link's wire format (protocol version 2), pinned byte for byte.

The vectors below were written down from the codec as it stood when version 2
shipped; a peer of that version sends and expects exactly these bytes. The
hex is grouped by field: frame length, type byte, then each field (a length
prefix apart from its data). If one of these tests fails, the wire format
changed: that needs a new protocol version, not a new vector.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsc.share.protocol import (
    ATR_MAX,
    INSTANCE_SIZE,
    MAC_SIZE,
    MAX_APDU,
    MAX_FRAME,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Atr,
    Attach,
    Attached,
    CardInserted,
    CardRemoved,
    Detach,
    Detached,
    End,
    EndReason,
    Error,
    ErrorCode,
    Hello,
    ListReaders,
    LocalProtocolError,
    Message,
    MessageType,
    Ok,
    PairChallenge,
    Paired,
    PairProof,
    PairRequest,
    Ping,
    PowerOff,
    PowerOn,
    ReaderInfo,
    Readers,
    ReaderState,
    RemoteProtocolError,
    Reset,
    Response,
    ShareMode,
    Transmit,
    Welcome,
    decode,
    encode,
)

INSTANCE = bytes(range(16))
NONCE = bytes(range(32))
MAC = bytes(range(32, 64))
NONCE_HEX = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"
MAC_HEX = "202122232425262728292A2B2C2D2E2F303132333435363738393A3B3C3D3E3F"

VECTORS: list[tuple[Message, str]] = [
    (
        Hello("alice@host:3", INSTANCE),
        "00000020 01 02 000C 616C69636540686F73743A33 " + INSTANCE.hex(),
    ),
    (Hello("", bytes(16), version=255), "00000014 01 FF 0000 00000000000000000000000000000000"),
    (ListReaders(), "00000001 02"),
    (Attach("Reader 1"), "0000000C 03 0008 5265616465722031 01"),
    (Attach("Reader 1", ShareMode.SHARED), "0000000C 03 0008 5265616465722031 02"),
    (Detach(), "00000005 04 0000 0000"),
    (Detach("Reader 2", "bob"), "00000010 04 0008 5265616465722032 0003 626F62"),
    (End(), "00000002 05 01"),
    (End(EndReason.LOGOUT), "00000002 05 02"),
    (PowerOn(), "00000001 06"),
    (PowerOff(), "00000001 07"),
    (Reset(), "00000001 08"),
    (Transmit(bytes.fromhex("00A4040005A000000308")), "0000000F 09 0000000A 00A4040005A000000308"),
    (Transmit(b"\x00"), "00000006 09 00000001 00"),
    (Ping(), "00000001 0A"),
    (
        PairRequest(b"\x30\x82", NONCE, "laptop"),
        f"0000002D 10 0002 3082 {NONCE_HEX} 0006 6C6170746F70",
    ),
    (PairRequest(b"\x30", NONCE), f"00000026 10 0001 30 {NONCE_HEX} 0000"),
    (PairProof(MAC), f"00000021 11 {MAC_HEX}"),
    (Welcome("laptop"), "0000000A 81 02 0006 6C6170746F70"),
    (Welcome("", version=1), "00000004 81 01 0000"),
    (Readers(), "00000003 82 0000"),
    (
        Readers(
            (
                ReaderInfo("Reader 1", "Virtual PCD 00 00", ReaderState.SHARED, "alice"),
                ReaderInfo("R", "P", ReaderState.UNAVAILABLE),
            )
        ),
        "00000031 82 0002"
        " 0008 5265616465722031 0011 5669727475616C20504344203030203030 02 0005 616C696365"
        " 0001 52 0001 50 03 0000",
    ),
    (Attached(), "00000005 83 0000 0000"),
    (
        Attached(bytes.fromhex("3B8D80"), "Reader 1"),
        "00000010 83 0003 3B8D80 0008 5265616465722031",
    ),
    (Ok(), "00000003 84 0000"),
    (Ok(0xFFFF), "00000003 84 FFFF"),
    (Atr(b"\x3b\x00"), "00000005 85 0002 3B00"),
    (Response(b"\x90\x00"), "00000007 86 00000002 9000"),
    (Response(b"\x01\x02\x61\x10"), "00000009 86 00000004 01026110"),
    (
        Error(ErrorCode.IN_USE, "Reader 1 is shared"),
        "00000016 87 04 0012 526561646572203120697320736861726564",
    ),
    (Error(ErrorCode.UNSUPPORTED_VERSION), "00000004 87 0B 0000"),
    (PairChallenge(NONCE, MAC, "ünï"), f"00000048 90 {NONCE_HEX} {MAC_HEX} 0005 C3BC6EC3AF"),
    (Paired(), "00000001 91"),
    (CardInserted(b"\x3b\x8d"), "00000005 A1 0002 3B8D"),
    (CardRemoved(), "00000001 A2"),
    (Detached(), "00000002 A3 01"),
    (Detached(EndReason.READER_GONE), "00000002 A3 06"),
]

IDS = [f"{i:02}-{type(m).__name__}" for i, (m, _) in enumerate(VECTORS)]


def payload(message: Message) -> bytes:
    """What follows the frame's length: the type byte and the body."""
    return encode(message)[4:]


def remote_error(frame: bytes) -> str:
    with pytest.raises(RemoteProtocolError) as caught:
        decode(frame)
    return str(caught.value)


def test_version_and_sizes() -> None:
    assert PROTOCOL_VERSION == 2
    assert (MAX_FRAME, MAX_APDU, ATR_MAX) == (0x20000, 65544, 33)
    assert (NONCE_SIZE, MAC_SIZE, INSTANCE_SIZE) == (32, 32, 16)


def test_the_vectors_cover_every_message_type() -> None:
    assert {type(m).TYPE for m, _ in VECTORS} == set(MessageType)


@pytest.mark.parametrize(("message", "wire"), VECTORS, ids=IDS)
def test_exact_encoding(message: Message, wire: str) -> None:
    assert encode(message) == bytes.fromhex(wire)


@pytest.mark.parametrize(("message", "wire"), VECTORS, ids=IDS)
def test_exact_decoding(message: Message, wire: str) -> None:
    decoded = decode(bytes.fromhex(wire)[4:])
    assert decoded == message
    assert type(decoded) is type(message)


def test_largest_apdus() -> None:
    apdu = bytes(i & 0xFF for i in range(MAX_APDU))
    assert encode(Transmit(apdu)) == bytes.fromhex("0001000D 09 00010008") + apdu
    assert encode(Response(apdu)) == bytes.fromhex("0001000D 86 00010008") + apdu
    assert decode(payload(Transmit(apdu))) == Transmit(apdu)


def test_largest_atrs() -> None:
    atr = bytes(range(1, ATR_MAX + 1))
    assert encode(Atr(atr)) == bytes.fromhex("00000024 85 0021") + atr
    assert encode(CardInserted(atr)) == bytes.fromhex("00000024 A1 0021") + atr
    assert encode(Attached(atr)) == bytes.fromhex("00000026 83 0021") + atr + b"\x00\x00"


def test_longest_string_and_certificate() -> None:
    name = "é" * 0x7FFF + "x"  # 0xFFFF bytes of UTF-8
    assert encode(Welcome(name))[:8] == bytes.fromhex("00010003 81 02 FFFF")
    cert = bytes(0xFFFF)
    wire = encode(PairRequest(cert, NONCE))
    assert wire[:7] == bytes.fromhex("00010024 10 FFFF")
    assert decode(wire[4:]) == PairRequest(cert, NONCE)


def test_unknown_codes_read_as_unknown() -> None:
    assert decode(bytes.fromhex("87 EE 0000")) == Error(ErrorCode.UNKNOWN)
    assert decode(bytes.fromhex("05 FF")) == End(EndReason.UNKNOWN)
    assert decode(bytes.fromhex("A3 77")) == Detached(EndReason.UNKNOWN)


# --- round trips ----------------------------------------------------------------------------

_text = st.text(max_size=40)
_end_reason = st.sampled_from(list(EndReason))
_reader_info = st.builds(
    ReaderInfo, _text, _text, st.sampled_from(list(ReaderState)), session=_text
)
_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, _text, st.binary(min_size=16, max_size=16), st.integers(0, 255)),
    st.just(ListReaders()),
    st.builds(Attach, _text, st.sampled_from(list(ShareMode))),
    st.builds(Detach, _text, _text),
    st.builds(End, _end_reason),
    st.sampled_from([PowerOn(), PowerOff(), Reset(), Ping(), Paired(), CardRemoved()]),
    st.builds(Transmit, st.binary(min_size=1, max_size=300)),
    st.builds(
        PairRequest, st.binary(min_size=1, max_size=80), st.binary(min_size=32, max_size=32), _text
    ),
    st.builds(PairProof, st.binary(min_size=32, max_size=32)),
    st.builds(Welcome, _text, st.integers(0, 255)),
    st.builds(Readers, st.lists(_reader_info, max_size=4).map(tuple)),
    st.builds(Attached, st.binary(max_size=ATR_MAX), _text),
    st.builds(Ok, st.integers(0, 0xFFFF)),
    st.builds(Atr, st.binary(min_size=1, max_size=ATR_MAX)),
    st.builds(Response, st.binary(min_size=2, max_size=300)),
    st.builds(Error, st.sampled_from(list(ErrorCode)), _text),
    st.builds(
        PairChallenge,
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=32, max_size=32),
        _text,
    ),
    st.builds(CardInserted, st.binary(min_size=1, max_size=ATR_MAX)),
    st.builds(Detached, _end_reason),
)


@given(_messages)
def test_any_message_round_trips(message: Message) -> None:
    wire = encode(message)
    assert int.from_bytes(wire[:4], "big") == len(wire) - 4
    assert wire[4] == message.TYPE
    assert decode(wire[4:]) == message


def _has_unknown_code(message: Message) -> bool:
    return any(
        getattr(message, name, None) in (ErrorCode.UNKNOWN, EndReason.UNKNOWN)
        for name in ("code", "reason")
    )


@given(st.sampled_from(VECTORS), st.integers(min_value=0), st.integers(0, 255))
def test_a_changed_byte_is_refused_or_is_another_exact_message(
    vector: tuple[Message, str], where: int, value: int
) -> None:
    """The encoding is canonical: whatever decodes re-encodes to the same bytes
    (but an unknown code, which reads as UNKNOWN)."""
    frame = bytearray(bytes.fromhex(vector[1])[4:])
    frame[where % len(frame)] = value
    try:
        message = decode(bytes(frame))
    except RemoteProtocolError:
        return
    if not _has_unknown_code(message):
        assert payload(message) == frame


# --- malformed input: the peer's fault, with the same words as ever ---------------------------


def test_an_empty_frame() -> None:
    assert remote_error(b"") == "empty frame"


@pytest.mark.parametrize("kind", [0x00, 0x0B, 0x12, 0x7F, 0x80, 0x92, 0xA0, 0xA4, 0xFF])
def test_an_unknown_type(kind: int) -> None:
    assert remote_error(bytes([kind])) == f"unknown message type {kind:02X}"


@pytest.mark.parametrize(("message", "wire"), VECTORS, ids=IDS)
def test_every_truncation_is_too_short(message: Message, wire: str) -> None:
    frame = bytes.fromhex(wire)[4:]
    for end in range(1, len(frame)):
        assert remote_error(frame[:end]) == "message body too short", end


@pytest.mark.parametrize(("message", "wire"), VECTORS, ids=IDS)
def test_trailing_bytes(message: Message, wire: str) -> None:
    frame = bytes.fromhex(wire)[4:]
    assert remote_error(frame + b"\x00") == "1 trailing bytes in message"
    assert remote_error(frame + b"\x01\x02\x03") == "3 trailing bytes in message"


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("09 00000000", "TRANSMIT: apdu must be 1..65544 bytes, not 0"),
        ("09 00010009" + "00" * 65545, "TRANSMIT: apdu must be 1..65544 bytes, not 65545"),
        ("09 FFFFFFFF 00A40400", "message body too short"),
        ("09 00000005 00A40400", "message body too short"),
        ("86 00000001 90", "RESPONSE: apdu must be 2..65544 bytes, not 1"),
        ("86 00000000", "RESPONSE: apdu must be 2..65544 bytes, not 0"),
        ("85 0000", "ATR: atr must be 1..33 bytes, not 0"),
        ("85 0022" + "3B" * 34, "ATR: atr must be 1..33 bytes, not 34"),
        ("A1 0000", "CARD_INSERTED: atr must be 1..33 bytes, not 0"),
        ("83 0022" + "3B" * 34 + "0000", "ATTACHED: atr must be 0..33 bytes, not 34"),
        ("83 0002 3B", "message body too short"),
        (f"10 0000 {NONCE_HEX} 0000", "PAIR_REQUEST: certificate must be 1..65535 bytes, not 0"),
        ("01 02 0003 6162", "message body too short"),
        ("01 02 0000" + "00" * 15, "message body too short"),
        ("01 02 0000" + "00" * 17, "1 trailing bytes in message"),
        ("82 0002 0001 52 0001 50 00 0000", "message body too short"),
        ("82 0000 0001 52 0001 50 00 0000", "9 trailing bytes in message"),
        ("03 0001 52 00", "ATTACH: 0 is not a valid ShareMode"),
        ("03 0001 52 09", "ATTACH: 9 is not a valid ShareMode"),
        ("82 0001 0001 52 0001 50 04 0000", "READERS: 4 is not a valid ReaderState"),
        ("81 02 0002 FFFE", "string is not UTF-8"),
        ("87 01 0001 80", "string is not UTF-8"),
    ],
)
def test_bad_fields(frame: str, error: str) -> None:
    assert remote_error(bytes.fromhex(frame)) == error


# --- what we may not send: refused when built, with the same words as ever --------------------


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Transmit(b""), "apdu must be 1..65544 bytes, not 0"),
        (lambda: Transmit(bytes(MAX_APDU + 1)), "apdu must be 1..65544 bytes, not 65545"),
        (lambda: Response(b"\x90"), "apdu must be 2..65544 bytes, not 1"),
        (lambda: Atr(b""), "atr must be 1..33 bytes, not 0"),
        (lambda: CardInserted(bytes(34)), "atr must be 1..33 bytes, not 34"),
        (lambda: Attached(bytes(34)), "atr must be 0..33 bytes, not 34"),
        (lambda: PairRequest(b"", NONCE), "certificate must be 1..65535 bytes, not 0"),
        (
            lambda: PairRequest(bytes(0x10000), NONCE),
            "certificate must be 1..65535 bytes, not 65536",
        ),
        (lambda: PairRequest(b"c", bytes(31)), "nonce must be 32 bytes, not 31"),
        (lambda: PairProof(bytes(33)), "mac must be 32 bytes, not 33"),
        (lambda: PairChallenge(NONCE, bytes(31)), "mac must be 32 bytes, not 31"),
        (lambda: Hello("s", bytes(15)), "instance must be 16 bytes, not 15"),
        (lambda: Hello("s", INSTANCE, version=256), "version out of range"),
        (lambda: Welcome("x", version=-1), "version out of range"),
        (lambda: Ok(-1), "count out of range"),
        (lambda: Ok(0x10000), "count out of range"),
        (lambda: Attach("x" * 0x10000), "reader too long"),
        (lambda: Attach("é" * 0x8000), "reader too long"),
        (lambda: Attach("R", 3), "3 is not a valid ShareMode"),  # type: ignore[arg-type]
        (lambda: Detach("", "s" * 0x10000), "session too long"),
        (lambda: Error(ErrorCode.UNKNOWN, "m" * 0x10000), "message too long"),
        (lambda: End(0x100), "reason out of range"),  # type: ignore[arg-type]
        (
            lambda: ReaderInfo("R", "P", ReaderState.NO_CARD, "s" * 0x10000),
            "session too long",
        ),
        (
            lambda: Readers((ReaderInfo("R", "P", ReaderState.NO_CARD),) * 0x10000),
            "too many readers",
        ),
    ],
)
def test_local_values_are_refused(build: Callable[[], object], error: str) -> None:
    with pytest.raises(ValueError) as caught:
        build()
    assert str(caught.value) == error
    assert not isinstance(caught.value, RemoteProtocolError)


def test_a_message_larger_than_a_frame_is_refused() -> None:
    big = ReaderInfo("n" * 0xFFFF, "p", ReaderState.NO_CARD)
    with pytest.raises(LocalProtocolError) as caught:
        encode(Readers((big, big)))
    assert (
        str(caught.value)
        == f"message of {2 * (2 + 0xFFFF + 2 + 1 + 1 + 2) + 3} bytes exceeds {MAX_FRAME}"
    )
