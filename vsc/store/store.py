"""The card store: a directory of cards by name, and opening or creating one card by path.

Layout::

    STORE/                      default $VSC_STORE, else $XDG_DATA_HOME/vsc (0700)
      cards/                    (0700)
        NAME/                   one card (0700); also openable by this path
          card.db               SQLite, WAL mode (+ card.db-wal, card.db-shm), 0600
          lock                  flock()ed by the process that has the card open (0600)

**A card exists when its directory is under its name.** A card is made
whole in a hidden sibling directory (``.NAME.creating-XXXX``, locked by its
creator) — its database, and with :func:`creating_card` its application
and personalisation too — and renamed into place only when complete, so an
interrupted creation never leaves a card under its name, and two creators
of the same name cannot both win. What an interrupted creation or
destruction leaves (a hidden directory nobody holds) is wiped by the next
creation or destruction in the store, with a warning; the TPM rollback
counter its files name is freed first (the files are durable before the
counter is defined), and while that cannot be done the directory is kept.

So anything missing or unreadable in a card under its name is damage: a
:class:`CorruptStore` naming the card and the path, never a card silently
made again (see :mod:`vsc.store.application` for the card's application).
A damaged card is still listed (:meth:`CardStore.names`) and can be
destroyed. :meth:`CardStore.destroy` takes the card's lock, renames it out
of the way, overwrites its files and removes them.

The store's directories must be private (:mod:`vsc.store.files`): an
existing store another user owns, or its group or others can write, is
refused before anything in it is read or written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .antihammer import WINDOWS_DEFAULTS, AntiHammer, DaParameters, SoftwareAntiHammer
from .card import StoredCard, binding_auth, open_card_at, record_aad, recovery_record
from .clock import Clock, SystemClock
from .crypto import DecryptionFailed, open_sealed, random_key, x25519_public
from .db import AUDIT_ANCHOR, Database, parse_anchor, read_meta, write_anchor
from .errors import (
    AuthFailed,
    BackendError,
    BackendMismatch,
    CardExists,
    CardNotFound,
    CorruptStore,
    InvalidName,
    NoCounter,
    PcrMismatch,
    StoreError,
    os_storage_failure,
)
from .files import check_private_dir, make_private_dirs, open_private
from .lock import CardLock, is_locked
from .protect import BackendSpec, CounterBank, CounterRef, Protector, open_protector
from .rollback import RollbackGuard, counter_auth
from .settings import CardSettings

log = logging.getLogger(__name__)

CARD_DB = "card.db"
CARD_LOCK = "lock"
CARDS_DIR = "cards"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Hidden directories of a creation or destruction in progress (or interrupted).
#: Seconds before a hidden directory nobody holds counts as abandoned.
_SWEEP_AGE = 60.0
_WORK_RE = re.compile(r"\.([A-Za-z0-9][A-Za-z0-9._-]{0,63})\.(creating|destroying)-[0-9a-f]{8}")


def validate_card_name(name: str) -> str:
    """A card name: 1-64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidName(
            f"bad card name {name!r}: use 1-64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


def default_store_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$VSC_STORE``, else ``$XDG_DATA_HOME/vsc``, else ``~/.local/share/vsc``."""
    if store := environ.get("VSC_STORE"):
        return Path(store).expanduser()
    data = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(data) / "vsc"


@dataclass(frozen=True, slots=True)
class CardInfo:
    """What a listing shows without the card's lock or backend."""

    name: str
    path: Path
    backend: str
    created: float
    in_use: bool


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_card(
    path: Path | str,
    backend: BackendSpec,
    *,
    name: str | None = None,
    clock: Clock | None = None,
    da: DaParameters = WINDOWS_DEFAULTS,
    lockout_auth: bytes = b"",
    settings: CardSettings | None = None,
) -> StoredCard:
    """Create a bare card directory at ``path`` (no application yet) and open it.

    ``da`` and ``lockout_auth`` set the store-enforced anti-hammering of the
    software and plain backends; a TPM's parameters are the TPM's own
    (set them with ``card.anti_hammer.set_parameters``). ``settings`` are
    sealed with the card key (:mod:`vsc.store.settings`). Code that makes a
    complete card uses :func:`creating_card` instead.
    """
    path = Path(path)
    with creating_card(
        path,
        backend,
        name=name,
        clock=clock,
        da=da,
        lockout_auth=lockout_auth,
        settings=settings,
    ):
        pass
    return open_card(path, backend, name=name or path.name, clock=clock)


@contextlib.contextmanager
def creating_card(
    path: Path | str,
    backend: BackendSpec,
    *,
    name: str | None = None,
    clock: Clock | None = None,
    da: DaParameters = WINDOWS_DEFAULTS,
    lockout_auth: bytes = b"",
    settings: CardSettings | None = None,
) -> Iterator[StoredCard]:
    """A new card, open in its staging directory; it appears at ``path`` when the block ends.

    Provision and personalise it inside the block (``open_piv(card,
    provision=True)``, ...). An exception (or a crash) leaves no card at
    ``path`` (and frees the TPM rollback counter the card got);
    :class:`CardExists` if someone else created one there meanwhile.
    ``settings`` are sealed with the card key (:mod:`vsc.store.settings`).
    The card is closed when the block ends: open it again at ``path``.
    """
    settings = settings if settings is not None else CardSettings()
    path = Path(path)
    label = name or path.name
    clock = clock or SystemClock()
    if os.path.lexists(path):
        raise CardExists(label, path)
    _sweep(path.parent, backend)
    staging = path.parent / f".{path.name}.creating-{secrets.token_hex(4)}"
    lock: CardLock | None = None
    card: StoredCard | None = None
    protector: Protector | None = None
    try:
        try:
            staging.mkdir(mode=0o700)
            lock = CardLock(staging / CARD_LOCK, label)
            lock.acquire()  # held from the start: a sweeper leaves it alone
            protector = open_protector(backend)
            _initialise(staging, protector, clock, da, lockout_auth, settings, label)
        except OSError as e:  # a full disk or a read-only store: a StorageFailure
            failure = os_storage_failure(f"cannot create card {label!r} at {path}", e)
            if failure is None:
                raise
            raise failure from None
        card = _open_with_lock(staging, label, lock, backend, clock)
        lock = None  # the card holds it now
        yield card
        card.close()
        try:
            # rename() onto an existing non-empty directory fails: no two creators win.
            os.rename(staging, path)
        except OSError:
            raise CardExists(label, path) from None
        _fsync_dir(path.parent)
    except BaseException:
        if card is not None:
            card.close()
        if lock is not None:
            lock.release()
        if os.path.lexists(staging):
            _discard(staging, label, backend, "creation")
        raise
    finally:
        if protector is not None:
            protector.close()


def _initialise(
    directory: Path,
    protector: Protector,
    clock: Clock,
    da: DaParameters,
    lockout_auth: bytes,
    settings: CardSettings,
    label: str,
) -> None:
    """Write card ``label``'s files into ``directory``, with its rollback counter if it gets one.

    The files name the counter (in the sealed settings) and are durable *before* the TPM
    defines it: a creation killed at any point leaves a record of the counter it may have
    defined, which :func:`_discard` frees.
    """
    card_key = random_key()
    salt = secrets.token_bytes(32)
    bank = None if settings.legacy else protector.counter_bank()
    ref = bank.reserve() if bank is not None else None
    staged = settings if ref is None else replace(settings, rollback_counter=ref.handle)
    _write_files(directory, protector, clock, da, lockout_auth, staged, card_key, salt, label)
    if bank is None or ref is None:
        return
    try:
        value = bank.define(ref, counter_auth(card_key))
    except NoCounter as e:
        # A managed machine's TPM: its owner may make cards without the owner's secret
        # (issue of the lifecycle); such a card has no rollback protection, and says so.
        log.warning("card %r: created WITHOUT rollback protection: %s", label, e)
        _reseal(directory, protector, settings, card_key, label)
        return
    _stamp(directory, bank, ref, card_key, value, label)


def _sealed_key(protector: Protector, settings: CardSettings, card_key: bytes) -> bytes:
    payload = settings.seal_payload(card_key)
    if settings.pcrs:
        return protector.seal_to_pcrs(payload, settings.pcrs)
    return protector.seal(payload)


def _reseal(
    directory: Path, protector: Protector, settings: CardSettings, card_key: bytes, label: str
) -> None:
    """Seal the card key of the files in ``directory`` again, with ``settings``."""
    db = Database(directory / CARD_DB, label=label)
    try:
        with db.transaction():
            db.write(
                "UPDATE meta SET value = ? WHERE key = 'card_key'",
                (_sealed_key(protector, settings, card_key),),
            )
    finally:
        db.close()


def _write_files(
    directory: Path,
    protector: Protector,
    clock: Clock,
    da: DaParameters,
    lockout_auth: bytes,
    settings: CardSettings,
    card_key: bytes,
    salt: bytes,
    label: str,
) -> None:
    meta = {
        "card_id": secrets.token_bytes(16),
        "salt": salt,
        "created": repr(time.time()).encode(),
        "backend": json.dumps(protector.identity(), sort_keys=True).encode(),
        "card_key": _sealed_key(protector, settings, card_key),
    }
    db = Database(directory / CARD_DB, create=True, label=label)
    try:
        with db.transaction():
            db.initialise(meta)
            SoftwareAntiHammer.initialise(db, clock, salt, da, lockout_auth)
    finally:
        db.close()


def _stamp(
    directory: Path, bank: CounterBank, ref: CounterRef, card_key: bytes, value: int, label: str
) -> None:
    db = Database(directory / CARD_DB, label=label)
    try:
        with db.transaction():
            RollbackGuard(label, bank, ref, card_key).stamp(db, value)
    finally:
        db.close()


def _remove_counter(protector: Protector, ref: CounterRef, label: str) -> None:
    bank = protector.counter_bank()
    try:
        if bank is not None:
            bank.remove(ref)
    except StoreError as e:
        log.warning("card %r: could not free its TPM counter %#010x: %s", label, ref.handle, e)


def _discard(directory: Path, label: str, backend: BackendSpec | None, what: str) -> bool:
    """Free the TPM counter that an abandoned card directory names, then wipe it; whether it did.

    While that counter may be defined and cannot be freed now (no TPM given, the TPM out of
    reach or refusing the owner authorisation) the directory is kept, and said so: its files
    are the only record of the counter, and the next creation or destruction given the TPM
    frees it.
    """
    try:
        _free_recorded_counter(directory, label, backend)
    except StoreError as e:
        log.warning(
            "keeping %s, what an interrupted %s of card %r left: it names a TPM rollback"
            " counter that may be defined and cannot be freed now (%s). The next vsc create or"
            " destroy given that TPM (and its owner authorisation, if set) frees it; remove the"
            " directory by hand to give the counter up",
            directory, what, label, e,
        )  # fmt: skip
        return False
    _wipe(directory)
    return True


def _free_recorded_counter(directory: Path, label: str, backend: BackendSpec | None) -> None:
    """Free the rollback counter the card files in ``directory`` name, if it is theirs."""
    if not (directory / CARD_DB).is_file():
        return  # the files are written before a counter is defined: none was
    try:
        meta = read_meta(directory / CARD_DB, label)
        identity = json.loads(meta["backend"])
        sealed_key = meta["card_key"]
    except (CorruptStore, KeyError, ValueError):
        return  # never committed whole: the creation died writing it, before any counter
    if not isinstance(identity, dict) or identity.get("kind") != "tpm":
        return
    if backend is None or backend.kind != "tpm":
        raise BackendError("no TPM was given to this command")
    protector = open_protector(backend, identity)
    try:
        card_key, settings = CardSettings.open_payload(protector.unseal(sealed_key), label)
        bank = protector.counter_bank()
        if settings.rollback_counter is None or bank is None:
            return
        ref = CounterRef(settings.rollback_counter)
        # Proven by the counter's own auth: the handle may never have been defined by this
        # creation, and be another card's counter now.
        if bank.remove(ref, counter_auth(card_key)):
            log.warning("card %r: freed the TPM counter %#010x it had defined", label, ref.handle)
    finally:
        protector.close()


def open_card(
    path: Path | str,
    backend: BackendSpec,
    *,
    name: str | None = None,
    clock: Clock | None = None,
    recover: Recovery | None = None,
) -> StoredCard:
    """Open the card at ``path``: take its lock, check the backend, unseal the card key.

    :class:`CardNotFound` if there is no card there; :class:`CorruptStore` if
    the card's directory is there but its database is not (or is damaged);
    :class:`CardInUse` if another process has it open; :class:`BackendMismatch`
    if ``backend`` is not the TPM / key the card was sealed with;
    :class:`PcrMismatch` if the card is bound to a boot state that changed
    (unless ``recover`` opens it: then re-seal with
    :meth:`StoredCard.reseal_to_boot_state` once the caller is satisfied).
    """
    path = Path(path)
    label = name or path.name
    clock = clock or SystemClock()
    if not path.is_dir():
        raise CardNotFound(label, path)
    if not (path / CARD_DB).is_file() and not os.path.lexists(path / CARD_LOCK):
        raise CardNotFound(label, path)  # a directory, but never a card: leave it alone
    check_private_dir(path, f"card {label!r}")
    lock = CardLock(path / CARD_LOCK, label)
    lock.acquire()
    try:
        return _open_with_lock(path, label, lock, backend, clock, recover)
    except BaseException:
        lock.release()
        raise


@dataclass(frozen=True, slots=True)
class Recovery:
    """How to open a card bound to a boot state that changed: a role of one of its bindings
    (the PIN) opens the copy of the card key kept for that (see :meth:`StoredCard.create_binding`).
    """

    binding: str
    role: str
    secret: bytes = field(repr=False)


def _recover(
    db: Database, protector: Protector, card_id: bytes, salt: bytes, how: Recovery, label: str
) -> bytes:
    """The card key payload from the recovery record; the TPM checks (and counts) the secret."""
    seal = db.one(
        "SELECT blob FROM binding_seals WHERE binding = ? AND role = ?", (how.binding, how.role)
    )
    bound_to = db.one("SELECT public FROM bindings WHERE name = ?", (how.binding,))
    name = recovery_record(how.binding)
    record = db.one("SELECT protection, value FROM records WHERE name = ?", (name,))
    if seal is None or bound_to is None or record is None:
        raise CorruptStore(f"card {label!r} has no copy of its key for {how.binding}/{how.role}")
    auth = binding_auth(protector, salt, card_id, how.binding, how.role, how.secret)
    try:
        private = protector.unseal(bytes(seal[0]), auth=auth)
    except AuthFailed:
        raise AuthFailed(f"card {label!r}: wrong {how.role}") from None
    if x25519_public(private) != bytes(bound_to[0]):
        raise CorruptStore(f"card {label!r}: binding {how.binding!r} is inconsistent")
    try:
        payload = open_sealed(private, bytes(record[1]), record_aad(card_id, name, str(record[0])))
    except DecryptionFailed:
        raise CorruptStore(f"card {label!r}: its key's recovery copy fails its check") from None
    log.warning("card %r: opened with its %s after a change of the boot state", label, how.role)
    return payload


def _open_with_lock(
    path: Path,
    label: str,
    lock: CardLock,
    backend: BackendSpec,
    clock: Clock,
    recover: Recovery | None = None,
) -> StoredCard:
    if not (path / CARD_DB).is_file():
        raise CorruptStore(f"card {label!r} at {path}: its database {CARD_DB} is missing")
    db = Database(path / CARD_DB, label=label)
    try:
        return _open_locked(path, label, lock, db, backend, clock, recover)
    except BaseException:
        db.close()
        raise


def _open_locked(
    path: Path,
    label: str,
    lock: CardLock,
    db: Database,
    backend: BackendSpec,
    clock: Clock,
    recover: Recovery | None = None,
) -> StoredCard:
    db.check_format()
    meta = db.meta()
    try:
        identity = json.loads(meta["backend"])
        card_id, salt, sealed_key = meta["card_id"], meta["salt"], meta["card_key"]
    except (KeyError, ValueError) as e:
        raise CorruptStore(f"card {label!r} at {path}: bad metadata ({e})") from None
    protector = open_protector(backend, identity)
    try:
        try:
            payload = protector.unseal(sealed_key)
        except PcrMismatch as e:
            if recover is None:
                raise PcrMismatch(
                    f"card {label!r} is bound to the boot state and {e}. If the change was"
                    " legitimate (a firmware, boot loader or kernel update), re-bind the card"
                    f" with its PIN and admin key: vsc rebind-pcr {label}"
                ) from None
            payload = _recover(db, protector, card_id, salt, recover, label)
        except (AuthFailed, BackendMismatch) as e:
            raise BackendMismatch(f"card {label!r}: cannot unseal its key: {e}") from None
        card_key, settings = CardSettings.open_payload(payload, label)
        rollback = _rollback_guard(label, protector, settings, card_key)
        if rollback is not None:
            rollback.check(db)
            db.commit_hook = rollback
        anti_hammer: AntiHammer | None = protector.anti_hammer()
        if anti_hammer is None:
            software = SoftwareAntiHammer(db, clock, salt)
            software.restart()
            anti_hammer = software
        return StoredCard(
            name=label,
            path=path,
            lock=lock,
            db=db,
            protector=protector,
            anti_hammer=anti_hammer,
            card_id=card_id,
            salt=salt,
            card_key=card_key,
            clock=clock,
            settings=settings,
            rollback=rollback,
        )
    except BaseException:
        protector.close()
        raise


def _rollback_guard(
    label: str, protector: Protector, settings: CardSettings, card_key: bytes
) -> RollbackGuard | None:
    if settings.rollback_counter is None:
        return None
    bank = protector.counter_bank()
    if bank is None:
        raise CorruptStore(f"card {label!r}: a rollback counter on a backend without counters")
    return RollbackGuard(label, bank, CounterRef(settings.rollback_counter), card_key)


def _sealed_settings(
    path: Path, label: str, backend: BackendSpec
) -> tuple[Protector, CardSettings]:
    """The backend and sealed settings of a card, without its lock or any check of its state."""
    meta = read_meta(path / CARD_DB, label)
    try:
        identity = json.loads(meta["backend"])
        sealed_key = meta["card_key"]
    except (KeyError, ValueError) as e:
        raise CorruptStore(f"card {label!r}: bad metadata ({e})") from None
    protector = open_protector(backend, identity)
    try:
        _, settings = CardSettings.open_payload(protector.unseal(sealed_key), label)
    except BaseException:
        protector.close()
        raise
    return protector, settings


def _wipe(directory: Path) -> None:
    """Overwrite the files of a card being destroyed, then remove them (best effort:
    copy-on-write filesystems and SSDs may keep old blocks)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for file in directory.iterdir():
            with contextlib.suppress(OSError):
                if not file.is_file() or file.is_symlink():
                    continue
                size = file.stat().st_size
                fd = open_private(file, os.O_RDWR, "card file")
                with os.fdopen(fd, "r+b") as f:
                    f.write(b"\0" * size)
                    f.flush()
                    os.fsync(f.fileno())
    shutil.rmtree(directory, ignore_errors=True)


def _sweep(cards_dir: Path, backend: BackendSpec | None) -> None:
    """Wipe what interrupted creations and destructions left in ``cards_dir``; free the TPM
    counters they name with ``backend`` (kept, and said so, when it cannot)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in cards_dir.iterdir():
            match = _WORK_RE.fullmatch(entry.name)
            if match is None or not entry.is_dir() or entry.is_symlink():
                continue
            try:
                young = time.time() - entry.stat().st_mtime < _SWEEP_AGE
            except OSError:
                continue
            if young or is_locked(entry / CARD_LOCK):
                continue  # in progress (its creator may not hold its lock yet)
            what = "creation" if match.group(2) == "creating" else "destruction"
            if _discard(entry, match.group(1), backend, what):
                log.warning("wiped %s: an interrupted %s of card %r", entry, what, match.group(1))


class CardStore:
    """A directory of cards, addressed by name.

    Every method that reads or writes the store first checks that its
    directories are private (:class:`vsc.store.files.UnsafePath` if not).
    """

    def __init__(self, root: Path | str | None = None, *, clock: Clock | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_path()
        self.clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"<CardStore {self.root}>"

    @property
    def cards_dir(self) -> Path:
        return self.root / CARDS_DIR

    def path_of(self, name: str) -> Path:
        return self.cards_dir / validate_card_name(name)

    def check(self) -> bool:
        """Whether the store exists; :class:`UnsafePath` if it (or ``cards/``) is not private."""
        if not os.path.lexists(self.root):
            return False
        check_private_dir(self.root, "store")
        if os.path.lexists(self.cards_dir):
            check_private_dir(self.cards_dir, "store cards directory")
        return True

    def make(self) -> None:
        """Create the store (0700, missing parents too) or check the one there."""
        make_private_dirs(self.root, "store")
        make_private_dirs(self.cards_dir, "store cards directory")

    def names(self) -> list[str]:
        """The cards in the store, sorted (damaged ones too: a card is its directory)."""
        if not self.check() or not self.cards_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.cards_dir.iterdir() if _NAME_RE.fullmatch(p.name) and p.is_dir()
        )

    def exists(self, name: str) -> bool:
        path = self.path_of(name)
        self.check()
        return os.path.lexists(path)

    @contextlib.contextmanager
    def creating(
        self,
        name: str,
        backend: BackendSpec,
        *,
        da: DaParameters = WINDOWS_DEFAULTS,
        lockout_auth: bytes = b"",
        settings: CardSettings | None = None,
    ) -> Iterator[StoredCard]:
        """:func:`creating_card` in the store: the card appears under ``name`` when complete."""
        path = self.path_of(name)
        self.make()
        with creating_card(
            path,
            backend,
            name=name,
            clock=self.clock,
            da=da,
            lockout_auth=lockout_auth,
            settings=settings,
        ) as card:
            yield card

    def create(
        self,
        name: str,
        backend: BackendSpec,
        *,
        da: DaParameters = WINDOWS_DEFAULTS,
        lockout_auth: bytes = b"",
        settings: CardSettings | None = None,
    ) -> StoredCard:
        """A bare card (no application yet), open; see :meth:`creating` for a complete one."""
        with self.creating(name, backend, da=da, lockout_auth=lockout_auth, settings=settings):
            pass
        return self.open(name, backend)

    def open(
        self, name: str, backend: BackendSpec, *, recover: Recovery | None = None
    ) -> StoredCard:
        path = self.path_of(name)
        self.check()
        return open_card(path, backend, name=name, clock=self.clock, recover=recover)

    def info(self, name: str) -> CardInfo:
        """What a listing shows; :class:`CorruptStore` (naming what) for a damaged card."""
        path = self.path_of(name)
        self.check()
        if not path.is_dir():
            raise CardNotFound(name, path)
        if not (path / CARD_DB).is_file():
            raise CorruptStore(f"card {name!r} at {path}: its database {CARD_DB} is missing")
        meta = read_meta(path / CARD_DB, name)
        try:
            kind = str(json.loads(meta["backend"])["kind"])
            created = float(meta["created"])
        except (KeyError, ValueError, TypeError) as e:
            raise CorruptStore(f"card {name!r} at {path}: bad metadata ({e})") from None
        return CardInfo(name, path, kind, created, is_locked(path / CARD_LOCK))

    def destroy(self, name: str, backend: BackendSpec | None = None) -> None:
        """Delete a card that nobody has open (a damaged one too); its files are overwritten.

        With ``backend``, its TPM rollback counter is freed too (also for a card
        refused as rolled back); without, or when the TPM cannot be reached, the
        counter stays defined in the TPM (logged).
        """
        path = self.path_of(name)
        self.check()
        if not path.is_dir() or path.is_symlink():
            raise CardNotFound(name, path)
        _sweep(self.cards_dir, backend)
        trash = self.cards_dir / f".{name}.destroying-{secrets.token_hex(4)}"
        with CardLock(path / CARD_LOCK, name):
            counter = self._counter_of(path, name, backend)
            os.rename(path, trash)
            _fsync_dir(self.cards_dir)
        if counter is not None:
            # Before the wipe: until the counter is freed, the files are its record (a
            # destruction killed here is finished by the next sweep given the TPM).
            protector, ref = counter
            try:
                _remove_counter(protector, ref, name)
            finally:
                protector.close()
        _wipe(trash)

    @staticmethod
    def _counter_of(
        path: Path, name: str, backend: BackendSpec | None
    ) -> tuple[Protector, CounterRef] | None:
        if backend is None or backend.kind != "tpm":
            return None
        try:
            protector, settings = _sealed_settings(path, name, backend)
        except StoreError as e:
            log.warning("card %r: its TPM counter (if any) stays defined: %s", name, e)
            return None
        if settings.rollback_counter is None:
            protector.close()
            return None
        return protector, CounterRef(settings.rollback_counter)

    # -- audit anchors --------------------------------------------------------------------

    def anchor_audit(self, name: str, seq: int, digest: str) -> None:
        """Record audit record ``seq`` (``digest``) in card ``name``, if it exists."""
        path = self.path_of(name)
        if not (path / CARD_DB).is_file():
            return  # no card (destroyed, never made, damaged): nothing to anchor in
        card = open_card_at(path)
        if card is not None and not card.closed:
            card.anchor_audit(seq, digest)
        else:
            write_anchor(path / CARD_DB, seq, digest)

    def audit_anchors(self) -> dict[str, tuple[int, str]]:
        """Each readable card's audit anchor (cards without one, or damaged, are left out)."""
        anchors = {}
        for name in self.names():
            with contextlib.suppress(CorruptStore, OSError):
                anchor = parse_anchor(
                    read_meta(self.path_of(name) / CARD_DB, name).get(AUDIT_ANCHOR)
                )
                if anchor is not None:
                    anchors[name] = anchor
        return anchors
