"""Cards for the end-to-end benchmarks: ``python -m benchmarks.vpcd_card KIND -H HOST -P PORT``.

* ``bare``: the path limit. A bare-bones vpcd client with no engine at all,
  just the framing, ``TCP_QUICKACK`` after every ``recv`` and ``TCP_NODELAY``:
  what pcscd + vpcd + the socket can carry, measured with the same client.
  With ``--replay FILE`` (lines ``COMMAND-HEX ANSWER-HEX``) it answers those
  commands with the recorded bytes, so a reference exchange moves exactly the
  bytes of the card under test; any other command gets itself plus ``9000``.
* ``piv``: vsc's own front-end (:class:`vsc.emulator.Emulator`, the code
  behind ``python -m vsc.emulator``) serving a PIV card provisioned like the
  engine benchmarks' (keys, certificate, CHUID).
* ``bare-piv``: the same PIV card behind the ``bare`` loop instead of the
  front-end: path limit plus engine, so the front-end's own share shows.

(vsc's emulator with the echo applet is plain ``python -m vsc.emulator``.)
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType

BARE_ATR = bytes.fromhex("3B8880010000000000000000")
_GET_ATR = 4
_CONNECT_TIMEOUT = 10.0


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        # vpcd writes length and body separately with Nagle on: ACK at once.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        if not chunk:
            return None
        buf += chunk
    return buf


def load_replay(path: str) -> dict[bytes, bytes]:
    """The ``--replay`` file: command -> recorded answer."""
    answers = {}
    with open(path, encoding="ascii") as lines:
        for line in lines:
            if line.strip():
                command, answer = line.split()
                answers[bytes.fromhex(command)] = bytes.fromhex(answer)
    return answers


def serve_bare(
    host: str,
    port: int,
    transmit: Callable[[bytes], bytes] | None = None,
    atr: bytes = BARE_ATR,
    replay: dict[bytes, bytes] | None = None,
) -> None:
    """The bare loop; answers ``transmit(command)`` if given, else from ``replay``, else
    ``command + 9000``."""
    recorded = (replay or {}).get
    deadline = time.monotonic() + _CONNECT_TIMEOUT
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=1.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with sock:
        while True:
            header = _recv_exact(sock, 2)
            if header is None:
                return
            payload = _recv_exact(sock, int.from_bytes(header, "big"))
            if payload is None:
                return
            if len(payload) == 1:  # control code: only GET ATR is answered
                if payload[0] == _GET_ATR:
                    sock.sendall(len(atr).to_bytes(2, "big") + atr)
                continue
            # Never an empty frame: Card.transmit always answers at least a status word.
            if transmit is not None:
                answer = transmit(payload)
            else:  # a dictionary look-up, no engine
                answer = recorded(payload) or payload + b"\x90\x00"
            sock.sendall(len(answer).to_bytes(2, "big") + answer)


def serve_piv(host: str, port: int) -> int:
    from vsc.emulator import Emulator

    from .fixtures import key_set, piv_card

    card, _ = piv_card(key_set())
    card.power_off()  # vpcd powers it on
    emulator = Emulator([card], host=host, port=port)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        emulator.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    emulator.start()
    emulator.wait()
    clean = emulator.join()
    emulator.close()
    return 0 if clean else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vpcd_card", description=__doc__)
    parser.add_argument("kind", choices=["bare", "bare-piv", "piv"])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-P", "--port", type=int, required=True)
    parser.add_argument("--replay", metavar="FILE", help="bare: recorded answers to replay")
    args = parser.parse_args()
    if args.kind in ("bare", "bare-piv"):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        if args.kind == "bare":
            replay = load_replay(args.replay) if args.replay else None
            serve_bare(args.host, args.port, replay=replay)
        else:
            from .fixtures import key_set, piv_card

            card, _ = piv_card(key_set())
            serve_bare(args.host, args.port, card.transmit, card.atr)
        return 0
    return serve_piv(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
