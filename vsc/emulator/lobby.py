"""Reversed mode's front door: vpcd's connections wait here until they prove themselves.

In reversed mode (``-R``) the card listens and vpcd connects; whoever can
reach the port can connect too. A connection only reaches its slot once it
has sent a whole, valid first frame (vpcd sends GET ATR at once), within the
frame timeout of being accepted. Until then it waits here, read without
blocking, with the other newcomers, so a silent or trickling connection
holds nothing: it is closed when its time is up, and a real vpcd connecting
meanwhile goes past it.

A connection that proved itself is offered to its slot. A free slot serves
it at once; a busy slot serves it as soon as the connection it is serving
ends, or at once if that one has been quiet for the frame timeout (a
*takeover*: vpcd connected anew, and the old connection is stale). A newer
proven connection replaces an older one still waiting. At most
:data:`MAX_WAITING` unproven connections wait per slot; the oldest goes when
another arrives. Every refusal is logged as a warning, with the peer's address.

The lobby reads no further than the end of the first frame
(:attr:`vsc.vpcd.VpcdConnection.wanted`): the rest of the stream is the slot's.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ..vpcd import NEED_DATA, ConnectionClosed, RemoteProtocolError, VpcdConnection
from .slot import Arrival, _Slot

if TYPE_CHECKING:
    from .server import Emulator

log = logging.getLogger("vsc.emulator")

#: Unproven connections that may wait per slot (the oldest is closed for a newer one).
MAX_WAITING: Final = 8
#: How often a slot with a proven connection waiting is checked for a stale one.
_RECHECK: Final = 0.1


@dataclass(eq=False, slots=True)
class _Newcomer:
    sock: socket.socket
    peer: str
    slot: _Slot
    deadline: float
    conn: VpcdConnection = field(default_factory=VpcdConnection)


class Lobby:
    """Accepts vpcd's connections for every listening slot, in one thread."""

    def __init__(self, owner: Emulator, slots: Sequence[_Slot]) -> None:
        self.owner = owner
        self.slots = list(slots)
        self.thread = threading.Thread(target=self._run, name="vsc-lobby", daemon=True)
        self._newcomers: list[_Newcomer] = []

    def _run(self) -> None:
        owner = self.owner
        selector = owner.selector_on_wake()
        try:
            for slot in self.slots:
                assert slot.listener is not None
                selector.register(slot.listener, selectors.EVENT_READ, slot)
            while not owner.stopping:
                for key, _ in selector.select(self._timeout()):
                    if isinstance(key.data, _Slot):
                        self._accept(selector, key.data)
                    elif isinstance(key.data, _Newcomer):
                        self._read(selector, key.data)
                if owner.stopping:
                    break
                now = time.monotonic()
                self._expire(selector, now)
                for slot in self.slots:
                    if slot.has_waiting:
                        slot.take_over_if_stale(now, owner.frame_timeout)
        except Exception:
            log.exception("reversed mode: the lobby failed; no new connections are accepted")
        finally:
            for newcomer in self._newcomers:
                newcomer.sock.close()
            self._newcomers.clear()
            selector.close()

    def _timeout(self) -> float:
        now = time.monotonic()
        timeouts = [max(0.0, newcomer.deadline - now) for newcomer in self._newcomers]
        if any(slot.has_waiting for slot in self.slots):
            timeouts.append(_RECHECK)
        return min(timeouts, default=3600.0)

    def _accept(self, selector: selectors.BaseSelector, slot: _Slot) -> None:
        assert slot.listener is not None
        while True:  # take every connection that is there
            try:
                sock, address = slot.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: try again later
                log.warning("%s: cannot accept a connection: %s", slot.name, exc)
                return
            sock.setblocking(False)
            peer = _address(address)
            log.info("%s: connection from %s", slot.name, peer)
            waiting = [newcomer for newcomer in self._newcomers if newcomer.slot is slot]
            if len(waiting) >= MAX_WAITING:
                self._close(
                    selector,
                    waiting[0],
                    f"{MAX_WAITING} connections wait for their first frame; closing the oldest",
                )
            newcomer = _Newcomer(sock, peer, slot, time.monotonic() + self.owner.frame_timeout)
            self._newcomers.append(newcomer)
            selector.register(sock, selectors.EVENT_READ, newcomer)

    def _read(self, selector: selectors.BaseSelector, newcomer: _Newcomer) -> None:
        conn = newcomer.conn
        try:
            data = newcomer.sock.recv(conn.wanted)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(selector, newcomer, f"connection lost: {exc}")
            return
        conn.receive_data(data)
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            self._close(selector, newcomer, f"protocol error: {exc}")
            return
        if event is NEED_DATA:
            return
        if isinstance(event, ConnectionClosed):
            self._close(selector, newcomer, "closed before its first frame")
            return
        selector.unregister(newcomer.sock)
        self._newcomers.remove(newcomer)
        newcomer.slot.offer(Arrival(newcomer.sock, newcomer.peer, event))

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        timeout = self.owner.frame_timeout
        for newcomer in [n for n in self._newcomers if n.deadline <= now]:
            what = "an incomplete" if newcomer.conn.in_frame else "no"
            self._close(selector, newcomer, f"{what} first frame within {timeout:g} s")

    def _close(self, selector: selectors.BaseSelector, newcomer: _Newcomer, why: str) -> None:
        log.warning(
            "%s: closing the connection from %s: %s", newcomer.slot.name, newcomer.peer, why
        )
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(newcomer.sock)
        self._newcomers.remove(newcomer)
        newcomer.sock.close()


def _address(address: object) -> str:
    """``host:port`` of a peer address (IPv4 or IPv6 tuple)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
