"""The GIDS card's persistent data: life cycle, PIN, PUK, admin-key counter, files.

Theory of operation
-------------------
As with PIV (:mod:`applets.piv.state`), everything a card keeps in EEPROM is
one immutable :class:`GidsRecord`; :class:`GidsData` changes it only by
building the next record and handing it to its store (``save`` is the commit
point), adopting it once ``save`` returned. A retry counter is decremented
and committed *before* the applet compares a PIN, PUK or administrator
answer, so pulling the power during a guess still costs the try.

A GIDS card leaves the factory *empty*: no PIN, no files, the application
in its creation state. Personalisation (gids-tool ``-X``, the Windows
minidriver, ``vsc create --applet gids``) sets the PIN, creates the files,
writes the administrator key, and activates the application. The PIN has 4
to 127 bytes and no padding; CHANGE REFERENCE DATA sends old and new value
back to back, so the card splits them at the length of the value it holds
(:meth:`GidsData.split`): the record keeps each secret's length.

Private keys are not here: they belong to the key store
(:class:`~applets.piv.keys.KeyStore`, slots are key references). The
administrator key is: it is a secret of its key file (``B080``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from types import MappingProxyType
from typing import Any, Protocol

from applets.piv.managed import AdminCounter
from applets.piv.pinrules import PinRules
from applets.piv.state import RetryCounter
from vsc.sw import ApduError

from .files import ADMIN_KEY_REF, GidsFile, LifeCycle, key_fid, parse_fcp

__all__ = [
    "DEFAULT_TRIES",
    "MAX_PIN_LENGTH",
    "MIN_PIN_LENGTH",
    "GidsData",
    "GidsRecord",
    "GidsStore",
    "Reference",
    "Secret",
]

#: The card's own PIN limits (tpmvscmgr: up to 127 characters).
MIN_PIN_LENGTH = 4
MAX_PIN_LENGTH = 127
#: Wrong PINs before the PIN blocks, unless personalisation chose otherwise.
DEFAULT_TRIES = 3


class Reference(IntEnum):
    """Key references of the secrets VERIFY / CHANGE / RESET RETRY COUNTER name in P2."""

    PIN = 0x80
    PUK = 0x81


@dataclass(frozen=True, slots=True)
class Secret:
    """A PIN or PUK: its value (empty where a backend keeps it instead), length, counter."""

    value: bytes = field(repr=False)
    length: int
    tries: RetryCounter

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value.hex(),
            "length": self.length,
            "tries": [self.tries.maximum, self.tries.remaining],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Secret:
        return cls(bytes.fromhex(d["value"]), int(d["length"]), RetryCounter(*map(int, d["tries"])))


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


@dataclass(frozen=True, slots=True)
class GidsRecord:
    """One consistent snapshot of the card's persistent data."""

    serial: int
    state: LifeCycle = LifeCycle.CREATION
    pin: Secret | None = None
    puk: Secret | None = None
    #: Wrong administrator answers: counted, self-healing, never a permanent block.
    admin: AdminCounter = field(default_factory=AdminCounter)
    files: Mapping[int, GidsFile] = field(default_factory=lambda: MappingProxyType({}))
    #: A managed card's PIN policy (``vsc create``); None: the card's own limits only.
    pin_rules: PinRules | None = None

    @classmethod
    def factory(cls, serial: int) -> GidsRecord:
        """A card fresh from the factory: empty, in its creation state."""
        return cls(serial)

    def secret(self, ref: Reference) -> Secret | None:
        return self.pin if ref is Reference.PIN else self.puk

    def with_secret(self, ref: Reference, secret: Secret | None) -> GidsRecord:
        if ref is Reference.PIN:
            return replace(self, pin=secret)
        return replace(self, puk=secret)

    @property
    def admin_key(self) -> GidsFile | None:
        """The administrator key's file, once it holds a key."""
        file = self.files.get(key_fid(ADMIN_KEY_REF))
        return file if file is not None and file.secret is not None else None

    # -- serialisation (for persistent stores) ------------------------------------

    def to_dict(self, *, with_files: bool = True) -> dict[str, Any]:
        document: dict[str, Any] = {
            "serial": self.serial,
            "state": int(self.state),
            "pin": None if self.pin is None else self.pin.to_dict(),
            "puk": None if self.puk is None else self.puk.to_dict(),
            "admin": self.admin.to_dict(),
            "pin_rules": None if self.pin_rules is None else self.pin_rules.to_dict(),
        }
        if with_files:
            document["files"] = [file_to_dict(f) for f in self.files.values()]
        return document

    def to_json(self, *, with_files: bool = True) -> str:
        return json.dumps(self.to_dict(with_files=with_files), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, files: Mapping[int, GidsFile] | None = None) -> GidsRecord:
        """Inverse of :meth:`to_json`; ``files`` when they were stored apart. ``ValueError``
        on anything malformed."""
        try:
            d: dict[str, Any] = json.loads(text)
            if files is None:
                files = {f.fid: f for f in map(file_from_dict, d["files"])}
            return cls(
                serial=int(d["serial"]),
                state=LifeCycle(d["state"]),
                pin=None if d["pin"] is None else Secret.from_dict(d["pin"]),
                puk=None if d["puk"] is None else Secret.from_dict(d["puk"]),
                admin=AdminCounter.from_dict(d["admin"]),
                files=MappingProxyType(dict(files)),
                pin_rules=None if d["pin_rules"] is None else PinRules.from_dict(d["pin_rules"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed GIDS record: {e}") from e


def file_to_dict(file: GidsFile) -> dict[str, Any]:
    return {
        "fid": file.fid,
        "fcp": file.fcp.hex(),
        "state": int(file.state),
        "objects": [[tag, value.hex()] for tag, value in file.objects.items()],
        "secret": None if file.secret is None else file.secret.hex(),
    }


def file_from_dict(d: Mapping[str, Any]) -> GidsFile:
    """Inverse of :func:`file_to_dict` (the FCP is parsed again); ``ValueError`` if malformed."""
    try:
        parsed = parse_fcp(bytes.fromhex(d["fcp"]))
    except ApduError as e:
        raise ValueError(f"stored FCP unreadable: {e}") from e
    if parsed.fid != int(d["fid"]):
        raise ValueError(f"file {int(d['fid']):04X} holds the FCP of {parsed.fid:04X}")
    objects = {int(tag): bytes.fromhex(value) for tag, value in d["objects"]}
    secret = d["secret"]
    return replace(
        parsed,
        state=LifeCycle(d["state"]),
        objects=MappingProxyType(objects),
        secret=None if secret is None else bytes.fromhex(secret),
    )


class GidsStore(Protocol):
    """Where committed records go. ``save`` returning means the record is durable."""

    def save(self, record: GidsRecord) -> None: ...


class MemoryStore:
    """Keeps the last committed record in memory (the default: no durability)."""

    def __init__(self) -> None:
        self.record: GidsRecord | None = None

    def save(self, record: GidsRecord) -> None:
        self.record = record


def random_serial() -> int:
    """An eight-digit serial number (vsc's name for the card; GIDS's own is ``cardid``)."""
    return 10_000_000 + secrets.randbelow(90_000_000)


class GidsData:
    """The card's persistent data; every method that changes it commits once."""

    def __init__(self, record: GidsRecord | None = None, *, store: GidsStore | None = None) -> None:
        self._record = record if record is not None else GidsRecord.factory(random_serial())
        self._store: GidsStore = store if store is not None else MemoryStore()
        # (record before a try, the same record with the try spent, the reference): a
        # right VERIFY goes from the first to the second and back, so the next one reuses
        # both instead of building two records (records are immutable).
        self._spent: tuple[GidsRecord, GidsRecord, Reference] | None = None

    @property
    def record(self) -> GidsRecord:
        return self._record

    @property
    def serial(self) -> int:
        return self._record.serial

    @property
    def state(self) -> LifeCycle:
        return self._record.state

    @property
    def files(self) -> Mapping[int, GidsFile]:
        return self._record.files

    def commit(self, record: GidsRecord) -> None:
        """The commit point: save ``record`` durably, then make it current."""
        self._store.save(record)
        self._record = record

    # -- PIN and PUK ----------------------------------------------------------------

    def secret(self, ref: Reference) -> Secret | None:
        return self._record.secret(ref)

    def consume_try(self, ref: Reference) -> int:
        """Decrement the counter (committed) before a comparison; returns what is left."""
        before = self._record
        cached = self._spent
        if cached is not None and cached[0] is before and cached[2] is ref:
            after = cached[1]  # made from this very record, which had a try left
        else:
            secret = self._require(ref)
            tries = secret.tries
            if tries.remaining == 0:
                raise ValueError(f"{ref.name} is blocked")
            spent = replace(secret, tries=RetryCounter(tries.maximum, tries.remaining - 1))
            after = before.with_secret(ref, spent)
            self._spent = (before, after, ref)
        self.commit(after)
        remaining = after.secret(ref)
        assert remaining is not None
        return remaining.tries.remaining

    def matches(self, ref: Reference, candidate: bytes) -> bool:
        """Constant-time comparison (of digests: lengths do not show) with the value held."""
        return hmac.compare_digest(_digest(self._require(ref).value), _digest(candidate))

    def restore_tries(self, ref: Reference) -> None:
        """After a correct value: the counter back to its maximum."""
        secret = self._require(ref)
        tries = secret.tries
        if tries.remaining == tries.maximum:
            return
        cached = self._spent
        if cached is not None and cached[1] is self._record and cached[2] is ref:
            before = cached[0].secret(ref)
            if before is not None and before.tries.remaining == tries.maximum:
                self.commit(cached[0])  # only the counter differed: this is the full record
                return
        full = RetryCounter(tries.maximum, tries.maximum)
        self.commit(self._record.with_secret(ref, replace(secret, tries=full)))

    def set_secret(
        self, ref: Reference, value: bytes, maximum: int | None = None, *, by_admin: bool = False
    ) -> None:
        """A new PIN or PUK with its counter full (``maximum`` tries, or as before).

        ``by_admin``: the administrator key authorised it (an unblock, a new PUK), not
        knowledge of the value it replaces; a stored card then opens its PIN binding
        with the administrator's role.
        """
        self.commit(self._record.with_secret(ref, self._fresh(ref, value, maximum)))

    def _fresh(self, ref: Reference, value: bytes, maximum: int | None) -> Secret:
        """``value`` with a full counter of ``maximum`` tries (or as many as before)."""
        if maximum is None:
            old = self._record.secret(ref)
            maximum = old.tries.maximum if old is not None else DEFAULT_TRIES
        return Secret(bytes(value), len(value), RetryCounter(maximum, maximum))

    def split(self, ref: Reference, data: bytes) -> tuple[bytes, bytes]:
        """Old and new value of CHANGE REFERENCE DATA (or PUK and new PIN), cut at the held
        value's length."""
        length = self._require(ref).length
        return data[:length], data[length:]

    def _require(self, ref: Reference) -> Secret:
        secret = self._record.secret(ref)
        if secret is None:
            raise ValueError(f"no {ref.name} set")
        return secret

    # -- the administrator key's counter -------------------------------------------

    def consume_admin_try(self, now: float) -> int:
        """Take one try (committed) before a comparison; ``ValueError`` when none is left."""
        admin = self._record.admin.healed(now).spent(now)
        self.commit(replace(self._record, admin=admin))
        return admin.remaining

    def restore_admin_tries(self) -> None:
        admin = self._record.admin
        if admin.remaining != admin.maximum:
            self.commit(replace(self._record, admin=admin.restored()))

    def admin_tries(self, now: float) -> tuple[int, int, float]:
        """(maximum, remaining, seconds until one more try) of the administrator key."""
        admin = self._record.admin.healed(now)
        return admin.maximum, admin.remaining, admin.retry_after(now)

    # -- files and life cycle --------------------------------------------------------

    def put_file(self, file: GidsFile) -> None:
        files = dict(self._record.files)
        files[file.fid] = file
        self.commit(replace(self._record, files=MappingProxyType(files)))

    def remove_file(self, fid: int) -> None:
        files = dict(self._record.files)
        del files[fid]
        self.commit(replace(self._record, files=MappingProxyType(files)))

    def set_admin_key(self, file: GidsFile, key: bytes) -> None:
        """Write the administrator key into its file."""
        self.put_file(file.with_secret(bytes(key)))

    def activate(self) -> None:
        """The application leaves its creation state (personalisation is over)."""
        self.commit(replace(self._record, state=LifeCycle.OPERATIONAL))

    def set_pin_rules(self, rules: PinRules | None) -> None:
        self.commit(replace(self._record, pin_rules=rules))
