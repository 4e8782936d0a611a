"""The vpcd front-end: ``python -m vsc.emulator`` serves virtual cards to pcscd.

vsmartcard's vpcd reader driver (loaded by pcscd) and this process talk over
TCP with the framing of :mod:`vsc.vpcd`; this module is only the socket loop
around that codec and a :class:`vsc.card.Card`. The flags follow vsmartcard's
``vicc`` (``-H``, ``-P``, ``-R``, ``-v``) plus ``--card`` and ``--slots``.

Design:

* One thread per slot. ``Card.transmit`` is synchronous and may be slow (RSA
  key generation takes seconds); with one thread per slot a slow APDU on one
  card does not stall the others (CPython switches threads every 5 ms, and
  ``cryptography`` releases the GIL in its heavy operations). A card is only
  ever touched by its own slot's thread, so cards need no locking.
* A connection is served with plain blocking calls, the fewest system calls
  per APDU: ``recv`` (vpcd sends the length and the APDU separately, so
  usually two per APDU), ``TCP_QUICKACK`` after each, one ``send``. The
  kernel bounds each call by the frame timeout (SO_RCVTIMEO/SO_SNDTIMEO);
  :meth:`Emulator.stop` (called from the SIGINT/SIGTERM handler) shuts every
  connected socket down, which ends its thread's blocking call at once.
  Connecting, accepting and backing off wait on a selector with a shared
  wake-up pipe (or the stop event) instead, so they end at once too.
* Normal mode connects to vpcd and reconnects with exponential backoff
  (0.1 s doubling to 2 s) while vpcd is absent; after a connection that did
  useful work the backoff starts over, so a pcscd restart costs ~0.1 s.
  Reversed mode (``-R``) listens and accepts vpcd's connections instead.
* The card outlives connections: its persistent state is kept across
  reconnects, and a dropped connection powers it off (vpcd treats a lost
  connection as card removal, so volatile security state must go too).
* ``--card NAME|PATH`` serves a persistent card from the card store
  (:mod:`vsc.store`, PIV through :mod:`vsc.store.piv`): every change is
  committed before its answer leaves, so a restart, a SIGTERM or a SIGKILL
  loses nothing that was answered. The protection backend is always chosen
  explicitly (``--tpm``/``VSC_TPM``, ``--key-file``/``VSC_KEY_FILE``,
  ``VSC_PASSPHRASE``, ``--insecure-plain``), never guessed. A card another
  process serves, or one sealed by another TPM or key, ends the start with
  exit status 2 and a message; cards are closed on the way out.
* The 44 ms stall: vpcd writes the length and the APDU separately with Nagle
  on, so the card side sets TCP_QUICKACK after every ``recv`` (Linux) and
  TCP_NODELAY for its own answers.
* Robustness: every command gets an answer and no answer is ever empty (both
  would wedge vpcd). A peer that breaks the framing, or stops sending in the
  middle of a frame for ``--frame-timeout`` seconds, is dropped and the slot
  reconnects; an exception while handling a frame is logged and never ends
  the loop.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from applets.echo import EchoApplet
from applets.gids import GIDS_ATR, GidsApplet
from applets.piv import PivApplet

from . import trace
from .card import DEFAULT_ATR, Card
from .lifecycle.audit import AuditLog
from .store import (
    BackendSpec,
    CardExists,
    CardNotFound,
    CardStore,
    StoredCard,
    StoreError,
    create_card,
    default_store_path,
)
from .store import open_card as open_stored_card
from .store.gids import has_gids, open_gids
from .store.piv import RECORD as PIV_RECORD
from .store.piv import open_piv
from .store.store import CARDS_DIR
from .vpcd import (
    NEED_DATA,
    ConnectionClosed,
    Event,
    GetAtr,
    RemoteProtocolError,
    VpcdConnection,
    respond,
    respond_apdu,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Backoff",
    "CardOpenError",
    "Emulator",
    "backend_from",
    "default_card",
    "main",
    "open_card",
]

# Not __name__: run with -m, that is "__main__".
log = logging.getLogger("vsc.emulator")

DEFAULT_HOST: Final = "localhost"
#: vpcd's default port (0x8C7B); a reader entry's second reader is on port + 1.
DEFAULT_PORT: Final = 35963
DEFAULT_FRAME_TIMEOUT: Final = 5.0
_CONNECT_TIMEOUT: Final = 5.0
_JOIN_TIMEOUT: Final = 10.0
_RECV_SIZE: Final = 0x10000 + 2
_SW_UNKNOWN: Final = b"\x6f\x00"


#: The card applications ``--applet`` offers.
APPLETS: Final = ("piv", "gids")


def default_card(serial: int | None = None, applet: str = "piv") -> Card:
    """A factory-default card: the applets a fresh emulator offers.

    ``applet`` chooses the card's application: ``piv`` (a YubiKey's ATR) or
    ``gids`` (an empty GIDS card with the ATR of a Windows virtual smart card).
    """
    if applet == "gids":
        card = Card(atr=GIDS_ATR)
        card.register(GidsApplet(serial=serial), default=True)
    elif applet == "piv":
        card = Card()
        card.register(PivApplet(serial=serial), default=True)
    else:
        raise ValueError(f"unknown applet {applet!r}; choose one of {', '.join(APPLETS)}")
    card.register(EchoApplet())
    return card


#: Environment variables that choose a protection backend (``--tpm`` etc. win over them).
BACKEND_ENVIRONMENT: Final = ("VSC_TPM", "VSC_KEY_FILE", "VSC_PASSPHRASE")


class CardOpenError(Exception):
    """A ``--card`` that cannot be served: the emulator says why and exits with status 2."""


def backend_from(
    *,
    tpm: str | None = None,
    key_file: str | None = None,
    insecure_plain: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> BackendSpec:
    """The protection backend of ``--card``: a flag, else exactly one of the variables.

    Never a default: a TPM only from ``--tpm``/``VSC_TPM``, nothing unprotected
    without ``--insecure-plain``.
    """
    if tpm:
        return BackendSpec.tpm(tpm)
    if key_file:
        return BackendSpec.software(key_file=key_file)
    if insecure_plain:
        return BackendSpec.plain()
    chosen = [name for name in BACKEND_ENVIRONMENT if environ.get(name)]
    if len(chosen) > 1:
        raise CardOpenError(
            f"{' and '.join(chosen)} are all set: choose one backend"
            " (or give --tpm, --key-file or --insecure-plain)"
        )
    if not chosen:
        raise CardOpenError(
            "--card needs a protection backend: --tpm TCTI (or VSC_TPM) for a TPM,"
            " --key-file PATH (or VSC_KEY_FILE) or VSC_PASSPHRASE for the software backend,"
            " or --insecure-plain for tests"
        )
    value = environ[chosen[0]]
    if chosen[0] == "VSC_TPM":
        return BackendSpec.tpm(value)
    if chosen[0] == "VSC_KEY_FILE":
        return BackendSpec.software(key_file=value)
    return BackendSpec.software(passphrase=value.encode())


def _card_location(spec: str, store: Path | None) -> tuple[Path, str]:
    """``--card`` names a card in the store, or (with a ``/``, or a leading ``.``/``~``) a path."""
    if "/" in spec or spec.startswith((".", "~")):
        path = Path(spec).expanduser().absolute()
        return path, path.name
    return CardStore(store if store is not None else default_store_path()).path_of(spec), spec


def _open_or_create(path: Path, name: str, backend: BackendSpec) -> StoredCard:
    try:
        return open_stored_card(path, backend, name=name)
    except CardNotFound:
        if path.exists():
            raise CardOpenError(f"{path} exists but is not a card") from None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        stored = create_card(path, backend, name=name)
    except CardExists:  # another process created it a moment ago
        return open_stored_card(path, backend, name=name)
    log.warning("card %r: created with factory defaults at %s", name, path)
    return stored


def _stored_applet(stored: StoredCard, applet: str | None) -> tuple[PivApplet | GidsApplet, bytes]:
    """The application of a stored card and its ATR: what it holds, else ``applet`` (PIV)."""
    held = "gids" if has_gids(stored) else "piv" if stored.get(PIV_RECORD) is not None else None
    if held is not None and applet is not None and held != applet:
        raise CardOpenError(f"card {stored.name!r} is a {held.upper()} card, not {applet.upper()}")
    if (held or applet) == "gids":
        return open_gids(stored), GIDS_ATR
    return open_piv(stored), DEFAULT_ATR


def open_card(
    spec: str, backend: BackendSpec, *, store: Path | None = None, applet: str | None = None
) -> tuple[Card, StoredCard]:
    """The persistent card ``--card PATH|NAME`` names, created factory-fresh when missing.

    A new card gets ``applet`` (PIV by default); an existing one keeps its own
    (:class:`CardOpenError` if ``applet`` names another).

    Returns the card to serve and its store handle, which the caller closes
    once no thread uses the card any more. Raises :class:`vsc.store.StoreError`
    (in use, another TPM or key, unreadable) or :class:`CardOpenError`.
    """
    path, name = _card_location(spec, store)
    stored = _open_or_create(path, name, backend)
    try:
        info = stored.backend
        if info.kind == "plain":
            log.warning("card %r: --insecure-plain: its keys and PINs are NOT protected", name)
        log.info("card %r at %s: %s", name, path, info.summary)
        card_applet, atr = _stored_applet(stored, applet)
        if path.parent.name == CARDS_DIR:
            # A card of a store: lifecycle events through its APDUs go to the store's audit
            # log (a managed card's lock and expiry are the applet's own business).
            card_applet.events = AuditLog(path.parent.parent, via="emulator").card_hook(name)
        card = Card(atr=atr)
        card.register(card_applet, default=True)
        card.register(EchoApplet())
    except BaseException:
        stored.close()
        raise
    return card, stored


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial`` seconds, doubling up to ``cap``."""

    initial: float = 0.1
    cap: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ValueError("need 0 < initial <= cap")


class _Drop(Exception):
    """End this connection (the slot then reconnects)."""


#: Linux only; elsewhere vpcd's split writes cost the delayed-ACK stall.
_QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)


def _quickack(sock: socket.socket) -> Callable[[], None]:
    """A call that sets TCP_QUICKACK on ``sock`` (a no-op where there is none).

    Linux drops out of quick-ACK mode whenever we send, hence a call after
    every recv. A partial of the bound method: no Python frame twice per APDU.
    """
    if _QUICKACK is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return _no_quickack
    return functools.partial(sock.setsockopt, socket.IPPROTO_TCP, _QUICKACK, 1)


def _no_quickack() -> None:
    return None


def _tune(sock: socket.socket, timeout: float) -> None:
    """A blocking socket whose every recv and send gives up after ``timeout`` seconds.

    The kernel bounds the calls (SO_RCVTIMEO, SO_SNDTIMEO; an expiry is
    BlockingIOError): Python's own timeout mode would poll() before every
    recv, one more system call per read on the hot path. Waits are ended
    early by :meth:`Emulator.stop` shutting the socket down.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _quickack(sock)()
    sock.setblocking(True)
    seconds = int(timeout)
    timeval = struct.pack("@ll", seconds, int((timeout - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class _Slot:
    """One card on one port, served by its own thread."""

    def __init__(self, owner: Emulator, index: int, card: Card, port: int) -> None:
        self.owner = owner
        self.index = index
        self.card = card
        self.port = port
        self.listener: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, name=f"vsc-slot-{index}", daemon=True)

    @property
    def name(self) -> str:
        return f"slot {self.index} (port {self.port})"

    def listen(self) -> None:
        self.listener = socket.create_server((self.owner.host, self.port), backlog=4)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        log.info("%s: listening on %s", self.name, self.owner.host)

    # -- the loop ---------------------------------------------------------------

    def _run(self) -> None:
        owner = self.owner
        delay = owner.backoff.initial
        while not owner.stopping:
            sock = self._open()
            if sock is not None and (self._session(sock) or self.listener is not None):
                delay = owner.backoff.initial
                continue
            # vpcd is not there, or hung up without a word: back off before trying again.
            if owner.wait_stop(delay):
                break
            delay = min(delay * 2, owner.backoff.cap)
        log.debug("%s: stopped", self.name)

    def _open(self) -> socket.socket | None:
        try:
            return self._accept() if self.listener is not None else self._connect()
        except Exception:
            log.exception("%s: cannot open a connection", self.name)
            return None

    def _session(self, sock: socket.socket) -> bool:
        """Serve one connection; whether any frame was handled."""
        handled = 0
        try:
            if self.owner.track(sock):
                handled = self._serve(sock)
        except _Drop as exc:
            log.warning("%s: dropping the connection: %s", self.name, exc)
        except Exception:
            log.exception("%s: connection failed", self.name)
        finally:
            self.owner.release(sock)
            self._power_off()
        return handled > 0

    def _power_off(self) -> None:
        try:
            self.card.power_off()
        except Exception:
            log.exception("%s: power off failed", self.name)

    def _connect(self) -> socket.socket | None:
        """Connect to vpcd; None when it is not there (yet) or we are stopping."""
        host, port = self.owner.host, self.port
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("%s: cannot resolve %s: %s", self.name, host, exc)
            return None
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            err = sock.connect_ex(address)
            if err == errno.EINPROGRESS and self.owner.wait_ready(
                sock, selectors.EVENT_WRITE, _CONNECT_TIMEOUT
            ):
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            elif err == errno.EINPROGRESS:
                err = errno.ETIMEDOUT
            if err == 0:
                log.info("%s: connected to vpcd at %s", self.name, address[0])
                return sock
            sock.close()
            if self.owner.stopping:
                return None
            log.debug("%s: connect to %s: %s", self.name, address[0], os.strerror(err))
        return None

    def _accept(self) -> socket.socket | None:
        """Accept vpcd's connection (reversed mode); None when stopping."""
        assert self.listener is not None
        if not self.owner.wait_ready(self.listener, selectors.EVENT_READ, None):
            return None
        try:
            sock, peer = self.listener.accept()
        except BlockingIOError:
            return None  # someone else's connection vanished; wait again
        sock.setblocking(False)
        log.info("%s: vpcd connected from %s", self.name, peer[0])
        return sock

    def _serve(self, sock: socket.socket) -> int:
        """Run one connection until it ends; returns the number of frames handled."""
        owner = self.owner
        _tune(sock, owner.frame_timeout)
        conn = VpcdConnection()
        card = self.card
        # Looked up once: this loop runs twice per APDU (vpcd sends length and APDU apart).
        recv, send, quickack = sock.recv, sock.send, _quickack(sock)
        handled = 0
        while True:
            # Blocking: the frame timeout is the socket's; stop() shuts the socket down.
            try:
                data = recv(_RECV_SIZE)
            except BlockingIOError:  # frame_timeout passed without a byte
                if owner.stopping:
                    return handled
                if conn.in_frame:
                    log.warning("%s: peer stalled inside a frame; dropping it", self.name)
                    return handled
                continue  # idle between frames: that is vpcd's right
            except OSError as exc:
                if not owner.stopping:
                    log.info("%s: connection lost: %s", self.name, exc)
                return handled
            if not data and owner.stopping:
                return handled  # stop() shut the socket down
            quickack()
            conn.receive_data(data)
            while True:
                try:
                    item = conn.next_apdu()  # a command comes as bare bytes: no event object
                except RemoteProtocolError as exc:
                    log.warning("%s: protocol error, dropping the connection: %s", self.name, exc)
                    return handled
                if item is NEED_DATA:
                    break
                if isinstance(item, bytes):
                    try:
                        answer: bytes | None = respond_apdu(card, item)
                    except Exception:  # the card broke its never-raises contract
                        # Not the APDU in the log: it may hold a PIN.
                        log.exception("%s: error handling a command (INS %02X)", self.name, item[1])
                        answer = _SW_UNKNOWN  # vpcd waits for an answer: never leave it waiting
                elif isinstance(item, ConnectionClosed):
                    log.info("%s: vpcd closed the connection", self.name)
                    return handled
                else:
                    answer = self._answer(item)
                handled += 1
                if answer is None:
                    continue
                frame = conn.send(answer)
                try:
                    # Blocking: one send queues the whole frame unless the peer stopped reading.
                    sent = send(frame)
                    if sent != len(frame):
                        self._send_rest(sock, frame, sent)
                except OSError as exc:
                    log.info("%s: connection lost while answering: %s", self.name, exc)
                    return handled

    def _send_rest(self, sock: socket.socket, frame: bytes, sent: int) -> None:
        """Finish a partly sent frame: the whole answer within the frame timeout, as sendall."""
        deadline = time.monotonic() + self.owner.frame_timeout
        view = memoryview(frame)[sent:]
        while view:
            if time.monotonic() > deadline:
                raise TimeoutError("the peer stopped reading our answer")
            view = view[sock.send(view) :]  # BlockingIOError: a timeout without progress

    def _answer(self, event: Event) -> bytes | None:
        """Apply a control event (commands take the bytes path in :meth:`_serve`)."""
        try:
            return respond(self.card, event)
        except Exception:
            log.exception("%s: error handling %r", self.name, event)
        # vpcd blocks until GET ATR is answered: never leave it waiting.
        if isinstance(event, GetAtr):
            raise _Drop("no ATR to answer with")
        return None


class Emulator:
    """Serves ``cards[i]`` on port ``port + i``, one thread per card.

    ``start()`` binds the listening sockets of reversed mode (so a busy port
    fails there, with OSError) and starts the threads; ``stop()`` may be
    called from a signal handler; ``join()`` waits for the threads.
    """

    def __init__(
        self,
        cards: Sequence[Card],
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        reversed: bool = False,
        frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
        backoff: Backoff | None = None,
    ) -> None:
        if not cards:
            raise ValueError("need at least one card")
        if len({id(card) for card in cards}) != len(cards):
            raise ValueError("a card can serve one slot only (cards are not thread-safe)")
        if frame_timeout <= 0:
            raise ValueError("frame_timeout must be positive")
        self.host = host
        self.reversed = reversed
        self.frame_timeout = frame_timeout
        self.backoff = backoff or Backoff()
        self._stop = threading.Event()
        # Connected sockets, shut down by stop() to end their blocking calls. An RLock:
        # stop() may run in a signal handler that interrupted stop() in the main thread.
        self._live: set[socket.socket] = set()
        self._live_lock = threading.RLock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._slots = [
            _Slot(self, i, card, port + i if port else 0) for i, card in enumerate(cards)
        ]

    @property
    def ports(self) -> list[int]:
        """The slots' ports (in reversed mode, the bound ones)."""
        return [slot.port for slot in self._slots]

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        try:
            if self.reversed:
                for slot in self._slots:
                    slot.listen()
        except OSError:
            self.close()
            raise
        for slot in self._slots:
            slot.thread.start()

    def stop(self) -> None:
        """Ask every slot to finish. Idempotent; safe in a signal handler."""
        self._stop.set()
        # OSError: closed already, or the pipe is full (a wake-up is pending anyway).
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        with self._live_lock:
            for sock in self._live:
                with contextlib.suppress(OSError):  # the peer may have gone already
                    sock.shutdown(socket.SHUT_RDWR)

    def wait(self) -> None:
        """Block until :meth:`stop` is called."""
        self._stop.wait()

    def join(self, timeout: float = _JOIN_TIMEOUT) -> bool:
        """Wait for the slot threads to end; whether they all did."""
        for slot in self._slots:
            if slot.thread.is_alive():
                slot.thread.join(timeout)
        alive = [slot.name for slot in self._slots if slot.thread.is_alive()]
        if alive:
            log.error("threads did not stop: %s", ", ".join(alive))
        return not alive

    def close(self) -> None:
        """Release the listening sockets and the wake-up pipe (after join)."""
        for slot in self._slots:
            if slot.listener is not None:
                slot.listener.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()
        self.close()

    # -- waiting, shared by the slots --------------------------------------------

    def wait_stop(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; whether we are stopping."""
        return self._stop.wait(seconds)

    def track(self, sock: socket.socket) -> bool:
        """Let :meth:`stop` end ``sock``'s blocking calls; False if stopping already."""
        with self._live_lock:
            if self._stop.is_set():
                return False
            self._live.add(sock)
            return True

    def release(self, sock: socket.socket) -> None:
        """Close a socket from :meth:`track` (under the lock: stop() never sees a reused fd)."""
        with self._live_lock:
            self._live.discard(sock)
            sock.close()

    def selector(self, sock: socket.socket, events: int) -> selectors.BaseSelector:
        """A selector watching ``sock`` for ``events`` and the wake-up pipe."""
        selector = selectors.DefaultSelector()
        selector.register(sock, events)
        selector.register(self._wake_r, selectors.EVENT_READ)
        return selector

    def ready(
        self, sock: socket.socket, selector: selectors.BaseSelector, timeout: float | None
    ) -> bool:
        """Wait until ``sock`` is ready; False on timeout or when stopping."""
        ready = selector.select(timeout)
        if self._stop.is_set():
            return False
        return any(key.fileobj is sock for key, _ in ready)

    def wait_ready(self, sock: socket.socket, events: int, timeout: float | None) -> bool:
        """One-off :meth:`ready` (connect and accept)."""
        with self.selector(sock, events) as selector:
            return self.ready(sock, selector, timeout)


# --- command line -------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vsc.emulator",
        description="Serve virtual smart cards to pcscd through vsmartcard's vpcd driver.",
        epilog=(
            "A --card is persistent: it lives in a card store (--store; created with factory "
            "defaults when missing) and every change is on disk before the card answers. Its "
            "secrets are protected by a TPM (--tpm TCTI or VSC_TPM), by a key file (--key-file "
            "or VSC_KEY_FILE) or a passphrase (VSC_PASSPHRASE) in software, or not at all "
            "(--insecure-plain, tests only); nothing is chosen for you. Slots without a --card "
            "get a factory-fresh card kept in memory only. Exit status 2: a card cannot be "
            "opened (in use by another process, sealed by another TPM or key, ...)."
        ),
    )
    parser.add_argument(
        "-H", "--host", default=DEFAULT_HOST, help="vpcd's host (-R: the address to listen on)"
    )
    parser.add_argument(
        "-P", "--port", type=int, default=DEFAULT_PORT, help=f"vpcd's port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "-R",
        "--reversed",
        action="store_true",
        help="listen on host:port and let vpcd connect to the card",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: log connections (INFO); -vv: also trace every APDU",
    )
    parser.add_argument(
        "--card",
        action="append",
        default=[],
        metavar="PATH|NAME",
        help=(
            "a persistent card: a NAME in the store or a directory PATH (with a '/'); one per "
            "slot in order (repeatable); created with factory defaults when missing"
        ),
    )
    parser.add_argument(
        "--store",
        type=Path,
        metavar="DIR",
        help="the card store for --card NAME (default: $VSC_STORE, else $XDG_DATA_HOME/vsc "
        "or ~/.local/share/vsc)",
    )
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument(
        "--tpm",
        metavar="TCTI",
        help="protect cards with this TPM, e.g. device:/dev/tpmrm0 or swtpm:path=SOCKET "
        "(default: $VSC_TPM; never a TPM found by chance)",
    )
    backend.add_argument(
        "--key-file",
        metavar="PATH",
        help="protect cards in software under this 32-byte key file, mode 0600, created for "
        "a new card (default: $VSC_KEY_FILE; a passphrase comes from $VSC_PASSPHRASE)",
    )
    backend.add_argument(
        "--insecure-plain",
        action="store_true",
        help="INSECURE, for tests: store the cards' keys and PINs unprotected",
    )
    parser.add_argument(
        "--applet",
        choices=APPLETS,
        help="the card application: piv (the default) or gids (an empty GIDS card, as a "
        "Windows virtual smart card before personalisation); for the fresh cards of slots "
        "without --card and for a --card created now (a stored card keeps its own)",
    )
    parser.add_argument(
        "--slots",
        type=int,
        metavar="N",
        help="serve N cards on ports P .. P+N-1 (a vpcd entry has 2 readers: P and P+1); "
        "default: the number of --card options, at least 1",
    )
    parser.add_argument(
        "--frame-timeout",
        type=float,
        default=DEFAULT_FRAME_TIMEOUT,
        metavar="SECONDS",
        help="drop a peer that stops sending inside a frame (default %(default)s)",
    )
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    slots: int = args.slots if args.slots is not None else max(1, len(args.card))
    if slots < 1:
        parser.error("--slots must be at least 1")
    if slots < len(args.card):
        parser.error(f"{len(args.card)} cards do not fit in {slots} slots")
    if len(set(args.card)) != len(args.card):
        parser.error("the same --card twice: a card can be in one reader only")
    lowest = 0 if args.reversed else 1
    if not lowest <= args.port or args.port + slots - 1 > 0xFFFF:
        parser.error("ports out of range")
    if args.frame_timeout <= 0:
        parser.error("--frame-timeout must be positive")
    if not args.card:
        for flag, value in (
            ("--store", args.store),
            ("--tpm", args.tpm),
            ("--key-file", args.key_file),
            ("--insecure-plain", args.insecure_plain),
        ):
            if value:
                parser.error(f"{flag} applies to persistent cards: give --card too")
    return slots


def _open_cards(args: argparse.Namespace, stored: list[StoredCard]) -> list[Card]:
    """The cards of the ``--card`` options; each store handle is appended to ``stored``."""
    if not args.card:
        return []
    backend = backend_from(tpm=args.tpm, key_file=args.key_file, insecure_plain=args.insecure_plain)
    cards = []
    for spec in args.card:
        card, handle = open_card(spec, backend, store=args.store, applet=args.applet)
        stored.append(handle)
        cards.append(card)
    return cards


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    slots = _check(parser, args)
    level = (logging.WARNING, logging.INFO)[args.verbose] if args.verbose < 2 else trace.TRACE
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # The handlers go in first, so a signal during card setup or right after start
    # still ends in a clean exit rather than a traceback or death by signal.
    emulator: Emulator | None = None
    stop_requested = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        log.info("%s: stopping", signal.Signals(signum).name)
        stop_requested = True
        if emulator is not None:
            emulator.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stored: list[StoredCard] = []
    # Threads that did not stop may still be inside a card: leave those cards open
    # (the process is ending; the kernel releases their locks, SQLite their files).
    threads_stopped = True
    try:
        try:
            cards = _open_cards(args, stored)
        except (CardOpenError, StoreError, ValueError) as exc:
            log.error("cannot serve the card: %s", exc)
            return 2
        cards += [default_card(applet=args.applet or "piv") for _ in range(slots - len(cards))]
        emulator = Emulator(
            cards,
            host=args.host,
            port=args.port,
            reversed=args.reversed,
            frame_timeout=args.frame_timeout,
        )
        if stop_requested:
            emulator.stop()
        try:
            emulator.start()
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
            return 1
        if args.reversed:
            log.info("listening on ports %s", ", ".join(map(str, emulator.ports)))
        emulator.wait()
        threads_stopped = emulator.join()
        return 0 if threads_stopped else 1
    finally:
        if emulator is not None:
            emulator.close()
        if threads_stopped:
            for handle in stored:
                handle.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
