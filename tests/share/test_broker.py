"""The broker: stable names, reader states, and one session per reader, races included."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from vsc.share.broker import Broker, ChangeKind, InUse, SessionKey, UnknownReader
from vsc.share.home import ShareHome
from vsc.share.protocol import ReaderState, ShareMode

ATR = b"\x3b\x00"
OTHER_ATR = b"\x3b\x01"
ALICE = SessionKey(b"peer-a", "alice")
BOB = SessionKey(b"peer-b", "bob")
INSTANCE = bytes(16)


@pytest.fixture
def home(tmp_path: Path) -> ShareHome:
    return ShareHome(tmp_path)


@pytest.fixture
def broker(home: ShareHome) -> Broker:
    broker = Broker(home.name_readers)
    broker.update({"PCD 00": ATR, "PCD 01": None})
    return broker


def states(broker: Broker) -> dict[str, tuple[ReaderState, str]]:
    return {i.name: (i.state, i.session) for i in broker.listing()}


def test_listing_states(broker: Broker) -> None:
    assert states(broker) == {
        "Reader 1": (ReaderState.CARD_PRESENT, ""),
        "Reader 2": (ReaderState.NO_CARD, ""),
    }
    broker.attach("Reader 2", ALICE, ShareMode.EXCLUSIVE, INSTANCE)
    broker.update({"PCD 00": ATR})  # PCD 01 unplugged, still attached
    assert states(broker) == {
        "Reader 1": (ReaderState.CARD_PRESENT, ""),
        "Reader 2": (ReaderState.SHARED, "alice"),
    }


def test_names_survive_a_restart(home: ShareHome, broker: Broker) -> None:
    fresh = Broker(home.name_readers)
    fresh.remember(home.reader_names())
    assert states(fresh) == {
        "Reader 1": (ReaderState.UNAVAILABLE, ""),
        "Reader 2": (ReaderState.UNAVAILABLE, ""),
    }
    fresh.update({"PCD 01": None, "PCD 99": None})
    assert [i.name for i in fresh.listing()] == ["Reader 1", "Reader 2", "Reader 3"]
    assert fresh.listing()[1].pcsc_name == "PCD 01"


def test_changes_name_the_holder(broker: Broker) -> None:
    lease = broker.attach("Reader 1", ALICE, ShareMode.EXCLUSIVE, INSTANCE)
    removed = broker.update({"PCD 00": None, "PCD 01": None})
    assert [(c.kind, c.reader, c.lease) for c in removed] == [
        (ChangeKind.CARD_REMOVED, "Reader 1", lease)
    ]
    inserted = broker.update({"PCD 00": OTHER_ATR, "PCD 01": None})
    assert [(c.kind, c.atr) for c in inserted] == [(ChangeKind.CARD_INSERTED, OTHER_ATR)]
    swapped = broker.update({"PCD 00": ATR, "PCD 01": None})
    assert [c.kind for c in swapped] == [ChangeKind.CARD_REMOVED, ChangeKind.CARD_INSERTED]
    assert broker.update({"PCD 00": ATR, "PCD 01": None}) == []
    gone = broker.update({"PCD 01": None})
    assert [c.kind for c in gone] == [ChangeKind.CARD_REMOVED, ChangeKind.READER_REMOVED]
    assert broker.atr("Reader 1") is None


def test_one_session_per_reader(broker: Broker) -> None:
    lease = broker.attach("Reader 1", ALICE, ShareMode.EXCLUSIVE, INSTANCE)
    with pytest.raises(InUse, match="Reader 1 is shared in another session") as refused:
        broker.attach("Reader 1", BOB, ShareMode.SHARED, INSTANCE)
    assert refused.value.lease == lease
    with pytest.raises(InUse):  # the same session twice, too
        broker.attach("Reader 1", ALICE, ShareMode.EXCLUSIVE, INSTANCE)
    assert broker.release(lease)
    assert not broker.release(lease)  # idempotent
    assert broker.attach("Reader 1", BOB, ShareMode.SHARED, INSTANCE).key == BOB


def test_unknown_and_disconnected_readers(broker: Broker) -> None:
    with pytest.raises(UnknownReader, match="no reader named"):
        broker.attach("Reader 9", ALICE, ShareMode.EXCLUSIVE, INSTANCE)
    broker.update({"PCD 00": ATR})
    with pytest.raises(UnknownReader, match="not connected"):
        broker.attach("Reader 2", ALICE, ShareMode.EXCLUSIVE, INSTANCE)


def test_leases_filters_and_restarts(broker: Broker) -> None:
    first = broker.attach("Reader 1", ALICE, ShareMode.EXCLUSIVE, INSTANCE)
    second = broker.attach("Reader 2", BOB, ShareMode.EXCLUSIVE, INSTANCE)
    assert broker.leases() == [first, second]
    assert broker.leases(peer=b"peer-b") == [second]
    assert broker.leases(session="alice") == [first]
    assert broker.leases(reader="Reader 2", peer=b"peer-a") == []
    assert broker.restarted(ALICE, INSTANCE) == []
    assert broker.restarted(ALICE, b"\x01" * 16) == [first]


def test_racing_attaches_have_exactly_one_winner(broker: Broker) -> None:
    for _ in range(20):
        racers = 16
        barrier = threading.Barrier(racers)
        results: list[object] = []

        def race(index: int, barrier: threading.Barrier, results: list[object]) -> None:
            key = SessionKey(b"peer", f"session-{index}")
            barrier.wait(timeout=10)
            try:
                results.append(broker.attach("Reader 1", key, ShareMode.EXCLUSIVE, INSTANCE))
            except InUse as exc:
                results.append(exc)

        threads = [threading.Thread(target=race, args=(i, barrier, results)) for i in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        winners = [r for r in results if not isinstance(r, InUse)]
        assert len(results) == racers and len(winners) == 1
        holder = broker.holder("Reader 1")
        assert holder is not None and holder == winners[0]
        broker.release(holder)
