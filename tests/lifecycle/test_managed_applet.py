"""A managed PIV card through its APDU interface: lock, PIN policy, counted admin key.

Everything a remote tool drives: VERIFY on a locked card answers 6283 (locked is
not blocked: the PIN counter stays as it is); the
lock control command (vsc's INS F1) locks without authority and unlocks only
after a management-key authentication; RESET RETRY COUNTER with P1 = 02 resets
the PIN with the management key; wrong management-key answers are counted
before the comparison and heal one per recovery period; a PIN the policy
refuses gets 6A80 and the log names the rule. A plain (unmanaged) card keeps
YubiKey behaviour: no counter, F1 is an unknown instruction, P1 = 02 refused.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from applets.echo import EchoApplet
from applets.piv import PivApplet, PivData, PivRecord
from applets.piv.managed import AdminCounter, Managed
from applets.piv.mgmt import DEFAULT_MANAGEMENT_KEY, ManagementKey, ManagementKeyType
from applets.piv.pinrules import CharRule, PinRules
from applets.piv.state import MemoryStore, Reference, RetryCounter
from vsc.card import Card
from vsc.tlv import encode_tlv, parse_tlv

SERIAL = 12345678
PIN = b"123456\xff\xff"
OK, BLOCKED, DENIED, BAD_DATA, BAD_P1P2, BAD_INS = 0x9000, 0x6983, 0x6982, 0x6A80, 0x6A86, 0x6D00
LOCKED = 0x6283  # ISO 7816-4: selected file deactivated
SELECT = bytes.fromhex("00A4040005A000000308")
OTHER_KEY = bytes(range(0x20, 0x38))


def block(pin: str) -> bytes:
    return pin.encode().ljust(8, b"\xff")


def tdes(key: bytes, data: bytes) -> bytes:
    encryptor = Cipher(TripleDES(key), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


class Managed_:
    """A managed card on a clock the test moves."""

    def __init__(self, managed: Managed | None = None) -> None:
        self.now = 1_700_000_000.0
        self.store = MemoryStore()
        record = replace(PivRecord.factory(SERIAL), managed=managed)
        self.applet = PivApplet(data=PivData(record, store=self.store))
        self.applet.wall_clock = lambda: self.now
        self.events: list[tuple[str, dict[str, object]]] = []
        self.applet.events = lambda name, details: self.events.append((name, dict(details)))
        self.card = Card()
        self.card.register(self.applet, default=True)
        self.card.register(EchoApplet())
        assert self.sw(SELECT) == OK

    def send(self, apdu: bytes) -> tuple[bytes, int]:
        response = self.card.transmit(apdu)
        return response[:-2], int.from_bytes(response[-2:], "big")

    def sw(self, apdu: bytes) -> int:
        return self.send(apdu)[1]

    def apdu(self, ins: int, p1: int, p2: int, data: bytes = b"") -> int:
        header = bytes((0, ins, p1, p2))
        return self.sw(header + (bytes((len(data),)) + data if data else b""))

    def verify(self, pin: bytes = PIN) -> int:
        return self.apdu(0x20, 0x00, 0x80, pin)

    def challenge(self) -> bytes:
        out, sw = self.send(bytes.fromhex("0087039B047C028100"))
        assert sw == OK
        return parse_tlv(parse_tlv(out, 0x7C).value, 0x81).value

    def answer(self, response: bytes) -> int:
        body = encode_tlv(0x7C, encode_tlv(0x82, response))
        return self.apdu(0x87, 0x03, 0x9B, body)

    def admin(self, key: bytes = DEFAULT_MANAGEMENT_KEY) -> int:
        return self.answer(tdes(key, self.challenge()))

    def lock_status(self) -> tuple[bool, int]:
        out, sw = self.send(bytes.fromhex("00F1000000"))
        assert sw == OK and len(out) == 5
        return bool(out[0]), int.from_bytes(out[1:], "big")

    @property
    def managed(self) -> Managed:
        managed = self.applet.data.managed
        assert managed is not None
        return managed


@pytest.fixture
def card() -> Managed_:
    return Managed_(Managed(PinRules(6, 8, digits=CharRule.MANDATORY)))


def test_a_locked_card_answers_verify_with_6283_and_keeps_its_counter(card: Managed_) -> None:
    assert card.verify() == OK
    assert card.apdu(0xF1, 0x01, 0x00) == OK  # lock now: no authority needed
    assert card.lock_status() == (True, 0)
    assert card.verify() == LOCKED
    assert card.verify(block("000000")) == LOCKED  # not even compared
    assert card.apdu(0x20, 0x00, 0x80) == LOCKED  # the status query too
    assert card.apdu(0x24, 0x00, 0x80, PIN + block("111111")) == LOCKED
    assert card.apdu(0x2C, 0x00, 0x81 - 1, b"12345678" + block("111111")) == LOCKED
    assert card.applet.data.tries(Reference.PIN).remaining == 3
    assert card.managed.locked(card.now)
    assert ("lock", {"at": card.now}) in card.events


def test_lock_ends_the_pin_status_of_an_open_session(card: Managed_) -> None:
    assert card.verify() == OK
    card.applet.data.set_lock(card.now + 60)  # a scheduled lock
    assert card.apdu(0x20, 0x00, 0x80) == OK  # still verified
    card.now += 61
    assert card.apdu(0x20, 0x00, 0x80) == LOCKED
    # Key operations need the card unlocked too (9E, PIN policy never, included).
    assert card.apdu(0x87, 0x11, 0x9E, bytes.fromhex("7C0482008100")) == DENIED


def test_unlock_needs_the_management_key_and_expires_by_itself(card: Managed_) -> None:
    card.applet.data.set_lock(card.now)
    eight_hours = (8 * 3600).to_bytes(4, "big")
    assert card.apdu(0xF1, 0x02, 0x00, eight_hours) == DENIED  # no admin yet
    assert card.admin() == OK
    # MyID's range, 8 hours to a week, on the card too: shorter or longer is refused.
    for seconds in (0, 8 * 3600 - 1, 7 * 24 * 3600 + 1):
        assert card.apdu(0xF1, 0x02, 0x00, seconds.to_bytes(4, "big")) == 0x6A80
    assert card.lock_status() == (True, 0)
    assert card.apdu(0xF1, 0x02, 0x00, (7 * 24 * 3600).to_bytes(4, "big")) == OK
    assert card.apdu(0xF1, 0x02, 0x00, eight_hours) == OK
    assert card.lock_status() == (False, 8 * 3600)
    assert card.verify() == OK
    card.now += 8 * 3600 - 1
    assert card.apdu(0x20, 0x00, 0x80) == OK
    card.now += 1
    assert card.verify() == LOCKED  # the unlock ran out: locked again, nobody did anything
    assert card.lock_status() == (True, 0)
    # Unrestricted: no data.
    assert card.admin() == OK
    assert card.apdu(0xF1, 0x02, 0x00) == OK
    assert card.lock_status() == (False, 0xFFFFFFFF)
    assert card.verify() == OK
    assert any(name == "unlock" and d["until"] is None for name, d in card.events)


def test_locking_never_extends_access(card: Managed_) -> None:
    card.applet.data.set_lock(card.now + 3600)
    assert card.apdu(0xF1, 0x01, 0x00, (7200).to_bytes(4, "big")) == OK  # later: ignored
    assert card.managed.lock_at == card.now + 3600
    assert card.apdu(0xF1, 0x01, 0x00, (60).to_bytes(4, "big")) == OK  # earlier: taken
    assert card.managed.lock_at == card.now + 60


def test_lock_control_checks_its_parameters(card: Managed_) -> None:
    assert card.apdu(0xF1, 0x03, 0x00) == BAD_P1P2
    assert card.apdu(0xF1, 0x01, 0x01) == BAD_P1P2
    assert card.apdu(0xF1, 0x01, 0x00, b"\x00\x01") == 0x6700
    assert card.apdu(0xF1, 0x00, 0x00, b"\x00\x00\x00\x01") == 0x6700


def test_wrong_admin_answers_are_counted_before_the_comparison(card: Managed_) -> None:
    maximum = card.managed.admin.maximum
    for left in range(maximum - 1, -1, -1):
        assert card.answer(bytes(8)) in (DENIED,)  # no challenge outstanding: not counted
        card.challenge()
        assert card.answer(bytes(8)) == DENIED
        assert card.managed.admin.remaining == left  # committed before the answer left
    card.challenge()
    assert card.answer(bytes(8)) == BLOCKED
    assert card.admin() == BLOCKED  # the right key too: nothing is compared now
    assert any(name == "admin-key-refused" for name, _ in card.events)
    # One failure is forgiven per recovery period: one more try.
    card.now += card.managed.admin.recovery_time
    assert card.admin() == OK
    assert card.managed.admin.remaining == maximum  # a right answer restores the counter


class _Crash(Exception):
    """The process dies at this commit."""


class _DiesAtSecondCommit(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    def save(self, record: PivRecord) -> None:
        self.commits += 1
        if self.commits > 1:
            raise _Crash
        super().save(record)


def test_the_try_is_committed_before_the_comparison(card: Managed_) -> None:
    """A right answer whose process dies before the counter is restored has spent a try."""
    store = _DiesAtSecondCommit()
    card.applet.data._store = store  # the commit point under test
    assert card.admin() == 0x6F00  # the crash, at the restore after the comparison
    assert store.commits == 2 and store.record is not None and store.record.managed is not None
    admin = store.record.managed.admin
    assert admin.remaining == admin.maximum - 1


def test_mutual_authentication_is_counted_too(card: Managed_) -> None:
    _, sw = card.send(bytes.fromhex("0087039B047C028000"))
    assert sw == OK
    body = encode_tlv(0x80, bytes(8)) + encode_tlv(0x81, bytes(8))
    assert card.apdu(0x87, 0x03, 0x9B, encode_tlv(0x7C, body)) == DENIED
    assert card.managed.admin.remaining == card.managed.admin.maximum - 1


def test_the_admin_resets_the_pin_with_p1_02(card: Managed_) -> None:
    for _ in range(3):
        card.verify(block("000000"))
    assert card.verify() == BLOCKED  # the PIN is blocked
    new = block("24681357")
    assert card.apdu(0x2C, 0x02, 0x80, new) == DENIED  # needs the management key
    assert card.admin() == OK
    assert card.apdu(0x2C, 0x02, 0x81, new) == 0x6A88
    assert card.apdu(0x2C, 0x02, 0x80, b"1234") == BAD_DATA
    assert card.apdu(0x2C, 0x02, 0x80, block("abcdefgh")) == BAD_DATA  # the policy: digits
    assert card.apdu(0x2C, 0x02, 0x80, new) == OK
    assert card.verify(new) == OK
    assert ("unblock", {}) in card.events


def test_a_pin_the_policy_refuses_gets_6a80_and_the_log_names_the_rule(
    card: Managed_, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="applets.piv.applet"):
        assert card.apdu(0x24, 0x00, 0x80, PIN + block("abcdefg")) == BAD_DATA
    assert "rule digits" in caplog.text
    assert "abcdefg" not in caplog.text
    assert card.verify() == OK  # the old PIN stays, its counter full
    assert card.applet.data.tries(Reference.PIN).remaining == 3
    assert ("pin-refused", {"rule": "digits", "reason": "the PIN must contain a digit"}) in (
        card.events
    )
    assert card.apdu(0x24, 0x00, 0x80, PIN + block("7654321")) == OK
    assert card.verify(block("7654321")) == OK
    # RESET RETRY COUNTER with the PUK follows the policy too.
    assert card.apdu(0x2C, 0x00, 0x80, b"12345678" + block("abcdef")) == BAD_DATA


def test_reset_keeps_the_card_managed_and_locked(card: Managed_) -> None:
    card.applet.data.set_lock(card.now)
    for ref in Reference:
        while card.applet.data.tries(ref).remaining:
            card.applet.data.consume_try(ref)
    card.applet.data.set_management_key(ManagementKey(ManagementKeyType.TDES, OTHER_KEY))
    assert card.apdu(0xFB, 0x00, 0x00) == OK
    assert card.applet.data.managed is not None and card.managed.locked(card.now)
    assert card.admin(DEFAULT_MANAGEMENT_KEY) == DENIED  # the admin key is not the factory's
    assert card.admin(OTHER_KEY) == OK
    assert card.verify() == LOCKED  # the factory PIN, but the card stays locked


def test_set_retries_gives_a_managed_card_no_known_pin_or_puk(card: Managed_) -> None:
    """YubiKey's SET PIN RETRIES puts back PIN 123456 and PUK 12345678: not on a managed card."""
    user_pin = block("24681357")
    assert card.apdu(0x24, 0x00, 0x80, PIN + user_pin) == OK
    card.applet.data.block(Reference.PUK)  # vsc create's "--puk none"
    assert card.admin() == OK and card.verify(user_pin) == OK
    assert card.apdu(0xFA, 5, 4) == OK
    assert card.verify(user_pin) == OK  # the user's PIN stays
    assert card.applet.data.tries(Reference.PIN) == RetryCounter(5, 5)
    assert card.applet.data.tries(Reference.PUK) == RetryCounter(4, 0)  # disabled stays so
    assert card.apdu(0x2C, 0x00, 0x80, b"12345678" + block("111111")) == BLOCKED
    assert ("retries", {"pin_tries": 5, "puk_tries": 4}) in card.events
    # A plain card stays a YubiKey: the defaults come back.
    plain = Managed_(None)
    assert plain.admin() == OK and plain.verify() == OK
    assert plain.apdu(0xFA, 5, 4) == OK
    assert plain.applet.data.is_default(Reference.PIN)
    assert plain.applet.data.is_default(Reference.PUK)


def test_reset_gives_a_managed_card_no_known_pin_or_puk(card: Managed_) -> None:
    for ref in Reference:
        while card.applet.data.tries(ref).remaining:
            card.applet.data.consume_try(ref)
    assert card.apdu(0xFB, 0x00, 0x00) == OK
    assert card.verify() == BLOCKED  # not the factory PIN: still blocked
    assert card.apdu(0x2C, 0x00, 0x80, b"12345678" + block("111111")) == BLOCKED
    assert not card.applet.data.is_default(Reference.PIN)
    assert ("reset", {}) in card.events
    assert card.admin() == OK  # the helpdesk's way back: a new PIN with the admin key
    assert card.apdu(0x2C, 0x02, 0x80, block("24681357")) == OK
    assert card.verify(block("24681357")) == OK
    assert card.applet.data.tries(Reference.PUK).remaining == 0


def test_a_plain_card_is_a_yubikey(card: Managed_) -> None:
    plain = Managed_(None)
    assert plain.apdu(0xF1, 0x00, 0x00) == BAD_INS
    assert plain.apdu(0x2C, 0x02, 0x80, PIN) == BAD_P1P2
    for _ in range(20):
        plain.challenge()
        assert plain.answer(bytes(8)) == DENIED  # uncounted, never blocks
    assert plain.admin() == OK


def test_admin_counter_heals_like_a_tpm() -> None:
    counter = AdminCounter(3, 3, 100, 0.0)
    counter = counter.spent(10.0).spent(20.0).spent(30.0)
    assert counter.remaining == 0 and counter.retry_after(50.0) == 80.0
    assert counter.healed(129.0).remaining == 0
    assert counter.healed(130.0).remaining == 1
    assert counter.healed(330.0).remaining == 3
    assert counter.healed(-5.0) == counter  # a clock going back forgives nothing
    with pytest.raises(ValueError):
        counter.spent(40.0)
    with pytest.raises(ValueError):
        AdminCounter(3, 3, 0)  # no permanent block offered
