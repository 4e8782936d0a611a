"""Security events of card commands, told to the stored card's event sink.

An applet reports the events only it can see (a PIN refused by its policy, a
lock, a RESET) through its ``events`` callback. What can be told from the
command and its outcome alone is reported here, around the stored applet's
``process``, so the PIV and GIDS applets need no hook of their own for it:
CHANGE REFERENCE DATA of the PIN or PUK, RESET RETRY COUNTER with the PUK,
and (PIV) SET MANAGEMENT KEY, each with the outcome ``success`` or
``refused`` (a wrong secret: 63Cx, or 6983 / 6982). Details never hold a
secret: only the tries left.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping

from vsc.apdu import CommandApdu
from vsc.sw import ApduError

from .card import StoredCard
from .errors import CorruptStore, StorageFailure

__all__ = ["CommandEvents", "reporting"]

log = logging.getLogger(__name__)

#: An event by (INS, P1, P2) of the command.
CommandEvents = Mapping[tuple[int, int, int], str]


def _wrong_secret(sw: int) -> bool:
    return sw & 0xFFF0 == 0x63C0 or sw in (0x6983, 0x6982)


@contextlib.contextmanager
def reporting(card: StoredCard, events: CommandEvents, apdu: CommandApdu) -> Iterator[None]:
    """Report ``apdu``'s event (if ``events`` names it) once the block has run it.

    Damage to the card's files (answered ``6581``) is logged here, loudly.
    """
    # A chained part is not the command yet: its last part carries it.
    event = None if apdu.cla & 0x10 else events.get((apdu.ins, apdu.p1, apdu.p2))
    try:
        yield
    except ApduError as e:
        if event is not None and _wrong_secret(e.sw):
            tries = {"tries_left": e.sw & 0x0F} if e.sw & 0xFFF0 == 0x63C0 else {}
            card.report(event, {"outcome": "refused", **tries})
        if isinstance(e, CorruptStore):
            log.error("card %r: %s", card.name, e)
        elif isinstance(e, StorageFailure):  # a full disk may pass: a warning
            log.warning("card %r: %s", card.name, e)
        raise
    if event is not None:
        card.report(event, {})
