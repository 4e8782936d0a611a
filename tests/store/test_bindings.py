"""PIN bindings on every backend: the backend checks the PIN; a PIN change destroys the old blob."""

from __future__ import annotations

import sqlite3

import pytest

from vsc.store import (
    AuthFailed,
    BackendSpec,
    BindingLocked,
    CardStore,
    CounterBlocked,
    StoredCard,
    bound,
)
from vsc.store.store import CARD_DB

PIN, PUK = b"123456\xff\xff", b"12345678"
KEY = b"-----slot 9a private key-----"


def personalise(store: CardStore, backend: BackendSpec) -> StoredCard:
    card = store.create("alice", backend)
    card.set_counter("pin", 3)
    card.create_binding("piv", {"pin": PIN, "puk": PUK})
    card.put("key/9a", KEY, protection=bound("piv"))
    return card


def test_bound_record_needs_the_pin(store: CardStore, backend: BackendSpec) -> None:
    card = personalise(store, backend)
    assert card.get("key/9a") == KEY  # a new binding starts unlocked
    card.close()
    card = store.open("alice", backend)
    assert not card.is_unlocked("piv")
    with pytest.raises(BindingLocked, match="piv"):
        card.get("key/9a")
    with pytest.raises(AuthFailed) as e:
        card.unlock("piv", "pin", b"654321\xff\xff", counter="pin")
    assert e.value.remaining == 2
    with pytest.raises(BindingLocked):
        card.get("key/9a")
    card.unlock("piv", "pin", PIN, counter="pin")
    assert card.get("key/9a") == KEY
    assert card.counter("pin").remaining == 3  # restored by the correct PIN
    card.lock()
    with pytest.raises(BindingLocked):
        card.get("key/9a")
    card.close()


def test_writing_a_bound_record_needs_no_pin(store: CardStore, backend: BackendSpec) -> None:
    personalise(store, backend).close()
    with store.open("alice", backend) as card:
        card.put("key/9c", b"generated while locked", protection=bound("piv"))
        card.unlock("piv", "puk", PUK)
        assert card.get("key/9c") == b"generated while locked"


def test_bound_record_moves_without_the_pin(store: CardStore, backend: BackendSpec) -> None:
    personalise(store, backend).close()
    with store.open("alice", backend) as card:
        card.rename("key/9a", "key/9c")  # PIV MOVE KEY: management key only
        card.unlock("piv", "pin", PIN)
        assert card.get("key/9c") == KEY and card.get("key/9a") is None


def test_counter_blocks_before_the_backend_is_asked(store: CardStore, backend: BackendSpec) -> None:
    card = personalise(store, backend)
    card.lock()
    for left in (2, 1, 0):
        with pytest.raises(AuthFailed) as e:
            card.unlock("piv", "pin", b"wrong", counter="pin")
        assert e.value.remaining == left
    with pytest.raises(CounterBlocked):
        card.unlock("piv", "pin", PIN, counter="pin")
    assert not card.is_unlocked("piv")
    # The PUK path keeps the card recoverable: unlock with the PUK, set a new PIN.
    card.unlock("piv", "puk", PUK)
    card.rebind("piv", "pin", b"new-pin!")
    card.succeed("pin")
    card.lock()
    card.unlock("piv", "pin", b"new-pin!", counter="pin")
    assert card.get("key/9a") == KEY
    card.close()


def test_pin_change_destroys_the_old_blob(store: CardStore, backend: BackendSpec) -> None:
    card = personalise(store, backend)
    db = store.path_of("alice") / CARD_DB
    with sqlite3.connect(db) as conn:
        old_blob = conn.execute(
            "SELECT blob FROM binding_seals WHERE binding = 'piv' AND role = 'pin'"
        ).fetchone()[0]
    conn.close()
    card.rebind("piv", "pin", b"654321\xff\xff")
    files = b"".join(p.read_bytes() for p in sorted(card.path.glob("card.db*")))
    assert bytes(old_blob) not in files
    card.lock()
    with pytest.raises(AuthFailed):
        card.unlock("piv", "pin", PIN)
    card.unlock("piv", "pin", b"654321\xff\xff")
    card.lock()
    card.unlock("piv", "puk", PUK)  # the other role is untouched
    card.close()


def test_rebind_needs_the_binding_unlocked(store: CardStore, backend: BackendSpec) -> None:
    card = personalise(store, backend)
    card.lock("piv")
    with pytest.raises(BindingLocked):
        card.rebind("piv", "pin", b"x")
    card.close()


def test_roles_and_deletion(store: CardStore, backend: BackendSpec) -> None:
    card = personalise(store, backend)
    card.rebind("piv", "admin", b"admin secret")  # a new role
    assert card.bindings() == {"piv": ("admin", "pin", "puk")}
    card.remove_role("piv", "admin")
    with pytest.raises(KeyError):
        card.unlock("piv", "admin", b"admin secret")
    card.put("plain-record", b"stays")
    card.delete_binding("piv")
    assert card.bindings() == {}
    assert card.get("key/9a") is None and card.get("plain-record") == b"stays"
    with pytest.raises(KeyError):
        card.put("key/9a", KEY, protection=bound("piv"))
    card.close()


def test_duplicate_binding_is_refused(store: CardStore, backend: BackendSpec) -> None:
    card = personalise(store, backend)
    with pytest.raises(Exception, match="already exists"):
        card.create_binding("piv", {"pin": b"x"})
    card.close()
