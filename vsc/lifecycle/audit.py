"""The audit log of a card store: one hash-chained JSON line per security event, never a secret.

``STORE/audit.log`` (mode 0600) gets a record for every security event of the
store's cards, from the ``vsc`` command and from the emulator serving a card
of the store (events that happen through the card's APDU interface). Each
record says when, which card, what, who (user, uid, pid, and ``via``: the
``cli`` or the ``emulator``) and the ``outcome`` (``success``, ``refused``:
the card's rules or a wrong secret said no, ``failed``: it could not be
done)::

    {"seq": 7, "time": "2026-11-22T00:42:09.697+00:00", "event": "unlock",
     "card": "alice", "outcome": "success", "user": "alice", "uid": 1000,
     "pid": 4242, "via": "cli", "minutes": 480, "until": "2026-11-22T08:42:09+00:00",
     "message": "alice unlocked for 8 hours", "prev": "9c1e…", "hash": "5b7d…"}

The event names are :class:`Event`'s values. What is never written: PINs,
PUKs, admin keys, challenges' responses, passwords, key material;
:meth:`AuditLog.write` refuses detail names that would suggest one, as a
guard against a future mistake.

Tamper evidence
---------------
Records are numbered (``seq``) and chained: ``hash`` is the SHA-256 of the
record's canonical JSON without ``hash``, and ``prev`` is the previous
record's ``hash``. :meth:`AuditLog.verify` (``vsc audit --verify``) recomputes
the chain, so an edited, removed, inserted or reordered record is found
(lines written before the chain began, by an older vsc, are covered by the
first chained record's ``prev``: a hash of all of them).

A chain alone does not show that records were cut from the *end*. So each
card's database keeps the ``seq`` and ``hash`` of the last record written
about it (its *anchor*, in the card's metadata): a log that no longer has a
card's anchored record was truncated or rewritten. For records of no card or
of a destroyed card, :meth:`verify` accepts an anchor noted elsewhere (the
``seq:hash`` that ``vsc audit --verify`` prints).

What this does not stop: whoever can write the store's files (the user the
cards belong to, or root) can rewrite the whole log, chain and anchors
included; the chain makes that deliberate work rather than an accident, and
an external copy of the head (or of the records: every one is also logged
through Python's ``logging``, e.g. to journald) is what shows it.

Writing
-------
Records are appended under an exclusive ``flock`` and fsynced, so concurrent
writers (the CLI and an emulator) never interleave, and a record that was
reported written survives a crash. A writer that died halfway through a line
leaves a torn tail; the next writer cuts it off and says so in a record of
its own (``audit-torn``). ``audit.log`` is opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import fcntl
import getpass
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsc.store import CardStore
from vsc.store.errors import StoreError, os_storage_failure
from vsc.store.files import make_private_dirs, open_private

__all__ = [
    "AUDIT_FILE",
    "GENESIS",
    "AuditHead",
    "AuditLog",
    "CardEvents",
    "Event",
    "Finding",
    "Outcome",
    "Verification",
    "format_time",
]

AUDIT_FILE = "audit.log"
log = logging.getLogger("vsc.lifecycle.audit")

#: ``prev`` of the first record of a log that had no lines before the chain began.
GENESIS = "0" * 64
_LEGACY_LABEL = b"vsc audit: lines before the chain\n"
#: How much of the log's end a writer reads to find the last record.
_TAIL = 1 << 16

#: Details that are times (Unix seconds): written as ISO 8601 UTC.
_TIMES = frozenset({"at", "until", "expires"})
#: Detail names that would hold a secret: refused outright.
_FORBIDDEN = frozenset(
    {
        "pin",
        "puk",
        "new_pin",
        "new_puk",
        "admin_key",
        "key",
        "management_key",
        "response",
        "password",
        "passphrase",
        "secret",
    }
)
#: Fields the log sets itself: a detail may not override them.
_RESERVED = frozenset(
    {"seq", "time", "event", "card", "outcome", "user", "uid", "pid", "via", "message"}
    | {"prev", "hash"}
)


class Event(enum.StrEnum):
    """The security events of a card, by the name the log records."""

    CREATE = "create"
    PERSONALISE = "personalise"
    DESTROY = "destroy"
    PIN_CHANGE = "pin-change"
    PUK_CHANGE = "puk-change"
    PIN_REFUSED = "pin-refused"  # a new PIN against the PIN policy
    RETRIES = "retries"
    PUK_UNBLOCK = "puk-unblock"
    UNBLOCK = "unblock"  # with the admin key (challenge/response)
    PIN_BLOCKED = "pin-blocked"
    PUK_BLOCKED = "puk-blocked"
    RESET = "reset"
    LOCK = "lock"
    UNLOCK = "unlock"
    CHALLENGE = "challenge"
    ADMIN_KEY_CHANGE = "admin-key-change"
    ADMIN_KEY_REFUSED = "admin-key-refused"
    ADMIN_KEY_BLOCKED = "admin-key-blocked"
    PROVISION = "provision"
    RENEW = "renew"
    REPROVISION = "reprovision"
    ACTIVATED = "activated"
    TPM_LOCKOUT = "tpm-lockout"
    AUDIT_TORN = "audit-torn"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    REFUSED = "refused"  # a wrong secret, the card's rules, a policy said no
    FAILED = "failed"  # it could not be done (storage, TPM, a damaged card)


#: Events that are refusals by nature: their outcome unless the writer says otherwise.
_REFUSALS = frozenset(
    {
        Event.PIN_REFUSED,
        Event.ADMIN_KEY_REFUSED,
        Event.ADMIN_KEY_BLOCKED,
        Event.PIN_BLOCKED,
        Event.PUK_BLOCKED,
        Event.TPM_LOCKOUT,
    }
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


def _digest(record: Mapping[str, Any]) -> str:
    """The ``hash`` of a record: SHA-256 of its canonical JSON without ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _legacy_digest(lines: bytes) -> str:
    return hashlib.sha256(_LEGACY_LABEL + lines).hexdigest()


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


@dataclass(frozen=True, slots=True)
class AuditHead:
    """A point of the chain: record ``seq`` and its ``hash`` (``seq:hash`` as text)."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> AuditHead:
        seq, sep, digest = text.strip().partition(":")
        if not sep or not seq.isdecimal() or len(digest) != 64:
            raise ValueError(f"an audit anchor is SEQ:SHA256-HEX, not {text!r}")
        int(digest, 16)
        return cls(int(seq), digest.lower())

    def to_json(self) -> bytes:
        return json.dumps({"seq": self.seq, "hash": self.hash}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AuditHead:
        d = json.loads(raw)
        return cls(int(d["seq"]), str(d["hash"]))


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong with the log: at ``line`` (1-based; 0: not about one line)."""

    line: int
    problem: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.problem}" if self.line else self.problem


@dataclass(frozen=True, slots=True)
class Verification:
    """What :meth:`AuditLog.verify` found."""

    records: int  # chained records
    legacy: int  # lines before the chain began (covered by the first record's prev)
    head: AuditHead | None
    anchors: int  # anchors checked (cards' and given)
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings


#: Records a card's anchor after a record about it was written.
AnchorWriter = Callable[[str, AuditHead], None]


class AuditLog:
    """The audit log of the store at ``root``.

    ``anchor`` is called with each record's card and head after the record is
    written (by default the store keeps it in the card's database, if the card
    exists); a failure there is logged, never raised: the record is written.
    """

    def __init__(
        self, root: Path | str, *, via: str = "cli", anchor: AnchorWriter | None = None
    ) -> None:
        self.root = Path(root)
        self.path = self.root / AUDIT_FILE
        self.via = via
        self.anchor = anchor if anchor is not None else self._anchor_in_card

    def _anchor_in_card(self, card: str, head: AuditHead) -> None:
        CardStore(self.root).anchor_audit(card, head.seq, head.hash)

    def __repr__(self) -> str:
        return f"<AuditLog {self.path}>"

    # -- writing ------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse now (:class:`vsc.store.files.UnsafePath`, OSError) what :meth:`write` would.

        Called before a change that must be audited, so that it is not made at all
        when its record could not be written.
        """
        try:
            make_private_dirs(self.root)
            os.close(open_private(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, "audit log"))
        except OSError as e:  # a read-only store, a full disk, no permission: said, not a trace
            what = f"cannot write the audit log {self.path}"
            raise os_storage_failure(what, e) or StoreError(f"{what}: {e.strerror or e}") from None

    def write(
        self,
        event: str,
        card: str | None,
        message: str,
        *,
        outcome: str | None = None,
        **details: Any,
    ) -> AuditHead:
        """Append one record; ``details`` must be JSON values and hold no secret.

        ``outcome`` defaults to ``refused`` for events that are refusals by nature
        (a PIN refused by the policy, a wrong admin key, a blocked PIN...), else
        ``success``.
        """
        if outcome is None:
            outcome = Outcome.REFUSED if event in _REFUSALS else Outcome.SUCCESS
        bad = _FORBIDDEN & details.keys()
        if bad:
            raise ValueError(f"audit details must not carry secrets: {sorted(bad)}")
        clash = _RESERVED & details.keys()
        if clash:
            raise ValueError(f"audit details may not set {sorted(clash)}")
        for name in _TIMES & details.keys():
            if isinstance(details[name], float | int) and not isinstance(details[name], bool):
                details[name] = format_time(float(details[name]))
        make_private_dirs(self.root)
        fd = open_private(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, "audit log")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            previous = self._prepare_tail(fd)
            head = self._append(fd, previous, str(event), card, message, str(outcome), details)
        finally:
            os.close(fd)
        log.info("audit: %s (%s)", message, outcome)
        if card is not None:
            try:
                self.anchor(card, head)
            except Exception as e:  # the record is written: say why its anchor is not
                log.warning("audit: cannot anchor record %d in card %r: %s", head.seq, card, e)
        return head

    def _append(
        self,
        fd: int,
        previous: AuditHead,
        event: str,
        card: str | None,
        message: str,
        outcome: str,
        details: Mapping[str, Any],
    ) -> AuditHead:
        entry: dict[str, Any] = {
            "seq": previous.seq + 1,
            "time": format_time(time.time()),
            "event": event,
            "card": card,
            "outcome": outcome,
            "user": _user(),
            "uid": os.geteuid(),
            "pid": os.getpid(),
            "via": self.via,
            **details,
            "message": message,
            "prev": previous.hash,
        }
        entry["hash"] = _digest(entry)
        os.write(fd, (json.dumps(entry) + "\n").encode())
        os.fsync(fd)
        return AuditHead(entry["seq"], entry["hash"])

    def _prepare_tail(self, fd: int) -> AuditHead:
        """The head to chain to; a torn last line (a writer died mid-write) is cut off first."""
        size = os.fstat(fd).st_size
        if size == 0:
            return AuditHead(0, GENESIS)
        start = max(0, size - _TAIL)
        tail = os.pread(fd, size - start, start)
        torn = b""
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            if cut < 0 and start > 0:
                raise OSError(f"{self.path}: a last line longer than {_TAIL} bytes")
            torn = tail[cut + 1 :]
            os.ftruncate(fd, start + cut + 1)
            os.fsync(fd)
            tail = tail[: cut + 1]
        previous = self._head_of(fd, tail, start)
        if torn:
            log.warning("audit: cut a torn last line (%d bytes) from %s", len(torn), self.path)
            previous = self._append(
                fd,
                previous,
                Event.AUDIT_TORN,
                None,
                f"a torn last line ({len(torn)} bytes) of a writer that died was cut off",
                Outcome.SUCCESS,
                {"bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()},
            )
        return previous

    def _head_of(self, fd: int, tail: bytes, start: int) -> AuditHead:
        lines = tail.splitlines()
        if start > 0:
            lines = lines[1:]  # the first may be the end of a line that started earlier
        if not lines:
            if start == 0:
                return AuditHead(0, GENESIS)
            raise OSError(f"{self.path}: a last line longer than {_TAIL} bytes")
        last = lines[-1]
        entry = _parse(last)
        if entry is not None and isinstance(entry.get("hash"), str):
            seq = entry.get("seq")
            return AuditHead(seq if isinstance(seq, int) else 0, entry["hash"])
        if entry is not None:  # lines of an older vsc: the chain starts after them
            everything = os.pread(fd, os.fstat(fd).st_size, 0)
            return AuditHead(0, _legacy_digest(everything))
        # A damaged last line: chain to it as it is; verify reports it.
        return AuditHead(0, hashlib.sha256(last).hexdigest())

    # -- reading ------------------------------------------------------------------------

    def events(self, card: str | None = None) -> Iterator[dict[str, Any]]:
        """The recorded events, oldest first (of one card if ``card`` is given)."""
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
            for line in f:
                entry = _parse(line)
                if entry is not None and (card is None or entry.get("card") == card):
                    yield entry

    def verify(
        self,
        anchors: Mapping[str, AuditHead] | None = None,
        expected: tuple[AuditHead, ...] = (),
    ) -> Verification:
        """Recompute the chain; check the cards' anchors and the ``expected`` heads.

        ``anchors`` by card name; by default those of the store's cards.
        """
        if anchors is None:
            anchors = {
                card: AuditHead(*anchor)
                for card, anchor in CardStore(self.root).audit_anchors().items()
            }
        findings: list[Finding] = []
        records: dict[int, tuple[str, str | None]] = {}  # seq -> (hash, card)
        legacy: list[bytes] = []
        head: AuditHead | None = None
        try:
            with self.path.open("rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            lines = [b""]
        if lines and lines[-1]:
            findings.append(Finding(len(lines), "a torn last line (a writer died mid-write)"))
        for number, raw in enumerate(lines[:-1], 1):
            entry = _parse(raw)
            if entry is None:
                findings.append(Finding(number, "not a record (damaged or inserted text)"))
                head = AuditHead(head.seq if head else 0, hashlib.sha256(raw).hexdigest())
                continue
            if "hash" not in entry:
                if head is None:
                    legacy.append(raw + b"\n")
                else:
                    findings.append(Finding(number, "a record without a hash inside the chain"))
                continue
            if head is None:
                head = AuditHead(0, _legacy_digest(b"".join(legacy)) if legacy else GENESIS)
            seq = entry.get("seq")
            digest = entry.get("hash")
            where = f"record {seq}"
            if _digest(entry) != digest:
                findings.append(Finding(number, f"{where} was changed: its hash does not match"))
            if entry.get("prev") != head.hash:
                findings.append(
                    Finding(
                        number,
                        f"{where} does not follow record {head.seq}: records before it were"
                        " removed, inserted or reordered",
                    )
                )
            elif seq != head.seq + 1:
                findings.append(Finding(number, f"{where} follows record {head.seq}"))
            if isinstance(seq, int) and isinstance(digest, str):
                card = entry.get("card")
                records[seq] = (digest, card if isinstance(card, str) else None)
                head = AuditHead(seq, digest)
        checked = 0
        last = head.seq if head else 0
        for card, anchor in sorted((anchors or {}).items()):
            checked += 1
            found = records.get(anchor.seq)
            if found is None or found[0] != anchor.hash:
                what = "ends at record" if anchor.seq > last else "has another record"
                findings.append(
                    Finding(
                        0,
                        f"card {card!r}: its database anchors record {anchor} but the log"
                        f" {what} {last if anchor.seq > last else anchor.seq}:"
                        " records were cut from the log or it was rewritten",
                    )
                )
            elif found[1] != card:
                findings.append(
                    Finding(
                        0, f"card {card!r}: its anchored record {anchor.seq} is of another card"
                    )
                )
        for anchor in expected:
            checked += 1
            found = records.get(anchor.seq)
            if found is None or found[0] != anchor.hash:
                findings.append(
                    Finding(0, f"the log has no record {anchor}: it was cut or rewritten since")
                )
        return Verification(len(records), len(legacy), head, checked, tuple(findings))

    def card_hook(self, card: str) -> CardEvents:
        """A callback for an applet's ``events`` (and the store's) of ``card``."""
        return CardEvents(self, card)


_CARD_MESSAGES: dict[str, str] = {
    Event.UNBLOCK: "{card}: PIN reset with the admin key (through the card)",
    Event.PUK_UNBLOCK: "{card}: PIN reset with the PUK (through the card)",
    Event.UNLOCK: "{card}: unlocked through the card ({duration})",
    Event.LOCK: "{card}: locked through the card",
    Event.ADMIN_KEY_REFUSED: "{card}: wrong admin key answer through the card ({tries_left} left)",
    Event.PIN_REFUSED: "{card}: new PIN refused by the PIN policy ({reason})",
    Event.PIN_CHANGE: "{card}: PIN changed",
    Event.PUK_CHANGE: "{card}: PUK changed",
    Event.PIN_BLOCKED: "{card}: PIN blocked (no tries left)",
    Event.PUK_BLOCKED: "{card}: PUK blocked (no tries left)",
    Event.RETRIES: "{card}: PIN tries set to {pin_tries}, PUK tries to {puk_tries}",
    Event.RESET: "{card}: card reset to factory state (RESET)",
    Event.ADMIN_KEY_CHANGE: "{card}: admin (management) key changed",
    Event.TPM_LOCKOUT: "{card}: the TPM is in dictionary-attack lockout ({what} not checked)",
    Event.ACTIVATED: "{card}: card activated (personalisation ended)",
}
_REFUSED_MESSAGES: dict[str, str] = {
    Event.PIN_CHANGE: "{card}: PIN change refused (wrong PIN)",
    Event.PUK_CHANGE: "{card}: PUK change refused (wrong PUK)",
    Event.PUK_UNBLOCK: "{card}: PIN reset with the PUK refused (wrong PUK)",
    Event.UNBLOCK: "{card}: PIN reset with the admin key refused",
}


class CardEvents:
    """Writes the security events of one card (its applet's and its store's) to the audit log.

    Called as ``events(name, details)``; ``details`` may carry ``outcome``
    (default ``success``) and never a secret. A log that cannot be written is
    logged as an error: the card keeps answering.
    """

    def __init__(self, audit: AuditLog, card: str) -> None:
        self.audit = audit
        self.card = card

    def __call__(self, event: str, details: Mapping[str, object]) -> None:
        fields: dict[str, Any] = dict(details)
        given = fields.pop("outcome", None)
        outcome = str(given) if given is not None else None
        seconds = fields.pop("seconds", None)
        if event == Event.UNLOCK:
            fields["minutes"] = None if seconds is None else int(seconds) // 60
            fields["duration"] = "unrestricted" if seconds is None else f"{seconds} s"
        if outcome in (None, Outcome.SUCCESS) or event in _REFUSALS:
            template = _CARD_MESSAGES.get(event, "{card}: " + event)
        else:
            template = _REFUSED_MESSAGES.get(event, "{card}: " + event + f" ({outcome})")
        try:
            message = template.format(card=self.card, **fields)
        except (KeyError, IndexError):
            message = f"{self.card}: {event}"
        try:
            self.audit.write(event, self.card, message, outcome=outcome, **fields)
        except (OSError, ValueError, StoreError) as e:  # the card keeps answering: log, go on
            log.error("cannot write the audit log %s: %s", self.audit.path, e)
