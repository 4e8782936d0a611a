"""The vpcd codec: framing, events, errors by blame, and driving a card."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from applets.echo import ECHO_AID, EchoApplet
from vsc.card import DEFAULT_ATR, Card
from vsc.vpcd import (
    MAX_FRAME,
    NEED_DATA,
    Command,
    ConnectionClosed,
    ControlCode,
    Event,
    GetAtr,
    LocalProtocolError,
    PowerOff,
    PowerOn,
    RemoteProtocolError,
    Reset,
    UnknownControl,
    VpcdConnection,
    respond,
)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


def drain(conn: VpcdConnection) -> list[Event]:
    events: list[Event] = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` into non-empty chunks (empty would mean end of stream)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def feed(data: bytes, cuts: list[int] | None = None, *, eof: bool = False) -> list[Event]:
    conn = VpcdConnection()
    events: list[Event] = []
    for chunk in split(data, cuts or []):
        conn.receive_data(chunk)
        events += drain(conn)
    if eof:
        conn.receive_data(b"")
        events += drain(conn)
    return events


# --- decoding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "event"),
    [(0x00, PowerOff()), (0x01, PowerOn()), (0x02, Reset()), (0x04, GetAtr())],
)
def test_control_codes(code: int, event: Event) -> None:
    assert feed(b"\x00\x01" + bytes([code])) == [event]


@pytest.mark.parametrize("code", [0x03, 0x05, 0x80, 0xFF])
def test_unknown_control_code_is_an_event_not_an_error(code: int) -> None:
    conn = VpcdConnection()
    conn.receive_data(frame(bytes([code])) + frame(b"\x04"))
    assert drain(conn) == [UnknownControl(code), GetAtr()]


def test_command_frames() -> None:
    apdu = bytes.fromhex("00A4040006F07673630001")
    assert feed(frame(apdu)) == [Command(apdu)]
    # Two bytes is the shortest APDU-sized message; the card judges its validity.
    assert feed(frame(b"\x00\xa4")) == [Command(b"\x00\xa4")]


def test_largest_frame() -> None:
    apdu = bytes(range(256)) * 255 + bytes(range(255))
    assert len(apdu) == MAX_FRAME
    assert feed(frame(apdu)) == [Command(apdu)]


def test_several_frames_in_one_chunk_and_partial_tail() -> None:
    conn = VpcdConnection()
    conn.receive_data(frame(b"\x01") + frame(b"\x04") + frame(b"\x00\xca\x00\x00")[:3])
    assert drain(conn) == [PowerOn(), GetAtr()]
    assert conn.in_frame
    conn.receive_data(b"\xca\x00\x00")
    assert drain(conn) == [Command(b"\x00\xca\x00\x00")]
    assert not conn.in_frame


def test_need_data_until_the_whole_frame_is_there() -> None:
    conn = VpcdConnection()
    assert conn.next_event() is NEED_DATA
    assert not conn.in_frame
    conn.receive_data(b"\x00")
    assert conn.next_event() is NEED_DATA
    assert conn.in_frame
    conn.receive_data(b"\x05\x00\xa4\x04")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\x00\x00")
    assert conn.next_event() == Command(b"\x00\xa4\x04\x00\x00")


# --- end of stream ----------------------------------------------------------------------


def test_clean_close() -> None:
    assert feed(frame(b"\x04"), eof=True) == [GetAtr(), ConnectionClosed()]
    conn = VpcdConnection()
    conn.receive_data(b"")
    assert conn.closed
    assert conn.next_event() == ConnectionClosed()


@pytest.mark.parametrize("tail", [b"\x00", b"\x00\x05", b"\x00\x05\x00\xa4"])
def test_close_inside_a_frame_is_a_remote_error(tail: bytes) -> None:
    conn = VpcdConnection()
    conn.receive_data(tail)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        conn.next_event()


def test_data_after_close_is_a_local_error() -> None:
    conn = VpcdConnection()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"\x00\x01\x04")


# --- remote errors ----------------------------------------------------------------------


def test_zero_length_frame_is_a_remote_error_and_sticks() -> None:
    conn = VpcdConnection()
    conn.receive_data(frame(b"\x04") + b"\x00\x00" + frame(b"\x04"))
    assert conn.next_event() == GetAtr()
    with pytest.raises(RemoteProtocolError, match="zero-length"):
        conn.next_event()
    # The stream cannot be trusted after a framing error: it stays broken.
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_oversized_length_fails_before_the_payload_arrives() -> None:
    conn = VpcdConnection(max_frame=300)
    conn.receive_data(frame(b"\x00" * 300))
    assert conn.next_event() == Command(b"\x00" * 300)
    conn.receive_data((301).to_bytes(2, "big"))
    with pytest.raises(RemoteProtocolError, match="exceeds 300"):
        conn.next_event()


@pytest.mark.parametrize("bad", [0, -1, MAX_FRAME + 1])
def test_max_frame_bounds(bad: int) -> None:
    with pytest.raises(ValueError):
        VpcdConnection(max_frame=bad)


# --- sending ------------------------------------------------------------------------------


def test_send_frames_big_endian() -> None:
    conn = VpcdConnection()
    assert conn.send(b"\x90\x00") == b"\x00\x02\x90\x00"
    assert conn.send(DEFAULT_ATR) == bytes([0, len(DEFAULT_ATR)]) + DEFAULT_ATR
    big = b"\xab" * MAX_FRAME
    assert conn.send(big) == b"\xff\xff" + big
    assert conn.send(b"\x00" * 0x100)[:2] == b"\x01\x00"


def test_send_refuses_an_empty_frame() -> None:
    with pytest.raises(LocalProtocolError, match="empty"):
        VpcdConnection().send(b"")


def test_send_refuses_an_oversized_frame() -> None:
    with pytest.raises(LocalProtocolError, match="exceeds"):
        VpcdConnection().send(b"\x00" * (MAX_FRAME + 1))


# --- events validate on construction --------------------------------------------------------


@pytest.mark.parametrize("apdu", [b"", b"\x00", b"\x00" * (MAX_FRAME + 1)])
def test_command_length_is_validated(apdu: bytes) -> None:
    with pytest.raises(ValueError):
        Command(apdu)


@pytest.mark.parametrize("code", [*ControlCode, -1, 0x100])
def test_unknown_control_is_validated(code: int) -> None:
    with pytest.raises(ValueError):
        UnknownControl(code)


def test_events_are_frozen() -> None:
    event = Command(b"\x00\xa4")
    with pytest.raises(AttributeError):
        event.apdu = b"\x00\xb0"  # type: ignore[misc]


# --- the fuzz law ---------------------------------------------------------------------------

payloads = st.one_of(
    st.binary(min_size=1, max_size=1),
    st.binary(min_size=2, max_size=300),
)


@st.composite
def split_stream(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> tuple[bytes, list[int]]:
    stream = draw(data)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=20))
    return stream, cuts


@given(
    split_stream(st.lists(payloads, max_size=10).map(lambda ps: b"".join(map(frame, ps)))),
    st.booleans(),
)
def test_valid_stream_split_anywhere_gives_the_same_events(
    case: tuple[bytes, list[int]], eof: bool
) -> None:
    stream, cuts = case
    whole = feed(stream, eof=eof)
    assert feed(stream, cuts, eof=eof) == whole
    assert sum(not isinstance(e, ConnectionClosed) for e in whole) == count_frames(stream)


def count_frames(stream: bytes) -> int:
    n = 0
    while stream:
        stream = stream[2 + int.from_bytes(stream[:2], "big") :]
        n += 1
    return n


def outcome(stream: bytes, cuts: list[int], eof: bool) -> tuple[list[Event], str | None]:
    conn = VpcdConnection(max_frame=512)
    events: list[Event] = []
    try:
        for chunk in split(stream, cuts):
            conn.receive_data(chunk)
            events += drain(conn)
        if eof:
            conn.receive_data(b"")
            events += drain(conn)
    except RemoteProtocolError as exc:
        return events, str(exc)
    return events, None


@given(split_stream(st.binary(max_size=600)), st.booleans())
def test_any_bytes_split_anywhere_same_outcome_only_remote_errors(
    case: tuple[bytes, list[int]], eof: bool
) -> None:
    # Anything but RemoteProtocolError escaping fails the test by itself.
    stream, cuts = case
    assert outcome(stream, cuts, eof) == outcome(stream, [], eof)


# --- driving a card ---------------------------------------------------------------------------

SELECT_ECHO = bytes([0x00, 0xA4, 0x04, 0x00, len(ECHO_AID)]) + ECHO_AID


def echo_card() -> Card:
    return Card([EchoApplet()])


def test_respond_controls() -> None:
    card = echo_card()
    assert respond(card, PowerOn()) is None
    assert card.powered
    assert respond(card, GetAtr()) == DEFAULT_ATR
    assert respond(card, Reset()) is None
    assert card.powered
    assert respond(card, PowerOff()) is None
    assert not card.powered
    assert respond(card, UnknownControl(0x03)) is None


def test_respond_command_round_trip() -> None:
    card = echo_card()
    respond(card, PowerOn())
    assert respond(card, Command(SELECT_ECHO)) == b"\x90\x00"
    assert respond(card, Command(b"\x00\x01\x00\x00\x03abc")) == b"abc\x90\x00"


def test_connection_closed_powers_the_card_off_and_drops_volatile_state() -> None:
    card = echo_card()
    respond(card, Command(SELECT_ECHO))
    assert respond(card, ConnectionClosed()) is None
    assert not card.powered
    # The selection went with the power: the echo INS is unknown without it.
    assert respond(card, Command(b"\x00\x01\x00\x00\x01a")) != b"a\x90\x00"


class BrokenCard:
    """A card that breaks the transmit contract in a given way."""

    def __init__(self, answer: bytes = b"", exc: Exception | None = None) -> None:
        self.answer = answer
        self.exc = exc

    @property
    def atr(self) -> bytes:
        if self.exc is not None:
            raise self.exc
        return DEFAULT_ATR

    def power_on(self) -> bytes:
        return DEFAULT_ATR

    def power_off(self) -> None:
        pass

    def reset(self) -> bytes:
        return DEFAULT_ATR

    def transmit(self, apdu: bytes) -> bytes:
        if self.exc is not None:
            raise self.exc
        return self.answer


@pytest.mark.parametrize("answer", [b"", b"\x90", b"\x00" * (MAX_FRAME + 1)])
def test_respond_never_returns_an_unframeable_answer(answer: bytes) -> None:
    assert respond(BrokenCard(answer), Command(b"\x00\xa4\x00\x00")) == b"\x6f\x00"


def test_respond_lets_card_exceptions_through() -> None:
    with pytest.raises(RuntimeError):
        respond(BrokenCard(exc=RuntimeError("boom")), Command(b"\x00\xa4\x00\x00"))


def test_longest_extended_response_is_split_to_fit_a_frame() -> None:
    # 65535 data bytes + SW cannot be framed: vpcd's length field is 16 bits,
    # so the card sends 65533 bytes and 61xx for the rest.
    card = echo_card()
    respond(card, Command(SELECT_ECHO))
    answer = respond(card, Command(bytes.fromhex("0002FFFF000000")))
    assert answer is not None
    assert len(answer) == MAX_FRAME and answer[-2:] == b"\x61\x02"
    just_fits = respond(card, Command(bytes.fromhex("0002FFFD000000")))
    assert just_fits is not None
    assert len(just_fits) == MAX_FRAME
    assert just_fits[-2:] == b"\x90\x00"
