"""The relay's APDU trace, with PINs, keys and secrets masked.

The relay does not know which applet a command is for, so it masks by INS
byte, card-agnostic: VERIFY (20/21), CHANGE REFERENCE DATA (24), RESET RETRY
COUNTER (2C), PSO (2A: deciphered data), GENERAL AUTHENTICATE (87: challenges,
plaintexts, shared secrets), and the Yubico key and management commands (FE
IMPORT KEY, FF SET MANAGEMENT KEY), plus PIV's GET/PUT DATA of 5FC109 (the
PIN-protected management key). A masked command keeps its 4-byte header and
shows its data as a length; its response keeps only the status word; so do
the GET RESPONSE continuations that follow it. The records go to the logger
``vsc.share.apdu`` at the engine's TRACE level, formatted lazily.
"""

from __future__ import annotations

import logging
from typing import Final

from ..trace import TRACE, Apdu

__all__ = ["SECRET_INS", "ApduTrace", "is_secret_command"]

logger = logging.getLogger("vsc.share.apdu")

SECRET_INS: Final = frozenset({0x20, 0x21, 0x24, 0x2A, 0x2C, 0x87, 0xFE, 0xFF})
_INS_GET_DATA: Final = 0xCB
_INS_PUT_DATA: Final = 0xDB
_INS_GET_RESPONSE: Final = 0xC0
_PROTECTED_TAG: Final = bytes.fromhex("5C035FC109")


def is_secret_command(apdu: bytes) -> bool:
    """Whether a command APDU's data (and its response) must be masked."""
    if len(apdu) < 4:
        return False
    ins = apdu[1]
    if ins in (_INS_GET_DATA, _INS_PUT_DATA):
        return _PROTECTED_TAG in apdu[4:12]
    return ins in SECRET_INS


class ApduTrace:
    """Traces one relay's exchanges; remembers whether GET RESPONSE continues a secret."""

    __slots__ = ("_continuing", "label")

    def __init__(self, label: str) -> None:
        self.label = label
        self._continuing = False

    def exchange(self, command: bytes, response: bytes) -> None:
        """Note one exchange (call for every APDU, so the continuation state stays right)."""
        is_get_response = len(command) >= 4 and command[1] == _INS_GET_RESPONSE
        secret = is_secret_command(command) or (is_get_response and self._continuing)
        self._continuing = secret and len(response) >= 2 and response[-2] == 0x61
        if logger.isEnabledFor(TRACE):
            logger.log(
                TRACE,
                "%s > %s < %s",
                self.label,
                Apdu(command, head=4, tail=0, secret=secret),
                Apdu(response, head=0, tail=2, secret=secret),
            )
