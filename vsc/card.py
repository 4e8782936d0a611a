"""The card: ATR, power, applet selection, logical channels, chaining, GET RESPONSE.

Theory of operation
-------------------
``Card.transmit`` takes raw command bytes and always returns a response of at
least two bytes; nothing escapes it. Each APDU goes through these steps:

1. Parse (``6700`` on a bad shape) and decode CLA (``6E00`` invalid, ``6882``
   secure messaging, ``6881`` a channel that is not open).
2. Chaining: a command with CLA bit 0x10 appends its data to the channel's
   chain and is answered ``9000``; the chunk without the bit completes it and
   the assembled command is dispatched. A chunk whose INS/P1/P2 differ from
   the chain's discards the partial data and is processed on its own.
3. Any command other than GET RESPONSE discards pending response bytes.
4. The card handles GET RESPONSE (C0), MANAGE CHANNEL (70) and SELECT by AID
   (A4 04); everything else goes to the applet selected on the channel.
5. Response sizing: data longer than Ne is cut into Ne-sized pieces; each but
   the last ends in ``61xx`` (xx = bytes left, 00 for 256 or more) and GET
   RESPONSE fetches the next. Short clients get Ne ≤ 256, extended ones the
   whole response. The card never answers ``6Cxx`` on its own.

Every channel (0 to ``max_channels - 1``) has its own selected applet and
session object (the applet's volatile security state). Power off, power on
and reset end every session and select the default applet on channel 0.

The APDU trace (:mod:`vsc.trace`) hides secrets as :mod:`vsc.masking`
decides from each applet's ``trace_rules``. Its masker follows the exchanges
only while the trace is on (the hot path pays nothing otherwise); when the
trace comes on, after a power event or after an internal error, it is set
from the card's own state first: channels, applets, chains in progress, and
response bytes pending (hidden, since what they were is no longer known).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from . import trace
from .apdu import (
    INS_GET_RESPONSE,
    INS_MANAGE_CHANNEL,
    INS_SELECT,
    CommandApdu,
    decode_cla,
    response,
)
from .applet import Applet, Response
from .masking import UNKNOWN, TraceMasker, TraceRules
from .sw import SW, ApduError

log = logging.getLogger(__name__)

#: The YubiKey 5 NFC ATR: T=1 offered, TA1..TD1 not all present (ykman
#: treats the card as NFC), historical bytes that OpenSC types as a YubiKey.
DEFAULT_ATR = bytes.fromhex("3B8D800180 73C021C0 57597562694B6579 F9".replace(" ", ""))

__all__ = ["DEFAULT_ATR", "INS_GET_RESPONSE", "INS_MANAGE_CHANNEL", "INS_SELECT", "Card"]

_OK = b"\x90\x00"


class _Channel:
    """One logical channel's state."""

    __slots__ = (
        "applet",
        "chain",
        "chain_key",
        "pending",
        "pending_sw",
        "session",
    )

    def __init__(self) -> None:
        self.applet: Applet[Any] | None = None
        self.session: Any = None
        self.pending = b""
        self.pending_sw: int = SW.OK
        self.chain: bytearray | None = None
        self.chain_key = (0, 0, 0, 0)


class Card:
    """An ISO 7816-4 card with applets. See the module docstring."""

    def __init__(
        self,
        applets: Iterable[Applet[Any]] = (),
        *,
        atr: bytes = DEFAULT_ATR,
        default: Applet[Any] | None = None,
        max_channels: int = 20,
        max_command: int = 0x10000,
        max_response: int = 0xFFFD,
    ) -> None:
        if not 2 <= len(atr) <= 33:
            raise ValueError(f"an ATR has 2 to 33 bytes, not {len(atr)}")
        if not 1 <= max_channels <= 20:
            raise ValueError("max_channels must be 1 to 20")
        self._atr = bytes(atr)
        self._applets: list[Applet[Any]] = []
        self._default: Applet[Any] | None = None
        self._max_channels = max_channels
        self._max_command = max_command
        # vpcd (and PC/SC buffers) carry at most 65535 bytes including the
        # status word, so an extended Le of 0000 gets 65533 bytes per piece.
        self._max_response = max_response
        self._channels: dict[int, _Channel] = {}
        self._powered = False
        self._masker = TraceMasker(self._trace_rules_for)
        self._masker_synced = False  # whether the masker saw every exchange since its sync
        for applet in applets:
            self.register(applet)
        if default is not None:
            if default not in self._applets:
                self.register(default)
            self._default = default

    # -- configuration -------------------------------------------------------

    @property
    def atr(self) -> bytes:
        return self._atr

    @property
    def powered(self) -> bool:
        return self._powered

    @property
    def applets(self) -> tuple[Applet[Any], ...]:
        return tuple(self._applets)

    def register(self, applet: Applet[Any], *, default: bool = False) -> None:
        """Add an applet; ``default`` makes it selected on channel 0 after power-up."""
        if not 1 <= len(applet.aid) <= 16:
            raise ValueError(f"an AID has 1 to 16 bytes, not {len(applet.aid)}")
        if any(a.aid == applet.aid for a in self._applets):
            raise ValueError(f"an applet with AID {applet.aid.hex()} is already registered")
        self._applets.append(applet)
        if default:
            self._default = applet
        self._masker_synced = False

    # -- power ----------------------------------------------------------------

    def power_on(self) -> bytes:
        """Cold reset: fresh channels, default applet selected. Returns the ATR."""
        self._end_sessions()
        self._powered = True
        self._channels = {0: self._new_channel(self._default)}
        self._masker_synced = False
        return self._atr

    def power_off(self) -> None:
        self._end_sessions()
        self._channels = {}
        self._powered = False
        self._masker_synced = False

    def reset(self) -> bytes:
        """Warm reset: the same effect on card state as a cold one."""
        return self.power_on()

    def _end_sessions(self) -> None:
        for channel in self._channels.values():
            self._deselect(channel)

    # -- the APDU path -------------------------------------------------------------

    def transmit(self, apdu: bytes) -> bytes:
        """Process one command APDU and return the response APDU. Never raises."""
        channel_no = 0
        tracing = trace.logger.isEnabledFor(trace.TRACE)
        try:
            if not self._powered:
                self.power_on()
            if tracing and not self._masker_synced:
                self._sync_masker()
            cmd = CommandApdu.parse(apdu)
            cla = decode_cla(cmd.cla)
            channel_no = cla.channel
            if cla.secure_messaging:
                raise ApduError(SW.SECURE_MESSAGING_NOT_SUPPORTED, "secure messaging")
            channel = self._channels.get(channel_no)
            if channel is None:
                raise ApduError(SW.LOGICAL_CHANNEL_NOT_SUPPORTED, f"channel {channel_no} not open")
            applet = channel.applet
            if cla.proprietary and (applet is None or not applet.accepts_proprietary_cla):
                raise ApduError(SW.CLASS_NOT_SUPPORTED, f"proprietary CLA {cmd.cla:02X}")
            result = self._process(channel, cmd, cla.chaining)
        except ApduError as e:
            result = e.sw.to_bytes(2, "big")
        except Exception:
            log.exception("unexpected error processing an APDU; answering 6F00")
            self._recover(channel_no)
            result = b"\x6f\x00"
        if tracing:
            apdu = bytes(apdu)
            trace.trace_exchange(channel_no, apdu, result, self._masker.exchange(apdu, result))
        else:
            self._masker_synced = False
        return result

    def _recover(self, channel_no: int) -> None:
        self._masker_synced = False
        channel = self._channels.get(channel_no)
        if channel is not None:
            channel.chain = None
            channel.pending = b""

    # -- the trace's masker ------------------------------------------------------------

    def _trace_rules_for(self, aid: bytes) -> TraceRules | None:
        applet = self._find(aid)
        return None if applet is None else applet.trace_rules

    def _sync_masker(self) -> None:
        """Tell the masker what the card knows (see the module docstring)."""
        default = self._default
        self._masker.forget(UNKNOWN if default is None else default.trace_rules)
        for number, channel in self._channels.items():
            applet = channel.applet
            chain = channel.chain
            self._masker.open(
                number,
                UNKNOWN if applet is None else applet.trace_rules,
                chain=None if chain is None else (channel.chain_key, bytes(chain)),
                pending=bool(channel.pending),
            )
        self._masker_synced = True

    def _process(self, channel: _Channel, cmd: CommandApdu, chaining: bool) -> bytes:
        ins = cmd.ins
        if channel.chain is not None:
            key = (cmd.cla & 0xEF, ins, cmd.p1, cmd.p2)
            if key != channel.chain_key:
                channel.chain = None  # a different command aborts the chain
            else:
                return self._continue_chain(channel, cmd, chaining)
        if chaining:
            if ins == INS_GET_RESPONSE:
                raise ApduError(SW.CHAINING_NOT_SUPPORTED, "GET RESPONSE cannot be chained")
            channel.pending = b""
            channel.chain = bytearray(cmd.data)
            channel.chain_key = (cmd.cla & 0xEF, ins, cmd.p1, cmd.p2)
            return _OK
        if ins == INS_GET_RESPONSE:
            return self._get_response(channel, cmd)
        channel.pending = b""
        return self._dispatch(channel, cmd)

    def _continue_chain(self, channel: _Channel, cmd: CommandApdu, chaining: bool) -> bytes:
        chain = channel.chain
        assert chain is not None
        if len(chain) + len(cmd.data) > self._max_command:
            channel.chain = None
            raise ApduError(SW.NO_SPACE, "chained command too long")
        chain += cmd.data
        if chaining:
            return _OK
        channel.chain = None
        whole = CommandApdu(
            cmd.cla & 0xEF, cmd.ins, cmd.p1, cmd.p2, bytes(chain), cmd.le, cmd.extended
        )
        return self._dispatch(channel, whole)

    def _dispatch(self, channel: _Channel, cmd: CommandApdu) -> bytes:
        if cmd.ins == INS_SELECT and cmd.p1 == 0x04:
            data = self._select(channel, cmd)
            sw: int = SW.OK
        elif cmd.ins == INS_MANAGE_CHANNEL:
            data = self._manage_channel(cmd)
            sw = SW.OK
        else:
            applet = channel.applet
            if applet is None:
                raise ApduError(SW.INVALID_INSTRUCTION, "no applet selected")
            result = applet.process(cmd, channel.session)
            if isinstance(result, Response):
                data, sw = result.data, result.sw
            else:
                data, sw = result, SW.OK
        return self._size(channel, data, sw, cmd.ne)

    def _size(self, channel: _Channel, data: bytes, sw: int, ne: int) -> bytes:
        ne = min(ne, self._max_response)
        if len(data) <= ne:
            return data + _OK if sw == SW.OK else response(data, sw)
        channel.pending = data[ne:]
        channel.pending_sw = sw
        left = len(channel.pending)
        return response(data[:ne], 0x6100 | (left if left < 256 else 0))

    def _get_response(self, channel: _Channel, cmd: CommandApdu) -> bytes:
        if cmd.p1 or cmd.p2:
            raise ApduError(SW.INCORRECT_PARAMETERS, "GET RESPONSE P1/P2 must be 00")
        pending = channel.pending
        if not pending:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "no response data pending")
        channel.pending = b""
        return self._size(channel, pending, channel.pending_sw, cmd.ne)

    # -- SELECT and MANAGE CHANNEL ----------------------------------------------------

    def _find(self, aid: bytes) -> Applet[Any] | None:
        for applet in self._applets:
            if applet.matches(aid):
                return applet
        return None

    def _select(self, channel: _Channel, cmd: CommandApdu) -> bytes:
        if cmd.p2 & 0x03:
            raise ApduError(SW.INCORRECT_PARAMETERS, "only the first occurrence can be selected")
        if cmd.p2 & 0xF0:
            raise ApduError(SW.INCORRECT_PARAMETERS, f"SELECT P2 {cmd.p2:02X}")
        if len(cmd.data) > 16:
            raise ApduError(SW.WRONG_LENGTH, "AID longer than 16 bytes")
        applet = self._find(cmd.data)
        if applet is None:
            # The current selection and its security state stay as they were.
            raise ApduError(SW.FILE_NOT_FOUND, f"no applet with AID {cmd.data.hex()}")
        if applet is channel.applet:
            fci = applet.select(channel.session, cmd)
        else:
            session = applet.new_session()
            fci = applet.select(session, cmd)  # may raise: the old selection stays
            self._deselect(channel)
            channel.applet, channel.session = applet, session
        return b"" if cmd.p2 & 0x0C == 0x0C else fci

    def _manage_channel(self, cmd: CommandApdu) -> bytes:
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH, "MANAGE CHANNEL takes no data")
        origin = decode_cla(cmd.cla).channel
        if cmd.p1 == 0x00:
            return self._open_channel(origin, cmd.p2)
        if cmd.p1 == 0x80:
            target = cmd.p2 or origin
            if target == 0:
                raise ApduError(SW.INCORRECT_PARAMETERS, "the basic channel cannot be closed")
            channel = self._channels.pop(target, None)
            if channel is None:
                raise ApduError(SW.INCORRECT_PARAMETERS, f"channel {target} is not open")
            self._deselect(channel)
            return b""
        raise ApduError(SW.INCORRECT_PARAMETERS, f"MANAGE CHANNEL P1 {cmd.p1:02X}")

    def _open_channel(self, origin: int, requested: int) -> bytes:
        if requested:
            if requested >= self._max_channels:
                raise ApduError(SW.LOGICAL_CHANNEL_NOT_SUPPORTED, f"no channel {requested}")
            if requested in self._channels:
                raise ApduError(SW.INCORRECT_PARAMETERS, f"channel {requested} already open")
            number = requested
        else:
            free = [n for n in range(1, self._max_channels) if n not in self._channels]
            if not free:
                raise ApduError(SW.LOGICAL_CHANNEL_NOT_SUPPORTED, "no free logical channel")
            number = free[0]
        # ISO 7816-4: opened from channel 0 the new channel gets the default
        # applet; from another channel, that channel's applet.
        applet = self._default if origin == 0 else self._channels[origin].applet
        self._channels[number] = self._new_channel(applet)
        return b"" if requested else bytes((number,))

    def _new_channel(self, applet: Applet[Any] | None) -> _Channel:
        channel = _Channel()
        if applet is not None:
            try:
                session = applet.new_session()
                applet.select(session, CommandApdu(0, INS_SELECT, 4, 0, applet.aid))
            except Exception:
                log.exception("implicit selection of %s failed", applet.aid.hex())
            else:
                channel.applet, channel.session = applet, session
        return channel

    @staticmethod
    def _deselect(channel: _Channel) -> None:
        applet = channel.applet
        if applet is None:
            return
        session = channel.session
        channel.applet = channel.session = None
        try:
            applet.deselect(session)
        except Exception:
            log.exception("deselect of %s failed", applet.aid.hex())
