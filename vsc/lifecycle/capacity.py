"""How many cards one TPM (or one software backend) may hold, and how they are counted.

Theory of operation
-------------------
Windows lets at most 10 smart cards be connected to a machine, physical and
virtual together; with one TPM per machine that is 10 TPM virtual smart
cards per TPM. vsc holds the same limit per TPM, whichever store directory
(or user) the cards live in.

A TPM is known by the name of its storage key (the same TPM gives the same
name; another TPM, or this one after TPM2_Clear, another). Every card made
on a TPM is entered in the machine's **card register**: a directory with one
sub-directory per TPM and one small file per card, naming the card's
directory (no secret). The cards on a TPM are the register's entries whose
card directory still exists (an entry whose card is gone, destroyed or its
store deleted, no longer counts and is removed), together with this store's
cards sealed by that TPM that have no entry (made before the register).
Creations on one TPM are serialised by a lock in its register directory, so
two stores cannot both take the last place.

The register is ``$VSC_REGISTER``, else :data:`MACHINE_REGISTER`, created
sticky and world-writable (like ``/tmp``) so that every user's cards are
entered; a user who cannot create it gets a register in their own state
directory, which counts only their own stores, and ``vsc tpm status`` says
so. Cards of the software and plain backends are counted per backend kind in
their store: they hold no machine-wide resource.

The limit is :data:`DEFAULT_CAPACITY`; ``--max-cards N`` / ``VSC_MAX_CARDS``
change it, said at every creation beyond it and recorded in the audit log.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from vsc.store import BackendSpec, CardStore, StoreError
from vsc.store.db import read_meta

from .errors import CapacityExceeded

__all__ = [
    "DEFAULT_CAPACITY",
    "MACHINE_REGISTER",
    "Register",
    "device",
    "device_of",
    "on_device",
    "reserve",
]

#: Cards one TPM may hold (Windows: 10 smart cards connected to a machine).
DEFAULT_CAPACITY = 10
#: The machine-wide register (every user's cards, counted per TPM).
MACHINE_REGISTER = Path("/var/lib/vsc/cards")
_LOCK = ".lock"


def device(spec: BackendSpec) -> tuple[str, str]:
    """What a card's capacity is counted against: one TPM, or one software backend."""
    if spec.kind == "tpm":
        from vsc.store.tpm import Tpm

        assert spec.tcti is not None
        tpm = Tpm(spec.tcti, owner_auth=spec.owner_auth)
        return "tpm:" + tpm.srk_name().hex(), f"the TPM at {spec.tcti}"
    return spec.kind, f"the {spec.kind} backend of this store"


def device_of(store: CardStore, name: str) -> str | None:
    """The device card ``name`` counts against (None if its metadata cannot be read)."""
    try:
        identity = json.loads(read_meta(store.path_of(name) / "card.db")["backend"])
    except (StoreError, KeyError, ValueError):
        return None
    kind = str(identity.get("kind"))
    return f"tpm:{identity.get('srk_name')}" if kind == "tpm" else kind


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; another user's (unreadable) counts as existing."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class Register:
    """The card register at ``root``; ``machine_wide``: every user's cards are in it."""

    root: Path
    machine_wide: bool

    @classmethod
    def configured(cls, environ: Mapping[str, str] = os.environ) -> Register:
        """``$VSC_REGISTER``, else the machine's, else (not creatable) this user's."""
        if environ.get("VSC_REGISTER"):
            return cls(Path(environ["VSC_REGISTER"]), True)
        try:
            MACHINE_REGISTER.mkdir(parents=True, exist_ok=True)
            if MACHINE_REGISTER.stat().st_uid == os.geteuid():
                MACHINE_REGISTER.chmod(0o1777)
            if os.access(MACHINE_REGISTER, os.W_OK | os.X_OK):
                return cls(MACHINE_REGISTER, True)
        except OSError:
            pass
        state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return cls(Path(state) / "vsc" / "cards", False)

    def _dir(self, dev: str) -> Path:
        return self.root / dev.replace(":", "-")

    @staticmethod
    def _entry_name(card_dir: Path) -> str:
        return hashlib.sha256(str(card_dir).encode()).hexdigest()[:32] + ".json"

    def cards(self, dev: str) -> dict[Path, str]:
        """The live entries of ``dev``: card directory → card name (dead ones removed)."""
        found: dict[Path, str] = {}
        directory = self._dir(dev)
        if not directory.is_dir():
            return found
        for entry in directory.glob("*.json"):
            try:
                record = json.loads(entry.read_text())
                card_dir, name = Path(record["path"]), str(record["name"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable: not ours to judge, nor to count
            if _exists(card_dir):
                found[card_dir] = name
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
        return found

    @contextlib.contextmanager
    def locked(self, dev: str) -> Iterator[None]:
        """Creations on ``dev`` one at a time, across stores and users."""
        directory = self._dir(dev)
        directory.mkdir(parents=True, exist_ok=True, mode=0o1777 if self.machine_wide else 0o700)
        with contextlib.suppress(OSError):
            if directory.stat().st_uid == os.geteuid():
                directory.chmod(0o1777 if self.machine_wide else 0o700)
        # Read-only is enough for flock, and works on a lock file another user made.
        fd = os.open(directory / _LOCK, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def enter(self, dev: str, store: CardStore, name: str) -> None:
        card_dir = store.path_of(name).resolve()
        record = json.dumps({"path": str(card_dir), "name": name, "store": str(store.root)})
        path = self._dir(dev) / self._entry_name(card_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(record + "\n")

    def remove(self, store: CardStore, name: str) -> None:
        """Forget card ``name`` of ``store`` on every TPM (it was destroyed)."""
        entry = self._entry_name(store.path_of(name).resolve())
        for path in self.root.glob(f"*/{entry}"):
            with contextlib.suppress(OSError):
                path.unlink()


def on_device(store: CardStore, register: Register, dev: str) -> tuple[list[str], list[Path]]:
    """The cards on ``dev``: this store's names, and the card directories of other stores."""
    mine = [n for n in store.names() if device_of(store, n) == dev]
    if not dev.startswith("tpm:"):
        return mine, []
    own = {store.path_of(n).resolve() for n in mine}
    return mine, sorted(p for p in register.cards(dev) if p not in own)


@contextlib.contextmanager
def reserve(
    store: CardStore, spec: BackendSpec, capacity: int, register: Register, name: str | None = None
) -> Iterator[None]:
    """A place on ``spec``'s device for card ``name``, entered in the register if it was made.

    :class:`CapacityExceeded` when the device is full; the check and the
    creation (the block) hold the device's lock."""
    dev, label = device(spec)
    lock = register.locked(dev) if dev.startswith("tpm:") else contextlib.nullcontext()
    with lock:
        mine, others = on_device(store, register, dev)
        if len(mine) + len(others) >= capacity:
            where = ", ".join([*mine, *(str(p) for p in others)])
            raise CapacityExceeded(
                f"{label} already holds {len(mine) + len(others)} cards ({where}): its capacity"
                f" is {capacity} (--max-cards or VSC_MAX_CARDS to change it)"
            )
        yield
        if name is not None and dev.startswith("tpm:") and store.exists(name):
            register.enter(dev, store, name)
