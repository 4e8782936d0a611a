"""Who holds which reader: the share service's bookkeeping, without I/O.

Theory of operation
-------------------
Readers are known by their stable names ("Reader 1"), given once per machine
and persisted by :class:`vsc.share.home.ShareHome`. A reader is in one of the
states of :class:`ReaderState`:

============  =========================================================
NO_CARD       connected, empty
CARD_PRESENT  connected, a card in it (mute cards count as empty)
SHARED        attached to a session, whatever the card does
UNAVAILABLE   named on this machine, not connected now
============  =========================================================

An attachment is a :class:`Lease` of one reader by one session of one peer
(its certificate fingerprint). All changes go through one lock, so of any
number of racing :meth:`Broker.attach` calls exactly one wins and the rest
get :class:`InUse`. A lease ends by :meth:`Broker.release` (detach, logout,
link lost, the endpoint restarting, the reader unplugged); releasing twice is
harmless. :meth:`Broker.update` takes the readers' current state from the
PC/SC monitor and returns what changed, each change carrying the lease it
concerns, so the service can tell the holder.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .pcsc import Snapshot
from .protocol import ReaderInfo, ReaderState, ShareMode

__all__ = ["Broker", "Change", "ChangeKind", "InUse", "Lease", "SessionKey", "UnknownReader"]


@dataclass(frozen=True, slots=True)
class SessionKey:
    """A remote session: the peer's certificate fingerprint and its session name."""

    peer: bytes
    session: str


_tokens = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Lease:
    """One reader attached to one session. ``token`` makes every lease distinct."""

    reader: str
    pcsc_name: str
    key: SessionKey
    mode: ShareMode
    instance: bytes
    token: int = field(default_factory=lambda: next(_tokens))

    @property
    def session(self) -> str:
        return self.key.session


class InUse(Exception):
    """The reader is shared in another session."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(f"{lease.reader} is shared in another session")
        self.lease = lease


class UnknownReader(LookupError):
    """No such reader, or it is not connected."""


class ChangeKind(Enum):
    READER_ADDED = "reader-added"
    READER_REMOVED = "reader-removed"
    CARD_INSERTED = "card-inserted"
    CARD_REMOVED = "card-removed"


@dataclass(frozen=True, slots=True)
class Change:
    """What :meth:`Broker.update` saw change; ``lease`` is the reader's holder, if any."""

    kind: ChangeKind
    reader: str
    pcsc_name: str
    atr: bytes | None = None
    lease: Lease | None = None


class Broker:
    """The readers and the leases. ``namer`` gives stable names (persisting new ones)."""

    def __init__(self, namer: Callable[[list[str]], dict[str, str]]) -> None:
        self._namer = namer
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}  # stable name -> PC/SC name, all ever seen here
        self._cards: dict[str, bytes | None] = {}  # stable name -> ATR, connected readers only
        self._leases: dict[str, Lease] = {}  # stable name -> lease

    def remember(self, known: dict[str, str]) -> None:
        """Seed the stable names persisted on this machine (PC/SC name -> stable name)."""
        with self._lock:
            for pcsc_name, name in known.items():
                self._names.setdefault(name, pcsc_name)

    # -- readers ------------------------------------------------------------------------

    def update(self, snapshot: Snapshot) -> list[Change]:
        """Take the readers' state now; return the changes in a stable order."""
        named = self._namer(sorted(snapshot))
        changes: list[Change] = []
        with self._lock:
            current = {named[p]: atr for p, atr in snapshot.items()}
            for name, pcsc_name in ((n, p) for p, n in named.items()):
                self._names[name] = pcsc_name
            for name in sorted(set(self._cards) | set(current), key=_order):
                changes += self._diff(name, name in self._cards, name in current, current)
            self._cards = current
        return changes

    def _diff(
        self, name: str, was: bool, now: bool, current: dict[str, bytes | None]
    ) -> list[Change]:
        pcsc_name = self._names[name]
        lease = self._leases.get(name)
        before = self._cards.get(name) if was else None
        after = current.get(name) if now else None
        changes: list[Change] = []
        if not was:
            changes.append(Change(ChangeKind.READER_ADDED, name, pcsc_name, lease=lease))
        if before is not None and before != after:
            changes.append(Change(ChangeKind.CARD_REMOVED, name, pcsc_name, lease=lease))
        if after is not None and before != after:
            changes.append(Change(ChangeKind.CARD_INSERTED, name, pcsc_name, after, lease))
        if not now:
            changes.append(Change(ChangeKind.READER_REMOVED, name, pcsc_name, lease=lease))
        return changes

    def atr(self, reader: str) -> bytes | None:
        """The ATR of the card in ``reader`` now, None if empty or not connected."""
        with self._lock:
            return self._cards.get(reader)

    def listing(self) -> tuple[ReaderInfo, ...]:
        with self._lock:
            return tuple(self._info(name) for name in sorted(self._names, key=_order))

    def _info(self, name: str) -> ReaderInfo:
        pcsc_name = self._names[name]
        lease = self._leases.get(name)
        if lease is not None:
            return ReaderInfo(name, pcsc_name, ReaderState.SHARED, lease.session)
        if name not in self._cards:
            return ReaderInfo(name, pcsc_name, ReaderState.UNAVAILABLE)
        if self._cards[name] is None:
            return ReaderInfo(name, pcsc_name, ReaderState.NO_CARD)
        return ReaderInfo(name, pcsc_name, ReaderState.CARD_PRESENT)

    # -- leases ---------------------------------------------------------------------------

    def resolve(self, reader: str) -> str:
        """The stable name ``reader`` means: a stable or PC/SC name in any case, or the
        unique start of one. Raises :class:`UnknownReader`, listing the candidates."""
        wanted = reader.casefold()
        with self._lock:
            names = sorted(self._names, key=_order)
            pcsc = self._names
        for name in names:
            if wanted in (name.casefold(), pcsc[name].casefold()):
                return name
        found = [
            n
            for n in names
            if n.casefold().startswith(wanted) or pcsc[n].casefold().startswith(wanted)
        ]
        if len(found) == 1 and wanted:
            return found[0]
        if found and wanted:
            raise UnknownReader(f"{reader!r} could be any of: {', '.join(found)}")
        known = ", ".join(names) or "none"
        raise UnknownReader(f"no reader named {reader!r} (readers: {known})")

    def attach(self, reader: str, key: SessionKey, mode: ShareMode, instance: bytes) -> Lease:
        """Lease ``reader`` to ``key``; raises :class:`InUse` or :class:`UnknownReader`."""
        with self._lock:
            if reader not in self._cards:
                known = reader in self._names
                raise UnknownReader(
                    f"{reader} is not connected" if known else f"no reader named {reader!r}"
                )
            holder = self._leases.get(reader)
            if holder is not None:
                raise InUse(holder)
            lease = Lease(reader, self._names[reader], key, mode, instance)
            self._leases[reader] = lease
            return lease

    def release(self, lease: Lease) -> bool:
        """End ``lease``; False if it had ended already."""
        with self._lock:
            if self._leases.get(lease.reader) != lease:
                return False
            del self._leases[lease.reader]
            return True

    def holder(self, reader: str) -> Lease | None:
        with self._lock:
            return self._leases.get(reader)

    def leases(
        self, *, peer: bytes | None = None, session: str = "", reader: str = ""
    ) -> list[Lease]:
        """The current leases, filtered (empty/None filters match everything)."""
        with self._lock:
            leases = list(self._leases.values())
        return [
            lease
            for lease in leases
            if (peer is None or lease.key.peer == peer)
            and (not session or lease.session == session)
            and (not reader or lease.reader == reader)
        ]

    def restarted(self, key: SessionKey, instance: bytes) -> Sequence[Lease]:
        """The leases of ``key`` held by an earlier instance of its endpoint."""
        return [
            lease
            for lease in self.leases(peer=key.peer)
            if lease.key == key and lease.instance != instance
        ]


def _order(name: str) -> tuple[int, str]:
    """ "Reader 2" before "Reader 10"."""
    suffix = name.rpartition(" ")[2]
    return (int(suffix) if suffix.isdigit() else 1 << 30, name)
