"""How many cards one TPM (or one software backend) may hold, and how they are counted.

Windows allows at most 10 TPM virtual smart cards per machine. A card
sealed by a TPM is counted against that TPM, known by the name of its
storage key (the same TPM gives the same name); a card of another backend
is counted against that backend in this store.
"""

from __future__ import annotations

import json

from vsc.store import BackendSpec, CardStore, StoreError
from vsc.store.db import read_meta

from .errors import CapacityExceeded

__all__ = ["DEFAULT_CAPACITY", "check_capacity", "device", "device_of"]

#: Cards one TPM may hold (Windows allows 10 virtual smart cards per machine).
DEFAULT_CAPACITY = 10


def device(spec: BackendSpec) -> tuple[str, str]:
    """What a card's capacity is counted against: one TPM, or one software backend."""
    if spec.kind == "tpm":
        from vsc.store.tpm import Tpm

        assert spec.tcti is not None
        tpm = Tpm(spec.tcti, owner_auth=spec.owner_auth)
        return "tpm:" + tpm.srk_name().hex(), f"the TPM at {spec.tcti}"
    return spec.kind, f"the {spec.kind} backend of this store"


def device_of(store: CardStore, name: str) -> str | None:
    """The device card ``name`` counts against (None if its metadata cannot be read)."""
    try:
        identity = json.loads(read_meta(store.path_of(name) / "card.db")["backend"])
    except (StoreError, KeyError, ValueError):
        return None
    kind = str(identity.get("kind"))
    return f"tpm:{identity.get('srk_name')}" if kind == "tpm" else kind


def check_capacity(store: CardStore, spec: BackendSpec, capacity: int) -> None:
    """:class:`CapacityExceeded` if ``spec``'s device holds ``capacity`` cards of ``store``."""
    dev, label = device(spec)
    on_it = [n for n in store.names() if device_of(store, n) == dev]
    if len(on_it) >= capacity:
        raise CapacityExceeded(
            f"{label} already holds {len(on_it)} cards ({', '.join(on_it)}): its capacity"
            f" is {capacity} (--max-cards or VSC_MAX_CARDS to change it)"
        )
