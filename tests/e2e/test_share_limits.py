"""The share service under a flood of connections, and with a frozen peer, through real processes.

Each test here failed on the code before its fix:

* **a flood does not keep a paired session out** (issue 12 item 3): idle TCP
  connections and TLS links without a certificate, from one address and
  from many, no longer fill a fixed pool: the local user's ``vsc share
  list`` gets in at once, every flood connection is closed within the
  handshake and first-message deadlines (a frame trickled a byte at a time
  included), and refusals are logged at a bounded rate;
* **a frozen endpoint frees the reader** (item 4): an endpoint stopped with
  SIGSTOP (its kernel still answers TCP) loses the reader within 30 s, by the
  application keepalive, and the service logs why.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vsc.testing import PcscdEnv

from .sharebed import CLIENT_TIMEOUT, ShareBed, serve, share_bed
from .test_share_trust import share

pytestmark = pytest.mark.e2e

#: The service's limits this test relies on (vsc.share.limits.Limits defaults), plus slack
#: for a loaded machine.
HANDSHAKE, FIRST_MESSAGE, SLACK = 5.0, 5.0, 3.0
PEER_TIMEOUT = 30.0
SELECT_PIV = "00A4040005A000000308"  # issue 12: a dead peer frees the reader within 30 s by default


@pytest.fixture
def bed(e2e_available: None, tool: Callable[[str], str]) -> Iterator[ShareBed]:
    yield from share_bed(tool)


def knock(address: tuple[str, int], source: str) -> socket.socket:
    """A TCP connection from ``source`` that says nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5.0)
    sock.connect(address)
    return sock


def tls_without_certificate(address: tuple[str, int], source: str) -> ssl.SSLSocket:
    """A finished TLS handshake without a client certificate (what pairing starts with)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(knock(address, source))


def closed_by_peer(sock: socket.socket, deadline: float) -> bool:
    """Whether the service closes ``sock`` before ``deadline`` (monotonic)."""
    try:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(4096):
                return True
    except (TimeoutError, ssl.SSLWantReadError):
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True


def test_a_flood_does_not_keep_the_owner_out(pcscd: PcscdEnv, tmp_path: Path) -> None:
    home = tmp_path / "home"
    service, address = serve(home, "127.0.0.1", tmp_path / "serve.log", pcscd.env)
    flood: list[socket.socket] = []
    try:
        # One address: 80 idle TCP connections (the old pool held 64), TLS links without a
        # certificate; then 40 more addresses, two connections each.
        flood += [knock(address, "127.0.0.2") for _ in range(80)]
        for _ in range(8):
            with contextlib.suppress(OSError):  # the old code closed these at once
                flood.append(tls_without_certificate(address, "127.0.0.2"))
        flood += [knock(address, f"127.0.0.{i}") for i in range(3, 43) for _ in range(2)]

        listing = share("list", "--home", str(home), env=pcscd.env, timeout=CLIENT_TIMEOUT)
        assert listing.returncode == 0, (listing.stderr, service.text()[-3000:])
        assert "Readers of" in listing.stdout, listing.stdout

        # A frame trickled a byte every half second after the handshake: the first message
        # is bounded as a whole, not per read.
        trickler = tls_without_certificate(address, "127.0.0.99")
        trickled_at = time.monotonic()
        stop = threading.Event()

        def trickle() -> None:
            for byte in b"\x00\x00\x00\x40" + bytes(64):
                if stop.wait(0.5):
                    return
                try:
                    trickler.send(bytes([byte]))
                except OSError:
                    return

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()

        # Every flood connection is closed by the service, within its deadlines.
        deadline = time.monotonic() + HANDSHAKE + FIRST_MESSAGE + SLACK
        open_ = [s for s in flood if not closed_by_peer(s, deadline)]
        assert not open_, f"{len(open_)} of {len(flood)} flood connections still open"
        trickled = closed_by_peer(trickler, trickled_at + FIRST_MESSAGE + SLACK)
        stop.set()
        thread.join(5.0)
        assert trickled, "a trickled first frame kept its link open"
        trickler.close()
    finally:
        for sock in flood:
            sock.close()
        service.stop()
    # Refusals are events, but not one per connection for ever: at most 10 a minute per
    # address, the rest counted.
    events = [json.loads(line) for line in (home / "events.log").open()]
    refused = [e for e in events if e["event"] == "refused" and "127.0.0.2:" in e["message"]]
    assert 1 <= len(refused) <= 10, [e["message"] for e in refused]


def test_the_service_listens_on_loopback_unless_told(pcscd: PcscdEnv, tmp_path: Path) -> None:
    """Without --listen, only this machine can connect (port 0 would not show the default)."""
    result = share("serve", "--help", env=pcscd.env)
    assert "default 127.0.0.1:35990" in result.stdout.replace("\n", " "), result.stdout


def test_a_frozen_endpoint_frees_the_reader(bed: ShareBed) -> None:
    endpoint = bed.attach()  # exclusive: local applications are kept out while it is shared
    bed.remote_card(process=endpoint)
    bed.wait_event("service", lambda e: e["event"] == "shared")
    reader = bed.local.reader(0)
    select = ["opensc-tool", "-r", reader, "-s", SELECT_PIV]
    held = bed.local.run(select, timeout=CLIENT_TIMEOUT)
    assert held.returncode != 0, held.stdout  # the share holds the card exclusively

    endpoint.signal(signal.SIGSTOP)  # the process freezes; its kernel still ACKs TCP
    frozen_at = time.monotonic()
    try:
        while True:
            unshared = [e for e in bed.events("service") if e["event"] == "unshared"]
            if unshared:
                break
            assert time.monotonic() - frozen_at < PEER_TIMEOUT + SLACK, bed.describe()
            time.sleep(0.2)
        elapsed = time.monotonic() - frozen_at
        assert elapsed <= PEER_TIMEOUT, elapsed
        assert unshared[0]["reason"] == "unresponsive", unshared
        assert "stopped answering" in unshared[0]["message"], unshared
        free = bed.local.run(select, timeout=CLIENT_TIMEOUT)
        assert free.returncode == 0 and "SW1=0x90, SW2=0x00" in free.stdout, free.stdout
        assert bed.listing()["Reader 1"]["state"] != "shared"
    finally:
        endpoint.signal(signal.SIGCONT)
