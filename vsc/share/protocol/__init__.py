"""The share link: messages between a remote endpoint and a local share service.

Theory of operation
-------------------
The link runs inside TLS 1.3 (:mod:`vsc.share.tls`); this package only turns
messages into bytes and back, like h11, and keeps the two apart as h11 does:

* :mod:`.wire` -- the vocabulary: sizes, the type byte, the enums, the errors;
* :mod:`.fields` -- how a body is laid out (fixed-size integers, byte strings
  with a 2- or 4-byte length, UTF-8 strings with a 2-byte length, lists), and
  the one reader and writer of bodies, which checks every length and value;
* :mod:`.messages` -- the messages and their framing: a 4-byte big-endian
  length, then the type byte and the body, which must be consumed exactly.
  Each message is declared once: ``@message(MessageType.X)`` (its type byte;
  a frozen, slotted dataclass) and ``FIELDS``, its body in wire order;
* :mod:`.connection` -- :class:`LinkConnection`, one end of a link: feed
  received bytes to :meth:`~LinkConnection.receive_data` (``b""`` = end of
  stream), pull messages with :meth:`~LinkConnection.next_event` until
  :data:`NEED_DATA`, and write what :meth:`~LinkConnection.send` returns. No
  I/O happens here.

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
:class:`RemoteProtocolError`; after one, the connection stays broken. The
encoding is canonical (what decodes re-encodes to the same bytes, but for a
code read as ``UNKNOWN``), and the bytes of every message are pinned by
tests: changing them takes a new :data:`PROTOCOL_VERSION`.

The session rules (hello first, attach before power and APDUs, who may
detach what) are the service's business (:mod:`vsc.share.service`).
"""

from .connection import NEED_DATA, REPLIES, ConnectionClosed, LinkConnection, NeedData, Role
from .messages import (
    NOTICE_TYPES,
    REPLY_TYPES,
    REQUEST_TYPES,
    Atr,
    Attach,
    Attached,
    CardInserted,
    CardRemoved,
    Detach,
    Detached,
    End,
    Error,
    Hello,
    ListReaders,
    Message,
    Notice,
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
    Reply,
    Request,
    Reset,
    Response,
    Transmit,
    Welcome,
    decode,
    encode,
)
from .wire import (
    ATR_MAX,
    DEFAULT_PORT,
    INSTANCE_SIZE,
    KEEPALIVE_INTERVAL,
    MAC_SIZE,
    MAX_APDU,
    MAX_FRAME,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    EndReason,
    ErrorCode,
    LinkError,
    LocalProtocolError,
    MessageType,
    ReaderState,
    RemoteProtocolError,
    ShareMode,
)

__all__ = [
    "ATR_MAX",
    "DEFAULT_PORT",
    "INSTANCE_SIZE",
    "KEEPALIVE_INTERVAL",
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
    "Ping",
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
    "decode",
    "encode",
]
