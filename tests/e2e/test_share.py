"""Sharing a reader into a remote session, end to end on one machine.

The testbed (:class:`ShareBed`):

* the *local machine*: a private pcscd (A) whose vpcd slot 0 holds vsc's
  emulator -- the "physical reader" -- and ``vsc share serve`` on A;
* the *remote machine*: a second private pcscd (B) in its own mount *and*
  network namespace, joined to this one by a veth pair with addresses from
  198.18.0.0/15 (the benchmarking range; private to this machine), and
  ``vsc share attach`` in the same network namespace feeding B's vpcd;
* the two share homes paired with the real ``vsc share pair`` verbs.

Remote clients (pkcs11-tool, yubico-piv-tool, opensc-tool) talk to B through
its socket path (``PCSCLITE_CSOCK_NAME``), local ones to A. Every process is
stopped by its PID; every wait is bounded.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import vsc.testing.pcscd as pcscd_module
from vsc.share.client import open_session
from vsc.share.events import read_events
from vsc.share.home import ShareHome
from vsc.share.protocol import Attach, Attached, Error, ErrorCode
from vsc.testing import EmulatorProcess, HarnessError, PcscdEnv
from vsc.testing.pcscd import die_with_parent_argv, stop_process
from vsc.testing.proxy import TcpProxy
from vsc.testing.tools import find_pkcs11_module

pytestmark = pytest.mark.e2e

PIN = "123456"
CLIENT_TIMEOUT = 60.0
CARD_TIMEOUT = 15.0
EVENT_TIMEOUT = 10.0
SELECT_PIV = "00A4040005A000000308"


def _pkcs11_module() -> str:
    path = find_pkcs11_module()
    if path is None:
        pytest.skip("opensc-pkcs11.so not found")
    return path


# --- a network namespace joined by a veth pair -------------------------------------------------


class NetworkNamespace:
    """A network namespace held by a ``sleep`` process, with a veth pair into it.

    The namespace, and with it the veth pair, vanishes when the holder dies,
    so nothing is left behind even if the test run is killed.
    """

    def __init__(self) -> None:
        self.holder: subprocess.Popen[bytes] | None = None
        subnet = random.Random().randrange(0, 1 << 15)  # a /30 inside 198.18.0.0/15
        base = (198 << 24) | (18 << 16) | (subnet << 2)
        self.host_address = socket.inet_ntoa((base + 1).to_bytes(4, "big"))
        self.inner_address = socket.inet_ntoa((base + 2).to_bytes(4, "big"))
        tag = f"{os.getpid() % 10000}{subnet % 1000}"
        self.outer_link, self.inner_link = f"vsh{tag}a", f"vsh{tag}b"

    @staticmethod
    def problem() -> str | None:
        if os.geteuid() != 0:
            return "needs root"
        missing = [t for t in ("ip", "unshare", "nsenter") if shutil.which(t) is None]
        return f"missing {', '.join(missing)} (Debian: iproute2 util-linux)" if missing else None

    def start(self) -> None:
        self.holder = subprocess.Popen(
            [*die_with_parent_argv(), "unshare", "-n", "--", "sleep", "3600"],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        own = os.readlink("/proc/self/ns/net")
        while os.readlink(f"/proc/{self.holder.pid}/ns/net") == own:
            if time.monotonic() > deadline or self.holder.poll() is not None:
                raise HarnessError("unshare -n did not create a network namespace")
            time.sleep(0.01)
        pid = str(self.holder.pid)
        self._ip("link", "add", self.outer_link, "type", "veth", "peer", "name", self.inner_link)
        self._ip("link", "set", self.inner_link, "netns", pid)
        self._ip("addr", "add", f"{self.host_address}/30", "dev", self.outer_link)
        self._ip("link", "set", self.outer_link, "up")
        self._ip("addr", "add", f"{self.inner_address}/30", "dev", self.inner_link, inside=True)
        self._ip("link", "set", self.inner_link, "up", inside=True)
        self._ip("link", "set", "lo", "up", inside=True)

    def _ip(self, *args: str, inside: bool = False) -> None:
        argv = [*(self.prefix() if inside else []), "ip", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if result.returncode != 0:
            raise HarnessError(f"{argv}: {result.stderr.strip()}")

    def prefix(self) -> list[str]:
        """Run a command inside the namespace."""
        assert self.holder is not None
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--"]

    def stop(self) -> None:
        if self.holder is not None:
            stop_process(self.holder, 5.0)
            self.holder = None


class NamespacedPcscdEnv(PcscdEnv):
    """A :class:`PcscdEnv` whose pcscd (and so its vpcd) runs inside a network namespace."""

    def __init__(self, netns_prefix: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.netns_prefix = list(netns_prefix)

    def _launch(self) -> None:
        # PcscdEnv builds its command from unshare_argv(); prefix it with nsenter --net.
        original = pcscd_module.unshare_argv

        def in_namespace(user_namespace: bool | None = None) -> list[str]:
            return [*self.netns_prefix, *original(user_namespace)]

        with mock.patch.object(pcscd_module, "unshare_argv", in_namespace):
            super()._launch()


# --- processes ---------------------------------------------------------------------------------


class Process:
    """A long-running subprocess with its output in a file; stopped by its PID."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [*die_with_parent_argv(), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"{self.argv} still running after {timeout} s\n{self.text()}"
            ) from None

    def stop(self) -> int:
        stop_process(self.popen, 5.0)
        return self.popen.returncode

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vsc.cli", *args]


# --- the testbed -------------------------------------------------------------------------------


class ShareBed:
    """Two machines in one: the local reader and service, the remote pcscd and endpoints."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.netns: NetworkNamespace | None = None
        if NetworkNamespace.problem() is None:
            self.netns = NetworkNamespace()
        self.local = PcscdEnv()
        self.remote: PcscdEnv = (
            NamespacedPcscdEnv([], friendly_name="Remote PCD")
            if self.netns is not None
            else PcscdEnv(friendly_name="Remote PCD")
        )
        self.service_home = workdir / "service-home"
        self.endpoint_home = workdir / "endpoint-home"
        self.emulator: EmulatorProcess | None = None
        self.service: Process | None = None
        self.processes: list[Process] = []
        self.service_address = ("127.0.0.1", 0)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.netns is not None:
            self.netns.start()
            # PcscdEnv chose its prefix before start(); rebuild it now that the holder runs.
            assert isinstance(self.remote, NamespacedPcscdEnv)
            self.remote.netns_prefix = self.netns.prefix()
        self.local.start()
        self.remote.start()
        self.start_emulator()
        host = self.netns.host_address if self.netns is not None else "127.0.0.1"
        self.start_service(host)
        self.pair()

    def start_emulator(self) -> None:
        self.emulator = EmulatorProcess(self.local.vpcd_port(0), "-v")
        self.emulator.start()
        self.local.wait_for_card(
            self.local.reader(0), timeout=CARD_TIMEOUT, check=self.emulator.check_running
        )

    def stop_emulator(self) -> None:
        assert self.emulator is not None
        self.emulator.stop()
        self.emulator = None

    def start_service(self, host: str) -> None:
        argv = _cli("-vvv", "share", "serve", "--home", str(self.service_home))
        argv += ["--listen", f"{host}:0"]
        self.service = Process(argv, self.workdir / "service.log", env=self.local.env)
        deadline = time.monotonic() + 15.0
        while (address := ShareHome(self.service_home).service_address()) is None:
            if not self.service.running() or time.monotonic() > deadline:
                raise HarnessError(f"the share service did not start\n{self.service.text()}")
            time.sleep(0.05)
        self.service_address = (host, address[1])

    @property
    def service_spec(self) -> str:
        return f"{self.service_address[0]}:{self.service_address[1]}"

    def pair(self) -> None:
        code = self.pairing_code()
        result = self.cli(
            "pair", "--with", self.service_spec, code, home=self.endpoint_home, remote=True
        )
        assert result.returncode == 0, self.describe(result)

    def pairing_code(self) -> str:
        offer = self.cli("pair", home=self.service_home)
        assert offer.returncode == 0, self.describe(offer)
        match = re.search(r"Pairing code: (\S+)", offer.stdout)
        assert match is not None, offer.stdout
        return match.group(1)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.service is not None:
            self.service.stop()
        if self.emulator is not None:
            self.emulator.stop()
        self.remote.stop()
        self.local.stop()
        if self.netns is not None:
            self.netns.stop()

    # -- running things ------------------------------------------------------------------------

    def cli(
        self,
        *args: str,
        home: Path,
        remote: bool = False,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """``vsc share ARGS --home HOME``, on the remote side (in its namespace) or locally."""
        prefix = self.netns.prefix() if remote and self.netns is not None else []
        argv = [*prefix, *_cli("share", *args, "--home", str(home))]
        env = os.environ if remote else self.local.env
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )

    def attach(
        self,
        reader: str = "Reader 1",
        *,
        session: str = "remote-session",
        mode: str = "exclusive",
        service: str | None = None,
        home: Path | None = None,
        verbosity: str = "-vvv",
    ) -> Process:
        """Start ``vsc share attach`` on the remote side, feeding B's vpcd slot 0."""
        prefix = self.netns.prefix() if self.netns is not None else []
        argv = [
            *prefix,
            *_cli(verbosity, "share", "attach", reader, "--from", service or self.service_spec),
            *("--home", str(home or self.endpoint_home), "--session", session, "--mode", mode),
            *("--vpcd", f"127.0.0.1:{self.remote.vpcd_port(0)}"),
        ]
        process = Process(argv, self.workdir / f"attach-{len(self.processes)}.log")
        self.processes.append(process)
        return process

    def remote_card(self, *, present: bool = True, process: Process | None = None) -> bytes:
        def check() -> None:
            if process is not None and not process.running():
                raise HarnessError(f"the endpoint exited\n{process.text()}")

        return self.remote.wait_for_card(
            self.remote.reader(0), present=present, timeout=CARD_TIMEOUT, check=check
        )

    def events(self, side: str) -> list[dict[str, Any]]:
        home = self.service_home if side == "service" else self.endpoint_home
        return read_events(ShareHome(home).events_path)

    def wait_event(self, side: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + EVENT_TIMEOUT
        while True:
            for event in self.events(side):
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no such {side} event:\n{self.describe()}")
            time.sleep(0.05)

    def listing(self) -> dict[str, dict[str, str]]:
        """The local ``vsc share list --json``, by reader name."""
        result = self.cli("list", "--json", home=self.service_home)
        assert result.returncode == 0, self.describe(result)
        return {r["name"]: r for r in json.loads(result.stdout)["readers"]}

    def describe(self, result: subprocess.CompletedProcess[str] | None = None) -> str:
        parts = []
        if result is not None:
            parts.append(f"$ {result.args}\n{result.stdout}\n{result.stderr}")
        if self.service is not None:
            parts.append(f"--- service log\n{self.service.text()[-6000:]}")
        for process in self.processes:
            parts.append(f"--- {process.log.name}\n{process.text()[-4000:]}")
        parts.append(f"--- remote pcscd\n{self.remote.log_text()[-2000:]}")
        return "\n".join(parts)


@pytest.fixture
def bed(e2e_available: None, tool: Callable[[str], str]) -> Iterator[ShareBed]:
    tool("yubico-piv-tool")
    tool("pkcs11-tool")
    tool("opensc-tool")
    workdir = Path(tempfile.mkdtemp(prefix="vsc-share-e2e-"))
    testbed = ShareBed(workdir)
    try:
        testbed.start()
        yield testbed
    finally:
        testbed.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- helpers -----------------------------------------------------------------------------------


def prepare_local_key(bed: ShareBed) -> ec.EllipticCurvePublicKey:
    """On the local card: generate a P-256 key in 9A and store a certificate for it.

    OpenSC's PKCS#11 module shows a PIV key only next to its certificate; the
    certificate's own signature does not matter here.
    """
    pub_path = bed.workdir / "9a.pem"
    reader = bed.local.reader(0)
    generate = ["yubico-piv-tool", "-r", reader, "-a", "generate", "-s", "9a", "-A", "ECCP256"]
    bed.local.run([*generate, "-o", str(pub_path)], timeout=CLIENT_TIMEOUT, check=True)
    public = serialization.load_pem_public_key(pub_path.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    issuer = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vsc share test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(issuer, hashes.SHA256())
    )
    cert_path = bed.workdir / "9a.crt"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    bed.local.run(
        [
            "yubico-piv-tool",
            "-r",
            reader,
            "-a",
            "import-certificate",
            "-s",
            "9a",
            "-i",
            str(cert_path),
        ],
        timeout=CLIENT_TIMEOUT,
        check=True,
    )
    return public


def remote_sign(bed: ShareBed, message: bytes) -> bytes:
    """pkcs11-tool on the remote side: sign SHA-256(message) with key 01 (slot 9A)."""
    digest = bed.workdir / "digest.bin"
    signature = bed.workdir / "signature.der"
    digest.write_bytes(hashlib.sha256(message).digest())
    result = bed.remote.run(
        [
            "pkcs11-tool", "--module", _pkcs11_module(), "--login", "--pin", PIN,
            "--sign", "--id", "01", "-m", "ECDSA", "--signature-format", "openssl",
            "--input-file", str(digest), "--output-file", str(signature),
        ],
        timeout=CLIENT_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, bed.describe(result)
    return signature.read_bytes()


def local_apdu(bed: ShareBed, apdu: str) -> subprocess.CompletedProcess[str]:
    reader = bed.local.reader(0)
    return bed.local.run(["opensc-tool", "-r", reader, "-s", apdu], timeout=CLIENT_TIMEOUT)


def remote_apdu(bed: ShareBed, apdu: str) -> subprocess.CompletedProcess[str]:
    reader = bed.remote.reader(0)
    return bed.remote.run(["opensc-tool", "-r", reader, "-s", apdu], timeout=CLIENT_TIMEOUT)


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
    ShareHome(stranger).pin(ShareHome(bed.service_home).identity().certificate, "svc")
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
    assert len(ShareHome(bed.service_home).peers()) == 1  # only the real endpoint


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
