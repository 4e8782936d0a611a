"""The tpm backend against a real swtpm: sealing, another TPM, the TPM's own anti-hammering."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import require_swtpm

require_swtpm()  # before importing the tpm backend, which needs tpm2-pytss

from vsc.store import (  # noqa: E402
    AuthFailed,
    BackendError,
    BackendMismatch,
    BackendSpec,
    CardStore,
    DaParameters,
    LockedOut,
    StoredCard,
    bound,
    open_protector,
)
from vsc.store.tpm import Tpm  # noqa: E402
from vsc.testing.swtpm import Swtpm  # noqa: E402

PIN, PUK = b"123456\xff\xff", b"12345678"
WAIT = 15.0  # bound of every poll for TPM time to pass; never reached when things work


@pytest.fixture
def other_swtpm() -> Iterator[Swtpm]:
    with Swtpm() as tpm:
        yield tpm


@pytest.fixture
def tpm(swtpm: Swtpm) -> Tpm:
    return Tpm(swtpm.tcti)


def personalise(store: CardStore, tcti: str, da: DaParameters | None = None) -> StoredCard:
    card = store.create("alice", BackendSpec.tpm(tcti))
    if da is not None:
        card.anti_hammer.set_parameters(da, lockout_auth=b"")
    card.set_counter("pin", 100)
    card.create_binding("piv", {"pin": PIN, "puk": PUK})
    card.put("key/9a", b"private key", protection=bound("piv"))
    card.put("cert/9a", b"certificate")
    card.lock()
    return card


def poll(what: Callable[[], None], until: float = WAIT) -> int:
    """Call ``what`` until it stops raising LockedOut; the number of LockedOut seen."""
    deadline, refused = time.monotonic() + until, 0
    while True:
        try:
            what()
            return refused
        except LockedOut:
            refused += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_seal_and_unseal(swtpm: Swtpm) -> None:
    protector = open_protector(BackendSpec.tpm(swtpm.tcti))
    blob = protector.seal(b"k" * 32)
    assert b"k" * 32 not in blob
    assert protector.unseal(blob) == b"k" * 32
    with_auth = protector.seal(b"s" * 32, auth=b"A" * 32)
    assert protector.unseal(with_auth, auth=b"A" * 32) == b"s" * 32
    with pytest.raises(AuthFailed):
        protector.unseal(with_auth, auth=b"B" * 32)
    with pytest.raises(ValueError):
        protector.seal(b"x" * 129)
    info = protector.describe()
    assert info.kind == "tpm" and info.hardware_bound and not info.offline_guessing
    assert "SW" in info.summary and swtpm.tcti in info.summary


def test_blob_of_another_tpm_does_not_load(swtpm: Swtpm, other_swtpm: Swtpm) -> None:
    blob = open_protector(BackendSpec.tpm(swtpm.tcti)).seal(b"k" * 32)
    with pytest.raises(BackendMismatch, match="not sealed by this TPM"):
        open_protector(BackendSpec.tpm(other_swtpm.tcti)).unseal(blob)


def test_copied_store_fails_on_another_tpm(
    tmp_path: Path, store: CardStore, swtpm: Swtpm, other_swtpm: Swtpm
) -> None:
    personalise(store, swtpm.tcti).close()
    shutil.copytree(store.root, tmp_path / "copy")
    copy = CardStore(tmp_path / "copy")
    with pytest.raises(BackendMismatch, match="different TPM") as e:
        copy.open("alice", BackendSpec.tpm(other_swtpm.tcti))
    assert "copied from another machine" in str(e.value)
    assert not copy.info("alice").in_use  # the failed open released the card
    # The same copy on the original TPM opens: it is as new as the card (not rolled back).
    with copy.open("alice", BackendSpec.tpm(swtpm.tcti)) as card:
        assert card.get("cert/9a") == b"certificate"


def test_card_survives_a_tpm_restart(store: CardStore, swtpm: Swtpm) -> None:
    personalise(store, swtpm.tcti, DaParameters(7, 1000, 1000)).close()
    swtpm.restart()  # same seed, same SRK
    with store.open("alice", BackendSpec.tpm(swtpm.tcti)) as card:
        card.unlock("piv", "pin", PIN, counter="pin")
        assert card.get("key/9a") == b"private key"
        assert card.anti_hammer.status().parameters == DaParameters(7, 1000, 1000)


def test_wrong_pins_trip_the_tpm_lockout(store: CardStore, swtpm: Swtpm) -> None:
    card = personalise(store, swtpm.tcti, DaParameters(5, 1000, 1000))
    assert card.anti_hammer.enforced_by == "tpm"
    for n in range(1, 6):
        with pytest.raises(AuthFailed):
            card.unlock("piv", "pin", b"000000\xff\xff", counter="pin")
        assert card.anti_hammer.status().failed_tries == n  # the TPM's own counter
    status = card.anti_hammer.status()
    assert status.locked_out and status.enforced_by == "tpm"
    with pytest.raises(LockedOut):
        card.unlock("piv", "pin", PIN, counter="pin")  # the right PIN, refused by the TPM
    with pytest.raises(LockedOut):
        card.unlock("piv", "puk", PUK)
    assert card.counter("pin").remaining == 95  # the refused try was never compared
    assert card.get("cert/9a") == b"certificate"  # the card itself still opens
    # Lockout reset with the lockout authorisation.
    card.anti_hammer.reset(lockout_auth=b"")
    assert card.anti_hammer.status().failed_tries == 0
    card.unlock("piv", "pin", PIN, counter="pin")
    assert card.get("key/9a") == b"private key"
    card.close()


def test_wrong_lockout_auth_is_blocked_for_lockout_recovery(
    store: CardStore, swtpm: Swtpm, tpm: Tpm
) -> None:
    card = personalise(store, swtpm.tcti, DaParameters(2, 1000, 1))
    tpm.change_lockout_auth(b"", b"lockout secret")
    for _ in range(2):
        with pytest.raises(AuthFailed):
            card.unlock("piv", "pin", b"wrong")
    with pytest.raises(AuthFailed, match="lockout"):
        card.anti_hammer.reset(lockout_auth=b"guess")
    refused = poll(lambda: card.anti_hammer.reset(lockout_auth=b"lockout secret"))
    assert refused >= 1  # right after the wrong one, the right one was refused too
    card.unlock("piv", "pin", PIN)
    card.close()


def test_recovery_over_time(store: CardStore, swtpm: Swtpm) -> None:
    card = personalise(store, swtpm.tcti, DaParameters(2, 1, 1000))
    for _ in range(2):
        with pytest.raises(AuthFailed):
            card.unlock("piv", "pin", b"wrong")
    refused = poll(lambda: card.unlock("piv", "pin", PIN))
    assert refused >= 1  # locked out at first; one failure forgiven after recoveryTime
    card.close()


def test_leftover_objects_of_killed_processes_are_flushed(
    store: CardStore, swtpm: Swtpm, caplog: pytest.LogCaptureFixture
) -> None:
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2_ALG, TPM2_SE, TPM2B_PUBLIC

    card = personalise(store, swtpm.tcti)
    leak = ESAPI(swtpm.tcti)
    try:
        for _ in range(3):  # swtpm has 3 object and 3 session slots: fill them, never flush
            leak.create_primary(None, TPM2B_PUBLIC.parse("ecc256"))
            leak.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC, None, TPM2_ALG.SHA256)
    finally:
        leak.close()
    card.unlock("piv", "pin", PIN)
    assert "flushing leftovers" in caplog.text
    assert card.get("key/9a") == b"private key"
    card.close()


def test_unreachable_tpm_is_a_clear_error(tmp_path: Path, store: CardStore) -> None:
    with pytest.raises(BackendError, match="cannot reach the TPM"):
        store.create("alice", BackendSpec.tpm(f"swtpm:path={tmp_path}/nothing.sock"))
    assert store.names() == []
    with pytest.raises(ValueError, match="explicit TCTI"):
        BackendSpec("tpm")


def test_tpm_card_needs_the_tpm_backend(store: CardStore, swtpm: Swtpm) -> None:
    personalise(store, swtpm.tcti).close()
    with pytest.raises(BackendMismatch, match="--tpm"):
        store.open("alice", BackendSpec.plain())
