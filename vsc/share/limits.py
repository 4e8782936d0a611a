"""Which connections the share service keeps, how long each may take, and who goes when full.

Theory of operation
-------------------
Two pools, so that nobody who cannot authenticate can keep a paired endpoint
out:

*Pending*
    Accepted, not yet authenticated: in the TLS handshake, without a
    certificate (pairing only), or pinned for the other direction only (about
    to be refused by name). Bounded in total and per source address. A
    newcomer that finds its address at the cap evicts that address's oldest
    pending connection, if that one has had ``pending_grace`` to finish its
    handshake (a machine opening several links at once, each a few
    milliseconds from done, does not cut its own; until then the address may
    go over its cap, within the pool). One that finds the pool full evicts
    the oldest of the address holding the most. An address flooding the
    service therefore competes with itself only, and many addresses together
    cannot hold more than the pool.
*Sessions*
    Links that presented a pinned endpoint's certificate (or the service's
    own: the local CLI). Bounded in total and per peer, never evicted by a
    pending connection: an authenticated session gets in however many
    strangers knock.

Every wait is bounded as a whole, not per ``recv``: the TLS handshake, the
first message after it (a frame trickled a byte at a time does not count
until it is complete), a pairing from start to end, an authenticated link
with no reader attached, and an attached link's silence (the endpoint's
keepalive, :data:`~vsc.share.protocol.KEEPALIVE_INTERVAL`). The numbers are
:class:`Limits`; docs/security.md lists them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .protocol import KEEPALIVE_INTERVAL

__all__ = ["Admission", "Limits"]

C = TypeVar("C", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Limits:
    """Connection limits of one share service (seconds and counts)."""

    handshake: float = 5.0  # the whole TLS handshake
    first_message: float = 5.0  # after the handshake, the whole first message
    pairing: float = 20.0  # a link without a certificate, from accept to paired
    session_idle: float = 30.0  # an authenticated link with no reader attached, silent
    peer_timeout: float = 4 * KEEPALIVE_INTERVAL  # an attached link, silent: its peer is dead
    pending_grace: float = 1.0  # a pending connection younger than this: not evicted by its own
    pending: int = 32
    pending_per_address: int = 8
    sessions: int = 64
    sessions_per_peer: int = 16


class Admission(Generic[C]):
    """The two pools of :mod:`vsc.share.limits`. Thread-safe; holds connection objects only."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._pending: dict[
            C, tuple[str, float]
        ] = {}  # -> (source address, admitted), oldest first
        self._sessions: dict[C, bytes] = {}  # connection -> peer fingerprint

    def admit(self, connection: C, address: str, now: float | None = None) -> list[C]:
        """Add a new connection to the pending pool; the connections it evicts (to close)."""
        limits = self.limits
        now = time.monotonic() if now is None else now
        evicted: list[C] = []
        with self._lock:
            mine = [(c, t) for c, (a, t) in self._pending.items() if a == address]
            while len(mine) >= limits.pending_per_address and now - mine[0][1] >= (
                limits.pending_grace
            ):
                evicted.append(mine.pop(0)[0])
                del self._pending[evicted[-1]]
            while len(self._pending) >= limits.pending:
                counts: dict[str, int] = {}
                for a, _ in self._pending.values():
                    counts[a] = counts.get(a, 0) + 1
                busiest = max(counts, key=lambda a: counts[a])  # the first such: oldest
                victim = next(c for c, (a, _) in self._pending.items() if a == busiest)
                del self._pending[victim]
                evicted.append(victim)
            self._pending[connection] = (address, now)
        return evicted

    def promote(self, connection: C, peer: bytes) -> str | None:
        """Move an authenticated connection to the sessions; None, or why it cannot be."""
        limits = self.limits
        with self._lock:
            if len(self._sessions) >= limits.sessions:
                return f"{limits.sessions} sessions are open, the most this service keeps"
            if sum(p == peer for p in self._sessions.values()) >= limits.sessions_per_peer:
                return f"this peer has {limits.sessions_per_peer} sessions open, the most allowed"
            self._pending.pop(connection, None)
            self._sessions[connection] = peer
            return None

    def pending(self, connection: C) -> bool:
        """Whether ``connection`` is still in the pending pool (False once evicted)."""
        with self._lock:
            return connection in self._pending

    def forget(self, connection: C) -> None:
        with self._lock:
            self._pending.pop(connection, None)
            self._sessions.pop(connection, None)

    def counts(self) -> tuple[int, int]:
        """(pending, sessions), for logs and tests."""
        with self._lock:
            return len(self._pending), len(self._sessions)
