"""A damaged or half-made card is refused loudly, through ``vsc`` and the emulator as processes.

* A card that lost part of itself (its PIV or GIDS record, its database, a
  page of its database, its metadata) is a ``CorruptStore`` naming the card
  and the file, never a card silently made again: nothing is deleted, the
  emulator exits 2, ``vsc info`` fails with the reason, ``vsc list`` shows
  the other cards and marks it damaged (exit 1), and ``vsc destroy`` removes it.
* A creation that is killed halfway leaves no card under its name; a bare
  card (no application) is not provisioned by whoever opens it next.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vsc.store import BackendSpec, CardStore
from vsc.testing import EmulatorProcess

from ..lifecycle.conftest import PIN, Vsc
from .test_emulator_cards import unused_port, wait_in_use

TIMEOUT = 30.0
PLAIN = ["--insecure-plain"]


@pytest.fixture
def vsc(tmp_path: Path) -> Vsc:
    return Vsc(tmp_path / "store", PLAIN)


def records(vsc: Vsc, name: str) -> list[str]:
    with sqlite3.connect(vsc.store / "cards" / name / "card.db") as db:
        return [str(r[0]) for r in db.execute("SELECT name FROM records ORDER BY name")]


def sql(vsc: Vsc, name: str, statement: str) -> None:
    db = sqlite3.connect(vsc.store / "cards" / name / "card.db")
    try:
        db.execute(statement)
        db.commit()
    finally:
        db.close()


def emulator(vsc: Vsc, *args: str) -> subprocess.CompletedProcess[str]:
    """The emulator on a card of the store, expected to refuse it at once."""
    return subprocess.run(
        [sys.executable, "-m", "vsc.emulator", "-P", str(unused_port()),
         "--store", str(vsc.store), *PLAIN, *args],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


def serial_of(vsc: Vsc, name: str) -> int:
    serial = vsc.run("info", name, "--json").json()["serial"]
    assert isinstance(serial, int)
    return serial


# -- a missing record -----------------------------------------------------------------------


def test_a_card_without_its_piv_record_is_refused_not_reset(vsc: Vsc) -> None:
    vsc.run("create", "alice", "--pin", PIN, "--generate")
    before = records(vsc, "alice")
    assert "piv/slot/9a/key" in before and "piv/slot/9c/key" in before
    sql(vsc, "alice", "DELETE FROM records WHERE name = 'piv/record'")
    lost = [r for r in before if r != "piv/record"]

    info = vsc.run("info", "alice", status=1)
    assert "card 'alice'" in info.stderr and str(vsc.store / "cards" / "alice") in info.stderr
    assert "piv/record is missing" in info.stderr and "Traceback" not in info.stderr
    served = emulator(vsc, "--card", "alice")
    assert served.returncode == 2, served.stderr
    assert "piv/record is missing" in served.stderr and "created with factory" not in served.stderr
    # Nothing was wiped, nothing provisioned: the keys, the objects, no new record.
    assert records(vsc, "alice") == lost


def test_a_gids_card_without_its_record_is_refused_by_the_emulator(vsc: Vsc) -> None:
    vsc.run("create", "g", "--applet", "gids", "--pin", PIN)
    sql(vsc, "g", "DELETE FROM records WHERE name = 'gids/record'")
    before = records(vsc, "g")
    served = emulator(vsc, "--card", "g")
    assert served.returncode == 2 and "gids/record is missing" in served.stderr
    assert records(vsc, "g") == before


def test_a_card_without_its_database_is_damaged_not_new(vsc: Vsc) -> None:
    vsc.run("create", "alice", "--pin", PIN)
    (vsc.store / "cards" / "alice" / "card.db").unlink()
    served = emulator(vsc, "--card", "alice")
    assert served.returncode == 2, served.stderr
    assert "card.db is missing" in served.stderr
    assert not (vsc.store / "cards" / "alice" / "card.db").exists()  # not made again
    info = vsc.run("info", "alice", status=1)
    assert "card 'alice'" in info.stderr and "card.db is missing" in info.stderr


# -- corrupt database pages, damaged metadata -------------------------------------------------


def smash_table(vsc: Vsc, name: str, table: str) -> None:
    """Overwrite the b-tree root page of ``table`` in a card's (checkpointed) database."""
    path = vsc.store / "cards" / name / "card.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?", (table,)
        ).fetchone()
    db.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\x0d" + b"\xa5" * (page_size - 1))


def test_a_corrupt_page_is_reported_for_that_card_only(vsc: Vsc) -> None:
    vsc.run("create", "alice", "--pin", PIN)
    vsc.run("create", "bob", "--pin", PIN)
    smash_table(vsc, "alice", "records")

    info = vsc.run("info", "alice", status=1)
    assert "card 'alice'" in info.stderr and "damaged" in info.stderr
    assert "Traceback" not in info.stderr
    listing = vsc.run("list", status=1)
    lines = dict(line.split(None, 1) for line in listing.stdout.splitlines())
    assert set(lines) == {"alice", "bob"}
    assert "DAMAGED" in lines["alice"] and "unlocked" in lines["bob"]
    assert "card 'alice'" in listing.stderr and "malformed" in listing.stderr
    vsc.run("info", "bob")  # the others work

    served = emulator(vsc, "--card", "alice")
    assert served.returncode == 2 and "card 'alice'" in served.stderr
    assert "Traceback" not in served.stderr

    vsc.run("destroy", "alice")
    assert not (vsc.store / "cards" / "alice").exists()
    assert [c["name"] for c in vsc.run("list", "--json").json()] == ["bob"]


def test_a_card_with_damaged_metadata_is_listed_as_damaged(vsc: Vsc) -> None:
    vsc.run("create", "alice", "--pin", PIN)
    vsc.run("create", "bob", "--pin", PIN)
    sql(vsc, "alice", "DELETE FROM meta WHERE key = 'backend'")
    for extra in ([], ["--json"]):
        listing = vsc.run("list", *extra, backend=False, status=1)
        assert "alice" in listing.stdout and "bob" in listing.stdout
        assert "card 'alice'" in listing.stderr and "bad metadata" in listing.stderr
    cards = vsc.run("list", "--json", status=1).json()
    assert [(c["name"], bool(c["damaged"])) for c in cards] == [("alice", True), ("bob", False)]
    vsc.run("destroy", "alice", backend=False)
    vsc.run("list")


def test_a_card_that_is_not_a_database_is_refused(vsc: Vsc) -> None:
    vsc.run("create", "alice", "--pin", PIN)
    db = vsc.store / "cards" / "alice" / "card.db"
    db.write_bytes(os.urandom(db.stat().st_size))
    info = vsc.run("info", "alice", status=1)
    assert "card 'alice'" in info.stderr and "not a card database" in info.stderr
    vsc.run("destroy", "alice")


# -- interrupted creations ---------------------------------------------------------------------

#: ``vsc create`` that dies (SIGKILL) right after the card's keys are generated.
KILLED_CREATE = """
import os, signal, sys
import vsc.lifecycle.creation as creation
from vsc.cli import main
real = creation.generate_keys
def generate_then_die(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
creation.generate_keys = generate_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_a_creation_killed_halfway_leaves_no_card(vsc: Vsc) -> None:
    argv = ["create", "alice", "--pin", PIN, "--generate", *PLAIN]
    done = subprocess.run(
        [sys.executable, "-c", KILLED_CREATE, *argv],
        env=vsc.env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr
    # Not a half-personalised card (factory admin key, unmanaged) under its name.
    assert vsc.run("list", "--json").json() == []
    vsc.run("info", "alice", status=1)
    leftovers = [p for p in (vsc.store / "cards").iterdir() if p.name.startswith(".alice.")]
    assert len(leftovers) == 1
    # The name is free; what the killed creation left is wiped once it is stale.
    old = time.time() - 3600
    os.utime(leftovers[0], (old, old))
    vsc.run("create", "alice", "--pin", PIN)
    assert [p.name for p in (vsc.store / "cards").iterdir()] == ["alice"]
    assert vsc.run("info", "alice", "--json").json()["managed"]


def test_a_bare_card_is_not_provisioned_by_the_emulator(vsc: Vsc) -> None:
    CardStore(vsc.store).create("bare", BackendSpec.plain()).close()
    served = emulator(vsc, "--card", "bare")
    assert served.returncode == 2
    assert "has no card application: its creation never finished" in served.stderr
    assert records(vsc, "bare") == []


@pytest.fixture
def serving(vsc: Vsc) -> Iterator[EmulatorProcess]:
    """The emulator creating card "new" (absent) in a store that does not exist yet."""
    process = EmulatorProcess(unused_port(), "--store", str(vsc.store), "--card", "new", *PLAIN)
    process.start()
    try:
        wait_in_use(CardStore(vsc.store), "new", process)
        yield process
    finally:
        process.stop()


def test_the_emulator_makes_a_missing_card_whole_and_audits_it(
    vsc: Vsc, serving: EmulatorProcess
) -> None:
    assert "created with factory defaults" in serving.log_text()
    (created,) = vsc.audit.events("new")
    assert (created["event"], created["via"], created["outcome"]) == (
        "create",
        "emulator",
        "success",
    )
    assert "piv/record" in records(vsc, "new")
