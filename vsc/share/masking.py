"""The relay's APDU trace, with PINs, keys and secrets masked.

The relay has no applet, only the wire, so it masks the way the card's own
trace does, with the same :class:`vsc.masking.TraceMasker`: it follows
SELECT on every logical channel and applies the rules of the applet selected
(every applet vsc ships is known by AID, :mod:`applets.catalog`), through
whole chained commands and the GET RESPONSEs after a cut response. A channel
whose applet is unknown (another card's, or not yet selected) shows headers
and status words only. The records go to the logger ``vsc.share.apdu`` at
the engine's TRACE level, formatted lazily; with the trace off the relay
pays one level check per APDU, and a trace turned on later starts knowing
nothing (everything hidden until a SELECT).
"""

from __future__ import annotations

import logging

from applets.catalog import trace_rules_for

from ..masking import TraceMasker
from ..trace import TRACE, command_text, response_text

__all__ = ["ApduTrace"]

logger = logging.getLogger("vsc.share.apdu")


class ApduTrace:
    """Traces one relay's exchanges with one card."""

    __slots__ = ("_masker", "_synced", "label")

    def __init__(self, label: str) -> None:
        self.label = label
        self._masker = TraceMasker(trace_rules_for)
        self._synced = False

    def restart(self) -> None:
        """The card was reset, powered up or replaced: what the trace followed is gone."""
        self._synced = False

    def exchange(self, command: bytes, response: bytes) -> None:
        """Note one exchange (call for every APDU, so the masker's view stays right)."""
        if not logger.isEnabledFor(TRACE):
            self._synced = False
            return
        if not self._synced:
            self._masker.forget()
            self._synced = True
        mask = self._masker.exchange(command, response)
        logger.log(
            TRACE,
            "%s > %s < %s",
            self.label,
            command_text(command, mask),
            response_text(response, mask),
        )
