"""The vpcd front-end: ``python -m vsc.emulator`` serves virtual cards to pcscd.

vsmartcard's vpcd reader driver (loaded by pcscd) and this process talk over
TCP with the framing of :mod:`vsc.vpcd`; this package is only the socket loop
around that codec and a :class:`vsc.card.Card`. The flags follow vsmartcard's
``vicc`` (``-H``, ``-P``, ``-R``, ``-v``) plus ``--card``, ``--slots`` and
the card's ``--applet``, ``--profile``, ``--serial`` and ``--transport``.

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

Modules, one job each:

* :mod:`~vsc.emulator.cards` -- what a slot serves: factory-fresh cards in
  memory, persistent cards from the store, the protection backend.
* :mod:`~vsc.emulator.slot` -- one slot's thread: connect or accept, and the
  per-APDU serve loop.
* :mod:`~vsc.emulator.server` -- :class:`Emulator`: the slots, stopping them.
* :mod:`~vsc.emulator.cli` -- the command line (``main``).
"""

from __future__ import annotations

from .cards import (
    APPLETS,
    BACKEND_ENVIRONMENT,
    PROFILES,
    SERIAL_BASE,
    CardOpenError,
    Transport,
    backend_from,
    default_card,
    default_serial,
    open_card,
)
from .cli import main
from .server import DEFAULT_FRAME_TIMEOUT, DEFAULT_HOST, DEFAULT_PORT, Backoff, Emulator

__all__ = [
    "APPLETS",
    "BACKEND_ENVIRONMENT",
    "DEFAULT_FRAME_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "PROFILES",
    "SERIAL_BASE",
    "Backoff",
    "CardOpenError",
    "Emulator",
    "Transport",
    "backend_from",
    "default_card",
    "default_serial",
    "main",
    "open_card",
]
