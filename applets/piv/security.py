"""Volatile PIV security state of one logical channel.

Theory of operation (SP 800-73-4 Part 2 §2.4; docs/piv.md, "Security state")
---------------------------------------------------------------------------
The card creates one :class:`SecurityState` per channel on which PIV is
selected and forgets it on reset, power-off and deselection, which clears
everything here. Within a session:

* ``pin_verified`` (PIN security status): set by a correct VERIFY or CHANGE
  REFERENCE DATA of the PIN; cleared by a wrong VERIFY, VERIFY with P1 = FF,
  a wrong old PIN in CHANGE REFERENCE DATA, SET PIN RETRIES and RESET.
* ``pin_always``: armed by a correct VERIFY; every later command except
  VERIFY disarms it after running, and a key with PIN policy ALWAYS consumes
  it. So ``VERIFY → GENERAL AUTHENTICATE`` works and a second GA does not.
* ``admin`` (management key authenticated): set by a successful GA 9B,
  cleared by a failed one and by RESET; survives SET MANAGEMENT KEY.
* ``challenge``: the witness or challenge of a GA 9B step. It is valid only
  for the command immediately after the one that issued it
  (:attr:`previous_challenge` during that command) and used at most once.
* ``touch_until``: when a CACHED-touch approval expires, per slot.

RESET and SET PIN RETRIES change state other channels rely on; the applet
bumps an epoch number and every session compares it (:meth:`sync`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class ChallengeKind(IntEnum):
    """GA 9B pending values, named after the tag the card sent them in."""

    WITNESS = 0x80  # mutual authentication: the card holds the plaintext R
    CHALLENGE = 0x81  # single authentication: the card holds the plaintext C


@dataclass(frozen=True, slots=True)
class Challenge:
    kind: ChallengeKind
    algorithm: int
    value: bytes = field(repr=False)
    #: The management key it was issued under: a key changed meanwhile (on
    #: another channel) makes the answer worthless.
    key: object = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class SecurityState:
    epoch: tuple[int, int] = (0, 0)
    pin_verified: bool = False
    pin_always: bool = False
    admin: bool = False
    challenge: Challenge | None = None
    previous_challenge: Challenge | None = None
    touch_until: dict[int, float] = field(default_factory=dict)

    def sync(self, epoch: tuple[int, int]) -> None:
        """Drop what a RESET (first number) or PIN replacement (second) invalidated."""
        if epoch == self.epoch:
            return
        if epoch[0] != self.epoch[0]:
            self.clear()
        else:
            self.clear_pin()
        self.epoch = epoch

    def clear_pin(self) -> None:
        self.pin_verified = False
        self.pin_always = False

    def clear(self) -> None:
        self.clear_pin()
        self.admin = False
        self.challenge = self.previous_challenge = None
        self.touch_until.clear()
