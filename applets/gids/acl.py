"""GIDS access conditions: the compact security attributes (tag ``8C``) of a file.

Theory of operation
-------------------
Every GIDS file carries its access rules in its FCP as one compact security
attribute (ISO 7816-4 §5.4.3.2): an *access-mode* byte, then one
*security-condition* byte for each of its bits b7 .. b1 that is set, highest
bit first. What a bit means depends on the kind of file (:class:`DfOp`,
:class:`DataOp`, :class:`KeyOp`, :class:`EfOp`); b8 only says whether
b7 .. b4 are proprietary and owns no condition byte. OpenSC's driver and the
Windows minidriver write, for instance, ``8C 03 03 30 00`` (a data file that
anyone reads and the user or the administrator writes) and
``8C 05 8F 10 10 10 00`` (a key that only the user may generate, replace
and use, whose public part anyone reads).

A condition byte is ``00`` (always), ``FF`` (never) or a combination:

* b5 (``10``): the user PIN verified in this session;
* b6 (``20``): the administrator key authenticated (external or mutual
  authentication) in this session;
* b8: all the listed conditions (set) or any one of them (clear);
* b7 (``40``): secure messaging, which vsc does not offer: such a condition
  can never be met;
* b4 .. b1: a security environment; ``1`` is the contact interface (vsc is
  a contact card, so it is met), ``0`` none; any other is never met.

An operation whose bit is absent from the access-mode byte has no condition
of its own: it is governed by the rules of the command (e.g. the
application's create and delete rules, see :mod:`applets.gids.applet`).
While the application is in its creation state nothing here applies: the
applet lets the personalisation through (GIDS §7 and what gids-tool relies
on), except what a file marks ``FF``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType

from vsc.sw import InvalidData

__all__ = [
    "ALWAYS",
    "NEVER",
    "AccessRules",
    "DataOp",
    "DfOp",
    "EfOp",
    "KeyOp",
    "needs_user",
    "satisfied",
]

ALWAYS = 0x00
NEVER = 0xFF

_USER = 0x10
_ADMIN = 0x20
_SECURE_MESSAGING = 0x40
_ALL = 0x80
_CONTACT_ENVIRONMENTS = frozenset({0x0, 0x1})


class DfOp(IntEnum):
    """Access-mode bits of the application (a DF)."""

    DELETE_CHILD = 0x01
    CREATE_EF = 0x02
    CREATE_DF = 0x04
    DEACTIVATE = 0x08
    ACTIVATE = 0x10
    TERMINATE = 0x20
    DELETE_SELF = 0x40


class DataOp(IntEnum):
    """Access-mode bits of a BER-TLV data file (GET DATA / PUT DATA)."""

    GET = 0x01
    PUT = 0x02


class KeyOp(IntEnum):
    """Access-mode bits of a key file."""

    GET_PUBLIC = 0x01
    PUT_KEY = 0x02
    USE = 0x04  # MANAGE SECURITY ENVIRONMENT, and with it every operation of the key
    GENERATE = 0x08


class EfOp(IntEnum):
    """Access-mode bits every elementary file shares with ISO 7816-4's EFs."""

    DEACTIVATE = 0x08
    ACTIVATE = 0x10
    TERMINATE = 0x20
    DELETE = 0x40


@dataclass(frozen=True, slots=True)
class AccessRules:
    """The conditions of one file, by access-mode bit."""

    conditions: Mapping[int, int]

    @classmethod
    def parse(cls, value: bytes) -> AccessRules:
        """An ``8C`` value; ``6A80`` unless it has exactly one byte per mode bit."""
        if not value:
            raise InvalidData("empty security attribute")
        mode = value[0]
        bits = [bit for bit in (0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01) if mode & bit]
        if len(value) != 1 + len(bits):
            raise InvalidData(
                f"access mode {mode:02X} needs {len(bits)} condition bytes, not {len(value) - 1}"
            )
        return cls(MappingProxyType(dict(zip(bits, value[1:], strict=True))))

    def condition(self, op: int) -> int | None:
        """The condition byte of ``op``; None when the file sets none."""
        return self.conditions.get(op)


def satisfied(condition: int, *, user: bool, admin: bool) -> bool:
    """Whether a condition byte is met by the session's PIN and admin status."""
    if condition == ALWAYS:
        return True
    if condition == NEVER or condition & _SECURE_MESSAGING:
        return False
    if condition & 0x0F not in _CONTACT_ENVIRONMENTS:
        return False
    wanted = [met for bit, met in ((_USER, user), (_ADMIN, admin)) if condition & bit]
    if not wanted:
        return True  # an environment condition alone
    return all(wanted) if condition & _ALL else any(wanted)


def needs_user(condition: int | None) -> bool:
    """Whether nothing but a session with the user PIN can meet ``condition``."""
    if condition is None or condition == ALWAYS:
        return False
    if condition == NEVER or not condition & _USER:
        return condition == NEVER
    return bool(condition & _ALL or not condition & _ADMIN)
