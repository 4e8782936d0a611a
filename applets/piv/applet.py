"""The PIV card application (SP 800-73-4), as a YubiKey 5.4 or 5.7 or a plain PIV card.

Theory of operation
-------------------
:class:`PivApplet` is the card edge: it parses commands, enforces access
rules and answers with the status words docs/piv.md lists. It owns
no key material: private keys live in a :class:`~applets.piv.keys.KeyStore`,
PINs, counters, the management key and data objects in
:class:`~applets.piv.state.PivData` (which commits every change through its
store), and per-channel security state in a
:class:`~applets.piv.security.SecurityState` the card drops on reset.

Every command passes through :meth:`PivApplet.process`, which implements the
two cross-command rules: a GA 9B witness/challenge is valid only for the next
command, and the PIN-always authorisation armed by VERIFY is disarmed by any
other command once it has run (docs/piv.md, "Security state").

Checks run in this order in every handler: P1/P2 (``6A86``, ``6A88`` for an
unknown PIN reference), then the access condition (``6982``), then the data
field (``6A80``), then the state (``6A82``, ``6A88``, ``6985``).

What the card is comes from its profile (:mod:`applets.piv.profile`), read
once when the applet is built: the instructions a profile lacks are left out
of the applet's command table (``6D00``), and the handlers read the few
profile values they need from attributes of the applet.

Touch is an approval hook: :attr:`PivApplet.touch` is called with the slot
(9B for the management key) whenever a touch policy asks for one; False
answers ``6982``. CACHED touch is remembered for 15 s per channel, measured
by :attr:`PivApplet.clock`.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping

from vsc.apdu import CommandApdu
from vsc.applet import Applet, Response, command
from vsc.masking import Mask, TraceRules
from vsc.sw import (
    SW,
    ApduError,
    ConditionsNotSatisfied,
    IncorrectParameters,
    InvalidData,
    InvalidPin,
    NotFound,
    SecurityStatusNotSatisfied,
    WrongLength,
)
from vsc.tlv import encode_tlv, parse_tlv, parse_tlvs, peek_header

from .keys import (
    ATTESTATION_SLOT,
    KEY_SLOTS,
    KeyInfo,
    KeyStore,
    KeyType,
    MemoryKeyStore,
    PinPolicy,
    TouchPolicy,
    create_attestation_key,
    default_pin_policy,
    encode_public_key,
    encode_public_key_data,
    parse_private_key,
    resolve_touch_policy,
)
from .managed import Managed, unlock_refusal
from .mgmt import ManagementKey, ManagementKeyType
from .objects import (
    DISCOVERY_OBJECT,
    PIN_PROTECTED,
    PIV_AID,
    ObjectId,
    certificate_value,
)
from .pinrules import PinRuleError, strip_padding
from .profile import (
    DEFAULT_PROFILE,
    INS_ATTEST,
    INS_GET_METADATA,
    INS_GET_SERIAL,
    INS_GET_VERSION,
    INS_IMPORT_KEY,
    INS_MOVE_KEY,
    INS_RESET,
    INS_SET_MANAGEMENT_KEY,
    INS_SET_PIN_RETRIES,
    YUBICO_INS,
    PivProfile,
)
from .security import Challenge, ChallengeKind, SecurityState
from .state import PIN_BLOCK_SIZE, PivData, PivRecord, Reference, random_serial

log = logging.getLogger(__name__)

INS_VERIFY = 0x20
INS_CHANGE_REFERENCE = 0x24
INS_RESET_RETRY = 0x2C
INS_GENERATE = 0x47
INS_AUTHENTICATE = 0x87
INS_GET_DATA = 0xCB
INS_PUT_DATA = 0xDB
# The Yubico instructions (INS_MOVE_KEY .. INS_SET_MANAGEMENT_KEY) are the profile module's.
#: vsc's lock control of managed cards (vendor-specific; 6D00 on other cards).
INS_LOCK = 0xF1

# RESET RETRY COUNTER P1 (ISO 7816-4): 00 resetting code + new value; 02 new value
# only, the resetting authority being established otherwise (here: the management key).
RESET_WITH_PUK = 0x00
RESET_BY_ADMIN = 0x02

# INS_LOCK P1: status, lock (now or in N seconds), unlock (for N seconds or unrestricted).
LOCK_STATUS = 0x00
LOCK_SET = 0x01
LOCK_RELEASE = 0x02
#: "No lock scheduled" in the lock status and "unrestricted" nowhere else.
NO_LOCK = 0xFFFFFFFF

SLOT_CARD_MANAGEMENT = 0x9B

# Dynamic authentication template and its items (SP 800-73-4 Part 2 Table 7).
TAG_DYN_AUTH = 0x7C
TAG_WITNESS = 0x80
TAG_CHALLENGE = 0x81
TAG_RESPONSE = 0x82
TAG_EXPONENTIATION = 0x85

TAG_OBJECT_ID = 0x5C
TAG_OBJECT_DATA = 0x53
TAG_GENERATE_TEMPLATE = 0xAC
TAG_ALGORITHM = 0x80
TAG_PIN_POLICY = 0xAA
TAG_TOUCH_POLICY = 0xAB

# GET METADATA tags (docs/piv.md, "GET METADATA").
TAG_META_ALGORITHM = 0x01
TAG_META_POLICY = 0x02
TAG_META_ORIGIN = 0x03
TAG_META_PUBLIC_KEY = 0x04
TAG_META_IS_DEFAULT = 0x05
TAG_META_RETRIES = 0x06
#: vsc's extension: where the slot's private key lives (KeyLocation), when the card knows.
TAG_META_KEY_LOCATION = 0xC0
META_ALGORITHM_PIN = 0xFF

#: Slots of keys GA may use and ATTEST/MOVE/DELETE may name (F9 is excluded:
#: the attestation key only signs attestations and is never moved).
USER_SLOTS = KEY_SLOTS - {ATTESTATION_SLOT}

#: CACHED touch stays valid this long (Yubico: 15 seconds).
TOUCH_CACHE_SECONDS = 15.0

_PIN_ONLY = {PinPolicy.MATCH_ONCE: PinPolicy.ONCE, PinPolicy.MATCH_ALWAYS: PinPolicy.ALWAYS}
_GENERATE_TAGS = frozenset({TAG_ALGORITHM, TAG_PIN_POLICY, TAG_TOUCH_POLICY})
_GENERATE_TAGS_SP800_73 = frozenset({TAG_ALGORITHM})
_SET_MGMT_TOUCH = {0xFF: TouchPolicy.NEVER, 0xFE: TouchPolicy.ALWAYS, 0xFD: TouchPolicy.CACHED}


def _approve(slot: int) -> bool:
    return True


def _ignore(event: str, details: Mapping[str, object]) -> None:
    return None


def _wrong_secret(left: int) -> ApduError:
    # 63Cx even when x reaches 0: SP 800-73-4 keeps 6983 for "already blocked".
    return ApduError(SW.VERIFY_FAIL_NO_RETRY | min(left, 15), "wrong PIN or PUK")


def valid_pin_block(block: bytes) -> bool:
    """6-8 bytes followed by FF padding only (SP 800-73-4 Part 2 §2.4.3)."""
    if len(block) != PIN_BLOCK_SIZE:
        return False
    end = block.find(b"\xff")
    length = PIN_BLOCK_SIZE if end < 0 else end
    return length >= 6 and block[length:] == b"\xff" * (PIN_BLOCK_SIZE - length)


#: P2 -> reference; a dictionary look-up, not the enum's call (every VERIFY does this).
_REFERENCES: dict[int, Reference] = {int(ref): ref for ref in Reference}


def _reference(p2: int) -> Reference:
    ref = _REFERENCES.get(p2)
    if ref is None:
        raise ApduError(SW.REFERENCE_NOT_FOUND, f"key reference {p2:02X}")
    return ref


_DISCOVERY = int(ObjectId.DISCOVERY)
_BIT_GROUP = int(ObjectId.BIT_GROUP)


def _object_tag(value: bytes) -> int:
    if not 1 <= len(value) <= 3:
        raise InvalidData("object identifier of bad length")
    return int.from_bytes(value, "big")


def _items(template: bytes) -> dict[int, bytes]:
    """The items of a 7C template by tag; repeats are ``6A80``."""
    items: dict[int, bytes] = {}
    for tlv in parse_tlvs(parse_tlv(template, TAG_DYN_AUTH).value):
        if tlv.tag in items:
            raise InvalidData(f"tag {tlv.tag:02X} repeated")
        items[tlv.tag] = tlv.value
    return items


def _policy_byte(value: bytes | None) -> int:
    if value is None:
        return 0
    if len(value) != 1:
        raise InvalidData("policy must be one byte")
    return value[0]


def _policies(pin: bytes | None, touch: bytes | None) -> tuple[PinPolicy, TouchPolicy]:
    try:
        return PinPolicy(_policy_byte(pin)), TouchPolicy(_policy_byte(touch))
    except ValueError:
        raise InvalidData("unknown PIN or touch policy") from None


def _dyn_auth(tag: int, value: bytes) -> bytes:
    return encode_tlv(TAG_DYN_AUTH, encode_tlv(tag, value))


def _names_pin_protected(data: bytes) -> bool | None:
    """Whether GET/PUT DATA's leading ``5C`` names an object the PIN guards (5FC109 holds
    a management key); None while the name is incomplete. Parsed as the handlers parse it."""
    try:
        header = peek_header(data)
    except InvalidData:
        return False  # refused (6A80): nothing is stored or read
    if header is None:
        return None
    tag, length, offset = header
    if tag != TAG_OBJECT_ID or not 1 <= length <= 3:
        return False  # the BIT GROUP template, or refused
    if offset + length > len(data):
        return None
    return int.from_bytes(data[offset : offset + length], "big") in PIN_PROTECTED


def _get_data_mask(p1: int, p2: int, data: bytes) -> Mask | None:
    protected = _names_pin_protected(data)
    return None if protected is None else Mask.RESPONSE if protected else Mask.NONE


def _put_data_mask(p1: int, p2: int, data: bytes) -> Mask | None:
    protected = _names_pin_protected(data)
    return None if protected is None else Mask.COMMAND if protected else Mask.NONE


#: What traces hide (vsc.masking): PINs and PUKs, key material in, GA both ways
#: (9B witnesses and challenges, decrypted plaintext, ECDH secrets), the objects the
#: PIN guards (5FC109 holds the PIN-protected management key); an INS not listed
#: is hidden both ways.
PIV_TRACE_RULES = TraceRules(
    {
        INS_VERIFY: Mask.COMMAND,
        INS_CHANGE_REFERENCE: Mask.COMMAND,
        INS_RESET_RETRY: Mask.COMMAND,
        INS_AUTHENTICATE: Mask.BOTH,
        INS_IMPORT_KEY: Mask.COMMAND,
        INS_SET_MANAGEMENT_KEY: Mask.COMMAND,
        INS_GET_DATA: _get_data_mask,
        INS_PUT_DATA: _put_data_mask,
        INS_GENERATE: Mask.NONE,  # the response is the public key
        INS_MOVE_KEY: Mask.NONE,
        INS_GET_METADATA: Mask.NONE,  # says whether a PIN is the default, not what it is
        INS_GET_SERIAL: Mask.NONE,
        INS_ATTEST: Mask.NONE,
        INS_SET_PIN_RETRIES: Mask.NONE,
        INS_RESET: Mask.NONE,
        INS_GET_VERSION: Mask.NONE,
        INS_LOCK: Mask.NONE,
    },
    default=Mask.BOTH,
)


class PivApplet(Applet[SecurityState]):
    """The PIV applet. ``PivApplet()`` is a factory-fresh card with in-memory keys."""

    aid = PIV_AID
    min_aid_prefix = 5
    trace_rules = PIV_TRACE_RULES

    def __init__(
        self,
        keys: KeyStore | None = None,
        *,
        serial: int | None = None,
        data: PivData | None = None,
        profile: PivProfile | None = None,
    ) -> None:
        fresh = data is None
        if data is None:
            record = PivRecord.factory(
                serial if serial is not None else random_serial(), profile or DEFAULT_PROFILE
            )
            data = PivData(record)
        elif serial is not None and serial != data.serial:
            raise ValueError(f"serial {serial} differs from the data's {data.serial}")
        elif profile is not None and profile is not data.profile:
            raise ValueError(f"profile {profile.name} differs from the data's {data.profile.name}")
        self.keys: KeyStore = keys if keys is not None else MemoryKeyStore()
        self.data = data
        self.profile = profile = data.profile
        # The profile, read once (see the module docstring): the Yubico instructions it
        # lacks leave the command table, and the handlers read these attributes.
        self._commands = {
            ins: handler
            for ins, handler in self.commands.items()
            if ins not in YUBICO_INS or ins in profile.yubico_ins
        }
        self._apt = profile.apt
        self._pin_protected = profile.pin_protected
        self._absent_before_pin = profile.absent_before_pin
        self._is_object = profile.is_object
        self._discovery = self._stored_discovery()
        #: Touch approval: called with the slot; False refuses (``6982``).
        self.touch: Callable[[int], bool] = _approve
        #: Monotonic seconds, for CACHED touch.
        self.clock: Callable[[], float] = time.monotonic
        #: Wall-clock seconds, for a managed card's lock and admin-key recovery.
        self.wall_clock: Callable[[], float] = time.time
        #: Lifecycle events of a managed card (unblock, unlock, lock, refusals), for an
        #: audit log: ``events(name, details)``. Details never hold a secret.
        self.events: Callable[[str, Mapping[str, object]], None] = _ignore
        # The lock time this applet last applied to every channel (see _apply_lock).
        self._lock_applied: float | None = None
        self._admin_tries_left = 0
        # (RESET count, PIN replacement count): sessions compare it to learn
        # that another channel invalidated their security state.
        self._epoch = (0, 0)
        # GET DATA answers by tag, with the object they encode (a new value misses).
        self._answers: dict[int, tuple[bytes, bytes]] = {}
        if profile.attestation:
            self._provision_attestation(fresh_data=fresh)

    def _stored_discovery(self) -> bytes:
        """The discovery object: generated, or as PUT DATA replaced it (plain PIV)."""
        value = self.data.get_object(_DISCOVERY)
        return DISCOVERY_OBJECT if value is None else encode_tlv(_DISCOVERY, value)

    def _provision_attestation(self, *, fresh_data: bool = False) -> None:
        """A card without an F9 key gets one, with its certificate in 5FFF01.

        Factory data beside a key store that already has an F9 key gets the
        store's certificate in 5FFF01.
        """
        if self.keys.get(ATTESTATION_SLOT) is None:
            der: bytes | None = create_attestation_key(self.keys, serial=self.data.serial)
        elif fresh_data:
            der = self.keys.attestation_certificate
        else:
            return
        if der is not None:
            self.data.put_object(ObjectId.ATTESTATION, certificate_value(der))

    # -- the engine interface -------------------------------------------------------

    def new_session(self) -> SecurityState:
        return SecurityState(epoch=self._epoch)

    def select(self, session: SecurityState, apdu: CommandApdu) -> bytes:
        session.sync(self._epoch)
        session.challenge = None
        session.pin_always = False
        return self._apt

    def process(self, apdu: CommandApdu, session: SecurityState) -> bytes | Response:
        self._apply_lock()
        session.sync(self._epoch)
        # A challenge lives for exactly one more command.
        session.previous_challenge, session.challenge = session.challenge, None
        try:
            handler = self._commands.get(apdu.ins)
            if handler is None:
                raise ApduError(SW.INVALID_INSTRUCTION, f"INS {apdu.ins:02X} not supported")
            return handler(self, apdu, session)
        finally:
            session.previous_challenge = None
            if apdu.ins != INS_VERIFY:
                session.pin_always = False

    # -- managed cards: lock, PIN rules, admin-key counter ----------------------------

    def locked(self) -> bool:
        """Whether this is a managed card that is locked now."""
        managed = self.data.managed
        return managed is not None and managed.locked(self.wall_clock())

    def _apply_lock(self) -> None:
        # A lock that took effect (a scheduled one, an expired unlock) ends the PIN
        # status of every channel, once: the PIN epoch moves on.
        managed = self.data.managed
        if managed is None or managed.lock_at is None or not managed.locked(self.wall_clock()):
            return
        if self._lock_applied != managed.lock_at:
            self._lock_applied = managed.lock_at
            self._epoch = (self._epoch[0], self._epoch[1] + 1)

    def _require_unlocked(self, what: str) -> None:
        # Locked is not blocked: 6983 would tell clients "PIN blocked, 0 tries" while the
        # counter is full. ISO 7816-4's "selected file deactivated" says what happened.
        if self.locked():
            log.info("%s refused: the card is locked", what)
            raise ApduError(SW.FILE_DEACTIVATED, f"{what}: the card is locked")

    def _check_new_secret(self, ref: Reference, block: bytes) -> None:
        """A new PIN or PUK block the card accepts; the profile's status word if not.

        6-8 bytes and FF padding (SP 800-73-4); a YubiKey 5.7 PUK only of bytes
        00-7F; a managed card's PIN rules for a PIN.
        """
        profile = self.profile
        if not valid_pin_block(block):
            raise ApduError(
                profile.bad_new_secret_sw, f"new {ref.name} must be 6-8 bytes padded with FF"
            )
        ascii_only = ref is Reference.PUK and not profile.puk_any_byte
        if ascii_only and any(b > 0x7F for b in strip_padding(block)):
            raise ApduError(profile.bad_new_secret_sw, "a PUK of bytes 00-7F only")
        if ref is Reference.PIN:
            self._check_new_pin(block)

    def _check_new_pin(self, block: bytes) -> None:
        """A managed card's PIN rules; the refusal names the rule, in the log too."""
        managed = self.data.managed
        if managed is None:
            return
        try:
            managed.pin_rules.check(strip_padding(block))
        except PinRuleError as e:
            log.warning("new PIN refused by the PIN policy: %s", e.reason + f" (rule {e.rule})")
            self.events("pin-refused", {"rule": e.rule, "reason": e.reason})
            raise

    def _count_admin_try(self) -> None:
        """Decrement a managed card's admin-key counter (committed) before a comparison."""
        if self.data.managed is None:
            return
        now = self.wall_clock()
        try:
            left = self.data.consume_admin_try(now)
        except ValueError:
            wait = self.data.admin_tries(now)[2]
            log.warning("management key blocked for %.0f s more", wait)
            raise ApduError(
                SW.AUTH_METHOD_BLOCKED, f"management key blocked for {wait:.0f} s"
            ) from None
        self._admin_tries_left = left

    def _admin_failed(self) -> None:
        if self.data.managed is not None:
            left = self._admin_tries_left
            log.warning("wrong management key answer; %d tries left", left)
            self.events("admin-key-refused", {"tries_left": left})

    def _admin_succeeded(self) -> None:
        if self.data.managed is not None:
            self.data.restore_admin_tries()

    # -- access conditions ----------------------------------------------------------

    @staticmethod
    def _require_admin(session: SecurityState) -> None:
        if not session.admin:
            raise SecurityStatusNotSatisfied("management key not authenticated")

    def _require_touch(self, slot: int, policy: TouchPolicy, session: SecurityState) -> None:
        if policy in (TouchPolicy.NEVER, TouchPolicy.DEFAULT):
            return
        now = self.clock()
        if policy is TouchPolicy.CACHED and session.touch_until.get(slot, now) > now:
            return
        if not self.touch(slot):
            raise SecurityStatusNotSatisfied(f"touch refused for slot {slot:02X}")
        if policy is TouchPolicy.CACHED:
            session.touch_until[slot] = now + TOUCH_CACHE_SECONDS

    def _authorize_key(self, slot: int, info: KeyInfo, session: SecurityState) -> None:
        """Enforce the key's PIN policy, then its touch policy."""
        # Stores resolve policies; should a DEFAULT or a Bio policy turn up
        # anyway, it gets the slot default or its PIN-only analogue.
        policy = _PIN_ONLY.get(info.pin_policy, info.pin_policy)
        if policy is PinPolicy.DEFAULT:
            policy = default_pin_policy(slot)
        if policy is PinPolicy.ALWAYS:
            if not (session.pin_verified and session.pin_always):
                raise SecurityStatusNotSatisfied("PIN-always key needs VERIFY right before")
            session.pin_always = False
        elif policy is PinPolicy.ONCE and not session.pin_verified:
            raise SecurityStatusNotSatisfied("PIN not verified")
        self._require_touch(slot, info.touch_policy, session)

    def _check_secret(self, ref: Reference, candidate: bytes) -> None:
        """Compare a PIN/PUK with the counter decremented (and committed) first."""
        if self.data.tries(ref).remaining == 0:
            raise InvalidPin(0, f"{ref.name} blocked")
        left = self.data.consume_try(ref)
        if not self.data.matches(ref, candidate):
            raise _wrong_secret(left)
        self.data.restore_tries(ref)

    # -- data objects ---------------------------------------------------------------

    @command(INS_GET_DATA)
    def get_data(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        if apdu.p1 != 0x3F or apdu.p2 != 0xFF:
            raise IncorrectParameters("GET DATA P1P2 must be 3FFF")
        data = apdu.data
        # The shape every client sends, 5C <len> <tag>, read without the TLV parser.
        if 3 <= len(data) <= 5 and data[0] == TAG_OBJECT_ID and data[1] == len(data) - 2:
            tag = int.from_bytes(data[2:], "big")
        else:
            tag = _object_tag(parse_tlv(data, TAG_OBJECT_ID).value)
        if tag == _DISCOVERY:
            return self._discovery
        value = self.data.get_object(tag)
        # A YubiKey says "absent" before it asks for the PIN; SP 800-73-4 asks first.
        if (
            tag in self._pin_protected
            and not session.pin_verified
            and (value is not None or not self._absent_before_pin)
        ):
            raise SecurityStatusNotSatisfied(f"object {tag:X} needs the PIN")
        if value is None:
            if self._is_object(tag):
                raise NotFound(f"no object {tag:X}")
            raise ApduError(self.profile.unknown_object_sw[0], f"{tag:X} is not a data object")
        cached = self._answers.get(tag)
        if cached is not None and cached[0] is value:  # objects are immutable bytes
            return cached[1]
        answer = encode_tlv(_BIT_GROUP if tag == _BIT_GROUP else TAG_OBJECT_DATA, value)
        self._answers[tag] = (value, answer)
        return answer

    @command(INS_PUT_DATA)
    def put_data(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        if (apdu.p1, apdu.p2) != (0x3F, 0xFF):
            raise IncorrectParameters("PUT DATA P1P2 must be 3FFF")
        self._require_admin(session)
        tlvs = parse_tlvs(apdu.data)
        if len(tlvs) == 1 and tlvs[0].tag in (ObjectId.DISCOVERY, ObjectId.BIT_GROUP):
            tag, value = tlvs[0].tag, tlvs[0].value  # SP 800-73's own-template form
        elif len(tlvs) == 2 and (tlvs[0].tag, tlvs[1].tag) == (TAG_OBJECT_ID, TAG_OBJECT_DATA):
            tag, value = _object_tag(tlvs[0].value), tlvs[1].value
        else:
            raise InvalidData("PUT DATA needs 5C <tag> 53 <value>")
        profile = self.profile
        if tag == ObjectId.DISCOVERY and not profile.discovery_writable:
            raise ApduError(SW.FUNCTION_NOT_SUPPORTED, "the discovery object is read-only")
        if tag != ObjectId.DISCOVERY and not profile.is_object(tag):
            raise ApduError(profile.unknown_object_sw[1], f"{tag:X} is not a data object")
        if len(value) > profile.max_size(tag):
            raise ApduError(SW.NO_SPACE, f"object {tag:X} of {len(value)} bytes")
        if profile.storage is not None and value:
            others = sum(len(v) for t, v in self.data.record.objects.items() if t != tag)
            if others + len(value) > profile.storage:
                raise ApduError(SW.NO_SPACE, f"object {tag:X}: the card's storage is full")
        self.data.put_object(tag, value)
        if tag == ObjectId.DISCOVERY:
            self._discovery = self._stored_discovery()
        return b""

    # -- PIN and PUK ----------------------------------------------------------------

    @command(INS_VERIFY)
    def verify(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        if apdu.p1 not in (0x00, 0xFF):
            raise IncorrectParameters("VERIFY P1 must be 00 or FF")
        if _reference(apdu.p2) is not Reference.PIN:
            raise ApduError(SW.REFERENCE_NOT_FOUND, "only the application PIN can be verified")
        if apdu.p1 == 0xFF:
            if apdu.data:
                raise InvalidData("VERIFY P1=FF takes no data")
            session.clear_pin()
            return b""
        self._require_unlocked("VERIFY")
        if not apdu.data:  # status query: never costs a try
            if session.pin_verified:
                return b""
            raise InvalidPin(self.data.tries(Reference.PIN).remaining, "PIN not verified")
        if len(apdu.data) != PIN_BLOCK_SIZE:
            raise InvalidData("PIN block must be 8 bytes")
        try:
            self._check_secret(Reference.PIN, apdu.data)
        except ApduError:
            session.clear_pin()
            raise
        session.pin_verified = session.pin_always = True
        return b""

    @command(INS_CHANGE_REFERENCE)
    def change_reference(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        if apdu.p1 != 0x00:
            raise IncorrectParameters("CHANGE REFERENCE DATA P1 must be 00")
        ref = _reference(apdu.p2)
        if len(apdu.data) != 2 * PIN_BLOCK_SIZE:
            raise InvalidData("old and new value must be 8 bytes each")
        self._require_unlocked(f"CHANGE REFERENCE DATA ({ref.name})")
        old, new = apdu.data[:PIN_BLOCK_SIZE], apdu.data[PIN_BLOCK_SIZE:]
        try:
            self._check_secret(ref, old)
        except ApduError:
            if ref is Reference.PIN:
                session.clear_pin()
            raise
        self._check_new_secret(ref, new)
        self.data.set_secret(ref, new)
        if ref is Reference.PIN:
            session.pin_verified = True
        return b""

    @command(INS_RESET_RETRY)
    def reset_retry_counter(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        if apdu.p1 == RESET_BY_ADMIN and self.data.managed is not None:
            return self._reset_by_admin(apdu, session)
        if apdu.p1 != RESET_WITH_PUK:
            raise IncorrectParameters("RESET RETRY COUNTER P1 must be 00")
        if _reference(apdu.p2) is not Reference.PIN:
            raise ApduError(SW.REFERENCE_NOT_FOUND, "only the PIN can be reset")
        if len(apdu.data) != 2 * PIN_BLOCK_SIZE:
            raise InvalidData("PUK and new PIN must be 8 bytes each")
        self._require_unlocked("RESET RETRY COUNTER")
        puk, new = apdu.data[:PIN_BLOCK_SIZE], apdu.data[PIN_BLOCK_SIZE:]
        self._check_secret(Reference.PUK, puk)
        self._check_new_secret(Reference.PIN, new)
        self.data.set_secret(Reference.PIN, new)
        return b""

    def _reset_by_admin(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        """Unblock with the management key (authenticated by GA 9B in this session).

        The card-side half of the helpdesk unblock: a remote tool answers the
        management key's challenge, then sends the new PIN. A lock stays as it is.
        """
        if _reference(apdu.p2) is not Reference.PIN:
            raise ApduError(SW.REFERENCE_NOT_FOUND, "only the PIN can be reset")
        self._require_admin(session)
        if len(apdu.data) != PIN_BLOCK_SIZE or not valid_pin_block(apdu.data):
            raise InvalidData("new PIN must be 6-8 bytes padded with FF")
        self._check_new_pin(apdu.data)
        self.data.reset_pin_as_admin(apdu.data)
        log.info("PIN reset with the management key")
        self.events("unblock", {})
        return b""

    # -- GENERAL AUTHENTICATE ---------------------------------------------------------

    @command(INS_AUTHENTICATE)
    def general_authenticate(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        slot = apdu.p2
        if slot == SLOT_CARD_MANAGEMENT:
            return self._authenticate_admin(apdu.p1, _items(apdu.data), session)
        if slot not in USER_SLOTS:
            raise IncorrectParameters(f"{slot:02X} is not a key reference GA can use")
        if self.locked():
            raise SecurityStatusNotSatisfied(f"slot {slot:02X}: the card is locked")
        return self._use_key(apdu.p1, slot, _items(apdu.data), session)

    def _authenticate_admin(
        self, p1: int, items: dict[int, bytes], session: SecurityState
    ) -> bytes:
        key = self.data.management_key
        size = key.key_type.block_size
        if items == {TAG_CHALLENGE: b""} and p1 in (0x00, key.key_type):
            # Single authentication step 1 (also OpenSC's RNG, with P1 = 00).
            challenge = secrets.token_bytes(size)
            session.challenge = Challenge(ChallengeKind.CHALLENGE, key.key_type, challenge, key)
            return _dyn_auth(TAG_CHALLENGE, challenge)
        if p1 != key.key_type:
            raise IncorrectParameters(f"management key is {key.key_type.name}, not P1 {p1:02X}")
        if items == {TAG_WITNESS: b""}:  # mutual authentication step 1
            witness = secrets.token_bytes(size)
            session.challenge = Challenge(ChallengeKind.WITNESS, key.key_type, witness, key)
            return _dyn_auth(TAG_WITNESS, key.encrypt(witness))
        pending = session.previous_challenge
        if set(items) in ({TAG_WITNESS, TAG_CHALLENGE}, {TAG_WITNESS, TAG_CHALLENGE, TAG_RESPONSE}):
            # Mutual step 2: the host proves it decrypted R, and gets E(C) back.
            session.admin = False
            if items.get(TAG_RESPONSE, b"") or len(items[TAG_CHALLENGE]) != size:
                raise InvalidData("mutual authentication template malformed")
            self._check_challenge(pending, ChallengeKind.WITNESS, items[TAG_WITNESS], key)
            self._require_touch(SLOT_CARD_MANAGEMENT, key.touch_policy, session)
            session.admin = True
            return _dyn_auth(TAG_RESPONSE, key.encrypt(items[TAG_CHALLENGE]))
        if set(items) == {TAG_RESPONSE} and items[TAG_RESPONSE]:
            # Single step 2: the host returns E(C).
            session.admin = False
            self._check_challenge(pending, ChallengeKind.CHALLENGE, items[TAG_RESPONSE], key)
            self._require_touch(SLOT_CARD_MANAGEMENT, key.touch_policy, session)
            session.admin = True
            return b""
        raise InvalidData("unsupported management key authentication template")

    def _check_challenge(
        self, pending: Challenge | None, kind: ChallengeKind, answer: bytes, key: ManagementKey
    ) -> None:
        if pending is None or pending.kind is not kind or pending.key != key:
            raise SecurityStatusNotSatisfied("no challenge outstanding under this key")
        expected = pending.value if kind is ChallengeKind.WITNESS else key.encrypt(pending.value)
        self._count_admin_try()  # nothing was compared before this line
        if not hmac.compare_digest(expected, answer):
            self._admin_failed()
            raise SecurityStatusNotSatisfied("management key authentication failed")
        self._admin_succeeded()

    def _use_key(
        self, p1: int, slot: int, items: dict[int, bytes], session: SecurityState
    ) -> bytes:
        info = self.keys.get(slot)
        if info is None:
            raise InvalidData(f"no key in slot {slot:02X}")
        if p1 != info.key_type:
            raise InvalidData(f"slot {slot:02X} holds {info.key_type.name}, not P1 {p1:02X}")
        key_type = info.key_type
        if items.get(TAG_RESPONSE) != b"" or len(items) != 2:
            raise InvalidData("key operation template must be 82 00 plus 81 or 85")
        if TAG_CHALLENGE in items:
            payload = items[TAG_CHALLENGE]
            if key_type is KeyType.X25519:
                raise InvalidData("an X25519 key cannot sign")
            if key_type.is_rsa and len(payload) != key_type.bit_len // 8:
                raise InvalidData("RSA input must be exactly the modulus length")
            self._authorize_key(slot, info, session)
            result = self.keys.sign(slot, payload, key_type=key_type)
        elif TAG_EXPONENTIATION in items:
            if not (key_type.is_ec or key_type is KeyType.X25519):
                raise InvalidData(f"a {key_type.name} key cannot do key agreement")
            self._authorize_key(slot, info, session)
            result = self.keys.agree(slot, items[TAG_EXPONENTIATION], key_type=key_type)
        else:
            raise InvalidData("key operation template must be 82 00 plus 81 or 85")
        return _dyn_auth(TAG_RESPONSE, result)

    # -- key management ---------------------------------------------------------------

    @command(INS_GENERATE)
    def generate(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        profile = self.profile
        if apdu.p1 != 0x00 or apdu.p2 not in profile.key_slots:
            raise IncorrectParameters(f"cannot generate a key in {apdu.p2:02X}")
        self._require_admin(session)
        allowed = _GENERATE_TAGS if profile.policies else _GENERATE_TAGS_SP800_73
        params: dict[int, bytes] = {}
        for tlv in parse_tlvs(parse_tlv(apdu.data, TAG_GENERATE_TEMPLATE).value):
            if tlv.tag in params or tlv.tag not in allowed:
                raise InvalidData(f"unexpected or repeated tag {tlv.tag:02X}")
            params[tlv.tag] = tlv.value
        algorithm = params.get(TAG_ALGORITHM, b"")
        try:
            key_type = KeyType(algorithm[0]) if len(algorithm) == 1 else None
        except ValueError:
            key_type = None
        if key_type is None or key_type not in profile.key_types:
            raise InvalidData("unknown or missing algorithm")
        pin, touch = _policies(params.get(TAG_PIN_POLICY), params.get(TAG_TOUCH_POLICY))
        info = self.keys.generate(apdu.p2, key_type, pin, touch)
        return encode_public_key(info)

    @command(INS_IMPORT_KEY)
    def import_key(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        try:
            key_type = KeyType(apdu.p1)
        except ValueError:
            raise IncorrectParameters(f"unknown algorithm {apdu.p1:02X}") from None
        if key_type not in self.profile.key_types:
            raise IncorrectParameters(f"{key_type.name} is not an algorithm of this card")
        if apdu.p2 not in self.profile.key_slots:
            raise IncorrectParameters(f"cannot import a key into {apdu.p2:02X}")
        self._require_admin(session)
        policy_tags: dict[int, bytes] = {}
        for tlv in parse_tlvs(apdu.data):
            if tlv.tag in (TAG_PIN_POLICY, TAG_TOUCH_POLICY):
                if tlv.tag in policy_tags:
                    raise InvalidData(f"tag {tlv.tag:02X} repeated")
                policy_tags[tlv.tag] = tlv.value
        pin, touch = _policies(policy_tags.get(TAG_PIN_POLICY), policy_tags.get(TAG_TOUCH_POLICY))
        private_key = parse_private_key(key_type, apdu.data)
        self.keys.import_key(apdu.p2, key_type, private_key, pin, touch)
        return b""

    @command(INS_MOVE_KEY)
    def move_key(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        dst, src = apdu.p1, apdu.p2
        if src not in USER_SLOTS or (dst != 0xFF and (dst not in USER_SLOTS or dst == src)):
            raise IncorrectParameters(f"cannot move {src:02X} to {dst:02X}")
        self._require_admin(session)
        if self.keys.get(src) is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND, f"no key in slot {src:02X}")
        if dst == 0xFF:
            self.keys.delete(src)
            return b""
        if self.keys.get(dst) is not None:
            # ykman reads 6A80 here as "DEST slot is not empty".
            raise InvalidData(f"slot {dst:02X} is not empty")
        self.keys.move(src, dst)
        return b""

    @command(INS_ATTEST)
    def attest(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        slot = apdu.p1
        if slot not in USER_SLOTS or apdu.p2 != 0x00:
            raise IncorrectParameters(f"cannot attest slot {slot:02X}")
        info = self.keys.get(slot)
        if info is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND, f"no key in slot {slot:02X}")
        version = self.profile.version
        assert version is not None  # ATTEST is a Yubico instruction
        return self.keys.attest(
            slot, serial=self.data.serial, version=version, issuer=self._attestation_issuer()
        )

    def _attestation_issuer(self) -> bytes | None:
        """The certificate in 5FFF01 (it may have been replaced with PUT DATA)."""
        value = self.data.get_object(ObjectId.ATTESTATION)
        if value is None:
            return None
        try:
            return {t.tag: t.value for t in parse_tlvs(value)}.get(0x70)
        except ApduError:
            return None

    # -- management key, retries, reset -----------------------------------------------

    @command(INS_SET_MANAGEMENT_KEY)
    def set_management_key(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        touch = _SET_MGMT_TOUCH.get(apdu.p2)
        if apdu.p1 != 0xFF or touch is None:
            raise IncorrectParameters("SET MANAGEMENT KEY P1 must be FF, P2 FF/FE/FD")
        self._require_admin(session)
        if len(apdu.data) < 3:
            raise InvalidData("SET MANAGEMENT KEY needs <alg> 9B <len> <key>")
        try:
            key_type = ManagementKeyType(apdu.data[0])
        except ValueError:
            key_type = None
        if key_type is None or key_type not in self.profile.management_key_types:
            raise InvalidData(f"unknown management key algorithm {apdu.data[0]:02X}")
        value = parse_tlv(apdu.data[1:], SLOT_CARD_MANAGEMENT).value
        self.data.set_management_key(ManagementKey(key_type, value, touch))
        return b""  # the administrator stays authenticated (ykman writes objects next)

    @command(INS_SET_PIN_RETRIES)
    def set_pin_retries(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        if apdu.p1 == 0:
            raise IncorrectParameters("at least one PIN try")
        self._require_admin(session)
        if not session.pin_verified:
            raise SecurityStatusNotSatisfied("SET PIN RETRIES needs the PIN too")
        self.data.set_retries(apdu.p1, apdu.p2)
        # The PIN was replaced by the default: no channel may keep its status.
        self._epoch = (self._epoch[0], self._epoch[1] + 1)
        session.sync(self._epoch)
        self.events("retries", {"pin_tries": apdu.p1, "puk_tries": apdu.p2})
        return b""

    @command(INS_RESET)
    def reset(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        if apdu.p1 or apdu.p2:
            raise IncorrectParameters("RESET P1P2 must be 0000")
        if self.data.tries(Reference.PIN).remaining or self.data.tries(Reference.PUK).remaining:
            raise ConditionsNotSatisfied("RESET needs both PIN and PUK blocked")
        self.keys.reset()
        self.data.factory_reset()
        self._provision_attestation()
        self._epoch = (self._epoch[0] + 1, self._epoch[1])
        session.sync(self._epoch)
        self.events("reset", {})
        return b""

    # -- lock control (managed cards) -------------------------------------------------

    @command(INS_LOCK)
    def lock_control(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        """Status (P1 00), lock (01, now or in N s), unlock (02, for N s or unrestricted).

        Locking restricts, so it needs nothing; unlocking needs the management
        key, authenticated in this session (GA 9B), so the duration in the
        command is the administrator's, not the user's.
        """
        managed = self.data.managed
        if managed is None:
            raise ApduError(SW.INVALID_INSTRUCTION, "lock control is for managed cards")
        if apdu.p2 != 0x00 or apdu.p1 not in (LOCK_STATUS, LOCK_SET, LOCK_RELEASE):
            raise IncorrectParameters("lock control: P1 00, 01 or 02 and P2 00")
        if apdu.data and len(apdu.data) != 4:
            raise WrongLength("lock control takes no data or 4 bytes of seconds")
        seconds = int.from_bytes(apdu.data, "big") if apdu.data else None
        now = self.wall_clock()
        if apdu.p1 == LOCK_STATUS:
            if seconds is not None:
                raise WrongLength("the lock status takes no data")
            return self._lock_status(managed, now)
        if apdu.p1 == LOCK_SET:
            lock_at = now + (seconds or 0)
            self.data.set_managed(managed.locked_from(lock_at))
            self.events("lock", {"at": lock_at})
        else:
            self._require_admin(session)
            unrestricted = seconds is None or seconds == NO_LOCK
            refusal = None if unrestricted else unlock_refusal(seconds or 0)
            if refusal is not None:
                log.info("unlock refused: %s", refusal)  # the operator learns why
                raise InvalidData(refusal)
            lock_at_or_none = None if unrestricted else now + (seconds or 0)
            self.data.set_lock(lock_at_or_none)
            self.events(
                "unlock",
                {
                    "seconds": None if lock_at_or_none is None else seconds,
                    "until": lock_at_or_none,
                },
            )
        self._apply_lock()
        session.sync(self._epoch)
        return b""

    @staticmethod
    def _lock_status(managed: Managed, now: float) -> bytes:
        """Locked flag, then seconds until the lock (0: locked; FFFFFFFF: none scheduled)."""
        if managed.lock_at is None:
            until = NO_LOCK
        else:
            until = max(0, min(NO_LOCK - 1, int(managed.lock_at - now + 0.999)))
        return bytes((managed.locked(now),)) + until.to_bytes(4, "big")

    # -- information ---------------------------------------------------------------------

    @command(INS_GET_VERSION)
    def get_version(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        return bytes(self.profile.version or ())

    @command(INS_GET_SERIAL)
    def get_serial(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        return self.data.serial.to_bytes(4, "big")

    @command(INS_GET_METADATA)
    def get_metadata(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        if apdu.p1 != 0x00:
            raise IncorrectParameters("GET METADATA P1 must be 00")
        ref = apdu.p2
        if ref in (Reference.PIN, Reference.PUK):
            tries = self.data.tries(Reference(ref))
            return (
                encode_tlv(TAG_META_ALGORITHM, bytes((META_ALGORITHM_PIN,)))
                + encode_tlv(TAG_META_IS_DEFAULT, bytes((self.data.is_default(Reference(ref)),)))
                + encode_tlv(TAG_META_RETRIES, bytes((tries.maximum, tries.remaining)))
            )
        if ref == SLOT_CARD_MANAGEMENT:
            key = self.data.management_key
            return (
                encode_tlv(TAG_META_ALGORITHM, bytes((key.key_type,)))
                + encode_tlv(TAG_META_POLICY, bytes((0, key.touch_policy)))
                + encode_tlv(TAG_META_IS_DEFAULT, bytes((key.is_default,)))
            )
        info = self.keys.get(ref) if ref in KEY_SLOTS else None
        if info is None:  # also 96 (Bio), which ykman probes on every card
            raise ApduError(SW.REFERENCE_NOT_FOUND, f"no metadata for {ref:02X}")
        pin = info.pin_policy or default_pin_policy(ref)  # metadata never says DEFAULT
        touch = resolve_touch_policy(info.touch_policy)
        metadata = (
            encode_tlv(TAG_META_ALGORITHM, bytes((info.key_type,)))
            + encode_tlv(TAG_META_POLICY, bytes((pin, touch)))
            + encode_tlv(TAG_META_ORIGIN, bytes((info.origin,)))
            + encode_tlv(TAG_META_PUBLIC_KEY, encode_public_key_data(info))
        )
        if info.location is not None:
            metadata += encode_tlv(TAG_META_KEY_LOCATION, bytes((info.location,)))
        return metadata
