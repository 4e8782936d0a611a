"""The applet interface: what runs on a :class:`vsc.card.Card`.

An applet owns its persistent data (the instance) and hands the card a fresh
*session* object for every logical channel it is selected on; the session
holds volatile security state (PIN verified, key authenticated, ...), so the
card can drop it on reset, on power-off and when another applet is selected.

Handlers are methods marked with :func:`command`::

    class Echo(Applet[None]):
        aid = bytes.fromhex("F000000001")

        def new_session(self) -> None:
            return None

        @command(0x01)
        def echo(self, apdu: CommandApdu, session: None) -> bytes:
            return apdu.data

A handler returns the response data (status ``9000``) or a :class:`Response`
for a data-carrying warning, and raises :class:`vsc.sw.ApduError` for every
failure. The card does everything else: CLA checks, chaining, response
sizing, GET RESPONSE, SELECT and MANAGE CHANNEL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from .apdu import CommandApdu, aid_matches
from .masking import TraceRules
from .sw import SW, ApduError

S = TypeVar("S")
F = TypeVar("F", bound=Callable[..., Any])

_INS_ATTR = "_vsc_ins"


@dataclass(frozen=True, slots=True)
class Response:
    """Response data with a status word other than ``9000``."""

    data: bytes
    sw: int


def command(*ins: int) -> Callable[[F], F]:
    """Mark a method as the handler of one or more INS bytes."""

    def mark(fn: F) -> F:
        setattr(fn, _INS_ATTR, ins)
        return fn

    return mark


class Applet(Generic[S]):
    """Base class of applets. Subclasses set :attr:`aid` and define handlers."""

    #: The applet's full AID.
    aid: bytes = b""
    #: The shortest AID prefix SELECT accepts (PIV: 5, the RID alone).
    #: 0 means the full AID only.
    min_aid_prefix: ClassVar[int] = 0
    #: INS bytes whose command and response data are secrets (PINs, keys):
    #: the APDU trace hides them, unless the class sets :attr:`trace_rules`.
    secret_ins: ClassVar[frozenset[int]] = frozenset()
    #: What every trace (the card's, a relay's) hides of this applet's
    #: commands and responses (:mod:`vsc.masking`). Defaults to the data of
    #: :attr:`secret_ins`, both ways; an applet whose secrets depend on more
    #: than the INS (an object tag, a key reference) sets its own.
    trace_rules: ClassVar[TraceRules] = TraceRules()
    #: Whether CLA bytes 80-FE reach the handlers (else ``6E00``).
    accepts_proprietary_cla: ClassVar[bool] = False

    #: INS -> handler, collected from the :func:`command` marks.
    commands: ClassVar[dict[int, Callable[[Any, CommandApdu, Any], bytes | Response]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Every base's handlers, the leftmost base's winning (as in the MRO): a mixin
        # placed before an applet class must not hide the applet's table behind its own.
        table: dict[int, Callable[[Any, CommandApdu, Any], bytes | Response]] = {}
        for base in reversed(cls.__bases__):
            table.update(getattr(base, "commands", {}))
        for value in cls.__dict__.values():
            for ins in getattr(value, _INS_ATTR, ()):
                table[ins] = value
        cls.commands = table
        if "is_secret" in cls.__dict__:  # the old hook: ignoring it would show its secrets
            raise TypeError(
                f"{cls.__name__}.is_secret is no longer called: declare trace_rules "
                "(vsc.masking.TraceRules) or secret_ins instead"
            )
        if "secret_ins" in cls.__dict__ and "trace_rules" not in cls.__dict__:
            cls.trace_rules = TraceRules.hiding(cls.secret_ins)

    def matches(self, aid: bytes) -> bool:
        """Whether SELECT with ``aid`` selects this applet."""
        return aid_matches(aid, self.aid, self.min_aid_prefix)

    def new_session(self) -> S:
        """Fresh volatile state for one logical channel."""
        raise NotImplementedError

    def select(self, session: S, apdu: CommandApdu) -> bytes:
        """Called on SELECT; returns the FCI (or other selection response)."""
        return b""

    def deselect(self, session: S) -> None:
        """Called when the session ends: another SELECT, channel close, reset."""

    def process(self, apdu: CommandApdu, session: S) -> bytes | Response:
        """Run one complete (already de-chained) command."""
        handler = self.commands.get(apdu.ins)
        if handler is None:
            raise ApduError(SW.INVALID_INSTRUCTION, f"INS {apdu.ins:02X} not supported")
        return handler(self, apdu, session)
