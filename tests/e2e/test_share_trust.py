"""Share security regressions (issue 12), through real processes, real TLS and real pcscd.

Each test here failed on the code before its fix:

* **one direction per pairing** (item 1): a service this machine attached
  from cannot list, attach or spend a PIN try on this machine's own reader
  through this machine's service; an old ``peers.json`` migrates, each pin
  to one direction only, with a warning naming each;
* **a service is bound to its name** (item 2): an address that leads to
  another paired service is refused, naming both;
* **the share homes** (item 7): directories 0700, files 0600,
  ``events.log`` never written through a symbolic link, a home another user
  owns or can write refused.

The attacker's side is written with the plain TLS and link codec, not with
the endpoint's own code, so that what is tested is what the *service*
accepts.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vsc.share.link import LinkClosed, LinkSocket
from vsc.share.protocol import (
    Attach,
    Attached,
    Hello,
    ListReaders,
    Readers,
    Role,
    Transmit,
    Welcome,
)
from vsc.testing import EmulatorProcess, PcscdEnv
from vsc.testing.proxy import TcpProxy

from .sharebed import CARD_TIMEOUT, Process, ShareBed, serve, share_bed

pytestmark = pytest.mark.e2e

NOBODY = 65534


@pytest.fixture
def bed(e2e_available: None, tool: Callable[[str], str]) -> Iterator[ShareBed]:
    yield from share_bed(tool)


def share(
    *args: str, env: dict[str, str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vsc.cli", "share", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- one direction per pairing -------------------------------------------------------------------

VERIFY_WRONG_PIN = bytes.fromhex("0020008008") + b"999999\xff\xff"
SELECT_PIV = bytes.fromhex("00A4040005A000000308")


def tls_as(home: Path, address: tuple[str, int]) -> LinkSocket:
    """A link to ``address`` with ``home``'s certificate, trusting whatever answers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(home / "identity.crt", home / "identity.key")
    raw = socket.create_connection(address, timeout=10.0)
    tls = context.wrap_socket(raw)
    return LinkSocket(tls, Role.ENDPOINT)


def test_a_service_you_attach_from_cannot_use_your_readers(bed: ShareBed) -> None:
    """The endpoint's machine runs a service of its own with a card; the service it paired
    with (as an endpoint) tries to list, attach and spend a PIN try there."""
    card = EmulatorProcess(bed.remote.vpcd_port(1), "-v", host=bed.remote_address)
    card.start()
    own_service: Process | None = None
    try:
        bed.remote.wait_for_card(bed.remote.reader(1), timeout=CARD_TIMEOUT)
        own_service, address = serve(
            bed.endpoint_home,
            bed.remote_address,
            bed.workdir / "own-service.log",
            bed.remote.env,
            prefix=bed.remote_prefix(),
        )
        link = tls_as(bed.service_home, address)
        replies: list[object] = []
        try:
            for request in (
                Hello("lender", os.urandom(16)),
                ListReaders(),
                Attach("Reader 2"),
                Transmit(SELECT_PIV),
                Transmit(VERIFY_WRONG_PIN),
            ):
                reply, _ = link.request(request, 10.0)
                replies.append(reply)
        except LinkClosed:
            pass
        finally:
            link.close()
        assert not any(isinstance(r, Welcome | Readers | Attached) for r in replies), replies
        # The card's PIN still has all its tries, and the refusal is in the log, by name.
        verify = bed.remote.run(
            ["opensc-tool", "-r", bed.remote.reader(1), "-s", SELECT_PIV.hex(), "-s", "0020008000"],
            timeout=30.0,
        )
        assert "SW1=0x63, SW2=0xC3" in verify.stdout, verify.stdout
        events = [json.loads(line) for line in (bed.endpoint_home / "events.log").open()]
        refused = [e for e in events if e["event"] == "refused"]
        assert any("not as an endpoint" in e["message"] for e in refused), events
    finally:
        if own_service is not None:
            own_service.stop()
        card.stop()


def write_v1_peers(home: Path, entries: list[tuple[str, bytes, str]]) -> None:
    """A peers.json as the code before directions wrote it: (name, certificate, address)."""
    peers = [
        {
            "fingerprint": hashlib.sha256(certificate).hexdigest(),
            "name": name,
            "paired_at": "2026-11-22T00:00:00+00:00",
            "address": address,
            "certificate": certificate.hex(),
        }
        for name, certificate, address in entries
    ]
    (home / "peers.json").write_text(json.dumps({"peers": peers}))
    (home / "peers.json").chmod(0o600)


def certificate(name: str) -> bytes:
    """A self-signed certificate (DER) of a machine that is not in the bed."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def test_an_old_store_migrates_one_direction_per_pin(bed: ShareBed) -> None:
    """The bed's service home, rewritten as the old code kept it: the endpoint (stored with
    its bare address), a service it once attached from (HOST:PORT), one it cannot place."""
    endpoint_cert = (bed.endpoint_home / "identity.crt").read_bytes()
    endpoint_der = x509.load_pem_x509_certificate(endpoint_cert).public_bytes(
        serialization.Encoding.DER
    )
    lender = certificate("lender")
    write_v1_peers(
        bed.service_home,
        [
            ("remote-box", endpoint_der, bed.remote_address),
            ("lender", lender, "lender.example:35990"),
            ("mystery", certificate("mystery"), ""),
        ],
    )
    result = bed.cli("peers", home=bed.service_home)
    assert result.returncode == 0, bed.describe(result)
    warning = result.stderr
    assert "before pairings had a direction" in warning and "Nothing was widened" in warning
    assert "remote-box" in warning and "lender" in warning and "mystery" in warning
    services, endpoints = result.stdout.split("Endpoints that may use")[:2]
    assert "lender" in services and "remote-box" not in services
    assert "remote-box" in endpoints and "lender" not in endpoints
    assert "trusted for nothing" in result.stdout and "mystery" in endpoints
    stored = json.loads((bed.service_home / "peers.json").read_text())
    roles = {p["name"]: sorted(p["roles"]) for p in stored["peers"]}
    assert roles == {"remote-box": ["endpoint"], "lender": ["service"], "mystery": []}
    # The endpoint, migrated to the one direction it had, still attaches.
    endpoint = bed.attach()
    bed.remote_card(process=endpoint)


# --- a service is bound to its name --------------------------------------------------------------


def test_another_paired_service_at_a_services_address_is_refused(bed: ShareBed) -> None:
    """The endpoint paired with the bed's service through an address that later leads to
    another service it also paired with (a forwarder, a DNS change): refused, both named."""
    other_home = bed.workdir / "bob-home"
    other, other_address = serve(
        other_home, bed.host_address, bed.workdir / "bob.log", bed.local.env, "--name", "bob-desk"
    )
    try:
        bed.pair(other_home, f"{other_address[0]}:{other_address[1]}")
        with TcpProxy(bed.service_address, listen_host=bed.host_address) as forwarder:
            spec = f"{forwarder.address[0]}:{forwarder.address[1]}"
            bed.pair(spec=spec)  # the endpoint now knows the bed's service at the forwarder
            assert (
                bed.cli("list", "--from", spec, home=bed.endpoint_home, remote=True).returncode == 0
            )
            forwarder.target = other_address  # the address leads to bob-desk now
            for verb in (["list"], ["detach", "Reader 1"]):
                result = bed.cli(*verb, "--from", spec, home=bed.endpoint_home, remote=True)
                assert result.returncode == 1, bed.describe(result)
                assert "bob-desk" in result.stderr and socket.gethostname() in result.stderr
                assert "refusing" in result.stderr
            attach = bed.attach(service=spec)
            assert attach.wait(20.0) == 1, attach.text()
            assert "bob-desk" in attach.text()
        listing = bed.cli("list", "--json", home=other_home)
        assert '"state": "shared"' not in listing.stdout, listing.stdout
    finally:
        other.stop()


# --- the share homes -----------------------------------------------------------------------------


def test_share_homes_hold_private_files_only(bed: ShareBed) -> None:
    endpoint = bed.attach()
    bed.remote_card(process=endpoint)
    bed.wait_event("endpoint", lambda e: e["event"] == "attached")
    for home in (bed.service_home, bed.endpoint_home):
        assert mode(home) == 0o700, home
        files = sorted(home.iterdir())
        assert {"events.log", "identity.key", "identity.crt", "peers.json"} <= {
            f.name for f in files
        }
        for path in files:
            assert stat.S_ISREG(path.lstat().st_mode), path
            assert mode(path) == 0o600, f"{path}: {oct(mode(path))}"


def test_events_log_is_never_written_through_a_symlink(pcscd: PcscdEnv, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (home / "events.log").symlink_to(victim)

    argv = ["share", "serve", "--home", str(home), "--listen", "127.0.0.1:0"]
    service = Process([sys.executable, "-m", "vsc.cli", *argv], tmp_path / "serve.log", pcscd.env)
    try:
        status = service.wait(15.0)
    finally:
        service.stop()
    assert status == 1, service.text()
    assert "events.log" in service.text() and "symbolic link" in service.text()
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("problem", ["writable by others", "owned by another user"])
def test_a_share_home_others_control_is_refused(
    pcscd: PcscdEnv, tmp_path: Path, problem: str
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    assert share("peers", "--home", str(home), env=pcscd.env).returncode == 0  # made here
    if problem == "writable by others":
        home.chmod(0o777)
    else:
        os.chown(home, NOBODY, NOBODY)
    for verb in (["peers"], ["pair"], ["list"], ["serve", "--listen", "127.0.0.1:0"]):
        result = share(*verb, "--home", str(home), env=pcscd.env)
        assert result.returncode == 1, (verb, result.stdout, result.stderr)
        assert str(home) in result.stderr and problem in result.stderr, result.stderr
