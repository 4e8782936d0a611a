"""The share service's hold on one leased reader's card: connect, transact, reset, transmit.

Theory of operation
-------------------
A :class:`CardHolder` lives as long as one lease (:class:`~.broker.Lease`)
and is driven by the link that holds the lease, from that link's thread.

* **Connecting.** The holder connects to the card when one is in the reader:
  at attach, when the monitor sees a card inserted, and on the first request
  after a failure (retried every ``_RETRY_CARD`` seconds meanwhile; the link
  then tells the endpoint CARD_INSERTED). Exclusive mode connects with
  SCARD_SHARE_EXCLUSIVE for as long as the card is in and attached: local
  applications get a sharing violation meanwhile. Shared mode connects with
  SCARD_SHARE_SHARED and wraps each burst of APDUs in SCardBeginTransaction /
  SCardEndTransaction; the transaction ends after ``transaction_idle``
  seconds without an APDU, or at a power event, so local applications get
  their turn between the remote user's command sequences. A remote side
  that never pauses holds a transaction for at most ``_TRANSACTION_MAX``
  seconds; then the holder stands back for ``_TRANSACTION_GAP`` (longer than
  pcsc-lite's 100 ms retry of a waiting SCardBeginTransaction) so a waiting
  local application gets in: a busy remote session slows local ones down,
  it does not lock them out.
* **Power.** Exclusive mode: the remote reader's power on and reset become a
  cold reset of the real card when it was used since its last reset, so the
  remote side's power cycle really clears the card's volatile state (PIN
  verified, applet selected); power off only marks that. Shared mode never
  resets the card: the remote session works on a logical channel of its
  own, which its power off, power on and reset close
  (:mod:`~vsc.share.channels`); on a card without channels both sides share
  the card's state, which is recorded once per connection.
* **Another application's reset** (shared mode) is reported to the endpoint
  as CARD_RESET, so the remote side sees its card removed and starts over.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from . import channels
from .broker import Broker, Lease
from .masking import ApduTrace
from .pcsc import (
    CardGone,
    CardHandle,
    CardWasReset,
    Disposition,
    LocallyBusy,
    PcscError,
    ReaderBackend,
)
from .protocol import (
    Atr,
    Error,
    ErrorCode,
    Message,
    Ok,
    PowerOff,
    PowerOn,
    Reply,
    Reset,
    Response,
    ShareMode,
    Transmit,
)

__all__ = ["CardHolder"]

log = logging.getLogger(__name__)

_RETRY_CARD: Final = 0.5
_TRANSACTION_MAX: Final = 1.0
_TRANSACTION_GAP: Final = 0.15


class CardHolder:
    """The card of one lease, as the link holding the lease sees it."""

    def __init__(
        self,
        lease: Lease,
        backend: ReaderBackend,
        broker: Broker,
        trace: ApduTrace,
        *,
        transaction_idle: float,
        shares_state: Callable[[str], None] | None = None,
    ) -> None:
        self.lease = lease
        self.shares_state = shares_state  # told when a card cannot keep the sides apart
        self.backend = backend
        self.trace = trace
        self.transaction_idle = transaction_idle
        self.broker = broker
        self.card: CardHandle | None = None
        self.fresh = False  # the card is untouched since its last reset
        self.in_transaction = False
        self.transaction_since = 0.0
        self.last_use = 0.0
        self.retry_at: float | None = None
        # Shared mode: the remote session's logical channel; whether the card has them.
        self.channel: int | None = None
        self.isolated: bool | None = None

    # -- connecting ----------------------------------------------------------------------------

    def connect(self, *, retry: bool = True) -> bytes | None:
        """Connect to the card if one is in; its ATR, or None (retried later if ``retry``).

        Without ``retry`` a local application holding the card raises
        :class:`LocallyBusy` instead.
        """
        lease = self.lease
        self.retry_at = None
        if self.card is not None:
            return self.card.atr
        if self.broker.atr(lease.reader) is None:
            return None
        try:
            self.card = self.backend.connect(lease.pcsc_name, lease.mode)
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
        self.channel = self.isolated = None
        return self.card.atr

    def drop(self) -> None:
        """Let go of the card (closing our channel, ending any transaction); the lease stays."""
        card, self.card = self.card, None
        if card is None:
            return
        if self.channel is not None:
            with contextlib.suppress(PcscError):
                self._close_channel(card)
        if self.in_transaction:
            with contextlib.suppress(PcscError):
                card.end_transaction()
        self.in_transaction = False
        card.close()

    def close(self) -> None:
        """The lease ends: let go of the card and stop retrying."""
        self.drop()
        self.retry_at = None

    # -- timers -----------------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """When :meth:`tick` has work next (monotonic), or None."""
        deadlines = []
        if self.in_transaction:
            deadlines.append(self.last_use + self.transaction_idle)
        if self.retry_at is not None:
            deadlines.append(self.retry_at)
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> bytes | None:
        """End an idle transaction; retry connecting. The ATR if a card was connected now."""
        if self.in_transaction and now >= self.last_use + self.transaction_idle:
            self._end_transaction()
        if self.retry_at is not None and now >= self.retry_at:
            return self.connect()
        return None

    # -- requests ---------------------------------------------------------------------------------

    def request(self, message: Message) -> Reply:
        """Carry out POWER_ON, POWER_OFF, RESET or TRANSMIT on the card."""
        lease = self.lease
        if self.card is None and self.connect() is None:
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
                    self._restart(card, Disposition.UNPOWER_CARD)
                    return Atr(card.atr)
                case PowerOff():
                    self._end_transaction()
                    if lease.mode is ShareMode.SHARED:
                        self._restart(card, Disposition.LEAVE_CARD)
                    return Ok()
                case Reset():
                    self._end_transaction()
                    self.trace.restart()
                    self._restart(card, Disposition.RESET_CARD)
                    return Atr(card.atr)
        except CardGone:
            self.drop()
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
            self.channel = None  # a reset closes every channel
            return Error(ErrorCode.CARD_RESET, "another application reset the card")
        except PcscError as exc:
            log.warning("%s: %s", lease.reader, exc)
            return Error(ErrorCode.CARD_ERROR, str(exc))
        return Error(ErrorCode.PROTOCOL, f"unexpected {type(message).__name__}")

    def _restart(self, card: CardHandle, disposition: Disposition) -> None:
        """The remote side starts over: a clean card for it, if it used this one."""
        if self.fresh:
            return
        if self.lease.mode is ShareMode.EXCLUSIVE:
            card.reconnect(disposition)
        elif self.channel is not None:
            self._close_channel(card)  # never a reset: local applications keep theirs
        self.fresh = True

    def _transmit(self, card: CardHandle, apdu: bytes) -> Reply:
        sent = apdu
        if self.lease.mode is ShareMode.SHARED:
            if self.in_transaction and time.monotonic() > self.transaction_since + (
                _TRANSACTION_MAX
            ):
                self._end_transaction()
                time.sleep(_TRANSACTION_GAP)  # local applications' turn
            if not self.in_transaction:
                card.begin_transaction()
                self.in_transaction = True
                self.transaction_since = time.monotonic()
            if self.channel is None and self.isolated is not False:
                self._open_channel(card)
            if self.channel is not None:
                moved = channels.move(apdu, self.channel)
                if moved is None:
                    self.trace.exchange(apdu, channels.NO_CHANNEL)
                    return Response(channels.NO_CHANNEL)
                sent = moved
        self.fresh = False
        response = card.transmit(sent)
        self.last_use = time.monotonic()
        self.trace.exchange(apdu, response)
        if len(response) < 2:
            return Error(ErrorCode.CARD_ERROR, "the reader returned no status word")
        return Response(response)

    def _open_channel(self, card: CardHandle) -> None:
        response = card.transmit(channels.OPEN)
        self.channel = channels.opened(response)
        if self.channel is not None:
            self.isolated = True
            log.debug("%s: the remote session on channel %d", self.lease.reader, self.channel)
            return
        self.isolated = False
        status = response[-2:].hex().upper() or "nothing"
        message = (
            f"{self.lease.reader}: the card opened no logical channel ({status}); in shared "
            "mode both sides share its security state (a PIN verified on one side counts on "
            "the other): attach in exclusive mode to keep them apart"
        )
        log.warning("%s", message)
        if self.shares_state is not None:
            self.shares_state(message)

    def _close_channel(self, card: CardHandle) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            response = card.transmit(channels.close(channel))
            if response[-2:] != b"\x90\x00":
                log.debug("closing channel %d: %s", channel, response.hex())

    def _end_transaction(self) -> None:
        if self.in_transaction and self.card is not None:
            self.in_transaction = False
            try:
                self.card.end_transaction()
            except PcscError as exc:
                log.debug("end transaction: %s", exc)
