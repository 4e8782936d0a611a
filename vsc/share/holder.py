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
  their turn between the remote user's command sequences.
* **Power.** The remote reader's power on and reset become a cold
  (exclusive) or warm (shared) reset of the real card when it was used since
  its last reset, so the remote side's power cycle really clears the card's
  volatile state (PIN verified, applet selected); power off only marks that.
* **Another application's reset** (shared mode) is reported to the endpoint
  as CARD_RESET, so the remote side sees its card removed and starts over.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Final

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
    ) -> None:
        self.lease = lease
        self.backend = backend
        self.trace = trace
        self.transaction_idle = transaction_idle
        self.broker = broker
        self.card: CardHandle | None = None
        self.fresh = False  # the card is untouched since its last reset
        self.in_transaction = False
        self.last_use = 0.0
        self.retry_at: float | None = None

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
        return self.card.atr

    def drop(self) -> None:
        """Let go of the card (ending any transaction); the reader stays leased."""
        card, self.card = self.card, None
        if card is None:
            return
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
            return Error(ErrorCode.CARD_RESET, "another application reset the card")
        except PcscError as exc:
            log.warning("%s: %s", lease.reader, exc)
            return Error(ErrorCode.CARD_ERROR, str(exc))
        return Error(ErrorCode.PROTOCOL, f"unexpected {type(message).__name__}")

    def _transmit(self, card: CardHandle, apdu: bytes) -> Reply:
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

    def _end_transaction(self) -> None:
        if self.in_transaction and self.card is not None:
            self.in_transaction = False
            try:
                self.card.end_transaction()
            except PcscError as exc:
                log.debug("end transaction: %s", exc)
