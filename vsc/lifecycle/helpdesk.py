"""``vsc lock``, ``unlock``, ``unblock``: the lock, and the two requests the helpdesk answers.

Offline unblock and unlock are two steps, so nobody keeps a card open while
the user is on the phone: ``begin_*`` stores a pending request in the card
and returns its challenge; :meth:`Helpdesk.complete` checks the typed
response against *that* request (the admin-key counter is decremented
durably first) and applies it. A pending request lasts
:data:`~.base.PENDING_LIFETIME` seconds and is replaced by the next
``begin_*``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from applets.piv.managed import UNLOCK_MAX, UNLOCK_MIN, unlock_refusal

from .base import PENDING_LIFETIME, PENDING_RECORD, ManagerBase, load_pending, managed_or_refuse
from .errors import LifecycleError, NoPendingRequest, Refused
from .offline import (
    UNRESTRICTED,
    MistypedCode,
    Purpose,
    Request,
    check_response,
    describe_minutes,
    parse_response,
)
from .timespec import format_local

__all__ = ["MAX_UNLOCK", "MIN_UNLOCK", "Helpdesk", "Pending", "check_unlock"]

#: A time-limited unlock lasts 8 hours to one week (MyID's temporary access), in minutes;
#: the card holds the same range (:data:`applets.piv.managed.UNLOCK_MIN`).
MIN_UNLOCK = UNLOCK_MIN // 60
MAX_UNLOCK = UNLOCK_MAX // 60


def check_unlock(minutes: int) -> None:
    """:class:`Refused` unless ``minutes`` is in MyID's range or unrestricted."""
    if minutes != UNRESTRICTED and unlock_refusal(60 * minutes) is not None:
        raise Refused(
            f"an unlock for {describe_minutes(minutes)} is outside the range: a time-limited"
            f" unlock lasts {describe_minutes(MIN_UNLOCK)} to {describe_minutes(MAX_UNLOCK)}"
            " (or is unrestricted)"
        )


@dataclass(frozen=True, slots=True)
class Pending:
    """A challenge to show: what it asks for, until when it can be answered."""

    name: str
    serial: int
    request: Request
    expires: float

    @property
    def challenge(self) -> str:
        return self.request.encode()


class Helpdesk(ManagerBase):
    """``lock``, ``begin_unlock``, ``begin_unblock``, ``pending``, ``complete``."""

    def lock(self, name: str, at: float | None = None) -> float:
        """Lock now, or from ``at`` on (never later than a lock already set); the lock time."""
        with self._open(name) as (_, _, data):
            managed = managed_or_refuse(name, data)
            when = self.now if at is None else max(self.now, at)
            data.set_managed(managed.locked_from(when))
            lock_at = data.managed.lock_at if data.managed else when
        assert lock_at is not None
        scheduled = lock_at > self.now
        self.audit.write(
            "lock",
            name,
            f"{name}: {'lock scheduled for ' + format_local(lock_at) if scheduled else 'locked'}",
            at=lock_at,
            scheduled=scheduled,
        )
        return lock_at

    def begin_unlock(self, name: str, minutes: int) -> Pending:
        """A challenge asking to unlock for ``minutes``: :data:`MIN_UNLOCK` to
        :data:`MAX_UNLOCK`, or :data:`~.offline.UNRESTRICTED`."""
        check_unlock(minutes)
        return self._begin(name, Request.new(Purpose.UNLOCK, minutes))

    def begin_unblock(self, name: str) -> Pending:
        """A challenge asking to reset the PIN (Windows' integrated unblock)."""
        return self._begin(name, Request.new(Purpose.UNBLOCK))

    def _begin(self, name: str, request: Request) -> Pending:
        with self._open(name) as (stored, _, data):
            managed_or_refuse(name, data)
            expires = self.now + PENDING_LIFETIME
            stored.put(
                PENDING_RECORD,
                json.dumps({"request": request.to_bytes().hex(), "expires": expires}).encode(),
            )
            serial = data.serial
        self.audit.write(
            "challenge",
            name,
            f"{name}: challenge issued to {request.describe()}",
            purpose=request.purpose.name.lower(),
            minutes=request.minutes if request.purpose is Purpose.UNLOCK else None,
        )
        return Pending(name, serial, request, expires)

    def pending(self, name: str) -> Pending | None:
        """The challenge outstanding for ``name``, if any."""
        with self._open(name) as (stored, _, data):
            request = load_pending(stored, self.now)
            if request is None:
                return None
            return Pending(name, data.serial, request.request, request.expires)

    def complete(self, name: str, response: str, *, new_pin: str | None = None) -> Request:
        """Apply the pending request if ``response`` answers it; returns the request.

        An unblock needs ``new_pin`` (checked against the policy first, so a
        refused PIN costs no try). A response whose check characters fail is
        refused without a try; a wrong one costs one (:class:`WrongAdminKey`).
        """
        with self._open(name) as (stored, _, data):
            managed = managed_or_refuse(name, data)
            pending = load_pending(stored, self.now)
            if pending is None:
                raise NoPendingRequest(
                    f"{name} has no challenge outstanding (none issued, answered, or expired):"
                    " start again"
                )
            request = pending.request
            block = None
            if request.purpose is Purpose.UNBLOCK:
                if new_pin is None:
                    raise LifecycleError("an unblock needs the new PIN")
                block = self.check_pin(managed.pin_rules, new_pin)
            try:
                mac = parse_response(response)
            except MistypedCode as e:
                raise Refused(str(e)) from None
            left = self._spend_admin_try(data, name, "response")
            if not check_response(data.management_key.key, request, mac):
                self._admin_refused(name, "response", left)
            data.restore_admin_tries()
            purpose = request.purpose.name.lower()
            with self.answering(stored, PENDING_RECORD, name, purpose, pending.expires):
                if block is not None:
                    data.reset_pin_as_admin(block)
                else:
                    data.set_lock(None if request.unrestricted else self.now + 60 * request.minutes)
        self._audit_completed(name, request)
        return request

    def _audit_completed(self, name: str, request: Request) -> None:
        if request.purpose is Purpose.UNBLOCK:
            self.audit.write("unblock", name, f"{name}: PIN reset with the admin key's response")
            return
        until = None if request.unrestricted else self.now + 60 * request.minutes
        self.audit.write(
            "unlock",
            name,
            f"{name}: unlocked"
            + (" (unrestricted)" if until is None else f" until {format_local(until)}")
            + f" by the admin key's response ({describe_minutes(request.minutes)})",
            minutes=None if request.unrestricted else request.minutes,
            duration=describe_minutes(request.minutes),
            until=until,
        )
