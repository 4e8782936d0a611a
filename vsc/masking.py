"""What a trace must not show: one classification of secret-bearing APDUs for every trace.

Theory of operation
-------------------
Whether an APDU carries a secret depends on what it means, and that is the
business of the applet it is for: VERIFY's data is a PIN; PUT DATA's data
is secret only for the objects PIV guards with its PIN (the management key
kept in 5FC109 among them). Each applet publishes :class:`TraceRules`: a
table from INS to a :class:`Mask` (the command's data, the response's data,
both, or neither), or to a function that decides from P1, P2 and the first
:data:`PREFIX` bytes of the command's data; INS the table does not name get
the rules' default. A function returns None while those bytes do not decide
yet, and once it has decided, more data never changes its answer.

:class:`TraceMasker` applies the rules to exchanges as a trace sees them,
command and response bytes only. The card's trace (:mod:`vsc.card`) and the
relay's traces (:mod:`vsc.share.masking`) use it alike, so they cannot
disagree. Per logical channel it follows:

* the selected applet: SELECT by AID (``A4 04``) answered ``9000``/``61xx``
  /``62xx``/``63xx`` switches to the rules a resolver gives for the AID, or
  to :data:`UNKNOWN`; MANAGE CHANNEL opens and closes channels;
* the chained command in progress: each chunk is classified with all data
  of the chain so far, so a secret named by the first chunk hides the last
  one, and a tag cut across chunks decides when it is whole (the chunks
  before are hidden meanwhile). A card may drop a chain the masker still
  follows (an error, a different card's rules), so each chunk is also
  classified as if it began a command; what either reading hides is hidden,
  and stays hidden for the rest of the chain;
* the response pending: a response cut with ``61xx`` hands its mask to the
  GET RESPONSEs that fetch the rest (until another response is cut).

What it cannot know, it hides: a command of unknown shape or with secure
messaging, a channel whose applet it has not seen selected (after
:meth:`TraceMasker.forget`, e.g. when a trace starts mid-session), a
decision still open when the command is complete. A masked command keeps
its 4-byte header, a masked response its status word.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .apdu import (
    INS_GET_RESPONSE,
    INS_MANAGE_CHANNEL,
    INS_SELECT,
    CommandApdu,
    decode_cla,
)
from .sw import ApduError

__all__ = ["PREFIX", "UNKNOWN", "Classify", "Mask", "TraceMasker", "TraceRules"]

log = logging.getLogger(__name__)

#: How many leading bytes of a command's data the rules may look at.
PREFIX = 64


class Mask(enum.Flag):
    """What of one exchange a trace hides."""

    NONE = 0
    #: The command's data field (the header stays visible).
    COMMAND = enum.auto()
    #: The response's data, and the rest of it fetched by GET RESPONSE (the SW stays visible).
    RESPONSE = enum.auto()
    BOTH = COMMAND | RESPONSE


#: ``classify(p1, p2, data)``: a mask, or None while ``data`` (a prefix) does not decide.
Classify = Callable[[int, int, bytes], Mask | None]


@dataclass(frozen=True, slots=True, eq=False)
class TraceRules:
    """What an applet's commands and responses carry that a trace must hide."""

    #: INS -> a mask, or a function deciding from P1, P2 and the data's first bytes.
    by_ins: Mapping[int, Mask | Classify] = field(default_factory=dict)
    #: The mask of every INS not in :attr:`by_ins`.
    default: Mask = Mask.NONE

    @classmethod
    def hiding(cls, ins: frozenset[int] | set[int]) -> TraceRules:
        """Rules that hide both ways the data of the given INS bytes and nothing else."""
        return cls(dict.fromkeys(ins, Mask.BOTH))

    def classify(self, ins: int, p1: int, p2: int, data: bytes) -> Mask | None:
        rule = self.by_ins.get(ins, self.default)
        if isinstance(rule, Mask):
            return rule
        return rule(p1, p2, data[:PREFIX])


#: An applet nobody knows: every command and response is hidden.
UNKNOWN = TraceRules(default=Mask.BOTH)

_SELECTED_SW1 = frozenset({0x90, 0x61, 0x62, 0x63})
_ChainKey = tuple[int, int, int, int]


class _Lane:
    """One logical channel as the trace sees it."""

    __slots__ = ("chain_data", "chain_key", "chain_mask", "pending", "rules")

    def __init__(self, rules: TraceRules, pending: Mask = Mask.NONE) -> None:
        self.rules = rules
        self.pending = pending  # the mask of response bytes left for GET RESPONSE
        self.chain_key: _ChainKey | None = None
        self.chain_data = b""  # the chain's first PREFIX bytes
        self.chain_mask = Mask.NONE  # hidden for the rest of the chain


def _decided(mask: Mask | None) -> Mask:
    return Mask.BOTH if mask is None else mask


class TraceMasker:
    """Follows the exchanges of one card (or one relayed reader) and masks each.

    ``resolve(aid)`` gives the rules of the applet SELECT would choose for
    ``aid`` (None: unknown, everything hidden). See the module docstring.
    """

    __slots__ = ("_default", "_lanes", "_resolve")

    def __init__(self, resolve: Callable[[bytes], TraceRules | None]) -> None:
        self._resolve = resolve
        self._default = UNKNOWN
        self._lanes: dict[int, _Lane] = {}

    # -- what the owner knows ---------------------------------------------------------------

    def forget(self, default: TraceRules = UNKNOWN) -> None:
        """Know nothing of any channel (until SELECT); ``default``: the default applet's rules."""
        self._default = default
        self._lanes = {}

    def open(
        self,
        channel: int,
        rules: TraceRules,
        *,
        chain: tuple[_ChainKey, bytes] | None = None,
        pending: bool = False,
    ) -> None:
        """Channel ``channel`` is open with ``rules``, maybe inside a chain, maybe with bytes
        left for GET RESPONSE (their mask unknown, so hidden)."""
        lane = _Lane(rules, Mask.BOTH if pending else Mask.NONE)
        if chain is not None:
            lane.chain_key, lane.chain_data = chain[0], chain[1][:PREFIX]
        self._lanes[channel] = lane

    # -- the exchanges ---------------------------------------------------------------------

    def exchange(self, command: bytes, response: bytes) -> Mask:
        """What of this exchange the trace hides; updates what the masker follows. Never raises."""
        try:
            return self._exchange(command, response)
        except Exception:  # a bug, here or in an applet's rule: hide, start over, say so
            log.exception("trace masking failed; hiding this exchange and forgetting the card")
            self._lanes = {}
            return Mask.BOTH

    def _exchange(self, command: bytes, response: bytes) -> Mask:
        try:
            cmd = CommandApdu.parse(command)
            cla = decode_cla(cmd.cla)
        except ApduError:
            return Mask.BOTH  # the card refuses it, but its bytes may still be a PIN
        if cla.secure_messaging:
            return Mask.BOTH
        lane = self._lanes.get(cla.channel)
        if lane is None:
            lane = self._lanes[cla.channel] = _Lane(UNKNOWN, Mask.BOTH)
        ins = cmd.ins
        if ins == INS_GET_RESPONSE and not cla.chaining:
            return lane.pending
        key = (cmd.cla & 0xEF, ins, cmd.p1, cmd.p2)
        data = cmd.data
        if key == lane.chain_key:
            data = (lane.chain_data + data)[:PREFIX]
            mask = self._continue(lane, cmd, data, cla.chaining)
        elif cla.chaining:
            mask = self._start(lane, cmd, key)
        else:
            mask = _decided(self._classify(lane, cmd, data))
        if len(response) >= 2 and response[-2] == 0x61:
            lane.pending = mask & Mask.RESPONSE
        if not cla.chaining:
            self._card_command(cla.channel, lane, cmd, data, response)
        return mask

    def _classify(self, lane: _Lane, cmd: CommandApdu, data: bytes) -> Mask | None:
        ins = cmd.ins
        if ins == INS_MANAGE_CHANNEL or (ins == INS_SELECT and cmd.p1 == 0x04):
            return Mask.NONE  # the card's own commands: AIDs and channel numbers
        return lane.rules.classify(ins, cmd.p1, cmd.p2, data)

    def _start(self, lane: _Lane, cmd: CommandApdu, key: _ChainKey) -> Mask:
        if cmd.ins == INS_GET_RESPONSE:
            return Mask.BOTH  # refused by the card (GET RESPONSE cannot be chained)
        data = cmd.data[:PREFIX]
        decided = self._classify(lane, cmd, data)
        lane.chain_key, lane.chain_data = key, data
        # Undecided: later chunks decide with more data, unless there can be no more.
        lane.chain_mask = Mask.BOTH if decided is None and len(data) == PREFIX else Mask.NONE
        return _decided(decided)

    def _continue(self, lane: _Lane, cmd: CommandApdu, joined: bytes, chaining: bool) -> Mask:
        whole = self._classify(lane, cmd, joined)
        alone = self._classify(lane, cmd, cmd.data)  # if the card began a new command here
        mask = lane.chain_mask | _decided(whole) | _decided(alone)
        if not chaining:
            lane.chain_key, lane.chain_data, lane.chain_mask = None, b"", Mask.NONE
            return mask
        lane.chain_data = joined
        # Only the whole reading is followed further; what the other hides stays hidden.
        sticky = lane.chain_mask | _decided(alone)
        if whole is not None:
            sticky |= whole
        elif len(joined) == PREFIX:
            sticky = Mask.BOTH
        lane.chain_mask = sticky
        return mask

    def _card_command(
        self, channel: int, lane: _Lane, cmd: CommandApdu, data: bytes, response: bytes
    ) -> None:
        """SELECT and MANAGE CHANNEL (complete, with all their data), as the card answered them."""
        ins = cmd.ins
        if ins == INS_SELECT and cmd.p1 == 0x04:
            if len(response) >= 2 and response[-2] in _SELECTED_SW1:
                lane.rules = self._resolve(data) or UNKNOWN
        elif ins == INS_MANAGE_CHANNEL and response[-2:] == b"\x90\x00":
            if cmd.p1 == 0x00:
                number = cmd.p2 or (response[0] if len(response) == 3 else -1)
                rules = self._default if channel == 0 else lane.rules
                if number > 0:
                    self._lanes[number] = _Lane(rules)
            elif cmd.p1 == 0x80:
                self._lanes.pop(cmd.p2 or channel, None)
