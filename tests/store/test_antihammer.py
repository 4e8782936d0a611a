"""The TPM 2.0 dictionary-attack model, pure and as the store enforces it (test clock)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vsc.store import (
    AuthFailed,
    BackendSpec,
    CardStore,
    DaParameters,
    DaState,
    LockedOut,
    ManualClock,
    StoredCard,
)
from vsc.store.antihammer import SoftwareAntiHammer

from .conftest import software_spec

PIN = b"123456"
SMALL = DaParameters(max_tries=4, recovery_time=60, lockout_recovery=300)


# -- the pure model ---------------------------------------------------------------------


def fail(state: DaState, params: DaParameters, now: float, times: int = 1) -> DaState:
    for _ in range(times):
        state = state.failure(params, now)
    return state


def test_defaults_are_windows() -> None:
    assert DaParameters() == DaParameters(32, 7200, 86400)


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5])
def test_parameters_are_uint32(bad: float) -> None:
    with pytest.raises(ValueError):
        DaParameters(max_tries=bad)  # type: ignore[arg-type]


def test_lockout_at_max_tries() -> None:
    state = fail(DaState(), SMALL, 0.0, 3)
    assert not state.locked_out(SMALL)
    state = fail(state, SMALL, 0.0)
    assert state.locked_out(SMALL) and state.failed_tries == 4
    assert state.retry_after(SMALL, 10.0) == 50.0


def test_one_failure_forgiven_per_recovery_time() -> None:
    state = fail(DaState(), SMALL, 100.0, 4)
    assert state.healed(SMALL, 159.9).failed_tries == 4
    once = state.healed(SMALL, 160.0)
    assert once.failed_tries == 3 and not once.locked_out(SMALL)  # one more try
    again = fail(once, SMALL, 170.0)  # wrong again: locked, and the timer restarts
    assert again.locked_out(SMALL)
    assert again.healed(SMALL, 229.0).failed_tries == 4
    assert again.healed(SMALL, 230.0).failed_tries == 3
    assert state.healed(SMALL, 100.0 + 4 * 60).failed_tries == 0
    assert state.healed(SMALL, 1e9).failed_tries == 0


def test_recovery_time_zero_disables_protection() -> None:
    off = DaParameters(max_tries=1, recovery_time=0, lockout_recovery=0)
    state = fail(DaState(), off, 0.0, 10)
    assert state.failed_tries == 0 and not state.locked_out(off)


def test_max_tries_zero_is_always_locked() -> None:
    assert DaState().locked_out(DaParameters(0, 10, 10))


def test_lockout_auth_recovery() -> None:
    state = DaState().lockout_auth_failure(SMALL, 1000.0)
    assert not state.lockout_auth_usable(1299.0)
    assert state.lockout_auth_usable(1300.0)
    assert state.healed(SMALL, 1300.0).lockout_blocked_until is None
    forever = DaState().lockout_auth_failure(DaParameters(4, 60, 0), 0.0)
    assert forever.lockout_blocked_until == math.inf and not forever.lockout_auth_usable(1e12)


# -- enforced by the store -------------------------------------------------------------


@pytest.fixture
def spec(tmp_path: Path) -> BackendSpec:
    return software_spec(tmp_path)


def new_card(store: CardStore, spec: BackendSpec, lockout_auth: bytes = b"") -> StoredCard:
    card = store.create("alice", spec, da=SMALL, lockout_auth=lockout_auth)
    card.set_counter("pin", 100)
    card.create_binding("piv", {"pin": PIN})
    card.lock()
    return card


def wrong(card: StoredCard, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(AuthFailed):
            card.unlock("piv", "pin", b"000000", counter="pin")


def test_store_enforces_lockout_and_recovery(
    store: CardStore, spec: BackendSpec, clock: ManualClock
) -> None:
    card = new_card(store, spec)
    assert card.anti_hammer.enforced_by == "store"
    wrong(card, 4)
    status = card.anti_hammer.status()
    assert (status.failed_tries, status.locked_out, status.retry_after) == (4, True, 60.0)
    with pytest.raises(LockedOut) as e:
        card.unlock("piv", "pin", PIN, counter="pin")  # even the right PIN
    assert e.value.retry_after == 60.0
    assert card.counter("pin").remaining == 96  # the refused try was not compared: refunded
    clock.advance(59)
    with pytest.raises(LockedOut):
        card.unlock("piv", "pin", PIN)
    clock.advance(1)
    wrong(card)  # the one try of this period, wasted
    with pytest.raises(LockedOut):
        card.unlock("piv", "pin", PIN)
    clock.advance(60)
    card.unlock("piv", "pin", PIN, counter="pin")  # the next period's try
    assert card.anti_hammer.status().failed_tries == 3  # a success does not forgive
    clock.advance(3 * 60)
    assert card.anti_hammer.status().failed_tries == 0
    card.close()


def test_lockout_survives_reopen(store: CardStore, spec: BackendSpec, clock: ManualClock) -> None:
    card = new_card(store, spec)
    wrong(card, 4)
    card.close()
    card = store.open("alice", spec)
    with pytest.raises(LockedOut):
        card.unlock("piv", "pin", PIN)
    card.close()


def test_clock_going_back_does_not_unlock(
    store: CardStore, spec: BackendSpec, clock: ManualClock
) -> None:
    card = new_card(store, spec)
    clock.advance(1000)
    wrong(card, 4)
    clock.set(clock.now() - 10_000)
    with pytest.raises(LockedOut) as e:
        card.unlock("piv", "pin", PIN)
    assert e.value.retry_after == 60.0
    card.close()


def test_lockout_reset_with_lockout_auth(
    store: CardStore, spec: BackendSpec, clock: ManualClock
) -> None:
    card = new_card(store, spec, lockout_auth=b"lockout secret")
    wrong(card, 4)
    with pytest.raises(AuthFailed, match="lockout"):
        card.anti_hammer.reset(lockout_auth=b"guess")
    # A wrong lockout authorisation blocks the right one for lockoutRecovery.
    with pytest.raises(LockedOut) as e:
        card.anti_hammer.reset(lockout_auth=b"lockout secret")
    assert e.value.retry_after == 300.0
    assert card.anti_hammer.status().lockout_auth_available is False
    clock.advance(300)
    card.anti_hammer.reset(lockout_auth=b"lockout secret")
    status = card.anti_hammer.status()
    assert (status.failed_tries, status.locked_out, status.lockout_auth_available) == (
        0,
        False,
        True,
    )
    card.unlock("piv", "pin", PIN)
    card.close()


def test_set_parameters_needs_lockout_auth(store: CardStore, spec: BackendSpec) -> None:
    card = new_card(store, spec, lockout_auth=b"L")
    wrong(card, 2)
    with pytest.raises(AuthFailed):
        card.anti_hammer.set_parameters(DaParameters(1, 1, 1), lockout_auth=b"x")
    assert card.anti_hammer.status().parameters == SMALL
    card.close()
    card = store.open("alice", spec)  # (lockout auth blocked for 300 s of the test clock)
    with pytest.raises(LockedOut):
        card.anti_hammer.set_parameters(DaParameters(1, 1, 1), lockout_auth=b"L")
    card.close()


def test_set_parameters_clears_the_counter(
    store: CardStore, spec: BackendSpec, clock: ManualClock
) -> None:
    card = new_card(store, spec)
    wrong(card, 3)
    card.anti_hammer.set_parameters(DaParameters(2, 10, 10), lockout_auth=b"")
    status = card.anti_hammer.status()
    assert (status.parameters, status.failed_tries) == (DaParameters(2, 10, 10), 0)
    wrong(card, 2)
    assert card.anti_hammer.status().locked_out
    card.close()


def test_lockout_recovery_zero_lasts_until_reopen(store: CardStore, spec: BackendSpec) -> None:
    card = new_card(store, spec)
    card.anti_hammer.set_parameters(DaParameters(4, 60, 0), lockout_auth=b"")
    with pytest.raises(AuthFailed):
        card.anti_hammer.reset(lockout_auth=b"wrong")
    with pytest.raises(LockedOut) as e:
        card.anti_hammer.reset(lockout_auth=b"")
    assert e.value.retry_after is None
    card.close()
    with store.open("alice", spec) as card:  # the software analogue of a TPM restart
        card.anti_hammer.reset(lockout_auth=b"")


def test_change_lockout_auth(store: CardStore, spec: BackendSpec) -> None:
    card = new_card(store, spec)
    assert isinstance(card.anti_hammer, SoftwareAntiHammer)
    card.anti_hammer.set_lockout_auth(current=b"", new=b"new")
    card.anti_hammer.reset(lockout_auth=b"new")
    card.close()


def test_a_try_interrupted_before_its_result_counts(store: CardStore, spec: BackendSpec) -> None:
    """Like a TPM that cannot be sure its counter was written: the try is spent up front."""
    card = new_card(store, spec)
    card.anti_hammer.before_try()  # the process dies here, before after_try
    card.close()
    with store.open("alice", spec) as card:
        assert card.anti_hammer.status().failed_tries == 1
        card.unlock("piv", "pin", PIN)  # a success takes back only its own pre-count
        assert card.anti_hammer.status().failed_tries == 1


def test_plain_backend_enforces_too(store: CardStore) -> None:
    card = new_card(store, BackendSpec.plain())
    wrong(card, 4)
    with pytest.raises(LockedOut):
        card.unlock("piv", "pin", PIN)
    card.close()


def test_a_lockout_is_a_security_event_of_the_card(
    store: CardStore, spec: BackendSpec, clock: ManualClock
) -> None:
    card = new_card(store, spec)
    seen: list[tuple[str, dict[str, object]]] = []
    card.events = lambda event, details: seen.append((event, dict(details)))
    wrong(card, 4)
    assert seen == []  # wrong tries are the applet's to report (63Cx, blocked)
    with pytest.raises(LockedOut):
        card.unlock("piv", "pin", PIN, counter="pin")
    assert seen == [("tpm-lockout", {"what": "pin", "outcome": "refused"})]
