"""Attacks on the share link: forged certificates, tampered bytes, oversized frames, PINs.

Theory of operation
-------------------
The real service and the real client/endpoint code talk real TLS 1.3 on
loopback (the local readers are in memory, as in ``test_relay.py``). Every
test also keeps a *bystander*: an endpoint attached to Reader 2 directly,
whose card must keep answering through every attack, and checks that the
service logged no error (an exception escaping a connection thread is
logged at ERROR) and still answers a fresh, honest session.

What ``test_relay.py``/``test_pairing.py`` already cover is not repeated
here: a peer whose certificate is simply not pinned, a service that is not
pinned, pairing, TLS < 1.3. Added:

* **wrong certificates** that look right: one copying the pinned peer's
  subject name (OpenSSL looks trust anchors up by name), and one issued by
  a pinned certificate that is a CA (a pairing peer chooses the certificate
  it has pinned; TLS then accepts the leaf, the fingerprint check must not);
* **modified traffic**: a proxy that flips one bit in the handshake or in an
  application-data record, in either direction;
* **oversized and garbage frames** from a paired, authenticated peer, from a
  peer that has not paired, and from a service to an endpoint;
* **a peer that never pauses**: the link reads at most a budget per turn and
  checks a frame's length as soon as it arrives;
* **no PIN in the logs** (every logger at TRACE, the APDU traces on) **nor in
  a capture of the link** (``tests/e2e/test_share.py`` does the same through
  two real pcscd; this one runs everywhere and adds CHANGE REFERENCE DATA
  and RESET RETRY COUNTER).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from applets.piv import PivApplet
from vsc.card import Card
from vsc.share import client
from vsc.share.client import ShareError, open_session
from vsc.share.endpoint import Backoff, Endpoint, Outcome
from vsc.share.events import read_events
from vsc.share.home import ShareHome
from vsc.share.link import LinkClosed, LinkSocket
from vsc.share.protocol import (
    MAX_FRAME,
    CardRemoved,
    ListReaders,
    MessageType,
    Readers,
    Role,
    Transmit,
    Welcome,
    encode,
)
from vsc.share.service import ShareService
from vsc.share.tls import pairing_context, server_context
from vsc.share.trust import PeerRole
from vsc.testing.proxy import TcpProxy
from vsc.trace import TRACE

from .fakes import SELECT_ECHO, FakeVpcd, MemoryReaders, echo_card

READER_1 = "Virtual PCD 00 00"
READER_2 = "Virtual PCD 00 01"
ECHO = bytes.fromhex("0001000003414243")
SELECT_PIV = bytes.fromhex("00A4040005A00000030800")
TIMEOUT = 10.0


# -- the bed: a service, a bystander share, error records ----------------------------------------


@dataclass
class Bed:
    service_home: ShareHome
    endpoint_home: ShareHome
    readers: MemoryReaders
    service: ShareService
    caplog: pytest.LogCaptureFixture
    tmp_path: Path
    bystander: FakeVpcd = field(default_factory=FakeVpcd)
    running: list[tuple[Endpoint, threading.Thread, list[Outcome]]] = field(default_factory=list)

    def endpoint(
        self, vpcd: FakeVpcd, reader: str, session: str, address: tuple[str, int] | None = None
    ) -> Endpoint:
        endpoint = Endpoint(
            self.endpoint_home,
            address or self.service.address,
            reader,
            session=session,
            vpcd=vpcd.address,
            backoff=Backoff(0.05, 0.2),
        )
        outcomes: list[Outcome] = []
        thread = threading.Thread(target=lambda: outcomes.append(endpoint.run()), daemon=True)
        thread.start()
        self.running.append((endpoint, thread, outcomes))
        return endpoint

    def session(self, address: tuple[str, int] | None = None) -> client.Session:
        return open_session(
            self.endpoint_home, address or self.service.address, "mallory", os.urandom(16)
        )

    def events(self, home: ShareHome) -> list[dict[str, object]]:
        return read_events(home.events_path)

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def refused(self, fragment: str) -> None:
        """Wait for the service's 'refused' event whose message contains ``fragment``."""
        self.wait_for(
            lambda: any(
                e["event"] == "refused" and fragment in str(e["message"])
                for e in self.events(self.service_home)
            ),
            f"a refusal with {fragment!r} in the event log",
        )

    def still_serving(self) -> None:
        """The bystander's card answers, an honest session lists the readers, no error logged."""
        assert self.bystander.transmit(ECHO) == b"ABC\x90\x00"
        name, readers = client.list_readers(self.endpoint_home, self.service.address)
        assert name == "laptop" and len(readers) == 2
        errors = [r for r in self.caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]


def piv_card() -> Card:
    card = Card()
    card.register(PivApplet(), default=True)
    return card


@pytest.fixture
def bed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Bed]:
    caplog.set_level(logging.INFO, logger="vsc")
    service_home, endpoint_home = ShareHome(tmp_path / "service"), ShareHome(tmp_path / "endpoint")
    service_home.trust.pin(endpoint_home.identity().certificate, "endpoint", PeerRole.ENDPOINT)
    readers = MemoryReaders(READER_1, READER_2)
    readers.insert(READER_1, piv_card())
    readers.insert(READER_2, echo_card())
    service = ShareService(service_home, host="127.0.0.1", port=0, backend=readers, name="laptop")
    service.start()
    where = f"127.0.0.1:{service.address[1]}"  # as `vsc share pair --with` remembers it
    endpoint_home.trust.pin(service_home.identity().certificate, "laptop", PeerRole.SERVICE, where)
    bed = Bed(service_home, endpoint_home, readers, service, caplog, tmp_path)
    try:
        bed.endpoint(bed.bystander, "Reader 2", "bystander")
        bed.bystander.accept()
        bed.bystander.power_on()
        assert bed.bystander.transmit(SELECT_ECHO) == b"\x90\x00"
        yield bed
    finally:
        for endpoint, thread, _ in bed.running:
            endpoint.stop()
            thread.join(TIMEOUT)
        bed.bystander.close()
        service.stop()
        assert service.join(TIMEOUT)
        assert all(not thread.is_alive() for _, thread, _ in bed.running)


# -- forged certificates --------------------------------------------------------------------------


def forge(
    home: ShareHome,
    subject: x509.Name,
    *,
    ca: bool = False,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
) -> ec.EllipticCurvePrivateKey:
    """Write a valid identity (its own key, a certificate) into ``home``; returns the key."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, signer = issuer if issuer is not None else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    certificate = builder.sign(signer, hashes.SHA256())
    home.ensure()
    (home.path / "identity.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (home.path / "identity.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key


def subject_of(home: ShareHome) -> x509.Name:
    return x509.load_der_x509_certificate(home.identity().certificate).subject


class FakeService:
    """A TLS server with a given identity for one connection: what did the endpoint send?"""

    def __init__(self, home: ShareHome, trusted_pem: str, answer: bytes | None = None) -> None:
        self.context = server_context(home.identity(), trusted_pem)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.address = ("127.0.0.1", self.listener.getsockname()[1])
        self.answer = answer  # sent after the first bytes arrive
        self.received = b""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
            with self.context.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(TIMEOUT)
                while chunk := tls.recv(65536):
                    self.received += chunk
                    if self.answer is not None:
                        tls.sendall(self.answer)
                        self.answer = None
        except (OSError, ssl.SSLError) as exc:
            self.error = exc

    def close(self) -> None:
        self.listener.close()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


def test_a_certificate_copying_a_pinned_name_is_refused(bed: Bed) -> None:
    # An endpoint with its own valid certificate under the paired endpoint's exact name.
    impostor = ShareHome(bed.tmp_path / "impostor")
    forge(impostor, subject_of(bed.endpoint_home))
    impostor.trust.pin(bed.service_home.identity().certificate, "service", PeerRole.SERVICE)
    with pytest.raises(ShareError, match="refused this machine's certificate"):
        open_session(impostor, bed.service.address, "mallory", os.urandom(16))
    bed.refused("TLS handshake failed")

    # A service with its own valid certificate under the pinned service's exact name.
    fake_home = ShareHome(bed.tmp_path / "fake-service")
    forge(fake_home, subject_of(bed.service_home))
    fake = FakeService(fake_home, bed.endpoint_home.identity().pem)
    try:
        with pytest.raises(ShareError, match="not a paired service"):
            open_session(bed.endpoint_home, fake.address, "alice", os.urandom(16))
    finally:
        fake.close()
    assert fake.received == b""  # not even HELLO went out
    bed.still_serving()


def test_a_certificate_issued_by_a_pinned_certificate_is_not_the_pinned_one(bed: Bed) -> None:
    """A pinned certificate is a TLS trust anchor; if it is a CA, TLS accepts what it issued.

    Pairing pins whatever certificate the peer sends, so a paired peer can make its
    pin a CA. Only the fingerprint check after the handshake keeps its other
    certificates (or anyone it gives one) out.
    """
    ca_home = ShareHome(bed.tmp_path / "ca")
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "paired, and a CA")])
    ca_key = forge(ca_home, ca_name, ca=True)
    bed.service_home.trust.pin(ca_home.identity().certificate, "a paired CA", PeerRole.ENDPOINT)
    bed.endpoint_home.trust.pin(ca_home.identity().certificate, "a paired CA", PeerRole.SERVICE)
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issued by the CA")])

    issued = ShareHome(bed.tmp_path / "issued")
    forge(issued, leaf_name, issuer=(ca_name, ca_key))
    issued.trust.pin(bed.service_home.identity().certificate, "service", PeerRole.SERVICE)
    with pytest.raises(ShareError, match="refused this machine's certificate"):
        open_session(issued, bed.service.address, "mallory", os.urandom(16))
    bed.refused("is not paired")  # TLS passed; the pin check did not

    fake_home = ShareHome(bed.tmp_path / "fake-service")
    forge(fake_home, leaf_name, issuer=(ca_name, ca_key))
    fake = FakeService(fake_home, bed.endpoint_home.identity().pem)
    service = bed.endpoint_home.trust.find(bed.service_home.identity().fingerprint)
    try:
        with pytest.raises(ShareError, match="not pinned here"):
            open_session(bed.endpoint_home, fake.address, "alice", os.urandom(16), service=service)
    finally:
        fake.close()
    assert fake.received == b""
    bed.still_serving()


# -- tampered traffic ------------------------------------------------------------------------------


@pytest.fixture
def proxy(bed: Bed) -> Iterator[TcpProxy]:
    tampering = TcpProxy(bed.service.address)
    yield tampering
    tampering.close()


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_flipped_bit_in_the_handshake_fails_it(bed: Bed, proxy: TcpProxy, direction: str) -> None:
    proxy.armed[direction].set()  # the ClientHello, or the ServerHello and what follows
    with pytest.raises(ShareError):
        bed.session(proxy.address)
    assert proxy.flipped[direction] == 1
    bed.refused("TLS handshake failed")
    bed.session(proxy.address).link.close()  # the next connection through it works
    bed.still_serving()


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_flipped_bit_after_the_handshake_drops_the_link(
    bed: Bed, proxy: TcpProxy, direction: str
) -> None:
    session = bed.session(proxy.address)
    link = session.link
    try:
        reply, _ = link.request(ListReaders(), TIMEOUT)
        assert isinstance(reply, Readers)
        proxy.armed[direction].set()  # the next request, or its reply
        with pytest.raises(LinkClosed):
            link.request(ListReaders(), TIMEOUT)
        assert proxy.flipped[direction] == 1
    finally:
        link.close()
    if direction == "up":  # the service found the record's authentication tag wrong
        bed.wait_for(
            lambda: any("link failed" in r.getMessage() for r in bed.caplog.records),
            "the service to drop the tampered link",
        )
    bed.still_serving()


def test_an_attached_endpoint_reattaches_after_a_tampered_record(bed: Bed, proxy: TcpProxy) -> None:
    vpcd = FakeVpcd()
    try:
        endpoint = bed.endpoint(vpcd, "Reader 1", "alice", proxy.address)
        vpcd.accept()
        vpcd.power_on()
        assert vpcd.transmit(SELECT_PIV)[-2:] == b"\x90\x00"
        proxy.armed["up"].set()
        with contextlib.suppress(ConnectionError, TimeoutError):
            vpcd.transmit(SELECT_PIV)  # relayed in a record the service cannot authenticate
        vpcd.wait_closed()  # the link dropped: the remote reader shows no card...
        vpcd.accept(timeout=TIMEOUT)  # ...until the endpoint has reconnected and attached
        vpcd.power_on()
        assert vpcd.transmit(SELECT_PIV)[-2:] == b"\x90\x00"
        assert endpoint.present and proxy.accepted == 2
        kinds = [e["event"] for e in bed.events(bed.endpoint_home) if e.get("reader") != "Reader 2"]
        assert kinds[-3:] == ["attached", "link-lost", "attached"]
    finally:
        vpcd.close()
    bed.still_serving()


# -- oversized and garbage frames -----------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


_TRANSMIT = encode(Transmit(SELECT_PIV))

GARBAGE = {
    "length 2^32-1": b"\xff\xff\xff\xff" + b"\xaa" * 1000,
    "length MAX_FRAME+1": (MAX_FRAME + 1).to_bytes(4, "big") + b"\xaa" * 1000,
    "length 0": b"\x00\x00\x00\x00",
    "MAX_FRAME bytes of garbage": frame(b"\x7f" + os.urandom(MAX_FRAME - 1)),
    "unknown message type": frame(b"\x7fjunk"),
    "truncated TRANSMIT": frame(_TRANSMIT[4:-3]),
    "TRANSMIT with trailing bytes": frame(_TRANSMIT[4:] + b"\x00"),
    "a reply sent by an endpoint": encode(Welcome("not a service")),
    "an event sent by an endpoint": encode(CardRemoved()),
}


def hung_up(sock: ssl.SSLSocket) -> bool:
    """Whether the peer closes the connection within the timeout (reading what it sends)."""
    sock.setblocking(True)
    sock.settimeout(TIMEOUT)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except (OSError, ssl.SSLError):
        pass
    return True


@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_garbage_from_a_paired_peer_drops_only_its_link(bed: Bed, garbage: str) -> None:
    link = bed.session().link  # mutual TLS done, HELLO answered: an authenticated peer
    try:
        link.sock.setblocking(True)
        link.sock.settimeout(TIMEOUT)
        with contextlib.suppress(OSError):  # the service may hang up before it all went out
            link.sock.sendall(GARBAGE[garbage])
        assert hung_up(link.sock), "the service kept a link that broke the protocol"
    finally:
        link.close()
    bed.wait_for(
        lambda: any("protocol error" in r.getMessage() for r in bed.caplog.records),
        "the service to log the protocol error",
    )
    bed.still_serving()


@pytest.mark.parametrize("garbage", ["length 2^32-1", "unknown message type"])
def test_garbage_before_pairing_drops_the_link(bed: Bed, garbage: str) -> None:
    raw = socket.create_connection(bed.service.address, timeout=TIMEOUT)
    with pairing_context().wrap_socket(raw) as tls:  # no certificate: may only pair
        with contextlib.suppress(OSError):
            tls.sendall(GARBAGE[garbage])
        assert hung_up(tls)
    bed.still_serving()


def test_an_oversized_frame_from_a_service_is_refused(bed: Bed) -> None:
    """The endpoint side: a (pinned) service answering HELLO with a 4 GiB frame."""
    fake = FakeService(
        bed.service_home, bed.endpoint_home.identity().pem, answer=b"\xff\xff\xff\xff" + bytes(64)
    )
    try:
        with pytest.raises(ShareError, match="protocol error: frame length"):
            open_session(bed.endpoint_home, fake.address, "alice", os.urandom(16), timeout=TIMEOUT)
    finally:
        fake.close()
    assert fake.received[4] == MessageType.HELLO  # what the endpoint sent before refusing


class EndlessPeer:
    """A socket whose peer sends faster than we read: ``recv`` never runs dry."""

    def __init__(self, first: bytes, then: bytes) -> None:
        self.first = first
        self.then = then
        self.reads = 0

    def setblocking(self, flag: bool) -> None:
        pass

    def recv(self, size: int) -> bytes:
        self.reads += 1
        if self.reads > 1000:
            raise AssertionError("the link is still reading from a peer that never pauses")
        return self.first if self.reads == 1 else self.then[:size]


def test_a_bad_length_ends_the_link_after_one_read() -> None:
    peer = EndlessPeer(b"\xff\xff\xff\xff" + b"\xaa" * 0xFFFC, b"\xaa" * 0x10000)
    link = LinkSocket(cast(ssl.SSLSocket, peer), Role.SERVICE)
    with pytest.raises(LinkClosed, match="frame length"):
        link.receive()
    assert peer.reads == 1


def test_a_flood_of_valid_messages_is_read_a_budget_at_a_time() -> None:
    event = encode(CardRemoved())  # a service may send events at any time
    chunk = event * (0x10000 // len(event))  # what one read returns
    peer = EndlessPeer(chunk, chunk)
    link = LinkSocket(cast(ssl.SSLSocket, peer), Role.ENDPOINT)
    budget = 4 * 0x10000  # vsc.share.link._FILL_BUDGET
    for calls in range(1, 4):  # each call returns a bounded batch, so the caller can go on
        items = link.receive()
        assert items and all(isinstance(item, CardRemoved) for item in items)
        assert len(items) * len(event) <= budget + len(chunk)
        assert peer.reads <= calls * (budget // len(chunk) + 1)


# -- secrets ---------------------------------------------------------------------------------------

PIN, NEW_PIN, PUK, UNBLOCKED_PIN, WRONG_PIN = "123456", "24681357", "12345678", "13572468", "975318"


def pin_block(pin: str) -> str:
    return pin.encode().ljust(8, b"\xff").hex()


def secret_forms(secret: str) -> list[str]:
    """How a PIN could show in a log: as text, hex, spaced hex (the APDU traces' format)."""
    raw = secret.encode()
    spaced = " ".join(f"{b:02X}" for b in raw)
    return [secret, raw.hex(), raw.hex().upper(), spaced, spaced.lower()]


def test_no_pin_in_the_logs_nor_on_the_wire(
    bed: Bed, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(TRACE, logger="vsc")  # the card's and the relay's APDU traces too
    vpcd = FakeVpcd()
    try:
        bed.endpoint(vpcd, "Reader 1", "alice", proxy.address)
        vpcd.accept()
        vpcd.power_on()
        exchanges: list[tuple[str, bytes | None]] = [
            (SELECT_PIV.hex(), None),
            ("0020008008" + pin_block(WRONG_PIN), b"\x63\xc2"),
            ("0020008008" + pin_block(PIN), b"\x90\x00"),
            ("0024008010" + pin_block(PIN) + pin_block(NEW_PIN), b"\x90\x00"),
            ("0020008008" + pin_block(NEW_PIN), b"\x90\x00"),
            ("002C008010" + pin_block(PUK) + pin_block(UNBLOCKED_PIN), b"\x90\x00"),
            ("0020008008" + pin_block(UNBLOCKED_PIN), b"\x90\x00"),
        ]
        for apdu, expected in exchanges:
            answer = vpcd.transmit(bytes.fromhex(apdu))
            if expected is not None:
                assert answer == expected, (apdu, answer.hex())
    finally:
        vpcd.close()

    logs = caplog.text
    assert "00 20 00 80 <9 secret bytes>" in logs  # the traces were on, and masked
    assert "00 24 00 80 <17 secret bytes>" in logs
    events = "".join(
        p.read_text() for p in (bed.service_home.events_path, bed.endpoint_home.events_path)
    )
    for secret in (PIN, NEW_PIN, PUK, UNBLOCKED_PIN, WRONG_PIN):
        for form in secret_forms(secret):
            assert form not in logs, f"{form!r} in the logs"
            assert form not in events, f"{form!r} in the event logs"
        for direction, stream in proxy.recorded.items():
            assert secret.encode() not in stream, f"{secret} in clear on the wire ({direction})"
    assert len(proxy.recorded["up"]) > 1000  # the APDUs did cross the proxy
    bed.still_serving()
