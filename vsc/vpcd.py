"""The vpcd wire protocol as a sans-IO codec.

Theory of operation
-------------------
vsmartcard's vpcd is a PC/SC reader driver that talks to a virtual card over
one TCP stream. Both directions carry the same framing: a 2-byte big-endian
length, then that many bytes. vpcd -> card messages come in two kinds:

* a 1-byte message is a *control code*: ``00`` power off, ``01`` power on,
  ``02`` reset, ``04`` get ATR. Only get ATR is answered (with the ATR); the
  others get no answer at all.
* anything of 2 bytes or more is a command APDU; the card answers with
  exactly one response APDU.

vpcd sends a request and blocks until it has its answer, so the stream is a
strict ping-pong. Two failure modes of vpcd 3.3 shape this module:

* An answer of length 0 makes vpcd block in ``recv`` forever, and that reader
  slot in pcscd is wedged until pcscd restarts. :meth:`VpcdConnection.send`
  therefore refuses to frame an empty payload (:class:`LocalProtocolError`),
  and :func:`respond` never produces one.
* A request that is not answered wedges vpcd the same way, so every
  :class:`Command` must produce a response even when the card misbehaves.

Like h11, this module does no I/O: feed received bytes to
:meth:`VpcdConnection.receive_data` (``b""`` means the peer closed the
stream), pull events with :meth:`VpcdConnection.next_event` until it returns
:data:`NEED_DATA`, and write whatever :meth:`VpcdConnection.send` returns.
A hot loop may pull with :meth:`VpcdConnection.next_apdu` instead, which
hands a command over as its bare APDU bytes (no event object per APDU), and
answer it with :func:`respond_apdu`.

Errors are split by blame, as in h11:

* :class:`RemoteProtocolError` -- the peer broke the framing: a zero-length
  frame (vpcd never sends one), a frame longer than ``max_frame``, or the
  stream ending in the middle of a frame. The stream cannot be trusted any
  more: the connection stays in an error state (every later
  :meth:`~VpcdConnection.next_event` raises again) and the caller should
  drop it. vpcd takes a dropped connection as card removal, never as a wedge.
* :class:`LocalProtocolError` -- our own misuse: framing an empty or
  oversized payload, or feeding data after end of stream.

An unknown 1-byte control code is *not* an error: the framing is intact, so
it becomes an :class:`UnknownControl` event. The caller logs it and sends
nothing (vpcd expects no answer to a control code other than get ATR, and an
unsolicited frame would desynchronise it). This is the documented law the
fuzz test enforces: any byte stream, split anywhere, yields the same events
as when fed whole, and the only exception is :class:`RemoteProtocolError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final, Protocol

__all__ = [
    "MAX_FRAME",
    "NEED_DATA",
    "Backoff",
    "Command",
    "ConnectionClosed",
    "ControlCode",
    "Event",
    "GetAtr",
    "LocalProtocolError",
    "NeedData",
    "PowerOff",
    "PowerOn",
    "RemoteProtocolError",
    "Reset",
    "UnknownControl",
    "VpcdConnection",
    "VpcdError",
    "decode",
    "respond",
    "respond_apdu",
]

_log = logging.getLogger(__name__)

#: The largest payload the 2-byte length prefix can describe.
MAX_FRAME: Final = 0xFFFF
_HEADER = 2

#: Answer to a command the card failed to answer (SW 6F00, "no precise diagnosis").
_SW_UNKNOWN: Final = b"\x6f\x00"


class ControlCode(IntEnum):
    """The 1-byte control messages vpcd sends (vsmartcard's VPCD_CTRL_*)."""

    POWER_OFF = 0x00
    POWER_ON = 0x01
    RESET = 0x02
    GET_ATR = 0x04


class VpcdError(Exception):
    """Base class of vpcd protocol errors."""


class RemoteProtocolError(VpcdError):
    """The peer broke the framing; drop the connection."""


class LocalProtocolError(VpcdError, ValueError):
    """We asked for something the protocol cannot carry."""


# --- events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PowerOff:
    """Control code 00: the reader cut power. No answer."""


@dataclass(frozen=True, slots=True)
class PowerOn:
    """Control code 01: the reader applied power. No answer."""


@dataclass(frozen=True, slots=True)
class Reset:
    """Control code 02: warm reset. No answer."""


@dataclass(frozen=True, slots=True)
class GetAtr:
    """Control code 04: answer with the ATR."""


@dataclass(frozen=True, slots=True)
class UnknownControl:
    """A 1-byte message with a code vpcd 3.3 does not define. No answer."""

    code: int

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0xFF:
            raise ValueError(f"control code out of range: {self.code}")
        if self.code in ControlCode._value2member_map_:
            raise ValueError(f"control code {self.code:02X} is known")


@dataclass(frozen=True, slots=True)
class Command:
    """A command APDU (any message of 2 bytes or more). Answer with one response."""

    apdu: bytes

    def __post_init__(self) -> None:
        if not 2 <= len(self.apdu) <= MAX_FRAME:
            raise ValueError(f"a command frame holds 2..{MAX_FRAME} bytes, not {len(self.apdu)}")


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the stream on a frame boundary."""


Event = PowerOff | PowerOn | Reset | GetAtr | UnknownControl | Command | ConnectionClosed


class NeedData(Enum):
    """Sentinel type of :data:`NEED_DATA`."""

    NEED_DATA = "NEED_DATA"


#: Returned by :meth:`VpcdConnection.next_event` when no whole frame is buffered.
NEED_DATA: Final = NeedData.NEED_DATA

_CONTROL_EVENTS: Final[dict[int, Event]] = {
    ControlCode.POWER_OFF: PowerOff(),
    ControlCode.POWER_ON: PowerOn(),
    ControlCode.RESET: Reset(),
    ControlCode.GET_ATR: GetAtr(),
}


# --- the connection ---------------------------------------------------------------


class VpcdConnection:
    """Card side of one vpcd stream: bytes in, events out; responses in, bytes out.

    ``max_frame`` bounds the payload length accepted from the peer (at most
    :data:`MAX_FRAME`); a longer length prefix is rejected as soon as its two
    bytes arrive, without waiting for the payload.
    """

    __slots__ = ("_buffer", "_eof", "_error", "_max_frame")

    def __init__(self, *, max_frame: int = MAX_FRAME) -> None:
        if not 1 <= max_frame <= MAX_FRAME:
            raise ValueError(f"max_frame must be in 1..{MAX_FRAME}")
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None

    @property
    def in_frame(self) -> bool:
        """Whether part of a frame is buffered (the peer owes us more bytes)."""
        return bool(self._buffer)

    @property
    def wanted(self) -> int:
        """How many more bytes complete the next frame (0: one is buffered).

        A reader that asks the socket for no more than this never reads past
        the frame, so whatever follows it stays in the socket for the next
        owner of the stream (the emulator's reversed-mode lobby relies on it).
        """
        buffer = self._buffer
        if len(buffer) < _HEADER:
            return _HEADER - len(buffer)
        return max(0, _HEADER + ((buffer[0] << 8) | buffer[1]) - len(buffer))

    @property
    def closed(self) -> bool:
        """Whether end of stream has been fed."""
        return self._eof

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` signals end of stream."""
        if self._eof:
            raise LocalProtocolError("data received after end of stream")
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Event | NeedData:
        """The next complete event, or :data:`NEED_DATA`.

        Raises :class:`RemoteProtocolError` (now and on every later call) when
        the peer broke the framing.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._parse()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def next_apdu(self) -> bytes | Event | NeedData:
        """:meth:`next_event` for a hot loop: a command frame comes as its bare APDU.

        The same events, errors and order as :meth:`next_event`, except that a
        :class:`Command` is returned as its ``apdu`` bytes (no event object
        per APDU). ``isinstance(result, bytes)`` tells the two apart.
        """
        buffer = self._buffer
        # The two common cases inline: a frame still arriving, a whole command frame.
        if self._error is None and not self._eof:
            if len(buffer) < _HEADER:
                return NEED_DATA
            length = (buffer[0] << 8) | buffer[1]
            if 2 <= length <= self._max_frame:  # a command frame (1 is a control code)
                end = _HEADER + length
                if end > len(buffer):
                    return NEED_DATA
                apdu = bytes(buffer[_HEADER:end])
                del buffer[:end]
                return apdu
        event = self.next_event()
        return event.apdu if isinstance(event, Command) else event

    def _parse(self) -> Event | NeedData:
        buffer = self._buffer
        if len(buffer) >= _HEADER:
            length = int.from_bytes(buffer[:_HEADER], "big")
            if length == 0:
                raise RemoteProtocolError("zero-length frame")
            if length > self._max_frame:
                raise RemoteProtocolError(f"frame of {length} bytes exceeds {self._max_frame}")
            if len(buffer) >= _HEADER + length:
                payload = bytes(buffer[_HEADER : _HEADER + length])
                del buffer[: _HEADER + length]
                return decode(payload)
        if not self._eof:
            return NEED_DATA
        if buffer:
            raise RemoteProtocolError(f"stream closed inside a frame ({len(buffer)} bytes)")
        return ConnectionClosed()

    def send(self, payload: bytes) -> bytes:
        """Frame one answer (a response APDU or the ATR) for the wire."""
        if not payload:
            raise LocalProtocolError("refusing an empty frame: it wedges vpcd")
        if len(payload) > MAX_FRAME:
            raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_FRAME}")
        return len(payload).to_bytes(_HEADER, "big") + payload


def decode(payload: bytes) -> Event:
    """The event a whole frame's payload (1 to :data:`MAX_FRAME` bytes) stands for."""
    if len(payload) == 1:
        event = _CONTROL_EVENTS.get(payload[0])
        return event if event is not None else UnknownControl(payload[0])
    return Command(payload)


# --- driving a card -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays of a card side that dials vpcd: ``initial`` seconds, doubling up
    to ``cap`` (the emulator and the share endpoint)."""

    initial: float = 0.1
    cap: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ValueError("need 0 < initial <= cap")


class CardLike(Protocol):
    """What :func:`respond` needs of a card (:class:`vsc.card.Card` fits)."""

    @property
    def atr(self) -> bytes: ...

    def power_on(self) -> bytes: ...

    def power_off(self) -> None: ...

    def reset(self) -> bytes: ...

    def transmit(self, apdu: bytes) -> bytes: ...


def respond(card: CardLike, event: Event) -> bytes | None:
    """Apply ``event`` to ``card``; return the payload to send back, or None.

    A :class:`Command` always gets an answer vpcd can carry: should the card
    return fewer than 2 bytes (a contract breach: every response ends in a
    status word) or more than :data:`MAX_FRAME` (a 65535-byte extended
    response plus its status word), the answer is ``6F00`` so vpcd is not
    wedged. Exceptions from the card propagate; the caller decides.
    :class:`ConnectionClosed` powers the card off: vpcd treats a lost
    connection as card removal.
    """
    match event:
        case Command(apdu):
            return respond_apdu(card, apdu)
        case GetAtr():
            return card.atr
        case PowerOn():
            card.power_on()
        case PowerOff() | ConnectionClosed():
            card.power_off()
        case Reset():
            card.reset()
        case UnknownControl(code):
            _log.warning("ignoring unknown vpcd control code %02X", code)
    return None


def respond_apdu(card: CardLike, apdu: bytes) -> bytes:
    """:func:`respond` to a command given as its bare APDU (:meth:`VpcdConnection.next_apdu`)."""
    answer = card.transmit(apdu)
    if not 2 <= len(answer) <= MAX_FRAME:
        # Empty would wedge vpcd; over 0xFFFF cannot be framed.
        _log.error("card answered %d bytes, vpcd cannot take it; answering 6F00", len(answer))
        return _SW_UNKNOWN
    return answer
