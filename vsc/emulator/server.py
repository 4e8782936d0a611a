"""The emulator: its slots, their threads, and stopping them all at once.

:class:`Emulator` owns what the slots share: the stop event, the wake-up pipe
that ends their selector waits, the set of connected sockets that
:meth:`Emulator.stop` shuts down, the reconnect :class:`Backoff`, and in
reversed mode the :class:`~vsc.emulator.lobby.Lobby` that accepts vpcd's
connections for every slot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
from collections.abc import Sequence
from typing import Final

from ..card import Card
from ..vpcd import Backoff
from .lobby import Lobby
from .slot import _Slot

__all__ = ["DEFAULT_FRAME_TIMEOUT", "DEFAULT_HOST", "DEFAULT_PORT", "Backoff", "Emulator"]

log = logging.getLogger("vsc.emulator")

DEFAULT_HOST: Final = "localhost"
#: vpcd's default port (0x8C7B); a reader entry's second reader is on port + 1.
DEFAULT_PORT: Final = 35963
DEFAULT_FRAME_TIMEOUT: Final = 5.0
_JOIN_TIMEOUT: Final = 10.0


class Emulator:
    """Serves ``cards[i]`` on port ``port + i``, one thread per card.

    ``start()`` binds the listening sockets of reversed mode (so a busy port
    fails there, with OSError) and starts the threads; ``stop()`` may be
    called from a signal handler; ``join()`` waits for the threads.

    ``frame_timeout`` bounds every frame from its first byte to its last, a
    send to a peer that stopped reading, and in reversed mode a new
    connection's wait for its first frame and how long a connection may be
    quiet before a fresh one takes over (:mod:`vsc.emulator.lobby`).
    """

    def __init__(
        self,
        cards: Sequence[Card],
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        reversed: bool = False,
        frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
        backoff: Backoff | None = None,
    ) -> None:
        if not cards:
            raise ValueError("need at least one card")
        if len({id(card) for card in cards}) != len(cards):
            raise ValueError("a card can serve one slot only (cards are not thread-safe)")
        if frame_timeout <= 0:
            raise ValueError("frame_timeout must be positive")
        self.host = host
        self.reversed = reversed
        self.frame_timeout = frame_timeout
        self.backoff = backoff or Backoff()
        self._stop = threading.Event()
        # Connected sockets, shut down by stop() to end their blocking calls. An RLock:
        # stop() may run in a signal handler that interrupted stop() in the main thread.
        self._live: set[socket.socket] = set()
        self._live_lock = threading.RLock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._slots = [
            _Slot(self, i, card, port + i if port else 0) for i, card in enumerate(cards)
        ]
        self._lobby: Lobby | None = None

    @property
    def ports(self) -> list[int]:
        """The slots' ports (in reversed mode, the bound ones)."""
        return [slot.port for slot in self._slots]

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        try:
            if self.reversed:
                for slot in self._slots:
                    slot.listen()
        except OSError:
            self.close()
            raise
        if self.reversed:
            self._lobby = Lobby(self, self._slots)
            self._lobby.thread.start()
        for slot in self._slots:
            slot.thread.start()

    def stop(self) -> None:
        """Ask every slot to finish. Idempotent; safe in a signal handler."""
        self._stop.set()
        # OSError: closed already, or the pipe is full (a wake-up is pending anyway).
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        with self._live_lock:
            for sock in self._live:
                with contextlib.suppress(OSError):  # the peer may have gone already
                    sock.shutdown(socket.SHUT_RDWR)
        for slot in self._slots:
            slot.wake()

    def wait(self) -> None:
        """Block until :meth:`stop` is called."""
        self._stop.wait()

    def join(self, timeout: float = _JOIN_TIMEOUT) -> bool:
        """Wait for the slot threads (and the lobby's) to end; whether they all did."""
        threads = {slot.name: slot.thread for slot in self._slots}
        if self._lobby is not None:
            threads["the lobby"] = self._lobby.thread
        for thread in threads.values():
            if thread.is_alive():
                thread.join(timeout)
        alive = [name for name, thread in threads.items() if thread.is_alive()]
        if alive:
            log.error("threads did not stop: %s", ", ".join(alive))
        return not alive

    def close(self) -> None:
        """Release the listening sockets and the wake-up pipe (after join)."""
        for slot in self._slots:
            if slot.listener is not None:
                slot.listener.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()
        self.close()

    # -- waiting, shared by the slots --------------------------------------------

    def wait_stop(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; whether we are stopping."""
        return self._stop.wait(seconds)

    def track(self, sock: socket.socket) -> bool:
        """Let :meth:`stop` end ``sock``'s blocking calls; False if stopping already."""
        with self._live_lock:
            if self._stop.is_set():
                return False
            self._live.add(sock)
            return True

    def release(self, sock: socket.socket) -> None:
        """Close a socket from :meth:`track` (under the lock: stop() never sees a reused fd)."""
        with self._live_lock:
            self._live.discard(sock)
            sock.close()

    def shut(self, sock: socket.socket) -> None:
        """End ``sock``'s blocking calls, if it is still open (a takeover)."""
        with self._live_lock:
            if sock in self._live:
                with contextlib.suppress(OSError):  # the peer may have gone already
                    sock.shutdown(socket.SHUT_RDWR)

    def selector_on_wake(self) -> selectors.BaseSelector:
        """A selector watching the wake-up pipe (its key's data is None)."""
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        return selector

    def selector(self, sock: socket.socket, events: int) -> selectors.BaseSelector:
        """A selector watching ``sock`` for ``events`` and the wake-up pipe."""
        selector = self.selector_on_wake()
        selector.register(sock, events)
        return selector

    def ready(
        self, sock: socket.socket, selector: selectors.BaseSelector, timeout: float | None
    ) -> bool:
        """Wait until ``sock`` is ready; False on timeout or when stopping."""
        ready = selector.select(timeout)
        if self._stop.is_set():
            return False
        return any(key.fileobj is sock for key, _ in ready)

    def wait_ready(self, sock: socket.socket, events: int, timeout: float | None) -> bool:
        """One-off :meth:`ready` (connecting to vpcd)."""
        with self.selector(sock, events) as selector:
            return self.ready(sock, selector, timeout)
