"""``vsc tpm status``: what MyID's TPM interrogator reports, for the TPM vsc would use.

The TPM is the one named by ``--tpm`` / ``VSC_TPM``. Without one, the
status looks for the kernel's resource manager ``/dev/tpmrm0`` (then
``/dev/tpm0``) and only *reads* from it: cards are never sealed by a TPM
found by chance, but saying whether the machine has one is the point of an
interrogation.

Verdicts (Windows' wording):

* **ready**: vsc can seal cards (the storage hierarchy is enabled, and a
  storage key is persisted at 0x81000001 or the owner authorisation is
  empty so vsc can make one) and the TPM is not in dictionary-attack
  lockout;
* **ready, with reduced functionality**: as ready, but the *lockout
  authorisation* is set and vsc does not have it: a lockout cannot be reset,
  only waited out, and the dictionary-attack parameters cannot be changed;
* **not ready**: no storage key (hierarchy disabled; owner authorisation
  set and none persisted: ``vsc tpm prepare`` with the owner authorisation
  persists one, once) or in lockout now.

An *empty* lockout authorisation is ready but reported as a weakness: anyone
who can reach the TPM can reset its counter (see docs/security.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsc.store import CardStore, StoreError

__all__ = ["DEVICES", "SRK_HANDLE", "TpmStatus", "interrogate"]

#: Where a managed machine persists its storage key (as :data:`vsc.store.tpm.SRK_HANDLE`,
#: repeated so that this module loads without tpm2-pytss).
SRK_HANDLE = 0x81000001

#: Where the status looks when no TCTI is configured (read-only use).
DEVICES = (Path("/dev/tpmrm0"), Path("/dev/tpm0"))


@dataclass(frozen=True, slots=True)
class TpmStatus:
    """The interrogation's answer; everything but ``present`` is None without a TPM."""

    present: bool
    tcti: str | None
    source: str
    error: str | None = None
    manufacturer: str | None = None
    vendor: str | None = None
    firmware: str | None = None
    enabled: bool | None = None
    owned: bool | None = None
    endorsement_auth_set: bool | None = None
    lockout_auth_set: bool | None = None
    storage_key: bool | None = None
    #: The storage key cards are sealed under: algorithm, persisted or made from vsc's template.
    storage_key_detail: str | None = None
    verdict: str = "not present"
    reasons: tuple[str, ...] = ()
    dictionary_attack: dict[str, int | bool] = field(default_factory=dict)
    cards: tuple[str, ...] = ()
    capacity: int | None = None
    #: Cards on this TPM in other stores (their directories), from the card register.
    other_cards: tuple[str, ...] = ()
    #: Where the cards are counted, and whether every user's cards are there.
    register: str | None = None
    register_machine_wide: bool | None = None


def find_tcti(
    tcti: str | None, environ: Mapping[str, str], devices: tuple[Path, ...] = DEVICES
) -> tuple[str | None, str]:
    """The TCTI to interrogate and where it came from."""
    if tcti:
        return tcti, "--tpm"
    if environ.get("VSC_TPM"):
        return environ["VSC_TPM"], "VSC_TPM"
    for device in devices:
        if device.exists():
            return f"device:{device}", f"{device} (found; not configured for cards)"
    return None, "none"


def interrogate(
    tcti: str | None,
    source: str,
    *,
    store: CardStore | None = None,
    capacity: int | None = None,
) -> TpmStatus:
    """Query the TPM at ``tcti`` (None: there is none) without changing anything."""
    if tcti is None:
        return TpmStatus(
            False,
            None,
            source,
            error="no TPM: none configured (--tpm, VSC_TPM) and no /dev/tpmrm0 or /dev/tpm0",
        )
    try:
        from tpm2_pytss import TPM2_PT, TPMA_PERMANENT, TPMA_STARTUP

        from vsc.store.tpm import OwnerAuthNeeded, Tpm
    except (ImportError, StoreError) as e:
        return TpmStatus(False, tcti, source, error=f"cannot talk to a TPM: {e}")
    tpm = Tpm(tcti)
    try:
        info = tpm.info()
        variable = tpm.properties(int(TPM2_PT.VAR), 64)
        da = tpm.da_status()
    except StoreError as e:
        return TpmStatus(False, tcti, source, error=str(e))
    permanent = variable.get(int(TPM2_PT.PERMANENT), 0)
    startup = variable.get(int(TPM2_PT.STARTUP_CLEAR), 0)
    enabled = bool(startup & TPMA_STARTUP.CLEAR_SHENABLE) and bool(
        startup & TPMA_STARTUP.CLEAR_EHENABLE
    )
    owned = bool(permanent & TPMA_PERMANENT.OWNERAUTHSET)
    lockout_set = bool(permanent & TPMA_PERMANENT.LOCKOUTAUTHSET)
    reasons = []
    srk: bytes | None = None
    detail = None
    try:
        key = tpm.storage_key()
        srk, detail = key.name, key.describe()
    except OwnerAuthNeeded as e:
        reasons.append(str(e))
    except StoreError as e:
        reasons.append(f"vsc cannot make its storage key: {e}")
    if not enabled:
        reasons.append("the storage or endorsement hierarchy is disabled")
    if da.locked_out:
        reasons.append("in dictionary-attack lockout: PINs are refused until it recovers")
    if reasons:
        verdict = "not ready"
    elif lockout_set:
        verdict = "ready, with reduced functionality"
        reasons.append(
            "the lockout authorisation is set and vsc does not have it: a lockout can only be"
            " waited out, and the dictionary-attack parameters cannot be changed"
        )
    else:
        verdict = "ready"
        reasons.append(
            "warning: the lockout authorisation is empty: anyone who can reach the TPM can"
            " reset its dictionary-attack counter (tpm2_changeauth -c lockout)"
        )
    return TpmStatus(
        present=True,
        tcti=tcti,
        source=source,
        manufacturer=info.manufacturer,
        vendor=info.vendor,
        firmware=info.firmware,
        enabled=enabled,
        owned=owned,
        endorsement_auth_set=bool(permanent & TPMA_PERMANENT.ENDORSEMENTAUTHSET),
        lockout_auth_set=lockout_set,
        storage_key=srk is not None,
        storage_key_detail=detail,
        verdict=verdict,
        reasons=tuple(reasons),
        dictionary_attack={
            "failed_tries": da.failed_tries,
            "max_tries": da.parameters.max_tries,
            "recovery_time": da.parameters.recovery_time,
            "lockout_recovery": da.parameters.lockout_recovery,
            "locked_out": da.locked_out,
        },
        capacity=capacity,
        **_cards_on(store, srk),
    )


def _cards_on(store: CardStore | None, srk: bytes | None) -> dict[str, Any]:
    """The cards on the TPM whose storage key is ``srk``: this store's, and the others'."""
    from .capacity import Register, on_device

    register = Register.configured()
    where = {"register": str(register.root), "register_machine_wide": register.machine_wide}
    if store is None or srk is None:
        return where
    mine, others = on_device(store, register, "tpm:" + srk.hex())
    return {**where, "cards": tuple(mine), "other_cards": tuple(str(p) for p in others)}
