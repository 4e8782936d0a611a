"""The share testbed: two machines in one, for the end-to-end tests of ``vsc share``.

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
import socket
import subprocess
import sys
import tempfile
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
from vsc.share.events import read_events
from vsc.testing import EmulatorProcess, HarnessError, PcscdEnv
from vsc.testing.process import die_with_parent_argv, stop_process
from vsc.testing.tools import find_pkcs11_module

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


def serve(
    home: Path,
    host: str,
    log: Path,
    env: dict[str, str],
    *args: str,
    prefix: Sequence[str] = (),
) -> tuple[Process, tuple[str, int]]:
    """Start ``vsc share serve`` on ``host``, any port; the process and where it listens."""
    argv = [*prefix, *_cli("-vvv", "share", "serve", "--home", str(home), "--listen", f"{host}:0")]
    process = Process([*argv, *args], log, env=env)
    deadline = time.monotonic() + 15.0
    while (address := _service_address(home)) is None:
        if not process.running() or time.monotonic() > deadline:
            process.stop()
            raise HarnessError(f"the share service did not start\n{process.text()}")
        time.sleep(0.05)
    return process, (host, address[1])


def _service_address(home: Path) -> tuple[str, int] | None:
    """The port in ``service.json``, read as a test would (no checks of the home)."""
    try:
        data = json.loads((home / "service.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return str(data["host"]), int(data["port"])


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
        self.start_service(self.host_address)
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
        self.service, self.service_address = serve(
            self.service_home, host, self.workdir / "service.log", self.local.env
        )

    @property
    def host_address(self) -> str:
        """This (the local) machine's address as the remote side reaches it."""
        return self.netns.host_address if self.netns is not None else "127.0.0.1"

    @property
    def remote_address(self) -> str:
        """The remote machine's address as this side reaches it."""
        return self.netns.inner_address if self.netns is not None else "127.0.0.1"

    def remote_prefix(self) -> list[str]:
        """Run a command on the remote machine (in its network namespace)."""
        return self.netns.prefix() if self.netns is not None else []

    @property
    def service_spec(self) -> str:
        return f"{self.service_address[0]}:{self.service_address[1]}"

    def pair(self, service_home: Path | None = None, spec: str | None = None) -> None:
        """Pair the endpoint with a service (default: the bed's) with the real verbs."""
        code = self.pairing_code(service_home)
        result = self.cli(
            "pair", "--with", spec or self.service_spec, code, home=self.endpoint_home, remote=True
        )
        assert result.returncode == 0, self.describe(result)

    def pairing_code(self, home: Path | None = None) -> str:
        offer = self.cli("pair", home=home or self.service_home)
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
        return read_events(home / "events.log")

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


def share_bed(tool: Callable[[str], str]) -> Iterator[ShareBed]:
    """The body of a ``bed`` fixture: a started :class:`ShareBed`, stopped afterwards."""
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
