"""The processes a test starts (pcscd, swtpm, the emulator): started, waited for, stopped.

Theory of operation
-------------------
Every daemon or card process of the harness is a :class:`ChildProcess`: one
``subprocess.Popen`` in a session of its own, its output in a log file (a
file, never a pipe that can fill up and block it), tied to this process's
life (:func:`die_with_parent_argv`) and stopped by its own PID, never by name
(:func:`stop_process`: SIGTERM, a bounded wait, then SIGKILL). Every wait is
bounded: :meth:`ChildProcess.wait_until` raises :class:`HarnessTimeout` when
its time runs out, and :class:`HarnessError` at once when the process exits
first, so a wedged daemon fails the test instead of hanging the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "ChildProcess",
    "HarnessError",
    "HarnessTimeout",
    "Program",
    "die_with_parent_argv",
    "stop_process",
]


class HarnessError(RuntimeError):
    """The test harness could not do what was asked; the message carries the logs."""


class HarnessTimeout(HarnessError):
    """A bounded wait ran out."""


def die_with_parent_argv() -> list[str]:
    """A command prefix that has the kernel SIGTERM the child when this process dies.

    Keeps a killed test run (e.g. a pytest-timeout in thread mode) from
    leaving daemons behind. ``setpriv`` sets it and execs, so the child's PID
    stays the one Popen returns; no ``preexec_fn``, which is unsafe with
    threads. The signal follows the spawning *thread*: start long-lived
    processes from a thread that outlives them.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def stop_process(process: subprocess.Popen[Any], timeout: float) -> None:
    """Stop one child by its PID: SIGTERM, wait, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


class ChildProcess:
    """One process of the harness; a context manager (``start()``, then ``close()``).

    A subclass says how to :meth:`start` (calling :meth:`spawn`) and may
    extend :meth:`close` (default: :meth:`stop_child`). ``name`` names the
    process in errors; ``log_path`` is where :meth:`spawn` sends its output
    (None: nowhere) and what :meth:`log_text` reads, also after the file is
    gone, once :meth:`keep_log` has kept it.
    """

    name = "process"

    def __init__(self, log_path: Path | None) -> None:
        self.log_path = log_path
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
        self.close()

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop_child()

    # -- the child ------------------------------------------------------------------------

    def spawn(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, *, capture: bool = True
    ) -> None:
        """Start ``argv`` in a session of its own, to die with this process; its output goes
        to the log file (``capture``; False: nowhere, for a program that writes it itself)."""
        if self._process is not None:
            raise HarnessError(f"{self.name} already started")
        output = self.log_path if capture and self.log_path is not None else Path(os.devnull)
        with output.open("wb") as log:  # the child has its own descriptor; ours closes now
            self._process = subprocess.Popen(
                [*die_with_parent_argv(), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def stop_child(self, timeout: float = 5.0) -> int | None:
        """Stop the child by its PID (SIGTERM, then SIGKILL); its exit status, None if none ran."""
        process, self._process = self._process, None
        if process is None:
            return None
        stop_process(process, timeout)
        return process.returncode

    def require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise HarnessError(f"{self.name} is not running")
        return self._process

    @property
    def pid(self) -> int:
        return self.require_process().pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait_until(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float,
        what: str,
        interval: float = 0.02,
        describe: Callable[[], str] | None = None,
    ) -> None:
        """Poll ``ready()`` until it is true; :class:`HarnessTimeout` naming ``what`` after
        ``timeout`` seconds, :class:`HarnessError` at once if the child exits first. The
        messages end with ``describe()`` (default: the log)."""
        details = describe if describe is not None else self.log_text
        deadline = time.monotonic() + timeout
        while True:
            status = self.require_process().poll()
            if status is not None:
                raise HarnessError(f"{self.name} exited with {status}\n{details()}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise HarnessTimeout(f"{what} within {timeout} s\n{details()}")
            time.sleep(interval)

    # -- the log --------------------------------------------------------------------------

    def read_log(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def keep_log(self) -> None:
        """Keep the log as it is now for :meth:`log_text` (before its file is removed)."""
        if self._final_log is None:
            self._final_log = self.read_log()

    def log_text(self) -> str:
        """The process's output so far (what :meth:`keep_log` kept, once it has)."""
        return self._final_log if self._final_log is not None else self.read_log()


class Program(ChildProcess):
    """Any program as a child of the harness: ``argv``, its output in ``log_path``."""

    def __init__(
        self, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(log_path)
        self.argv = list(argv)
        self.env = env
        self.name = self.argv[0]

    def start(self) -> None:
        self.spawn(self.argv, self.env)
