"""A private swtpm (TPM 2.0 simulator) for tests: started on its own socket, stopped cleanly.

Theory of operation
-------------------
:class:`Swtpm` runs ``swtpm socket --tpm2`` with its state in a directory
(a temporary one unless given, so a test can restart the same TPM or start
a different one) and its command/control channels on a private Unix socket
pair (default) or on a free TCP port pair P, P+1 (the swtpm TCTI wants the
control port at P+1). It waits, bounded, until the socket accepts.

:meth:`Swtpm.stop` first sends TPM2_Shutdown(CLEAR): a simulator killed
without it counts the next startup as an unorderly shutdown, and after a
DA-protected object was used that costs one dictionary-attack failure; a few
such restarts lock the TPM out. Then it stops the process by its PID
(SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from .pcscd import HarnessError, HarnessTimeout, die_with_parent_argv, stop_process


def swtpm_skip_reason() -> str | None:
    """Why a swtpm-backed test cannot run here, or None when it can."""
    if shutil.which("swtpm") is None:
        return "swtpm is not installed (Debian: apt-get install swtpm swtpm-tools)"
    if importlib.util.find_spec("tpm2_pytss") is None:
        return "tpm2-pytss is not installed (pip install 'vsc[tpm]')"
    return None


class Swtpm:
    """One swtpm process; a context manager. ``tcti`` is what ``--tpm`` / ``VSC_TPM`` take."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        transport: str = "unix",
        binary: str = "swtpm",
        start_timeout: float = 5.0,
    ) -> None:
        if transport not in ("unix", "tcp"):
            raise ValueError("transport is 'unix' or 'tcp'")
        self.transport = transport
        self.binary = binary
        self.start_timeout = start_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="vsc-swtpm-"))
        self.state_dir = state_dir if state_dir is not None else self.workdir / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path = self.workdir / "tpm.sock"
        self.port: int | None = None
        self.log_path = self.workdir / "swtpm.log"
        self._process: subprocess.Popen[bytes] | None = None

    # -- properties -----------------------------------------------------------------------

    @property
    def tcti(self) -> str:
        if self.transport == "unix":
            return f"swtpm:path={self.socket_path}"
        if self.port is None:
            raise HarnessError("swtpm is not running")
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise HarnessError("swtpm is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        if self._process is not None:
            raise HarnessError("swtpm already started")
        attempts = 1 if self.transport == "unix" else 5
        for attempt in range(attempts):
            self._spawn()
            try:
                self._wait_ready()
                return
            except HarnessError:
                self._kill()
                if attempt == attempts - 1:
                    raise

    def _argv(self) -> list[str]:
        if self.transport == "unix":
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            server = f"type=unixio,path={self.socket_path}"
            ctrl = f"type=unixio,path={self.socket_path}.ctrl"
        else:
            self.port = _free_port_pair()
            server = f"type=tcp,port={self.port},bindaddr=127.0.0.1"
            ctrl = f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1"
        return [
            self.binary,
            "socket",
            "--tpm2",
            "--server",
            server,
            "--ctrl",
            ctrl,
            "--flags",
            "not-need-init,startup-clear",
            "--tpmstate",
            f"dir={self.state_dir}",
            "--log",
            f"file={self.log_path},level=1",
        ]

    def _spawn(self) -> None:
        self._process = subprocess.Popen(
            [*die_with_parent_argv(), *self._argv()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._process is not None
            status = self._process.poll()
            if status is not None:
                raise HarnessError(f"swtpm exited with {status}; log:\n{self.log_text()}")
            if self._accepts():
                return
            if time.monotonic() > deadline:
                raise HarnessTimeout(f"swtpm did not accept within {self.start_timeout} s")
            time.sleep(0.005)

    def _accepts(self) -> bool:
        if self.transport == "unix":
            family, address = socket.AF_UNIX, str(self.socket_path)
        else:
            family, address = socket.AF_INET, ("127.0.0.1", self.port)  # type: ignore[assignment]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(address)
            except OSError:
                return False
        return True

    def shutdown_tpm(self) -> None:
        """TPM2_Shutdown(CLEAR), so the next start is an orderly one."""
        from vsc.store.tpm import Tpm

        Tpm(self.tcti).shutdown()

    def stop(self, timeout: float = 5.0) -> int | None:
        """Shutdown(CLEAR), then stop the process by its PID; the state directory stays."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self.shutdown_tpm()
        return self._kill(timeout)

    def _kill(self, timeout: float = 5.0) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        stop_process(process, timeout)
        return process.returncode

    def restart(self) -> None:
        """Stop cleanly and start again on the same state (a reboot of the machine's TPM)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop (if running) and remove the temporary files (and the state, if ours)."""
        try:
            self.stop()
        finally:
            self._kill()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _free_port_pair() -> int:
    """A port P with P and P+1 free on 127.0.0.1 right now (swtpm wants ctrl at P+1)."""
    for _ in range(100):
        port = random.randrange(20000, 60000, 2)
        try:
            for p in (port, port + 1):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise HarnessError("no free port pair for swtpm")
