"""A TCP relay for tests of a link: it records, can flip a bit, can cut.

``TcpProxy(target)`` listens on an ephemeral port of ``listen_host`` and
relays every connection to ``target`` with one thread per direction. It keeps
what it forwarded (per direction in :attr:`recorded`, per connection in
:attr:`connections`), flips the last bit of the next chunk in a direction
whose :attr:`armed` event is set, :meth:`cut` resets every connection
the way a dropped link does (RST, no TLS close_notify), and while
:attr:`frozen` is set forwards nothing (a dead network: both ends' kernels
still accept what is sent, nothing arrives).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType
from typing import Self

UP, DOWN = "up", "down"  # client -> target, target -> client


class TcpProxy:
    def __init__(self, target: tuple[str, int], *, listen_host: str = "127.0.0.1") -> None:
        self.target = target
        self.listener = socket.create_server((listen_host, 0))
        self.listener.settimeout(0.1)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.recorded = {UP: bytearray(), DOWN: bytearray()}
        self.connections: list[tuple[bytearray, bytearray]] = []
        self.armed = {UP: threading.Event(), DOWN: threading.Event()}
        self.flipped = {UP: 0, DOWN: 0}
        self.frozen = threading.Event()
        self.accepted = 0
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                near, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            far = socket.create_connection(self.target, timeout=5.0)
            self._pairs.append((near, far))
            self.accepted += 1
            records = (bytearray(), bytearray())
            self.connections.append(records)
            for source, sink, direction, record in (
                (near, far, UP, records[0]),
                (far, near, DOWN, records[1]),
            ):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink, direction, record), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, direction: str, record: bytearray
    ) -> None:
        source.settimeout(0.1)
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                if self.frozen.is_set():
                    self._stop.wait(0.05)
                    continue
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if self.armed[direction].is_set():
                    self.armed[direction].clear()
                    data = data[:-1] + bytes([data[-1] ^ 0x01])
                    self.flipped[direction] += 1
                record += data
                self.recorded[direction] += data
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Reset every connection, both sides, without a clean close."""
        pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    # Linger 0: close sends RST, as a dropped link would.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self.listener.close()
        for thread in self._threads:
            thread.join(5.0)
