"""The GIDS card application (Generic Identity Device Specification 2.0).

The card model of Windows' TPM virtual smart cards, as the Windows minidriver
and OpenSC's ``gids`` driver use it. ``GidsApplet()`` is a factory-empty card
(no PIN, no files, application in its creation state) whose keys live in
memory; :func:`applets.gids.host.initialize` personalises it the way
``gids-tool --initialize`` does. See docs/gids.md.
"""

from .applet import FCI, GIDS_AID, GIDS_ATR, GIDS_TRACE_RULES, GidsApplet
from .state import GidsData, GidsRecord, GidsStore

__all__ = [
    "FCI",
    "GIDS_AID",
    "GIDS_ATR",
    "GIDS_TRACE_RULES",
    "GidsApplet",
    "GidsData",
    "GidsRecord",
    "GidsStore",
]
