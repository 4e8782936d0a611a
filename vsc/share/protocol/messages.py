"""The link's messages (frozen dataclasses, one per type byte) and their framing.

A message is declared once: :func:`message` gives a class its type byte and
makes it a frozen, slotted dataclass, and ``FIELDS`` lays out its body in wire
order (see :mod:`.fields`). :func:`encode` frames one message (a 4-byte
big-endian length, the type byte, the body) and :func:`decode` reads one
frame's payload back. Requests go from the endpoint to the service, replies
and events (``Notice``) the other way; which reply answers which request is
the connection's business (:mod:`.connection`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeAlias, TypeVar, dataclass_transform, get_args

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
    "message",
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


_M = TypeVar("_M", bound=_Message)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def message(kind: MessageType) -> Callable[[type[_M]], type[_M]]:
    """Declare the message sent with type byte ``kind``: a frozen, slotted dataclass."""

    def declare(cls: type[_M]) -> type[_M]:
        cls.TYPE = kind
        return dataclass(frozen=True, slots=True)(cls)

    return declare


# --- requests (endpoint -> service) ---------------------------------------------------------


@message(MessageType.HELLO)
class Hello(_Message):
    """First request of a session: protocol version, the remote session, this endpoint's run.

    An ATTACH of a reader the session holds from a new ``instance`` tells the
    service the endpoint restarted: the old attachment ends and moves here.
    """

    FIELDS = (("version", _U8), ("session", _TEXT), ("instance", Fixed(INSTANCE_SIZE)))
    session: str
    instance: bytes
    version: int = PROTOCOL_VERSION


@message(MessageType.LIST_READERS)
class ListReaders(_Message):
    """Ask for the reader listing."""


@message(MessageType.ATTACH)
class Attach(_Message):
    """Attach ``reader`` ("Reader 1") to this connection's session."""

    FIELDS = (("reader", _TEXT), ("mode", Code(ShareMode)))
    reader: str
    mode: ShareMode = ShareMode.EXCLUSIVE


@message(MessageType.DETACH)
class Detach(_Message):
    """End attachments: of ``reader`` ("" = any reader), of ``session`` ("" = any session)."""

    FIELDS = (("reader", _TEXT), ("session", _TEXT))
    reader: str = ""
    session: str = ""


@message(MessageType.END)
class End(_Message):
    """The endpoint ends its own attachment (detach, logout, shutdown)."""

    FIELDS = (("reason", _REASON),)
    reason: EndReason = EndReason.DETACH


@message(MessageType.POWER_ON)
class PowerOn(_Message):
    """The remote reader powered the card: connect, or cold-reset a used card."""


@message(MessageType.POWER_OFF)
class PowerOff(_Message):
    """The remote reader cut power: the next power on resets the card."""


@message(MessageType.RESET)
class Reset(_Message):
    """The remote reader reset the card (warm)."""


@message(MessageType.TRANSMIT)
class Transmit(_Message):
    """One command APDU for the card."""

    FIELDS = (("apdu", _APDU),)
    apdu: bytes


@message(MessageType.PING)
class Ping(_Message):
    """The endpoint's keepalive, sent when the link has been quiet: answered by OK."""


@message(MessageType.PAIR_REQUEST)
class PairRequest(_Message):
    """Pairing, step 1: the endpoint's certificate (DER) and nonce, in the clear of TLS."""

    FIELDS = (("certificate", Blob(2, 1)), ("nonce", _NONCE), ("name", _TEXT))
    certificate: bytes
    nonce: bytes
    name: str = ""


@message(MessageType.PAIR_PROOF)
class PairProof(_Message):
    """Pairing, step 3: the endpoint's proof that it knows the code."""

    FIELDS = (("mac", _MAC),)
    mac: bytes = field(repr=False)


# --- replies (service -> endpoint) ----------------------------------------------------------


@message(MessageType.WELCOME)
class Welcome(_Message):
    """Reply to HELLO: the service's protocol version and name."""

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


@message(MessageType.READERS)
class Readers(_Message):
    """Reply to LIST_READERS."""

    FIELDS = (("readers", Items(ReaderInfo)),)
    readers: tuple[ReaderInfo, ...] = ()


@message(MessageType.ATTACHED)
class Attached(_Message):
    """Reply to ATTACH: the card's ATR (b"" when the reader is empty) and the reader's
    stable name (ATTACH may name it in any case, or by a unique prefix)."""

    FIELDS = (("atr", Blob(2, 0, ATR_MAX)), ("reader", _TEXT))
    atr: bytes = b""
    reader: str = ""


@message(MessageType.OK)
class Ok(_Message):
    """Plain success; ``count`` says how many attachments a DETACH ended."""

    FIELDS = (("count", U16()),)
    count: int = 0


@message(MessageType.ATR)
class Atr(_Message):
    """Reply to POWER_ON and RESET: the card's ATR now."""

    FIELDS = (("atr", _ATR),)
    atr: bytes


@message(MessageType.RESPONSE)
class Response(_Message):
    """Reply to TRANSMIT: the response APDU (at least the two status bytes)."""

    FIELDS = (("apdu", _RESPONSE),)
    apdu: bytes


@message(MessageType.ERROR)
class Error(_Message):
    """A request failed."""

    FIELDS = (("code", Code(ErrorCode)), ("message", _TEXT))
    code: ErrorCode
    message: str = ""


@message(MessageType.PAIR_CHALLENGE)
class PairChallenge(_Message):
    """Pairing, step 2: the service's nonce and its proof that it knows the code."""

    FIELDS = (("nonce", _NONCE), ("mac", _MAC), ("name", _TEXT))
    nonce: bytes
    mac: bytes = field(repr=False)
    name: str = ""


@message(MessageType.PAIRED)
class Paired(_Message):
    """Pairing, step 4: the service pinned the endpoint's certificate."""


# --- events (service -> endpoint, any time) -------------------------------------------------


@message(MessageType.CARD_INSERTED)
class CardInserted(_Message):
    """Event: a card is in the attached reader (and connected)."""

    FIELDS = (("atr", _ATR),)
    atr: bytes


@message(MessageType.CARD_REMOVED)
class CardRemoved(_Message):
    """Event: the attached reader is empty now."""


@message(MessageType.DETACHED)
class Detached(_Message):
    """Event: the attachment ended on the service's side; the reader must go."""

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

# The unions above are the one list of who sends what; isinstance() wants tuples.
REQUEST_TYPES: Final[tuple[type[Request], ...]] = get_args(Request)
REPLY_TYPES: Final[tuple[type[Reply], ...]] = get_args(Reply)
NOTICE_TYPES: Final[tuple[type[Notice], ...]] = get_args(Notice)

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
        decoded = decoder(body)
    except ValueError as exc:  # a field the dataclass refuses
        raise RemoteProtocolError(f"{MessageType(frame[0]).name}: {exc}") from exc
    body.finish()
    return decoded
