"""Reading APDU traces in tests: did a secret get through?

The card's trace (``[n] > CMD`` / ``[n] < RESP``) and the relay's
(``label > CMD < RESP``) print bytes as upper-case hex pairs and hidden data
as ``<N secret bytes>``. A secret sent in chained chunks, or read back in
GET RESPONSE pieces, is cut across lines, so :func:`leaks` searches the data
fields joined in order as well as the plain text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["leaks", "traced_data"]

_HEX_RUN = r"((?:[0-9A-Fa-f]{2} )*[0-9A-Fa-f]{2})"
_COMMAND = re.compile(r"> " + _HEX_RUN + r"(?: <|\s*$)")
_RESPONSE = re.compile(r"< " + _HEX_RUN + r"\s*$")


def traced_data(text: str) -> tuple[str, str]:
    """The data fields of all traced commands, and of all responses, each joined in order.

    Lower-case hex. Hidden data (``<N secret bytes>``) adds nothing.
    """
    commands: list[str] = []
    responses: list[str] = []
    for line in text.splitlines():
        if (match := _COMMAND.search(line)) is not None:
            tokens = match.group(1).split()
            extended = len(tokens) > 7 and tokens[4] == "00"
            commands.extend(tokens[7 if extended else 5 :])
        if (match := _RESPONSE.search(line)) is not None:
            responses.extend(match.group(1).split()[:-2])
    return "".join(commands).lower(), "".join(responses).lower()


def leaks(text: str, secrets: Mapping[str, bytes], window: int = 8) -> list[str]:
    """The names of ``secrets`` of which ``window`` consecutive bytes appear in ``text``.

    Searched as raw bytes, as hex digits in any case with any separators, and
    in the traced data fields joined across lines (:func:`traced_data`).
    """
    streams = [re.sub(r"[^0-9a-f]", "", text.lower()), *traced_data(text)]
    raw = text.encode(errors="replace")
    found = []
    for name, value in secrets.items():
        size = min(window, len(value))
        pieces = [value[i : i + size] for i in range(0, len(value) - size + 1)]
        if any(p in raw or any(p.hex() in s for s in streams) for p in pieces):
            found.append(name)
    return found
