"""The law every card must keep, whatever it is sent.

*Any input yields a well-formed response and the card stays usable*
(docs/robustness.md). :func:`check_response` judges one answer; a broken law
is a :class:`Violation`; a usability probe raises :class:`ProbeFailed`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..apdu import CommandApdu
from ..sw import is_valid_sw

__all__ = ["ProbeFailed", "Violation", "check_response"]


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken law: ``kind`` is law, exception, internal, hang or probe."""

    kind: str
    message: str
    step: int | None = None

    def __str__(self) -> str:
        where = "probe" if self.step is None else f"step {self.step}"
        return f"{self.kind} at {where}: {self.message}"


class ProbeFailed(Exception):
    """A usability probe found the card broken; the message says how."""


def check_response(command: bytes, response: bytes) -> str | None:
    """Why ``response`` is not a well-formed answer to ``command``, or None."""
    if not isinstance(response, bytes | bytearray):
        return f"response is {type(response).__name__}, not bytes"
    if len(response) < 2:
        return f"response of {len(response)} bytes"
    sw = int.from_bytes(response[-2:], "big")
    if not is_valid_sw(sw):
        return f"invalid status word {sw:04X}"
    if sw >> 8 == 0x6C:
        return f"6Cxx ({sw:04X}) is never sent"
    try:
        ne = CommandApdu.parse(command).ne
    except Exception:
        ne = 0
    if len(response) - 2 > ne:
        return f"{len(response) - 2} data bytes for Ne {ne}"
    return None
