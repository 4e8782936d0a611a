"""Identities, pins, pairing codes and MACs, and the TLS contexts built from them."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
import time
from pathlib import Path

import pytest

from vsc.share.home import ShareHome
from vsc.share.pairing import (
    CODE_LENGTH,
    PairingClient,
    PairingError,
    PairingServer,
    new_code,
    normalize_code,
)
from vsc.share.protocol import PairProof
from vsc.share.tls import client_context, pairing_context, peer_certificate, server_context
from vsc.share.trust import PeerRole, fingerprint, format_fingerprint


@pytest.fixture
def service_home(tmp_path: Path) -> ShareHome:
    return ShareHome(tmp_path / "service")


@pytest.fixture
def endpoint_home(tmp_path: Path) -> ShareHome:
    return ShareHome(tmp_path / "endpoint")


# --- the share home ------------------------------------------------------------------------


def test_identity_is_created_once_and_kept_private(service_home: ShareHome) -> None:
    first = service_home.identity()
    assert service_home.identity() == first
    assert ShareHome(service_home.path).identity() == first
    assert stat.S_IMODE(first.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(service_home.path.stat().st_mode) == 0o700
    assert len(first.fingerprint) == 32


def test_identities_differ_even_on_one_host(tmp_path: Path) -> None:
    one, two = ShareHome(tmp_path / "a").identity(), ShareHome(tmp_path / "b").identity()
    assert one.fingerprint != two.fingerprint
    assert one.pem.split("\n")[1] != two.pem.split("\n")[1]


def test_pins(service_home: ShareHome, endpoint_home: ShareHome) -> None:
    certificate = endpoint_home.identity().certificate
    peer = service_home.trust.pin(certificate, "remote", PeerRole.ENDPOINT, "198.18.0.2")
    assert peer.fingerprint == fingerprint(certificate)
    assert service_home.trust.find(peer.fingerprint) == peer
    assert service_home.trust.pin(certificate, "renamed", PeerRole.ENDPOINT).name == "renamed"
    assert [p.name for p in service_home.trust.peers()] == ["renamed"]  # replaced, not duplicated
    current = service_home.trust.find(peer.fingerprint)
    prefix = format_fingerprint(peer.fingerprint, 2)
    assert service_home.trust.unpin(prefix) == [current]
    assert service_home.trust.peers() == []
    with pytest.raises(ValueError):
        service_home.trust.unpin(":")


@pytest.mark.parametrize(
    ("address", "role"),
    [
        ("198.18.0.2", PeerRole.ENDPOINT),  # the old service stored an endpoint's bare address
        ("fe80::abcd", PeerRole.ENDPOINT),
        ("laptop:35990", PeerRole.SERVICE),  # the old `pair --with` stored HOST:PORT
        ("198.18.0.1:35990", PeerRole.SERVICE),
        ("fe80::1:35", None),  # an IPv6 address or one with a port: not guessed
        ("laptop", None),
        ("", None),
    ],
)
def test_an_old_pin_migrates_to_one_direction_at_most(
    service_home: ShareHome, endpoint_home: ShareHome, address: str, role: PeerRole | None
) -> None:
    certificate = endpoint_home.identity().certificate
    old = {"fingerprint": fingerprint(certificate).hex(), "name": "old", "paired_at": "then"}
    service_home.write_json(
        "peers.json", {"peers": [{**old, "address": address, "certificate": certificate.hex()}]}
    )
    (peer,) = service_home.trust.peers()
    assert list(peer.grants) == ([role] if role else [])
    assert len(service_home.trust.notes) == 1 and "old" in service_home.trust.notes[0]
    assert service_home.read_json("peers.json")["version"] == 2  # migrated once, saved


def test_reader_names_are_stable_and_never_reused(service_home: ShareHome) -> None:
    names = service_home.name_readers(["B reader", "A reader"])
    assert names == {"B reader": "Reader 1", "A reader": "Reader 2"}
    again = ShareHome(service_home.path).name_readers(["C reader", "A reader"])
    assert again == {"C reader": "Reader 3", "A reader": "Reader 2"}
    assert service_home.reader_names()["B reader"] == "Reader 1"


def test_pairing_code_is_one_time_and_expires(service_home: ShareHome) -> None:
    assert service_home.take_pairing_code() is None
    service_home.offer_pairing("CODE", 60)
    assert service_home.take_pairing_code() == "CODE"
    assert service_home.take_pairing_code() is None
    service_home.offer_pairing("OLD", -1)
    assert service_home.take_pairing_code() is None


def test_service_address(service_home: ShareHome) -> None:
    assert service_home.service_address() is None
    service_home.record_service("0.0.0.0", 4000)
    assert service_home.service_address() == ("127.0.0.1", 4000)
    service_home.record_service("198.18.0.1", 4001)
    assert service_home.service_address() == ("198.18.0.1", 4001)
    service_home.forget_service()
    assert service_home.service_address() is None


# --- codes and MACs ----------------------------------------------------------------------------


def test_codes() -> None:
    code = new_code()
    assert len(code.replace("-", "")) == CODE_LENGTH
    assert code != new_code()
    assert normalize_code(code.lower().replace("-", " ")) == code.replace("-", "")
    assert normalize_code("oooo-iiii-llll-0000-1111") == "00001111111100001111"
    for bad in ("", "ABC", "U" * CODE_LENGTH, "A" * (CODE_LENGTH + 1)):
        with pytest.raises(PairingError):
            normalize_code(bad)


def exchange(
    server_code: str, client_code: str, server_cert: bytes, seen_cert: bytes, client_cert: bytes
) -> bytes:
    """One pairing; returns what the server pins. ``seen_cert``: what TLS showed the client."""
    server = PairingServer(server_code, server_cert)
    client = PairingClient(client_code, client_cert, seen_cert)
    challenge = server.challenge(client.request("laptop"))
    return server.verify(client.prove(challenge))


def test_pairing_pins_the_client_certificate() -> None:
    code = new_code()
    assert exchange(code, code, b"server", b"server", b"client") == b"client"


def test_a_wrong_code_fails_on_the_client() -> None:
    with pytest.raises(PairingError, match="does not know this pairing code"):
        exchange(new_code(), new_code(), b"server", b"server", b"client")


def test_a_substituted_server_certificate_fails() -> None:
    code = new_code()  # even with the right code: the MAC covers the certificate seen
    with pytest.raises(PairingError):
        exchange(code, code, b"server", b"attacker", b"client")


def test_a_forged_proof_fails_on_the_server() -> None:
    code = new_code()
    server = PairingServer(code, b"server")
    client = PairingClient(code, b"client", b"server")
    server.challenge(client.request())
    with pytest.raises(PairingError, match="does not know"):
        server.verify(PairProof(bytes(32)))
    with pytest.raises(PairingError):
        PairingServer(code, b"server").verify(PairProof(bytes(32)))  # proof before request


# --- TLS -----------------------------------------------------------------------------------------


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[bytes | None, BaseException | None, BaseException | None]:
    """Run both sides over a socket pair; (client cert seen by the server, errors...)."""
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    seen: list[bytes | None] = []
    errors: dict[str, BaseException] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as tls:
                seen.append(peer_certificate(tls))
                tls.sendall(b"ok")
                tls.recv(1)
        except (OSError, ssl.SSLError) as exc:
            errors["server"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(b) as tls:
            assert tls.version() == "TLSv1.3"
            assert tls.recv(2) == b"ok"
            tls.sendall(b"x")
    except (OSError, ssl.SSLError, AssertionError) as exc:
        errors["client"] = exc
    finally:
        b.close()
        thread.join(10)
    return (seen[0] if seen else None), errors.get("server"), errors.get("client")


def test_pinned_peers_authenticate_each_other(
    service_home: ShareHome, endpoint_home: ShareHome
) -> None:
    service, endpoint = service_home.identity(), endpoint_home.identity()
    server = server_context(service, endpoint.pem)
    seen, server_error, client_error = handshake(server, client_context(endpoint, service.pem))
    assert (server_error, client_error) == (None, None)
    assert seen == endpoint.certificate


def test_an_unpinned_client_fails_the_handshake(tmp_path: Path, service_home: ShareHome) -> None:
    service = service_home.identity()
    pinned = ShareHome(tmp_path / "pinned").identity()
    stranger = ShareHome(tmp_path / "stranger").identity()
    server = server_context(service, pinned.pem)
    _, server_error, _ = handshake(server, client_context(stranger, service.pem))
    assert isinstance(server_error, ssl.SSLCertVerificationError)


def test_an_unpinned_service_is_not_trusted(tmp_path: Path, endpoint_home: ShareHome) -> None:
    endpoint = endpoint_home.identity()
    impostor = ShareHome(tmp_path / "impostor").identity()
    expected = ShareHome(tmp_path / "expected").identity()
    server = server_context(impostor, endpoint.pem)
    _, _, client_error = handshake(server, client_context(endpoint, expected.pem))
    assert isinstance(client_error, ssl.SSLCertVerificationError)


def test_a_pairing_client_sends_no_certificate(service_home: ShareHome) -> None:
    server = server_context(service_home.identity(), "")
    seen, server_error, client_error = handshake(server, pairing_context())
    assert (seen, server_error, client_error) == (None, None, None)


def test_tls_below_1_3_is_refused(service_home: ShareHome, endpoint_home: ShareHome) -> None:
    service, endpoint = service_home.identity(), endpoint_home.identity()
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    _, server_error, client_error = handshake(server_context(service, endpoint.pem), old)
    assert server_error is not None and client_error is not None


def test_client_context_needs_a_pin(endpoint_home: ShareHome) -> None:
    with pytest.raises(ValueError, match="pair first"):
        client_context(endpoint_home.identity(), "")


def test_codes_are_random_enough() -> None:
    start = time.monotonic()
    codes = {new_code() for _ in range(200)}
    assert len(codes) == 200
    assert time.monotonic() - start < 60  # sanity bound, not a speed assertion
