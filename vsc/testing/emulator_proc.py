"""The vpcd front-end (``python -m vsc.emulator``) as a subprocess, for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .process import ChildProcess, HarnessError

EMULATOR_MODULE = ("-m", "vsc.emulator")


class EmulatorProcess(ChildProcess):
    """A card process that connects to vpcd on ``host:port``; a context manager.

    Runs ``python PROGRAM -H host -P port ARGS...`` where PROGRAM defaults to
    ``-m vsc.emulator`` (give a script path to run a stand-in card). Its
    output goes to a log file (:meth:`log_text`), and it is stopped by its
    PID. Whether the card reached pcscd is the reader's business: see
    :meth:`vsc.testing.pcscd.PcscdEnv.wait_for_card`.
    """

    name = "emulator"

    def __init__(
        self,
        port: int,
        *args: str,
        host: str = "127.0.0.1",
        program: Sequence[str] = EMULATOR_MODULE,
        python: str = sys.executable,
    ) -> None:
        self.port = port
        self.argv = [python, *program, "-H", host, "-P", str(port), *args]
        self.workdir = Path(tempfile.mkdtemp(prefix="vsc-emulator-"))
        super().__init__(self.workdir / "emulator.log")

    def start(self) -> None:
        self.spawn(self.argv, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop the process by its PID (SIGTERM, then SIGKILL); return its exit status."""
        if self._process is None:
            return None
        status = self.stop_child(timeout)
        self.keep_log()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return status

    def close(self) -> None:
        self.stop()

    def check_running(self) -> None:
        """Raise :class:`HarnessError` with the log if the process has exited."""
        if self._process is None:
            raise HarnessError("emulator was not started")
        status = self._process.poll()
        if status is not None:
            raise HarnessError(f"emulator exited with {status}; log:\n{self.log_text()}")
