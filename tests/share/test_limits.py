"""The service's connection pools: who is evicted when strangers knock, who always gets in."""

from __future__ import annotations

from vsc.share.limits import Admission, Limits

LIMITS = Limits(
    pending=6, pending_per_address=2, pending_grace=1.0, sessions=3, sessions_per_peer=2
)


def test_an_address_at_its_cap_evicts_its_own_oldest() -> None:
    pool: Admission[str] = Admission(LIMITS)
    assert pool.admit("a1", "10.0.0.1", now=0.0) == []
    assert pool.admit("b1", "10.0.0.2", now=0.0) == []
    assert pool.admit("a2", "10.0.0.1", now=1.0) == []
    assert pool.admit("a3", "10.0.0.1", now=2.0) == ["a1"]  # not b1: another address is kept
    assert pool.pending("b1") and not pool.pending("a1")
    assert pool.counts() == (3, 0)


def test_connections_still_in_their_handshake_are_not_evicted_by_their_own_address() -> None:
    """A machine opening several links at once goes over its cap for a moment, not the pool."""
    pool: Admission[str] = Admission(LIMITS)
    for i in range(4):
        assert pool.admit(f"a{i}", "10.0.0.1", now=0.1 * i) == []
    assert pool.counts() == (4, 0)
    # Later, the oldest have had their grace: the next newcomer evicts down to the cap.
    assert pool.admit("a4", "10.0.0.1", now=1.25) == ["a0", "a1", "a2"]
    assert pool.counts() == (2, 0)


def test_a_full_pool_evicts_the_oldest_of_the_busiest_address() -> None:
    pool: Admission[str] = Admission(LIMITS)
    for name, address in [
        ("x1", "10.0.0.9"),
        ("a1", "10.0.0.1"),
        ("a2", "10.0.0.1"),
        ("b1", "10.0.0.2"),
        ("b2", "10.0.0.2"),
        ("c1", "10.0.0.3"),
    ]:
        assert pool.admit(name, address, now=0.0) == []
    # Full (6): the newcomer evicts a1, the oldest of the first address holding two, young
    # or not: the pool's bound holds for everyone.
    assert pool.admit("d1", "10.0.0.4", now=0.0) == ["a1"]
    assert pool.pending("x1")  # the oldest overall, but alone at its address: kept
    assert pool.counts() == (6, 0)


def test_sessions_are_out_of_reach_of_the_pending_and_capped_per_peer() -> None:
    pool: Admission[str] = Admission(LIMITS)
    pool.admit("alice", "10.0.0.1", now=0.0)
    assert pool.promote("alice", b"A") is None
    for i in range(20):  # a flood from alice's own address
        evicted = pool.admit(f"flood{i}", "10.0.0.1", now=10.0 + i)
        assert "alice" not in evicted
    assert pool.counts() == (2, 1)
    pool.admit("alice2", "10.0.0.5", now=40.0)
    assert pool.promote("alice2", b"A") is None
    pool.admit("alice3", "10.0.0.5", now=40.0)
    assert "2 sessions" in (pool.promote("alice3", b"A") or "")  # per peer
    pool.admit("bob", "10.0.0.6", now=40.0)
    assert pool.promote("bob", b"B") is None
    pool.admit("carol", "10.0.0.7", now=40.0)
    assert "3 sessions" in (pool.promote("carol", b"C") or "")  # in all
    pool.forget("alice")
    assert pool.promote("carol", b"C") is None
    assert pool.counts() == (3, 3)  # flood18, flood19, alice3 pending
