"""The remote endpoint: a shared reader, presented to this machine's pcscd through vpcd.

Theory of operation
-------------------
``vsc share attach "Reader 1" --from HOST`` runs one :class:`Endpoint`. It
plays the *card* side of vpcd, as ``python -m vsc.emulator`` does, except
that the card lives on the other machine: every vpcd event is relayed over
the link and answered with what the real card said.

======================  ==============================================
vpcd -> endpoint        endpoint
======================  ==============================================
GET ATR                 answers the ATR it holds (no round trip: pcscd
                        asks every ~400 ms)
POWER ON / RESET        POWER_ON / RESET to the service; keeps the ATR
POWER OFF               POWER_OFF to the service
command APDU            TRANSMIT; answers the response (6F00 if none)
======================  ==============================================

vpcd has no way to say "no card" but a missing card socket, so the endpoint
is connected to vpcd exactly while the service reports a card (ATTACHED with
an ATR, CARD_INSERTED) and disconnects on CARD_REMOVED: pcscd then shows the
remote reader empty. When another application resets a shared card
(CARD_RESET) the endpoint disconnects and reconnects, so remote applications
see their card as removed and start over instead of trusting stale state.

Keepalive: when the endpoint has sent nothing for ``keepalive`` seconds
(:data:`~vsc.share.protocol.KEEPALIVE_INTERVAL`) it sends PING; the service
takes four intervals of silence for a dead endpoint and frees the reader,
and an unanswered PING (``keepalive_timeout``) is a lost link here, so a
frozen service or a dead network is noticed within 15 s by default.

One thread, one selector: the link, the vpcd socket and a wake-up pipe. vpcd
is strict ping-pong, so while a request is on the link the endpoint stops
reading vpcd; bytes vpcd sent meanwhile wait in the socket and keep their
order.

Endings: DETACHED from the service (someone detached it, the reader left,
the service stopped, a newer endpoint of the same session took the reader),
or :meth:`Endpoint.stop` (the CLI maps SIGINT to a
detach and SIGTERM/SIGHUP -- the login session ending -- to a logout), which
sends END with the reason. A lost link is not an ending: the endpoint shows
the reader empty, reconnects with backoff and attaches again under the same
instance; only if the reader was taken meanwhile does it give up.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Final

from ..vpcd import (
    NEED_DATA,
    Backoff,
    Command,
    ConnectionClosed,
    GetAtr,
    RemoteProtocolError,
    UnknownControl,
    VpcdConnection,
)
from ..vpcd import PowerOff as VpcdPowerOff
from ..vpcd import PowerOn as VpcdPowerOn
from ..vpcd import Reset as VpcdReset
from .client import Refused, Session, ShareError, expect, new_instance, open_session
from .events import REASON_TEXT, EventKind, EventLog, record_migration
from .home import ShareHome
from .link import LinkClosed, LinkSocket
from .masking import ApduTrace
from .protocol import (
    KEEPALIVE_INTERVAL,
    Atr,
    Attach,
    Attached,
    CardInserted,
    CardRemoved,
    Detached,
    End,
    EndReason,
    Error,
    ErrorCode,
    Message,
    Ok,
    Ping,
    PowerOff,
    PowerOn,
    Request,
    Reset,
    Response,
    ShareMode,
    Transmit,
)
from .protocol import ConnectionClosed as LinkEnd
from .trust import Peer, format_fingerprint

__all__ = ["DEFAULT_VPCD", "Backoff", "Endpoint", "Outcome"]

log = logging.getLogger(__name__)

DEFAULT_VPCD: Final = ("127.0.0.1", 35963)
_SW_UNKNOWN: Final = b"\x6f\x00"
_RECV_SIZE: Final = 0x10000 + 2
_VPCD_CONNECT_TIMEOUT: Final = 2.0
_END_TIMEOUT: Final = 3.0
_REQUEST_TIMEOUT: Final = 30.0  # an APDU may take long (on-card RSA key generation)
_PING: Final = object()  # what is waiting when the request on the link is a keepalive


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an endpoint run ended."""

    reason: EndReason
    message: str
    refused: ErrorCode | None = None  # the service refused the attachment, and why
    failed: bool = False  # the service could not be reached or authenticated

    @property
    def ok(self) -> bool:
        return self.refused is None and not self.failed


class _LinkLost(Exception):
    """The link dropped; reconnect."""


class Endpoint:
    """Attach ``reader`` of the service at ``address`` and feed it to vpcd at ``vpcd``."""

    def __init__(
        self,
        home: ShareHome,
        address: tuple[str, int],
        reader: str,
        *,
        session: str,
        mode: ShareMode = ShareMode.EXCLUSIVE,
        vpcd: tuple[str, int] = DEFAULT_VPCD,
        backoff: Backoff | None = None,
        frame_timeout: float = 5.0,
        request_timeout: float = _REQUEST_TIMEOUT,
        service: Peer | None = None,
        keepalive: float = KEEPALIVE_INTERVAL,
        keepalive_timeout: float = 2 * KEEPALIVE_INTERVAL,
    ) -> None:
        self.home = home
        self.address = address
        self.service = service  # the paired service it must be (default: the one at address)
        self.reader = reader
        self.session = session
        self.mode = mode
        self.vpcd = vpcd
        self.backoff = backoff or Backoff()
        self.frame_timeout = frame_timeout
        self.request_timeout = request_timeout
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self.instance = new_instance()
        self.events = EventLog(home.events_path, "endpoint")
        record_migration(self.events, home.trust)
        self.trace = ApduTrace(f"{reader}@{address[0]}")
        self._stop_reason: EndReason | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._attached = threading.Event()
        # Per link:
        self.atr = b""
        self._vpcd: socket.socket | None = None
        self._vpcd_codec = VpcdConnection()
        self._vpcd_retry_at = 0.0
        self._vpcd_delay = self.backoff.initial
        # The vpcd event whose request is on the link, and the vpcd connection it came from:
        # the answer goes back only to that connection; a new one waits for the reply too.
        self._waiting: object | None = None
        self._waiting_on = 0
        self._vpcd_generation = 0
        self._selector: selectors.BaseSelector | None = None
        self._vpcd_last_data = 0.0
        self._sent_at = 0.0
        self._service_name = ""
        self._service_peer = ""  # its fingerprint, short: events name the peer

    # -- control ---------------------------------------------------------------------------

    def stop(self, reason: EndReason = EndReason.SHUTDOWN) -> None:
        """End the run, telling the service why. Safe from a signal handler."""
        if self._stop_reason is None:
            self._stop_reason = reason
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def wait_attached(self, timeout: float) -> bool:
        """Whether the first attachment succeeded within ``timeout`` (for tests)."""
        return self._attached.wait(timeout)

    @property
    def present(self) -> bool:
        return bool(self.atr)

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Attach and relay until the attachment ends. Returns how it ended."""
        try:
            return self._run()
        finally:
            self._close_vpcd()
            for sock in (self._wake_r, self._wake_w):
                sock.close()

    def _run(self) -> Outcome:
        delay = self.backoff.initial
        first = True
        while self._stop_reason is None:
            try:
                session = self._attach()
            except Refused as exc:
                return Outcome(EndReason.UNKNOWN, str(exc), refused=exc.code)
            except ShareError as exc:
                if first:
                    return Outcome(EndReason.UNKNOWN, str(exc), failed=True)
                log.info("reconnecting: %s", exc)
                if self._sleep(delay):
                    break
                delay = min(delay * 2, self.backoff.cap)
                continue
            first = False
            delay = self.backoff.initial
            try:
                outcome = self._relay(session.link)
            except _LinkLost as exc:
                self._close_vpcd()
                self._waiting = None
                self.atr = b""
                self._record(
                    EventKind.LINK_LOST,
                    f"link to {self._service_name} lost ({exc}); {self.reader} empty until it "
                    "is back",
                )
                continue
            finally:
                session.link.close()
            return outcome
        reason = self._stop_reason or EndReason.SHUTDOWN
        if first:
            return Outcome(reason, "stopped before the reader was attached")
        return self._unshared(reason)

    def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on :meth:`stop`; whether we are stopping."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            selector.select(seconds)
        return self._stop_reason is not None

    def _attach(self) -> Session:
        session = open_session(
            self.home, self.address, self.session, self.instance, service=self.service
        )
        try:
            reply, _ = session.link.request(Attach(self.reader, self.mode))
            expect(reply, Attached)
        except (ShareError, LinkClosed) as exc:
            session.link.close()
            if isinstance(exc, LinkClosed):
                raise ShareError(str(exc)) from None
            raise
        assert isinstance(reply, Attached)
        self.reader = reply.reader or self.reader  # its stable name, however it was typed
        self._service_name = session.service_name
        self._service_peer = format_fingerprint(session.service.fingerprint, 4)
        self.atr = reply.atr
        mode = self.mode.name.lower()
        self._record(
            EventKind.ATTACHED,
            f"{self.reader} of {session.service_name} attached into session {self.session} "
            f"({mode}; {'card present' if reply.atr else 'no card'})",
            mode=mode,
        )
        self._attached.set()
        self._sent_at = time.monotonic()
        self._vpcd_retry_at = 0.0
        self._vpcd_delay = self.backoff.initial
        return session

    def _unshared(self, reason: EndReason) -> Outcome:
        message = f"{self.reader} unshared ({REASON_TEXT.get(reason, reason.name)})"
        of = f" of {self._service_name}" if self._service_name else ""
        self._record(
            EventKind.UNSHARED,
            f"{self.reader}{of} unshared from session {self.session} "
            f"({REASON_TEXT.get(reason, reason.name)})",
            reason=reason.name.lower(),
        )
        return Outcome(reason, message)

    # -- relaying -------------------------------------------------------------------------------

    def _relay(self, link: LinkSocket) -> Outcome:
        with selectors.DefaultSelector() as selector:
            self._selector = selector
            try:
                return self._relay_loop(link, selector)
            finally:
                self._close_vpcd()
                self._selector = None

    def _relay_loop(self, link: LinkSocket, selector: selectors.BaseSelector) -> Outcome:
        selector.register(link.sock, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        while True:
            if self._stop_reason is not None:
                return self._end(link, self._stop_reason)
            self._keep_vpcd()
            ready = [] if link.sock.pending() else selector.select(self._timeout())
            self._drain_wake()
            try:
                for item in link.receive():
                    outcome = self._on_link(item)
                    if outcome is not None:
                        return outcome
            except LinkClosed as exc:
                raise _LinkLost(str(exc)) from None
            # vpcd may have sent more behind the event just answered (GET ATR after POWER ON).
            self._pump_vpcd(link)
            now = time.monotonic()
            if self._waiting is not None and now > self._reply_deadline():
                if self._waiting is _PING:
                    raise _LinkLost(f"no answer to a keepalive within {self.keepalive_timeout:g} s")
                raise _LinkLost("the service did not answer in time")
            if self._waiting is None and now >= self._sent_at + self.keepalive:
                try:
                    self._request(link, Ping(), _PING)
                except LinkClosed as exc:
                    raise _LinkLost(str(exc)) from None
            vpcd = self._vpcd
            if vpcd is not None and any(key.fileobj is vpcd for key, _ in ready):
                self._read_vpcd(link)
            elif vpcd is not None and self._vpcd_stalled(now):
                log.warning("vpcd stalled inside a frame; reconnecting")
                self._close_vpcd()

    def _vpcd_stalled(self, now: float) -> bool:
        return self._vpcd_codec.in_frame and now > self._vpcd_last_data + self.frame_timeout

    def _timeout(self) -> float:
        deadlines = []
        if self.present and self._vpcd is None:
            deadlines.append(self._vpcd_retry_at)
        if self._vpcd is not None and self._vpcd_codec.in_frame:
            deadlines.append(self._vpcd_last_data + self.frame_timeout)
        if self._waiting is not None:
            deadlines.append(self._reply_deadline())
        else:
            deadlines.append(self._sent_at + self.keepalive)
        return max(0.0, min(deadlines) - time.monotonic())

    def _reply_deadline(self) -> float:
        timeout = self.keepalive_timeout if self._waiting is _PING else self.request_timeout
        return self._sent_at + timeout

    def _request(self, link: LinkSocket, request: Request, waiting: object) -> None:
        """Put ``request`` on the link; ``waiting`` is what its reply answers."""
        self._waiting = waiting
        self._waiting_on = self._vpcd_generation
        self._sent_at = time.monotonic()
        link.send(request)

    def _drain_wake(self) -> None:
        self._wake_r.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(256):
                pass

    def _end(self, link: LinkSocket, reason: EndReason) -> Outcome:
        """Tell the service we end (detach, logout, shutdown); bounded wait for its OK."""
        self._close_vpcd()
        try:
            deadline = time.monotonic() + _END_TIMEOUT
            while link.codec.pending is not None:  # a request in flight: take its reply first
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not link.wait_readable(remaining):
                    raise LinkClosed("no reply to the request in flight")
                if any(isinstance(item, LinkEnd) for item in link.receive()):
                    raise LinkClosed("the service closed the link")
            link.request(End(reason), _END_TIMEOUT)
        except LinkClosed as exc:
            log.info("ending: %s", exc)
        return self._unshared(reason)

    def _on_link(self, item: Message | LinkEnd) -> Outcome | None:
        match item:
            case LinkEnd():
                raise _LinkLost("the service closed the link")
            case Detached(reason):
                self._close_vpcd()
                return self._unshared(reason)
            case CardRemoved():
                self._card_gone()
            case CardInserted(atr):
                if self.present:
                    self._bounce()  # a different card, or the same one reset: start over
                self.atr = atr
                self._record(EventKind.CARD_INSERTED, f"card inserted in {self.reader}")
            case Ok() | Atr() | Response() | Error():
                self._on_reply(item)
            case _:
                log.warning("ignoring %s from the service", type(item).__name__)
        return None

    def _card_gone(self) -> None:
        if self.present:
            self._record(EventKind.CARD_REMOVED, f"card removed from {self.reader}")
        self.atr = b""
        if self._waiting is None:
            self._close_vpcd()

    def _record(self, kind: EventKind, message: str, **fields: str) -> None:
        """Log an event about this attachment (its reader, session and service)."""
        self.events.record(
            kind,
            message,
            reader=self.reader,
            session=self.session,
            peer=self._service_peer,
            **fields,
        )

    def _on_reply(self, reply: Ok | Atr | Response | Error) -> None:
        waiting, self._waiting = self._waiting, None
        same_vpcd = self._vpcd is not None and self._waiting_on == self._vpcd_generation
        answer: bytes | None = None
        match waiting, reply:
            case Command(apdu), Response(response):
                self.trace.exchange(apdu, response)
                answer = response
            case Command(), Error():
                answer = _SW_UNKNOWN  # vpcd must get an answer, never an empty one
            case VpcdPowerOn() | VpcdReset(), Atr(atr):
                self.atr = atr
                self.trace.restart()
        if answer is not None and same_vpcd:
            self._send_vpcd(answer)  # first: vpcd is blocked until it has its answer
        if isinstance(reply, Error):
            self._on_error(reply)
        if not self.present:
            self._close_vpcd()

    def _on_error(self, error: Error) -> None:
        log.info("%s: %s", self.reader, error.message)
        if error.code is ErrorCode.NO_CARD:
            self._card_gone()
        elif error.code is ErrorCode.CARD_RESET:
            self._bounce()

    # -- vpcd ----------------------------------------------------------------------------------

    def _keep_vpcd(self) -> None:
        """Be connected to vpcd exactly while a card is present."""
        if self._vpcd is not None or not self.present:
            return
        if time.monotonic() < self._vpcd_retry_at:
            return
        try:
            sock = socket.create_connection(self.vpcd, timeout=_VPCD_CONNECT_TIMEOUT)
        except OSError as exc:
            log.debug("vpcd at %s:%d: %s", *self.vpcd, exc)
            self._vpcd_retry_at = time.monotonic() + self._vpcd_delay
            self._vpcd_delay = min(self._vpcd_delay * 2, self.backoff.cap)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._vpcd = sock
        self._vpcd_generation += 1
        self._vpcd_codec = VpcdConnection()
        self._vpcd_delay = self.backoff.initial
        if self._selector is not None:
            self._selector.register(sock, selectors.EVENT_READ)
        log.info("%s: connected to vpcd at %s:%d", self.reader, *self.vpcd)

    def _close_vpcd(self) -> None:
        sock, self._vpcd = self._vpcd, None
        if sock is not None:
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            sock.close()
            log.info("%s: disconnected from vpcd", self.reader)

    def _bounce(self) -> None:
        """Drop vpcd now and reconnect soon: the remote pcscd sees removal, then a card."""
        self._close_vpcd()
        self._vpcd_retry_at = time.monotonic() + 0.5  # > pcscd's 400 ms poll, so it notices

    def _send_vpcd(self, payload: bytes) -> None:
        assert self._vpcd is not None
        try:
            self._vpcd.sendall(self._vpcd_codec.send(payload))
        except OSError as exc:
            log.info("vpcd: %s", exc)
            self._close_vpcd()

    def _read_vpcd(self, link: LinkSocket) -> None:
        sock = self._vpcd
        assert sock is not None
        try:
            data = sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            log.info("vpcd: %s", exc)
            self._close_vpcd()
            return
        if hasattr(socket, "TCP_QUICKACK"):  # vpcd's split writes stall ~40 ms without it
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        self._vpcd_last_data = time.monotonic()
        self._vpcd_codec.receive_data(data)
        self._pump_vpcd(link)

    def _pump_vpcd(self, link: LinkSocket) -> None:
        """Handle buffered vpcd events until one needs the service."""
        while self._vpcd is not None and self._waiting is None:
            try:
                event = self._vpcd_codec.next_event()
            except RemoteProtocolError as exc:
                log.warning("vpcd protocol error: %s", exc)
                self._close_vpcd()
                return
            if event is NEED_DATA:
                return
            request: Request | None = None
            match event:
                case GetAtr():
                    if self.present:
                        self._send_vpcd(self.atr)
                    else:
                        self._close_vpcd()
                case VpcdPowerOn():
                    request = PowerOn()
                case VpcdPowerOff():
                    request = PowerOff()
                case VpcdReset():
                    request = Reset()
                case Command(apdu):
                    request = Transmit(apdu)
                case UnknownControl(code):
                    log.warning("ignoring unknown vpcd control code %02X", code)
                case ConnectionClosed():
                    log.info("vpcd closed the connection")
                    self._close_vpcd()
                    self._vpcd_retry_at = time.monotonic() + self._vpcd_delay
            if request is not None:
                try:
                    self._request(link, request, event)
                except LinkClosed as exc:
                    if isinstance(event, Command):
                        self._send_vpcd(_SW_UNKNOWN)
                    raise _LinkLost(str(exc)) from None
