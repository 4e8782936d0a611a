"""The link's vocabulary: sizes, the type byte, the enums carried in bodies, the errors.

Enums are named after their wire values; the codes a peer may extend
(:class:`EndReason`, :class:`ErrorCode`) read unknown values as ``UNKNOWN``
so a newer peer's code still prints, while the others refuse them.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

__all__ = [
    "ATR_MAX",
    "DEFAULT_PORT",
    "INSTANCE_SIZE",
    "KEEPALIVE_INTERVAL",
    "MAC_SIZE",
    "MAX_APDU",
    "MAX_FRAME",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "EndReason",
    "ErrorCode",
    "LinkError",
    "LocalProtocolError",
    "MessageType",
    "ReaderState",
    "RemoteProtocolError",
    "ShareMode",
]

#: 2: PING (the endpoint's keepalive) and the UNRESPONSIVE end reason.
PROTOCOL_VERSION: Final = 2
#: An attached endpoint sends something (a request, else PING) at least this often, in
#: seconds; the service takes a link silent four times as long for a dead peer.
KEEPALIVE_INTERVAL: Final = 5.0
#: The share service's TCP port unless told otherwise.
DEFAULT_PORT: Final = 35990
#: The largest frame (type byte + body) either side accepts.
MAX_FRAME: Final = 0x20000
#: The largest APDU carried: an extended case-4 command (4 + 3 + 65535 + 2).
MAX_APDU: Final = 65544
#: ISO 7816-3 caps an ATR at 33 bytes.
ATR_MAX: Final = 33
NONCE_SIZE: Final = 32
MAC_SIZE: Final = 32
INSTANCE_SIZE: Final = 16


class LinkError(Exception):
    """Base class of link protocol errors."""


class RemoteProtocolError(LinkError):
    """The peer broke the protocol; drop the connection."""


class LocalProtocolError(LinkError, ValueError):
    """We tried to send something the protocol does not allow."""


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
    PING = 0x0A
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
    UNRESPONSIVE = 7  # the peer stopped answering (keepalive; never sent on the wire)

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
