"""Shared mode's isolation: the remote session on a logical channel of its own.

Theory of operation
-------------------
In shared mode local applications and the remote session use one card at
once. Resetting the card to give the remote side a clean start would take
every local application's state with it (a verified PIN, a selected
applet), and a local reset would do the same to the remote side. Cards with
logical channels (ISO 7816-4: up to 20, each with its own selected
application and security state; vsc's own cards are such) allow better:

* The service opens one channel for the remote session (MANAGE CHANNEL open,
  on the basic channel) before its first command, and moves every remote
  command from the basic channel to it by rewriting the channel number in
  CLA (:func:`move`). Local applications keep the basic channel.
* The remote reader's power off, power on and reset close that channel
  (MANAGE CHANNEL close) instead of resetting the card; the next command
  opens a fresh one. The remote side starts clean, the card is never reset,
  and neither side sees the PIN the other verified.
* The remote side sees a card without logical channels of its own: a command
  on another channel, or a MANAGE CHANNEL, is answered ``6881``.

A card that cannot open a channel (a physical card without them answers
``6881``, ``6D00`` or ``6E00``) is used on the basic channel as it is: then
both sides share the card's security state, as local applications do among
themselves in PC/SC's shared mode. The service records that as an event;
exclusive mode is the choice that keeps the two apart on such a card.
"""

from __future__ import annotations

from typing import Final

__all__ = ["NO_CHANNEL", "OPEN", "close", "move", "opened"]

#: MANAGE CHANNEL open (the card picks the number), sent on the basic channel.
OPEN: Final = bytes.fromhex("0070000001")
#: "Logical channel not supported": the answer to a remote command we cannot place.
NO_CHANNEL: Final = bytes.fromhex("6881")

_INS_MANAGE_CHANNEL: Final = 0x70


def close(channel: int) -> bytes:
    """MANAGE CHANNEL close of ``channel``, sent on the basic channel."""
    return bytes([0x00, _INS_MANAGE_CHANNEL, 0x80, channel])


def opened(response: bytes) -> int | None:
    """The channel a MANAGE CHANNEL open answer gives, or None (the card has none to give)."""
    if len(response) == 3 and response[1:] == b"\x90\x00" and 1 <= response[0] <= 19:
        return response[0]
    return None


def move(apdu: bytes, channel: int) -> bytes | None:
    """``apdu`` (sent for the basic channel) moved to ``channel``; None: answer 6881.

    A command too short to have a header, or with an invalid class, goes to
    the card unchanged (it answers as for any malformed command).
    """
    if len(apdu) < 4:
        return apdu
    cla = apdu[0]
    if cla == 0xFF or 0x20 <= cla <= 0x3F:
        return apdu
    if 0x40 <= cla <= 0x7F or cla & 0x03 or apdu[1] == _INS_MANAGE_CHANNEL:
        return None  # the remote side addresses channels itself: not on this card
    if channel < 4:
        moved = cla | channel
    elif cla & 0x80:
        return None  # a proprietary class reaches channels 0-3 only
    else:
        # Further interindustry: b6 secure messaging, b5 chaining, b4-b1 channel - 4.
        moved = 0x40 | (0x20 if cla & 0x0C else 0) | (cla & 0x10) | (channel - 4)
    return bytes([moved]) + apdu[1:]
