"""What the PIV and GIDS applets over the card store share: their PIN binding.

:mod:`vsc.store.piv` and :mod:`vsc.store.gids` each seal their applet's
PIN-protected keys to a binding (``piv``, ``gids``; see :mod:`vsc.store.card`)
sealed once under the PIN (role ``pin``), the PUK (``puk``) and, where the card
keeps an administrator's key, that key (``admin``). The two mixins here run
that binding for either applet; each adapter keeps only what differs: the
binding's name, its roles, its record type, its session type.

Theory of operation
-------------------
**Checking a value** (:meth:`PinBindingData._unseal`). The applet has
already committed the decremented retry counter; the backend compares (with
a TPM, its dictionary-attack logic counts a failure). A wrong value is
``False``. A try the anti-hammering refused without comparing
(:class:`LockedOut`, reported by the store as ``tpm-lockout``) is given back
and answered ``6985``: temporary, where ``6983`` would send clients to the
PUK. A TPM that could not be reached compared nothing either: the try is
given back, unless it may have been compared. A role missing from the
binding is damage (``6581``).

**Giving a try back** is a transaction of its own
(:meth:`StoredCard.giving_back`): an older copy of the files has fewer tries,
not more, so it needs no TPM counter write and goes in during an outage.

**Changes** to the binding and the record are one transaction
(:meth:`PinBindingData._group`); on failure the data's record and its
store's idea of what is stored go back to what they were.

**The admin role** opens the binding for a change nobody's PIN authorised
(a PIV managed card's PIN reset, a GIDS unblock by the administrator key);
the binding is closed again afterwards unless it was already open.

**Relocking** (:class:`PinBindingApplet`). A correct PIN or PUK unlocks the
binding, so the PIN-protected keys can be used; it is locked again after
every command and every session end (power off, reset, another SELECT) that
leaves no channel with the PIN verified. Sessions only lose PIN status
behind the binding's back, never gain it: a stale "verified" of another
channel keeps the keys at most until that channel's next command or the end
of its session. A session of an older PIN epoch (PIN replaced by an unblock
or a reset, card locked) has lost it already.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from typing import ClassVar, Generic, Protocol, TypeVar

from vsc.apdu import CommandApdu
from vsc.applet import Applet, Response
from vsc.sw import ConditionsNotSatisfied

from .card import StoredCard
from .errors import AuthFailed, BackendUnavailable, CorruptStore, LockedOut
from .events import CommandEvents, reporting

__all__ = ["ADMIN_ROLE", "PinBindingApplet", "PinBindingData", "PinSession"]

#: The binding's role sealed under the card's administrator key (PIV: management key).
ADMIN_ROLE = "admin"

R = TypeVar("R")  # the applet's record
Ref = TypeVar("Ref", bound=Enum)  # the applet's PIN/PUK reference
E = TypeVar("E")  # the applet's PIN epoch
R_contra = TypeVar("R_contra", contravariant=True)


class RecordStore(Protocol[R_contra]):
    """The adapter's commit point, told when a transaction around its ``save`` rolled back."""

    def forget(self, record: R_contra) -> None: ...


class PinBindingData(Generic[R, Ref]):
    """The store side of an applet's PIN and PUK checks and of the changes to its binding.

    Mixed in before the applet's data class, whose ``_record`` it rolls back
    and whose ``commit`` it calls; the adapter sets :attr:`_card`,
    :attr:`_stored` and gives :meth:`_with_try_back`.
    """

    #: The binding sealed under the PIN, the PUK and the admin key.
    binding: ClassVar[str]
    #: The name of the admin role's key, for errors.
    admin_key_name: ClassVar[str]
    #: The binding's role of each reference :meth:`_unseal` checks.
    _roles: Mapping[Ref, str]
    _card: StoredCard
    _stored: RecordStore[R]
    _record: R
    commit: Callable[[R], None]

    def _with_try_back(self, ref: Ref) -> R:
        """The current record with one more try of ``ref`` (at most its maximum)."""
        raise NotImplementedError

    def _give_back(self, ref: Ref) -> None:
        """Restore the try the applet spent on a comparison that never happened."""
        with self._card.giving_back():
            self.commit(self._with_try_back(ref))

    @contextlib.contextmanager
    def _group(self) -> Iterator[None]:
        """Changes to the binding and the record, committed together or not at all."""
        before = self._record
        try:
            with self._card.transaction():
                yield
        except BaseException:
            self._record = before
            self._stored.forget(before)
            raise

    def _unseal(self, ref: Ref, candidate: bytes) -> bool:
        """Whether ``candidate`` unseals the binding's role of ``ref`` (the backend compares)."""
        try:
            self._card.unlock(self.binding, self._roles[ref], candidate)
        except KeyError:
            raise CorruptStore(f"the {ref.name} has no seal in binding {self.binding!r}") from None
        except AuthFailed:
            return False
        except LockedOut as e:
            self._give_back(ref)  # (the store reported the lockout)
            raise ConditionsNotSatisfied(f"{ref.name} not checked: {e}") from None
        except BackendUnavailable as e:
            if not e.compared:  # a TPM outage must not block the PIN
                self._give_back(ref)
            raise
        return True

    def _unlock_admin(self, secret: bytes) -> None:
        """Open the binding with the admin role (the caller authenticated its key)."""
        try:
            self._card.unlock(self.binding, ADMIN_ROLE, secret)
        except KeyError:
            what = f"this card's {self.admin_key_name} opens nothing"
            raise ConditionsNotSatisfied(f"{what}: its binding has no {ADMIN_ROLE} role") from None
        except AuthFailed:
            raise CorruptStore(
                f"the {ADMIN_ROLE} role does not match the {self.admin_key_name}"
            ) from None
        except LockedOut as e:
            raise ConditionsNotSatisfied(f"the {ADMIN_ROLE} role was not checked: {e}") from None

    @contextlib.contextmanager
    def _opened_by_admin(self, secret: bytes) -> Iterator[None]:
        """The binding open for a change: already, or by the admin role and closed after."""
        if self._card.is_unlocked(self.binding):
            yield
            return
        self._unlock_admin(secret)
        try:
            yield
        finally:
            self._card.lock(self.binding)


class PinSession(Protocol):
    """What :class:`PinBindingApplet` reads of a session: its PIN status and epoch."""

    @property
    def pin_verified(self) -> bool: ...

    @property
    def epoch(self) -> object: ...


S = TypeVar("S", bound=PinSession)


class PinBindingApplet(Applet[S], Generic[S, E]):
    """An applet over a stored card that locks its PIN binding when no channel has the PIN.

    Mixed in before the applet class, whose ``_epoch`` it reads; the adapter
    calls :meth:`_track` before the applet's constructor and sets
    :attr:`binding` and :attr:`command_events`.
    """

    #: The binding the applet's PIN opens.
    binding: ClassVar[str]
    #: The security events of commands the applet does not report itself.
    command_events: ClassVar[CommandEvents]
    stored_card: StoredCard
    _sessions: list[S]
    _epoch: E

    def _track(self, card: StoredCard) -> None:
        self.stored_card = card
        self._sessions = []

    def new_session(self) -> S:
        session = super().new_session()
        self._sessions.append(session)
        return session

    def deselect(self, session: S) -> None:
        try:
            super().deselect(session)
        finally:
            self._sessions = [s for s in self._sessions if s is not session]
            self._relock()

    def process(self, apdu: CommandApdu, session: S) -> bytes | Response:
        try:
            with reporting(self.stored_card, self.command_events, apdu):
                return super().process(apdu, session)
        finally:
            self._relock()

    def _relock(self) -> None:
        # See the module's theory of operation: sessions only ever lose PIN status.
        if not any(s.pin_verified and s.epoch == self._epoch for s in self._sessions):
            self.stored_card.lock(self.binding)
