"""TPM failures under a PIV card: swtpm killed mid-operation, and lockout caused elsewhere.

Theory of operation
-------------------
The card runs in-process on the tpm backend (``open_piv`` + ``vsc.Card``,
what the emulator serves) against a real swtpm. A worker thread plays a
client that keeps the TPM busy (VERIFY unseals the PIN binding, CHANGE
REFERENCE seals it anew) while the test kills swtpm with SIGKILL at a random
instant. Every answer must be a proper status word (``9000``, ``6581`` when
the TPM was needed and gone, ``6982`` for a signature whose VERIFY failed;
never ``6F00``, never an internal error logged), the worker must finish
within a bounded wait (no hang), commands that need no TPM keep working,
and after swtpm restarts on the same state directory the *same open card*
works again, with the PIN its last successful CHANGE set: an answer of
``9000`` means the change is durable, ``6581`` that it did not happen.

The lockout test hammers a DA-protected object of "another program" on the
same TPM (the dictionary-attack counter is the TPM's, shared by all its
users): the card then answers ``6985`` without spending its own tries, a
session verified before keeps working, and the lockout heals over
recoveryTime through the card's interface. (VERIFY and RESET RETRY COUNTER
in a lockout caused by the card's own wrong PINs are in test_piv_store.py.) The
card's PIN-bound keys live in the TPM, DA-protected: in lockout they refuse too.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from yubikit.core import TRANSPORT
from yubikit.core.smartcard import ApduError
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, OBJECT_ID, PIN_POLICY, SLOT, PivSession

from .conftest import require_swtpm

require_swtpm()  # before importing the tpm backend, which needs tpm2-pytss

from vsc import Card  # noqa: E402
from vsc.emulator import open_card as emulator_open_card  # noqa: E402
from vsc.inproc import YubikitConnection  # noqa: E402
from vsc.store import (  # noqa: E402
    AuthFailed,
    BackendSpec,
    BackendUnavailable,
    CardStore,
    DaParameters,
    LockedOut,
    StoredCard,
)
from vsc.store.piv import open_piv  # noqa: E402
from vsc.store.tpm import Tpm  # noqa: E402
from vsc.testing.swtpm import Swtpm  # noqa: E402

WAIT = 20.0  # bound of every wait; never reached when things work
KILL_ROUNDS = int(os.environ.get("VSC_TPM_KILL_ROUNDS", "12"))
PINS = (b"123456\xff\xff", b"65432100")
CERT = b"\x70\x03cer\x71\x01\x00"
# Every failure forgiven within a second, and room for the unorderly shutdowns that
# each SIGKILL costs on the next start (the TPM counts one failure for them).
FORGIVING = DaParameters(max_tries=1000, recovery_time=1, lockout_recovery=1)


@dataclass
class Piv:
    stored: StoredCard
    card: Card
    session: PivSession

    def sw(self, apdu: str) -> int:
        return int.from_bytes(self.card.transmit(bytes.fromhex(apdu))[-2:], "big")

    def close(self) -> None:
        self.card.power_off()
        self.stored.close()


def open_card(store: CardStore, backend: BackendSpec) -> Piv:
    exists = store.exists("alice")
    stored = store.open("alice", backend) if exists else store.create("alice", backend)
    card = Card()
    card.register(open_piv(stored, provision=not exists), default=True)
    return Piv(stored, card, PivSession(YubikitConnection(card, TRANSPORT.USB)))


def verify(pin: bytes, cla: int = 0) -> str:
    return f"{cla:02X}20008008" + pin.hex()


def change(old: bytes, new: bytes) -> str:
    return "0024008010" + old.hex() + new.hex()


def sign_9a(cla: int = 0) -> str:
    """GA ECDSA P-256 with 9A over a fixed hash; the SW is what the test looks at."""
    return f"{cla:02X}87119A267C248200" + "8120" + "AB" * 32 + "00"


def personalise(piv: Piv) -> ec.EllipticCurvePublicKey:
    s = piv.session
    s.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = s.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    s.put_key(SLOT.CARD_AUTH, ec.generate_private_key(ec.SECP256R1()), PIN_POLICY.NEVER)
    s.put_object(OBJECT_ID.AUTHENTICATION, CERT)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return public


def reads_without_the_tpm(piv: Piv) -> None:
    """Objects and metadata need no TPM (the card key is in memory); keys live in the TPM,
    so even the PIN-never key answers 6581 until it is back."""
    assert piv.session.get_object(OBJECT_ID.AUTHENTICATION) == CERT
    public = piv.session.get_slot_metadata(SLOT.CARD_AUTH).public_key
    assert isinstance(public, ec.EllipticCurvePublicKey)
    with pytest.raises(ApduError) as e:
        piv.session.sign(SLOT.CARD_AUTH, KEY_TYPE.ECCP256, b"m", hashes.SHA256())
    assert e.value.sw == 0x6581


def signs_with_9a(piv: Piv, pin: bytes, public: ec.EllipticCurvePublicKey) -> None:
    assert piv.sw(verify(pin)) == 0x9000
    signature = piv.session.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, b"m", hashes.SHA256())
    public.verify(signature, b"m", ec.ECDSA(hashes.SHA256()))


class ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def errors() -> Iterator[ErrorCounter]:
    counter = ErrorCounter()
    logger = logging.getLogger("vsc")
    logger.addHandler(counter)
    yield counter
    logger.removeHandler(counter)


class Client(threading.Thread):
    """Keeps the TPM busy (VERIFY, sign with 9A, CHANGE the PIN) until 6581 after the kill."""

    def __init__(self, piv: Piv, pin: bytes) -> None:
        super().__init__(name="tpm-client", daemon=True)
        self.piv = piv
        self.pin = pin  # the PIN of the last CHANGE that answered 9000
        self.answers: list[tuple[str, int]] = []
        self.killed = threading.Event()  # set just before the kill
        self.refused = threading.Event()  # the card answered 6581 since: the client stops

    def record(self, what: str, sw: int) -> bool:
        """Whether to go on."""
        self.answers.append((what, sw))
        if sw == 0x6581 and self.killed.is_set():
            self.refused.set()
        return not self.refused.is_set() and len(self.answers) < 100_000

    def run(self) -> None:
        while self.record("verify", self.piv.sw(verify(self.pin))):
            if not self.record("sign", self.piv.sw(sign_9a())):
                return
            new = PINS[1] if self.pin == PINS[0] else PINS[0]
            sw = self.piv.sw(change(self.pin, new))
            if sw == 0x9000:
                self.pin = new
            if not self.record("change", sw):
                return


def test_swtpm_killed_mid_operation(tmp_path: Path, swtpm: Swtpm, errors: ErrorCounter) -> None:
    store = CardStore(tmp_path / "store")
    backend = BackendSpec.tpm(swtpm.tcti)
    piv = open_card(store, backend)
    piv.stored.anti_hammer.set_parameters(FORGIVING, lockout_auth=b"")
    public = personalise(piv)
    rng = random.Random()
    pin, seen = PINS[0], set()
    for _ in range(KILL_ROUNDS):
        client = Client(piv, pin)
        client.start()
        time.sleep(rng.uniform(0.0, 0.3))  # a VERIFY takes ~50-80 ms on a busy machine
        client.killed.set()
        os.kill(swtpm.pid, signal.SIGKILL)  # by its PID, mid-operation or between two
        client.join(WAIT)
        assert not client.is_alive(), "the card hung on a dead TPM"
        assert client.refused.is_set(), f"no 6581 after the kill: {client.answers[-6:]}"
        answers = {sw for _, sw in client.answers}
        assert answers <= {0x9000, 0x6581, 0x6982}, client.answers
        seen |= answers
        pin = client.pin  # the PIN of the last CHANGE that answered 9000

        reads_without_the_tpm(piv)  # the TPM is still gone
        assert piv.sw(verify(pin)) == 0x6581

        swtpm.stop()  # reaps the dead process (no Shutdown: there is no TPM to send it to)
        swtpm.start()  # same state directory: same seed, same SRK, same sealed blobs
        # The same open card works again: the 9000s were durable, the 6581s did nothing.
        signs_with_9a(piv, pin, public)
        assert piv.session.get_pin_attempts() == 3
    assert 0x9000 in seen and 0x6581 in seen
    assert errors.messages == [], "the card logged an internal error"

    piv.close()
    piv = open_card(store, backend)
    piv.stored.integrity_check()
    signs_with_9a(piv, pin, public)
    piv.close()


def test_a_card_cannot_be_opened_without_its_tpm(tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    with Swtpm() as tpm:
        backend = BackendSpec.tpm(tpm.tcti)
        card, stored = emulator_open_card("alice", backend, store=store_path)
        stored.close()
        state = tpm.state_dir
        tpm.stop()
        with pytest.raises(BackendUnavailable, match="cannot reach the TPM") as e:
            emulator_open_card("alice", backend, store=store_path)
        assert e.value.sw == 0x6581
        assert not CardStore(store_path).info("alice").in_use  # the failed open let go
        tpm.start()
        assert tpm.state_dir == state
        card, stored = emulator_open_card("alice", backend, store=store_path)
        assert card.transmit(bytes.fromhex("00A4040005A00000030800"))[-2:] == b"\x90\x00"
        stored.close()


def test_an_unreachable_tpm_gives_the_try_back(tmp_path: Path, swtpm: Swtpm) -> None:
    """At the store: a TPM that could not be reached compared nothing, so the try is not spent."""
    card = CardStore(tmp_path / "store").create("alice", BackendSpec.tpm(swtpm.tcti))
    card.set_counter("pin", 3)
    card.create_binding("b", {"pin": PINS[0]})
    card.lock()
    swtpm.stop()
    for _ in range(5):
        with pytest.raises(BackendUnavailable, match="cannot reach the TPM") as e:
            card.unlock("b", "pin", PINS[0], counter="pin")
        assert not e.value.compared
    assert card.counter("pin").remaining == 3
    swtpm.start()
    card.unlock("b", "pin", PINS[0], counter="pin")
    assert card.is_unlocked("b")
    card.close()


def test_an_unreachable_tpm_does_not_block_the_pin(tmp_path: Path, swtpm: Swtpm) -> None:
    piv = open_card(CardStore(tmp_path / "store"), BackendSpec.tpm(swtpm.tcti))
    swtpm.stop()
    try:
        answers = [piv.sw(verify(PINS[0])) for _ in range(4)]
        status = piv.sw("00200080")
    finally:
        swtpm.start()
    assert piv.sw(verify(PINS[0])) == 0x9000
    piv.close()
    assert answers == [0x6581] * 4  # (once: 6581 thrice, then 6983: an outage blocked the PIN)
    assert status == 0x63C3


def test_lockout_caused_by_another_tpm_user(
    tmp_path: Path, swtpm: Swtpm, errors: ErrorCounter
) -> None:
    store = CardStore(tmp_path / "store")
    piv = open_card(store, BackendSpec.tpm(swtpm.tcti))
    piv.stored.anti_hammer.set_parameters(
        DaParameters(max_tries=3, recovery_time=2, lockout_recovery=1), lockout_auth=b""
    )
    public = personalise(piv)
    assert piv.sw("0070000001") == 0x9000  # channel 1, verified before the lockout
    assert piv.sw(verify(PINS[0], cla=1)) == 0x9000

    # Another program guesses the authorisation of its own DA-protected object.
    other = Tpm(swtpm.tcti)
    blob = other.seal(b"another program's secret", auth=b"its password")
    for _ in range(3):
        with pytest.raises(AuthFailed):
            other.unseal(blob, auth=b"a guess")
    with pytest.raises(LockedOut, match="lockout"):
        other.unseal(blob, auth=b"its password")
    assert piv.stored.anti_hammer.status().locked_out

    # The card's own PIN is not even compared: 6985, and no try is spent.
    assert piv.sw(verify(PINS[0])) == 0x6985
    assert piv.sw(change(PINS[0], PINS[1])) == 0x6985
    assert piv.sw("00200080") == 0x63C3  # status query: not verified, all 3 tries left
    # The PIN-bound key is DA-protected in the TPM: in lockout the TPM uses it for nobody,
    # not even a session verified before (6985, temporary); the PIN-never key still signs.
    assert piv.sw(sign_9a(cla=1)) == 0x6985
    assert piv.sw(sign_9a(cla=0)) == 0x6982
    card_auth = piv.session.get_slot_metadata(SLOT.CARD_AUTH).public_key
    assert isinstance(card_auth, ec.EllipticCurvePublicKey)
    signature = piv.session.sign(SLOT.CARD_AUTH, KEY_TYPE.ECCP256, b"m", hashes.SHA256())
    card_auth.verify(signature, b"m", ec.ECDSA(hashes.SHA256()))

    # recoveryTime forgives one failure at a time: the card answers again, by itself.
    deadline, refused = time.monotonic() + WAIT, 0
    while (sw := piv.sw(verify(PINS[0]))) == 0x6985:
        refused += 1
        assert time.monotonic() < deadline, "the lockout never healed"
        time.sleep(0.2)
    assert sw == 0x9000 and refused >= 1
    assert piv.session.get_pin_attempts() == 3
    signs_with_9a(piv, PINS[0], public)
    assert piv.sw(change(PINS[0], PINS[1])) == 0x9000  # the unchanged PIN, changed now
    assert errors.messages == []
    piv.close()
