"""Every applet vsc ships, known by AID without a card.

A relay sees only the wire: to mask its trace it resolves each SELECTed AID
to the applet's trace rules here (:func:`trace_rules_for`). An applet added
to this package is added to :data:`APPLETS` (``tests/test_masking.py``
checks that none is missing).
"""

from __future__ import annotations

from typing import Any

from vsc.apdu import aid_matches
from vsc.applet import Applet
from vsc.masking import TraceRules

from .echo import EchoApplet
from .gids.applet import GidsApplet
from .piv.applet import PivApplet
from .yubikey.management import ManagementApplet

__all__ = ["APPLETS", "trace_rules_for"]

APPLETS: tuple[type[Applet[Any]], ...] = (PivApplet, ManagementApplet, GidsApplet, EchoApplet)


def trace_rules_for(aid: bytes) -> TraceRules | None:
    """The trace rules of the applet SELECT by ``aid`` would choose; None if none is known."""
    for applet in APPLETS:
        if aid_matches(aid, applet.aid, applet.min_aid_prefix):
            return applet.trace_rules
    return None
