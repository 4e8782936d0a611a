"""Test doubles for the share relay: in-memory readers holding real cards, and vpcd's side.

:class:`MemoryReaders` implements :class:`vsc.share.pcsc.ReaderBackend` over
``vsc.Card`` engines, with PC/SC's sharing rules (an exclusive handle keeps
everyone else out; transactions serialize shared handles; another handle's
reset shows as SCARD_W_RESET_CARD once; a removed card makes old handles
fail). :class:`FakeVpcd` plays the vpcd driver's side of the card socket,
like pcscd would drive it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

from applets.echo import ECHO_AID, EchoApplet
from vsc.card import Card
from vsc.share.pcsc import (
    CardGone,
    CardHandle,
    CardWasReset,
    Disposition,
    LocallyBusy,
    ReaderMonitor,
    Snapshot,
)
from vsc.share.protocol import ShareMode

SELECT_ECHO = bytes.fromhex("00A4040006") + ECHO_AID


def echo_card() -> Card:
    card = Card()
    card.register(EchoApplet(), default=True)
    return card


@dataclass(eq=False)
class _Slot:
    card: Card | None = None
    generation: int = 0  # bumps on insert/remove
    resets: int = 0  # bumps on every reset
    exclusive: object | None = None
    transaction: object | None = None
    handles: set[object] = field(default_factory=set)


class MemoryReaders:
    """Readers by name; ``insert``/``remove`` cards; PC/SC-like handles and monitor."""

    def __init__(self, *names: str) -> None:
        self.lock = threading.Condition()
        self.slots = {name: _Slot() for name in names}
        self.version = 0
        self.transmitted: list[tuple[str, bytes]] = []  # (reader, apdu), every handle

    def insert(self, reader: str, card: Card) -> None:
        with self.lock:
            slot = self.slots[reader]
            slot.card = card
            slot.generation += 1
            slot.exclusive = slot.transaction = None
            self._changed()

    def remove(self, reader: str) -> None:
        with self.lock:
            slot = self.slots[reader]
            slot.card = None
            slot.generation += 1
            slot.exclusive = slot.transaction = None
            self._changed()

    def unplug(self, reader: str) -> None:
        with self.lock:
            del self.slots[reader]
            self._changed()

    def _changed(self) -> None:
        self.version += 1
        self.lock.notify_all()

    def snapshot(self) -> dict[str, bytes | None]:
        with self.lock:
            return {
                name: (slot.card.atr if slot.card is not None else None)
                for name, slot in self.slots.items()
            }

    # -- ReaderBackend ------------------------------------------------------------------

    def monitor(self) -> ReaderMonitor:
        return _Monitor(self)

    def connect(self, reader: str, mode: ShareMode) -> CardHandle:
        return MemoryHandle(self, reader, mode)


class _Monitor:
    def __init__(self, readers: MemoryReaders) -> None:
        self.readers = readers
        self.seen = -1
        self.cancelled = False

    def wait(self, timeout: float) -> Snapshot:
        lock = self.readers.lock
        with lock:
            lock.wait_for(
                lambda: self.readers.version != self.seen or self.cancelled, timeout=timeout
            )
            self.cancelled = False
            self.seen = self.readers.version
        return self.readers.snapshot()

    def cancel(self) -> None:
        with self.readers.lock:
            self.cancelled = True
            self.readers.lock.notify_all()

    def close(self) -> None:
        pass


class MemoryHandle:
    """A PC/SC card handle on a :class:`MemoryReaders` slot."""

    def __init__(self, readers: MemoryReaders, reader: str, mode: ShareMode) -> None:
        self.readers = readers
        self.reader = reader
        self.mode = mode
        with readers.lock:
            slot = self._slot()
            if slot.card is None:
                raise CardGone("no card")
            if slot.exclusive is not None or (mode is ShareMode.EXCLUSIVE and slot.handles):
                raise LocallyBusy("sharing violation")
            self.generation = slot.generation
            self.resets = slot.resets
            slot.handles.add(self)
            if mode is ShareMode.EXCLUSIVE:
                slot.exclusive = self
            self._atr = slot.card.atr if slot.card.powered else slot.card.power_on()
        self.closed = False

    def _slot(self) -> _Slot:
        slot = self.readers.slots.get(self.reader)
        if slot is None:
            raise CardGone("reader gone")
        return slot

    def _card(self) -> tuple[_Slot, Card]:
        slot = self._slot()
        if slot.card is None or slot.generation != self.generation:
            raise CardGone("card removed")
        if slot.resets != self.resets:
            self.resets = slot.resets
            raise CardWasReset("card reset by another handle")
        return slot, slot.card

    @property
    def atr(self) -> bytes:
        return self._atr

    def transmit(self, apdu: bytes) -> bytes:
        with self.readers.lock:
            slot, card = self._card()
            # Wait out another handle's transaction (bounded, like a test should be).
            deadline = time.monotonic() + 5.0
            while slot.transaction not in (None, self):
                if not self.readers.lock.wait(max(0.0, deadline - time.monotonic())):
                    raise LocallyBusy("transaction held too long")
                slot, card = self._card()
            self.readers.transmitted.append((self.reader, apdu))
            return card.transmit(apdu)

    def reconnect(self, disposition: Disposition) -> bytes:
        with self.readers.lock:
            slot, card = self._card()
            if disposition is not Disposition.LEAVE_CARD:
                card.power_off()
                self._atr = card.power_on()
                slot.resets += 1
                self.resets = slot.resets
            return self._atr

    def begin_transaction(self) -> None:
        with self.readers.lock:
            slot, _ = self._card()
            ok = self.readers.lock.wait_for(lambda: slot.transaction in (None, self), timeout=5.0)
            if not ok:
                raise LocallyBusy("transaction held too long")
            slot.transaction = self

    def end_transaction(self) -> None:
        with self.readers.lock:
            slot = self.readers.slots.get(self.reader)
            if slot is not None and slot.transaction is self:
                slot.transaction = None
                self.readers.lock.notify_all()

    def close(self) -> None:
        with self.readers.lock:
            self.closed = True
            slot = self.readers.slots.get(self.reader)
            if slot is None:
                return
            slot.handles.discard(self)
            if slot.exclusive is self:
                slot.exclusive = None
            if slot.transaction is self:
                slot.transaction = None
            self.readers.lock.notify_all()


# --- vpcd's side ---------------------------------------------------------------------------


class FakeVpcd:
    """Listens like vpcd does for one reader slot and drives the card socket like pcscd."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.sock: socket.socket | None = None
        self.connections = 0

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def accept(self, timeout: float = 5.0) -> None:
        """Wait for the endpoint to connect (= a card appears)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(5.0)
            self.sock = sock
            self.connections += 1
            return
        raise TimeoutError("the endpoint did not connect to vpcd")

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until the endpoint drops the connection (= the card is gone)."""
        assert self.sock is not None
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            data = b""
        assert data == b"", f"expected a closed socket, got {data!r}"
        self.sock.close()
        self.sock = None

    def _send(self, payload: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(len(payload).to_bytes(2, "big") + payload)

    def _recv(self) -> bytes:
        assert self.sock is not None
        header = self._exactly(2)
        return self._exactly(int.from_bytes(header, "big"))

    def _exactly(self, count: int) -> bytes:
        assert self.sock is not None
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the endpoint closed the vpcd socket")
            data += chunk
        return data

    def power_on(self) -> None:
        self._send(b"\x01")

    def power_off(self) -> None:
        self._send(b"\x00")

    def reset(self) -> None:
        self._send(b"\x02")

    def get_atr(self) -> bytes:
        self._send(b"\x04")
        return self._recv()

    def transmit(self, apdu: bytes) -> bytes:
        self._send(apdu)
        return self._recv()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
        self.listener.close()
