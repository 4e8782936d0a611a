"""The link's messages (frozen dataclasses, one per type byte) and their framing.

Each message declares its body once, in wire order (``FIELDS``, see
:mod:`.fields`); :func:`encode` frames one message (a 4-byte big-endian
length, the type byte, the body) and :func:`decode` reads one frame's
payload back. Requests go from the endpoint to the service, replies and
events (``Notice``) the other way; which reply answers which request is the
connection's business (:mod:`.connection`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeAlias

from .fields import U8, U16, Blob, BodyReader, BodyWriter, Code, Fixed, Items, Struct, Text
from .wire import (
    ATR_MAX,
    INSTANCE_SIZE,
    MAC_SIZE,
    MAX_APDU,
    MAX_FRAME,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    EndReason,
    ErrorCode,
    LocalProtocolError,
    MessageType,
    ReaderState,
    RemoteProtocolError,
    ShareMode,
)

__all__ = [
    "FRAME_HEADER",
    "NOTICE_TYPES",
    "REPLY_TYPES",
    "REQUEST_TYPES",
    "Atr",
    "Attach",
    "Attached",
    "CardInserted",
    "CardRemoved",
    "Detach",
    "Detached",
    "End",
    "Error",
    "Hello",
    "ListReaders",
    "Message",
    "Notice",
    "Ok",
    "PairChallenge",
    "PairProof",
    "PairRequest",
    "Paired",
    "Ping",
    "PowerOff",
    "PowerOn",
    "ReaderInfo",
    "Readers",
    "Reply",
    "Request",
    "Reset",
    "Response",
    "Transmit",
    "Welcome",
    "decode",
    "encode",
]

#: A frame starts with the length of what follows (type byte + body).
FRAME_HEADER: Final = struct.Struct(">I")

# Field kinds used by several messages.
_TEXT: Final = Text()
_U8: Final = U8()
_APDU: Final = Blob(4, 1, MAX_APDU)
_RESPONSE: Final = Blob(4, 2, MAX_APDU)
_ATR: Final = Blob(2, 1, ATR_MAX)
_NONCE: Final = Fixed(NONCE_SIZE)
_MAC: Final = Fixed(MAC_SIZE)
_REASON: Final = Code(EndReason)


class _Message(Struct):
    """Base of the messages: a type byte, then the fields."""

    __slots__ = ()
    TYPE: ClassVar[MessageType]


# --- requests (endpoint -> service) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(_Message):
    """First request of a session: protocol version, the remote session, this endpoint's run.

    An ATTACH of a reader the session holds from a new ``instance`` tells the
    service the endpoint restarted: the old attachment ends and moves here.
    """

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    FIELDS = (("version", _U8), ("session", _TEXT), ("instance", Fixed(INSTANCE_SIZE)))
    session: str
    instance: bytes
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class ListReaders(_Message):
    """Ask for the reader listing."""

    TYPE: ClassVar[MessageType] = MessageType.LIST_READERS


@dataclass(frozen=True, slots=True)
class Attach(_Message):
    """Attach ``reader`` ("Reader 1") to this connection's session."""

    TYPE: ClassVar[MessageType] = MessageType.ATTACH
    FIELDS = (("reader", _TEXT), ("mode", Code(ShareMode)))
    reader: str
    mode: ShareMode = ShareMode.EXCLUSIVE


@dataclass(frozen=True, slots=True)
class Detach(_Message):
    """End attachments: of ``reader`` ("" = any reader), of ``session`` ("" = any session)."""

    TYPE: ClassVar[MessageType] = MessageType.DETACH
    FIELDS = (("reader", _TEXT), ("session", _TEXT))
    reader: str = ""
    session: str = ""


@dataclass(frozen=True, slots=True)
class End(_Message):
    """The endpoint ends its own attachment (detach, logout, shutdown)."""

    TYPE: ClassVar[MessageType] = MessageType.END
    FIELDS = (("reason", _REASON),)
    reason: EndReason = EndReason.DETACH


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
    FIELDS = (("apdu", _APDU),)
    apdu: bytes


@dataclass(frozen=True, slots=True)
class Ping(_Message):
    """The endpoint's keepalive, sent when the link has been quiet: answered by OK."""

    TYPE: ClassVar[MessageType] = MessageType.PING


@dataclass(frozen=True, slots=True)
class PairRequest(_Message):
    """Pairing, step 1: the endpoint's certificate (DER) and nonce, in the clear of TLS."""

    TYPE: ClassVar[MessageType] = MessageType.PAIR_REQUEST
    FIELDS = (("certificate", Blob(2, 1)), ("nonce", _NONCE), ("name", _TEXT))
    certificate: bytes
    nonce: bytes
    name: str = ""


@dataclass(frozen=True, slots=True)
class PairProof(_Message):
    """Pairing, step 3: the endpoint's proof that it knows the code."""

    TYPE: ClassVar[MessageType] = MessageType.PAIR_PROOF
    FIELDS = (("mac", _MAC),)
    mac: bytes = field(repr=False)


# --- replies (service -> endpoint) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome(_Message):
    """Reply to HELLO: the service's protocol version and name."""

    TYPE: ClassVar[MessageType] = MessageType.WELCOME
    FIELDS = (("version", _U8), ("name", _TEXT))
    name: str
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class ReaderInfo(Struct):
    """One line of a listing: the stable name, the PC/SC name, the state, the holder."""

    FIELDS = (
        ("name", _TEXT),
        ("pcsc_name", _TEXT),
        ("state", Code(ReaderState)),
        ("session", _TEXT),
    )
    name: str
    pcsc_name: str
    state: ReaderState
    session: str = ""


@dataclass(frozen=True, slots=True)
class Readers(_Message):
    """Reply to LIST_READERS."""

    TYPE: ClassVar[MessageType] = MessageType.READERS
    FIELDS = (("readers", Items(ReaderInfo)),)
    readers: tuple[ReaderInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Attached(_Message):
    """Reply to ATTACH: the card's ATR (b"" when the reader is empty) and the reader's
    stable name (ATTACH may name it in any case, or by a unique prefix)."""

    TYPE: ClassVar[MessageType] = MessageType.ATTACHED
    FIELDS = (("atr", Blob(2, 0, ATR_MAX)), ("reader", _TEXT))
    atr: bytes = b""
    reader: str = ""


@dataclass(frozen=True, slots=True)
class Ok(_Message):
    """Plain success; ``count`` says how many attachments a DETACH ended."""

    TYPE: ClassVar[MessageType] = MessageType.OK
    FIELDS = (("count", U16()),)
    count: int = 0


@dataclass(frozen=True, slots=True)
class Atr(_Message):
    """Reply to POWER_ON and RESET: the card's ATR now."""

    TYPE: ClassVar[MessageType] = MessageType.ATR
    FIELDS = (("atr", _ATR),)
    atr: bytes


@dataclass(frozen=True, slots=True)
class Response(_Message):
    """Reply to TRANSMIT: the response APDU (at least the two status bytes)."""

    TYPE: ClassVar[MessageType] = MessageType.RESPONSE
    FIELDS = (("apdu", _RESPONSE),)
    apdu: bytes


@dataclass(frozen=True, slots=True)
class Error(_Message):
    """A request failed."""

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    FIELDS = (("code", Code(ErrorCode)), ("message", _TEXT))
    code: ErrorCode
    message: str = ""


@dataclass(frozen=True, slots=True)
class PairChallenge(_Message):
    """Pairing, step 2: the service's nonce and its proof that it knows the code."""

    TYPE: ClassVar[MessageType] = MessageType.PAIR_CHALLENGE
    FIELDS = (("nonce", _NONCE), ("mac", _MAC), ("name", _TEXT))
    nonce: bytes
    mac: bytes = field(repr=False)
    name: str = ""


@dataclass(frozen=True, slots=True)
class Paired(_Message):
    """Pairing, step 4: the service pinned the endpoint's certificate."""

    TYPE: ClassVar[MessageType] = MessageType.PAIRED


# --- events (service -> endpoint, any time) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardInserted(_Message):
    """Event: a card is in the attached reader (and connected)."""

    TYPE: ClassVar[MessageType] = MessageType.CARD_INSERTED
    FIELDS = (("atr", _ATR),)
    atr: bytes


@dataclass(frozen=True, slots=True)
class CardRemoved(_Message):
    """Event: the attached reader is empty now."""

    TYPE: ClassVar[MessageType] = MessageType.CARD_REMOVED


@dataclass(frozen=True, slots=True)
class Detached(_Message):
    """Event: the attachment ended on the service's side; the reader must go."""

    TYPE: ClassVar[MessageType] = MessageType.DETACHED
    FIELDS = (("reason", _REASON),)
    reason: EndReason = EndReason.DETACH


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
    | Ping
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
    Ping,
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

_DECODERS: Final[dict[int, Callable[[BodyReader], Message]]] = {
    kind.TYPE: kind.read_fields for kind in (*REQUEST_TYPES, *REPLY_TYPES, *NOTICE_TYPES)
}


def encode(message: Message) -> bytes:
    """One framed message."""
    out = BodyWriter()
    out.add(message.TYPE.to_bytes(1, "big"))
    message.write_fields(out)
    body = b"".join(out.parts)
    if len(body) > MAX_FRAME:
        raise LocalProtocolError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return FRAME_HEADER.pack(len(body)) + body


def decode(frame: bytes) -> Message:
    """A message from one frame's payload (type byte + body)."""
    if not frame:
        raise RemoteProtocolError("empty frame")
    decoder = _DECODERS.get(frame[0])
    if decoder is None:
        raise RemoteProtocolError(f"unknown message type {frame[0]:02X}")
    body = BodyReader(frame[1:])
    try:
        message = decoder(body)
    except ValueError as exc:  # a field the dataclass refuses
        raise RemoteProtocolError(f"{MessageType(frame[0]).name}: {exc}") from exc
    body.finish()
    return message
