"""Who this machine trusts, for what: pinned certificates and the direction of each pairing.

Theory of operation
-------------------
Pairing pins a peer's certificate for *one direction* (:class:`PeerRole`):

``service``
    a share service this machine may attach readers *from*. The endpoint
    (``vsc share attach``, ``list --from``) trusts it as a TLS server, and
    only under its own name: the connection to a name is bound to that
    name's fingerprint (:mod:`vsc.share.client`).
``endpoint``
    a remote endpoint that may use *this* machine's readers. The service
    (``vsc share serve``) lets it list, attach and detach.

``vsc share pair --with HOST CODE`` (run on the endpoint) grants the service
the first role on the endpoint and the endpoint the second on the service,
and nothing else: a machine you lent a reader to cannot list or attach
yours, nor pose as a service you attach from. A machine trusted both ways
was paired twice, once from each side. Each grant records when it was made
and an address (where the service listens; where the endpoint paired from).

``peers.json`` (version 2)::

    {"version": 2, "peers": [{"fingerprint": HEX, "certificate": HEX, "name": "laptop",
      "roles": {"service": {"since": "2026-...", "address": "laptop:35990"}}}]}

Stores written before pairings had a direction (one list trusted both ways)
are migrated on first read, never widened: each old pin gets the one role
its record shows (the old code wrote ``HOST:PORT`` when this machine paired
*with a service*, and the bare peer address when this machine's service
paired an endpoint); a pin whose direction cannot be told is kept, trusted
for nothing, until it is paired again. The migration is logged (a warning
naming each peer and what it became) and kept in :attr:`TrustStore.notes`
for the event log.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .files import ShareHomeError

if TYPE_CHECKING:
    from .home import ShareHome

__all__ = [
    "ROLE_TEXT",
    "Grant",
    "Peer",
    "PeerRole",
    "TrustStore",
    "fingerprint",
    "format_fingerprint",
]

log = logging.getLogger(__name__)

_FILE: Final = "peers.json"
_VERSION: Final = 2


def fingerprint(certificate_der: bytes) -> bytes:
    """SHA-256 of a DER certificate: what peers pin."""
    return hashlib.sha256(certificate_der).digest()


def to_pem(certificate_der: bytes) -> str:
    """A DER certificate as PEM (what TLS contexts take as trust anchors)."""
    der = x509.load_der_x509_certificate(certificate_der)
    return der.public_bytes(serialization.Encoding.PEM).decode()


def format_fingerprint(value: bytes, groups: int | None = None) -> str:
    """``AB12:CD34:...`` (all groups, or the first ``groups``) for people to compare."""
    text = value.hex().upper()
    parts = [text[i : i + 4] for i in range(0, len(text), 4)]
    return ":".join(parts if groups is None else parts[:groups])


class PeerRole(Enum):
    """What a pinned peer may be to this machine (the ``roles`` keys in ``peers.json``)."""

    SERVICE = "service"  # a service this machine may attach readers from
    ENDPOINT = "endpoint"  # an endpoint that may use this machine's readers


ROLE_TEXT: Final = {
    PeerRole.SERVICE: "a service this machine may attach readers from",
    PeerRole.ENDPOINT: "an endpoint that may use this machine's readers",
}


@dataclass(frozen=True, slots=True)
class Grant:
    """One direction of trust: since when, and the peer's address for it."""

    since: str
    address: str = ""


@dataclass(frozen=True, slots=True)
class Peer:
    """A pinned certificate and the roles it was paired for (maybe none: not trusted)."""

    fingerprint: bytes
    certificate: bytes  # DER
    name: str
    grants: Mapping[PeerRole, Grant] = field(default_factory=dict)

    def may(self, role: PeerRole) -> bool:
        return role in self.grants

    @property
    def address(self) -> str:
        """Where to reach it as a service (else where it paired from), or ""."""
        for role in (PeerRole.SERVICE, PeerRole.ENDPOINT):
            if role in self.grants:
                return self.grants[role].address
        return ""

    @property
    def pem(self) -> str:
        return to_pem(self.certificate)

    def describe(self) -> str:
        """``name (AB12:CD34:EF56:7890)``, for messages."""
        return f"{self.name or 'unnamed'} ({format_fingerprint(self.fingerprint, 4)})"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class TrustStore:
    """The pinned peers of one share home (``peers.json``). Thread-safe; the file is the truth."""

    def __init__(self, home: ShareHome) -> None:
        self.home = home
        self._lock = threading.RLock()
        #: What a migration of an old store did, one line per peer (for the event log).
        self.notes: list[str] = []

    @property
    def path(self) -> str:
        return str(self.home.path / _FILE)

    # -- reading ---------------------------------------------------------------------------

    def peers(self, role: PeerRole | None = None) -> list[Peer]:
        """The pinned peers (those granted ``role``, if given)."""
        with self._lock:
            data = self.home.read_json(_FILE)
            if data and data.get("version") != _VERSION:
                data = self._migrate(data)
            peers = [_peer(entry, self.path) for entry in data.get("peers", [])]
        return [p for p in peers if role is None or p.may(role)]

    def find(self, value: bytes, role: PeerRole | None = None) -> Peer | None:
        for peer in self.peers(role):
            if peer.fingerprint == value:
                return peer
        return None

    def anchors(self, *roles: PeerRole) -> str:
        """The PEM certificates of the peers granted any of ``roles`` (TLS trust anchors)."""
        return "".join(p.pem for p in self.peers() if any(p.may(r) for r in roles))

    def mtime(self) -> float:
        """Changes when ``peers.json`` changes (to reload TLS trust)."""
        try:
            return (self.home.path / _FILE).lstat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return 0.0

    # -- changing --------------------------------------------------------------------------

    def pin(self, certificate: bytes, name: str, role: PeerRole, address: str = "") -> Peer:
        """Grant ``role`` to a certificate (its other grants stay; the name is updated)."""
        value = fingerprint(certificate)
        with self._lock:
            peers = self.peers()
            old = next((p for p in peers if p.fingerprint == value), None)
            grants = dict(old.grants) if old is not None else {}
            grants[role] = Grant(_now(), address)
            peer = Peer(value, certificate, name, grants)
            self._save([*(p for p in peers if p.fingerprint != value), peer])
        return peer

    def unpin(self, prefix: str, role: PeerRole | None = None) -> list[Peer]:
        """Withdraw ``role`` (default: every role, forgetting the peer) from the peers whose
        fingerprint (hex, colons ignored) starts with ``prefix``; the peers affected."""
        wanted = prefix.replace(":", "").lower()
        if not wanted:
            raise ValueError("empty fingerprint prefix")
        with self._lock:
            peers = self.peers()
            hit = [
                p
                for p in peers
                if p.fingerprint.hex().startswith(wanted) and (role is None or p.may(role))
            ]
            kept = []
            for peer in peers:
                if peer not in hit:
                    kept.append(peer)
                elif role is not None and len(peer.grants) > 1:
                    grants = {r: g for r, g in peer.grants.items() if r is not role}
                    kept.append(Peer(peer.fingerprint, peer.certificate, peer.name, grants))
            self._save(kept)
        return hit

    def _save(self, peers: list[Peer]) -> None:
        self.home.write_json(_FILE, {"version": _VERSION, "peers": [_entry(p) for p in peers]})

    # -- migration ------------------------------------------------------------------------------

    def _migrate(self, data: dict[str, Any]) -> dict[str, Any]:
        """Give each pin of an old store the one role its record shows; save; say so."""
        peers = []
        notes = []
        for entry in data.get("peers", []):
            address = str(entry.get("address", ""))
            role = _legacy_role(address)
            grants = {role: Grant(str(entry.get("paired_at", "")), address)} if role else {}
            peer = _peer({**entry, "roles": {}}, self.path)
            peer = Peer(peer.fingerprint, peer.certificate, peer.name, grants)
            peers.append(peer)
            what = ROLE_TEXT[role] if role else "trusted for nothing (pair again to use it)"
            notes.append(f"{peer.describe()}: {what}")
        self._save(peers)
        self.notes.extend(notes)
        log.warning(
            "%s was written before pairings had a direction (one list trusted both ways); "
            "each pin now grants one direction only, as its record shows:\n  %s\n"
            "Nothing was widened. To trust a machine the other way too, pair again from the "
            "other side (vsc share pair).",
            self.path,
            "\n  ".join(notes) or "(no pins)",
        )
        return {"version": _VERSION, "peers": [_entry(p) for p in peers]}


def _legacy_role(address: str) -> PeerRole | None:
    """The direction an old pin was made for, from the address the old code stored."""
    try:
        ipaddress.ip_address(address)
        bare = True  # the service stored the endpoint's IP address
    except ValueError:
        bare = False
    with_port = re.fullmatch(r".+:\d{1,5}", address) is not None  # pair --with: HOST:PORT
    if bare and with_port and ":" in address.rpartition(":")[0]:
        return None  # "fe80::1:35" is either; trust it for nothing rather than guess
    if bare:
        return PeerRole.ENDPOINT
    return PeerRole.SERVICE if with_port else None


def _entry(peer: Peer) -> dict[str, Any]:
    return {
        "fingerprint": peer.fingerprint.hex(),
        "name": peer.name,
        "roles": {
            role.value: {"since": grant.since, "address": grant.address}
            for role, grant in peer.grants.items()
        },
        "certificate": peer.certificate.hex(),
    }


def _peer(entry: Any, where: str) -> Peer:
    try:
        certificate = bytes.fromhex(entry["certificate"])
        grants = {
            PeerRole(role): Grant(str(grant.get("since", "")), str(grant.get("address", "")))
            for role, grant in entry.get("roles", {}).items()
        }
        peer = Peer(bytes.fromhex(entry["fingerprint"]), certificate, str(entry["name"]), grants)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ShareHomeError(f"{where} is damaged ({exc!r}); refusing to guess") from None
    if fingerprint(certificate) != peer.fingerprint:
        raise ShareHomeError(f"{where}: the certificate of {peer.describe()} is not its pin")
    return peer
