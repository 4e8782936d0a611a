"""The share link codec: every message round-trips, the state machine holds, bad input is blamed.

The exact bytes of each message, and the exact errors for bad ones, are pinned in
test_wire_format.py.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsc.share.protocol import (
    ATR_MAX,
    MAX_APDU,
    MAX_FRAME,
    NEED_DATA,
    NOTICE_TYPES,
    REPLIES,
    REPLY_TYPES,
    REQUEST_TYPES,
    Atr,
    Attach,
    Attached,
    CardInserted,
    CardRemoved,
    ConnectionClosed,
    Detach,
    Detached,
    End,
    EndReason,
    Error,
    ErrorCode,
    Hello,
    LinkConnection,
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
    Request,
    Reset,
    Response,
    Role,
    ShareMode,
    Transmit,
    Welcome,
    decode,
    encode,
)

INSTANCE = bytes(range(16))
NONCE = bytes(range(32))
MAC = bytes(range(32, 64))

SAMPLES: list[Message] = [
    Hello("alice@host:3", INSTANCE),
    ListReaders(),
    Attach("Reader 1", ShareMode.SHARED),
    Detach("Reader 2", "bob"),
    Detach(),
    End(EndReason.LOGOUT),
    PowerOn(),
    PowerOff(),
    Reset(),
    Transmit(bytes.fromhex("00A4040005A000000308")),
    Ping(),
    PairRequest(b"\x30\x82cert", NONCE, "laptop"),
    PairProof(MAC),
    Welcome("laptop"),
    Readers((ReaderInfo("Reader 1", "Virtual PCD 00 00", ReaderState.SHARED, "alice"),)),
    Readers(),
    Attached(b""),
    Attached(bytes(ATR_MAX), "Reader 1"),
    Ok(3),
    Atr(b"\x3b\x00"),
    Response(b"\x90\x00"),
    Error(ErrorCode.IN_USE, "Reader 1 is shared in another session"),
    PairChallenge(NONCE, MAC, "ünïcode"),
    Paired(),
    CardInserted(b"\x3b\x8d"),
    CardRemoved(),
    Detached(EndReason.RESTART),
]


def test_the_samples_cover_every_message_type() -> None:
    assert {type(m).TYPE for m in SAMPLES} == set(MessageType)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    wire = encode(message)
    assert int.from_bytes(wire[:4], "big") == len(wire) - 4
    assert wire[4] == message.TYPE
    assert decode(wire[4:]) == message


@pytest.mark.parametrize("size", [1, 2, 0xFF, 0x100, 0xFFFF, 0x10000, MAX_APDU])
def test_apdu_sizes(size: int) -> None:
    apdu = bytes(i & 0xFF for i in range(size))
    assert decode(encode(Transmit(apdu))[4:]) == Transmit(apdu)
    if size >= 2:
        assert decode(encode(Response(apdu))[4:]) == Response(apdu)


# --- the state machine ---------------------------------------------------------------------


def pair_up() -> tuple[LinkConnection, LinkConnection]:
    return LinkConnection(Role.ENDPOINT), LinkConnection(Role.SERVICE)


def carry(sender: LinkConnection, receiver: LinkConnection, message: Message) -> Message:
    receiver.receive_data(sender.send(message))
    received = receiver.next_event()
    assert received == message
    assert receiver.next_event() is NEED_DATA
    return message


def test_every_request_has_its_replies() -> None:
    assert set(REPLIES) == set(REQUEST_TYPES)
    assert set().union(*REPLIES.values()) <= set(REPLY_TYPES)


@pytest.mark.parametrize("request_type", list(REPLIES), ids=lambda t: t.__name__)
def test_each_request_accepts_its_replies_and_error(request_type: type[Request]) -> None:
    request = next(m for m in SAMPLES if type(m) is request_type)
    for reply in [m for m in SAMPLES if isinstance(m, REPLY_TYPES)]:
        endpoint, service = pair_up()
        carry(endpoint, service, request)
        allowed = isinstance(reply, Error) or type(reply) in REPLIES[request_type]
        if allowed:
            carry(service, endpoint, reply)
            assert endpoint.pending is None and service.pending is None
        else:
            with pytest.raises(LocalProtocolError):
                service.send(reply)
            endpoint.receive_data(encode(reply))
            with pytest.raises(RemoteProtocolError):
                endpoint.next_event()


def test_one_request_at_a_time() -> None:
    endpoint, service = pair_up()
    endpoint.send(ListReaders())
    with pytest.raises(LocalProtocolError):
        endpoint.send(PowerOn())
    service.receive_data(encode(ListReaders()) + encode(PowerOn()))
    assert service.next_event() == ListReaders()
    with pytest.raises(RemoteProtocolError):
        service.next_event()
    with pytest.raises(RemoteProtocolError):  # and it stays broken
        service.next_event()


def test_events_go_anytime_from_the_service_only() -> None:
    endpoint, service = pair_up()
    for notice in (CardRemoved(), CardInserted(b"\x3b\x00"), Detached()):
        carry(service, endpoint, notice)
    endpoint.send(Transmit(b"\x00\xa4\x04\x00"))
    service.receive_data(encode(Transmit(b"\x00\xa4\x04\x00")))
    service.next_event()
    carry(service, endpoint, CardRemoved())  # between a request and its reply
    carry(service, endpoint, Response(b"\x90\x00"))
    with pytest.raises(LocalProtocolError):
        endpoint.send(CardRemoved())
    service.receive_data(encode(CardRemoved()))
    with pytest.raises(RemoteProtocolError):
        service.next_event()


def test_replies_need_a_request() -> None:
    endpoint, service = pair_up()
    with pytest.raises(LocalProtocolError):
        service.send(Ok())
    endpoint.receive_data(encode(Ok()))
    with pytest.raises(RemoteProtocolError):
        endpoint.next_event()


def test_frame_length_bounds() -> None:
    for length in (0, MAX_FRAME + 1, 0xFFFFFFFF):
        service = LinkConnection(Role.SERVICE)
        service.receive_data(struct.pack(">I", length))
        with pytest.raises(RemoteProtocolError):
            service.next_event()
    small = LinkConnection(Role.SERVICE, max_frame=8)
    small.receive_data(encode(Transmit(bytes(8))))
    with pytest.raises(RemoteProtocolError):
        small.next_event()


def test_end_of_stream() -> None:
    endpoint = LinkConnection(Role.ENDPOINT)
    endpoint.receive_data(b"")
    assert isinstance(endpoint.next_event(), ConnectionClosed)
    with pytest.raises(LocalProtocolError):
        endpoint.receive_data(b"x")
    truncated = LinkConnection(Role.ENDPOINT)
    truncated.receive_data(encode(CardRemoved())[:-1])
    assert truncated.next_event() is NEED_DATA
    truncated.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        truncated.next_event()


# --- the law: any input parses the same split anywhere, or is RemoteProtocolError ---------------


def feed(role: Role, chunks: list[bytes]) -> list[object]:
    conn = LinkConnection(role)
    out: list[object] = []
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            while (event := conn.next_event()) is not NEED_DATA:
                out.append(event)
                if isinstance(event, ConnectionClosed):
                    return out
    except RemoteProtocolError:
        out.append(RemoteProtocolError)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


_valid_stream = st.lists(st.sampled_from([encode(m) for m in SAMPLES]), max_size=6).map(b"".join)


@given(
    st.one_of(st.binary(max_size=300), _valid_stream),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    st.sampled_from(list(Role)),
)
def test_any_input_any_split_same_events_or_remote_error(
    data: bytes, cuts: list[int], role: Role
) -> None:
    whole = feed(role, [data] if data else [])
    pieces = feed(role, split(data, cuts))
    assert whole == pieces


def test_notice_types_are_the_events() -> None:
    assert {t.TYPE for t in NOTICE_TYPES} == {
        MessageType.CARD_INSERTED,
        MessageType.CARD_REMOVED,
        MessageType.DETACHED,
    }
