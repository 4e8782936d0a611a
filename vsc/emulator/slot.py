"""One slot: a card on one port, and the thread that serves its vpcd connections.

The hot path of the front-end is :meth:`_Slot._serve`. It reads each frame
with exact-size ``recv`` calls, as vpcd writes it (the 2-byte length, then
the payload): two ``recv`` per APDU, ``TCP_QUICKACK`` after the first (so
that the ACK releases the payload vpcd holds back under Nagle's rule), one
``send`` that carries the ACK of the payload, and nothing buffered between
frames: four system calls per APDU. Blocking calls are bounded by
the kernel (SO_RCVTIMEO/SO_SNDTIMEO) and ended early by
:meth:`Emulator.stop <vsc.emulator.server.Emulator.stop>` shutting the socket
down.

Bounds, so that no peer holds a slot by going slow:

* a frame, once its first byte is in, must be whole within the frame timeout
  (the deadline runs from that byte: a peer trickling a byte at a time is
  dropped as surely as a silent one);
* in reversed mode a connection reaches the slot only after it sent a whole,
  valid first frame within the frame timeout (:mod:`vsc.emulator.lobby`), and
  a connection that has been quiet for the frame timeout gives way to a
  fresh one that did (a *takeover*, logged).

Between frames a connection may stay quiet as long as it likes: that is
vpcd's right (pcscd polls the card every ~0.4 s, but only while it runs).
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..card import Card
from ..vpcd import Command, Event, GetAtr, decode, respond, respond_apdu

if TYPE_CHECKING:
    from .server import Emulator

log = logging.getLogger("vsc.emulator")

_CONNECT_TIMEOUT: Final = 5.0
_SW_UNKNOWN: Final = b"\x6f\x00"


class _Drop(Exception):
    """End this connection, logged as a warning (the slot then reconnects)."""


class _Closed(Exception):
    """The peer ended the connection (or :meth:`Emulator.stop` did)."""


@dataclass(slots=True)
class Arrival:
    """A reversed-mode connection that sent a valid first frame, on its way to its slot."""

    sock: socket.socket
    #: The peer's address, for the log.
    peer: str
    #: The first frame, already read by the lobby: the slot answers it first.
    first: Event

    def close(self) -> None:
        self.sock.close()


#: Linux only; elsewhere vpcd's split writes cost the delayed-ACK stall.
_QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)


def _quickack(sock: socket.socket) -> Callable[[], None]:
    """A call that sets TCP_QUICKACK on ``sock`` (a no-op where there is none).

    Linux drops out of quick-ACK mode whenever we send, hence a call after
    every recv that no answer follows at once. A partial of the bound method:
    no Python frame on the hot path.
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
        #: Since when the connection being served has waited for its next frame
        #: (time.monotonic); None while a frame is on its way or being answered.
        self.quiet_since: float | None = None
        # Reversed mode: the lobby hands connections over through the door. An RLock
        # (Condition's default): stop() may run in a signal handler.
        self._door = threading.Condition()
        self._waiting: Arrival | None = None
        self._current: Arrival | None = None
        self._taken_over: Arrival | None = None

    @property
    def name(self) -> str:
        return f"slot {self.index} (port {self.port})"

    def listen(self) -> None:
        self.listener = socket.create_server((self.owner.host, self.port), backlog=16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        log.info("%s: listening on %s", self.name, self.owner.host)

    # -- the loop ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.listener is not None:
                self._run_reversed()
            else:
                self._run_connecting()
        finally:
            with self._door:
                waiting, self._waiting = self._waiting, None
            if waiting is not None:
                waiting.close()
            log.debug("%s: stopped", self.name)

    def _run_connecting(self) -> None:
        owner = self.owner
        delay = owner.backoff.initial
        while not owner.stopping:
            sock = self._connect_safely()
            if sock is not None and self._session(sock, None):
                delay = owner.backoff.initial
                continue
            # vpcd is not there, or hung up without a word: back off before trying again.
            if owner.wait_stop(delay):
                break
            delay = min(delay * 2, owner.backoff.cap)

    def _run_reversed(self) -> None:
        while True:
            arrival = self._take()
            if arrival is None:
                return
            try:
                self._session(arrival.sock, arrival.first)
            finally:
                with self._door:
                    self._current = None

    def _connect_safely(self) -> socket.socket | None:
        try:
            return self._connect()
        except Exception:
            log.exception("%s: cannot open a connection", self.name)
            return None

    def _session(self, sock: socket.socket, first: Event | None) -> bool:
        """Serve one connection; whether any frame was handled."""
        handled = 0
        try:
            if self.owner.track(sock):
                handled = self._serve(sock, first)
        except _Drop as exc:
            log.warning("%s: dropping the connection: %s", self.name, exc)
        except _Closed as exc:
            if not self.owner.stopping:
                log.info("%s: %s", self.name, exc)
        except Exception:
            log.exception("%s: connection failed", self.name)
        finally:
            self.quiet_since = None
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

    # -- reversed mode: the lobby's door --------------------------------------------

    def offer(self, arrival: Arrival) -> None:
        """Queue a connection that proved itself (lobby thread); it replaces an older one."""
        with self._door:
            older, self._waiting = self._waiting, arrival
            self._door.notify_all()
        if older is not None:
            log.warning(
                "%s: connection from %s superseded by a newer one from %s; closing it",
                self.name,
                older.peer,
                arrival.peer,
            )
            older.close()

    @property
    def has_waiting(self) -> bool:
        return self._waiting is not None

    def take_over_if_stale(self, now: float, stale_after: float) -> None:
        """End the connection being served if a fresh one waits and it has gone quiet."""
        with self._door:
            current, waiting, quiet = self._current, self._waiting, self.quiet_since
            if current is None or waiting is None or current is self._taken_over:
                return
            if quiet is None or now - quiet < stale_after:
                return
            self._taken_over = current
            log.warning(
                "%s: connection from %s takes over from the one from %s, quiet for %.1f s",
                self.name,
                waiting.peer,
                current.peer,
                now - quiet,
            )
            self.owner.shut(current.sock)  # ends the slot's read at once

    def wake(self) -> None:
        """Let a slot waiting at the door see that we are stopping."""
        with self._door:
            self._door.notify_all()

    def _take(self) -> Arrival | None:
        with self._door:
            while self._waiting is None:
                if self.owner.stopping:
                    return None
                self._door.wait()
            arrival, self._waiting = self._waiting, None
            self._current = arrival
        log.info("%s: serving vpcd from %s", self.name, arrival.peer)
        return arrival

    # -- serving one connection ------------------------------------------------------

    def _serve(self, sock: socket.socket, first: Event | None) -> int:
        """Run one connection until it ends; returns the number of frames handled.

        Ends by returning (the stop, or the peer gone between frames) or by
        raising :class:`_Closed` (logged as information) or :class:`_Drop`
        (a broken or stalled peer, logged as a warning).
        """
        owner = self.owner
        _tune(sock, owner.frame_timeout)
        # Looked up once: the loop runs once per APDU.
        recv, send, quickack = sock.recv, sock.send, _quickack(sock)
        card = self.card
        monotonic = time.monotonic
        handled = 0
        if first is not None:
            self._reply(sock, self._event(first))
            handled = 1
        while True:
            self.quiet_since = monotonic()
            try:
                header = recv(2)  # blocking; stop() shuts the socket down
            except BlockingIOError:  # a frame timeout without a byte
                if owner.stopping:
                    return handled
                continue  # quiet between frames: that is vpcd's right
            except OSError as exc:
                raise _Closed(f"connection lost: {exc}") from None
            started = monotonic()  # the frame's deadline runs from its first byte
            self.quiet_since = None
            quickack()
            if len(header) != 2:
                if not header:
                    if owner.stopping:
                        return handled
                    raise _Closed("vpcd closed the connection")
                header += self._rest(sock, 1, started)
            length = (header[0] << 8) | header[1]
            if length < 2:  # a control code, or a zero-length frame (broken framing)
                if not length:
                    raise _Drop("protocol error: zero-length frame")
                code = self._rest(sock, 1, started)
                # Power on, off and reset get no answer to carry the ACK: vpcd's
                # next write would wait for the delayed one.
                quickack()
                self._reply(sock, self._event(decode(code)))
                handled += 1
                continue
            try:
                apdu = recv(length)
            except BlockingIOError:
                raise _Drop(f"peer stalled inside a frame for {owner.frame_timeout:g} s") from None
            except OSError as exc:
                raise _Closed(f"connection lost: {exc}") from None
            # No quick-ACK here: the answer goes out at once and carries the ACK.
            if len(apdu) != length:
                apdu += self._rest(sock, length - len(apdu), started)
            try:
                answer = respond_apdu(card, apdu)
            except Exception:  # the card broke its never-raises contract
                # Not the APDU in the log: it may hold a PIN.
                log.exception("%s: error handling a command (INS %02X)", self.name, apdu[1])
                answer = _SW_UNKNOWN  # vpcd waits for an answer: never leave it waiting
            frame = len(answer).to_bytes(2, "big") + answer
            try:
                # Blocking: one send queues the whole frame unless the peer stopped reading.
                sent = send(frame)
                if sent != len(frame):
                    self._send_rest(sock, frame, sent)
            except OSError as exc:
                raise _Closed(f"connection lost while answering: {exc}") from None
            handled += 1

    def _rest(self, sock: socket.socket, size: int, started: float) -> bytes:
        """The last ``size`` bytes of a frame begun at ``started``, within the frame timeout.

        The slow path: a frame that came in pieces. Each wait is for what is
        left of the frame's time, so a peer trickling bytes is dropped when
        the frame's time is up, not when it pauses for a whole timeout.
        """
        timeout = self.owner.frame_timeout
        quickack = _quickack(sock)
        poller = select.poll()  # stop() shutting the socket down makes it readable
        poller.register(sock, select.POLLIN)
        data = b""
        while len(data) < size:
            left = started + timeout - time.monotonic()
            if left <= 0 or not poller.poll(math.ceil(left * 1000)):
                raise _Drop(f"frame not complete within {timeout:g} s")
            try:
                chunk = sock.recv(size - len(data))
            except OSError as exc:
                raise _Closed(f"connection lost: {exc}") from None
            quickack()  # the peer's next piece may wait for our ACK (Nagle)
            if not chunk:
                if self.owner.stopping:
                    raise _Closed("stopping")
                raise _Drop("protocol error: stream closed inside a frame")
            data += chunk
        return data

    def _event(self, event: Event) -> bytes | None:
        """Apply a control code (or the lobby's first frame); the answer to send, if any."""
        try:
            return respond(self.card, event)
        except Exception:
            log.exception("%s: error handling %r", self.name, event)
        # vpcd blocks until GET ATR is answered: never leave it waiting.
        if isinstance(event, GetAtr):
            raise _Drop("no ATR to answer with")
        return _SW_UNKNOWN if isinstance(event, Command) else None

    def _reply(self, sock: socket.socket, answer: bytes | None) -> None:
        if answer is None:
            return
        frame = len(answer).to_bytes(2, "big") + answer
        try:
            sent = sock.send(frame)
            if sent != len(frame):
                self._send_rest(sock, frame, sent)
        except OSError as exc:
            raise _Closed(f"connection lost while answering: {exc}") from None

    def _send_rest(self, sock: socket.socket, frame: bytes, sent: int) -> None:
        """Finish a partly sent frame: the whole answer within the frame timeout, as sendall."""
        deadline = time.monotonic() + self.owner.frame_timeout
        view = memoryview(frame)[sent:]
        while view:
            if time.monotonic() > deadline:
                raise _Drop("the peer stopped reading our answer")
            view = view[sock.send(view) :]  # BlockingIOError: a timeout without progress
