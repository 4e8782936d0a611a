"""The APDU trace: every command and response at its own log level.

Logger ``vsc.apdu``, level :data:`TRACE` (5, below DEBUG). Formatting is
lazy: the card checks ``isEnabledFor`` once per APDU, and the hex dump is
only built when a handler actually emits the record. What is secret (PINs,
keys, protected objects; :mod:`vsc.masking` decides) is replaced by its
length: a command keeps its 4-byte header, a response its status word.
"""

from __future__ import annotations

import logging

from .masking import Mask

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

logger = logging.getLogger("vsc.apdu")


class Apdu:
    """A command or response for the trace: header and SW shown, secret data masked."""

    __slots__ = ("data", "head", "secret", "tail")

    def __init__(self, data: bytes, *, head: int, tail: int, secret: bool) -> None:
        self.data = data
        self.head = head
        self.tail = tail
        self.secret = secret

    def __str__(self) -> str:
        data = self.data
        if not self.secret or len(data) <= self.head + self.tail:
            return data.hex(" ").upper()
        body = len(data) - self.head - self.tail
        parts = [f"<{body} secret bytes>"]
        if self.head:
            parts.insert(0, data[: self.head].hex(" ").upper())
        if self.tail:
            parts.append(data[-self.tail :].hex(" ").upper())
        return " ".join(parts)


def command_text(command: bytes, mask: Mask) -> Apdu:
    """A command for a log record, its data hidden if ``mask`` says so."""
    return Apdu(command, head=4, tail=0, secret=Mask.COMMAND in mask)


def response_text(response: bytes, mask: Mask) -> Apdu:
    """A response for a log record, its data hidden if ``mask`` says so."""
    return Apdu(response, head=0, tail=2, secret=Mask.RESPONSE in mask)


def trace_exchange(channel: int, command: bytes, resp: bytes, mask: Mask) -> None:
    """Log one exchange. Call only when ``logger.isEnabledFor(TRACE)``."""
    logger.log(TRACE, "[%d] > %s", channel, command_text(command, mask))
    logger.log(TRACE, "[%d] < %s", channel, response_text(resp, mask))
