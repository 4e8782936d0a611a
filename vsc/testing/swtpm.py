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
import tempfile
from pathlib import Path

from .process import ChildProcess, HarnessError


def swtpm_skip_reason() -> str | None:
    """Why a swtpm-backed test cannot run here, or None when it can."""
    if shutil.which("swtpm") is None:
        return "swtpm is not installed (Debian: apt-get install swtpm swtpm-tools)"
    if importlib.util.find_spec("tpm2_pytss") is None:
        return "tpm2-pytss is not installed (pip install 'vsc[tpm]')"
    return None


class Swtpm(ChildProcess):
    """One swtpm process; a context manager. ``tcti`` is what ``--tpm`` / ``VSC_TPM`` take."""

    name = "swtpm"

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
        super().__init__(self.workdir / "swtpm.log")  # written by swtpm itself (--log)

    # -- properties -----------------------------------------------------------------------

    @property
    def tcti(self) -> str:
        if self.transport == "unix":
            return f"swtpm:path={self.socket_path}"
        if self.port is None:
            raise HarnessError("swtpm is not running")
        return f"swtpm:host=127.0.0.1,port={self.port}"

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._process is not None:
            raise HarnessError("swtpm already started")
        attempts = 1 if self.transport == "unix" else 5  # a TCP port may be taken meanwhile
        for attempt in range(attempts):
            self.spawn(self._argv(), capture=False)
            try:
                self.wait_until(
                    self._accepts,
                    timeout=self.start_timeout,
                    what="swtpm did not accept",
                    interval=0.005,
                )
                return
            except HarnessError:
                self.stop_child()
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
        return self.stop_child(timeout)

    def restart(self) -> None:
        """Stop cleanly and start again on the same state (a reboot of the machine's TPM)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop (if running) and remove the temporary files (and the state, if ours)."""
        try:
            self.stop()
        finally:
            self.stop_child()
            self.keep_log()
            shutil.rmtree(self.workdir, ignore_errors=True)


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
