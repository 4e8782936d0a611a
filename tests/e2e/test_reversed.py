"""Reversed mode (``-R``) through a real pcscd whose vpcd connects to the card.

In reversed mode the emulator listens and vpcd connects, so anyone who can
reach the port can connect first. These tests put such a connection in the
way of the real vpcd (one that says nothing, one that trickles a frame a
byte at a time, a vpcd that froze) and check that pcscd still gets the card.

vpcd connects to both of its readers' ports when pcscd starts, so the
emulator serves two slots; it must listen before pcscd starts (see
:class:`vsc.testing.pcscd.PcscdEnv`). vpcd waits for an answer with no
timeout of its own: a slot held by someone else means pcscd never sees the
card, and :meth:`PcscdEnv.wait_for_card` times out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from vsc.card import DEFAULT_ATR
from vsc.testing import EmulatorProcess, HarnessTimeout, PcscdEnv
from vsc.testing.pcscd import pick_vpcd_port

from .conftest import CARD_TIMEOUT

pytestmark = pytest.mark.e2e

#: The emulator's frame timeout here: short, so that the tests are quick.
FRAME_TIMEOUT = 1.0
#: A trickling peer sends a byte this often: well inside the frame timeout.
TRICKLE_EVERY = 0.25
WAIT = 10.0
HOST = "127.0.0.1"


@pytest.fixture
def reversed_emulator(e2e_available: None) -> Iterator[EmulatorProcess]:
    """``python -m vsc.emulator -R`` listening on two consecutive ports (vpcd's two readers)."""
    port = pick_vpcd_port()
    args = ("-R", "--slots", "2", "--frame-timeout", str(FRAME_TIMEOUT), "-v")
    with EmulatorProcess(port, *args, host=HOST) as emulator:
        deadline = time.monotonic() + WAIT
        while "listening on ports" not in emulator.log_text():
            emulator.check_running()
            assert time.monotonic() < deadline, emulator.log_text()
            time.sleep(0.02)
        yield emulator


@contextlib.contextmanager
def reversed_pcscd(emulator: EmulatorProcess) -> Iterator[PcscdEnv]:
    """A private pcscd whose vpcd connects to ``emulator``."""
    env = PcscdEnv(emulator.port, card_host=HOST)
    try:
        env.start()
    except HarnessTimeout as exc:
        # pcscd lists its readers only after each one's first card poll has an answer.
        raise AssertionError(
            f"vpcd never got an answer from the card\n{exc}\nemulator log:\n{emulator.log_text()}"
        ) from None
    try:
        yield env
    finally:
        env.stop()


def card_seen(env: PcscdEnv, emulator: EmulatorProcess) -> bytes:
    try:
        return env.wait_for_card(env.reader(0), timeout=CARD_TIMEOUT, check=emulator.check_running)
    except Exception as exc:
        raise AssertionError(f"{exc}\nemulator log:\n{emulator.log_text()}") from None


def assert_closed_by_the_emulator(sock: socket.socket) -> None:
    sock.settimeout(WAIT)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""


class Trickler:
    """A peer that opens a frame and then sends one byte every :data:`TRICKLE_EVERY` s."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=WAIT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cut_off = threading.Event()

    def _run(self) -> None:
        deadline = time.monotonic() + 3 * WAIT
        try:
            self.sock.sendall(b"\x00\x40")  # a 64-byte frame that never ends
            while not self._stop.wait(TRICKLE_EVERY) and time.monotonic() < deadline:
                self.sock.sendall(b"\x00")
        except OSError:
            self.cut_off.set()

    def __enter__(self) -> Trickler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self.sock.close()


def test_an_idle_connection_does_not_keep_vpcd_from_the_card(
    reversed_emulator: EmulatorProcess,
) -> None:
    squatter = socket.create_connection((HOST, reversed_emulator.port), timeout=WAIT)
    with squatter:
        squatter_port = squatter.getsockname()[1]
        with reversed_pcscd(reversed_emulator) as env:
            assert card_seen(env, reversed_emulator) == DEFAULT_ATR
            # And the card answers through vpcd: SELECT of the PIV application.
            result = env.run(
                ["opensc-tool", "-c", "default", "-r", env.reader(0), "-s", "00A4040005A000000308"]
            )
            assert "SW1=0x90, SW2=0x00" in result.stdout, result.stdout + result.stderr
        assert_closed_by_the_emulator(squatter)
    log = reversed_emulator.log_text()
    assert f"closing the connection from {HOST}:{squatter_port}: no first frame within" in log


def test_a_trickling_connection_does_not_keep_vpcd_from_the_card(
    reversed_emulator: EmulatorProcess,
) -> None:
    with Trickler(reversed_emulator.port) as trickler:
        trickler_port = trickler.sock.getsockname()[1]
        time.sleep(3 * TRICKLE_EVERY)  # it is well inside its frame when vpcd comes
        with reversed_pcscd(reversed_emulator) as env:
            assert card_seen(env, reversed_emulator) == DEFAULT_ATR
        assert trickler.cut_off.wait(WAIT), "the emulator never closed the trickling connection"
    log = reversed_emulator.log_text()
    assert (
        f"closing the connection from {HOST}:{trickler_port}: an incomplete first frame within"
        in log
    )


def test_a_fresh_vpcd_takes_over_from_a_frozen_one(reversed_emulator: EmulatorProcess) -> None:
    with reversed_pcscd(reversed_emulator) as frozen:
        assert card_seen(frozen, reversed_emulator) == DEFAULT_ATR
        os.kill(frozen.pid, signal.SIGSTOP)  # its vpcd connections stay open, and silent
        try:
            with reversed_pcscd(reversed_emulator) as fresh:
                assert card_seen(fresh, reversed_emulator) == DEFAULT_ATR
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
    log = reversed_emulator.log_text()
    assert "slot 0" in log and "takes over from the one from" in log, log
