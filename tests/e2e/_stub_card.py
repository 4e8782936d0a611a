"""A stand-in card that speaks the vpcd protocol, for the harness self-test.

It echoes every command APDU back with status 9000, so the test harness can
be checked through pcscd + vpcd without the real emulator. Same command line
as ``python -m vsc.emulator`` for the parts the tests use (``-H``, ``-P``,
``-v``, ``--slots``).
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading
import time

STUB_ATR = bytes.fromhex("3B8880010000000000000000")  # distinct from the emulator's ATR
_CONTROL_GET_ATR = 4
_CONNECT_TIMEOUT = 10.0


def _quickack(sock: socket.socket) -> None:
    # Linux resets QUICKACK after each ACK; re-arm it so vpcd's split write is not stalled.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        _quickack(sock)
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _connect(host: str, port: int) -> socket.socket:
    deadline = time.monotonic() + _CONNECT_TIMEOUT
    while True:
        try:
            return socket.create_connection((host, port), timeout=1.0)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def serve(host: str, port: int) -> None:
    sock = _connect(host, port)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        header = _recv_exact(sock, 2)
        if header is None:
            return
        (length,) = struct.unpack(">H", header)
        payload = _recv_exact(sock, length)
        if payload is None:
            return
        if len(payload) == 1:
            if payload[0] == _CONTROL_GET_ATR:
                sock.sendall(struct.pack(">H", len(STUB_ATR)) + STUB_ATR)
            continue
        response = payload + b"\x90\x00"
        sock.sendall(struct.pack(">H", len(response)) + response)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-P", "--port", type=int, required=True)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="ignored")
    parser.add_argument("--slots", type=int, default=1)
    args = parser.parse_args()
    slots = [
        threading.Thread(target=serve, args=(args.host, args.port + i), daemon=True)
        for i in range(args.slots)
    ]
    for slot in slots:
        slot.start()
    for slot in slots:
        slot.join()


if __name__ == "__main__":
    main()
