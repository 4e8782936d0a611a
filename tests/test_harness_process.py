"""vsc.testing.process: the harness's children are stopped by their PID and never waited
for without a bound (no pcscd needed: plain programs stand in)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from vsc.testing.process import HarnessError, HarnessTimeout, Program

IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_wait_that_runs_out_fails_instead_of_hanging(tmp_path: Path) -> None:
    with Program(["sleep", "60"], tmp_path / "log") as child:
        started = time.monotonic()
        with pytest.raises(HarnessTimeout, match=r"never ready within 0\.2 s"):
            child.wait_until(lambda: False, timeout=0.2, what="never ready")
        assert time.monotonic() - started < 5
        pid = child.pid
    assert not alive(pid)


def test_a_child_that_exits_ends_the_wait_with_its_status_and_log(tmp_path: Path) -> None:
    with Program(["sh", "-c", "echo oops; exit 3"], tmp_path / "log") as child:
        with pytest.raises(HarnessError, match=r"sh exited with 3\noops") as error:
            child.wait_until(lambda: False, timeout=30, what="never ready")
        assert not isinstance(error.value, HarnessTimeout)


def test_stop_is_by_pid_sigterm_then_sigkill(tmp_path: Path) -> None:
    polite = Program(["sleep", "60"], tmp_path / "polite.log")
    stubborn = Program([sys.executable, "-c", IGNORES_SIGTERM], tmp_path / "stubborn.log")
    with polite, stubborn:
        stubborn.wait_until(lambda: "ready" in stubborn.log_text(), timeout=30, what="ready")
        pids = polite.pid, stubborn.pid
        assert polite.stop_child(5.0) == -signal.SIGTERM
        assert stubborn.stop_child(0.3) == -signal.SIGKILL
        assert not polite.running and not stubborn.running
        assert polite.stop_child() is None  # stopping twice is harmless
    assert not any(alive(pid) for pid in pids)


def test_a_child_is_started_once(tmp_path: Path) -> None:
    child = Program(["sleep", "60"], tmp_path / "log")
    with child, pytest.raises(HarnessError, match="already started"):
        child.start()
    with pytest.raises(HarnessError, match="sleep is not running"):
        _ = child.pid
