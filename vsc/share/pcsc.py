"""The local readers through PC/SC (pyscard), behind a small interface.

The share service needs four things of PC/SC: the readers and whether each
holds a card (:class:`ReaderMonitor`), and a connection to one card that can
transmit, reset and bracket transactions (:class:`CardHandle`). The
:class:`ReaderBackend` protocol is that interface; :class:`PcscBackend`
implements it with pyscard's ``smartcard.scard`` (the C API, one-to-one), and
tests may drive the service with an in-memory backend instead.

PC/SC errors become a few exceptions the relay acts on: :class:`CardGone`
(no card, removed), :class:`CardWasReset` (another application reset a shared
card), :class:`LocallyBusy` (a local application holds the card
exclusively), and :class:`PcscError` for the rest.

Threads: every :class:`PcscCard` and the monitor has its own PC/SC context,
used only by the thread that made it (pcsc-lite contexts are not meant to be
shared), except :meth:`PcscMonitor.cancel`, which is what
``SCardCancel`` is for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Final, Protocol

from .protocol import ShareMode

__all__ = [
    "CardGone",
    "CardHandle",
    "CardWasReset",
    "Disposition",
    "LocallyBusy",
    "PcscBackend",
    "PcscError",
    "ReaderBackend",
    "ReaderMonitor",
    "Snapshot",
]

log = logging.getLogger(__name__)

#: Reader name -> the card's ATR, or None when the reader is empty (or the card mute).
Snapshot = Mapping[str, bytes | None]

_PNP_READER: Final = "\\\\?PnP?\\Notification"


class Disposition(IntEnum):
    """What SCardReconnect / SCardEndTransaction do to the card (PC/SC's values)."""

    LEAVE_CARD = 0
    RESET_CARD = 1  # warm reset
    UNPOWER_CARD = 2  # cold reset


class PcscError(Exception):
    """A PC/SC call failed; ``hresult`` is the PC/SC return code."""

    def __init__(self, message: str, hresult: int = 0) -> None:
        super().__init__(message)
        self.hresult = hresult


class CardGone(PcscError):
    """No card in the reader (or it was just removed)."""


class CardWasReset(PcscError):
    """Another application reset the card; our volatile state on it is gone."""


class LocallyBusy(PcscError):
    """A local application holds the card (sharing violation)."""


class CardHandle(Protocol):
    """One connection to the card in one reader."""

    @property
    def atr(self) -> bytes: ...

    def transmit(self, apdu: bytes) -> bytes: ...

    def reconnect(self, disposition: Disposition) -> bytes:
        """Reset (or not) and reconnect in the same mode; returns the ATR now."""
        ...

    def begin_transaction(self) -> None: ...

    def end_transaction(self) -> None: ...

    def close(self) -> None: ...


class ReaderMonitor(Protocol):
    def wait(self, timeout: float) -> Snapshot:
        """The readers now, returned when something changed or after ``timeout`` seconds."""
        ...

    def cancel(self) -> None:
        """End a :meth:`wait` in progress early (from another thread)."""
        ...

    def close(self) -> None: ...


class ReaderBackend(Protocol):
    def monitor(self) -> ReaderMonitor: ...

    def connect(self, reader: str, mode: ShareMode) -> CardHandle:
        """Connect to the card in ``reader``; raises CardGone, LocallyBusy or PcscError."""
        ...


# --- pyscard -------------------------------------------------------------------------------


def _scard() -> Any:
    from smartcard import scard  # the optional [pcsc] extra

    return scard


def _error(scard: Any, what: str, hresult: int) -> PcscError:
    message = f"{what}: {scard.SCardGetErrorMessage(hresult)} ({hresult & 0xFFFFFFFF:#010x})"
    if hresult in (scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD):
        return CardGone(message, hresult)
    if hresult == scard.SCARD_W_RESET_CARD:
        return CardWasReset(message, hresult)
    if hresult == scard.SCARD_E_SHARING_VIOLATION:
        return LocallyBusy(message, hresult)
    if hresult in (scard.SCARD_W_UNPOWERED_CARD, scard.SCARD_W_UNRESPONSIVE_CARD):
        return CardGone(message, hresult)
    return PcscError(message, hresult)


def _context(scard: Any) -> Any:
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        raise _error(scard, "SCardEstablishContext", hresult)
    return context


class PcscCard:
    """A :class:`CardHandle` on pyscard; owns its own PC/SC context."""

    def __init__(self, reader: str, mode: ShareMode) -> None:
        self._scard = scard = _scard()
        self.reader = reader
        self.mode = mode
        self._context = _context(scard)
        self._card: Any = None
        try:
            hresult, self._card, self._protocol = scard.SCardConnect(
                self._context, reader, int(mode), scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
            )
            if hresult != scard.SCARD_S_SUCCESS:
                self._card = None
                raise _error(scard, f"SCardConnect({reader!r})", hresult)
            self._atr = self._status()
        except BaseException:
            self.close()
            raise

    @property
    def atr(self) -> bytes:
        return self._atr

    def _status(self) -> bytes:
        scard = self._scard
        hresult, _, _, _, atr = scard.SCardStatus(self._card)
        if hresult != scard.SCARD_S_SUCCESS:
            raise _error(scard, "SCardStatus", hresult)
        return bytes(atr)

    def _pci(self) -> Any:
        scard = self._scard
        return (
            scard.SCARD_PCI_T0 if self._protocol == scard.SCARD_PROTOCOL_T0 else scard.SCARD_PCI_T1
        )

    def transmit(self, apdu: bytes) -> bytes:
        scard = self._scard
        hresult, response = scard.SCardTransmit(self._card, self._pci(), list(apdu))
        if hresult != scard.SCARD_S_SUCCESS:
            raise _error(scard, "SCardTransmit", hresult)
        return bytes(response)

    def reconnect(self, disposition: Disposition) -> bytes:
        scard = self._scard
        hresult, self._protocol = scard.SCardReconnect(
            self._card,
            int(self.mode),
            scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
            int(disposition),
        )
        if hresult != scard.SCARD_S_SUCCESS:
            raise _error(scard, "SCardReconnect", hresult)
        self._atr = self._status()
        return self._atr

    def begin_transaction(self) -> None:
        scard = self._scard
        hresult = scard.SCardBeginTransaction(self._card)
        if hresult != scard.SCARD_S_SUCCESS:
            raise _error(scard, "SCardBeginTransaction", hresult)

    def end_transaction(self) -> None:
        scard = self._scard
        hresult = scard.SCardEndTransaction(self._card, scard.SCARD_LEAVE_CARD)
        if hresult != scard.SCARD_S_SUCCESS:
            raise _error(scard, "SCardEndTransaction", hresult)

    def close(self) -> None:
        scard = self._scard
        if self._card is not None:
            card, self._card = self._card, None
            with contextlib.suppress(Exception):
                scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)
        if self._context is not None:
            context, self._context = self._context, None
            with contextlib.suppress(Exception):
                scard.SCardReleaseContext(context)


class PcscMonitor:
    """A :class:`ReaderMonitor` on SCardGetStatusChange, with reader plug/unplug."""

    def __init__(self) -> None:
        self._scard = scard = _scard()
        self._context = _context(scard)
        self._known: dict[str, int] = {}
        self._atrs: dict[str, bytes] = {}
        self._pnp = scard.SCARD_STATE_UNAWARE
        self._pnp_works = True
        self._unknown = 0

    def _readers(self) -> list[str]:
        scard = self._scard
        hresult, readers = scard.SCardListReaders(self._context, [])
        if hresult in (scard.SCARD_E_NO_READERS_AVAILABLE, scard.SCARD_E_NO_SERVICE):
            return []
        if hresult != scard.SCARD_S_SUCCESS:
            raise _error(scard, "SCardListReaders", hresult)
        return list(readers)

    def wait(self, timeout: float) -> Snapshot:
        scard = self._scard
        readers = self._readers()
        states = [(name, self._known.get(name, scard.SCARD_STATE_UNAWARE)) for name in readers]
        if any(name not in self._known for name in readers):
            timeout = 0.0  # learn a new reader's state at once
        if self._pnp_works:
            states.append((_PNP_READER, self._pnp))
        hresult, results = scard.SCardGetStatusChange(
            self._context, max(0, int(timeout * 1000)), states
        )
        if hresult == scard.SCARD_E_UNKNOWN_READER:
            # A reader vanished since the listing (once), or this pcsc-lite has no PnP
            # pseudo-reader (every time): then poll the listing instead.
            self._unknown += 1
            self._pnp_works = self._pnp_works and self._unknown < 3
        elif hresult == scard.SCARD_S_SUCCESS:
            self._unknown = 0
            for name, event, atr in results:
                known = event & ~scard.SCARD_STATE_CHANGED
                if name == _PNP_READER:
                    self._pnp = known
                else:
                    self._known[name] = known
                    self._atrs[name] = bytes(atr)
        elif hresult not in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_CANCELLED):
            raise _error(scard, "SCardGetStatusChange", hresult)
        self._known = {name: self._known[name] for name in readers if name in self._known}
        snapshot: dict[str, bytes | None] = {}
        for name in readers:
            event = self._known.get(name, 0)
            usable = event & scard.SCARD_STATE_PRESENT and not event & scard.SCARD_STATE_MUTE
            snapshot[name] = (self._atrs.get(name) or None) if usable else None
        return snapshot

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self._scard.SCardCancel(self._context)

    def close(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            with contextlib.suppress(Exception):
                self._scard.SCardReleaseContext(context)


class PcscBackend:
    """The real readers, through pcscd (``PCSCLITE_CSOCK_NAME`` picks the daemon)."""

    def monitor(self) -> ReaderMonitor:
        return PcscMonitor()

    def connect(self, reader: str, mode: ShareMode) -> CardHandle:
        return PcscCard(reader, mode)
