"""The share link: messages between a remote endpoint and a local share service.

Theory of operation
-------------------
The link runs inside TLS 1.3 (:mod:`vsc.share.tls`); this module only turns
messages into bytes and back, like h11: feed received bytes to
:meth:`LinkConnection.receive_data` (``b""`` = end of stream), pull messages
with :meth:`LinkConnection.next_event` until :data:`NEED_DATA`, and write what
:meth:`LinkConnection.send` returns. No I/O happens here.

Framing: a 4-byte big-endian length, then that many bytes: one type byte
(:class:`MessageType`) and the body. Body fields are fixed-size integers,
byte strings with a 2- or 4-byte length prefix, and UTF-8 strings with a
2-byte length prefix; a body must be consumed exactly.

Two roles. The *endpoint* (TLS client, the remote side) sends requests; the
*service* (TLS server, the side with the reader) answers each request with
exactly one reply and may send events at any time. The endpoint has at most
one request outstanding, so replies need no identifiers; events are told
apart by their type. :data:`REPLIES` is the whole state machine: which reply
types answer which request. :class:`LinkConnection` enforces it in both
directions, so a peer that answers out of turn or with the wrong kind of
reply is a :class:`RemoteProtocolError`, and our own misuse is a
:class:`LocalProtocolError`.

Law (checked by a fuzz test): any byte stream, split anywhere, yields the same
messages as when fed whole, and the only exception is
:class:`RemoteProtocolError`; after one, the connection stays broken.

The session rules (hello first, attach before power and APDUs, who may
detach what) are the service's business (:mod:`vsc.share.service`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import ClassVar, Final, Self, TypeAlias

__all__ = [
    "ATR_MAX",
    "INSTANCE_SIZE",
    "MAC_SIZE",
    "MAX_APDU",
    "MAX_FRAME",
    "NEED_DATA",
    "NONCE_SIZE",
    "NOTICE_TYPES",
    "PROTOCOL_VERSION",
    "REPLIES",
    "REPLY_TYPES",
    "REQUEST_TYPES",
    "Atr",
    "Attach",
    "Attached",
    "CardInserted",
    "CardRemoved",
    "ConnectionClosed",
    "Detach",
    "Detached",
    "End",
    "EndReason",
    "Error",
    "ErrorCode",
    "Hello",
    "LinkConnection",
    "LinkError",
    "ListReaders",
    "LocalProtocolError",
    "Message",
    "MessageType",
    "NeedData",
    "Notice",
    "Ok",
    "PairChallenge",
    "PairProof",
    "PairRequest",
    "Paired",
    "PowerOff",
    "PowerOn",
    "ReaderInfo",
    "ReaderState",
    "Readers",
    "RemoteProtocolError",
    "Reply",
    "Request",
    "Reset",
    "Response",
    "Role",
    "ShareMode",
    "Transmit",
    "Welcome",
]

PROTOCOL_VERSION: Final = 1
_LENGTH = struct.Struct(">I")
#: The largest frame (type byte + body) either side accepts.
MAX_FRAME: Final = 0x20000
#: The largest APDU carried: an extended case-4 command (4 + 3 + 65535 + 2).
MAX_APDU: Final = 65544
#: ISO 7816-3 caps an ATR at 33 bytes.
ATR_MAX: Final = 33
NONCE_SIZE: Final = 32
MAC_SIZE: Final = 32
INSTANCE_SIZE: Final = 16
_U16_MAX: Final = 0xFFFF


class LinkError(Exception):
    """Base class of link protocol errors."""


class RemoteProtocolError(LinkError):
    """The peer broke the protocol; drop the connection."""


class LocalProtocolError(LinkError, ValueError):
    """We tried to send something the protocol does not allow."""


# --- wire values -----------------------------------------------------------------


class MessageType(IntEnum):
    """The type byte. 0x01-0x7F requests, 0x80-0x9F replies, 0xA0-0xAF events."""

    HELLO = 0x01
    LIST_READERS = 0x02
    ATTACH = 0x03
    DETACH = 0x04
    END = 0x05
    POWER_ON = 0x06
    POWER_OFF = 0x07
    RESET = 0x08
    TRANSMIT = 0x09
    PAIR_REQUEST = 0x10
    PAIR_PROOF = 0x11
    WELCOME = 0x81
    READERS = 0x82
    ATTACHED = 0x83
    OK = 0x84
    ATR = 0x85
    RESPONSE = 0x86
    ERROR = 0x87
    PAIR_CHALLENGE = 0x90
    PAIRED = 0x91
    CARD_INSERTED = 0xA1
    CARD_REMOVED = 0xA2
    DETACHED = 0xA3


class ShareMode(IntEnum):
    """How the local reader is held; the values are PC/SC's SCARD_SHARE_*."""

    EXCLUSIVE = 1
    SHARED = 2


class ReaderState(IntEnum):
    """What the service says about a reader in a listing."""

    NO_CARD = 0
    CARD_PRESENT = 1
    SHARED = 2  # attached to a session (card present or not)
    UNAVAILABLE = 3  # named on this machine, not connected now


class EndReason(IntEnum):
    """Why an attachment ended. Unknown values read as UNKNOWN."""

    UNKNOWN = 0
    DETACH = 1  # someone detached it (the endpoint, its peer, or the local user)
    LOGOUT = 2  # the remote user logged out
    RESTART = 3  # the endpoint restarted (a new instance said hello)
    SHUTDOWN = 4  # the service or the endpoint is stopping
    CONNECTION_LOST = 5  # the link dropped (never sent on the wire)
    READER_GONE = 6  # the reader was unplugged

    @classmethod
    def _missing_(cls, value: object) -> EndReason:
        return cls.UNKNOWN


class ErrorCode(IntEnum):
    """Why a request failed. Unknown values read as UNKNOWN."""

    UNKNOWN = 0
    PROTOCOL = 1  # request not allowed now (e.g. an APDU before ATTACH)
    NOT_AUTHORIZED = 2
    UNKNOWN_READER = 3
    IN_USE = 4  # the reader is shared in another session
    NOT_ATTACHED = 5
    NO_CARD = 6
    CARD_RESET = 7  # another application reset the card (shared mode)
    CARD_ERROR = 8  # PC/SC failed
    LOCALLY_BUSY = 9  # a local application holds the card (exclusive mode)
    PAIRING_FAILED = 10
    UNSUPPORTED_VERSION = 11

    @classmethod
    def _missing_(cls, value: object) -> ErrorCode:
        return cls.UNKNOWN


# --- body codec ---------------------------------------------------------------------


class _Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, value: int) -> None:
        self.parts.append(value.to_bytes(1, "big"))

    def u16(self, value: int) -> None:
        self.parts.append(value.to_bytes(2, "big"))

    def raw(self, value: bytes) -> None:
        self.parts.append(value)

    def bytes16(self, value: bytes) -> None:
        self.u16(len(value))
        self.parts.append(value)

    def bytes32(self, value: bytes) -> None:
        self.parts.append(_LENGTH.pack(len(value)))
        self.parts.append(value)

    def text(self, value: str) -> None:
        self.bytes16(value.encode())


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int) -> bytes:
        end = self.offset + count
        if end > len(self.data):
            raise RemoteProtocolError("message body too short")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def bytes16(self) -> bytes:
        return self.take(self.u16())

    def bytes32(self) -> bytes:
        (length,) = _LENGTH.unpack(self.take(4))
        return self.take(length)

    def text(self) -> str:
        try:
            return self.bytes16().decode()
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError("string is not UTF-8") from exc

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise RemoteProtocolError(f"{len(self.data) - self.offset} trailing bytes in message")


def _check_text(value: str, what: str) -> None:
    if len(value.encode()) > _U16_MAX:
        raise ValueError(f"{what} too long")


def _check_size(value: bytes, what: str, low: int, high: int) -> None:
    if not low <= len(value) <= high:
        raise ValueError(f"{what} must be {low}..{high} bytes, not {len(value)}")


# --- messages -----------------------------------------------------------------------


class _Message:
    """Base of the message dataclasses: each knows its type and its body codec."""

    __slots__ = ()
    TYPE: ClassVar[MessageType]

    def encode_body(self, out: _Writer) -> None:
        """Write the body; empty by default."""

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        return cls()


@dataclass(frozen=True, slots=True)
class Hello(_Message):
    """First request of a session: protocol version, the remote session, this endpoint's run.

    An ATTACH of a reader the session holds from a new ``instance`` tells the
    service the endpoint restarted: the old attachment ends and moves here.
    """

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    session: str
    instance: bytes
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.version <= 0xFF:
            raise ValueError("version out of range")
        _check_text(self.session, "session")
        _check_size(self.instance, "instance", INSTANCE_SIZE, INSTANCE_SIZE)

    def encode_body(self, out: _Writer) -> None:
        out.u8(self.version)
        out.text(self.session)
        out.raw(self.instance)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        version = body.u8()
        session = body.text()
        return cls(session=session, instance=body.take(INSTANCE_SIZE), version=version)


@dataclass(frozen=True, slots=True)
class ListReaders(_Message):
    """Ask for the reader listing."""

    TYPE: ClassVar[MessageType] = MessageType.LIST_READERS


@dataclass(frozen=True, slots=True)
class Attach(_Message):
    """Attach ``reader`` ("Reader 1") to this connection's session."""

    TYPE: ClassVar[MessageType] = MessageType.ATTACH
    reader: str
    mode: ShareMode = ShareMode.EXCLUSIVE

    def __post_init__(self) -> None:
        _check_text(self.reader, "reader")

    def encode_body(self, out: _Writer) -> None:
        out.text(self.reader)
        out.u8(self.mode)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        reader = body.text()
        try:
            mode = ShareMode(body.u8())
        except ValueError as exc:
            raise RemoteProtocolError(str(exc)) from exc
        return cls(reader, mode)


@dataclass(frozen=True, slots=True)
class Detach(_Message):
    """End attachments: of ``reader`` ("" = any reader), of ``session`` ("" = any session)."""

    TYPE: ClassVar[MessageType] = MessageType.DETACH
    reader: str = ""
    session: str = ""

    def __post_init__(self) -> None:
        _check_text(self.reader, "reader")
        _check_text(self.session, "session")

    def encode_body(self, out: _Writer) -> None:
        out.text(self.reader)
        out.text(self.session)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        reader = body.text()
        return cls(reader, body.text())


def _reason(body: _Reader) -> EndReason:
    return EndReason(body.u8())


@dataclass(frozen=True, slots=True)
class End(_Message):
    """The endpoint ends its own attachment (detach, logout, shutdown)."""

    TYPE: ClassVar[MessageType] = MessageType.END
    reason: EndReason = EndReason.DETACH

    def encode_body(self, out: _Writer) -> None:
        out.u8(self.reason)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        return cls(_reason(body))


@dataclass(frozen=True, slots=True)
class PowerOn(_Message):
    """The remote reader powered the card: connect, or cold-reset a used card."""

    TYPE: ClassVar[MessageType] = MessageType.POWER_ON


@dataclass(frozen=True, slots=True)
class PowerOff(_Message):
    """The remote reader cut power: the next power on resets the card."""

    TYPE: ClassVar[MessageType] = MessageType.POWER_OFF


@dataclass(frozen=True, slots=True)
class Reset(_Message):
    """The remote reader reset the card (warm)."""

    TYPE: ClassVar[MessageType] = MessageType.RESET


@dataclass(frozen=True, slots=True)
class Transmit(_Message):
    """One command APDU for the card."""

    TYPE: ClassVar[MessageType] = MessageType.TRANSMIT
    apdu: bytes

    def __post_init__(self) -> None:
        _check_size(self.apdu, "APDU", 1, MAX_APDU)

    def encode_body(self, out: _Writer) -> None:
        out.bytes32(self.apdu)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        return cls(body.bytes32())


@dataclass(frozen=True, slots=True)
class PairRequest(_Message):
    """Pairing, step 1: the endpoint's certificate (DER) and nonce, in the clear of TLS."""

    TYPE: ClassVar[MessageType] = MessageType.PAIR_REQUEST
    certificate: bytes
    nonce: bytes
    name: str = ""

    def __post_init__(self) -> None:
        _check_size(self.certificate, "certificate", 1, _U16_MAX)
        _check_size(self.nonce, "nonce", NONCE_SIZE, NONCE_SIZE)
        _check_text(self.name, "name")

    def encode_body(self, out: _Writer) -> None:
        out.bytes16(self.certificate)
        out.raw(self.nonce)
        out.text(self.name)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        certificate = body.bytes16()
        nonce = body.take(NONCE_SIZE)
        return cls(certificate, nonce, body.text())


@dataclass(frozen=True, slots=True)
class PairProof(_Message):
    """Pairing, step 3: the endpoint's proof that it knows the code."""

    TYPE: ClassVar[MessageType] = MessageType.PAIR_PROOF
    mac: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_size(self.mac, "mac", MAC_SIZE, MAC_SIZE)

    def encode_body(self, out: _Writer) -> None:
        out.raw(self.mac)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        return cls(body.take(MAC_SIZE))


@dataclass(frozen=True, slots=True)
class Welcome(_Message):
    """Reply to HELLO: the service's protocol version and name."""

    TYPE: ClassVar[MessageType] = MessageType.WELCOME
    name: str
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.version <= 0xFF:
            raise ValueError("version out of range")
        _check_text(self.name, "name")

    def encode_body(self, out: _Writer) -> None:
        out.u8(self.version)
        out.text(self.name)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        version = body.u8()
        return cls(body.text(), version)


@dataclass(frozen=True, slots=True)
class ReaderInfo:
    """One line of a listing: the stable name, the PC/SC name, the state, the holder."""

    name: str
    pcsc_name: str
    state: ReaderState
    session: str = ""

    def __post_init__(self) -> None:
        for value, what in ((self.name, "name"), (self.pcsc_name, "pcsc_name")):
            _check_text(value, what)
        _check_text(self.session, "session")


@dataclass(frozen=True, slots=True)
class Readers(_Message):
    """Reply to LIST_READERS."""

    TYPE: ClassVar[MessageType] = MessageType.READERS
    readers: tuple[ReaderInfo, ...] = ()

    def __post_init__(self) -> None:
        if len(self.readers) > _U16_MAX:
            raise ValueError("too many readers")

    def encode_body(self, out: _Writer) -> None:
        out.u16(len(self.readers))
        for reader in self.readers:
            out.text(reader.name)
            out.text(reader.pcsc_name)
            out.u8(reader.state)
            out.text(reader.session)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        readers: list[ReaderInfo] = []
        for _ in range(body.u16()):
            name, pcsc_name = body.text(), body.text()
            try:
                state = ReaderState(body.u8())
            except ValueError as exc:
                raise RemoteProtocolError(str(exc)) from exc
            readers.append(ReaderInfo(name, pcsc_name, state, body.text()))
        return cls(tuple(readers))


def _atr(body: _Reader, low: int) -> bytes:
    atr = body.bytes16()
    if not low <= len(atr) <= ATR_MAX:
        raise RemoteProtocolError(f"ATR of {len(atr)} bytes")
    return atr


class _AtrMessage(_Message):
    """A message whose body is one ATR (at least ``ATR_MIN`` bytes)."""

    __slots__ = ()
    ATR_MIN: ClassVar[int] = 1
    atr: bytes

    def __post_init__(self) -> None:
        _check_size(self.atr, "ATR", self.ATR_MIN, ATR_MAX)

    def encode_body(self, out: _Writer) -> None:
        out.bytes16(self.atr)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        return cls(_atr(body, cls.ATR_MIN))  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class Attached(_AtrMessage):
    """Reply to ATTACH: the card's ATR, or b"" when the reader is empty."""

    TYPE: ClassVar[MessageType] = MessageType.ATTACHED
    ATR_MIN: ClassVar[int] = 0
    atr: bytes = b""


@dataclass(frozen=True, slots=True)
class Ok(_Message):
    """Plain success; ``count`` says how many attachments a DETACH ended."""

    TYPE: ClassVar[MessageType] = MessageType.OK
    count: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.count <= _U16_MAX:
            raise ValueError("count out of range")

    def encode_body(self, out: _Writer) -> None:
        out.u16(self.count)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        return cls(body.u16())


@dataclass(frozen=True, slots=True)
class Atr(_AtrMessage):
    """Reply to POWER_ON and RESET: the card's ATR now."""

    TYPE: ClassVar[MessageType] = MessageType.ATR
    atr: bytes


@dataclass(frozen=True, slots=True)
class Response(_Message):
    """Reply to TRANSMIT: the response APDU (at least the two status bytes)."""

    TYPE: ClassVar[MessageType] = MessageType.RESPONSE
    apdu: bytes

    def __post_init__(self) -> None:
        _check_size(self.apdu, "response", 2, MAX_APDU)

    def encode_body(self, out: _Writer) -> None:
        out.bytes32(self.apdu)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        apdu = body.bytes32()
        if not 2 <= len(apdu) <= MAX_APDU:
            raise RemoteProtocolError(f"response of {len(apdu)} bytes")
        return cls(apdu)


@dataclass(frozen=True, slots=True)
class Error(_Message):
    """A request failed."""

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    code: ErrorCode
    message: str = ""

    def __post_init__(self) -> None:
        _check_text(self.message, "message")

    def encode_body(self, out: _Writer) -> None:
        out.u8(self.code)
        out.text(self.message)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        code = ErrorCode(body.u8())
        return cls(code, body.text())


@dataclass(frozen=True, slots=True)
class PairChallenge(_Message):
    """Pairing, step 2: the service's nonce and its proof that it knows the code."""

    TYPE: ClassVar[MessageType] = MessageType.PAIR_CHALLENGE
    nonce: bytes
    mac: bytes = field(repr=False)
    name: str = ""

    def __post_init__(self) -> None:
        _check_size(self.nonce, "nonce", NONCE_SIZE, NONCE_SIZE)
        _check_size(self.mac, "mac", MAC_SIZE, MAC_SIZE)
        _check_text(self.name, "name")

    def encode_body(self, out: _Writer) -> None:
        out.raw(self.nonce)
        out.raw(self.mac)
        out.text(self.name)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        nonce = body.take(NONCE_SIZE)
        mac = body.take(MAC_SIZE)
        return cls(nonce, mac, body.text())


@dataclass(frozen=True, slots=True)
class Paired(_Message):
    """Pairing, step 4: the service pinned the endpoint's certificate."""

    TYPE: ClassVar[MessageType] = MessageType.PAIRED


@dataclass(frozen=True, slots=True)
class CardInserted(_AtrMessage):
    """Event: a card is in the attached reader (and connected)."""

    TYPE: ClassVar[MessageType] = MessageType.CARD_INSERTED
    atr: bytes


@dataclass(frozen=True, slots=True)
class CardRemoved(_Message):
    """Event: the attached reader is empty now."""

    TYPE: ClassVar[MessageType] = MessageType.CARD_REMOVED


@dataclass(frozen=True, slots=True)
class Detached(_Message):
    """Event: the attachment ended on the service's side; the reader must go."""

    TYPE: ClassVar[MessageType] = MessageType.DETACHED
    reason: EndReason = EndReason.DETACH

    def encode_body(self, out: _Writer) -> None:
        out.u8(self.reason)

    @classmethod
    def decode_body(cls, body: _Reader) -> Self:
        return cls(_reason(body))


Request: TypeAlias = (
    Hello
    | ListReaders
    | Attach
    | Detach
    | End
    | PowerOn
    | PowerOff
    | Reset
    | Transmit
    | PairRequest
    | PairProof
)
Reply: TypeAlias = (
    Welcome | Readers | Attached | Ok | Atr | Response | Error | PairChallenge | Paired
)
Notice: TypeAlias = CardInserted | CardRemoved | Detached
Message: TypeAlias = Request | Reply | Notice

REQUEST_TYPES: Final[tuple[type[Request], ...]] = (
    Hello,
    ListReaders,
    Attach,
    Detach,
    End,
    PowerOn,
    PowerOff,
    Reset,
    Transmit,
    PairRequest,
    PairProof,
)
REPLY_TYPES: Final[tuple[type[Reply], ...]] = (
    Welcome,
    Readers,
    Attached,
    Ok,
    Atr,
    Response,
    Error,
    PairChallenge,
    Paired,
)
NOTICE_TYPES: Final[tuple[type[Notice], ...]] = (CardInserted, CardRemoved, Detached)

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
    PairRequest: frozenset({PairChallenge}),
    PairProof: frozenset({Paired}),
}

_DECODERS: Final[dict[int, Callable[[_Reader], Message]]] = {
    kind.TYPE: kind.decode_body for kind in (*REQUEST_TYPES, *REPLY_TYPES, *NOTICE_TYPES)
}


def encode(message: Message) -> bytes:
    """One framed message."""
    out = _Writer()
    out.u8(message.TYPE)
    message.encode_body(out)
    body = b"".join(out.parts)
    if len(body) > MAX_FRAME:
        raise LocalProtocolError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


def decode(frame: bytes) -> Message:
    """A message from one frame's payload (type byte + body)."""
    if not frame:
        raise RemoteProtocolError("empty frame")
    decoder = _DECODERS.get(frame[0])
    if decoder is None:
        raise RemoteProtocolError(f"unknown message type {frame[0]:02X}")
    body = _Reader(frame[1:])
    try:
        message = decoder(body)
    except ValueError as exc:  # a field the dataclass refuses
        raise RemoteProtocolError(f"{MessageType(frame[0]).name}: {exc}") from exc
    body.finish()
    return message


# --- the connection --------------------------------------------------------------------


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
        if len(buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer)
            if not 1 <= length <= self._max_frame:
                raise RemoteProtocolError(f"frame length {length}")
            end = _LENGTH.size + length
            if len(buffer) >= end:
                message = decode(bytes(buffer[_LENGTH.size : end]))
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
