"""The lifecycle API: create, personalise, lock, unlock, unblock, provision and destroy cards.

Theory of operation
-------------------
:class:`CardManager` works on a :class:`vsc.store.CardStore` with one
protection backend, the way ``tpmvscmgr`` and an identity-management system
such as MyID drive Windows' TPM virtual smart cards. Every operation opens
the card (taking its lock: a card an emulator serves is *in use*, and the
operation fails with :class:`vsc.store.CardInUse`), builds its PIV applet
(:func:`vsc.store.piv.open_piv`) and changes it through the applet's own
data and key store, so the card's rules (counters before comparisons, PIN
binding, the managed block of :mod:`applets.piv.managed`) apply exactly as
they do through APDUs. The same operations a remote tool performs through
the card's APDU interface are described in ``docs/lifecycle.md``.

Each verb lives with its job, as a mixin on :class:`~.base.ManagerBase`
(the store, backend, audit log, and the steps verbs share):

* :mod:`.creation`: ``create``, ``destroy``;
* :mod:`.reports`: ``list``, ``info`` and their reports;
* :mod:`.helpdesk`: ``lock`` and the offline ``unlock`` / ``unblock``;
* :mod:`.provisioning`: ``provision``, ``renew``, ``reprovision``,
  ``signing_request``;
* :mod:`.bootstate`: ``rebind-pcr``.

Everything that happens is appended to the store's audit log
(:mod:`vsc.lifecycle.audit`), without secrets.
"""

from __future__ import annotations

from .adminkey import parse_admin_key
from .base import PENDING_LIFETIME, pin_block
from .bootstate import BootStateBinding
from .capacity import DEFAULT_CAPACITY
from .creation import Created, Creating
from .helpdesk import Helpdesk, Pending
from .provisioning import Provisioning
from .reports import CardReport, CardSummary, Reporting, SlotReport

__all__ = [
    "DEFAULT_CAPACITY",
    "PENDING_LIFETIME",
    "CardManager",
    "CardReport",
    "CardSummary",
    "Created",
    "Pending",
    "SlotReport",
    "parse_admin_key",
    "pin_block",
]


class CardManager(Creating, Reporting, Helpdesk, Provisioning, BootStateBinding):
    """Lifecycle operations on the cards of ``store``, protected by ``backend``.

    ``backend`` may be None for operations that need no card key (list,
    destroy); the others raise :class:`~.errors.LifecycleError` without one.
    """
