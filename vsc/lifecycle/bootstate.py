"""``vsc rebind-pcr``: re-bind a card sealed to the boot state after a legitimate change.

A card created with ``vsc create --pcr 7[,...]`` has its card key sealed to
those PCRs (SHA-256 bank, :meth:`vsc.store.Protector.seal_to_pcrs`). After a
firmware, boot loader or kernel update the TPM no longer unseals it and the
card cannot be opened. Re-binding takes the PIN and the admin key: the PIN
opens the copy of the card key sealed to the PIN binding (the TPM checks it
and counts a wrong one), the admin key is then checked against the card's
own (its counter spent first, as everywhere), the PIN once more through the
card's PIN counter, and only then is the card key sealed to the PCRs' values
of today. Every step is audited; nothing is changed when one fails.
"""

from __future__ import annotations

from applets.piv.mgmt import ManagementKey
from applets.piv.state import Reference
from vsc.store import Recovery, StoredCard
from vsc.store.gids import has_gids
from vsc.store.piv import BINDING, StoredPivData, open_piv

from .base import ManagerBase, pin_block
from .errors import LifecycleError, Refused


class BootStateBinding(ManagerBase):
    """Re-binding a PCR-bound card (a mixin of :class:`~.manager.CardManager`)."""

    def rebind_pcrs(self, name: str, pin: str, admin_key: ManagementKey) -> tuple[int, ...]:
        """Seal card ``name`` to the PCRs' values now; the PCRs it is bound to."""
        block = pin_block(pin)
        recovery = Recovery(BINDING, "pin", block)
        stored = self.store.open(name, self.require_backend(), recover=recovery)
        try:
            pcrs = stored.settings.pcrs
            if not pcrs:
                raise LifecycleError(f"card {name!r} is not bound to the boot state (no --pcr)")
            self._check_both(stored, name, block, admin_key)
            stored.reseal_to_boot_state()
        finally:
            stored.close()
        listed = ",".join(str(p) for p in pcrs)
        self.audit.write("rebind-pcr", name, f"{name}: sealed to PCR {listed} as they are now")
        return pcrs

    def _check_both(
        self, stored: StoredCard, name: str, block: bytes, admin_key: ManagementKey
    ) -> None:
        if has_gids(stored):
            raise LifecycleError(f"card {name!r} is a GIDS card: rebind-pcr is for PIV cards")
        applet = open_piv(stored)
        applet.events = self.audit.card_hook(name)
        data = applet.data
        assert isinstance(data, StoredPivData)
        self._check_admin_key(data, name, admin_key)
        if data.tries(Reference.PIN).remaining == 0:
            raise Refused("the PIN is blocked: unblock the card first")
        left = data.consume_try(Reference.PIN)
        try:
            if not data.matches(Reference.PIN, block):
                raise Refused(f"wrong PIN ({left} tries left)")
            data.restore_tries(Reference.PIN)
        finally:
            stored.lock(BINDING)
