"""Sharing a reader into a remote session, end to end on one machine (see ``sharebed``)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from vsc.share.client import open_session
from vsc.share.home import ShareHome
from vsc.share.protocol import Attach, Attached, Error, ErrorCode
from vsc.share.trust import PeerRole
from vsc.testing.proxy import TcpProxy

from .sharebed import (
    CARD_TIMEOUT,
    CLIENT_TIMEOUT,
    PIN,
    SELECT_PIV,
    ShareBed,
    local_apdu,
    prepare_local_key,
    remote_apdu,
    remote_sign,
    share_bed,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def bed(e2e_available: None, tool: Callable[[str], str]) -> Iterator[ShareBed]:
    yield from share_bed(tool)


# --- tests -------------------------------------------------------------------------------------


def test_remote_client_signs_with_the_local_card(bed: ShareBed) -> None:
    public = prepare_local_key(bed)
    local_atr = bed.local.wait_for_card(bed.local.reader(0), timeout=CARD_TIMEOUT)
    endpoint = bed.attach(session="alice-session")

    assert bed.remote_card(process=endpoint) == local_atr
    message = b"signed in the remote session by the card on the local machine"
    signature = remote_sign(bed, message)
    public.verify(signature, message, ec.ECDSA(hashes.SHA256()))  # raises if wrong

    listing = bed.listing()
    assert listing["Reader 1"]["state"] == "shared"
    assert listing["Reader 1"]["session"] == "alice-session"
    assert listing["Reader 1"]["pcsc_name"] == bed.local.reader(0)
    shared = bed.wait_event("service", lambda e: e["event"] == "shared")
    assert shared["message"] == "Reader 1 shared into session alice-session (exclusive)"
    assert bed.wait_event("endpoint", lambda e: e["event"] == "attached")["reader"] == "Reader 1"
    # Exclusive: a local application cannot reach the card meanwhile.
    local = local_apdu(bed, SELECT_PIV)
    assert local.returncode != 0
    assert "in use" in (local.stdout + local.stderr).lower()
    assert endpoint.running()


def test_logout_unshares_and_frees_the_reader(bed: ShareBed) -> None:
    endpoint = bed.attach(session="bob-session")
    bed.remote_card(process=endpoint)

    endpoint.signal(signal.SIGTERM)  # what the end of a login session sends
    assert endpoint.wait(10.0) == 0, bed.describe()
    bed.remote_card(present=False)
    unshared = bed.wait_event("service", lambda e: e["event"] == "unshared")
    assert unshared["session"] == "bob-session"
    assert unshared["reason"] == "logout"
    assert "Reader 1 unshared from session bob-session" in unshared["message"]
    assert bed.wait_event("endpoint", lambda e: e["event"] == "unshared")["reason"] == "logout"
    assert bed.listing()["Reader 1"]["state"] == "card-present"
    # The local side has the card back, and another session may attach now.
    local = local_apdu(bed, SELECT_PIV)
    assert local.returncode == 0 and "SW1=0x90" in local.stdout, bed.describe(local)
    again = bed.attach(session="carol-session")
    bed.remote_card(process=again)
    assert bed.listing()["Reader 1"]["session"] == "carol-session"


def test_removal_propagates_and_the_endpoint_survives(bed: ShareBed) -> None:
    endpoint = bed.attach()
    bed.remote_card(process=endpoint)

    bed.stop_emulator()  # pull the card out of the local reader
    bed.remote_card(present=False)
    assert endpoint.running(), bed.describe()
    bed.wait_event("service", lambda e: e["event"] == "card-removed")
    bed.wait_event("endpoint", lambda e: e["event"] == "card-removed")
    assert bed.listing()["Reader 1"]["state"] == "shared"  # still attached, card or not

    bed.start_emulator()  # and put one back
    bed.remote_card(process=endpoint)
    bed.wait_event("endpoint", lambda e: e["event"] == "card-inserted")
    result = remote_apdu(bed, SELECT_PIV)
    assert result.returncode == 0, bed.describe(result)
    assert "SW1=0x61" in result.stdout or "SW1=0x90" in result.stdout, result.stdout


def test_an_unpaired_peer_is_refused(bed: ShareBed) -> None:
    stranger = bed.workdir / "stranger-home"
    result = bed.cli("list", "--from", bed.service_spec, home=stranger, remote=True)
    assert result.returncode == 1
    assert "no service is paired" in result.stderr

    # Pin the service's certificate on the stranger's side only: the service still refuses.
    ShareHome(stranger).trust.pin(
        ShareHome(bed.service_home).identity().certificate, "svc", PeerRole.SERVICE
    )
    result = bed.cli("list", "--from", bed.service_spec, home=stranger, remote=True)
    assert result.returncode == 1, result.stdout
    assert "refused this machine's certificate" in result.stderr
    bed.wait_event(
        "service", lambda e: e["event"] == "refused" and "handshake failed" in e["message"]
    )
    attach = bed.attach(home=stranger, session="stranger")
    assert attach.wait(15.0) == 1
    assert bed.listing()["Reader 1"]["state"] == "card-present"

    # A wrong pairing code is refused, and burns the code.
    code = bed.pairing_code()
    wrong = ("Z" if code[0] != "Z" else "Y") + code[1:]
    result = bed.cli("pair", "--with", bed.service_spec, wrong, home=stranger, remote=True)
    assert result.returncode == 3, result.stderr
    assert "pairing failed" in result.stderr
    result = bed.cli("pair", "--with", bed.service_spec, code, home=stranger, remote=True)
    assert result.returncode == 3, result.stderr
    assert len(ShareHome(bed.service_home).trust.peers()) == 1  # only the real endpoint


def test_racing_attaches_have_exactly_one_winner(bed: ShareBed) -> None:
    home = ShareHome(bed.endpoint_home)
    racers = 8
    barrier = threading.Barrier(racers, timeout=30.0)
    outcomes: list[Attached | Error | BaseException] = []
    lock = threading.Lock()
    links = []

    def race(index: int) -> None:
        try:
            session = open_session(
                home, bed.service_address, f"racer-{index}", os.urandom(16), timeout=20.0
            )
            links.append(session.link)
            barrier.wait()
            reply, _ = session.link.request(Attach("Reader 1"), 20.0)
            assert isinstance(reply, Attached | Error)
            result: Attached | Error | BaseException = reply
        except BaseException as exc:  # recorded and re-raised below
            result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    try:
        assert all(not thread.is_alive() for thread in threads)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert not errors, errors
        winners = [o for o in outcomes if isinstance(o, Attached)]
        losers = [o for o in outcomes if isinstance(o, Error)]
        assert len(winners) == 1, outcomes
        assert len(losers) == racers - 1
        assert all(o.code is ErrorCode.IN_USE for o in losers)
        assert all("shared in another session" in o.message for o in losers)
        # A second attach from the command line is refused too, with its own exit status.
        refused = bed.attach(session="latecomer")
        assert refused.wait(15.0) == 3
        assert "Reader 1 is shared in another session" in refused.text()
    finally:
        for link in links:
            link.close()
    # Losing the winner's link frees the reader; then a new attach succeeds.
    bed.wait_event(
        "service", lambda e: e["event"] == "unshared" and e["reason"] == "connection_lost"
    )
    endpoint = bed.attach(session="after-the-race")
    bed.remote_card(process=endpoint)


def test_either_side_can_detach(bed: ShareBed) -> None:
    endpoint = bed.attach(session="dave-session")
    bed.remote_card(process=endpoint)
    # The remote user detaches from another shell of the same session.
    result = bed.cli(
        "detach", "Reader 1", "--from", bed.service_spec, "--session", "dave-session",
        home=bed.endpoint_home, remote=True,
    )  # fmt: skip
    assert result.returncode == 0, bed.describe(result)
    assert endpoint.wait(10.0) == 0
    bed.remote_card(present=False)

    endpoint = bed.attach(session="erin-session")
    bed.remote_card(process=endpoint)
    # The local user takes the reader back.
    result = bed.cli("detach", "Reader 1", home=bed.service_home)
    assert result.returncode == 0, bed.describe(result)
    assert endpoint.wait(10.0) == 0
    bed.remote_card(present=False)
    reasons = [e["reason"] for e in bed.events("service") if e["event"] == "unshared"]
    assert reasons == ["detach", "detach"]


def test_shared_mode_lets_local_applications_in(bed: ShareBed) -> None:
    public = prepare_local_key(bed)
    endpoint = bed.attach(session="frank-session", mode="shared")
    bed.remote_card(process=endpoint)
    local = local_apdu(bed, SELECT_PIV)
    assert local.returncode == 0, bed.describe(local)
    message = b"shared mode"
    public.verify(remote_sign(bed, message), message, ec.ECDSA(hashes.SHA256()))
    local = local_apdu(bed, SELECT_PIV)
    assert local.returncode == 0, bed.describe(local)
    shared = bed.wait_event("service", lambda e: e["event"] == "shared")
    assert shared["mode"] == "shared"


# --- the wire: nothing in clear ------------------------------------------------------------------


def tls_records(stream: bytes) -> list[tuple[int, int, bytes]]:
    """(content type, legacy version, fragment) of each TLS record; the stream must be whole."""
    records = []
    offset = 0
    while offset < len(stream):
        assert offset + 5 <= len(stream), "truncated record header"
        kind = stream[offset]
        version = int.from_bytes(stream[offset + 1 : offset + 3], "big")
        length = int.from_bytes(stream[offset + 3 : offset + 5], "big")
        fragment = stream[offset + 5 : offset + 5 + length]
        assert len(fragment) == length, "truncated record"
        records.append((kind, version, fragment))
        offset += 5 + length
    return records


def server_hello_version(fragment: bytes) -> int:
    """The supported_versions value a ServerHello selects."""
    assert fragment[0] == 2, "not a ServerHello"
    offset = 4 + 2 + 32  # handshake header, legacy_version, random
    offset += 1 + fragment[offset]  # session id
    offset += 2 + 1  # cipher suite, compression
    end = offset + 2 + int.from_bytes(fragment[offset : offset + 2], "big")
    offset += 2
    while offset < end:
        kind = int.from_bytes(fragment[offset : offset + 2], "big")
        size = int.from_bytes(fragment[offset + 2 : offset + 4], "big")
        if kind == 0x002B:
            return int.from_bytes(fragment[offset + 4 : offset + 4 + size], "big")
        offset += 4 + size
    raise AssertionError("no supported_versions extension")


def test_no_pin_in_a_capture_of_the_link(bed: ShareBed) -> None:
    prepare_local_key(bed)
    proxy_host = bed.netns.host_address if bed.netns is not None else "127.0.0.1"
    proxy = TcpProxy(bed.service_address, listen_host=proxy_host)
    try:
        spec = f"{proxy.address[0]}:{proxy.address[1]}"
        endpoint = bed.attach(session="capture", service=spec)
        bed.remote_card(process=endpoint)
        reader = bed.remote.reader(0)
        verify = bed.remote.run(
            ["yubico-piv-tool", "-r", reader, "-a", "verify-pin", "-P", PIN], timeout=CLIENT_TIMEOUT
        )
        assert verify.returncode == 0, bed.describe(verify)
        assert "Successfully verified PIN" in verify.stdout + verify.stderr
        remote_sign(bed, b"captured")
        endpoint.signal(signal.SIGINT)
        assert endpoint.wait(10.0) == 0
    finally:
        proxy.close()

    assert proxy.connections, "the endpoint did not go through the proxy"
    pin = PIN.encode()
    for up, down in proxy.connections:
        for stream in (bytes(up), bytes(down)):
            assert pin not in stream
            assert pin.hex().encode() not in stream.lower()
        client, server = tls_records(bytes(up)), tls_records(bytes(down))
        assert client[0][0] == 0x16 and client[0][2][0] == 1  # handshake: ClientHello
        assert server[0][0] == 0x16 and server_hello_version(server[0][2]) == 0x0304  # TLS 1.3
        # Everything after the hellos is encrypted: application_data records only
        # (plus TLS 1.3's middlebox-compatibility change_cipher_spec, which is empty).
        for kind, version, fragment in client[1:] + server[1:]:
            assert version == 0x0303
            assert kind == 0x17 or (kind == 0x14 and fragment == b"\x01"), kind
    up_total = sum(len(up) for up, _ in proxy.connections)
    assert up_total > 2000  # the APDUs did cross it

    # Nor in the logs, which ran with the APDU trace on (-vvv): VERIFY shows masked.
    logs = "\n".join(p.text() for p in [*bed.processes, bed.service] if p is not None)
    assert "00 20 00 80 <9 secret bytes>" in logs
    for needle in ("31 32 33 34 35 36", "313233343536"):
        assert needle not in logs


def test_measure_relay_latency_runs(e2e_available: None) -> None:
    """The benchmark helper's entry point works (its numbers belong in benchmarks/)."""
    from vsc.share.latency import DEFAULT_COMMAND, measure_relay_latency
    from vsc.share.protocol import ShareMode

    result = measure_relay_latency(20, mode=ShareMode.SHARED, warmup=2)
    assert result.mode is ShareMode.SHARED and result.command == DEFAULT_COMMAND
    for stats in (result.direct, result.relayed):
        assert stats.count == 20
        assert 0 < stats.min_us <= stats.p50_us <= stats.p90_us <= stats.p99_us
    assert result.added_p50_us == result.relayed.p50_us - result.direct.p50_us
