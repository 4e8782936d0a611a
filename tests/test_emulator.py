"""The vpcd socket front-end, against a stand-in that plays vpcd's side.

No pcscd here: :class:`FakeVpcd` listens on 127.0.0.1 (normal mode) or
connects to the emulator (reversed mode) and speaks the wire protocol of
:mod:`vsc.vpcd` directly. Every socket operation and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from applets.echo import ECHO_AID
from vsc.apdu import CommandApdu
from vsc.applet import Applet, command
from vsc.card import DEFAULT_ATR, Card
from vsc.emulator import Backoff, Emulator, default_card, main
from vsc.emulator.slot import _tune

TIMEOUT = 10.0  # upper bound of every wait; the tests never rely on it being reached
FRAME_TIMEOUT = 0.3
FAST = Backoff(initial=0.01, cap=0.05)
ROOT = Path(__file__).resolve().parent.parent

SELECT_ECHO = bytes([0x00, 0xA4, 0x04, 0x00, len(ECHO_AID)]) + ECHO_AID
OK = b"\x90\x00"


def echo(data: bytes) -> bytes:
    return bytes([0x00, 0x01, 0x00, 0x00, len(data)]) + data


# --- the stand-in ---------------------------------------------------------------------------


class Peer:
    """vpcd's end of one connection."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock

    def close(self) -> None:
        self.sock.close()

    def send_frame(self, payload: bytes, *, bytewise: bool = False) -> None:
        data = len(payload).to_bytes(2, "big") + payload
        if not bytewise:
            self.sock.sendall(data)
            return
        for i in range(len(data)):
            self.sock.sendall(data[i : i + 1])
            time.sleep(0.001)  # let each byte leave as its own segment

    def recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError(f"EOF after {len(data)} of {n} bytes")
            data += chunk
        return data

    def read_frame(self) -> bytes:
        length = int.from_bytes(self.recv_exactly(2), "big")
        assert length > 0, "the emulator sent an empty frame"
        return self.recv_exactly(length)

    def control(self, code: int) -> None:
        self.send_frame(bytes([code]))

    def atr(self) -> bytes:
        self.control(0x04)
        return self.read_frame()

    def transmit(self, apdu: bytes, *, bytewise: bool = False) -> bytes:
        self.send_frame(apdu, bytewise=bytewise)
        return self.read_frame()

    def assert_dropped(self) -> None:
        """The emulator closed this connection (EOF, or a reset)."""
        with contextlib.suppress(ConnectionResetError):
            assert self.sock.recv(1) == b""

    def assert_silent(self) -> None:
        """Nothing arrives for a moment (for messages that get no answer)."""
        self.sock.settimeout(0.2)
        try:
            with pytest.raises(TimeoutError):
                self.sock.recv(1)
        finally:
            self.sock.settimeout(TIMEOUT)


class FakeVpcd:
    """A listening socket playing vpcd in normal mode."""

    def __init__(self, port: int = 0) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(TIMEOUT)
        self.port: int = self.server.getsockname()[1]

    def accept(self) -> Peer:
        sock, _ = self.server.accept()
        return Peer(sock)

    def close(self) -> None:
        self.server.close()


@contextlib.contextmanager
def fake_vpcd(port: int = 0) -> Iterator[FakeVpcd]:
    vpcd = FakeVpcd(port)
    try:
        yield vpcd
    finally:
        vpcd.close()


@contextlib.contextmanager
def running(cards: list[Card], port: int, *, reversed: bool = False) -> Iterator[Emulator]:
    emulator = Emulator(
        cards,
        host="127.0.0.1",
        port=port,
        reversed=reversed,
        frame_timeout=FRAME_TIMEOUT,
        backoff=FAST,
    )
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
        stopped = emulator.join(TIMEOUT)
        emulator.close()
        assert stopped, "slot threads did not stop"


def free_port_pair() -> tuple[socket.socket, socket.socket]:
    """Two listening sockets on consecutive ports, P and P+1."""
    for _ in range(50):
        first = socket.create_server(("127.0.0.1", 0))
        port = first.getsockname()[1]
        if port < 0xFFFF:
            try:
                return first, socket.create_server(("127.0.0.1", port + 1))
            except OSError:
                pass
        first.close()
    raise RuntimeError("no two consecutive free ports")


def unused_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


# --- test applets ---------------------------------------------------------------------------


class CounterApplet(Applet[None]):
    """Persistent state the emulator must keep across reconnects."""

    aid = bytes.fromhex("F076736300FE")

    def __init__(self) -> None:
        self.count = 0

    def new_session(self) -> None:
        return None

    @command(0x10)
    def bump(self, apdu: CommandApdu, session: None) -> bytes:
        self.count += 1
        return bytes([self.count])


SELECT_COUNTER = bytes([0x00, 0xA4, 0x04, 0x00, 6]) + CounterApplet.aid
BUMP = b"\x00\x10\x00\x00"


class GateApplet(Applet[None]):
    """INS 20 blocks until the test opens the gate: a slow APDU."""

    aid = bytes.fromhex("F076736300FD")

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def new_session(self) -> None:
        return None

    @command(0x20)
    def wait(self, apdu: CommandApdu, session: None) -> bytes:
        self.entered.set()
        if not self.gate.wait(TIMEOUT):
            raise TimeoutError("the test never opened the gate")
        return b"\x01"


class ExplodingCard(Card):
    """A card whose engine raises, against the contract, on chosen inputs."""

    atr_fails = False

    def transmit(self, apdu: bytes) -> bytes:
        if apdu.startswith(b"\xee"):
            raise RuntimeError("boom")
        return super().transmit(apdu)

    @property
    def atr(self) -> bytes:
        if self.atr_fails:
            raise RuntimeError("no ATR")
        return super().atr


# --- normal mode ----------------------------------------------------------------------------


def test_power_on_atr_and_apdu_round_trip() -> None:
    with fake_vpcd() as vpcd, running([default_card()], vpcd.port):
        peer = vpcd.accept()
        peer.control(0x01)  # power on: no answer
        assert peer.atr() == DEFAULT_ATR
        assert peer.transmit(SELECT_ECHO) == OK
        assert peer.transmit(echo(b"hello")) == b"hello" + OK
        peer.control(0x02)  # reset: no answer; drops the selection
        peer.assert_silent()
        assert peer.transmit(echo(b"x")) != b"x" + OK
        peer.control(0x00)  # power off: no answer
        peer.assert_silent()
        peer.close()


def test_frames_split_into_single_bytes() -> None:
    with fake_vpcd() as vpcd, running([default_card()], vpcd.port):
        peer = vpcd.accept()
        peer.send_frame(b"\x04", bytewise=True)
        assert peer.read_frame() == DEFAULT_ATR
        assert peer.transmit(SELECT_ECHO, bytewise=True) == OK
        assert peer.transmit(echo(bytes(range(40))), bytewise=True) == bytes(range(40)) + OK
        peer.close()


def test_long_response_in_one_frame() -> None:
    with fake_vpcd() as vpcd, running([default_card()], vpcd.port):
        peer = vpcd.accept()
        assert peer.transmit(SELECT_ECHO) == OK
        answer = peer.transmit(bytes.fromhex("0002FFFD000000"))  # extended Le, 65533 bytes
        assert len(answer) == 0xFFFF
        assert answer[:4] == b"\x00\x01\x02\x03"
        assert answer[-2:] == OK
        peer.close()


def test_unknown_control_code_is_ignored_and_the_connection_survives() -> None:
    with fake_vpcd() as vpcd, running([default_card()], vpcd.port):
        peer = vpcd.accept()
        peer.control(0x03)
        peer.assert_silent()
        assert peer.atr() == DEFAULT_ATR
        peer.close()


def test_waits_for_vpcd_and_connects_once_it_listens() -> None:
    port = unused_port()
    with running([default_card()], port) as emulator:
        time.sleep(0.2)  # nothing listens yet: the slot backs off and retries
        assert emulator.ports == [port]
        with fake_vpcd(port) as vpcd:
            peer = vpcd.accept()
            assert peer.atr() == DEFAULT_ATR
            peer.close()


def test_peer_vanishing_mid_apdu_reconnects_keeping_the_card() -> None:
    card = Card([CounterApplet()])
    with fake_vpcd() as vpcd, running([card], vpcd.port):
        peer = vpcd.accept()
        assert peer.transmit(SELECT_COUNTER) == OK
        assert peer.transmit(BUMP) == b"\x01" + OK
        peer.sock.sendall(b"\x00\x05\x00\x10")  # half an APDU, then vpcd is gone
        peer.close()

        peer = vpcd.accept()
        # The drop powered the card off (vpcd: card removed), so the selection is gone...
        assert not card.powered
        assert peer.transmit(BUMP) != b"\x02" + OK
        # ...but the card's persistent state is the same card's.
        assert peer.transmit(SELECT_COUNTER) == OK
        assert peer.transmit(BUMP) == b"\x02" + OK
        peer.close()


def test_peer_closing_between_frames_reconnects() -> None:
    with fake_vpcd() as vpcd, running([default_card()], vpcd.port):
        for _ in range(3):
            peer = vpcd.accept()
            assert peer.atr() == DEFAULT_ATR
            peer.close()


def test_zero_length_frame_drops_the_connection_and_reconnects() -> None:
    with fake_vpcd() as vpcd, running([default_card()], vpcd.port):
        peer = vpcd.accept()
        peer.sock.sendall(b"\x00\x00")
        peer.assert_dropped()
        peer.close()
        peer = vpcd.accept()
        assert peer.atr() == DEFAULT_ATR
        peer.close()


def test_garbage_then_close_reconnects() -> None:
    with fake_vpcd() as vpcd, running([default_card()], vpcd.port):
        peer = vpcd.accept()
        peer.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        peer.close()
        peer = vpcd.accept()
        assert peer.atr() == DEFAULT_ATR
        peer.close()


def test_oversized_length_with_a_stalled_peer_is_dropped() -> None:
    with fake_vpcd() as vpcd, running([default_card()], vpcd.port):
        peer = vpcd.accept()
        # Claims 65535 bytes, sends 3 and goes quiet: no hang, the emulator drops it.
        peer.sock.sendall(b"\xff\xff\x00\xa4\x04")
        peer.assert_dropped()
        peer.close()
        peer = vpcd.accept()
        assert peer.atr() == DEFAULT_ATR
        peer.close()


def trickle(sock: socket.socket, data: bytes, every: float) -> bool:
    """Send ``data`` a byte every ``every`` s; whether the emulator cut us off first."""
    for i in range(len(data)):
        try:
            sock.sendall(data[i : i + 1])
        except OSError:
            return True
        time.sleep(every)
    return False


def test_a_frame_trickled_a_byte_at_a_time_is_dropped_when_its_time_is_up() -> None:
    # Each byte comes well within the frame timeout; the frame as a whole does not.
    with fake_vpcd() as vpcd, running([default_card()], vpcd.port):
        peer = vpcd.accept()
        assert peer.atr() == DEFAULT_ATR
        started = time.monotonic()
        frame = b"\x00\x40" + bytes(0x40)
        assert trickle(peer.sock, frame, FRAME_TIMEOUT / 6), "the whole trickled frame was read"
        assert time.monotonic() - started < 10 * FRAME_TIMEOUT
        peer.close()
        peer = vpcd.accept()  # the slot reconnects and serves again
        assert peer.atr() == DEFAULT_ATR
        peer.close()


def test_exception_in_the_card_answers_6f00_and_the_loop_lives_on() -> None:
    card = ExplodingCard([])
    with fake_vpcd() as vpcd, running([card], vpcd.port):
        peer = vpcd.accept()
        assert peer.transmit(b"\xee\x00\x00\x00") == b"\x6f\x00"
        assert peer.atr() == DEFAULT_ATR
        peer.close()


def test_exception_answering_get_atr_drops_and_reconnects() -> None:
    card = ExplodingCard([])
    card.atr_fails = True
    with fake_vpcd() as vpcd, running([card], vpcd.port):
        peer = vpcd.accept()
        peer.control(0x04)
        peer.assert_dropped()  # no answer would wedge vpcd; a drop is card removal
        peer.close()
        card.atr_fails = False
        peer = vpcd.accept()
        assert peer.atr() == DEFAULT_ATR
        peer.close()


def test_stop_ends_a_read_waiting_for_vpcd() -> None:
    # A frame timeout far beyond the join's bound: only stop() itself can end the wait.
    with fake_vpcd() as vpcd:
        emulator = Emulator([default_card()], host="127.0.0.1", port=vpcd.port, frame_timeout=3600)
        emulator.start()
        try:
            peer = vpcd.accept()
            assert peer.atr() == DEFAULT_ATR  # the slot is now blocked reading the next frame
            emulator.stop()
            assert emulator.join(TIMEOUT), "a slot thread kept waiting for vpcd"
            peer.assert_dropped()
            peer.close()
        finally:
            emulator.stop()
            emulator.join(TIMEOUT)
            emulator.close()


def test_peer_that_stops_reading_answers_is_dropped_and_reconnects() -> None:
    with fake_vpcd() as vpcd, running([default_card()], vpcd.port):
        peer = vpcd.accept()
        assert peer.transmit(SELECT_ECHO) == OK
        # Ask for 64 KB answers and never read them: once the socket buffers are full
        # the emulator's send is stuck, and the frame timeout ends the connection.
        long_answer = bytes.fromhex("0002FFFD000000")
        with contextlib.suppress(OSError):  # the emulator may drop us while we still write
            for _ in range(400):
                peer.send_frame(long_answer)
        second = vpcd.accept()
        assert second.atr() == DEFAULT_ATR
        second.close()
        peer.close()


# --- several slots --------------------------------------------------------------------------


def test_two_slots_on_consecutive_ports_with_separate_cards() -> None:
    first, second = free_port_pair()
    port = first.getsockname()[1]
    first.settimeout(TIMEOUT)
    second.settimeout(TIMEOUT)
    cards = [Card([CounterApplet()]), Card([CounterApplet()])]
    try:
        with running(cards, port) as emulator:
            assert emulator.ports == [port, port + 1]
            peer0, peer1 = Peer(first.accept()[0]), Peer(second.accept()[0])
            for peer in (peer0, peer1):
                assert peer.transmit(SELECT_COUNTER) == OK
            assert peer0.transmit(BUMP) == b"\x01" + OK
            assert peer0.transmit(BUMP) == b"\x02" + OK
            assert peer1.transmit(BUMP) == b"\x01" + OK
            peer0.close()
            peer1.close()
    finally:
        first.close()
        second.close()


def test_a_slow_apdu_on_one_slot_does_not_block_the_other() -> None:
    first, second = free_port_pair()
    port = first.getsockname()[1]
    first.settimeout(TIMEOUT)
    second.settimeout(TIMEOUT)
    gate = GateApplet()
    try:
        with running([Card([gate]), default_card()], port):
            slow, fast = Peer(first.accept()[0]), Peer(second.accept()[0])
            assert slow.transmit(bytes([0x00, 0xA4, 0x04, 0x00, 6]) + gate.aid) == OK
            slow.send_frame(b"\x00\x20\x00\x00")
            assert gate.entered.wait(TIMEOUT)
            # Slot 0 is stuck inside its card; slot 1 still answers.
            assert fast.atr() == DEFAULT_ATR
            assert fast.transmit(SELECT_ECHO) == OK
            gate.gate.set()
            assert slow.read_frame() == b"\x01" + OK
            slow.close()
            fast.close()
    finally:
        gate.gate.set()
        first.close()
        second.close()


# --- reversed mode ----------------------------------------------------------------------------


def test_reversed_mode_accepts_vpcd_and_keeps_the_card_across_connections() -> None:
    card = Card([CounterApplet()])
    with running([card], 0, reversed=True) as emulator:
        (port,) = emulator.ports
        assert port != 0
        for expected in (1, 2):
            peer = Peer(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
            peer.control(0x01)
            assert peer.atr() == DEFAULT_ATR
            assert peer.transmit(SELECT_COUNTER) == OK
            assert peer.transmit(BUMP) == bytes([expected]) + OK
            peer.close()


def test_reversed_mode_drops_garbage_and_accepts_again() -> None:
    with running([default_card()], 0, reversed=True) as emulator:
        (port,) = emulator.ports
        peer = Peer(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
        peer.sock.sendall(b"\x00\x00")
        peer.assert_dropped()
        peer.close()
        peer = Peer(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
        assert peer.atr() == DEFAULT_ATR
        peer.close()


def connect(port: int) -> Peer:
    return Peer(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))


def test_reversed_mode_a_silent_or_trickling_newcomer_does_not_hold_the_slot() -> None:
    with running([default_card()], 0, reversed=True) as emulator:
        (port,) = emulator.ports
        silent = connect(port)
        trickling = connect(port)
        trickling.sock.sendall(b"\x00")  # half a length, then nothing
        vpcd = connect(port)
        assert vpcd.atr() == DEFAULT_ATR  # served at once, past the two before it
        assert vpcd.transmit(SELECT_ECHO) == OK
        silent.assert_dropped()  # each within the frame timeout of its arrival
        trickling.assert_dropped()
        for peer in (silent, trickling, vpcd):
            peer.close()


def test_reversed_mode_a_fresh_connection_takes_over_from_a_quiet_one() -> None:
    with running([default_card()], 0, reversed=True) as emulator:
        (port,) = emulator.ports
        stale = connect(port)
        assert stale.atr() == DEFAULT_ATR
        fresh = connect(port)  # the stale one has said nothing since
        assert fresh.atr() == DEFAULT_ATR
        stale.assert_dropped()
        assert fresh.transmit(SELECT_ECHO) == OK
        stale.close()
        fresh.close()


def test_reversed_mode_a_busy_connection_keeps_its_slot() -> None:
    gate = GateApplet()
    with running([Card([gate])], 0, reversed=True) as emulator:
        (port,) = emulator.ports
        busy = connect(port)
        assert busy.transmit(bytes([0x00, 0xA4, 0x04, 0x00, 6]) + gate.aid) == OK
        busy.send_frame(b"\x00\x20\x00\x00")  # a slow command: not quiet, being answered
        assert gate.entered.wait(TIMEOUT)
        newcomer = connect(port)
        newcomer.control(0x04)
        time.sleep(3 * FRAME_TIMEOUT)  # no takeover while the card is answering
        gate.gate.set()
        assert busy.read_frame() == b"\x01" + OK
        busy.close()  # the newcomer is served once the busy one is done
        assert newcomer.read_frame() == DEFAULT_ATR
        newcomer.close()


def test_reversed_mode_two_slots() -> None:
    with running([default_card(), default_card()], 0, reversed=True) as emulator:
        assert len(set(emulator.ports)) == 2
        for port in emulator.ports:
            peer = Peer(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
            assert peer.atr() == DEFAULT_ATR
            peer.close()


def test_reversed_mode_busy_port_fails_at_start() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        emulator = Emulator([default_card()], host="127.0.0.1", port=port, reversed=True)
        with pytest.raises(OSError):
            emulator.start()


# --- pieces ---------------------------------------------------------------------------------------


def test_tune_sets_nodelay_and_bounds_every_call() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=TIMEOUT)
        peer, _ = server.accept()
        with client, peer:
            _tune(client, 0.05)
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            # A silent peer ends a read, and a peer that never reads ends a write, with
            # an error instead of a hang (the emulator then drops the connection).
            with pytest.raises(OSError):
                client.recv(1)
            with pytest.raises(OSError):
                client.sendall(bytes(64 << 20))


def test_emulator_rejects_a_card_in_two_slots() -> None:
    card = default_card()
    with pytest.raises(ValueError, match="one slot"):
        Emulator([card, card])
    with pytest.raises(ValueError):
        Emulator([])


@pytest.mark.parametrize(
    "argv",
    [
        ["--slots", "0"],
        ["--card", "a", "--card", "b", "--slots", "1"],
        ["--card", "a", "--card", "a"],
        ["-P", "0"],
        ["-P", "65535", "--slots", "2"],
        ["--frame-timeout", "0"],
    ],
)
def test_bad_command_lines(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


# --- the process: signals and logging ----------------------------------------------------------


@contextlib.contextmanager
def emulator_process(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsc.emulator", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)


def stop_cleanly(proc: subprocess.Popen[str], sig: signal.Signals) -> str:
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    return stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_connected_exits_0(sig: signal.Signals) -> None:
    with fake_vpcd() as vpcd, emulator_process("-H", "127.0.0.1", "-P", str(vpcd.port)) as proc:
        peer = vpcd.accept()
        assert peer.atr() == DEFAULT_ATR
        stop_cleanly(proc, sig)
        peer.assert_dropped()  # the socket was closed on the way out
        peer.close()


def test_sigterm_while_vpcd_is_gone_exits_0() -> None:
    with (
        fake_vpcd() as vpcd,
        emulator_process("-H", "127.0.0.1", "-P", str(vpcd.port), "-v") as proc,
    ):
        peer = vpcd.accept()
        assert peer.atr() == DEFAULT_ATR  # the emulator is up and serving
        peer.close()
        vpcd.close()  # ...and now retries against a closed port
        stderr = stop_cleanly(proc, signal.SIGTERM)
    assert "connected to vpcd" in stderr
    assert "SIGTERM: stopping" in stderr
    assert "vsc.emulator" in stderr


def test_reversed_process_and_apdu_trace() -> None:
    port = unused_port()
    with emulator_process("-R", "-H", "127.0.0.1", "-P", str(port), "-vv") as proc:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, "the emulator exited"
                assert time.monotonic() < deadline, "the emulator never listened"
                time.sleep(0.05)
        peer = Peer(sock)
        assert peer.transmit(SELECT_ECHO) == OK
        peer.close()
        stderr = stop_cleanly(proc, signal.SIGTERM)
    assert "TRACE" in stderr
    assert "00 A4 04 00 06 F0 76 73 63 00 01" in stderr


def test_reversed_process_busy_port_exits_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with emulator_process("-R", "-H", "127.0.0.1", "-P", str(port)) as proc:
            _, stderr = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 1
            assert "cannot listen" in stderr
