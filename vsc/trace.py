"""The APDU trace: every command and response at its own log level.

Logger ``vsc.apdu``, level :data:`TRACE` (5, below DEBUG). Formatting is
lazy: the card checks ``isEnabledFor`` once per APDU, and the hex dump is
only built when a handler actually emits the record. Data of the INS bytes an
applet declares secret (PINs, PUKs, keys) is replaced by its length.
"""

from __future__ import annotations

import logging

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
        parts = [data[: self.head].hex(" ").upper(), f"<{body} secret bytes>"]
        if self.tail:
            parts.append(data[-self.tail :].hex(" ").upper())
        return " ".join(parts)


def trace_exchange(channel: int, command: bytes, resp: bytes, secret: bool) -> None:
    """Log one exchange. Call only when ``logger.isEnabledFor(TRACE)``."""
    # Commands keep their 4-byte header; responses keep their status word.
    logger.log(TRACE, "[%d] > %s", channel, Apdu(command, head=4, tail=0, secret=secret))
    logger.log(TRACE, "[%d] < %s", channel, Apdu(resp, head=0, tail=2, secret=secret))
