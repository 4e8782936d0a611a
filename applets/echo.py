"""A diagnostic applet for end-to-end and robustness tests.

AID ``F0 76 73 63 00 01`` ("vsc"). INS 01 answers with the command data (so a
chained command comes back whole); INS 02 answers with P1P2 bytes of the
pattern ``i & 0xFF`` (long responses through 61xx and GET RESPONSE).
"""

from __future__ import annotations

from vsc.apdu import CommandApdu
from vsc.applet import Applet, command

ECHO_AID = bytes.fromhex("F07673630001")

# The pattern repeated; slicing it is faster than building it per APDU.
_PATTERN = bytes(range(256)) * 256


class EchoApplet(Applet[None]):
    aid = ECHO_AID

    def new_session(self) -> None:
        return None

    @command(0x01)
    def echo(self, apdu: CommandApdu, session: None) -> bytes:
        return apdu.data

    @command(0x02)
    def pattern(self, apdu: CommandApdu, session: None) -> bytes:
        return _PATTERN[: (apdu.p1 << 8) | apdu.p2]
