"""The store directory: names, layout, permissions, life cycle, one card per process."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vsc.store import (
    BackendSpec,
    CardExists,
    CardInUse,
    CardNotFound,
    CardStore,
    CorruptStore,
    InvalidName,
    create_card,
    default_store_path,
    open_card,
    validate_card_name,
)
from vsc.store.store import CARD_DB

PLAIN = BackendSpec.plain()
TIMEOUT = 10.0


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "-x", "x" * 65, "a b", "caf\u00e9", "a\0b"],
)
def test_bad_card_names_are_refused(store: CardStore, name: str) -> None:
    with pytest.raises(InvalidName):
        validate_card_name(name)
    with pytest.raises(InvalidName):
        store.create(name, PLAIN)
    assert store.names() == []
    assert not (store.root / "x").exists() and not (store.root.parent / "x").exists()


@pytest.mark.parametrize("name", ["a", "Alice", "card-1", "a.b_c", "9", "x" * 64])
def test_good_card_names(store: CardStore, name: str) -> None:
    store.create(name, PLAIN).close()
    assert store.names() == [name]
    assert store.path_of(name) == store.root / "cards" / name


def test_default_store_path() -> None:
    assert default_store_path({"VSC_STORE": "/s"}) == Path("/s")
    assert default_store_path({"XDG_DATA_HOME": "/d"}) == Path("/d/vsc")
    home = os.path.expanduser("~")
    assert default_store_path({}) == Path(home) / ".local/share/vsc"


def test_store_defaults_to_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VSC_STORE", str(tmp_path / "elsewhere"))
    assert CardStore().root == tmp_path / "elsewhere"


def test_life_cycle(store: CardStore) -> None:
    assert store.names() == []
    card = store.create("alice", PLAIN)
    card.put("x", b"1")
    assert store.info("alice").in_use
    card.close()
    info = store.info("alice")
    assert (info.name, info.backend, info.in_use) == ("alice", "plain", False)
    store.create("bob", PLAIN).close()
    assert store.names() == ["alice", "bob"]
    with store.open("alice", PLAIN) as card:
        assert card.get("x") == b"1"
    store.destroy("alice")
    assert store.names() == ["bob"]
    assert not store.path_of("alice").exists()
    assert [p.name for p in store.cards_dir.iterdir()] == ["bob"]  # no leftovers
    store.create("alice", PLAIN).close()  # the name is free again


def test_duplicate_name_is_refused(store: CardStore) -> None:
    store.create("alice", PLAIN).close()
    with pytest.raises(CardExists, match="alice"):
        store.create("alice", PLAIN)


def test_missing_card(store: CardStore) -> None:
    with pytest.raises(CardNotFound, match="'nobody'"):
        store.open("nobody", PLAIN)
    with pytest.raises(CardNotFound):
        store.destroy("nobody")
    with pytest.raises(CardNotFound):
        store.info("nobody")


def test_permissions(store: CardStore) -> None:
    store.create("alice", PLAIN).close()
    path = store.path_of("alice")
    assert stat.S_IMODE(store.cards_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for file in path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


def test_card_by_path(tmp_path: Path) -> None:
    path = tmp_path / "somewhere" / "my-card"
    path.parent.mkdir()
    create_card(path, PLAIN).close()
    with open_card(path, PLAIN) as card:
        assert card.name == "my-card"
        card.put("k", b"v")
    with open_card(path, PLAIN, name="label") as card:
        assert card.get("k") == b"v"
    with pytest.raises(CardExists):
        create_card(path, PLAIN)


def test_staging_directories_are_not_cards(store: CardStore) -> None:
    store.create("alice", PLAIN).close()
    (store.cards_dir / ".bob.creating-1234").mkdir()
    assert store.names() == ["alice"]


def test_second_open_in_process_is_refused(store: CardStore) -> None:
    card = store.create("alice", PLAIN)
    with pytest.raises(CardInUse) as e:
        store.open("alice", PLAIN)
    assert "alice" in str(e.value) and str(store.path_of("alice")) in str(e.value)
    assert e.value.holder == os.getpid()
    with pytest.raises(CardInUse):
        store.destroy("alice")
    card.close()
    store.open("alice", PLAIN).close()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from vsc.store import BackendSpec, CardStore
    card = CardStore(sys.argv[1]).open("alice", BackendSpec.plain())
    print("open", flush=True)
    time.sleep(60)
    """
)


def test_second_process_gets_card_in_use(store: CardStore) -> None:
    store.create("alice", PLAIN).close()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "open\n"
        with pytest.raises(CardInUse, match=f"in use by process {child.pid}"):
            store.open("alice", PLAIN)
        assert store.info("alice").in_use
        # The kernel drops a flock with its holder, whatever kills it.
        os.kill(child.pid, signal.SIGKILL)
        child.wait(TIMEOUT)
        store.open("alice", PLAIN).close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(TIMEOUT)
        if child.stdout:
            child.stdout.close()


def test_garbage_database_is_reported(store: CardStore) -> None:
    store.create("alice", PLAIN).close()
    (store.path_of("alice") / CARD_DB).write_bytes(b"not a database" * 100)
    with pytest.raises(CorruptStore):
        store.open("alice", PLAIN)
    # The failed open released the lock: a second try fails the same way, not CardInUse.
    with pytest.raises(CorruptStore):
        store.open("alice", PLAIN)


def test_newer_format_is_refused(store: CardStore) -> None:
    store.create("alice", PLAIN).close()
    with sqlite3.connect(store.path_of("alice") / CARD_DB) as conn:
        conn.execute("UPDATE meta SET value = x'39' WHERE key = 'format'")
    conn.close()
    with pytest.raises(CorruptStore, match="format 9"):
        store.open("alice", PLAIN)


def test_destroy_overwrites_and_removes(store: CardStore) -> None:
    with store.create("alice", PLAIN) as card:
        card.put("secret", b"S" * 64)
    store.destroy("alice")
    assert store.names() == []
    assert list(store.cards_dir.iterdir()) == []
