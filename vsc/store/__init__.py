"""The persistent card store: crash-safe cards with TPM-sealed secrets and anti-hammering.

An adapter (it does file, process-lock and TPM I/O): the engine and the
applets never import it. Start with :class:`CardStore`::

    store = CardStore()                                  # $VSC_STORE or $XDG_DATA_HOME/vsc
    card = store.create("alice", BackendSpec.tpm("swtpm:path=/run/swtpm.sock"))
    card.put("piv/record", data)                         # encrypted under the card key
    card.set_counter("piv/pin", 3)
    card.create_binding("piv", {"pin": b"123456", "puk": b"12345678"})
    card.put("piv/key/9a", der, protection=bound("piv")) # readable only after unlock
    card.unlock("piv", "pin", b"123456", counter="piv/pin")
    card.close()

See ``docs/security.md`` for what each backend protects against.
"""

from .antihammer import WINDOWS_DEFAULTS, AntiHammer, DaParameters, DaState, DaStatus
from .card import CARD, CLEAR, Attempt, Counter, StoredCard, bound
from .clock import Clock, ManualClock, SystemClock
from .crypto import constant_time_equal
from .errors import (
    AuthFailed,
    BackendError,
    BackendMismatch,
    BackendUnavailable,
    BindingLocked,
    CardExists,
    CardInUse,
    CardNotFound,
    CorruptStore,
    CounterBlocked,
    InvalidName,
    LockedOut,
    PcrMismatch,
    RolledBack,
    StorageFailure,
    StoreError,
)
from .files import UnsafePath
from .protect import BackendInfo, BackendSpec, KeyVault, Protector, create_key_file, open_protector
from .settings import CardSettings
from .store import (
    CardInfo,
    CardStore,
    Recovery,
    create_card,
    creating_card,
    default_store_path,
    open_card,
    validate_card_name,
)

__all__ = [
    "CARD",
    "CLEAR",
    "WINDOWS_DEFAULTS",
    "AntiHammer",
    "Attempt",
    "AuthFailed",
    "BackendError",
    "BackendInfo",
    "BackendMismatch",
    "BackendSpec",
    "BackendUnavailable",
    "BindingLocked",
    "CardExists",
    "CardInUse",
    "CardInfo",
    "CardNotFound",
    "CardSettings",
    "CardStore",
    "Clock",
    "CorruptStore",
    "Counter",
    "CounterBlocked",
    "DaParameters",
    "DaState",
    "DaStatus",
    "InvalidName",
    "KeyVault",
    "LockedOut",
    "ManualClock",
    "PcrMismatch",
    "Protector",
    "Recovery",
    "RolledBack",
    "StorageFailure",
    "StoreError",
    "StoredCard",
    "SystemClock",
    "UnsafePath",
    "bound",
    "constant_time_equal",
    "create_card",
    "create_key_file",
    "creating_card",
    "default_store_path",
    "open_card",
    "open_protector",
    "validate_card_name",
]
