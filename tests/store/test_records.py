"""Records, transactions and retry counters of one card (plain and software backends)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from vsc.store import (
    CARD,
    CLEAR,
    BackendSpec,
    CardStore,
    CorruptStore,
    CounterBlocked,
    InvalidName,
    StoredCard,
    constant_time_equal,
)
from vsc.store.store import CARD_DB

from .conftest import software_spec

SECRET = b"the private key bytes, 0123456789abcdef"


@pytest.fixture(params=["plain", "software"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> BackendSpec:
    return BackendSpec.plain() if request.param == "plain" else software_spec(tmp_path)


@pytest.fixture
def card(store: CardStore, spec: BackendSpec) -> Iterator[StoredCard]:
    with store.create("alice", spec) as card:
        yield card


def card_files(card: StoredCard) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(card.path.glob("card.db*")))


def test_put_get_delete(card: StoredCard) -> None:
    assert card.get("a") is None
    card.put("a", b"1")
    card.put("b/c", b"")
    card.put("a", b"2")
    assert (card.get("a"), card.get("b/c")) == (b"2", b"")
    assert card.names() == ["a", "b/c"] and card.names("b/") == ["b/c"]
    assert card.delete("a") and not card.delete("a")
    assert card.get("a") is None


def test_records_survive_reopen(store: CardStore, spec: BackendSpec) -> None:
    with store.create("alice", spec) as card:
        card.put("k", SECRET)
        card.put("pub", b"public", protection=CLEAR)
    with store.open("alice", spec) as card:
        assert card.get("k") == SECRET and card.get("pub") == b"public"
        assert (card.protection_of("k"), card.protection_of("pub")) == (CARD, CLEAR)


def test_card_records_are_encrypted(card: StoredCard) -> None:
    card.put("k", SECRET)
    card.put("pub", b"public-bytes-in-clear", protection=CLEAR)
    files = card_files(card)
    assert SECRET not in files
    assert b"public-bytes-in-clear" in files


@pytest.mark.parametrize("name", ["", "/x", "a b", "x" * 129, "caf\u00e9"])
def test_bad_record_names(card: StoredCard, name: str) -> None:
    with pytest.raises(InvalidName):
        card.put(name, b"v")
    with pytest.raises(InvalidName):
        card.set_counter(name, 3)


def test_unknown_protection(card: StoredCard) -> None:
    with pytest.raises(InvalidName):
        card.put("a", b"v", protection="rot13")


def test_swapped_blobs_fail_their_check(store: CardStore, spec: BackendSpec) -> None:
    with store.create("alice", spec) as card:
        card.put("pin-record", b"A" * 16)
        card.put("other", b"B" * 16)
    with sqlite3.connect(store.path_of("alice") / CARD_DB) as conn:
        blob = conn.execute("SELECT value FROM records WHERE name = 'other'").fetchone()[0]
        conn.execute("UPDATE records SET value = ? WHERE name = 'pin-record'", (blob,))
    conn.close()
    with store.open("alice", spec) as card:
        assert card.get("other") == b"B" * 16
        with pytest.raises(CorruptStore, match="pin-record"):
            card.get("pin-record")


def test_blob_from_another_card_fails(store: CardStore, spec: BackendSpec) -> None:
    for name in ("alice", "bob"):
        with store.create(name, spec) as card:
            card.put("k", name.encode())
    with sqlite3.connect(store.path_of("alice") / CARD_DB) as conn:
        blob = conn.execute("SELECT value FROM records WHERE name = 'k'").fetchone()[0]
    conn.close()
    with sqlite3.connect(store.path_of("bob") / CARD_DB) as conn:
        conn.execute("UPDATE records SET value = ? WHERE name = 'k'", (blob,))
    conn.close()
    with store.open("bob", spec) as card, pytest.raises(CorruptStore):
        card.get("k")


def test_transaction_is_all_or_nothing(card: StoredCard) -> None:
    card.put("a", b"old")
    with pytest.raises(ZeroDivisionError), card.transaction():
        card.put("a", b"new")
        card.put("b", b"new")
        card.set_counter("pin", 3)
        _ = 1 / 0
    assert (card.get("a"), card.get("b")) == (b"old", None)
    with pytest.raises(KeyError):
        card.counter("pin")
    with card.transaction():
        card.put("a", b"new")
        with card.transaction():  # nested: joins the outer one
            card.put("b", b"new")
    assert (card.get("a"), card.get("b")) == (b"new", b"new")


def test_transaction_survives_reopen_or_not_at_all(store: CardStore, spec: BackendSpec) -> None:
    card = store.create("alice", spec)
    with card.transaction():
        card.put("a", b"1")
        card.put("b", b"2")
    card.close()
    with store.open("alice", spec) as card:
        assert (card.get("a"), card.get("b")) == (b"1", b"2")


def test_counter_anti_tearing(store: CardStore, spec: BackendSpec) -> None:
    card = store.create("alice", spec)
    assert card.set_counter("pin", 3).remaining == 3
    assert card.begin_attempt("pin") == 2
    card.close()  # as if the process died before comparing: the try is spent
    card = store.open("alice", spec)
    assert card.counter("pin").remaining == 2
    assert card.begin_attempt("pin") == 1
    assert card.begin_attempt("pin") == 0
    with pytest.raises(CounterBlocked, match="pin"):
        card.begin_attempt("pin")
    assert card.counter("pin").blocked
    card.succeed("pin")  # e.g. a PUK reset
    assert card.counter("pin").remaining == 3
    card.close()


def test_attempt_context(card: StoredCard) -> None:
    card.set_counter("mgmt", 5)
    with card.attempt("mgmt") as attempt:
        assert attempt.remaining == 4
    assert card.counter("mgmt").remaining == 4  # no success: stays spent
    with card.attempt("mgmt") as attempt:
        if constant_time_equal(b"key", b"key"):
            attempt.succeed()
    assert card.counter("mgmt").remaining == 5 and attempt.succeeded


def test_begin_attempt_refuses_a_transaction(card: StoredCard) -> None:
    card.set_counter("pin", 3)
    with pytest.raises(RuntimeError, match="outside a transaction"), card.transaction():
        card.begin_attempt("pin")
    assert card.counter("pin").remaining == 3


def test_counters_listing_and_bounds(card: StoredCard) -> None:
    card.set_counter("pin", 3)
    card.set_counter("puk", 5, 1)
    assert [(c.name, c.maximum, c.remaining) for c in card.counters()] == [
        ("pin", 3, 3),
        ("puk", 5, 1),
    ]
    with pytest.raises(ValueError):
        card.set_counter("x", 3, 4)
    with pytest.raises(ValueError):
        card.set_counter("x", 256)
    with pytest.raises(KeyError):
        card.succeed("nope")
    with pytest.raises(KeyError):
        card.begin_attempt("nope")
    assert card.delete_counter("puk") and not card.delete_counter("puk")


def test_closed_card_refuses_work(store: CardStore, spec: BackendSpec) -> None:
    card = store.create("alice", spec)
    card.close()
    card.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        card.get("a")


def test_integrity_check_passes(card: StoredCard) -> None:
    card.put("a", b"1")
    card.integrity_check()


def test_rename(card: StoredCard) -> None:
    card.put("a", b"secret")
    card.put("c", b"public", protection=CLEAR)
    card.put("b", b"replaced")
    card.rename("a", "b")
    card.rename("c", "d")
    assert (card.get("a"), card.get("b"), card.get("c"), card.get("d")) == (
        None,
        b"secret",
        None,
        b"public",
    )
    with pytest.raises(KeyError):
        card.rename("a", "e")
    with pytest.raises(InvalidName):
        card.rename("b", "../x")
