"""The relay in one process: the real service and endpoint over real TLS on loopback.

The local readers are in memory (:class:`MemoryReaders`, real ``vsc.Card``
engines with PC/SC's sharing rules) and vpcd's side of the card socket is
played by :class:`FakeVpcd`; the end-to-end tests run the same code through
two real pcscd instances.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from applets.piv import PivApplet
from vsc.card import Card
from vsc.share import client
from vsc.share.broker import UnknownReader
from vsc.share.client import Refused, ShareError, open_session
from vsc.share.endpoint import Backoff, Endpoint, Outcome
from vsc.share.events import read_events
from vsc.share.home import ShareHome
from vsc.share.link import LinkSocket
from vsc.share.pairing import new_code
from vsc.share.protocol import (
    Attach,
    Attached,
    ConnectionClosed,
    EndReason,
    Error,
    ErrorCode,
    Hello,
    ListReaders,
    ReaderState,
    Role,
    ShareMode,
    Transmit,
)
from vsc.share.service import ShareService
from vsc.share.tls import pairing_context
from vsc.share.trust import PeerRole
from vsc.testing.proxy import TcpProxy

from .fakes import SELECT_ECHO, FakeVpcd, MemoryHandle, MemoryReaders, echo_card

READER_1 = "Virtual PCD 00 00"
READER_2 = "Virtual PCD 00 01"
ECHO = bytes.fromhex("0001000003414243")
TIMEOUT = 10.0


@dataclass
class Relay:
    """A service on loopback and the means to attach endpoints to it."""

    service_home: ShareHome
    endpoint_home: ShareHome
    readers: MemoryReaders
    service: ShareService
    running: list[tuple[Endpoint, threading.Thread, list[Outcome]]] = field(default_factory=list)

    def endpoint(
        self,
        vpcd: FakeVpcd,
        reader: str = "Reader 1",
        *,
        session: str = "alice",
        mode: ShareMode = ShareMode.EXCLUSIVE,
        address: tuple[str, int] | None = None,
        home: ShareHome | None = None,
        **options: float,
    ) -> tuple[Endpoint, Callable[[], Outcome]]:
        """Start an endpoint in a thread; returns it and a bounded ``result()``."""
        endpoint = Endpoint(
            home or self.endpoint_home,
            address or self.service.address,
            reader,
            session=session,
            mode=mode,
            vpcd=vpcd.address,
            backoff=Backoff(0.05, 0.2),
            **options,  # type: ignore[arg-type]
        )
        outcomes: list[Outcome] = []
        thread = threading.Thread(target=lambda: outcomes.append(endpoint.run()), daemon=True)
        thread.start()
        self.running.append((endpoint, thread, outcomes))

        def result() -> Outcome:
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "the endpoint did not finish"
            return outcomes[0]

        return endpoint, result

    def events(self, home: ShareHome) -> list[dict[str, Any]]:
        return read_events(home.events_path)

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def state(self, reader: str = "Reader 1") -> ReaderState:
        return next(i.state for i in self.service.broker.listing() if i.name == reader)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    service_home, endpoint_home = ShareHome(tmp_path / "service"), ShareHome(tmp_path / "endpoint")
    service_home.trust.pin(endpoint_home.identity().certificate, "endpoint", PeerRole.ENDPOINT)
    readers = MemoryReaders(READER_1, READER_2)
    readers.insert(READER_1, echo_card())
    service = ShareService(service_home, host="127.0.0.1", port=0, backend=readers, name="laptop")
    service.start()
    where = f"127.0.0.1:{service.address[1]}"  # as `vsc share pair --with` remembers it
    endpoint_home.trust.pin(service_home.identity().certificate, "laptop", PeerRole.SERVICE, where)
    relay = Relay(service_home, endpoint_home, readers, service)
    try:
        yield relay
    finally:
        for endpoint, thread, _ in relay.running:
            endpoint.stop()
            thread.join(TIMEOUT)
        service.stop()
        assert service.join(TIMEOUT)
        assert all(not thread.is_alive() for _, thread, _ in relay.running)


@pytest.fixture
def vpcd() -> Iterator[FakeVpcd]:
    fake = FakeVpcd()
    yield fake
    fake.close()


def test_apdus_and_power_events_reach_the_card(relay: Relay, vpcd: FakeVpcd) -> None:
    endpoint, result = relay.endpoint(vpcd)
    vpcd.accept()
    card_atr = relay.readers.snapshot()[READER_1]
    assert vpcd.get_atr() == card_atr
    vpcd.power_on()
    assert vpcd.get_atr() == card_atr
    assert vpcd.transmit(SELECT_ECHO) == b"\x90\x00"
    assert vpcd.transmit(ECHO) == b"ABC\x90\x00"
    long = vpcd.transmit(bytes.fromhex("0002010000"))  # 256 bytes of pattern
    assert long == bytes(range(256)) + b"\x90\x00"
    assert (READER_1, ECHO) in relay.readers.transmitted
    slot = relay.readers.slots[READER_1]
    assert slot.resets == 0
    vpcd.power_off()
    vpcd.power_on()  # the card was used: the remote power cycle resets it for real
    assert vpcd.get_atr() == card_atr
    assert slot.resets == 1
    vpcd.power_on()  # unused since: no second reset
    vpcd.reset()
    assert vpcd.get_atr() == card_atr
    assert slot.resets == 1
    vpcd.transmit(ECHO)
    vpcd.reset()
    assert vpcd.get_atr() == card_atr
    assert slot.resets == 2
    assert relay.state() is ReaderState.SHARED
    endpoint.stop(EndReason.DETACH)
    assert result() == Outcome(EndReason.DETACH, "Reader 1 unshared (detached)")
    vpcd.wait_closed()
    relay.wait_for(lambda: relay.state() is ReaderState.CARD_PRESENT, "the reader to be free")


def test_removal_and_insertion_propagate(relay: Relay, vpcd: FakeVpcd) -> None:
    endpoint, result = relay.endpoint(vpcd)
    vpcd.accept()
    relay.readers.remove(READER_1)
    vpcd.wait_closed()  # the remote reader is empty
    other = echo_card()
    relay.readers.insert(READER_1, other)
    vpcd.accept()  # and has a card again
    assert vpcd.get_atr() == other.atr
    vpcd.power_on()
    assert vpcd.transmit(ECHO) == b"ABC\x90\x00"
    kinds = [e["event"] for e in relay.events(relay.endpoint_home)]
    assert kinds == ["attached", "card-removed", "card-inserted"]
    service_kinds = [e["event"] for e in relay.events(relay.service_home)]
    assert service_kinds[-3:] == ["shared", "card-removed", "card-inserted"]
    endpoint.stop()
    assert result().reason is EndReason.SHUTDOWN


def test_attach_to_an_empty_reader_then_insert(relay: Relay, vpcd: FakeVpcd) -> None:
    endpoint, _ = relay.endpoint(vpcd, "Reader 2")
    assert endpoint.wait_attached(TIMEOUT)
    assert not endpoint.present
    relay.readers.insert(READER_2, echo_card())
    vpcd.accept()
    vpcd.power_on()
    assert vpcd.transmit(SELECT_ECHO) == b"\x90\x00"


def test_a_second_attach_is_refused_until_detach(relay: Relay, vpcd: FakeVpcd) -> None:
    first, first_result = relay.endpoint(vpcd, session="alice")
    vpcd.accept()
    other_vpcd = FakeVpcd()
    try:
        _, second_result = relay.endpoint(other_vpcd, session="bob")
        refused = second_result()
        assert refused.refused is ErrorCode.IN_USE
        assert refused.message == "Reader 1 is shared in another session"
        first.stop(EndReason.DETACH)
        assert first_result().reason is EndReason.DETACH
        relay.wait_for(lambda: relay.state() is ReaderState.CARD_PRESENT, "the reader to be free")
        third, _ = relay.endpoint(other_vpcd, session="bob")
        other_vpcd.accept()
        assert third.wait_attached(TIMEOUT)
    finally:
        other_vpcd.close()


def test_logout_is_recorded_on_both_sides(relay: Relay, vpcd: FakeVpcd) -> None:
    endpoint, result = relay.endpoint(vpcd, session="alice")
    vpcd.accept()
    endpoint.stop(EndReason.LOGOUT)
    assert result().reason is EndReason.LOGOUT
    relay.wait_for(lambda: relay.state() is ReaderState.CARD_PRESENT, "the reader to be free")
    unshared = [e for e in relay.events(relay.service_home) if e["event"] == "unshared"]
    assert [(e["session"], e["reason"]) for e in unshared] == [("alice", "logout")]
    assert unshared[0]["message"] == (
        "Reader 1 unshared from session alice (the remote user logged out)"
    )
    # Both sides name reader, peer, session and reason: each the other's fingerprint.
    mine = [e for e in relay.events(relay.endpoint_home) if e["event"] == "unshared"]
    assert [(e["reader"], e["session"], e["reason"]) for e in mine] == [
        ("Reader 1", "alice", "logout")
    ]
    assert mine[0]["message"] == (
        "Reader 1 of laptop unshared from session alice (the remote user logged out)"
    )
    service_fp = relay.service_home.identity().fingerprint.hex().upper()
    endpoint_fp = relay.endpoint_home.identity().fingerprint.hex().upper()
    assert service_fp.startswith(mine[0]["peer"].replace(":", ""))
    assert endpoint_fp.startswith(unshared[0]["peer"].replace(":", ""))


def test_an_endpoint_restart_ends_the_old_share(relay: Relay, vpcd: FakeVpcd) -> None:
    _, old_result = relay.endpoint(vpcd, session="alice")
    vpcd.accept()
    # The endpoint machine rebooted: its old link still looks alive, a new instance attaches.
    fresh = open_session(relay.endpoint_home, relay.service.address, "alice", os.urandom(16))
    try:
        reply, _ = fresh.link.request(Attach("Reader 1"))
        assert isinstance(reply, Attached), reply
        assert old_result().reason is EndReason.RESTART
    finally:
        fresh.link.close()
    reasons = [e["reason"] for e in relay.events(relay.service_home) if e["event"] == "unshared"]
    assert reasons[0] == "restart"


def test_a_dead_link_of_the_same_instance_is_taken_over(relay: Relay, vpcd: FakeVpcd) -> None:
    endpoint, old_result = relay.endpoint(vpcd, session="alice")
    vpcd.accept()
    # As if its link died unnoticed and the endpoint reconnected: same session, same instance.
    again = open_session(relay.endpoint_home, relay.service.address, "alice", endpoint.instance)
    try:
        reply, _ = again.link.request(Attach("Reader 1"))
        assert isinstance(reply, Attached), reply
        assert old_result().reason is EndReason.CONNECTION_LOST
    finally:
        again.link.close()


def test_one_session_may_attach_two_readers(relay: Relay, vpcd: FakeVpcd) -> None:
    relay.readers.insert(READER_2, echo_card())
    second_vpcd = FakeVpcd()
    try:
        first, _ = relay.endpoint(vpcd, "Reader 1", session="alice")
        vpcd.accept()
        second, _ = relay.endpoint(second_vpcd, "Reader 2", session="alice")
        second_vpcd.accept()
        vpcd.power_on()
        assert vpcd.transmit(ECHO) == b"ABC\x90\x00"  # the first share is untouched
        states = {i.name: (i.state, i.session) for i in relay.service.broker.listing()}
        assert states == {
            "Reader 1": (ReaderState.SHARED, "alice"),
            "Reader 2": (ReaderState.SHARED, "alice"),
        }
        assert first.present and second.present
    finally:
        second_vpcd.close()


def test_the_local_user_can_detach_any_session(relay: Relay, vpcd: FakeVpcd) -> None:
    _, result = relay.endpoint(vpcd, session="alice")
    vpcd.accept()
    count = client.detach(relay.service_home, relay.service.address, "Reader 1", local=True)
    assert count == 1
    outcome = result()
    assert outcome.reason is EndReason.DETACH and outcome.ok


def test_a_peer_detaches_only_its_own_sessions(
    tmp_path: Path, relay: Relay, vpcd: FakeVpcd
) -> None:
    _, result = relay.endpoint(vpcd, session="alice")
    vpcd.accept()
    other = ShareHome(tmp_path / "other")
    relay.service_home.trust.pin(other.identity().certificate, "other", PeerRole.ENDPOINT)
    other.trust.pin(relay.service_home.identity().certificate, "service", PeerRole.SERVICE)
    assert client.detach(other, relay.service.address, "Reader 1", "alice") == 0
    assert relay.state() is ReaderState.SHARED
    assert client.detach(relay.endpoint_home, relay.service.address, "", "alice") == 1
    assert result().reason is EndReason.DETACH


def test_a_lost_link_reattaches(relay: Relay, vpcd: FakeVpcd) -> None:
    proxy = TcpProxy(relay.service.address)
    try:
        endpoint, _ = relay.endpoint(vpcd, address=proxy.address)
        vpcd.accept()
        proxy.cut()
        vpcd.wait_closed()  # no link: no card on the remote side
        vpcd.accept(timeout=TIMEOUT)  # reconnected and attached again
        vpcd.power_on()
        assert vpcd.transmit(ECHO) == b"ABC\x90\x00"
        assert proxy.accepted == 2
        kinds = [e["event"] for e in relay.events(relay.endpoint_home)]
        assert kinds == ["attached", "link-lost", "attached"]
        assert endpoint.present
    finally:
        proxy.close()


def test_keepalive_holds_a_quiet_link_and_a_dead_network_is_noticed_both_ways(
    relay: Relay, vpcd: FakeVpcd
) -> None:
    """Short times here; the defaults (5 s keepalive, 20 s silence) are in docs/security.md."""
    relay.service.limits = dataclasses.replace(relay.service.limits, peer_timeout=1.0)
    proxy = TcpProxy(relay.service.address)
    try:
        endpoint, _ = relay.endpoint(
            vpcd, address=proxy.address, keepalive=0.2, keepalive_timeout=0.6
        )
        vpcd.accept()
        time.sleep(2.0)  # twice the service's limit, with nothing to relay: PINGs keep it
        assert relay.state() is ReaderState.SHARED
        assert [e["event"] for e in relay.events(relay.endpoint_home)] == ["attached"]

        proxy.frozen.set()  # a dead network: nothing arrives either way, nothing is reset

        def unshared() -> list[str]:
            events = relay.events(relay.service_home)
            return [e["reason"] for e in events if e["event"] == "unshared"]

        relay.wait_for(lambda: bool(unshared()), "the service giving up on the endpoint")
        assert unshared() == ["unresponsive"]
        assert relay.state() is ReaderState.CARD_PRESENT  # the reader is free
        relay.wait_for(
            lambda: "link-lost" in [e["event"] for e in relay.events(relay.endpoint_home)],
            "the endpoint noticing",
        )
        lost = next(e for e in relay.events(relay.endpoint_home) if e["event"] == "link-lost")
        assert "keepalive" in lost["message"]
        vpcd.wait_closed()  # the remote side shows the reader empty meanwhile

        proxy.frozen.clear()  # the network is back: the endpoint attaches again
        vpcd.accept(timeout=TIMEOUT)
        vpcd.power_on()
        assert vpcd.transmit(ECHO) == b"ABC\x90\x00"
        assert endpoint.present
    finally:
        proxy.close()


def test_the_reader_leaving_ends_the_share(relay: Relay, vpcd: FakeVpcd) -> None:
    _, result = relay.endpoint(vpcd)
    vpcd.accept()
    relay.readers.unplug(READER_1)
    assert result().reason is EndReason.READER_GONE
    listing = {i.name: i.state for i in relay.service.broker.listing()}
    assert listing["Reader 1"] is ReaderState.UNAVAILABLE


def test_exclusive_mode_keeps_local_applications_out(relay: Relay, vpcd: FakeVpcd) -> None:
    from vsc.share.pcsc import LocallyBusy

    endpoint, result = relay.endpoint(vpcd)
    vpcd.accept()
    with pytest.raises(LocallyBusy):
        MemoryHandle(relay.readers, READER_1, ShareMode.SHARED)
    endpoint.stop(EndReason.DETACH)
    result()
    MemoryHandle(relay.readers, READER_1, ShareMode.SHARED).close()


@pytest.mark.parametrize(
    ("local_mode", "mode", "hint"),
    [
        (ShareMode.SHARED, ShareMode.EXCLUSIVE, "or attach in shared mode"),
        (ShareMode.EXCLUSIVE, ShareMode.EXCLUSIVE, "holds the card exclusively"),
        (ShareMode.EXCLUSIVE, ShareMode.SHARED, "shared mode cannot help"),
    ],
)
def test_an_attach_while_a_local_application_holds_the_card_says_what_may_help(
    relay: Relay, vpcd: FakeVpcd, local_mode: ShareMode, mode: ShareMode, hint: str
) -> None:
    local = MemoryHandle(relay.readers, READER_1, local_mode)
    try:
        _, result = relay.endpoint(vpcd, mode=mode)
        outcome = result()
        assert outcome.refused is ErrorCode.LOCALLY_BUSY
        assert hint in outcome.message, outcome.message
        assert relay.state() is ReaderState.CARD_PRESENT
    finally:
        local.close()


def test_shared_mode_brackets_bursts_in_transactions(relay: Relay, vpcd: FakeVpcd) -> None:
    local = MemoryHandle(relay.readers, READER_1, ShareMode.SHARED)
    try:
        relay.endpoint(vpcd, mode=ShareMode.SHARED)
        vpcd.accept()
        vpcd.power_on()
        slot = relay.readers.slots[READER_1]
        assert vpcd.transmit(SELECT_ECHO) == b"\x90\x00"
        assert slot.transaction is not None and slot.transaction is not local
        # A local application waits for the burst to end, then gets its turn.
        assert local.transmit(ECHO) == b"ABC\x90\x00"
        assert slot.transaction is None
        assert vpcd.transmit(ECHO) == b"ABC\x90\x00"
    finally:
        local.close()


def test_shared_mode_lets_local_applications_in_while_the_remote_side_never_pauses(
    relay: Relay, vpcd: FakeVpcd
) -> None:
    relay.endpoint(vpcd, mode=ShareMode.SHARED)
    vpcd.accept()
    vpcd.power_on()
    assert vpcd.transmit(SELECT_ECHO) == b"\x90\x00"
    stop = threading.Event()

    def busy() -> None:  # no pause as long as transaction_idle between APDUs
        while not stop.is_set():
            assert vpcd.transmit(ECHO) == b"ABC\x90\x00"

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    local = MemoryHandle(relay.readers, READER_1, ShareMode.SHARED)
    try:
        started = time.monotonic()
        local.begin_transaction()  # LocallyBusy after 5 s: the remote side held it throughout
        assert time.monotonic() - started < 3.0
        assert local.transmit(ECHO) == b"ABC\x90\x00"
        local.end_transaction()
    finally:
        stop.set()
        thread.join(TIMEOUT)
        local.close()


def test_shared_mode_reports_a_reset_by_another_application(relay: Relay, vpcd: FakeVpcd) -> None:
    relay.endpoint(vpcd, mode=ShareMode.SHARED)
    vpcd.accept()
    vpcd.power_on()
    assert vpcd.transmit(SELECT_ECHO) == b"\x90\x00"
    time.sleep(relay.service.transaction_idle * 2)  # let the transaction end
    local = MemoryHandle(relay.readers, READER_1, ShareMode.SHARED)
    local.reconnect(local_reset())
    local.close()
    assert vpcd.transmit(ECHO) == b"\x6f\x00"  # our state on the card is gone
    vpcd.wait_closed()  # so the remote side sees the card leave...
    vpcd.accept()  # ...and come back
    vpcd.power_on()
    assert vpcd.transmit(ECHO) == b"ABC\x90\x00"


def local_reset() -> Any:
    from vsc.share.pcsc import Disposition

    return Disposition.RESET_CARD


def test_unknown_reader(relay: Relay, vpcd: FakeVpcd) -> None:
    _, result = relay.endpoint(vpcd, "Reader 7")
    outcome = result()
    assert outcome.refused is ErrorCode.UNKNOWN_READER
    assert "no reader named 'Reader 7' (readers: Reader 1, Reader 2)" in outcome.message


def test_reader_names_in_any_case_and_unique_prefixes(relay: Relay, vpcd: FakeVpcd) -> None:
    _, result = relay.endpoint(vpcd, "rea")
    outcome = result()
    assert outcome.refused is ErrorCode.UNKNOWN_READER
    assert "'rea' could be any of: Reader 1, Reader 2" in outcome.message
    endpoint, _ = relay.endpoint(vpcd, "READER 1")
    vpcd.accept()
    assert relay.state("Reader 1") is ReaderState.SHARED
    assert endpoint.reader == "Reader 1"  # the endpoint learns the stable name...
    attached = [e for e in relay.events(relay.endpoint_home) if e["event"] == "attached"]
    assert attached[0]["reader"] == "Reader 1"  # ...and records it
    broker = relay.service.broker
    assert broker.resolve("virtual pcd 00 01") == "Reader 2"  # the PC/SC name too
    assert broker.resolve("reader 2") == "Reader 2"
    with pytest.raises(UnknownReader, match="could be any of: Reader 1, Reader 2"):
        broker.resolve("virtual pcd 00 0")  # a prefix must be unique


def test_other_peers_see_another_session_not_who(
    tmp_path: Path, relay: Relay, vpcd: FakeVpcd
) -> None:
    relay.endpoint(vpcd, session="alice@desk")
    vpcd.accept()
    other = ShareHome(tmp_path / "other")
    relay.service_home.trust.pin(other.identity().certificate, "other", PeerRole.ENDPOINT)
    other.trust.pin(relay.service_home.identity().certificate, "service", PeerRole.SERVICE)

    def sessions(home: ShareHome, local: bool = False) -> list[str]:
        _, readers = client.list_readers(home, relay.service.address, local=local)
        return [r.session for r in readers if r.state is ReaderState.SHARED]

    assert sessions(other) == [""]  # shown as "shared in another session"
    assert sessions(relay.endpoint_home) == ["alice@desk"]  # the holder's own peer
    assert sessions(relay.service_home, local=True) == ["alice@desk"]  # the local user
    shared = [e for e in relay.events(relay.service_home) if e["event"] == "shared"]
    assert shared[0]["session"] == "alice@desk"  # the service's own log keeps the detail


# --- authentication ------------------------------------------------------------------------------


def test_an_unpinned_endpoint_is_refused(tmp_path: Path, relay: Relay, vpcd: FakeVpcd) -> None:
    stranger = ShareHome(tmp_path / "stranger")
    stranger.trust.pin(relay.service_home.identity().certificate, "service", PeerRole.SERVICE)
    _, result = relay.endpoint(vpcd, home=stranger)
    outcome = result()
    assert outcome.failed and outcome.refused is None
    assert "refused this machine's certificate" in outcome.message
    relay.wait_for(
        lambda: any(
            e["event"] == "refused" and "handshake failed" in e["message"]
            for e in relay.events(relay.service_home)
        ),
        "the refusal in the event log",
    )
    assert relay.state() is ReaderState.CARD_PRESENT


def test_a_service_that_is_not_pinned_is_not_trusted(tmp_path: Path, relay: Relay) -> None:
    stranger = ShareHome(tmp_path / "stranger")
    stranger.trust.pin(
        ShareHome(tmp_path / "someone-else").identity().certificate, "other", PeerRole.SERVICE
    )
    relay.service_home.trust.pin(stranger.identity().certificate, "stranger", PeerRole.ENDPOINT)
    with pytest.raises(ShareError, match="not a paired service"):
        client.list_readers(stranger, relay.service.address)


def test_without_a_certificate_only_pairing_is_possible(relay: Relay) -> None:
    sock = socket.create_connection(relay.service.address, timeout=5)
    tls = pairing_context().wrap_socket(sock)
    link = LinkSocket(tls, Role.ENDPOINT)
    try:
        reply, _ = link.request(Hello("x", bytes(16)), 5)
        assert isinstance(reply, Error) and reply.code is ErrorCode.NOT_AUTHORIZED
        received: list[object] = []

        def hung_up() -> bool:
            received.extend(link.receive())
            return bool(received)

        relay.wait_for(hung_up, "the service to hang up")
        assert isinstance(received[-1], ConnectionClosed)
    finally:
        link.close()
    refused = [e for e in relay.events(relay.service_home) if e["event"] == "refused"]
    assert refused and "unauthenticated" in refused[-1]["message"]


def test_pairing_pins_both_sides(tmp_path: Path, relay: Relay) -> None:
    newcomer = ShareHome(tmp_path / "newcomer")
    with pytest.raises(Refused, match="no pairing code is pending"):
        client.pair(newcomer, relay.service.address, new_code())
    code = new_code()
    relay.service_home.offer_pairing(code, 60)
    peer = client.pair(newcomer, relay.service.address, code.lower())
    assert peer.fingerprint == relay.service_home.identity().fingerprint
    assert peer.name == "laptop"
    assert relay.service_home.trust.find(newcomer.identity().fingerprint) is not None
    name, readers = client.list_readers(newcomer, relay.service.address)
    assert name == "laptop"
    assert [(r.name, r.state) for r in readers] == [
        ("Reader 1", ReaderState.CARD_PRESENT),
        ("Reader 2", ReaderState.NO_CARD),
    ]
    kinds = [e["event"] for e in relay.events(relay.service_home)]
    assert "paired" in kinds


def test_a_wrong_pairing_code_pins_nothing(tmp_path: Path, relay: Relay) -> None:
    newcomer = ShareHome(tmp_path / "newcomer")
    relay.service_home.offer_pairing(new_code(), 60)
    with pytest.raises(Refused, match="pairing failed"):
        client.pair(newcomer, relay.service.address, new_code())
    assert newcomer.trust.peers() == []
    assert relay.service_home.trust.find(newcomer.identity().fingerprint) is None
    assert relay.service_home.take_pairing_code() is None  # the attempt used the code up
    relay.wait_for(
        lambda: "pairing-failed" in [e["event"] for e in relay.events(relay.service_home)],
        "the failed pairing in the event log",
    )


def test_requests_follow_the_session_rules(relay: Relay) -> None:
    session = open_session(relay.endpoint_home, relay.service.address, "alice", os.urandom(16))
    link = session.link
    try:
        reply, _ = link.request(Transmit(ECHO))
        assert isinstance(reply, Error) and reply.code is ErrorCode.NOT_ATTACHED
        reply, _ = link.request(Hello("again", bytes(16)))
        assert isinstance(reply, Error) and reply.code is ErrorCode.PROTOCOL
        reply, _ = link.request(ListReaders())
        assert reply.TYPE.name == "READERS"
        reply, _ = link.request(Attach("Reader 1"))
        assert isinstance(reply, Attached)
        reply, _ = link.request(Attach("Reader 2"))
        assert isinstance(reply, Error) and reply.code is ErrorCode.PROTOCOL
    finally:
        link.close()
    relay.wait_for(lambda: relay.state() is ReaderState.CARD_PRESENT, "the lost link to free it")


# --- shared mode: no reset, each side its own security state -------------------------------------

SELECT_PIV = bytes.fromhex("00A4040005A000000308")
VERIFY_PIN = bytes.fromhex("0020008008") + b"123456\xff\xff"
PIN_STATUS = bytes.fromhex("0020008000")  # 9000: verified; 63Cx: not (x tries left)


def piv_card(max_channels: int = 20) -> Card:
    card = Card(max_channels=max_channels)
    card.register(PivApplet(), default=True)
    return card


def shared_piv(relay: Relay, vpcd: FakeVpcd, card: Card) -> MemoryHandle:
    """Reader 2 holds ``card``, attached in shared mode; a local application verified the PIN."""
    relay.readers.insert(READER_2, card)
    relay.wait_for(lambda: relay.state("Reader 2") is ReaderState.CARD_PRESENT, "the card")
    local = MemoryHandle(relay.readers, READER_2, ShareMode.SHARED)
    assert local.transmit(SELECT_PIV)[-2:] == b"\x90\x00"
    assert local.transmit(VERIFY_PIN) == b"\x90\x00"
    relay.endpoint(vpcd, "Reader 2", mode=ShareMode.SHARED)
    vpcd.accept()
    vpcd.power_on()
    return local


def test_shared_mode_never_resets_the_card_and_keeps_each_sides_pin(
    relay: Relay, vpcd: FakeVpcd
) -> None:
    local = shared_piv(relay, vpcd, piv_card())
    try:
        slot = relay.readers.slots[READER_2]
        assert vpcd.transmit(SELECT_PIV)[-2:] == b"\x90\x00"
        assert vpcd.transmit(PIN_STATUS) == b"\x63\xc3"  # the local PIN is not the remote's
        assert vpcd.transmit(VERIFY_PIN) == b"\x90\x00"

        def power_cycle() -> None:
            vpcd.power_off()
            vpcd.power_on()

        for restart in (vpcd.reset, power_cycle):
            restart()  # what the remote pcscd does between its clients
            assert vpcd.transmit(SELECT_PIV)[-2:] == b"\x90\x00"
            assert vpcd.transmit(PIN_STATUS) == b"\x63\xc3"  # a clean start remotely...
            assert local.transmit(PIN_STATUS) == b"\x90\x00"  # ...and nothing lost locally
            assert vpcd.transmit(VERIFY_PIN) == b"\x90\x00"
        assert slot.resets == 0
        # The remote side has no channels of its own to manage.
        assert vpcd.transmit(bytes.fromhex("0070000001")) == b"\x68\x81"
        assert vpcd.transmit(bytes.fromhex("01A4040005A000000308")) == b"\x68\x81"
        assert not [e for e in relay.events(relay.service_home) if e["event"] == "shared-state"]
    finally:
        local.close()


def test_shared_mode_on_a_card_without_channels_shares_its_state_and_says_so(
    relay: Relay, vpcd: FakeVpcd
) -> None:
    local = shared_piv(relay, vpcd, piv_card(max_channels=1))
    try:
        assert vpcd.transmit(SELECT_PIV)[-2:] == b"\x90\x00"
        assert vpcd.transmit(PIN_STATUS) == b"\x90\x00"  # the card's one security state
        vpcd.reset()
        assert local.transmit(PIN_STATUS) == b"\x90\x00"  # still never reset under anyone
        assert relay.readers.slots[READER_2].resets == 0
        told = [e for e in relay.events(relay.service_home) if e["event"] == "shared-state"]
        assert len(told) == 1 and told[0]["reader"] == "Reader 2", told
        assert "exclusive mode" in told[0]["message"]
    finally:
        local.close()
