"""One link on the share service's side: handshake, then requests and events until it ends.

Theory of operation
-------------------
The service (:mod:`vsc.share.service`) gives each accepted connection a
:class:`LinkHandler` and its own thread.

* **Handshake.** It decides what the link may do: a pinned endpoint's
  certificate -> a remote session; the service's own certificate -> the
  local user's CLI (may detach anything); no certificate -> pairing only (and
  only while a code is pending); a peer pinned for the other direction only
  -> refused by name at its first request. Any other certificate fails the
  handshake. Until it is authenticated the link is in the service's pending
  pool, where a flood of newcomers may evict it (:mod:`.limits`).
* **Deadlines.** Every wait is bounded as a whole (:class:`~.limits.Limits`):
  the handshake, the first message, a pairing, an idle session, and the
  silence of an attached endpoint, whose keepalive (PING) proves it alive;
  a frozen or vanished endpoint frees its reader when its silence runs out.
* **Requests.** A session says HELLO (its name and its endpoint's instance),
  may LIST_READERS and ATTACH one reader (attaching a reader its own session
  holds moves the share to this link: that endpoint restarted, or its old
  link died unnoticed); then POWER_ON/OFF, RESET and TRANSMIT go to that
  reader's card through a :class:`~.holder.CardHolder`, and CARD_INSERTED /
  CARD_REMOVED / DETACHED events come back.
* **Notices** from other threads (a card change the monitor saw, another
  link ending this one's lease) arrive in a queue, with a wake-up socket
  pair so the link's selector sees them.
* **Endings.** The lease ends on DETACH, END, a newer instance of the same
  session attaching the reader, the link dropping, the reader leaving, and
  the service stopping; the holder lets go of the card before the reader is
  free again, so the next exclusive attach does not race it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from cryptography import x509

from .broker import Change, ChangeKind, InUse, Lease, SessionKey, UnknownReader
from .events import EventKind
from .holder import CardHolder
from .link import LinkClosed, LinkSocket, handshake
from .masking import ApduTrace
from .pairing import PairingError, PairingServer
from .pcsc import LocallyBusy, PcscError
from .protocol import (
    PROTOCOL_VERSION,
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
    Ping,
    ReaderInfo,
    Readers,
    ReaderState,
    Reply,
    Role,
    ShareMode,
    Welcome,
)
from .tls import peer_certificate, tune
from .trust import ROLE_TEXT, PeerRole, fingerprint, format_fingerprint

if TYPE_CHECKING:
    from .service import ShareService

__all__ = ["EndLease", "LinkHandler", "Notice", "short"]

log = logging.getLogger(__name__)

_SEND_TIMEOUT: Final = 10.0


def short(value: bytes) -> str:
    """The first four groups of a fingerprint, for log lines."""
    return format_fingerprint(value, 4)


@dataclass(frozen=True, slots=True)
class EndLease:
    """Ask a link to end its lease; ``done`` is set when the reader is free."""

    lease: Lease
    reason: EndReason
    done: threading.Event


Notice = Change | EndLease


class _Refused(Exception):
    """Close this connection after the reply."""


class LinkHandler:
    """One link: handshake, then requests and events until it ends. Runs in its own thread."""

    def __init__(self, service: ShareService, sock: socket.socket, address: str) -> None:
        self.service = service
        self.raw = sock
        self.address = address
        self.thread = threading.Thread(target=self._run, name=f"share-{address}", daemon=True)
        self._notices: queue.SimpleQueue[Notice] = queue.SimpleQueue()
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
        # The attachment (at most one per link) and its card.
        self.lease: Lease | None = None
        self.holder: CardHolder | None = None
        self.refusal = ""  # a pinned peer without the endpoint role: why it is refused
        self.trace = ApduTrace(address)
        # Deadlines (monotonic): accepted, handshake done, last message in or reply out.
        self.accepted_at = time.monotonic()
        self.ready_at = 0.0
        self.last_heard = 0.0
        self.heard = False
        self.evicted = False
        # The socket another thread may shut down (eviction), never after we closed it.
        self._sock: socket.socket | None = sock
        self._sock_lock = threading.Lock()
        self._closed = False

    # -- called from other threads ----------------------------------------------------------

    def notify(self, notice: Notice) -> None:
        self._notices.put(notice)
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def evict(self) -> None:
        """End this connection from another thread: the pending pool needs its place."""
        with self._sock_lock:
            self.evicted = True
            if self._sock is not None and not self._closed:
                with contextlib.suppress(OSError):
                    # The plain socket's shutdown(2): wakes our thread, leaves TLS state alone.
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

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
        limits = service.limits
        try:
            tune(self.raw)
            tls = service.tls_context().wrap_socket(
                self.raw, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ssl.SSLError) as exc:
            self._refuse(f"TLS failed: {exc}")
            return None
        with self._sock_lock:
            self._sock = tls  # it owns the descriptor now
            if self.evicted:
                return None
        try:
            handshake(tls, self.accepted_at + limits.handshake)
        except TimeoutError:
            self._refuse(f"TLS handshake not done within {limits.handshake:g} s")
            return None
        except (OSError, ssl.SSLError) as exc:
            if not self.evicted:
                self._refuse(f"TLS handshake failed: {exc}")
            return None
        self.ready_at = time.monotonic()
        certificate = peer_certificate(tls)
        if certificate is not None:
            self.peer = fingerprint(certificate)
            self.admin = self.peer == service.identity.fingerprint
            peer = None if self.admin else service.home.trust.find(self.peer)
            if not self.admin and peer is None:
                # Unpinned since the context was built (vsc share unpair): refuse.
                self._refuse(f"certificate {short(self.peer)} is not paired")
                return None
            if peer is not None and not peer.may(PeerRole.ENDPOINT):
                # Pinned for the other direction only: it may not use our readers. Say so
                # to its first request, then close.
                granted = " and ".join(ROLE_TEXT[r] for r in peer.grants) or "nothing"
                self.refusal = (
                    f"{service.name} does not lend its readers to this machine: it paired "
                    f"with it as {granted} (pair again from the other side to allow it)"
                )
                self._refuse(
                    f"{peer.describe()} is paired as {granted}, not as an endpoint that may "
                    "use this machine's readers"
                )
            elif (full := service.admission.promote(self, self.peer)) is not None:
                self._refuse(f"{short(self.peer)}: {full}")
                with contextlib.suppress(LinkClosed):
                    LinkSocket(tls, Role.SERVICE).send(
                        Error(ErrorCode.NOT_AUTHORIZED, f"{service.name}: {full}"), _SEND_TIMEOUT
                    )
                return None
        log.debug("%s: TLS %s, peer %s", self.address, tls.version(), short(self.peer) or "none")
        return LinkSocket(tls, Role.SERVICE)

    def _refuse(self, why: str) -> None:
        self.service.refused(self.address, why)

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
                    self.heard = True
                    self.last_heard = time.monotonic()
                    try:
                        reply = self._handle(item)
                    except _Refused as refusal:
                        link.send(Error(ErrorCode.NOT_AUTHORIZED, str(refusal)), _SEND_TIMEOUT)
                        return
                    link.send(reply, _SEND_TIMEOUT)
                    self.last_heard = time.monotonic()  # silence counts from our reply
                    if self.pairing_over(reply):
                        return  # a pairing connection does one thing, once
                deadline, why = self._deadline()
                if time.monotonic() >= deadline:
                    self._expire(why, link)
                    return
                self._run_timers(link)
            if self.lease is not None:
                self._end(EndReason.SHUTDOWN, link)

    def pairing_over(self, reply: Reply) -> bool:
        return self.pairing_started and isinstance(reply, Paired | Error)

    def _timeout(self) -> float:
        deadlines = [self._deadline()[0]]
        if self.holder is not None and (deadline := self.holder.deadline()) is not None:
            deadlines.append(deadline)
        return max(0.0, min(deadlines) - time.monotonic())

    def _deadline(self) -> tuple[float, str]:
        """When this link must have said something next, and what it failed to do then."""
        limits = self.service.limits
        if not self.heard:
            return self.ready_at + limits.first_message, (
                f"no complete first message within {limits.first_message:g} s"
            )
        if not self.peer:
            return self.accepted_at + limits.pairing, (
                f"pairing not done within {limits.pairing:g} s"
            )
        if self.lease is not None:
            return self.last_heard + limits.peer_timeout, (
                f"no keepalive or request for {limits.peer_timeout:g} s"
            )
        return self.last_heard + limits.session_idle, (
            f"idle for {limits.session_idle:g} s without a reader attached"
        )

    def _expire(self, why: str, link: LinkSocket) -> None:
        """A deadline passed: free the reader (a dead peer) or close the link; say why."""
        if self.lease is not None:
            log.warning("%s: %s; taking its peer for dead", self.address, why)
            self._end(EndReason.UNRESPONSIVE, link)
        elif self.key is not None:
            log.info("%s: %s; closing", self.address, why)
        else:
            self._refuse(why)

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
        for notice in self._queued_notices():
            if isinstance(notice, EndLease):
                notice.done.set()
        with self._sock_lock:
            self._closed = True
            if self.link is not None:
                self.link.close()
            elif self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        self.service.forget(self)

    # -- requests -------------------------------------------------------------------------------

    def _handle(self, message: Message) -> Reply:
        if self.refusal:
            raise _Refused(self.refusal)
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
            case Ping():
                return Ok()
            case ListReaders():
                return Readers(self._listing())
            case Attach():
                return self._attach(message)
            case End(reason):
                count = int(self.lease is not None)
                if self.lease is not None:
                    self._end(reason, None)
                return Ok(count)
        if self.holder is None:
            return Error(ErrorCode.NOT_ATTACHED, "attach a reader first")
        return self.holder.request(message)

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
        host = self.address.rpartition(":")[0].strip("[]")
        peer = service.home.trust.pin(certificate, self.pairing_name, PeerRole.ENDPOINT, host)
        self.paired = True
        service.events.record(
            EventKind.PAIRED,
            f"paired with {peer.name} (certificate {short(peer.fingerprint)}) as "
            f"{ROLE_TEXT[PeerRole.ENDPOINT]}",
            peer=short(peer.fingerprint),
            role=PeerRole.ENDPOINT.value,
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
        reader = detach.reader
        with contextlib.suppress(UnknownReader):  # unknown: nothing matches, the count says so
            reader = service.broker.resolve(reader) if reader else ""
        leases = service.broker.leases(peer=peer, session=detach.session, reader=reader)
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
        try:
            reader = service.broker.resolve(attach.reader)
        except UnknownReader as exc:
            return Error(ErrorCode.UNKNOWN_READER, str(exc))
        holder = service.broker.holder(reader)
        if holder is not None and holder.key == self.key:
            # Our own session holds it: its endpoint restarted (a new instance), or our link
            # dropped without the service noticing yet (same instance). Move the share here.
            restarted = holder.instance != self.instance
            service.end_lease(holder, EndReason.RESTART if restarted else EndReason.CONNECTION_LOST)
        try:
            lease = service.broker.attach(reader, self.key, attach.mode, self.instance)
        except InUse as exc:
            return Error(ErrorCode.IN_USE, f"{exc.lease.reader} is shared in another session")
        except UnknownReader as exc:
            return Error(ErrorCode.UNKNOWN_READER, str(exc))
        self.lease = lease
        self.holder = CardHolder(
            lease,
            service.backend,
            service.broker,
            self.trace,
            transaction_idle=service.transaction_idle,
            shares_state=lambda message: service.record_lease(
                EventKind.SHARED_STATE, lease, message
            ),
        )
        service.own(lease, self)
        try:
            atr = self.holder.connect(retry=False)
        except LocallyBusy:
            self.lease = self.holder = None
            service.disown(lease)
            service.broker.release(lease)
            return Error(ErrorCode.LOCALLY_BUSY, self._busy(lease))
        mode = lease.mode.name.lower()
        service.record_lease(
            EventKind.SHARED,
            lease,
            f"{lease.reader} shared into session {lease.session} ({mode})",
            mode=mode,
        )
        return Attached(atr or b"", lease.reader)

    def _busy(self, lease: Lease) -> str:
        """Why a local application keeps ``lease``'s card from us, and what may help."""
        exclusive = lease.mode is ShareMode.SHARED
        if not exclusive:
            try:  # would shared mode get in? Only if the local holders share the card too.
                self.service.backend.connect(lease.pcsc_name, ShareMode.SHARED).close()
            except LocallyBusy:
                exclusive = True
            except PcscError:
                pass
        if exclusive:
            return (
                f"{lease.reader}: a local application holds the card exclusively (PC/SC does "
                "not say which); shared mode cannot help: close it, then attach again"
            )
        return (
            f"{lease.reader}: a local application is using the card (close it, or attach in "
            "shared mode to use the card alongside it)"
        )

    def _listing(self) -> tuple[ReaderInfo, ...]:
        """The readers as this link may see them: who holds a reader is the holding peer's
        business and the local user's; other peers see "shared in another session"."""
        listing = self.service.broker.listing()
        if self.admin:
            return listing
        return tuple(
            info
            if info.state is not ReaderState.SHARED or self._holds(info.name)
            else dataclasses.replace(info, session="")
            for info in listing
        )

    def _holds(self, reader: str) -> bool:
        lease = self.service.broker.holder(reader)
        return lease is not None and lease.key.peer == self.peer

    # -- notices and timers --------------------------------------------------------------------

    def _queued_notices(self) -> Iterator[Notice]:
        """Take the queued notices, one at a time, until none is left."""
        while True:
            try:
                yield self._notices.get_nowait()
            except queue.Empty:
                return

    def _run_notices(self, link: LinkSocket) -> None:
        for notice in self._queued_notices():
            if isinstance(notice, EndLease):
                if notice.lease == self.lease:
                    self._end(notice.reason, link)
                notice.done.set()
            elif notice.lease == self.lease:
                self._card_change(notice, link)

    def _card_change(self, change: Change, link: LinkSocket) -> None:
        holder = self.holder
        if holder is None:
            return
        match change.kind:
            case ChangeKind.CARD_REMOVED:
                holder.drop()
                link.send(CardRemoved(), _SEND_TIMEOUT)
            case ChangeKind.CARD_INSERTED:
                holder.drop()
                atr = holder.connect()
                if atr is not None:
                    link.send(CardInserted(atr), _SEND_TIMEOUT)
            case ChangeKind.READER_REMOVED:
                self._end(EndReason.READER_GONE, link)

    def _run_timers(self, link: LinkSocket) -> None:
        if self.holder is not None:
            atr = self.holder.tick(time.monotonic())
            if atr is not None:
                link.send(CardInserted(atr), _SEND_TIMEOUT)

    def _end(self, reason: EndReason, link: LinkSocket | None) -> None:
        """End this link's lease: let go of the card, free the reader, log, tell."""
        lease, self.lease = self.lease, None
        holder, self.holder = self.holder, None
        if lease is None:
            return
        if holder is not None:
            holder.close()
        service = self.service
        service.disown(lease)
        if service.broker.release(lease):
            service.record_unshared(lease, reason)
        if link is not None:  # None: the link is gone, nobody to tell
            with contextlib.suppress(LinkClosed):
                link.send(Detached(reason), _SEND_TIMEOUT)
