"""GIDS cards in the lifecycle: ``tpmvscmgr create``, information, challenge/response unblock.

Theory of operation
-------------------
A GIDS card is what ``tpmvscmgr create`` makes: :meth:`GidsCards.create`
creates a stored card (:mod:`vsc.store.gids`) and personalises it *through
its APDUs*, in process, as gids-tool ``--initialize`` does
(:func:`applets.gids.host.initialize`): the user PIN, an optional PUK, the
administrator key, the minidriver's files, then the application is
activated, so the card's own rules (PIN policy, counters, PIN binding)
apply to its creation as to everything after. The options are tpmvscmgr's:
``--pin`` (``default`` is 12345678), ``--puk`` (none by default, as on
Windows), ``--admin-key random|default|HEX`` (``default`` is tpmvscmgr's
``010203..08`` three times), and a PIN policy of lengths (8 to 127 by
default) and character classes.

Unblocking uses the card's own challenge/response, the one Windows' "unblock
smart card" dialog shows: the card's administrator key answers an 8-byte
challenge (16 with an AES key) with its encryption. ``vsc unblock`` issues
the challenge (:meth:`begin_unblock`, kept in the card for an hour so the
user can phone the helpdesk), ``vsc respond`` computes the answer from the
key (:func:`gids_response`; no card needed), and :meth:`complete_unblock`
checks it against the card's administrator-key counter (a try spent and
committed before the comparison) and sets the new PIN through the PIN
binding's administrator role. Every step is audited, never a secret.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from applets.gids import GIDS_ATR
from applets.gids.applet import KEY_TYPES
from applets.gids.crypto import ADMIN_KEY_LENGTHS, admin_block_size, admin_encrypt
from applets.gids.host import CardError, initialize
from applets.gids.minidriver import (
    CARDID,
    CMAPFILE,
    FILE_TABLE,
    parse_containers,
    parse_file_table,
)
from applets.gids.state import DEFAULT_TRIES, Reference
from applets.piv.pinrules import PinRules
from vsc.card import Card
from vsc.store import StoredCard
from vsc.store.errors import CardExists
from vsc.store.gids import StoredGidsApplet, StoredGidsData, has_gids, open_gids

from .base import CARD_RECORD, PENDING_LIFETIME, audited_creation
from .errors import (
    AdminKeyBlocked,
    LifecycleError,
    NoPendingRequest,
    PinPolicyViolation,
    Refused,
    WrongAdminKey,
)
from .manager import CardManager
from .profiles import ecc_policy

__all__ = [
    "DEFAULT_ADMIN_KEY",
    "DEFAULT_PIN",
    "DEFAULT_PUK",
    "GIDS_RULES",
    "GidsCards",
    "GidsCreated",
    "GidsReport",
    "GidsUnblock",
    "gids_response",
    "is_gids_challenge",
]

#: tpmvscmgr's ``/pin default``, ``/puk default`` and ``/adminkey default``.
DEFAULT_PIN = "12345678"
DEFAULT_PUK = "12345678"
DEFAULT_ADMIN_KEY = bytes(range(1, 9)) * 3
#: A Windows virtual smart card's default PIN policy: 8 to 127 characters, any class.
GIDS_RULES = PinRules(8, 127)
_PENDING = "lifecycle/gids-unblock"
_CERTS = ("kxc", "ksc")
_HEX_CHALLENGE = re.compile(r"(?:[0-9a-fA-F]{2}[ :-]?){8}(?:(?:[0-9a-fA-F]{2}[ :-]?){8})?")


@dataclass(frozen=True, slots=True)
class GidsCreated:
    name: str
    serial: int
    cardid: bytes
    #: The random administrator key, returned once; None when the caller chose it.
    admin_key: bytes | None
    puk: str  # "none", "default" or "chosen"


@dataclass(frozen=True, slots=True)
class GidsUnblock:
    """An unblock challenge waiting for the helpdesk's response."""

    name: str
    serial: int
    challenge: bytes
    expires: float

    @property
    def text(self) -> str:
        return self.challenge.hex(" ").upper()


@dataclass(frozen=True, slots=True)
class GidsReport:
    name: str
    serial: int
    cardid: str
    backend: str
    operational: bool
    pin_tries: tuple[int, int]
    puk_tries: tuple[int, int] | None
    admin_tries: tuple[int, int]
    admin_key_algorithm: str
    pin_policy: tuple[str, ...]
    containers: tuple[str, ...]
    pending: str | None
    #: The ECC keys it takes (GIDS: P-256, P-384), in the TPM or not.
    ecc: str = ""
    rollback: str = ""


def is_gids_challenge(text: str) -> bool:
    """Whether ``text`` looks like a GIDS card's challenge (8 or 16 bytes in hex)."""
    return _HEX_CHALLENGE.fullmatch(text.strip()) is not None


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(re.sub(r"[\s:-]", "", text))
    except ValueError:
        raise Refused(f"the {what} is not hexadecimal: ask for it again") from None


def gids_response(key: bytes, challenge_text: str) -> str:
    """The helpdesk's answer to a GIDS challenge: its encryption under the admin key, in hex."""
    challenge = _hex(challenge_text, "challenge")
    if len(challenge) != admin_block_size(key):
        raise Refused(
            f"a challenge for a {ADMIN_KEY_LENGTHS.get(len(key), '?')} admin key has"
            f" {admin_block_size(key)} bytes, not {len(challenge)}"
        )
    return admin_encrypt(key, challenge).hex(" ").upper()


class GidsCards:
    """The lifecycle of GIDS cards, on the store, backend and audit log of ``manager``."""

    def __init__(self, manager: CardManager) -> None:
        self.manager = manager

    @property
    def now(self) -> float:
        return self.manager.now

    @contextmanager
    def _open(self, name: str) -> Iterator[tuple[StoredCard, StoredGidsApplet, StoredGidsData]]:
        stored = self.manager.store.open(name, self.manager.require_backend())
        try:
            stored.events = self.manager.audit.card_hook(name)
            if not has_gids(stored):
                raise LifecycleError(f"card {name!r} is not a GIDS card")
            applet = open_gids(stored)
            applet.wall_clock = self.manager.store.clock.now
            data = applet.data
            assert isinstance(data, StoredGidsData)
            yield stored, applet, data
        finally:
            stored.close()

    # -- creation ------------------------------------------------------------------------

    def check_pin(self, rules: PinRules, pin: str) -> bytes:
        value = pin.encode("utf-8", "replace")
        error = rules.violation(value)
        if error is not None:
            raise PinPolicyViolation(error.rule, f"PIN refused: {error.reason} (rule {error.rule})")
        return value

    @audited_creation
    def create(
        self,
        name: str,
        *,
        pin: str | None = None,
        puk: str = "none",
        admin_key: str | bytes = "random",
        admin_key_length: int = 24,
        rules: PinRules | None = None,
        pin_tries: int = DEFAULT_TRIES,
        serial: int | None = None,
        pin_generated: bool = False,
    ) -> GidsCreated:
        """Create and personalise a GIDS card (``tpmvscmgr create``); ``pin`` None or
        ``"default"`` is tpmvscmgr's default PIN, ``pin_generated`` says the caller made
        it at random (for the audit)."""
        rules = rules if rules is not None else GIDS_RULES
        pin_value = self.check_pin(rules, DEFAULT_PIN if pin in (None, "default") else pin)
        puk_value, puk_kind = _puk(puk)
        key, key_kind = _key(admin_key, admin_key_length)
        spec = self.manager.require_backend()
        with self.manager.creation_lock():
            if self.manager.store.exists(name):
                raise CardExists(name, self.manager.store.path_of(name))
            with (
                self.manager.reserve(spec, name),
                self.manager.store.creating(name, spec) as stored,
            ):
                created_serial, cardid = self._personalise(
                    stored, pin_value, puk_value, key, rules, pin_tries, serial
                )
        audit = self.manager.audit
        default = pin in (None, "default")
        pin_kind = "default" if default else "generated" if pin_generated else "chosen"
        audit.write(
            "create",
            name,
            f"{name}: created (GIDS, serial {created_serial}, {spec.kind} backend)",
            serial=created_serial,
            profile="gids",
            backend=spec.kind,
            **self.manager.capacity_override(),
        )
        audit.write(
            "personalise",
            name,
            f"{name}: personalised ({key_kind} {ADMIN_KEY_LENGTHS[len(key)]} admin key,"
            f" {pin_kind} PIN, PUK {puk_kind})",
            admin_key_kind=key_kind,
            admin_key_algorithm=ADMIN_KEY_LENGTHS[len(key)],
            puk_kind=puk_kind,
            pin_kind=pin_kind,
            pin_policy=rules.to_dict(),
            cardid=cardid.hex(),
        )
        return GidsCreated(
            name, created_serial, cardid, key if key_kind == "random" else None, puk_kind
        )

    def _personalise(
        self,
        stored: StoredCard,
        pin: bytes,
        puk: bytes | None,
        key: bytes,
        rules: PinRules,
        pin_tries: int,
        serial: int | None,
    ) -> tuple[int, bytes]:
        applet = open_gids(stored, serial=serial, provision=True)
        applet.wall_clock = self.manager.store.clock.now
        data = applet.data
        with stored.transaction():
            stored.put(
                CARD_RECORD,
                json.dumps(
                    {"profile": "gids", "made_by": "vsc create", "puk": _kind(puk)}
                ).encode(),
            )
            data.set_pin_rules(rules)
        # The PIN's counter: personalisation sets the PIN with as many tries as asked.
        data.set_secret(Reference.PIN, pin, pin_tries)
        card = Card([applet], atr=GIDS_ATR, default=applet)
        try:
            cardid = initialize(card.transmit, pin=pin, admin_key=key, puk=puk)
        except CardError as e:
            raise LifecycleError(f"personalisation refused: {e}") from None
        finally:
            card.power_off()
        return data.serial, cardid

    # -- information -----------------------------------------------------------------------

    def info(self, name: str) -> GidsReport:
        with self._open(name) as (stored, applet, data):
            record = data.record
            pin, puk = record.pin, record.puk
            files = record.files
            cardid_file = files.get(CARDID[0])
            cardid = cardid_file.objects.get(CARDID[1], b"") if cardid_file else b""
            admin = record.admin.healed(self.now)
            key_file = record.admin_key
            pending = _pending(stored, self.now)
            return GidsReport(
                name=name,
                serial=data.serial,
                cardid=cardid.hex(),
                backend=stored.backend.summary,
                ecc=ecc_policy(KEY_TYPES.values(), tpm=stored.backend.kind == "tpm"),
                rollback=stored.rollback_summary,
                operational=not applet.personalising,
                pin_tries=(pin.tries.maximum, pin.tries.remaining) if pin else (0, 0),
                puk_tries=(puk.tries.maximum, puk.tries.remaining) if puk else None,
                admin_tries=(admin.maximum, admin.remaining),
                admin_key_algorithm=ADMIN_KEY_LENGTHS.get(
                    len(key_file.secret or b"") if key_file else 0, "none"
                ),
                pin_policy=tuple(record.pin_rules.describe()) if record.pin_rules else (),
                containers=tuple(_containers(data, applet)),
                pending=None if pending is None else pending[0].hex(" ").upper(),
            )

    # -- unblock -----------------------------------------------------------------------------

    def begin_unblock(self, name: str) -> GidsUnblock:
        """A fresh challenge for the admin key, kept in the card for an hour."""
        with self._open(name) as (stored, _, data):
            key_file = data.record.admin_key
            if key_file is None or key_file.secret is None:
                raise Refused(f"card {name!r} has no administrator key: it cannot be unblocked")
            challenge = secrets.token_bytes(admin_block_size(key_file.secret))
            expires = self.now + PENDING_LIFETIME
            stored.put(
                _PENDING, json.dumps({"challenge": challenge.hex(), "expires": expires}).encode()
            )
            serial = data.serial
        self.manager.audit.write(
            "challenge", name, f"{name}: challenge issued to reset the PIN", purpose="unblock"
        )
        return GidsUnblock(name, serial, challenge, expires)

    def pending(self, name: str) -> GidsUnblock | None:
        with self._open(name) as (stored, _, data):
            found = _pending(stored, self.now)
            return None if found is None else GidsUnblock(name, data.serial, *found)

    def complete_unblock(self, name: str, response: str, new_pin: str) -> None:
        """Reset the PIN if ``response`` answers the pending challenge (a try spent first)."""
        with self._open(name) as (stored, _, data):
            rules = data.record.pin_rules or GIDS_RULES
            pin = self.check_pin(rules, new_pin)  # a refused PIN costs no try
            found = _pending(stored, self.now)
            if found is None:
                raise NoPendingRequest(
                    f"{name} has no challenge outstanding (none issued, answered, or expired):"
                    " start again"
                )
            challenge, expires = found
            answer = _hex(response, "response")
            key_file = data.record.admin_key
            assert key_file is not None and key_file.secret is not None
            try:
                left = data.consume_admin_try(self.now)
            except ValueError:
                retry = data.admin_tries(self.now)[2]
                self.manager.audit.write(
                    "admin-key-blocked", name, f"{name}: response refused, the admin key is blocked"
                )
                raise AdminKeyBlocked(retry) from None
            if not hmac.compare_digest(admin_encrypt(key_file.secret, challenge), answer):
                self.manager.audit.write(
                    "admin-key-refused",
                    name,
                    f"{name}: wrong response ({left} tries left)",
                    tries_left=left,
                )
                raise WrongAdminKey(f"wrong response: {left} tries left", left)
            data.restore_admin_tries()
            with self.manager.answering(stored, _PENDING, name, "unblock", expires):
                data.set_secret(Reference.PIN, pin, by_admin=True)
        self.manager.audit.write(
            "unblock", name, f"{name}: PIN reset with the admin key's response"
        )


def _pending(stored: StoredCard, now: float) -> tuple[bytes, float] | None:
    raw = stored.get(_PENDING)
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        challenge, expires = bytes.fromhex(d["challenge"]), float(d["expires"])
    except (KeyError, ValueError, TypeError):
        return None
    return None if now >= expires else (challenge, expires)


def _containers(data: StoredGidsData, applet: StoredGidsApplet) -> Iterator[str]:
    """One line per valid container: its number, name, key, and whether it has a certificate."""
    cmap = data.files.get(CMAPFILE[0])
    table = data.files.get(FILE_TABLE[0])
    try:
        containers = parse_containers(cmap.objects.get(CMAPFILE[1], b"") if cmap else b"")
        entries = parse_file_table(table.objects.get(FILE_TABLE[1], b"") if table else b"\x01")
    except ValueError:
        yield "(the minidriver's files are unreadable)"
        return
    certified = {
        int(e.name[3:], 16) for e in entries if e.directory == "mscp" and e.name[:3] in _CERTS
    }
    for number, container in enumerate(containers):
        if not container.valid:
            continue
        info = applet.keys.get(0x81 + number)
        key = "no key"
        if info is not None:
            key = f"{info.key_type.name} in {applet.stored_keys.authorisation(0x81 + number)}"
        line = f"{number:02X} {container.name!r}: {key}"
        yield line + (", certificate" if number in certified else "")


def _kind(puk: bytes | None) -> str:
    return "none" if puk is None else "set"


def _puk(puk: str) -> tuple[bytes | None, str]:
    if puk == "none":
        return None, "none"
    if puk == "default":
        return DEFAULT_PUK.encode(), "default"
    value = puk.encode("utf-8", "replace")
    if not 4 <= len(value) <= 127:
        raise Refused("a PUK has 4 to 127 characters")
    return value, "chosen"


def _key(admin_key: str | bytes, length: int) -> tuple[bytes, str]:
    if isinstance(admin_key, bytes):
        key, kind = admin_key, "chosen"
    elif admin_key == "random":
        key, kind = secrets.token_bytes(length), "random"
    elif admin_key == "default":
        key, kind = DEFAULT_ADMIN_KEY, "default"
    else:
        key, kind = _hex(admin_key, "admin key"), "chosen"
    if len(key) not in ADMIN_KEY_LENGTHS:
        raise Refused(
            "a GIDS admin key is 3DES (48 hex digits) or AES-128/256 (32/64 hex digits),"
            f" not {len(key)} bytes"
        )
    return key, kind
