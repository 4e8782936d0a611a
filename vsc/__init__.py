"""vsc: a virtual smart card.

The engine is sans-IO: :class:`Card` turns command APDU bytes into response
APDU bytes. Adapters (the vpcd socket front-end, PC/SC, the CLI) live in their
own modules and are imported explicitly.
"""

from .apdu import CommandApdu
from .applet import Applet, Response, command
from .card import DEFAULT_ATR, Card
from .sw import SW, ApduError

__all__ = [
    "DEFAULT_ATR",
    "SW",
    "ApduError",
    "Applet",
    "Card",
    "CommandApdu",
    "Response",
    "command",
]
