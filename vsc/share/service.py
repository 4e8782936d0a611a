"""The local share service: lends this machine's readers to paired remote sessions.

Theory of operation
-------------------
``vsc share serve`` runs one :class:`ShareService`: a TLS 1.3 listener, a
PC/SC monitor thread, and one thread per connection.

* **Listener.** On loopback unless told otherwise (:data:`DEFAULT_HOST`).
  Each accepted connection gets a :class:`~vsc.share.handler.LinkHandler` in
  its own thread, admitted to the pending pool and promoted to the sessions
  once it authenticates (:mod:`vsc.share.limits`: bounded pools, per-address
  and per-peer caps, eviction of the pending); the handshake decides what it
  may do, then it answers requests and holds at most one lease, whose card a
  :class:`~vsc.share.holder.CardHolder` holds. Refusals are events, at most
  :data:`_REFUSALS_PER_MINUTE` a minute per address (then counted).
* **Monitor.** Waits for reader and card changes (``SCardGetStatusChange``),
  feeds them to the :class:`~vsc.share.broker.Broker` (stable names, states,
  leases) and tells the link holding a changed reader.
* **Leases across links.** The service knows which link holds each lease
  (:meth:`ShareService.owner`), so one link (a detach, a restarted endpoint)
  can have another end its lease and wait, bounded, until the reader is free.
  Every ending is in the event log with its reason.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Final

from .broker import Broker, Change, ChangeKind, Lease
from .events import REASON_TEXT, EventKind, EventLog, record_migration, state_text
from .handler import EndLease, LinkHandler, short
from .home import ShareHome
from .limits import Admission, Limits
from .pcsc import PcscBackend, PcscError, ReaderBackend, ReaderMonitor, Snapshot
from .protocol import DEFAULT_PORT, EndReason
from .tls import server_context
from .trust import PeerRole

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "REASON_TEXT", "ShareService", "is_loopback"]

log = logging.getLogger(__name__)

#: Where the service listens unless told: this machine only. Others are asked for by name.
DEFAULT_HOST: Final = "127.0.0.1"
_END_WAIT: Final = 5.0
_MONITOR_INTERVAL: Final = 1.0
_JOIN_TIMEOUT: Final = 10.0
_REFUSALS_PER_MINUTE: Final = 10


class ShareService:
    """Serves this machine's readers to paired endpoints. ``start``, ``stop``, ``join``."""

    def __init__(
        self,
        home: ShareHome,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        backend: ReaderBackend | None = None,
        transaction_idle: float = 0.3,
        name: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        if transaction_idle <= 0:
            raise ValueError("transaction_idle must be positive")
        self.home = home
        self.host = host
        self.port = port
        self.backend: ReaderBackend = backend if backend is not None else PcscBackend()
        self.transaction_idle = transaction_idle
        self.limits = limits if limits is not None else Limits()
        self.admission: Admission[LinkHandler] = Admission(self.limits)
        self._refusals: dict[str, tuple[float, int, int]] = {}  # host -> (since, told, untold)
        self.identity = home.identity()
        self.name = name or socket.gethostname()
        self.events = EventLog(home.events_path, "service")
        record_migration(self.events, home.trust)
        self.broker = Broker(home.name_readers)
        self.broker.remember(home.reader_names())
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._connections: set[LinkHandler] = set()
        self._owners: dict[int, LinkHandler] = {}  # lease token -> holder
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
        readers = ", ".join(
            f"{i.name} ({i.pcsc_name}): {state_text(i)}" for i in self.broker.listing()
        )
        reach = "this machine only" if is_loopback(self.host) else "open to other machines"
        self.events.record(
            EventKind.SERVING,
            f"serving on {_show(self.address[0], self.port)} ({reach}), certificate "
            f"{short(self.identity.fingerprint)}; readers: {readers or 'none'}",
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
            stamp = self.home.trust.mtime()
            if self._context is None or stamp != self._context_stamp:
                # Every pinned peer passes TLS, so that one paired for the other direction
                # only is refused by name (and logged) by its link, not by a bare alert.
                anchors = self.home.trust.anchors(PeerRole.ENDPOINT, PeerRole.SERVICE)
                trusted = self.identity.pem + anchors
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
                self._spawn(sock, address)

    def _spawn(self, sock: socket.socket, address: tuple[str, int]) -> None:
        host = str(address[0])
        connection = LinkHandler(self, sock, _show(host, address[1]))
        for evicted in self.admission.admit(connection, host):
            evicted.evict()
            self.refused(evicted.address, "evicted: too many unauthenticated connections")
        with self._lock:
            self._connections.add(connection)
        connection.thread.start()

    def forget(self, connection: LinkHandler) -> None:
        self.admission.forget(connection)
        with self._lock:
            self._connections.discard(connection)

    def refused(self, address: str, why: str) -> None:
        """Record a refusal: an event, at most ``_REFUSALS_PER_MINUTE`` a minute per host."""
        host = address.rpartition(":")[0].strip("[]")
        now = time.monotonic()
        with self._lock:
            since, told, untold = self._refusals.get(host, (now, 0, 0))
            if now - since >= 60.0:
                since, told = now, 0
            if told >= _REFUSALS_PER_MINUTE:
                self._refusals[host] = (since, told, untold + 1)
                return
            self._refusals[host] = (since, told + 1, 0)
            if len(self._refusals) > 4096:  # many addresses: forget the quiet ones
                self._refusals = {h: v for h, v in self._refusals.items() if now - v[0] < 60.0}
        more = f" ({untold} more refusals of {host} were not logged one by one)" if untold else ""
        self.events.record(EventKind.REFUSED, f"refused {address}: {why}{more}")

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

    def own(self, lease: Lease, connection: LinkHandler) -> None:
        with self._lock:
            self._owners[lease.token] = connection

    def disown(self, lease: Lease) -> None:
        with self._lock:
            self._owners.pop(lease.token, None)

    def owner(self, lease: Lease) -> LinkHandler | None:
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
        owner.notify(EndLease(lease, reason, done))
        if not done.wait(_END_WAIT):
            log.warning("%s: holder did not let go within %.0f s", lease.reader, _END_WAIT)

    def record_unshared(self, lease: Lease, reason: EndReason) -> None:
        self.record_lease(
            EventKind.UNSHARED,
            lease,
            f"{lease.reader} unshared from session {lease.session} ({REASON_TEXT[reason]})",
            reason=reason.name.lower(),
        )

    def record_lease(self, kind: EventKind, lease: Lease, message: str, **fields: str) -> None:
        """Log an event about ``lease`` (its reader, session and peer)."""
        self.events.record(
            kind,
            message,
            reader=lease.reader,
            session=lease.session,
            peer=short(lease.key.peer),
            **fields,
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a literal address or "localhost") reaches this machine only."""
    if host.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
