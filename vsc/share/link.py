"""A TLS socket carrying the link codec: non-blocking reads, bounded writes.

Both ends wait in a selector on several things at once (the link, vpcd,
wake-up pipes), so the TLS socket is non-blocking after the handshake and
never read and written from two threads. :meth:`LinkSocket.receive` drains
what is readable, including what OpenSSL has already decrypted and
buffered (``pending()``), which a selector cannot see. It decodes as it
reads, so a bad frame header ends the link after one read, and it reads at
most ``_FILL_BUDGET`` bytes per call: a peer that never pauses can neither
make us buffer without bound nor keep the caller from its other duties
(what is left stays readable, for the caller's next turn).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import time
from collections import deque
from typing import Final

from .protocol import (
    NEED_DATA,
    REPLY_TYPES,
    ConnectionClosed,
    LinkConnection,
    LinkError,
    Message,
    Reply,
    Role,
)
from .tls import tune

__all__ = ["LinkClosed", "LinkSocket", "LinkTimeout", "connect_tls", "handshake"]

_RECV_SIZE: Final = 0x10000
_FILL_BUDGET: Final = 4 * _RECV_SIZE
DEFAULT_TIMEOUT: Final = 10.0


class LinkClosed(ConnectionError):
    """The link ended (peer closed it, TLS failed, or it broke the protocol)."""


class LinkTimeout(LinkClosed, TimeoutError):
    """A bounded wait on the link ran out."""


class LinkSocket:
    """One TLS connection plus its :class:`LinkConnection`.

    Messages read but not yet handed out wait in an inbox, so an event that
    arrives right behind a reply is kept for the next :meth:`receive`.
    """

    def __init__(self, sock: ssl.SSLSocket, role: Role) -> None:
        self.sock = sock
        self.codec = LinkConnection(role)
        self.closed = False
        self._inbox: deque[Message | ConnectionClosed] = deque()
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[Message | ConnectionClosed]:
        """Everything that can be read now, as messages; ends with ConnectionClosed at EOF.

        Raises :class:`LinkClosed` on a TLS error or a protocol violation.
        """
        self._fill()
        items = list(self._inbox)
        self._inbox.clear()
        return items

    def _fill(self) -> None:
        budget = _FILL_BUDGET
        while not self.closed and not self.codec.closed and budget > 0:
            try:
                data = self.sock.recv(_RECV_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except (OSError, ssl.SSLError) as exc:  # reset, or an alert such as unknown CA
                raise LinkClosed(f"link failed: {exc}") from exc
            self.codec.receive_data(data)
            if not data:
                break
            budget -= len(data)
            self._decode()  # a bad frame header ends the link now, not when the peer pauses
        self._decode()

    def _decode(self) -> None:
        try:
            while (event := self.codec.next_event()) is not NEED_DATA:
                self._inbox.append(event)
                if isinstance(event, ConnectionClosed):
                    break
        except LinkError as exc:
            raise LinkClosed(f"protocol error: {exc}") from exc

    def send(self, message: Message, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Send one message; raise :class:`LinkClosed` if it cannot go out in ``timeout``."""
        try:
            data = memoryview(self.codec.send(message))
        except LinkError as exc:
            raise LinkClosed(f"cannot send {type(message).__name__}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while data:
            try:
                sent = self.sock.send(data)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            except (OSError, ssl.SSLError) as exc:
                raise LinkClosed(f"link failed while sending: {exc}") from exc
            data = data[sent:]
            if data and not _wait(self.sock, selectors.EVENT_WRITE, deadline):
                raise LinkTimeout("link stalled while sending")

    def request(
        self, message: Message, timeout: float = DEFAULT_TIMEOUT
    ) -> tuple[Reply, list[Message]]:
        """Send a request and wait for its reply; also returns the events that came first."""
        self.send(message, timeout)
        deadline = time.monotonic() + timeout
        events: list[Message] = []
        while True:
            self._fill()
            while self._inbox:
                item = self._inbox.popleft()
                if isinstance(item, ConnectionClosed):
                    raise LinkClosed("the service closed the link")
                if isinstance(item, REPLY_TYPES):
                    return item, events
                events.append(item)
            if not _wait(self.sock, selectors.EVENT_READ, deadline):
                raise LinkTimeout(f"no reply to {type(message).__name__} within {timeout} s")

    def wait_readable(self, timeout: float) -> bool:
        """Whether the link has something to read within ``timeout`` seconds."""
        return _wait(self.sock, selectors.EVENT_READ, time.monotonic() + max(0.0, timeout))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError, ssl.SSLError):
            self.sock.close()


def _wait(sock: socket.socket, events: int, deadline: float | None) -> bool:
    if events == selectors.EVENT_READ and isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    with selectors.DefaultSelector() as selector:
        selector.register(sock, events)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return bool(selector.select(remaining))


def handshake(tls: ssl.SSLSocket, deadline: float) -> None:
    """Complete the TLS handshake by ``deadline`` (monotonic), however the bytes trickle in.

    Leaves the socket non-blocking. Raises ``TimeoutError`` when time is up,
    ``ssl.SSLError`` or ``OSError`` when the handshake fails.
    """
    tls.setblocking(False)
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            events = selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            events = selectors.EVENT_WRITE
        if not _wait(tls, events, deadline):
            raise TimeoutError("the TLS handshake did not finish in time")


def connect_tls(
    address: tuple[str, int],
    context: ssl.SSLContext,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> ssl.SSLSocket:
    """Open TCP to ``address`` and complete the TLS handshake, all within ``timeout``."""
    deadline = time.monotonic() + timeout
    raw = socket.create_connection(address, timeout=timeout)
    try:
        tune(raw)
        tls = context.wrap_socket(raw, server_side=False, do_handshake_on_connect=False)
    except BaseException:
        raw.close()
        raise
    try:
        handshake(tls, deadline)
        tls.settimeout(timeout)
    except BaseException:
        tls.close()
        raise
    return tls
