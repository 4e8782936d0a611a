"""The codec's hot-loop path: ``next_apdu`` and ``respond_apdu`` agree with the event API.

:meth:`VpcdConnection.next_apdu` is :meth:`~VpcdConnection.next_event` with
a command as its bare APDU; whatever the stream, split anywhere, the two
must give the same results, raise the same errors at the same point, and
leave the connection in the same state.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from applets.echo import ECHO_AID, EchoApplet
from vsc.card import Card
from vsc.vpcd import (
    MAX_FRAME,
    NEED_DATA,
    Command,
    ConnectionClosed,
    Event,
    GetAtr,
    NeedData,
    RemoteProtocolError,
    VpcdConnection,
    respond,
    respond_apdu,
)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


Result = list[Event | bytes] | str


def run(stream: bytes, cuts: list[int], eof: bool, *, fast: bool) -> Result:
    """Everything the connection yields, with commands as bare APDUs; the error text if any."""
    conn = VpcdConnection(max_frame=512)
    out: list[Event | bytes] = []
    bounds = [0, *sorted(cuts), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            conn.receive_data(chunk)
            while True:
                item: Event | bytes | NeedData = conn.next_apdu() if fast else conn.next_event()
                if item is NEED_DATA:
                    break
                assert not isinstance(item, NeedData)
                out.append(item.apdu if isinstance(item, Command) else item)
                if isinstance(item, ConnectionClosed):
                    return out
    except RemoteProtocolError as exc:
        return f"{out!r}: {exc}"
    return out


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    # Mostly well-formed frames (1-byte controls, commands), sometimes raw bytes.
    payload = st.one_of(st.binary(min_size=1, max_size=1), st.binary(min_size=2, max_size=40))
    framed = st.lists(payload, max_size=6).map(lambda ps: b"".join(map(frame, ps)))
    stream = draw(st.one_of(framed, st.binary(max_size=80), framed.map(lambda s: s + b"\x00")))
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=12))
    return stream, cuts


@given(streams(), st.booleans())
def test_next_apdu_agrees_with_next_event(case: tuple[bytes, list[int]], eof: bool) -> None:
    stream, cuts = case
    assert run(stream, cuts, eof, fast=True) == run(stream, cuts, eof, fast=False)


def test_next_apdu_gives_bytes_for_commands_and_events_otherwise() -> None:
    conn = VpcdConnection()
    conn.receive_data(frame(b"\x00\xa4") + frame(b"\x04") + b"\x00")
    assert conn.next_apdu() == b"\x00\xa4"
    assert conn.next_apdu() == GetAtr()
    assert conn.next_apdu() is NEED_DATA
    assert conn.in_frame
    conn.receive_data(b"\x03\x01\x02")
    assert conn.next_apdu() is NEED_DATA  # two of three bytes so far
    conn.receive_data(b"\x03")
    assert conn.next_apdu() == b"\x01\x02\x03"
    conn.receive_data(b"")
    assert conn.next_apdu() == ConnectionClosed()


def test_next_apdu_errors_stick_like_next_event() -> None:
    conn = VpcdConnection(max_frame=16)
    conn.receive_data(b"\x00\x11")  # 17 > max_frame: refused before the payload arrives
    for _ in range(2):
        try:
            conn.next_apdu()
        except RemoteProtocolError:
            continue
        raise AssertionError("an oversized frame was accepted")


def test_respond_apdu_is_respond_to_a_command() -> None:
    select = bytes([0x00, 0xA4, 0x04, 0x00, len(ECHO_AID)]) + ECHO_AID
    fast, slow = Card([EchoApplet()]), Card([EchoApplet()])
    for apdu in (select, bytes.fromhex("0001000003414243"), b"\xff\xff"):
        assert respond_apdu(fast, apdu) == respond(slow, Command(apdu))


class BrokenCard(Card):
    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer

    def transmit(self, apdu: bytes) -> bytes:
        return self.answer


def test_respond_apdu_never_returns_an_unframeable_answer() -> None:
    for answer in (b"", b"\x90", bytes(MAX_FRAME + 1)):
        assert respond_apdu(BrokenCard(answer), b"\x00\x00") == b"\x6f\x00"
    assert respond_apdu(BrokenCard(b"\x90\x00"), b"\x00\x00") == b"\x90\x00"
