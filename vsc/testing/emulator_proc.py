"""The vpcd front-end (``python -m vsc.emulator``) as a subprocess, for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from .pcscd import HarnessError, die_with_parent_argv, stop_process

EMULATOR_MODULE = ("-m", "vsc.emulator")


class EmulatorProcess:
    """A card process that connects to vpcd on ``host:port``; a context manager.

    Runs ``python PROGRAM -H host -P port ARGS...`` where PROGRAM defaults to
    ``-m vsc.emulator`` (give a script path to run a stand-in card). Its
    output goes to a log file (:meth:`log_text`), and it is stopped by its
    PID. Whether the card reached pcscd is the reader's business: see
    :meth:`vsc.testing.pcscd.PcscdEnv.wait_for_card`.
    """

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
        self.log_path = self.workdir / "emulator.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._process is not None:
            raise HarnessError("emulator already started")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [*die_with_parent_argv(), *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop the process by its PID (SIGTERM, then SIGKILL); return its exit status."""
        process, self._process = self._process, None
        if process is None:
            return None
        stop_process(process, timeout)
        self._final_log = self._read_log()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return process.returncode

    @property
    def pid(self) -> int:
        if self._process is None:
            raise HarnessError("emulator is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def check_running(self) -> None:
        """Raise :class:`HarnessError` with the log if the process has exited."""
        if self._process is None:
            raise HarnessError("emulator was not started")
        status = self._process.poll()
        if status is not None:
            raise HarnessError(f"emulator exited with {status}; log:\n{self.log_text()}")

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_text(self) -> str:
        """The process's output so far (kept after :meth:`stop`)."""
        return self._final_log if self._final_log is not None else self._read_log()
