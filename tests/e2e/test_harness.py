"""Self-test of the end-to-end harness (vsc.testing), with a stand-in card.

The stand-in (``_stub_card.py``) echoes every APDU, so these tests pin the
harness itself: private readers only, isolation between instances, bounded
client runs, clean stops, and in-process pyscard following the active pcscd.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vsc.testing import EmulatorProcess, HarnessError, HarnessTimeout, PcscdEnv
from vsc.testing import pcscd as pcscd_module

from ._stub_card import STUB_ATR

if TYPE_CHECKING:
    from .conftest import StartEmulator

pytestmark = pytest.mark.e2e

STUB = (str(Path(__file__).with_name("_stub_card.py")),)


def test_stub_card_round_trip(
    pcscd: PcscdEnv, start_emulator: StartEmulator, tool: Callable[[str], str]
) -> None:
    tool("opensc-tool")
    start_emulator(program=STUB)
    assert pcscd.wait_for_card(pcscd.reader(0), timeout=1.0) == STUB_ATR

    # "-c default" skips OpenSC's card probing, which an echo card would confuse.
    argv = ["opensc-tool", "-c", "default", "-r", pcscd.reader(0), "-s", "00CA0102"]
    result = pcscd.run(argv)

    assert result.returncode == 0, result.stderr
    assert "Received (SW1=0x90, SW2=0x00):\n00 CA 01 02 " in result.stdout


def test_only_the_private_readers_are_listed(pcscd: PcscdEnv) -> None:
    # Neither /etc/reader.conf.d nor a USB reader of the host leaks in.
    assert pcscd.readers() == ["Virtual PCD 00 00", "Virtual PCD 00 01"]
    assert [pcscd.reader(0), pcscd.reader(1)] == pcscd.readers()


def test_two_instances_are_isolated(pcscd: PcscdEnv, start_emulator: StartEmulator) -> None:
    with PcscdEnv(friendly_name="Other PCD") as other:
        start_emulator(program=STUB)

        assert other.port not in (pcscd.port, pcscd.port + 1)
        assert other.readers() == ["Other PCD 00 00", "Other PCD 00 01"]
        assert other.wait_for_card(other.reader(0), present=False, timeout=1.0) == b""
        assert pcscd.wait_for_card(pcscd.reader(0), timeout=1.0) == STUB_ATR
        assert pcscd.readers() == ["Virtual PCD 00 00", "Virtual PCD 00 01"]


def test_subprocess_clients_see_only_their_pcscd(
    pcscd: PcscdEnv, start_emulator: StartEmulator, tool: Callable[[str], str]
) -> None:
    tool("opensc-tool")
    start_emulator(program=STUB)
    with PcscdEnv(friendly_name="Other PCD") as other:
        ours = pcscd.run(["opensc-tool", "-l"], check=True).stdout
        theirs = other.run(["opensc-tool", "-l"], check=True).stdout
        in_namespace = pcscd.run(["opensc-tool", "-l"], namespace=True, check=True).stdout

    assert "0    Yes             Virtual PCD 00 00" in ours
    assert "Other PCD" not in ours
    assert "0    No              Other PCD 00 00" in theirs
    assert "Virtual PCD" not in theirs
    assert in_namespace == ours


def test_run_kills_a_hung_client(pcscd: PcscdEnv, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(HarnessTimeout, match=r"did not finish within 0\.3 s"):
        pcscd.run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"], timeout=0.3)

    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists()


def test_run_check_reports_the_output(pcscd: PcscdEnv) -> None:
    with pytest.raises(HarnessError, match=r"exited with 3(.|\n)*oops"):
        pcscd.run(["sh", "-c", "echo oops >&2; exit 3"], check=True)


def test_stop_kills_pcscd_and_removes_its_files(e2e_available: None) -> None:
    with PcscdEnv() as env:
        pid = env.pid
        workdir = env.workdir
        assert env.socket_path.is_socket()

    assert not Path(f"/proc/{pid}").exists()
    assert not workdir.exists()
    assert not env.running
    assert isinstance(env.log_text(), str)


def test_a_dead_emulator_fails_the_wait_early(start_emulator: StartEmulator) -> None:
    with pytest.raises(HarnessError, match=r"exited with 2(.|\n)*unrecognized arguments"):
        start_emulator("--no-such-flag", program=STUB)


def test_in_process_pyscard_follows_the_active_pcscd(e2e_available: None) -> None:
    with PcscdEnv(friendly_name="A") as first, PcscdEnv(friendly_name="B") as second:
        assert first.readers() == ["A 00 00", "A 00 01"]
        assert second.readers() == ["B 00 00", "B 00 01"]
        assert first.readers() == ["A 00 00", "A 00 01"]
        assert os.environ["PCSCLITE_CSOCK_NAME"] != str(first.socket_path)


def test_emulator_process_stops_by_pid(pcscd: PcscdEnv) -> None:
    with EmulatorProcess(pcscd.vpcd_port(0), program=STUB, python=sys.executable) as card:
        pcscd.wait_for_card(pcscd.reader(0), timeout=10.0, check=card.check_running)
        pid = card.pid

    assert not Path(f"/proc/{pid}").exists()
    pcscd.wait_for_card(pcscd.reader(0), present=False, timeout=10.0)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port pair whose first port another process listens on."""
    with socket.create_server(("0.0.0.0", 0)) as taken:
        yield taken.getsockname()[1]


def test_a_taken_port_is_replaced(
    e2e_available: None, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks = iter([busy_port, busy_port])
    real_pick = pcscd_module.pick_vpcd_port
    monkeypatch.setattr(pcscd_module, "pick_vpcd_port", lambda: next(picks, None) or real_pick())

    with PcscdEnv() as env:
        assert env.port != busy_port
        assert env.readers() == ["Virtual PCD 00 00", "Virtual PCD 00 01"]


def test_a_taken_explicit_port_fails_clearly(e2e_available: None, busy_port: int) -> None:
    with pytest.raises(HarnessError, match=f"vpcd port {busy_port} is in use"):
        PcscdEnv(port=busy_port).start()


def test_user_namespace_mode(e2e_available: None, tool: Callable[[str], str]) -> None:
    # The mode a non-root user gets (unshare -r); forced here so root runs it too.
    tool("opensc-tool")
    with PcscdEnv(user_namespace=True) as env:
        card = EmulatorProcess(env.vpcd_port(0), program=STUB)
        with card:
            assert env.wait_for_card(timeout=10.0, check=card.check_running) == STUB_ATR
            outside = env.run(["opensc-tool", "-l"], check=True).stdout
            inside = env.run(["opensc-tool", "-l"], namespace=True, check=True).stdout

    assert "0    Yes             Virtual PCD 00 00" in outside
    assert inside == outside
