"""One end of a link, sans I/O: bytes in, messages out; messages in, bytes out.

:data:`REPLIES` is the whole state machine: which reply types answer which
request. :class:`LinkConnection` applies it in both directions, so a peer
that answers out of turn or with the wrong kind of reply is a
:class:`~.wire.RemoteProtocolError` and our own misuse a
:class:`~.wire.LocalProtocolError`; after a remote error the connection
stays broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from .messages import (
    FRAME_HEADER,
    NOTICE_TYPES,
    REPLY_TYPES,
    REQUEST_TYPES,
    Atr,
    Attach,
    Attached,
    Detach,
    End,
    Error,
    Hello,
    ListReaders,
    Message,
    Ok,
    PairChallenge,
    Paired,
    PairProof,
    PairRequest,
    Ping,
    PowerOff,
    PowerOn,
    Readers,
    Reply,
    Request,
    Reset,
    Response,
    Transmit,
    Welcome,
    decode,
    encode,
)
from .wire import MAX_FRAME, LinkError, LocalProtocolError, RemoteProtocolError

__all__ = ["NEED_DATA", "REPLIES", "ConnectionClosed", "LinkConnection", "NeedData", "Role"]

#: The state machine: the reply types that may answer each request type (ERROR answers any).
REPLIES: Final[dict[type[Request], frozenset[type[Reply]]]] = {
    Hello: frozenset({Welcome}),
    ListReaders: frozenset({Readers}),
    Attach: frozenset({Attached}),
    Detach: frozenset({Ok}),
    End: frozenset({Ok}),
    PowerOn: frozenset({Atr}),
    PowerOff: frozenset({Ok}),
    Reset: frozenset({Atr}),
    Transmit: frozenset({Response}),
    Ping: frozenset({Ok}),
    PairRequest: frozenset({PairChallenge}),
    PairProof: frozenset({Paired}),
}


class Role(Enum):
    """Which end of the link this connection object is."""

    ENDPOINT = "endpoint"  # sends requests
    SERVICE = "service"  # answers them, sends events


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the stream on a frame boundary."""


class NeedData(Enum):
    """Sentinel type of :data:`NEED_DATA`."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class LinkConnection:
    """One end of a link: bytes in, messages out; messages in, bytes out."""

    __slots__ = ("_buffer", "_eof", "_error", "_max_frame", "_pending", "role")

    def __init__(self, role: Role, *, max_frame: int = MAX_FRAME) -> None:
        if not 1 <= max_frame <= MAX_FRAME:
            raise ValueError(f"max_frame must be in 1..{MAX_FRAME}")
        self.role = role
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._pending: type[Request] | None = None

    @property
    def closed(self) -> bool:
        """Whether end of stream has been fed."""
        return self._eof

    @property
    def pending(self) -> type[Request] | None:
        """The type of the request awaiting its reply, if any."""
        return self._pending

    def send(self, message: Message) -> bytes:
        """Frame ``message``, checking that this role may send it now."""
        name = type(message).__name__
        if self.role is Role.ENDPOINT:
            if not isinstance(message, REQUEST_TYPES):
                raise LocalProtocolError(f"an endpoint does not send {name}")
            if self._pending is not None:
                raise LocalProtocolError(f"{self._pending.__name__} is still unanswered")
            self._pending = type(message)
        elif isinstance(message, REPLY_TYPES):
            self._check_reply(message, LocalProtocolError)
            self._pending = None
        elif not isinstance(message, NOTICE_TYPES):
            raise LocalProtocolError(f"a service does not send {name}")
        return encode(message)

    def _check_reply(self, reply: Reply, error: type[LinkError]) -> None:
        name = type(reply).__name__
        if self._pending is None:
            raise error(f"{name} answers no request")
        if not isinstance(reply, Error) and type(reply) not in REPLIES[self._pending]:
            raise error(f"{name} does not answer {self._pending.__name__}")

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` signals end of stream."""
        if self._eof:
            raise LocalProtocolError("data received after end of stream")
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Message | ConnectionClosed | NeedData:
        """The next complete message, :class:`ConnectionClosed`, or :data:`NEED_DATA`."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _next(self) -> Message | ConnectionClosed | NeedData:
        buffer = self._buffer
        header = FRAME_HEADER.size
        if len(buffer) >= header:
            (length,) = FRAME_HEADER.unpack_from(buffer)
            if not 1 <= length <= self._max_frame:
                raise RemoteProtocolError(f"frame length {length}")
            end = header + length
            if len(buffer) >= end:
                message = decode(bytes(buffer[header:end]))
                del buffer[:end]
                self._admit(message)
                return message
        if not self._eof:
            return NEED_DATA
        if buffer:
            raise RemoteProtocolError(f"stream closed inside a frame ({len(buffer)} bytes)")
        return ConnectionClosed()

    def _admit(self, message: Message) -> None:
        """Apply the state machine to a received message."""
        name = type(message).__name__
        if self.role is Role.SERVICE:
            if not isinstance(message, REQUEST_TYPES):
                raise RemoteProtocolError(f"an endpoint sent {name}")
            if self._pending is not None:
                raise RemoteProtocolError(f"{name} before {self._pending.__name__}'s reply")
            self._pending = type(message)
        elif isinstance(message, REPLY_TYPES):
            self._check_reply(message, RemoteProtocolError)
            self._pending = None
        elif not isinstance(message, NOTICE_TYPES):
            raise RemoteProtocolError(f"a service sent {name}")
