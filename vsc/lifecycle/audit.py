"""The audit log of a card store: one JSON line per lifecycle event, never a secret.

``STORE/audit.log`` (mode 0600) gets a line for every creation,
personalisation, provisioning, lock, unlock (with its duration), unblock,
refusal and destruction, from the ``vsc`` command and from the emulator
serving a card of the store (events that happen through the card's APDU
interface). Each line::

    {"time": "2026-11-22T00:42:09.697+00:00", "event": "unlock", "card": "alice",
     "user": "alice", "pid": 4242, "via": "cli", "minutes": 480,
     "until": "2026-11-22T08:42:09+00:00", "message": "alice unlocked for 8 hours"}

What is never written: PINs, PUKs, admin keys, challenges' responses,
passwords, key material. :meth:`AuditLog.write` refuses detail names that
would suggest one, as a guard against a future mistake. Lines are appended
under an exclusive ``flock`` and fsynced, so concurrent writers (the CLI and
an emulator) never interleave, and a line that was reported written survives
a crash.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import getpass
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["AUDIT_FILE", "AuditLog", "format_time"]

AUDIT_FILE = "audit.log"
log = logging.getLogger("vsc.lifecycle.audit")

#: Details that are times (Unix seconds): written as ISO 8601 UTC.
_TIMES = frozenset({"at", "until", "expires"})
#: Detail names that would hold a secret: refused outright.
_FORBIDDEN = frozenset(
    {"pin", "puk", "new_pin", "admin_key", "key", "management_key", "response", "password"}
)


def format_time(when: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds."""
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


class AuditLog:
    """The audit log of the store at ``root``."""

    def __init__(self, root: Path | str, *, via: str = "cli") -> None:
        self.path = Path(root) / AUDIT_FILE
        self.via = via

    def __repr__(self) -> str:
        return f"<AuditLog {self.path}>"

    def write(self, event: str, card: str | None, message: str, **details: Any) -> None:
        """Append one event; ``details`` must be JSON values and hold no secret."""
        bad = _FORBIDDEN & details.keys()
        if bad:
            raise ValueError(f"audit details must not carry secrets: {sorted(bad)}")
        for name in _TIMES & details.keys():
            if isinstance(details[name], float | int) and not isinstance(details[name], bool):
                details[name] = format_time(float(details[name]))
        entry: dict[str, Any] = {
            "time": format_time(time.time()),
            "event": event,
            "card": card,
            "user": _user(),
            "pid": os.getpid(),
            "via": self.via,
            **details,
            "message": message,
        }
        line = (json.dumps(entry, sort_keys=False) + "\n").encode()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("audit: %s", message)

    def events(self, card: str | None = None) -> Iterator[dict[str, Any]]:
        """The recorded events, oldest first (of one card if ``card`` is given)."""
        with contextlib.suppress(FileNotFoundError), self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a torn last line of a crashed writer
                if isinstance(entry, dict) and (card is None or entry.get("card") == card):
                    yield entry

    def card_hook(self, card: str) -> CardEvents:
        """A callback for :attr:`applets.piv.applet.PivApplet.events` of ``card``."""
        return CardEvents(self, card)


_CARD_MESSAGES = {
    "unblock": "{card}: PIN reset with the admin key (through the card)",
    "unlock": "{card}: unlocked through the card ({duration})",
    "lock": "{card}: locked through the card",
    "admin-key-refused": "{card}: wrong admin key answer through the card ({tries_left} left)",
    "pin-refused": "{card}: new PIN refused by the PIN policy ({reason})",
}


class CardEvents:
    """Writes the PIV applet's lifecycle events of one card to the audit log."""

    def __init__(self, audit: AuditLog, card: str) -> None:
        self.audit = audit
        self.card = card

    def __call__(self, event: str, details: Mapping[str, object]) -> None:
        fields: dict[str, Any] = dict(details)
        seconds = fields.pop("seconds", None)
        if event == "unlock":
            fields["minutes"] = None if seconds is None else int(seconds) // 60
            fields["duration"] = "unrestricted" if seconds is None else f"{seconds} s"
        template = _CARD_MESSAGES.get(event, "{card}: " + event)
        try:
            message = template.format(card=self.card, **fields)
        except (KeyError, IndexError):
            message = f"{self.card}: {event}"
        try:
            self.audit.write(event, self.card, message, **fields)
        except OSError as e:  # the card must keep answering: log and go on
            log.error("cannot write the audit log %s: %s", self.audit.path, e)
