"""The local share service: lends this machine's readers to paired remote sessions.

Theory of operation
-------------------
``vsc share serve`` runs one :class:`ShareService`: a TLS 1.3 listener, a
PC/SC monitor thread, and one thread per connection.

* **Monitor.** Waits for reader and card changes (``SCardGetStatusChange``),
  feeds them to the :class:`~vsc.share.broker.Broker` (stable names, states,
  leases) and tells the connection holding a changed reader.
* **Connections.** The handshake decides what a connection may do: a pinned
  peer's certificate -> a remote session; this service's own certificate ->
  the local user's CLI (may detach anything); no certificate -> pairing only
  (and only while a code is pending, and closed after 30 s idle). Any other
  certificate fails the handshake. A session says HELLO (its name and its endpoint's instance),
  may LIST_READERS and ATTACH one reader (attaching a reader its own session
  holds moves the share to this link: that endpoint restarted, or its old link
  died unnoticed); then POWER_ON/OFF, RESET and
  TRANSMIT go to that reader's card, and CARD_INSERTED / CARD_REMOVED /
  DETACHED events come back.
* **Holding the card.** Exclusive mode connects with SCARD_SHARE_EXCLUSIVE
  for as long as the card is in and attached: local applications get a
  sharing violation meanwhile. Shared mode connects with SCARD_SHARE_SHARED
  and wraps each burst of APDUs in SCardBeginTransaction /
  SCardEndTransaction; the transaction ends after ``transaction_idle``
  seconds without an APDU, or at a power event, so local applications get
  their turn between the remote user's command sequences.
* **Power.** The remote reader's power on and reset become a cold
  (exclusive) or warm (shared) reset of the real card when it was used since
  its last reset, so the remote side's power cycle really clears the card's
  volatile state (PIN verified, applet selected); power off only marks that.
* **Endings.** A lease ends on DETACH (from its session's peer, or from the
  local CLI), on END (the endpoint detaching, its user logging out, the
  endpoint stopping), on an ATTACH of the same reader by a new instance of the
  same session's endpoint (it restarted), when the link drops, when the reader is unplugged,
  and when the service stops. The holder closes its card connection before
  the reader is free again, so the next exclusive attach does not race it.
  Every ending is in the event log with its reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Final

from cryptography import x509

from .broker import Broker, Change, ChangeKind, InUse, Lease, SessionKey, UnknownReader
from .events import EventKind, EventLog
from .home import ShareHome, fingerprint, format_fingerprint
from .link import LinkClosed, LinkSocket
from .masking import ApduTrace
from .pairing import PairingError, PairingServer
from .pcsc import (
    CardGone,
    CardHandle,
    CardWasReset,
    Disposition,
    LocallyBusy,
    PcscBackend,
    PcscError,
    ReaderBackend,
    ReaderMonitor,
    Snapshot,
)
from .protocol import (
    PROTOCOL_VERSION,
    Atr,
    Attach,
    Attached,
    CardInserted,
    CardRemoved,
    ConnectionClosed,
    Detach,
    Detached,
    End,
    EndReason,
    Error,
    ErrorCode,
    Hello,
    ListReaders,
    Message,
    Ok,
    Paired,
    PairProof,
    PairRequest,
    PowerOff,
    PowerOn,
    Readers,
    Reply,
    Reset,
    Response,
    Role,
    ShareMode,
    Transmit,
    Welcome,
)
from .tls import peer_certificate, server_context, tune

__all__ = ["DEFAULT_PORT", "REASON_TEXT", "ShareService"]

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 35990
_HANDSHAKE_TIMEOUT: Final = 10.0
_SEND_TIMEOUT: Final = 10.0
_END_WAIT: Final = 5.0
_RETRY_CARD: Final = 0.5
_MONITOR_INTERVAL: Final = 1.0
_JOIN_TIMEOUT: Final = 10.0
_MAX_CONNECTIONS: Final = 64
_PAIRING_IDLE: Final = 30.0

REASON_TEXT: Final = {
    EndReason.UNKNOWN: "for an unknown reason",
    EndReason.DETACH: "detached",
    EndReason.LOGOUT: "the remote user logged out",
    EndReason.RESTART: "the endpoint restarted",
    EndReason.SHUTDOWN: "stopped",
    EndReason.CONNECTION_LOST: "the link was lost",
    EndReason.READER_GONE: "the reader was removed",
}


def short(fingerprint: bytes) -> str:
    return format_fingerprint(fingerprint, 4)


@dataclass(frozen=True, slots=True)
class _EndLease:
    """Ask a connection to end its lease; ``done`` is set when the reader is free."""

    lease: Lease
    reason: EndReason
    done: threading.Event


_Notice = Change | _EndLease


class ShareService:
    """Serves this machine's readers to paired endpoints. ``start``, ``stop``, ``join``."""

    def __init__(
        self,
        home: ShareHome,
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        backend: ReaderBackend | None = None,
        transaction_idle: float = 0.3,
        name: str | None = None,
    ) -> None:
        if transaction_idle <= 0:
            raise ValueError("transaction_idle must be positive")
        self.home = home
        self.host = host
        self.port = port
        self.backend: ReaderBackend = backend if backend is not None else PcscBackend()
        self.transaction_idle = transaction_idle
        self.identity = home.identity()
        self.name = name or socket.gethostname()
        self.events = EventLog(home.events_path, "service")
        self.broker = Broker(home.name_readers)
        self.broker.remember(home.reader_names())
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._owners: dict[int, _Connection] = {}  # lease token -> holder
        self._context: ssl.SSLContext | None = None
        self._context_stamp = -1.0
        self._monitor: ReaderMonitor | None = None

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (after :meth:`start`)."""
        if self._listener is None:
            return self.host, self.port
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        """Read the readers once, bind the listener (OSError if taken), start the threads."""
        self._monitor = self._open_monitor()
        snapshot = self._first_snapshot()
        self._apply(self.broker.update(snapshot), initial=True)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.create_server((self.host, self.port), family=family, backlog=16)
        self._listener.setblocking(False)
        self.port = self.address[1]
        for target, label in ((self._accept_loop, "accept"), (self._monitor_loop, "monitor")):
            thread = threading.Thread(target=target, name=f"share-{label}", daemon=True)
            self._threads.append(thread)
            thread.start()
        readers = ", ".join(f"{i.name} ({i.pcsc_name})" for i in self.broker.listing()) or "none"
        self.events.record(
            EventKind.SERVING,
            f"serving on {self.address[0]}:{self.port}, certificate "
            f"{short(self.identity.fingerprint)}; readers: {readers}",
            port=self.port,
        )

    def stop(self) -> None:
        """Ask everything to finish. Idempotent; safe from a signal handler."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._monitor is not None:
            self._monitor.cancel()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.wake()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    def join(self, timeout: float = _JOIN_TIMEOUT) -> bool:
        """Wait for all threads; whether they all ended. Closes the listener."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        alive += [c.thread.name for c in connections if c.thread.is_alive()]
        if self._listener is not None:
            self._listener.close()
        if self._monitor is not None and not any(
            t.name == "share-monitor" for t in self._threads if t.is_alive()
        ):
            self._monitor.close()
            self._monitor = None
        if not alive:
            self._wake_r.close()
            self._wake_w.close()
        self.events.record(EventKind.STOPPED, "stopped")
        if alive:
            log.error("threads did not stop: %s", ", ".join(alive))
        return not alive

    def __enter__(self) -> ShareService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()

    # -- TLS ------------------------------------------------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        """The server context, rebuilt when the pinned peers change."""
        with self._lock:
            stamp = self.home.peers_mtime()
            if self._context is None or stamp != self._context_stamp:
                trusted = "".join([self.identity.pem, *(p.pem for p in self.home.peers())])
                self._context = server_context(self.identity, trusted)
                self._context_stamp = stamp
            return self._context

    # -- threads ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.stopping:
                selector.select()
                if self.stopping:
                    break
                try:
                    sock, address = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.error("accept: %s; pausing", exc)
                        self._stop.wait(0.5)
                    continue
                self._spawn(sock, f"{address[0]}:{address[1]}")

    def _spawn(self, sock: socket.socket, address: str) -> None:
        with self._lock:
            if len(self._connections) >= _MAX_CONNECTIONS:
                sock.close()
                log.warning("refusing %s: too many connections", address)
                return
            connection = _Connection(self, sock, address)
            self._connections.add(connection)
        connection.thread.start()

    def forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _open_monitor(self) -> ReaderMonitor | None:
        try:
            return self.backend.monitor()
        except PcscError as exc:
            log.warning("cannot reach PC/SC yet (%s); retrying", exc)
            return None

    def _first_snapshot(self) -> Snapshot:
        if self._monitor is None:
            return {}
        try:
            return self._monitor.wait(0.0)
        except PcscError as exc:
            log.warning("reader monitor: %s; retrying", exc)
            return {}

    def _monitor_loop(self) -> None:
        delay = _MONITOR_INTERVAL
        while not self.stopping:
            monitor = self._monitor or self._open_monitor()
            self._monitor = monitor
            if monitor is None:
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, 10.0)
                continue
            try:
                snapshot = monitor.wait(_MONITOR_INTERVAL)
                delay = _MONITOR_INTERVAL
            except PcscError as exc:
                # pcscd restarting or gone: its readers are gone too (and their shares end).
                log.warning("reader monitor: %s", exc)
                self._monitor = None
                monitor.close()
                snapshot = {}
            except Exception:
                log.exception("reader monitor failed")
                if self._stop.wait(delay):
                    break
                continue
            if not self.stopping:
                self._apply(self.broker.update(snapshot))

    def _apply(self, changes: list[Change], *, initial: bool = False) -> None:
        for change in changes:
            if not initial:
                self._record_change(change)
            if change.lease is not None:
                owner = self.owner(change.lease)
                if owner is not None:
                    owner.notify(change)

    def _record_change(self, change: Change) -> None:
        reader, session = change.reader, change.lease.session if change.lease else None
        match change.kind:
            case ChangeKind.CARD_INSERTED:
                message = f"card inserted in {reader}"
                kind = EventKind.CARD_INSERTED
            case ChangeKind.CARD_REMOVED:
                message = f"card removed from {reader}"
                kind = EventKind.CARD_REMOVED
            case ChangeKind.READER_ADDED:
                message = f"{reader} connected ({change.pcsc_name})"
                kind = EventKind.READER_ADDED
            case ChangeKind.READER_REMOVED:
                message = f"{reader} disconnected ({change.pcsc_name})"
                kind = EventKind.READER_REMOVED
        self.events.record(kind, message, reader=reader, session=session)

    # -- leases across connections ---------------------------------------------------------

    def own(self, lease: Lease, connection: _Connection) -> None:
        with self._lock:
            self._owners[lease.token] = connection

    def disown(self, lease: Lease) -> None:
        with self._lock:
            self._owners.pop(lease.token, None)

    def owner(self, lease: Lease) -> _Connection | None:
        with self._lock:
            return self._owners.get(lease.token)

    def end_lease(self, lease: Lease, reason: EndReason) -> None:
        """Have the lease's holder end it (and wait, bounded, until the reader is free)."""
        owner = self.owner(lease)
        if owner is None:
            if self.broker.release(lease):
                self.record_unshared(lease, reason)
            return
        done = threading.Event()
        owner.notify(_EndLease(lease, reason, done))
        if not done.wait(_END_WAIT):
            log.warning("%s: holder did not let go within %.0f s", lease.reader, _END_WAIT)

    def record_unshared(self, lease: Lease, reason: EndReason) -> None:
        self.events.record(
            EventKind.UNSHARED,
            f"{lease.reader} unshared from session {lease.session} ({REASON_TEXT[reason]})",
            reader=lease.reader,
            session=lease.session,
            peer=short(lease.key.peer),
            reason=reason.name.lower(),
        )


class _Refused(Exception):
    """Close this connection after the reply."""


class _Connection:
    """One link: handshake, then requests and events until it ends. Runs in its own thread."""

    def __init__(self, service: ShareService, sock: socket.socket, address: str) -> None:
        self.service = service
        self.raw = sock
        self.address = address
        self.thread = threading.Thread(target=self._run, name=f"share-{address}", daemon=True)
        self._notices: queue.SimpleQueue[_Notice] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self.link: LinkSocket | None = None
        self.peer = b""  # fingerprint; b"" until authenticated
        self.admin = False
        self.key: SessionKey | None = None
        self.instance = b""
        self.pairing: PairingServer | None = None
        self.pairing_started = False
        self.paired = False
        self.pairing_name = ""
        # The attachment (at most one per connection).
        self.lease: Lease | None = None
        self.card: CardHandle | None = None
        self.fresh = False  # the card is untouched since its last reset
        self.in_transaction = False
        self.last_use = 0.0
        self.retry_at: float | None = None
        self.idle_deadline: float | None = None  # unauthenticated links must pair promptly
        self.trace = ApduTrace(address)

    # -- called from other threads ----------------------------------------------------------

    def notify(self, notice: _Notice) -> None:
        self._notices.put(notice)
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            link = self._handshake()
            if link is not None:
                self.link = link
                self._serve(link)
        except LinkClosed as exc:
            log.info("%s: %s", self.address, exc)
        except Exception:
            log.exception("%s: connection failed", self.address)
        finally:
            self._finish()

    def _handshake(self) -> LinkSocket | None:
        service = self.service
        tls: ssl.SSLSocket | None = None
        try:
            tune(self.raw)
            tls = service.tls_context().wrap_socket(
                self.raw, server_side=True, do_handshake_on_connect=False
            )
            tls.settimeout(_HANDSHAKE_TIMEOUT)
            tls.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            if tls is not None:  # it owns the descriptor now
                tls.close()
            self._refuse(f"TLS handshake failed: {exc}")
            return None
        certificate = peer_certificate(tls)
        if certificate is not None:
            self.peer = fingerprint(certificate)
            self.admin = self.peer == service.identity.fingerprint
            if not self.admin and service.home.find_peer(self.peer) is None:
                # Unpinned since the context was built (vsc share unpair): refuse.
                self._refuse(f"certificate {short(self.peer)} is not paired")
                tls.close()
                return None
        log.debug("%s: TLS %s, peer %s", self.address, tls.version(), short(self.peer) or "none")
        if not self.peer:
            self.idle_deadline = time.monotonic() + _PAIRING_IDLE
        return LinkSocket(tls, Role.SERVICE)

    def _refuse(self, why: str) -> None:
        self.service.events.record(EventKind.REFUSED, f"refused {self.address}: {why}")

    def _serve(self, link: LinkSocket) -> None:
        service = self.service
        with selectors.DefaultSelector() as selector:
            selector.register(link.sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not service.stopping:
                if not link.sock.pending():
                    selector.select(self._timeout())
                self._drain_wake()
                self._run_notices(link)
                for item in link.receive():
                    if isinstance(item, ConnectionClosed):
                        return
                    try:
                        reply = self._handle(item)
                    except _Refused as refusal:
                        link.send(Error(ErrorCode.NOT_AUTHORIZED, str(refusal)), _SEND_TIMEOUT)
                        return
                    link.send(reply, _SEND_TIMEOUT)
                    if self.pairing_over(reply):
                        return  # a pairing connection does one thing, once
                if self.idle_deadline is not None and time.monotonic() > self.idle_deadline:
                    self._refuse("unauthenticated link idle; closing it")
                    return
                self._run_timers(link)
            if self.lease is not None:
                self._end(EndReason.SHUTDOWN, link)

    def pairing_over(self, reply: Reply) -> bool:
        return self.pairing_started and isinstance(reply, Paired | Error)

    def _timeout(self) -> float | None:
        now = time.monotonic()
        deadlines = []
        if self.in_transaction:
            deadlines.append(self.last_use + self.service.transaction_idle)
        if self.retry_at is not None:
            deadlines.append(self.retry_at)
        if self.idle_deadline is not None:
            deadlines.append(self.idle_deadline)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.setblocking(False)
            while self._wake_r.recv(256):
                pass

    def _finish(self) -> None:
        if self.pairing is not None and not self.paired:
            self.service.events.record(
                EventKind.PAIRING_FAILED,
                f"pairing with {self.address} did not complete (a wrong code?)",
            )
        if self.lease is not None:
            self._end(EndReason.CONNECTION_LOST, None)
        # Anyone still waiting on us gets released.
        while True:
            try:
                notice = self._notices.get_nowait()
            except queue.Empty:
                break
            if isinstance(notice, _EndLease):
                notice.done.set()
        if self.link is not None:
            self.link.close()
        else:
            with contextlib.suppress(OSError):
                self.raw.close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        self.service.forget(self)

    # -- requests -------------------------------------------------------------------------------

    def _handle(self, message: Message) -> Reply:
        match message:
            case PairRequest():
                return self._pair_request(message)
            case PairProof():
                return self._pair_proof(message)
        if not self.peer:
            self._refuse(f"unauthenticated peer sent {type(message).__name__}")
            raise _Refused("not paired: this service only pairs with unauthenticated peers")
        match message:
            case Hello():
                return self._hello(message)
            case Detach():
                return self._detach(message)
        if self.key is None:
            return Error(ErrorCode.PROTOCOL, "say HELLO first")
        match message:
            case ListReaders():
                return Readers(self.service.broker.listing())
            case Attach():
                return self._attach(message)
            case End(reason):
                count = int(self.lease is not None)
                if self.lease is not None:
                    self._end(reason, None)
                return Ok(count)
        if self.lease is None:
            return Error(ErrorCode.NOT_ATTACHED, "attach a reader first")
        return self._card_request(message)

    def _pair_request(self, request: PairRequest) -> Reply:
        service = self.service
        if self.pairing_started:
            return Error(ErrorCode.PROTOCOL, "pairing already started")
        self.pairing_started = True
        code = service.home.take_pairing_code()
        if code is None:
            self._refuse("pairing attempt, but no pairing code is pending")
            return Error(
                ErrorCode.PAIRING_FAILED,
                "no pairing code is pending on the service (run `vsc share pair` there)",
            )
        try:
            x509.load_der_x509_certificate(request.certificate)
        except ValueError:
            return Error(ErrorCode.PAIRING_FAILED, "not an X.509 certificate")
        self.pairing_name = request.name or self.address
        self.pairing = PairingServer(code, service.identity.certificate)
        challenge = self.pairing.challenge(request)
        return dataclasses.replace(challenge, name=service.name)

    def _pair_proof(self, proof: PairProof) -> Reply:
        service = self.service
        if self.pairing is None or not self.pairing.peer_certificate:
            return Error(ErrorCode.PROTOCOL, "PAIR_PROOF before PAIR_REQUEST")
        try:
            certificate = self.pairing.verify(proof)
        except PairingError:
            return Error(ErrorCode.PAIRING_FAILED, "wrong pairing code")
        peer = service.home.pin(certificate, self.pairing_name, self.address.rpartition(":")[0])
        self.paired = True
        service.events.record(
            EventKind.PAIRED,
            f"paired with {peer.name} (certificate {short(peer.fingerprint)})",
            peer=short(peer.fingerprint),
        )
        return Paired()

    def _hello(self, hello: Hello) -> Reply:
        service = self.service
        if hello.version != PROTOCOL_VERSION:
            return Error(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {hello.version}; this service speaks {PROTOCOL_VERSION}",
            )
        if self.key is not None:
            return Error(ErrorCode.PROTOCOL, "HELLO twice")
        self.key = SessionKey(self.peer, hello.session)
        self.instance = hello.instance
        return Welcome(service.name)

    def _detach(self, detach: Detach) -> Reply:
        service = self.service
        peer = None if self.admin else self.peer
        leases = service.broker.leases(peer=peer, session=detach.session, reader=detach.reader)
        for lease in leases:
            if lease == self.lease:
                self._end(EndReason.DETACH, self.link)
            else:
                service.end_lease(lease, EndReason.DETACH)
        return Ok(len(leases))

    def _attach(self, attach: Attach) -> Reply:
        service = self.service
        assert self.key is not None
        if self.lease is not None:
            return Error(ErrorCode.PROTOCOL, f"this link holds {self.lease.reader} already")
        holder = service.broker.holder(attach.reader)
        if holder is not None and holder.key == self.key:
            # Our own session holds it: its endpoint restarted (a new instance), or our link
            # dropped without the service noticing yet (same instance). Move the share here.
            restarted = holder.instance != self.instance
            service.end_lease(holder, EndReason.RESTART if restarted else EndReason.CONNECTION_LOST)
        try:
            lease = service.broker.attach(attach.reader, self.key, attach.mode, self.instance)
        except InUse as exc:
            return Error(ErrorCode.IN_USE, f"{exc.lease.reader} is shared in another session")
        except UnknownReader as exc:
            return Error(ErrorCode.UNKNOWN_READER, str(exc))
        self.lease = lease
        service.own(lease, self)
        try:
            atr = self._connect_card(retry=False)
        except LocallyBusy:
            self.lease = None
            service.disown(lease)
            service.broker.release(lease)
            return Error(
                ErrorCode.LOCALLY_BUSY,
                f"{lease.reader}: a local application is using the card (close it, or attach "
                "in shared mode)",
            )
        mode = lease.mode.name.lower()
        service.events.record(
            EventKind.SHARED,
            f"{lease.reader} shared into session {lease.session} ({mode})",
            reader=lease.reader,
            session=lease.session,
            peer=short(lease.key.peer),
            mode=mode,
        )
        return Attached(atr or b"")

    # -- the card ---------------------------------------------------------------------------------

    def _connect_card(self, *, retry: bool = True) -> bytes | None:
        """Connect to the leased reader's card if one is in; its ATR, or None."""
        lease = self.lease
        assert lease is not None
        self.retry_at = None
        if self.card is not None:
            return self.card.atr
        if self.service.broker.atr(lease.reader) is None:
            return None
        try:
            self.card = self.service.backend.connect(lease.pcsc_name, lease.mode)
        except CardGone:
            return None
        except LocallyBusy:
            if not retry:
                raise
            log.info("%s: a local application holds the card; retrying", lease.reader)
            self.retry_at = time.monotonic() + _RETRY_CARD
            return None
        except PcscError as exc:
            log.warning("%s: cannot connect to the card: %s", lease.reader, exc)
            self.retry_at = time.monotonic() + _RETRY_CARD
            return None
        self.fresh = True
        self.in_transaction = False
        return self.card.atr

    def _drop_card(self) -> None:
        card, self.card = self.card, None
        if card is None:
            return
        if self.in_transaction:
            with contextlib.suppress(PcscError):
                card.end_transaction()
        self.in_transaction = False
        card.close()

    def _end_transaction(self) -> None:
        if self.in_transaction and self.card is not None:
            self.in_transaction = False
            try:
                self.card.end_transaction()
            except PcscError as exc:
                log.debug("end transaction: %s", exc)

    def _card_request(self, message: Message) -> Reply:
        lease = self.lease
        assert lease is not None
        if self.card is None and self._connect_card() is None:
            return Error(ErrorCode.NO_CARD, f"no card in {lease.reader}")
        card = self.card
        assert card is not None
        try:
            match message:
                case Transmit(apdu):
                    return self._transmit(card, apdu)
                case PowerOn():
                    self._end_transaction()
                    self.trace.restart()
                    if not self.fresh:
                        cold = lease.mode is ShareMode.EXCLUSIVE
                        card.reconnect(Disposition.UNPOWER_CARD if cold else Disposition.RESET_CARD)
                        self.fresh = True
                    return Atr(card.atr)
                case PowerOff():
                    self._end_transaction()
                    return Ok()
                case Reset():
                    self._end_transaction()
                    self.trace.restart()
                    if not self.fresh:
                        card.reconnect(Disposition.RESET_CARD)
                        self.fresh = True
                    return Atr(card.atr)
        except CardGone:
            self._drop_card()
            self.retry_at = time.monotonic() + _RETRY_CARD
            return Error(ErrorCode.NO_CARD, f"the card left {lease.reader}")
        except CardWasReset:
            self.trace.restart()
            # Another application reset the shared card: our state on it is gone. Take the
            # reset, and let the endpoint show the remote side a card removal.
            self.in_transaction = False
            with contextlib.suppress(PcscError):
                card.reconnect(Disposition.LEAVE_CARD)
            self.fresh = True
            return Error(ErrorCode.CARD_RESET, "another application reset the card")
        except PcscError as exc:
            log.warning("%s: %s", lease.reader, exc)
            return Error(ErrorCode.CARD_ERROR, str(exc))
        return Error(ErrorCode.PROTOCOL, f"unexpected {type(message).__name__}")

    def _transmit(self, card: CardHandle, apdu: bytes) -> Reply:
        assert self.lease is not None
        if self.lease.mode is ShareMode.SHARED and not self.in_transaction:
            card.begin_transaction()
            self.in_transaction = True
        self.fresh = False
        response = card.transmit(apdu)
        self.last_use = time.monotonic()
        self.trace.exchange(apdu, response)
        if len(response) < 2:
            return Error(ErrorCode.CARD_ERROR, "the reader returned no status word")
        return Response(response)

    # -- notices and timers --------------------------------------------------------------------

    def _run_notices(self, link: LinkSocket) -> None:
        while True:
            try:
                notice = self._notices.get_nowait()
            except queue.Empty:
                return
            if isinstance(notice, _EndLease):
                if notice.lease == self.lease:
                    self._end(notice.reason, link)
                notice.done.set()
            elif notice.lease == self.lease:
                self._card_change(notice, link)

    def _card_change(self, change: Change, link: LinkSocket) -> None:
        match change.kind:
            case ChangeKind.CARD_REMOVED:
                self._drop_card()
                link.send(CardRemoved(), _SEND_TIMEOUT)
            case ChangeKind.CARD_INSERTED:
                self._drop_card()
                atr = self._connect_card()
                if atr is not None:
                    link.send(CardInserted(atr), _SEND_TIMEOUT)
            case ChangeKind.READER_REMOVED:
                self._end(EndReason.READER_GONE, link)

    def _run_timers(self, link: LinkSocket) -> None:
        now = time.monotonic()
        if self.in_transaction and now >= self.last_use + self.service.transaction_idle:
            self._end_transaction()
        if self.retry_at is not None and now >= self.retry_at and self.lease is not None:
            atr = self._connect_card()
            if atr is not None:
                link.send(CardInserted(atr), _SEND_TIMEOUT)

    def _end(self, reason: EndReason, link: LinkSocket | None) -> None:
        """End this connection's lease: let go of the card, free the reader, log, tell."""
        lease, self.lease = self.lease, None
        if lease is None:
            return
        self._drop_card()
        self.retry_at = None
        service = self.service
        service.disown(lease)
        if service.broker.release(lease):
            service.record_unshared(lease, reason)
        if link is not None:  # None: the link is gone, nobody to tell
            with contextlib.suppress(LinkClosed):
                link.send(Detached(reason), _SEND_TIMEOUT)
