"""VERIFY's commits when it runs again and again (PivData reuses its records).

A correct VERIFY goes from the current record to one with a try spent and
back; :class:`~applets.piv.state.PivData` keeps both so the next VERIFY
builds nothing. Every VERIFY must still hand the store a decremented counter
before the comparison and restore it only after a correct PIN, whatever the
sequence of right and wrong PINs, failures of the store and other changes.
"""

from __future__ import annotations

from applets.piv import PivApplet
from applets.piv.state import PivData, PivRecord, Reference
from vsc.card import Card

PIN = b"123456\xff\xff"
WRONG = b"654321\xff\xff"
SELECT_PIV = bytes.fromhex("00A4040005A000000308")


class RecordingStore:
    """Remembers the retry counter of every committed record; fails on request."""

    def __init__(self) -> None:
        self.tries: list[int] = []
        self.fail = False

    def save(self, record: PivRecord) -> None:
        if self.fail:
            raise OSError("simulated power loss")
        self.tries.append(record.pin_tries.remaining)


def card_with(store: RecordingStore) -> tuple[Card, PivApplet]:
    applet = PivApplet(data=PivData(PivRecord.factory(12345678), store=store))
    card = Card([applet], default=applet)
    assert card.transmit(SELECT_PIV)[-2:] == b"\x90\x00"
    store.tries.clear()  # provisioning (the F9 certificate)
    return card, applet


def verify(card: Card, pin: bytes) -> int:
    return int.from_bytes(card.transmit(bytes.fromhex("0020008008") + pin)[-2:], "big")


def test_every_correct_verify_commits_the_decrement_first() -> None:
    store = RecordingStore()
    card, _ = card_with(store)
    for _ in range(4):
        assert verify(card, PIN) == 0x9000
    assert store.tries == [2, 3] * 4


def test_wrong_and_right_pins_in_any_order() -> None:
    store = RecordingStore()
    card, applet = card_with(store)
    sequence = [PIN, WRONG, PIN, PIN, WRONG, WRONG, PIN, PIN]
    answers = [verify(card, pin) for pin in sequence]
    assert answers == [0x9000, 0x63C2, 0x9000, 0x9000, 0x63C2, 0x63C1, 0x9000, 0x9000]
    # each: down before the comparison (and back up after a right PIN)
    assert store.tries == [2, 3, 2, 1, 3, 2, 3, 2, 1, 0, 3, 2, 3]
    assert applet.data.tries(Reference.PIN).remaining == 3


def test_a_failed_commit_on_a_repeated_verify_spends_nothing_and_accepts_nothing() -> None:
    store = RecordingStore()
    card, applet = card_with(store)
    assert verify(card, PIN) == 0x9000
    store.fail = True
    assert verify(card, PIN) == 0x6F00  # the decrement could not be made durable
    assert applet.data.tries(Reference.PIN).remaining == 3
    store.fail = False
    assert verify(card, PIN) == 0x9000
    assert store.tries == [2, 3, 2, 3]


def test_a_change_between_verifies_is_kept() -> None:
    store = RecordingStore()
    card, applet = card_with(store)
    assert verify(card, PIN) == 0x9000
    applet.data.put_object(0x5FC102, b"\x53\x00")  # a new record: the reused ones are stale
    assert verify(card, PIN) == 0x9000
    assert applet.data.get_object(0x5FC102) == b"\x53\x00"
    assert applet.data.tries(Reference.PIN).remaining == 3
