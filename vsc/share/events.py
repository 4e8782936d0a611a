"""The share event log: what was shared, unshared, inserted and removed, when.

Each side records its events twice: as JSON lines in ``events.log`` of its
share home (mode 0600, never written through a symbolic link: the log is
opened when the :class:`EventLog` is made, so a bad one stops the program
at its start, and again for each event) (``{"time": ..., "event": "shared", "reader": "Reader 1",
"session": "...", "message": "Reader 1 shared into session ..."}``), for
people and scripts, and as INFO records of the logger ``vsc.share.events``
for whatever logging the program set up. Never a PIN or an APDU: those go to
the masked trace (:mod:`vsc.share.masking`).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from enum import Enum
from pathlib import Path
from typing import Any, Final

from .files import open_private
from .protocol import EndReason, ReaderInfo, ReaderState
from .trust import TrustStore

__all__ = [
    "REASON_TEXT",
    "STATE_TEXT",
    "EventKind",
    "EventLog",
    "read_events",
    "record_migration",
    "state_text",
]

logger = logging.getLogger("vsc.share.events")


class EventKind(Enum):
    """The ``event`` field of a log line."""

    SERVING = "serving"
    STOPPED = "stopped"
    PAIRED = "paired"
    PAIRING_FAILED = "pairing-failed"
    REFUSED = "refused"
    SHARED = "shared"  # service: a reader was attached to a session
    ATTACHED = "attached"  # endpoint: a remote reader now feeds the local pcscd
    UNSHARED = "unshared"
    CARD_INSERTED = "card-inserted"
    CARD_REMOVED = "card-removed"
    READER_ADDED = "reader-added"
    READER_REMOVED = "reader-removed"
    LINK_LOST = "link-lost"
    SHARED_STATE = "shared-state"  # shared mode on a card without logical channels
    TRUST_MIGRATED = "trust-migrated"  # an old peers.json got one direction per pin


#: How people are told a reader's state (listings, the serving line).
STATE_TEXT: Final = {
    ReaderState.NO_CARD: "no card",
    ReaderState.CARD_PRESENT: "card present",
    ReaderState.SHARED: "shared in session {session}",
    ReaderState.UNAVAILABLE: "not connected",
}


def state_text(info: ReaderInfo) -> str:
    """A reader's state as people read it; a session not shown to us is "another session"."""
    if info.state is ReaderState.SHARED and not info.session:
        return "shared in another session"
    return STATE_TEXT[info.state].format(session=info.session)


#: How an event message says why a share ended.
REASON_TEXT: Final = {
    EndReason.UNKNOWN: "for an unknown reason",
    EndReason.DETACH: "detached",
    EndReason.LOGOUT: "the remote user logged out",
    EndReason.RESTART: "the endpoint restarted",
    EndReason.SHUTDOWN: "stopped",
    EndReason.CONNECTION_LOST: "the link was lost",
    EndReason.READER_GONE: "the reader was removed",
    EndReason.UNRESPONSIVE: "the peer stopped answering",
}


class EventLog:
    """Appends events to a JSON-lines file (optional) and to the ``vsc.share.events`` logger.

    Raises :class:`~vsc.share.home.ShareHomeError` (or ``OSError``) at once
    if the file cannot be opened safely; later failures are logged.
    """

    _FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT

    def __init__(self, path: Path | None, side: str) -> None:
        self.path = path
        self.side = side
        self._lock = threading.Lock()
        if path is not None:
            os.close(open_private(path, self._FLAGS))

    def record(self, kind: EventKind, message: str, **fields: str | int | None) -> None:
        entry: dict[str, Any] = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "side": self.side,
            "event": kind.value,
            **{k: v for k, v in fields.items() if v is not None},
            "message": message,
        }
        logger.info("%s", message)
        if self.path is None:
            return
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        with self._lock:
            try:
                fd = open_private(self.path, self._FLAGS)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except Exception:
                logger.exception("cannot write the event log %s", self.path)


def record_migration(events: EventLog, trust: TrustStore) -> None:
    """Migrate an old ``peers.json`` now (if it is one) and log what each pin became."""
    trust.peers()
    for note in trust.notes:
        events.record(EventKind.TRUST_MIGRATED, f"pairing migrated to one direction: {note}")
    trust.notes.clear()


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of a log file, oldest first (for tools and tests)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]
