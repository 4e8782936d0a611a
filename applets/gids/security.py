"""Volatile GIDS security state of one logical channel.

Theory of operation
-------------------
The card creates one :class:`Session` per channel on which GIDS is selected
and forgets it on reset, power-off and deselection. Within a session:

* ``pin_verified``: set by a correct VERIFY or CHANGE REFERENCE DATA of the
  PIN; cleared by a wrong one, by VERIFY with P2 = 82 (log out) or P1 = FF,
  and on every channel when the PIN is replaced by someone who did not know
  it (PUK or administrator unblock) or the application is activated (the
  applet's epoch moves on).
* ``admin``: the administrator key authenticated by GENERAL AUTHENTICATE;
  cleared by a failed attempt, by log out and after an unblock.
* ``environment``: what MANAGE SECURITY ENVIRONMENT set (template, algorithm,
  key reference) for the next PERFORM SECURITY OPERATION or GENERAL
  AUTHENTICATE.
* ``challenge``: the card's half of an administrator authentication in
  progress. It is valid only for the GENERAL AUTHENTICATE right after the
  one that issued it, and used at most once.
* ``current_ef``: the elementary file SELECT, CREATE FILE, GET DATA or PUT
  DATA made current (DELETE FILE and ACTIVATE FILE act on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

__all__ = ["AdminChallenge", "ChallengeKind", "Environment", "Session"]


class ChallengeKind(Enum):
    #: The card sent a challenge; the host answers with its encryption (GIDS "external").
    EXTERNAL = "external"
    #: Both sent 16-byte randoms; the host proves the key first, then the card (GIDS "mutual").
    MUTUAL = "mutual"


@dataclass(frozen=True, slots=True)
class AdminChallenge:
    kind: ChallengeKind
    key_ref: int
    card_random: bytes = field(repr=False)
    host_random: bytes = field(default=b"", repr=False)
    #: The key it was issued under: a key replaced meanwhile makes the answer worthless.
    key: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Environment:
    """A security environment: control reference template, algorithm and key reference."""

    crt: int
    algorithm: int | None
    key_ref: int


@dataclass(slots=True)
class Session:
    epoch: int = 0
    pin_verified: bool = False
    admin: bool = False
    environment: Environment | None = None
    challenge: AdminChallenge | None = None
    previous_challenge: AdminChallenge | None = None
    current_ef: int | None = None

    def sync(self, epoch: int) -> None:
        """Drop the PIN status another channel's unblock invalidated."""
        if epoch != self.epoch:
            self.pin_verified = False
            self.epoch = epoch

    def log_out(self) -> None:
        self.pin_verified = False
        self.admin = False
        self.challenge = self.previous_challenge = None
