"""Card lifecycle: the ``tpmvscmgr`` / MyID workflow as an API (and, in ``cli``, as commands).

An adapter on the card store (:mod:`vsc.store`): the engine and the applets
never import it. Start with :class:`CardManager`::

    manager = CardManager(CardStore(), BackendSpec.tpm("device:/dev/tpmrm0"))
    created = manager.create("alice", pin="24681357", generate=True)
    admin_key = created.admin_key          # random, shown once
    manager.lock("alice")
    pending = manager.begin_unlock("alice", parse_duration("8h"))
    response = compute_response(admin_key.key, pending.request)   # the helpdesk, elsewhere
    manager.complete("alice", response)

See ``docs/lifecycle.md`` for each MyID / tpmvscmgr operation and its command.
"""

from .audit import AuditLog
from .certs import ProvisioningError
from .errors import (
    AdminKeyBlocked,
    CapacityExceeded,
    ChallengeKept,
    LifecycleError,
    NoPendingRequest,
    NotManaged,
    PinPolicyViolation,
    Refused,
    WrongAdminKey,
)
from .manager import (
    DEFAULT_CAPACITY,
    PENDING_LIFETIME,
    CardManager,
    CardReport,
    CardSummary,
    Created,
    Pending,
    parse_admin_key,
)
from .offline import MistypedCode, Purpose, Request, compute_response
from .profiles import DEFAULT_PROFILE, PROFILES, Profile
from .timespec import parse_duration, parse_time
from .tpmstatus import TpmStatus, interrogate

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_PROFILE",
    "PENDING_LIFETIME",
    "PROFILES",
    "AdminKeyBlocked",
    "AuditLog",
    "CapacityExceeded",
    "CardManager",
    "CardReport",
    "CardSummary",
    "ChallengeKept",
    "Created",
    "LifecycleError",
    "MistypedCode",
    "NoPendingRequest",
    "NotManaged",
    "Pending",
    "PinPolicyViolation",
    "Profile",
    "ProvisioningError",
    "Purpose",
    "Refused",
    "Request",
    "TpmStatus",
    "WrongAdminKey",
    "compute_response",
    "interrogate",
    "parse_admin_key",
    "parse_duration",
    "parse_time",
]
