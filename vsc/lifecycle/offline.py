"""The offline challenge and response of unblock and unlock: short codes to read aloud.

Theory of operation
-------------------
Windows' integrated unblock lets a user without a working PIN call a
helpdesk: the card shows a challenge, the helpdesk computes the response
with the card's admin key on its own machine, the user types it in. vsc does
the same for unblocking the PIN (``vsc unblock``) and for time-limited
access to a locked card (``vsc unlock --for 8h``).

A **challenge** is 10 bytes, shown as 16 Crockford base32 characters in
groups of four (``K7QD-2M9X-...``): the purpose (unblock or unlock), the
duration asked for (minutes, 3 bytes; ``FFFFFF`` = unrestricted, 0 for an
unblock), a 40-bit nonce from the card, and a check byte that catches a
mistyped challenge before anyone computes a response for it.

The **response** is ``HMAC-SHA256(admin key, "vsc/offline-response/v1" ||
challenge)`` cut to 45 bits, plus 5 check bits: 10 characters,
``XXXXX-XXXXX``. It binds everything in the challenge: a response for
"unlock 8 hours" does not open the card for a week, and a user who edits the
challenge to ask for more gets a response the card refuses (the card checks
against the request it stored, never against what is typed back).

The card keeps the pending request until it is answered correctly, replaced
or expired; every wrong response costs a try of the management key's counter
(:class:`applets.piv.managed.AdminCounter`), checked before the comparison.
45 bits against 10 tries and then one per hour leave an attacker a chance
of about 1 in 4 billion per year. The check bits only catch typing errors
(they are a function of the response, not of the key) and cost no try.

Crockford's alphabet has no I, L, O or U; decoding reads I and L as 1 and O
as 0, ignores case, spaces and hyphens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "CHALLENGE_LENGTH",
    "UNRESTRICTED",
    "MistypedCode",
    "Purpose",
    "Request",
    "check_response",
    "compute_response",
    "describe_minutes",
    "parse_response",
]

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(ALPHABET)} | {"I": 1, "L": 1, "O": 0}
#: The duration field's "no end".
UNRESTRICTED = 0xFFFFFF
CHALLENGE_LENGTH = 10
_NONCE_LENGTH = 5
_MAC_BITS = 45
_CHECK_BITS = 5
_RESPONSE_CHARS = (_MAC_BITS + _CHECK_BITS) // 5
_CHALLENGE_LABEL = b"vsc/offline-challenge/v1\0"
_RESPONSE_LABEL = b"vsc/offline-response/v1\0"
_CHECK_LABEL = b"vsc/offline-response-check/v1\0"


class MistypedCode(ValueError):
    """A challenge or response whose check fails: a typing error, not a wrong key."""


class Purpose(IntEnum):
    """The first byte of a challenge."""

    UNBLOCK = 0x01
    UNLOCK = 0x02


def _encode(value: int, chars: int) -> str:
    return "".join(ALPHABET[(value >> (5 * (chars - 1 - i))) & 31] for i in range(chars))


def _decode(text: str, chars: int, what: str) -> int:
    cleaned = "".join(text.split()).replace("-", "").upper()
    if len(cleaned) != chars:
        raise MistypedCode(f"a {what} has {chars} characters, not {len(cleaned)}")
    value = 0
    for c in cleaned:
        digit = _DECODE.get(c)
        if digit is None:
            raise MistypedCode(f"{c!r} cannot appear in a {what}")
        value = value << 5 | digit
    return value


def _group(text: str, size: int) -> str:
    return "-".join(text[i : i + size] for i in range(0, len(text), size))


def describe_minutes(minutes: int) -> str:
    """``480`` → ``8 hours``; :data:`UNRESTRICTED` → ``unrestricted``."""
    if minutes == UNRESTRICTED:
        return "unrestricted"
    for unit, size in (("week", 10080), ("day", 1440), ("hour", 60), ("minute", 1)):
        if minutes % size == 0:
            count = minutes // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Request:
    """What a challenge asks for: an unblock, or an unlock for ``minutes``."""

    purpose: Purpose
    minutes: int
    nonce: bytes

    def __post_init__(self) -> None:
        if len(self.nonce) != _NONCE_LENGTH:
            raise ValueError(f"the nonce has {_NONCE_LENGTH} bytes")
        if self.purpose is Purpose.UNBLOCK and self.minutes != 0:
            raise ValueError("an unblock asks for no duration")
        if self.purpose is Purpose.UNLOCK and not 1 <= self.minutes <= UNRESTRICTED:
            raise ValueError("an unlock lasts 1 minute to 31 years, or is unrestricted")

    @classmethod
    def new(cls, purpose: Purpose, minutes: int = 0) -> Request:
        """A request with a fresh random nonce."""
        return cls(purpose, minutes, secrets.token_bytes(_NONCE_LENGTH))

    @property
    def unrestricted(self) -> bool:
        return self.minutes == UNRESTRICTED

    def to_bytes(self) -> bytes:
        body = bytes((self.purpose,)) + self.minutes.to_bytes(3, "big") + self.nonce
        return body + hashlib.sha256(_CHALLENGE_LABEL + body).digest()[:1]

    def encode(self) -> str:
        """The challenge to show: ``XXXX-XXXX-XXXX-XXXX``."""
        raw = self.to_bytes()
        return _group(_encode(int.from_bytes(raw, "big"), 16), 4)

    @classmethod
    def decode(cls, text: str) -> Request:
        """A typed challenge; :class:`MistypedCode` if its check fails."""
        return cls.from_bytes(_decode(text, 16, "challenge").to_bytes(CHALLENGE_LENGTH, "big"))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Request:
        """Inverse of :meth:`to_bytes`; :class:`MistypedCode` if the check fails."""
        if len(raw) != CHALLENGE_LENGTH:
            raise MistypedCode(f"a challenge has {CHALLENGE_LENGTH} bytes")
        body, check = raw[:-1], raw[-1:]
        if hashlib.sha256(_CHALLENGE_LABEL + body).digest()[:1] != check:
            raise MistypedCode("the challenge is mistyped (its check fails)")
        try:
            purpose = Purpose(body[0])
        except ValueError:
            raise MistypedCode("not a vsc challenge (unknown purpose)") from None
        try:
            return cls(purpose, int.from_bytes(body[1:4], "big"), body[4:])
        except ValueError as e:
            raise MistypedCode(f"not a valid challenge: {e}") from None

    def describe(self) -> str:
        if self.purpose is Purpose.UNBLOCK:
            return "unblock the PIN"
        if self.unrestricted:
            return "unlock the card, unrestricted"
        return f"unlock the card for {describe_minutes(self.minutes)}"


def _mac(admin_key: bytes, request: Request) -> int:
    digest = hmac.new(admin_key, _RESPONSE_LABEL + request.to_bytes(), hashlib.sha256).digest()
    return int.from_bytes(digest[:6], "big") >> (48 - _MAC_BITS)


def _check(mac: int) -> int:
    digest = hashlib.sha256(_CHECK_LABEL + mac.to_bytes(6, "big")).digest()
    return digest[0] >> (8 - _CHECK_BITS)


def compute_response(admin_key: bytes, request: Request) -> str:
    """The response to ``request`` (the helpdesk side): ``XXXXX-XXXXX``."""
    mac = _mac(admin_key, request)
    return _group(_encode(mac << _CHECK_BITS | _check(mac), _RESPONSE_CHARS), 5)


def parse_response(text: str) -> int:
    """The MAC bits of a typed response; :class:`MistypedCode` if its check fails."""
    value = _decode(text, _RESPONSE_CHARS, "response")
    mac, check = value >> _CHECK_BITS, value & ((1 << _CHECK_BITS) - 1)
    if _check(mac) != check:
        raise MistypedCode("the response is mistyped (its check fails): no try was used")
    return mac


def check_response(admin_key: bytes, request: Request, mac: int) -> bool:
    """Whether ``mac`` (from :func:`parse_response`) answers ``request``; constant time."""
    expected = _mac(admin_key, request).to_bytes(6, "big")
    return hmac.compare_digest(expected, mac.to_bytes(6, "big"))
