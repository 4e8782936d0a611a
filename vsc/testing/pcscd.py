"""A private pcscd with the vsmartcard vpcd reader driver, for end-to-end tests.

Theory of operation
-------------------
pcscd 1.9.9 always listens on ``/run/pcscd/pcscd.comm`` and allows one daemon
per mount namespace. :class:`PcscdEnv` therefore starts pcscd inside a new,
private mount namespace (``unshare -m --propagation private``) where:

* a tmpfs covers ``/run`` (nothing of the host's ``/run`` is seen or
  touched) and a per-instance directory ``WORK/run`` is bind-mounted on
  ``/run/pcscd``, so the daemon's socket is visible from outside the
  namespace as ``WORK/run/pcscd.comm``;
* an empty tmpfs hides ``/usr/lib/pcsc/drivers``, so the private daemon never
  picks up a real USB reader (the vpcd driver is reached through a bind mount
  made before the tmpfs goes on);
* ``pcscd -c WORK/reader.conf.d`` reads only our one vpcd entry, never the
  system ``/etc/reader.conf.d`` (whose vpcd listens on 35963).

The vpcd entry listens on TCP port P (slot 0) and P+1 (slot 1); pcscd names
the readers ``"<FRIENDLY_NAME> 00 00"`` and ``"<FRIENDLY_NAME> 00 01"``, by
default ``"Virtual PCD 00 00"`` and ``"Virtual PCD 00 01"`` (see
:func:`reader_name`). In reversed mode (``card_host``) vpcd connects instead,
to ``card_host:P`` and ``card_host:P+1``, once as pcscd starts: the card must
listen on *both* ports by then. (vpcd 3.3 does not check its connect: a port
with no listener hands pcscd a -1 descriptor, and pcscd aborts with "bit out
of range 0 - FD_SETSIZE on fd_set".)

Clients stay outside the namespace. The pcsc-lite client library (1.9.9)
reads the socket path from ``PCSCLITE_CSOCK_NAME`` (the daemon ignores it), so
subprocesses get :attr:`PcscdEnv.env`. In this process the library reads the
variable once, on its first call, and keeps it; :meth:`PcscdEnv.use_in_process`
therefore points the variable at a per-process symlink and re-points the
symlink, so pyscard reaches whichever daemon was activated last when it opens
a context. Open contexts stay with the daemon they were opened on.
``nsenter -t PID -m`` (:meth:`PcscdEnv.namespace_argv`) is the fallback for a
client that does not use libpcsclite.

As root this needs only ``unshare -m``; as another user, ``unshare -r -m``
(a user namespace mapping the user to root; the kernel must allow
unprivileged user namespaces). :func:`skip_reason` probes which works.

Several instances may run at once: their ports are random and checked free,
and a port taken in the meantime makes pcscd start again on another one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .process import ChildProcess, HarnessError, HarnessTimeout

__all__ = [
    "FRIENDLY_NAME",
    "HarnessError",
    "HarnessTimeout",
    "PcscdEnv",
    "pick_vpcd_port",
    "reader_name",
    "skip_reason",
    "unshare_argv",
]

FRIENDLY_NAME = "Virtual PCD"
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
USB_DRIVER_DIR = Path("/usr/lib/pcsc/drivers")
SOCKET_ENV = "PCSCLITE_CSOCK_NAME"
PCSCD_RUN_DIR = "/run/pcscd"
# Ports are drawn below the usual ephemeral range so outgoing connections rarely collide.
PORT_RANGE = (20000, 32000)
LOG_TAIL_CHARS = 4000
_START_ATTEMPTS = 3
_STOP_TIMEOUT = 5.0
_CHECK_INTERVAL = 0.25  # seconds between wait_for_card's check() calls

_REQUIRED_TOOLS = ("unshare", "nsenter", "mount", "pcscd")
# The namespace side: mounts, then exec pcscd so its PID is the one Popen returns.
_NAMESPACE_SCRIPT = """
set -e
mount -t tmpfs -o size=64k,mode=755 vsc-run /run
mkdir "$PCSCD_RUN_DIR"
mount --bind "$RUN_DIR" "$PCSCD_RUN_DIR"
mount --bind "$VPCD_DIR" "$DRIVER_DIR"
if [ -d "$USB_DRIVER_DIR" ]; then
    mount -t tmpfs -o size=64k,mode=755 vsc-no-usb "$USB_DRIVER_DIR"
fi
exec "$PCSCD" "$@"
"""


def reader_name(slot: int = 0, friendly_name: str = FRIENDLY_NAME) -> str:
    """The PC/SC name pcscd gives slot ``slot`` of our single vpcd entry."""
    return f"{friendly_name} 00 {slot:02X}"


def unshare_argv(user_namespace: bool | None = None) -> list[str]:
    """The ``unshare`` prefix for a private mount namespace.

    ``user_namespace`` None means: only when not root.
    """
    if user_namespace is None:
        user_namespace = os.geteuid() != 0
    return ["unshare", *(["-r"] if user_namespace else []), "-m", "--propagation", "private"]


@functools.cache
def _namespace_problem() -> str | None:
    argv = [*unshare_argv(), "true"]
    try:
        probe = subprocess.run(argv, capture_output=True, text=True, timeout=10.0, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv}: {exc}"
    if probe.returncode != 0:
        hint = "" if os.geteuid() == 0 else " (run as root, or allow unprivileged user namespaces)"
        return f"cannot create a private mount namespace{hint}: {probe.stderr.strip()}"
    return None


def skip_reason() -> str | None:
    """Why the private pcscd cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "private pcscd needs Linux mount namespaces"
    missing = [tool for tool in _REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (Debian: pcscd util-linux mount)"
    problem = _namespace_problem()
    if problem is not None:
        return problem
    if not VPCD_DRIVER.exists():
        return f"vpcd driver {VPCD_DRIVER} missing (Debian: vsmartcard-vpcd)"
    try:
        import smartcard.scard  # noqa: F401
    except ImportError:
        return "pyscard is not installed (pip install pyscard)"
    return None


def _port_free(port: int) -> bool:
    # vpcd binds INADDR_ANY, so check the same address.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def pick_vpcd_port(attempts: int = 200) -> int:
    """A random port P with P and P+1 both free for vpcd's two slots."""
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randrange(*PORT_RANGE)
        if _port_free(port) and _port_free(port + 1):
            return port
    raise HarnessError(f"no free port pair found in {PORT_RANGE}")


def _tail(text: str) -> str:
    return text if len(text) <= LOG_TAIL_CHARS else "..." + text[-LOG_TAIL_CHARS:]


class _ClientLink:
    """This process's pcsc-lite socket path: a symlink re-pointed at the active daemon."""

    def __init__(self) -> None:
        self._pid = -1
        self._path = Path()

    def point_at(self, socket_path: Path) -> None:
        if self._pid != os.getpid():  # a forked child needs its own link
            self._pid = os.getpid()
            link_dir = Path(tempfile.gettempdir()) / f"vsc-pcsc-client-{self._pid}"
            self._path = link_dir / "pcscd.comm"
        self._path.parent.mkdir(mode=0o700, exist_ok=True)
        os.environ[SOCKET_ENV] = str(self._path)
        staging = self._path.with_name(f"next-{time.monotonic_ns()}")
        staging.symlink_to(socket_path)
        staging.replace(self._path)

    def release(self, socket_path: Path) -> None:
        if self._pid == os.getpid() and self._path.is_symlink():
            if self._path.readlink() == socket_path:
                self._path.unlink()
            with contextlib.suppress(OSError):
                self._path.parent.rmdir()


_CLIENT_LINK = _ClientLink()


class _PortTaken(Exception):
    """vpcd could not listen on its port: another process took it."""


class PcscdEnv(ChildProcess):
    """A private pcscd with one vpcd entry; a context manager.

    ``port`` is slot 0's vpcd port (slot 1 is ``port + 1``); None picks a free
    pair. ``debug`` adds pcscd's debug and APDU logging to :meth:`log_text`.
    ``user_namespace`` runs pcscd in a user namespace too (default: when not
    root). ``card_host`` selects reversed mode: vpcd connects to a card
    listening on ``card_host`` at ``port`` and ``port + 1`` (give ``port``).
    ``pid`` is pcscd's, also the one to ``nsenter`` (:meth:`namespace_argv`).
    """

    name = "pcscd"

    def __init__(
        self,
        port: int | None = None,
        *,
        friendly_name: str = FRIENDLY_NAME,
        debug: bool = False,
        start_timeout: float = 10.0,
        user_namespace: bool | None = None,
        card_host: str | None = None,
    ) -> None:
        if card_host is not None and port is None:
            raise ValueError("reversed mode needs the port the card listens on")
        self.card_host = card_host
        self._auto_port = port is None
        self.port = pick_vpcd_port() if port is None else port
        self.friendly_name = friendly_name
        self.debug = debug
        self.start_timeout = start_timeout
        self.user_namespace = os.geteuid() != 0 if user_namespace is None else user_namespace
        self.workdir = Path(tempfile.mkdtemp(prefix="vsc-pcscd-"))
        self.run_dir = self.workdir / "run"
        self.conf_dir = self.workdir / "reader.conf.d"
        self.driver_dir = self.workdir / "driver"
        self.socket_path = self.run_dir / "pcscd.comm"
        super().__init__(self.workdir / "pcscd.log")

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start pcscd and wait until both vpcd readers are listed.

        If the vpcd port was picked here and another process took it in the
        meantime, pcscd is restarted on a new port (a few times).
        """
        if self._process is not None:
            raise HarnessError("pcscd already started")
        try:
            reason = skip_reason()
            if reason is not None:
                raise HarnessError(f"cannot start a private pcscd: {reason}")
            for directory in (self.run_dir, self.conf_dir, self.driver_dir):
                directory.mkdir(exist_ok=True)
            for attempt in range(1, _START_ATTEMPTS + 1):
                for stale in self.run_dir.iterdir():  # left by a previous attempt
                    stale.unlink()
                self._write_reader_conf()
                self._launch()
                if self._wait_started():
                    return
                if not self._auto_port or attempt == _START_ATTEMPTS:
                    raise HarnessError(f"vpcd port {self.port} is in use\n{self._describe()}")
                self.stop_child(_STOP_TIMEOUT)
                self.port = pick_vpcd_port()
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> None:
        pcscd_args = ["-f", "-c", str(self.conf_dir), *(["-d", "-a"] if self.debug else [])]
        namespace = [*unshare_argv(self.user_namespace), "--", "sh", "-c", _NAMESPACE_SCRIPT]
        script_env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PCSCD_RUN_DIR": PCSCD_RUN_DIR,
            "RUN_DIR": str(self.run_dir),
            "VPCD_DIR": str(VPCD_DRIVER.parent),
            "DRIVER_DIR": str(self.driver_dir),
            "USB_DRIVER_DIR": str(USB_DRIVER_DIR),
            "PCSCD": shutil.which("pcscd") or "pcscd",
        }
        # pcscd -f logs to stdout, which goes to the log file.
        self.spawn([*namespace, "sh", *pcscd_args], env=script_env)

    def _wait_started(self) -> bool:
        """Wait for both readers; False if vpcd could not listen on its port."""
        wanted = self.reader(1)

        def listed() -> bool:
            if self.socket_path.exists() and wanted in self._readers_if_listening():
                return True
            log = self.read_log()
            if "init failed" in log:  # pcscd could not add the vpcd reader
                if "Address already in use" in log:
                    raise _PortTaken
                raise HarnessError(f"pcscd could not add the vpcd reader\n{self._describe()}")
            return False

        try:
            self.wait_until(
                listed,
                timeout=self.start_timeout,
                what=f"pcscd did not list {wanted!r}",
                describe=self._describe,
            )
        except _PortTaken:
            return False
        return True

    def _readers_if_listening(self) -> list[str]:
        # The socket file appears before pcscd accepts on it; on a loaded
        # machine a context opened in between fails with "Service not
        # available", which during start-up means "not yet", not an error.
        try:
            return self.readers()
        except HarnessError:
            return []

    def _write_reader_conf(self) -> None:
        # Normal mode: vpcd listens on the port; reversed: it connects to host:port.
        if self.card_host is None:
            device = f"/dev/null:0x{self.port:04X}"
        else:
            device = f"{self.card_host}:{self.port}"
        entry = (
            f'FRIENDLYNAME "{self.friendly_name}"\n'
            f"DEVICENAME {device}\n"
            f"LIBPATH {self.driver_dir / VPCD_DRIVER.name}\n"
            f"CHANNELID 0x{self.port:04X}\n"
        )
        (self.conf_dir / "vpcd").write_text(entry)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop pcscd by its PID (SIGTERM, then SIGKILL) and remove the work dir (the log
        stays in :meth:`log_text`)."""
        self.stop_child(timeout)
        _CLIENT_LINK.release(self.socket_path)
        self.keep_log()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def close(self) -> None:
        self.stop()

    # -- logs --------------------------------------------------------------

    def _describe(self) -> str:
        state = "running" if self.running else "not running"
        return f"pcscd ({state}, vpcd port {self.port}) log:\n{_tail(self.log_text())}"

    # -- clients -----------------------------------------------------------

    def reader(self, slot: int = 0) -> str:
        """The PC/SC reader name of vpcd slot ``slot`` (0 or 1)."""
        return reader_name(slot, self.friendly_name)

    def vpcd_port(self, slot: int = 0) -> int:
        """The TCP port a card connects to for slot ``slot``."""
        return self.port + slot

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess client of this pcscd."""
        return {**os.environ, SOCKET_ENV: str(self.socket_path)}

    def namespace_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside pcscd's mount namespace (for a client ignoring the env)."""
        userns = ["-U", "--preserve-credentials"] if self.user_namespace else []
        return ["nsenter", "-t", str(self.pid), *userns, "-m", "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 10.0,
        input: str | None = None,
        check: bool = False,
        namespace: bool = False,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a client of this pcscd; output captured as text.

        A client still running after ``timeout`` seconds is killed (its whole
        process group) and :class:`HarnessTimeout` raised with its output and
        pcscd's log. ``check`` raises :class:`HarnessError` on a non-zero exit.
        """
        self.require_process()
        command = self.namespace_argv(argv) if namespace else list(argv)
        # Inside the namespace the default socket path is the daemon's own.
        env = self.env
        if namespace:
            del env[SOCKET_ENV]
        env.update(extra_env or {})
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",  # a tool may print binary; never fail on decoding
            env=env,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            try:
                stdout, stderr = process.communicate(timeout=5.0)
            except subprocess.TimeoutExpired:
                stdout, stderr = "", "(output lost: a grandchild kept the pipes open)"
            raise HarnessTimeout(
                f"{command} did not finish within {timeout} s and was killed\n"
                f"stdout:\n{_tail(stdout)}\nstderr:\n{_tail(stderr)}\n{self._describe()}"
            ) from None
        result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise HarnessError(
                f"{command} exited with {result.returncode}\n"
                f"stdout:\n{_tail(stdout)}\nstderr:\n{_tail(stderr)}\n{self._describe()}"
            )
        return result

    def use_in_process(self) -> None:
        """Point this process's pyscard (libpcsclite) at this pcscd.

        Affects contexts opened from now on, so call it before the first
        pyscard call of the process and again to switch between instances.
        """
        self.require_process()
        _CLIENT_LINK.point_at(self.socket_path)

    @contextlib.contextmanager
    def pcsc_context(self) -> Iterator[Any]:
        """A pyscard low-level ``SCARDCONTEXT`` on this pcscd, released on exit."""
        from smartcard import scard

        self.use_in_process()
        hresult, hcontext = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hresult != scard.SCARD_S_SUCCESS:
            raise HarnessError(
                f"SCardEstablishContext: {scard.SCardGetErrorMessage(hresult)} (if this "
                "process used pyscard before use_in_process(), libpcsclite kept the old "
                f"socket path)\n{self._describe()}"
            )
        try:
            yield hcontext
        finally:
            scard.SCardReleaseContext(hcontext)

    def readers(self) -> list[str]:
        """The reader names pcscd lists now."""
        from smartcard import scard

        with self.pcsc_context() as hcontext:
            hresult, names = scard.SCardListReaders(hcontext, [])
        if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        if hresult != scard.SCARD_S_SUCCESS:
            raise HarnessError(f"SCardListReaders: {scard.SCardGetErrorMessage(hresult)}")
        return list(names)

    # -- waits -------------------------------------------------------------

    def wait_for_reader(self, reader: str | None = None, timeout: float = 5.0) -> None:
        """Wait until pcscd is up and lists ``reader`` (default: slot 0)."""
        wanted = self.reader(0) if reader is None else reader
        self.wait_until(
            lambda: self.socket_path.exists() and wanted in self.readers(),
            timeout=timeout,
            what=f"reader {wanted!r} not listed",
            describe=self._describe,
        )

    def wait_for_card(
        self,
        reader: str | None = None,
        *,
        present: bool = True,
        timeout: float = 5.0,
        check: Callable[[], None] | None = None,
    ) -> bytes:
        """Wait until a card is (``present``) or is not in ``reader``; return its ATR.

        Uses ``SCardGetStatusChange``; pcscd notices vpcd cards by polling
        about every 400 ms. Returns b"" when waiting for absence. ``check`` is
        called a few times a second and may raise to end the wait early (e.g.
        :meth:`EmulatorProcess.check_running`).
        """
        from smartcard import scard

        name = self.reader(0) if reader is None else reader
        deadline = time.monotonic() + timeout
        with self.pcsc_context() as hcontext:
            known = scard.SCARD_STATE_UNAWARE
            while True:
                remaining = deadline - time.monotonic()
                slice_ms = max(0, int(min(remaining, _CHECK_INTERVAL) * 1000))
                hresult, states = scard.SCardGetStatusChange(hcontext, slice_ms, [(name, known)])
                if hresult == scard.SCARD_E_TIMEOUT and remaining > _CHECK_INTERVAL:
                    if check is not None:
                        check()
                    continue
                if hresult == scard.SCARD_E_TIMEOUT:
                    want = "present" if present else "absent"
                    raise HarnessTimeout(
                        f"card in {name!r} not {want} after {timeout} s\n{self._describe()}"
                    )
                if hresult != scard.SCARD_S_SUCCESS:
                    raise HarnessError(
                        f"SCardGetStatusChange({name!r}): "
                        f"{scard.SCardGetErrorMessage(hresult)}\n{self._describe()}"
                    )
                _, event, atr = states[0]
                if event & scard.SCARD_STATE_UNKNOWN:
                    raise HarnessError(f"reader {name!r} unknown to pcscd\n{self._describe()}")
                usable = event & scard.SCARD_STATE_PRESENT and not event & scard.SCARD_STATE_MUTE
                if present and usable:
                    return bytes(atr)
                if not present and event & scard.SCARD_STATE_EMPTY:
                    return b""
                known = event & ~scard.SCARD_STATE_CHANGED
