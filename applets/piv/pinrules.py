"""PIN composition rules of a managed card: lengths and character classes.

Modelled on Windows' smart card PIN policy (``tpmvscmgr create /pinpolicy``):
a minimum and maximum length, and for each of lowercase letters, uppercase
letters, digits and symbols whether they are optional, mandatory or not
allowed. Every refusal names the rule that failed, so a user (or a log
reader) knows what to change. The rules never see more than one PIN at a
time and never keep it.

A PIN here is the value without its FF padding. With rules in force its
characters must be printable ASCII (rule ``printable``): other bytes cannot
be typed the same way on every keyboard, and no class rule could cover them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vsc.sw import InvalidData

__all__ = ["CLASSES", "CharRule", "PinRuleError", "PinRules", "members", "strip_padding"]

#: ASCII punctuation and the space: what Windows calls special characters.
SYMBOLS = (
    frozenset(range(0x20, 0x7F))
    - frozenset(b"0123456789")
    - frozenset(range(0x41, 0x5B))
    - frozenset(range(0x61, 0x7B))
)

#: The character classes in the order rules are checked and printed.
CLASSES: tuple[str, ...] = ("lowercase", "uppercase", "digits", "symbols")

_MEMBERS: dict[str, frozenset[int]] = {
    "lowercase": frozenset(range(0x61, 0x7B)),
    "uppercase": frozenset(range(0x41, 0x5B)),
    "digits": frozenset(range(0x30, 0x3A)),
    "symbols": SYMBOLS,
}
_NOUNS = {
    "lowercase": "a lowercase letter",
    "uppercase": "an uppercase letter",
    "digits": "a digit",
    "symbols": "a symbol",
}
_PLURALS = {
    "lowercase": "lowercase letters",
    "uppercase": "uppercase letters",
    "digits": "digits",
    "symbols": "symbols",
}


class CharRule(StrEnum):
    """What a PIN may or must contain of one character class."""

    OPTIONAL = "optional"
    MANDATORY = "mandatory"
    NOT_ALLOWED = "not-allowed"

    @classmethod
    def parse(cls, text: str) -> CharRule:
        """Also Windows' words: ``allowed``, ``required``, ``disallowed``."""
        word = text.strip().lower().replace("_", "-")
        try:
            return _ALIASES[word]
        except KeyError:
            choices = ", ".join(rule.value for rule in cls)
            raise ValueError(f"{text!r} is not one of {choices}") from None


_ALIASES = {
    "optional": CharRule.OPTIONAL,
    "allowed": CharRule.OPTIONAL,
    "mandatory": CharRule.MANDATORY,
    "required": CharRule.MANDATORY,
    "not-allowed": CharRule.NOT_ALLOWED,
    "disallowed": CharRule.NOT_ALLOWED,
    "forbidden": CharRule.NOT_ALLOWED,
}


class PinRuleError(InvalidData):
    """A PIN the rules refuse (``6A80`` through the card); ``rule`` names the rule."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{message} (PIN policy rule {rule})")
        self.rule = rule
        self.reason = message


def members(name: str) -> frozenset[int]:
    """The byte values of the character class ``name`` (one of :data:`CLASSES`)."""
    return _MEMBERS[name]


def strip_padding(block: bytes) -> bytes:
    """A PIN block without its trailing FF padding."""
    return bytes(block).rstrip(b"\xff")


@dataclass(frozen=True, slots=True)
class PinRules:
    """A card's PIN policy. Construction refuses a policy no PIN could satisfy."""

    min_length: int = 6
    max_length: int = 8
    lowercase: CharRule = CharRule.OPTIONAL
    uppercase: CharRule = CharRule.OPTIONAL
    digits: CharRule = CharRule.OPTIONAL
    symbols: CharRule = CharRule.OPTIONAL

    def __post_init__(self) -> None:
        if not 1 <= self.min_length <= self.max_length <= 127:
            raise ValueError(
                f"PIN lengths {self.min_length}-{self.max_length}: need 1 <= min <= max <= 127"
            )
        rules = [self.rule(name) for name in CLASSES]
        if all(rule is CharRule.NOT_ALLOWED for rule in rules):
            raise ValueError("every character class is not allowed: no PIN could be set")
        mandatory = sum(rule is CharRule.MANDATORY for rule in rules)
        if mandatory > self.max_length:
            raise ValueError(
                f"{mandatory} mandatory character classes do not fit in {self.max_length}"
                " characters"
            )

    def rule(self, name: str) -> CharRule:
        value: CharRule = getattr(self, name)
        return value

    def violation(self, pin: bytes) -> PinRuleError | None:
        """The first rule ``pin`` (without padding) breaks, or None."""
        if any(not 0x20 <= b < 0x7F for b in pin):
            return PinRuleError("printable", "the PIN may contain printable ASCII characters only")
        if len(pin) < self.min_length:
            return PinRuleError(
                "min-length", f"the PIN must have at least {self.min_length} characters"
            )
        if len(pin) > self.max_length:
            return PinRuleError(
                "max-length", f"the PIN must have at most {self.max_length} characters"
            )
        present = set(pin)
        for name in CLASSES:
            rule, has = self.rule(name), bool(present & _MEMBERS[name])
            if rule is CharRule.MANDATORY and not has:
                return PinRuleError(name, f"the PIN must contain {_NOUNS[name]}")
            if rule is CharRule.NOT_ALLOWED and has:
                return PinRuleError(name, f"the PIN must not contain {_PLURALS[name]}")
        return None

    def check(self, pin: bytes) -> None:
        """Raise :class:`PinRuleError` naming the first rule ``pin`` breaks."""
        error = self.violation(pin)
        if error is not None:
            raise error

    def describe(self) -> list[str]:
        """One line per rule, for ``vsc info`` and the CLI's help."""
        if self.min_length == self.max_length:
            lines = [f"length: exactly {self.min_length} characters"]
        else:
            lines = [f"length: {self.min_length} to {self.max_length} characters"]
        lines += [f"{name}: {self.rule(name).value}" for name in CLASSES]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_length": self.min_length,
            "max_length": self.max_length,
            **{name: self.rule(name).value for name in CLASSES},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PinRules:
        """Inverse of :meth:`to_dict`; ``ValueError`` on anything malformed."""
        try:
            return cls(
                int(d["min_length"]),
                int(d["max_length"]),
                *(CharRule(d[name]) for name in CLASSES),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed PIN rules: {e}") from e
