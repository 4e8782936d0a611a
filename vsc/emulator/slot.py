"""One slot: a card on one port, and the thread that serves its vpcd connections.

The hot path of the front-end is :meth:`_Slot._serve`: the fewest system
calls per APDU (usually two ``recv`` -- vpcd sends the length and the APDU
apart -- ``TCP_QUICKACK`` after each, one ``send``), blocking calls bounded
by the kernel (SO_RCVTIMEO/SO_SNDTIMEO) and ended early by
:meth:`Emulator.stop <vsc.emulator.server.Emulator.stop>` shutting the socket
down. Connecting and accepting wait on the emulator's selector instead.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ..card import Card
from ..vpcd import (
    NEED_DATA,
    ConnectionClosed,
    Event,
    GetAtr,
    RemoteProtocolError,
    VpcdConnection,
    respond,
    respond_apdu,
)

if TYPE_CHECKING:
    from .server import Emulator

log = logging.getLogger("vsc.emulator")

_CONNECT_TIMEOUT: Final = 5.0
_RECV_SIZE: Final = 0x10000 + 2
_SW_UNKNOWN: Final = b"\x6f\x00"


class _Drop(Exception):
    """End this connection (the slot then reconnects)."""


#: Linux only; elsewhere vpcd's split writes cost the delayed-ACK stall.
_QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)


def _quickack(sock: socket.socket) -> Callable[[], None]:
    """A call that sets TCP_QUICKACK on ``sock`` (a no-op where there is none).

    Linux drops out of quick-ACK mode whenever we send, hence a call after
    every recv. A partial of the bound method: no Python frame twice per APDU.
    """
    if _QUICKACK is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return _no_quickack
    return functools.partial(sock.setsockopt, socket.IPPROTO_TCP, _QUICKACK, 1)


def _no_quickack() -> None:
    return None


def _tune(sock: socket.socket, timeout: float) -> None:
    """A blocking socket whose every recv and send gives up after ``timeout`` seconds.

    The kernel bounds the calls (SO_RCVTIMEO, SO_SNDTIMEO; an expiry is
    BlockingIOError): Python's own timeout mode would poll() before every
    recv, one more system call per read on the hot path. Waits are ended
    early by :meth:`Emulator.stop` shutting the socket down.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _quickack(sock)()
    sock.setblocking(True)
    seconds = int(timeout)
    timeval = struct.pack("@ll", seconds, int((timeout - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class _Slot:
    """One card on one port, served by its own thread."""

    def __init__(self, owner: Emulator, index: int, card: Card, port: int) -> None:
        self.owner = owner
        self.index = index
        self.card = card
        self.port = port
        self.listener: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, name=f"vsc-slot-{index}", daemon=True)

    @property
    def name(self) -> str:
        return f"slot {self.index} (port {self.port})"

    def listen(self) -> None:
        self.listener = socket.create_server((self.owner.host, self.port), backlog=4)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        log.info("%s: listening on %s", self.name, self.owner.host)

    # -- the loop ---------------------------------------------------------------

    def _run(self) -> None:
        owner = self.owner
        delay = owner.backoff.initial
        while not owner.stopping:
            sock = self._open()
            if sock is not None and (self._session(sock) or self.listener is not None):
                delay = owner.backoff.initial
                continue
            # vpcd is not there, or hung up without a word: back off before trying again.
            if owner.wait_stop(delay):
                break
            delay = min(delay * 2, owner.backoff.cap)
        log.debug("%s: stopped", self.name)

    def _open(self) -> socket.socket | None:
        try:
            return self._accept() if self.listener is not None else self._connect()
        except Exception:
            log.exception("%s: cannot open a connection", self.name)
            return None

    def _session(self, sock: socket.socket) -> bool:
        """Serve one connection; whether any frame was handled."""
        handled = 0
        try:
            if self.owner.track(sock):
                handled = self._serve(sock)
        except _Drop as exc:
            log.warning("%s: dropping the connection: %s", self.name, exc)
        except Exception:
            log.exception("%s: connection failed", self.name)
        finally:
            self.owner.release(sock)
            self._power_off()
        return handled > 0

    def _power_off(self) -> None:
        try:
            self.card.power_off()
        except Exception:
            log.exception("%s: power off failed", self.name)

    def _connect(self) -> socket.socket | None:
        """Connect to vpcd; None when it is not there (yet) or we are stopping."""
        host, port = self.owner.host, self.port
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("%s: cannot resolve %s: %s", self.name, host, exc)
            return None
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            err = sock.connect_ex(address)
            if err == errno.EINPROGRESS and self.owner.wait_ready(
                sock, selectors.EVENT_WRITE, _CONNECT_TIMEOUT
            ):
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            elif err == errno.EINPROGRESS:
                err = errno.ETIMEDOUT
            if err == 0:
                log.info("%s: connected to vpcd at %s", self.name, address[0])
                return sock
            sock.close()
            if self.owner.stopping:
                return None
            log.debug("%s: connect to %s: %s", self.name, address[0], os.strerror(err))
        return None

    def _accept(self) -> socket.socket | None:
        """Accept vpcd's connection (reversed mode); None when stopping."""
        assert self.listener is not None
        if not self.owner.wait_ready(self.listener, selectors.EVENT_READ, None):
            return None
        try:
            sock, peer = self.listener.accept()
        except BlockingIOError:
            return None  # someone else's connection vanished; wait again
        sock.setblocking(False)
        log.info("%s: vpcd connected from %s", self.name, peer[0])
        return sock

    def _serve(self, sock: socket.socket) -> int:
        """Run one connection until it ends; returns the number of frames handled."""
        owner = self.owner
        _tune(sock, owner.frame_timeout)
        conn = VpcdConnection()
        card = self.card
        # Looked up once: this loop runs twice per APDU (vpcd sends length and APDU apart).
        recv, send, quickack = sock.recv, sock.send, _quickack(sock)
        handled = 0
        while True:
            # Blocking: the frame timeout is the socket's; stop() shuts the socket down.
            try:
                data = recv(_RECV_SIZE)
            except BlockingIOError:  # frame_timeout passed without a byte
                if owner.stopping:
                    return handled
                if conn.in_frame:
                    log.warning("%s: peer stalled inside a frame; dropping it", self.name)
                    return handled
                continue  # idle between frames: that is vpcd's right
            except OSError as exc:
                if not owner.stopping:
                    log.info("%s: connection lost: %s", self.name, exc)
                return handled
            if not data and owner.stopping:
                return handled  # stop() shut the socket down
            quickack()
            conn.receive_data(data)
            while True:
                try:
                    item = conn.next_apdu()  # a command comes as bare bytes: no event object
                except RemoteProtocolError as exc:
                    log.warning("%s: protocol error, dropping the connection: %s", self.name, exc)
                    return handled
                if item is NEED_DATA:
                    break
                if isinstance(item, bytes):
                    try:
                        answer: bytes | None = respond_apdu(card, item)
                    except Exception:  # the card broke its never-raises contract
                        # Not the APDU in the log: it may hold a PIN.
                        log.exception("%s: error handling a command (INS %02X)", self.name, item[1])
                        answer = _SW_UNKNOWN  # vpcd waits for an answer: never leave it waiting
                elif isinstance(item, ConnectionClosed):
                    log.info("%s: vpcd closed the connection", self.name)
                    return handled
                else:
                    answer = self._answer(item)
                handled += 1
                if answer is None:
                    continue
                frame = conn.send(answer)
                try:
                    # Blocking: one send queues the whole frame unless the peer stopped reading.
                    sent = send(frame)
                    if sent != len(frame):
                        self._send_rest(sock, frame, sent)
                except OSError as exc:
                    log.info("%s: connection lost while answering: %s", self.name, exc)
                    return handled

    def _send_rest(self, sock: socket.socket, frame: bytes, sent: int) -> None:
        """Finish a partly sent frame: the whole answer within the frame timeout, as sendall."""
        deadline = time.monotonic() + self.owner.frame_timeout
        view = memoryview(frame)[sent:]
        while view:
            if time.monotonic() > deadline:
                raise TimeoutError("the peer stopped reading our answer")
            view = view[sock.send(view) :]  # BlockingIOError: a timeout without progress

    def _answer(self, event: Event) -> bytes | None:
        """Apply a control event (commands take the bytes path in :meth:`_serve`)."""
        try:
            return respond(self.card, event)
        except Exception:
            log.exception("%s: error handling %r", self.name, event)
        # vpcd blocks until GET ATR is answered: never leave it waiting.
        if isinstance(event, GetAtr):
            raise _Drop("no ATR to answer with")
        return None
