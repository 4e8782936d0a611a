"""The store's files and directories are private, and vsc trusts only private ones.

Through ``vsc`` and the emulator as processes:

* every directory vsc creates (the store root and any missing parent,
  ``cards/``, each card) is 0700 and every file 0600, also when the emulator
  creates a store with ``--card X --store NEW``;
* ``audit.log`` and a card's ``lock`` are never followed through a symbolic
  link (its target is not touched) and the command is refused before it
  changes anything;
* a store another user could write (a 0777 ``--store``) is refused, named.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vsc.store import CardStore
from vsc.testing import EmulatorProcess

from ..lifecycle.conftest import PIN, Vsc
from .test_emulator_cards import unused_port, wait_in_use
from .test_integrity import emulator

PLAIN = ["--insecure-plain"]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def vsc(tmp_path: Path) -> Vsc:
    return Vsc(tmp_path / "parent" / "store", PLAIN)


@pytest.fixture
def serving(vsc: Vsc) -> Iterator[EmulatorProcess]:
    """The emulator creating card "new" in a store (and a parent) that do not exist yet."""
    old = os.umask(0o022)  # the usual umask: the emulator inherits it
    try:
        process = EmulatorProcess(unused_port(), "--store", str(vsc.store), "--card", "new", *PLAIN)
        process.start()
    finally:
        os.umask(old)
    try:
        wait_in_use(CardStore(vsc.store), "new", process)
        yield process
    finally:
        process.stop()


def test_the_emulator_creates_a_private_store(vsc: Vsc, serving: EmulatorProcess) -> None:
    for directory in (
        vsc.store.parent,
        vsc.store,
        vsc.store / "cards",
        vsc.store / "cards" / "new",
    ):
        assert mode(directory) == 0o700, directory
    files = [vsc.store / "audit.log", *(vsc.store / "cards" / "new").iterdir()]
    assert files and all(mode(f) == 0o600 for f in files), {f.name: oct(mode(f)) for f in files}


def test_vsc_creates_a_private_store(vsc: Vsc) -> None:
    vsc.run("create", "alice", "--pin", PIN)
    for directory in (vsc.store.parent, vsc.store, vsc.store / "cards" / "alice"):
        assert mode(directory) == 0o700, directory
    for file in (vsc.store / "audit.log", vsc.store / ".lifecycle.lock"):
        assert mode(file) == 0o600, file


def test_a_symlinked_audit_log_is_refused_and_not_followed(vsc: Vsc, tmp_path: Path) -> None:
    vsc.run("create", "alice", "--pin", PIN)
    target = tmp_path / "target"
    target.write_text("someone else's file\n")
    (vsc.store / "audit.log").unlink()
    (vsc.store / "audit.log").symlink_to(target)

    refused = vsc.run("create", "bob", "--pin", PIN, status=1)
    assert "audit log" in refused.stderr and "symbolic link" in refused.stderr
    assert not (vsc.store / "cards" / "bob").exists()  # refused before anything changed
    refused = vsc.run("destroy", "alice", status=1)
    assert "symbolic link" in refused.stderr
    assert (vsc.store / "cards" / "alice").is_dir()
    served = emulator(vsc, "--card", "alice")
    assert served.returncode == 2 and "symbolic link" in served.stderr, served.stderr
    assert target.read_text() == "someone else's file\n"


def test_a_symlinked_card_lock_is_refused(vsc: Vsc, tmp_path: Path) -> None:
    vsc.run("create", "alice", "--pin", PIN)
    target = tmp_path / "target"
    target.write_text("keep\n")
    lock = vsc.store / "cards" / "alice" / "lock"
    lock.unlink()
    lock.symlink_to(target)
    refused = vsc.run("info", "alice", status=1)
    assert "card lock" in refused.stderr and "symbolic link" in refused.stderr
    assert target.read_text() == "keep\n"


@pytest.mark.parametrize("where", ["store", "cards"])
def test_a_store_others_can_write_is_refused(vsc: Vsc, where: str) -> None:
    vsc.run("create", "alice", "--pin", PIN)
    loose = vsc.store if where == "store" else vsc.store / "cards"
    loose.chmod(0o777)
    for command in (["list"], ["info", "alice"], ["create", "bob", "--pin", PIN]):
        refused = vsc.run(*command, status=1)
        assert str(loose) in refused.stderr and "writable by others" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert not (vsc.store / "cards" / "bob").exists()
    loose.chmod(0o700)
    vsc.run("list")
