"""The GIDS card application: the card model of Windows' TPM virtual smart cards.

Theory of operation
-------------------
:class:`GidsApplet` is the card edge of GIDS 2.0 as the Windows minidriver
and OpenSC's ``gids`` driver use it (docs/gids.md). It owns no private key:
asymmetric keys live in a :class:`~applets.piv.keys.KeyStore` whose slots
are GIDS key references; the PIN, PUK, the administrator key, the files and
their data objects in :class:`~applets.gids.state.GidsData`, which commits
every change; per-channel security state in a
:class:`~applets.gids.security.Session`.

A card leaves the factory empty, its application in the *creation* state:
every command may personalise it without authentication (set the PIN,
create files, write the administrator key and the minidriver's files), as
gids-tool ``--initialize`` does, except what needs a PIN to protect it:
asymmetric keys are generated, imported and used only once the application
is *operational*. ACTIVATE FILE on the application ends personalisation;
from then on every command meets the access rules of the file it touches
(:mod:`applets.gids.acl`) or answers ``6982``.

Checks run in this order in every handler: P1/P2 (``6A86``), the life
cycle (``6985``/``6986``), the access condition (``6982``), the data field
(``6A80``), then the state of the object (``6A82``, ``6A88``, ``6A89``).
PIN, PUK and administrator tries are spent and committed before the
comparison; a wrong value answers ``63Cx`` (``x`` tries left), a blocked
one ``6983``.

Where GIDS is silent vsc chooses the safe reading (docs/gids.md):

* deleting a file needs the application's delete right *and* the right to
  write the file (else a PIN holder could delete the administrator key's
  file and create one with rules of their own);
* creating the administrator key's file on an operational card needs the
  administrator;
* a re-SELECT of the application keeps the PIN status (as PIV does) but
  forgets the current file, the security environment and any challenge.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_private_key

from applets.piv.keys import (
    KeyStore,
    KeyType,
    MemoryKeyStore,
    PinPolicy,
    PrivateKey,
    TouchPolicy,
    encode_public_key,
)
from applets.piv.pinrules import PinRuleError
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
from vsc.tlv import encode_tlv, parse_dict, parse_tlv

from .acl import NEVER, AccessRules, DataOp, DfOp, EfOp, KeyOp, needs_user, satisfied
from .crypto import (
    ADMIN_KEY_LENGTHS,
    admin_block_size,
    admin_decrypt,
    admin_encrypt,
    oaep_decode,
    pkcs1_type1,
    pkcs1_type2_decode,
)
from .files import (
    ADMIN_KEY_REF,
    CRT_AUTHENTICATION,
    CRT_CONFIDENTIALITY,
    CRT_SIGNATURE,
    FileKind,
    GidsFile,
    LifeCycle,
    key_fid,
    parse_fcp,
)
from .security import AdminChallenge, ChallengeKind, Environment, Session
from .state import MAX_PIN_LENGTH, MIN_PIN_LENGTH, GidsData, GidsRecord, Reference

log = logging.getLogger(__name__)

__all__ = [
    "APPLICATION_FCP",
    "FCI",
    "GIDS_AID",
    "GIDS_ATR",
    "GIDS_TRACE_RULES",
    "Algorithm",
    "GidsApplet",
]

#: GIDS's RID A000000397, "BTFY", then the GIDS version (02) and 01.
GIDS_AID = bytes.fromhex("A000000397425446590201")
#: OpenSC and Windows select the first nine bytes.
GIDS_AID_PREFIX = 9


def _atr(historical: bytes) -> bytes:
    body = bytes((0x80 | len(historical), 0x01)) + historical
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes((tck,))


#: T=1 only, historical bytes carrying the application identifier (compact TLV F B):
#: the shape of Windows' TPM virtual smart card ATR, with this card's GIDS version.
GIDS_ATR = _atr(b"\x80\xfb" + GIDS_AID)

#: The answer to SELECT: the application template with the AID and the supported
#: administrator authentications (73 { 40 C0 }: mutual and external). Windows 10 and
#: OpenSC read the AID from it.
FCI = bytes.fromhex("6112") + encode_tlv(0x4F, GIDS_AID) + bytes.fromhex("730340 01C0")
#: The application's own FCP: a non-shareable DF whose files the user or the
#: administrator may create (b2) and delete (b1).
APPLICATION_FCP = bytes.fromhex("6208 820138 8C03033030")
_APPLICATION_RULES = AccessRules.parse(bytes.fromhex("033030"))

INS_SELECT = 0xA4
INS_VERIFY = 0x20
INS_MSE = 0x22
INS_CHANGE_REFERENCE = 0x24
INS_PSO = 0x2A
INS_RESET_RETRY = 0x2C
INS_ACTIVATE = 0x44
INS_GENERATE = 0x47
INS_AUTHENTICATE = 0x87
INS_GET_DATA = 0xCB
INS_PUT_DATA = 0xDB
INS_CREATE_FILE = 0xE0
INS_DELETE_FILE = 0xE4

#: P1P2 of GET/PUT DATA addressing the application itself ("current DF").
CURRENT_DF = 0x3FFF
CURRENT_EF = 0x0000
MF = 0x3F00

TAG_DYN_AUTH = 0x7C
TAG_CHALLENGE = 0x81
TAG_RESPONSE = 0x82
TAG_OBJECT_ID = 0x5C
TAG_KEY_DO = 0x70
TAG_KEY_REF_PRIVATE = 0x84
TAG_KEY_REF = 0x83
TAG_ALGORITHM = 0x80
TAG_KEY_TEMPLATE = 0xA5
TAG_KEY_TYPE = 0x83
TAG_KEY_VALUE = 0x87
TAG_GENERATE_TEMPLATE = 0xAC
TAG_PUBLIC_KEY = 0x7F49
TAG_TRIES_LEFT = 0x97
TAG_TRY_LIMIT = 0x93

#: PIN status data objects (GET DATA 3FFF): the PIN (two names) and the PUK.
PIN_STATUS = {0x7F71: Reference.PIN, 0x7F72: Reference.PIN, 0x7F73: Reference.PUK}

#: MANAGE SECURITY ENVIRONMENT P1: set for computation/decipherment, for
#: verification/external authentication, for both; restore.
MSE_COMPUTE = 0x41
MSE_VERIFY = 0x81
MSE_BOTH = 0xC1
MSE_RESTORE = 0xF3

#: PERFORM SECURITY OPERATION P1P2.
PSO_SIGN = (0x9E, 0x9A)
PSO_DECIPHER = (0x80, 0x86)

#: VERIFY P2 that logs every PIN and the administrator out (GIDS, OpenSC's logout).
VERIFY_LOG_OUT = 0x82

#: The card's storage for data objects, and the largest one (OpenSC's file limit).
MAX_DATA_BYTES = 256 * 1024
MAX_OBJECT_BYTES = 65000
MAX_FILES = 200

_MUTUAL_RANDOM = 16


class Algorithm:
    """GIDS cryptographic mechanism identifiers (low nibble) and paddings (high nibble)."""

    RSA1024 = 0x06
    RSA2048 = 0x07
    RSA3072 = 0x08
    RSA4096 = 0x09
    ECC_P256 = 0x0C
    ECC_P384 = 0x0D

    RAW = 0x00
    #: Signature: the hash (with its DigestInfo) was padded off card: raw operation.
    SIGN_RAW = 0x10
    PKCS1 = 0x40
    #: Signature: the card pads the DigestInfo with PKCS#1 v1.5.
    SIGN_PKCS1 = 0x50
    OAEP = 0x80


#: Algorithm identifier -> key type (RSA 1024-4096, P-256, P-384).
KEY_TYPES: Mapping[int, KeyType] = MappingProxyType(
    {
        Algorithm.RSA1024: KeyType.RSA1024,
        Algorithm.RSA2048: KeyType.RSA2048,
        Algorithm.RSA3072: KeyType.RSA3072,
        Algorithm.RSA4096: KeyType.RSA4096,
        Algorithm.ECC_P256: KeyType.ECCP256,
        Algorithm.ECC_P384: KeyType.ECCP384,
    }
)
#: GIDS identifiers of curves vsc does not offer (P-192, P-224, P-521): ``6A81``.
_UNSUPPORTED_ALGORITHMS = frozenset({0x0A, 0x0B, 0x0E})


def _ignore(event: str, details: Mapping[str, object]) -> None:
    return None


def _wrong(left: int, what: str) -> ApduError:
    # 63Cx even when x reaches 0; 6983 is for "already blocked".
    return ApduError(SW.VERIFY_FAIL_NO_RETRY | min(left, 15), f"wrong {what}")


def _byte(items: dict[int, bytes], tag: int, what: str) -> int:
    value = items.get(tag)
    if value is None or len(value) != 1:
        raise InvalidData(f"{what} ({tag:02X}) must be one byte")
    return value[0]


def _check_pin_length(value: bytes) -> None:
    if not MIN_PIN_LENGTH <= len(value) <= MAX_PIN_LENGTH:
        raise InvalidData(f"a PIN has {MIN_PIN_LENGTH} to {MAX_PIN_LENGTH} bytes")


def _reference(p2: int) -> Reference:
    try:
        return Reference(p2)
    except ValueError:
        raise ApduError(SW.REFERENCE_NOT_FOUND, f"key reference {p2:02X}") from None


def _pin_policy(file: GidsFile) -> PinPolicy:
    """What the key store is told: a key only the PIN unlocks is sealed to the PIN (a
    stored card's binding); any other is usable without it."""
    return PinPolicy.ONCE if needs_user(file.rules.condition(KeyOp.USE)) else PinPolicy.NEVER


def _plain_ecdsa(der: bytes, size: int) -> bytes:
    """ECDSA as ``r ‖ s`` (ISO 7816-8 plain format), each ``size`` bytes."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


# -- what traces hide (vsc.masking) ----------------------------------------------------------

#: Data files whose content the minidriver layout makes public (anyone reads them):
#: the file table, the common files, the card identifier.
_PUBLIC_FILES = frozenset({0xA000, 0xA010, 0xA012})


def _fid_mask(p1: int, p2: int, hidden: Mask) -> Mask:
    fid = (p1 << 8) | p2
    return Mask.NONE if fid in _PUBLIC_FILES else hidden


def _get_data_mask(p1: int, p2: int, data: bytes) -> Mask | None:
    if (p1 << 8) | p2 == CURRENT_DF:
        return Mask.NONE  # public keys and PIN counters
    return _fid_mask(p1, p2, Mask.RESPONSE)


def _put_data_mask(p1: int, p2: int, data: bytes) -> Mask | None:
    # 3FFF carries private and administrator keys; unknown files may hold secrets.
    return _fid_mask(p1, p2, Mask.COMMAND)


def _pso_mask(p1: int, p2: int, data: bytes) -> Mask | None:
    if (p1, p2) == PSO_SIGN:
        return Mask.NONE
    return Mask.RESPONSE if (p1, p2) == PSO_DECIPHER else Mask.BOTH


#: PINs and PUKs, key imports, administrator authentication both ways, deciphered
#: plaintext, and data objects of files that are not public; an INS not listed is
#: hidden both ways.
GIDS_TRACE_RULES = TraceRules(
    {
        INS_VERIFY: Mask.COMMAND,
        INS_CHANGE_REFERENCE: Mask.COMMAND,
        INS_RESET_RETRY: Mask.COMMAND,
        INS_AUTHENTICATE: Mask.BOTH,
        INS_PUT_DATA: _put_data_mask,
        INS_GET_DATA: _get_data_mask,
        INS_PSO: _pso_mask,
        INS_SELECT: Mask.NONE,
        INS_MSE: Mask.NONE,
        INS_GENERATE: Mask.NONE,  # the response is the public key
        INS_ACTIVATE: Mask.NONE,
        INS_CREATE_FILE: Mask.NONE,
        INS_DELETE_FILE: Mask.NONE,
    },
    default=Mask.BOTH,
)


class GidsApplet(Applet[Session]):
    """The GIDS applet. ``GidsApplet()`` is a factory-empty card with in-memory keys."""

    aid = GIDS_AID
    min_aid_prefix = GIDS_AID_PREFIX
    trace_rules = GIDS_TRACE_RULES

    def __init__(
        self,
        keys: KeyStore | None = None,
        *,
        serial: int | None = None,
        data: GidsData | None = None,
    ) -> None:
        if data is None:
            data = GidsData(None if serial is None else GidsRecord.factory(serial))
        elif serial is not None and serial != data.serial:
            raise ValueError(f"serial {serial} differs from the data's {data.serial}")
        self.keys: KeyStore = keys if keys is not None else MemoryKeyStore()
        self.data = data
        #: Wall-clock seconds, for the administrator key's self-healing counter.
        self.wall_clock: Callable[[], float] = time.time
        #: Security events (unblock, refused administrator answers, refused PINs), for an
        #: audit log: ``events(name, details)``. Details never hold a secret.
        self.events: Callable[[str, Mapping[str, object]], None] = _ignore
        # Moves on when the PIN is replaced by an unblock: other channels lose their status.
        self._epoch = 0

    # -- the engine interface -------------------------------------------------------

    def new_session(self) -> Session:
        return Session(epoch=self._epoch)

    def select(self, session: Session, apdu: CommandApdu) -> bytes:
        session.sync(self._epoch)
        session.current_ef = None
        session.environment = None
        session.challenge = None
        return APPLICATION_FCP if apdu.p2 & 0x0C == 0x04 else FCI

    def process(self, apdu: CommandApdu, session: Session) -> bytes | Response:
        session.sync(self._epoch)
        # An administrator challenge lives for exactly one more command.
        session.previous_challenge, session.challenge = session.challenge, None
        try:
            return super().process(apdu, session)
        finally:
            session.previous_challenge = None

    # -- access conditions ------------------------------------------------------------

    @property
    def personalising(self) -> bool:
        return self.data.state is LifeCycle.CREATION

    def _require(self, condition: int | None, session: Session, what: str) -> None:
        """Meet ``condition`` (None: the file sets none) or answer ``6982``."""
        if condition is None:
            return
        if self.personalising and condition != NEVER:
            return
        if not satisfied(condition, user=session.pin_verified, admin=session.admin):
            raise SecurityStatusNotSatisfied(f"{what}: access condition {condition:02X} not met")

    def _require_operational(self, what: str) -> None:
        if self.personalising:
            raise ConditionsNotSatisfied(f"{what}: the card is not activated yet")

    def _file(self, fid: int, session: Session) -> GidsFile:
        if fid == CURRENT_EF:
            if session.current_ef is None:
                raise ApduError(SW.COMMAND_NOT_ALLOWED, "no current elementary file")
            fid = session.current_ef
        file = self.data.files.get(fid)
        if file is None:
            raise NotFound(f"no file {fid:04X}")
        return file

    def _key_file(self, key_ref: int) -> GidsFile:
        file = self.data.files.get(key_fid(key_ref))
        if file is None or file.kind is not FileKind.KEY:
            raise ApduError(SW.REFERENCE_NOT_FOUND, f"no key file for key {key_ref:02X}")
        if file.state is not LifeCycle.OPERATIONAL:
            raise ConditionsNotSatisfied(f"key file {file.fid:04X} is not activated")
        return file

    # -- SELECT, CREATE, ACTIVATE, DELETE ---------------------------------------------

    @command(INS_SELECT)
    def select_file(self, apdu: CommandApdu, session: Session) -> bytes:
        """SELECT by file identifier (P1 00) or path (08, 09); by name is the card's."""
        if apdu.p2 & 0xF3 or apdu.p1 not in (0x00, 0x08, 0x09):
            raise IncorrectParameters(f"SELECT P1P2 {apdu.p1:02X}{apdu.p2:02X}")
        data = apdu.data
        if len(data) % 2 or (apdu.p1 == 0x00 and len(data) > 2):
            raise WrongLength("a file identifier has two bytes")
        path = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
        while path and path[0] in (MF, CURRENT_DF):
            path.pop(0)  # the MF and the application are one DF here
        if len(path) > 1:
            raise NotFound("no DF below the application")
        if not path:
            session.current_ef = None
            return {0x00: FCI, 0x04: APPLICATION_FCP}.get(apdu.p2 & 0x0C, b"")
        file = self.data.files.get(path[0])
        if file is None:
            raise NotFound(f"no file {path[0]:04X}")
        session.current_ef = file.fid
        return file.fcp_with_state() if apdu.p2 & 0x0C in (0x00, 0x04) else b""

    @command(INS_CREATE_FILE)
    def create_file(self, apdu: CommandApdu, session: Session) -> bytes:
        if apdu.p1 or apdu.p2:
            raise IncorrectParameters("CREATE FILE P1P2 must be 0000")
        self._require(_APPLICATION_RULES.condition(DfOp.CREATE_EF), session, "CREATE FILE")
        file = parse_fcp(apdu.data)
        if file.symmetric and not self.personalising and not session.admin:
            raise SecurityStatusNotSatisfied("only the administrator creates the admin key file")
        if file.fid in self.data.files:
            raise ApduError(SW.FILE_EXISTS, f"file {file.fid:04X} exists")
        if len(self.data.files) >= MAX_FILES:
            raise ApduError(SW.NO_SPACE, "no room for another file")
        self.data.put_file(file)
        session.current_ef = file.fid
        return b""

    @command(INS_ACTIVATE)
    def activate_file(self, apdu: CommandApdu, session: Session) -> bytes:
        """Activate the current file, or with none the application (personalisation ends)."""
        if apdu.p1 or apdu.p2:
            raise IncorrectParameters("ACTIVATE FILE P1P2 must be 0000")
        if apdu.data:
            raise WrongLength("ACTIVATE FILE takes no data")
        if session.current_ef is None:
            if self.personalising:
                if self.data.secret(Reference.PIN) is None:
                    raise ConditionsNotSatisfied("set the PIN before activating the card")
                self.data.activate()
                # The access rules start now: no channel keeps what personalisation verified.
                self._epoch += 1
                session.sync(self._epoch)
                log.info("GIDS application activated: personalisation is over")
                self.events("activated", {})
            return b""
        file = self._file(CURRENT_EF, session)
        self._require(file.rules.condition(EfOp.ACTIVATE), session, "ACTIVATE FILE")
        if file.state is LifeCycle.CREATION:
            self.data.put_file(file.activated())
        return b""

    @command(INS_DELETE_FILE)
    def delete_file(self, apdu: CommandApdu, session: Session) -> bytes:
        if apdu.p1 or apdu.p2:
            raise IncorrectParameters("DELETE FILE P1P2 must be 0000")
        if apdu.data:
            raise WrongLength("DELETE FILE deletes the current file and takes no data")
        if session.current_ef is None:
            raise ApduError(SW.COMMAND_NOT_ALLOWED, "the application cannot be deleted")
        file = self._file(CURRENT_EF, session)
        self._require(_APPLICATION_RULES.condition(DfOp.DELETE_CHILD), session, "DELETE FILE")
        self._require(file.rules.condition(EfOp.DELETE), session, "DELETE FILE")
        # Deleting and creating again must not get round the file's write rule.
        write = KeyOp.PUT_KEY if file.kind is FileKind.KEY else DataOp.PUT
        self._require(file.rules.condition(write), session, "DELETE FILE")
        if file.kind is FileKind.KEY and not file.symmetric and self.keys.get(file.key_ref):
            self.keys.delete(file.key_ref)
        self.data.remove_file(file.fid)
        session.current_ef = None
        return b""

    # -- GET DATA / PUT DATA ----------------------------------------------------------

    @command(INS_GET_DATA)
    def get_data(self, apdu: CommandApdu, session: Session) -> bytes:
        fid = (apdu.p1 << 8) | apdu.p2
        if fid == CURRENT_DF:
            return self._get_application_data(apdu.data, session)
        file = self._data_file(fid, session)
        self._require(file.rules.condition(DataOp.GET), session, f"GET DATA {file.fid:04X}")
        name = parse_tlv(apdu.data, TAG_OBJECT_ID).value
        session.current_ef = file.fid
        if not name:
            return b"".join(encode_tlv(tag, value) for tag, value in file.objects.items())
        if len(name) > 3:
            raise InvalidData("a data object tag has one to three bytes")
        tag = int.from_bytes(name, "big")
        value = file.objects.get(tag)
        if value is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND, f"no data object {tag:X} in {file.fid:04X}")
        return encode_tlv(tag, value)

    def _data_file(self, fid: int, session: Session) -> GidsFile:
        file = self._file(fid, session)
        if file.kind is not FileKind.DATA:
            raise ApduError(SW.COMMAND_INCOMPATIBLE, f"{file.fid:04X} is not a data file")
        if file.state is not LifeCycle.OPERATIONAL:
            raise ConditionsNotSatisfied(f"file {file.fid:04X} is not activated")
        return file

    def _get_application_data(self, data: bytes, session: Session) -> bytes:
        """GET DATA 3FFF: a PIN's status (5C 7F71) or a public key (70 84 <ref> A5 7F49)."""
        tlv = parse_tlv(data)
        if tlv.tag == TAG_OBJECT_ID:
            ref = PIN_STATUS.get(int.from_bytes(tlv.value, "big"))
            secret = None if ref is None else self.data.secret(ref)
            if secret is None:
                raise ApduError(SW.REFERENCE_NOT_FOUND, "no such PIN")
            status = encode_tlv(TAG_TRIES_LEFT, bytes((secret.tries.remaining,))) + encode_tlv(
                TAG_TRY_LIMIT, bytes((secret.tries.maximum,))
            )
            return encode_tlv(int.from_bytes(tlv.value, "big"), status)
        if tlv.tag != TAG_KEY_DO:
            raise InvalidData("GET DATA 3FFF reads a PIN status (5C) or a public key (70)")
        items = parse_dict(tlv.value)
        key_ref = _byte(items, TAG_KEY_REF_PRIVATE, "key reference")
        file = self._key_file(key_ref)
        self._require(file.rules.condition(KeyOp.GET_PUBLIC), session, "public key")
        info = self.keys.get(key_ref) if not file.symmetric else None
        if info is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND, f"no public key for {key_ref:02X}")
        return encode_public_key(info)

    @command(INS_PUT_DATA)
    def put_data(self, apdu: CommandApdu, session: Session) -> bytes:
        fid = (apdu.p1 << 8) | apdu.p2
        if fid == CURRENT_DF:
            return self._put_key(apdu.data, session)
        file = self._data_file(fid, session)
        self._require(file.rules.condition(DataOp.PUT), session, f"PUT DATA {file.fid:04X}")
        tlv = parse_tlv(apdu.data)
        if len(tlv.value) > MAX_OBJECT_BYTES:
            raise ApduError(SW.NO_SPACE, f"data object of {len(tlv.value)} bytes")
        old = file.objects.get(tlv.tag)
        used = sum(len(v) for f in self.data.files.values() for v in f.objects.values())
        if used - len(old or b"") + len(tlv.value) > MAX_DATA_BYTES:
            raise ApduError(SW.NO_SPACE, "the card's data storage is full")
        # An empty value empties the object; emptying an empty one removes it (as
        # GidsApplet does: OpenSC writes an empty cmapfile and expects to read it).
        value = None if not tlv.value and old == b"" else tlv.value
        self.data.put_file(file.with_object(tlv.tag, value))
        session.current_ef = file.fid
        return b""

    def _put_key(self, data: bytes, session: Session) -> bytes:
        """PUT DATA 3FFF: 70 { 84 <ref>, A5 { [83 type] [84 00] 87 <key> } }."""
        items = parse_dict(parse_tlv(data, TAG_KEY_DO).value)
        key_ref = _byte(items, TAG_KEY_REF_PRIVATE, "key reference")
        file = self._key_file(key_ref)
        self._require(file.rules.condition(KeyOp.PUT_KEY), session, "PUT KEY")
        template = items.get(TAG_KEY_TEMPLATE)
        if template is None:
            raise InvalidData("key import without a key template (A5)")
        inner = parse_dict(template)
        if inner.get(TAG_KEY_REF_PRIVATE, b"\x00") != b"\x00":
            raise ApduError(SW.FUNCTION_NOT_SUPPORTED, "encrypted key import")
        value = inner.get(TAG_KEY_VALUE)
        if value is None:
            raise InvalidData("key import without a key value (87)")
        if file.symmetric:
            if inner.get(TAG_KEY_TYPE, b"\x01") != b"\x01" or len(value) not in ADMIN_KEY_LENGTHS:
                raise InvalidData("the administrator key is 3DES (24 bytes) or AES (16/32)")
            self.data.set_admin_key(file, value)
            log.info("administrator key %02X written", key_ref)
            self.events("admin-key-change", {"reference": f"{key_ref:02X}"})
            return b""
        self._require_operational("key import")
        if inner.get(TAG_KEY_TYPE, b"\x02") != b"\x02":
            raise InvalidData("an asymmetric key file takes key type 02")
        private_key = _parse_private_key(value)
        key_type = KeyType.of(private_key)
        if key_type not in KEY_TYPES.values():
            raise InvalidData(f"GIDS holds no {key_type.name} keys")
        self.keys.import_key(key_ref, key_type, private_key, _pin_policy(file), TouchPolicy.NEVER)
        return b""

    # -- PIN and PUK ------------------------------------------------------------------

    @command(INS_VERIFY)
    def verify(self, apdu: CommandApdu, session: Session) -> bytes:
        if apdu.p1 not in (0x00, 0xFF):
            raise IncorrectParameters("VERIFY P1 must be 00 or FF")
        if apdu.p2 == VERIFY_LOG_OUT:
            if apdu.data:
                raise WrongLength("log out takes no data")
            session.log_out()
            return b""
        if _reference(apdu.p2) is not Reference.PIN:
            raise ApduError(SW.REFERENCE_NOT_FOUND, "only the PIN is verified")
        secret = self.data.secret(Reference.PIN)
        if secret is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND, "no PIN set")
        if apdu.p1 == 0xFF:
            if apdu.data:
                raise WrongLength("VERIFY P1=FF takes no data")
            session.pin_verified = False
            return b""
        if not apdu.data:  # a status query never costs a try
            if session.pin_verified:
                return b""
            raise InvalidPin(secret.tries.remaining, "PIN not verified")
        _check_pin_length(apdu.data)
        try:
            self._check_secret(Reference.PIN, apdu.data)
        except ApduError:
            session.pin_verified = False
            raise
        session.pin_verified = True
        return b""

    def _check_secret(self, ref: Reference, candidate: bytes) -> None:
        """Compare a PIN/PUK with the counter decremented (and committed) first."""
        secret = self.data.secret(ref)
        if secret is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND, f"no {ref.name} set")
        if secret.tries.remaining == 0:
            raise InvalidPin(0, f"{ref.name} blocked")
        left = self.data.consume_try(ref)
        if not self.data.matches(ref, candidate):
            if left == 0:  # the audit log's names, as a PIV card's: pin-blocked, puk-blocked
                self.events(f"{ref.name.lower()}-blocked", {"outcome": "refused"})
            raise _wrong(left, ref.name)
        self.data.restore_tries(ref)

    def _check_new_pin(self, value: bytes) -> None:
        """The card's limits, then a managed card's PIN policy (the refusal names the rule)."""
        _check_pin_length(value)
        rules = self.data.record.pin_rules
        if rules is None:
            return
        try:
            rules.check(value)
        except PinRuleError as e:
            log.warning("new PIN refused by the PIN policy: %s (rule %s)", e.reason, e.rule)
            self.events("pin-refused", {"rule": e.rule, "reason": e.reason})
            raise

    @command(INS_CHANGE_REFERENCE)
    def change_reference(self, apdu: CommandApdu, session: Session) -> bytes:
        ref = _reference(apdu.p2)
        if apdu.p1 == 0x01:
            return self._set_reference(ref, apdu.data, session)
        if apdu.p1 != 0x00:
            raise IncorrectParameters("CHANGE REFERENCE DATA P1 must be 00 or 01")
        if self.data.secret(ref) is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND, f"no {ref.name} set")
        old, new = self.data.split(ref, apdu.data)
        try:
            self._check_secret(ref, old)
        except ApduError:
            if ref is Reference.PIN:
                session.pin_verified = False
            raise
        if ref is Reference.PIN:
            session.pin_verified = True
            self._check_new_pin(new)
        else:
            _check_pin_length(new)
        self.data.set_secret(ref, new)
        return b""

    def _set_reference(self, ref: Reference, value: bytes, session: Session) -> bytes:
        """CHANGE REFERENCE DATA P1=01 (new value only): personalisation, or the holder of
        the PIN (PIN) or the administrator (PUK) on an operational card."""
        if not self.personalising:
            authorised = session.pin_verified if ref is Reference.PIN else session.admin
            if not authorised:
                raise SecurityStatusNotSatisfied(f"setting the {ref.name} needs authentication")
        if ref is Reference.PIN:
            self._check_new_pin(value)
        else:
            _check_pin_length(value)
        self.data.set_secret(ref, value, by_admin=ref is Reference.PUK and not self.personalising)
        return b""

    @command(INS_RESET_RETRY)
    def reset_retry_counter(self, apdu: CommandApdu, session: Session) -> bytes:
        """Unblock the PIN: with the PUK (P1 00/01) or as the administrator (02/03)."""
        if apdu.p1 not in (0x00, 0x01, 0x02, 0x03):
            raise IncorrectParameters("RESET RETRY COUNTER P1 must be 00 to 03")
        if _reference(apdu.p2) is not Reference.PIN:
            raise ApduError(SW.REFERENCE_NOT_FOUND, "only the PIN can be unblocked")
        if self.personalising:
            raise ApduError(SW.COMMAND_NOT_ALLOWED, "the card is not activated yet")
        if self.data.secret(Reference.PIN) is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND, "no PIN set")
        new = apdu.data
        if apdu.p1 in (0x02, 0x03):
            if not session.admin:
                raise SecurityStatusNotSatisfied("unblocking needs the administrator key")
            how = "admin"
        else:
            if self.data.secret(Reference.PUK) is None:
                raise ApduError(SW.REFERENCE_NOT_FOUND, "this card has no PUK")
            puk, new = self.data.split(Reference.PUK, apdu.data)
            self._check_secret(Reference.PUK, puk)
            how = "puk"
        if apdu.p1 & 0x01:  # no new PIN: the counter alone is reset
            if new:
                raise WrongLength("this RESET RETRY COUNTER takes no new PIN")
            self.data.restore_tries(Reference.PIN)
        else:
            self._check_new_pin(new)
            self.data.set_secret(Reference.PIN, new, by_admin=how == "admin")
        # Nobody who was verified under the old PIN keeps that; the administrator logs out.
        self._epoch += 1
        session.sync(self._epoch)
        session.log_out()
        log.info("PIN unblocked with the %s", "administrator key" if how == "admin" else "PUK")
        if how == "admin":  # with the PUK: told by the command and its status word (the store's)
            self.events("unblock", {})
        return b""

    # -- MANAGE SECURITY ENVIRONMENT, PERFORM SECURITY OPERATION ----------------------

    @command(INS_MSE)
    def manage_security_environment(self, apdu: CommandApdu, session: Session) -> bytes:
        if apdu.p1 == MSE_RESTORE:
            session.environment = None
            return b""
        if apdu.p1 not in (MSE_COMPUTE, MSE_VERIFY, MSE_BOTH):
            raise IncorrectParameters(f"MANAGE SECURITY ENVIRONMENT P1 {apdu.p1:02X}")
        if apdu.p2 not in (CRT_AUTHENTICATION, CRT_SIGNATURE, CRT_CONFIDENTIALITY):
            raise IncorrectParameters(f"control reference template {apdu.p2:02X}")
        session.environment = None
        items = parse_dict(apdu.data)
        ref_tag = TAG_KEY_REF if TAG_KEY_REF in items else TAG_KEY_REF_PRIVATE
        key_ref = _byte(items, ref_tag, "key reference")
        algorithm = _byte(items, TAG_ALGORITHM, "algorithm") if TAG_ALGORITHM in items else None
        if apdu.p2 != CRT_AUTHENTICATION and algorithm is None:
            raise InvalidData("signature and decipherment need an algorithm reference (80)")
        file = self._key_file(key_ref)
        if not file.allows(apdu.p2, algorithm):
            raise InvalidData(f"key {key_ref:02X} is not for {apdu.p2:02X}/{algorithm}")
        self._require(file.rules.condition(KeyOp.USE), session, f"key {key_ref:02X}")
        session.environment = Environment(apdu.p2, algorithm, key_ref)
        return b""

    def _environment_key(self, crt: int, session: Session) -> tuple[Environment, GidsFile]:
        """The key MSE set for ``crt``, its condition met now (the PIN may have gone since)."""
        env = session.environment
        if env is None or env.crt != crt:
            raise ConditionsNotSatisfied("no security environment set for this operation")
        file = self.data.files.get(key_fid(env.key_ref))
        if file is None or not file.allows(env.crt, env.algorithm):
            raise ConditionsNotSatisfied(f"key {env.key_ref:02X} is gone")
        self._require(file.rules.condition(KeyOp.USE), session, f"key {env.key_ref:02X}")
        return env, file

    @command(INS_PSO)
    def perform_security_operation(self, apdu: CommandApdu, session: Session) -> bytes:
        op = (apdu.p1, apdu.p2)
        if op not in (PSO_SIGN, PSO_DECIPHER):
            raise IncorrectParameters(f"PERFORM SECURITY OPERATION {apdu.p1:02X}{apdu.p2:02X}")
        self._require_operational("PERFORM SECURITY OPERATION")
        crt = CRT_SIGNATURE if op == PSO_SIGN else CRT_CONFIDENTIALITY
        env, file = self._environment_key(crt, session)
        info = self.keys.get(env.key_ref)
        if info is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND, f"no key in {file.fid:04X}")
        algorithm = env.algorithm or 0
        if KEY_TYPES.get(algorithm & 0x0F) is not info.key_type:
            raise ConditionsNotSatisfied(f"key {env.key_ref:02X} is not {algorithm:02X}")
        if not apdu.data:
            raise WrongLength("no input")
        if op == PSO_SIGN:
            return self._sign(env.key_ref, info.key_type, algorithm & 0xF0, apdu.data)
        return self._decipher(env.key_ref, info.key_type, algorithm & 0xF0, apdu.data)

    def _sign(self, key_ref: int, key_type: KeyType, padding: int, data: bytes) -> bytes:
        if key_type.is_ec:
            size = key_type.bit_len // 8
            return _plain_ecdsa(self.keys.sign(key_ref, data, key_type=key_type), size)
        k = key_type.bit_len // 8
        if padding in (Algorithm.PKCS1, Algorithm.SIGN_PKCS1):
            block = pkcs1_type1(data, k)
        elif padding in (Algorithm.RAW, Algorithm.SIGN_RAW):
            block = data
        else:
            raise InvalidData(f"signature padding {padding:02X} is not supported")
        return self.keys.sign(key_ref, block, key_type=key_type)

    def _decipher(self, key_ref: int, key_type: KeyType, padding: int, data: bytes) -> bytes:
        if not key_type.is_rsa:
            raise InvalidData("only RSA keys decipher")
        k = key_type.bit_len // 8
        if len(data) == k + 1 and data[0] == 0x00:
            data = data[1:]  # a padding indicator byte (Windows does not send one)
        if len(data) != k:
            raise WrongLength(f"an RSA-{key_type.bit_len} cryptogram has {k} bytes")
        block = self.keys.sign(key_ref, data, key_type=key_type)
        if padding == Algorithm.PKCS1:
            return pkcs1_type2_decode(block)
        if padding == Algorithm.OAEP:
            return oaep_decode(block)
        if padding == Algorithm.RAW:
            return block
        raise InvalidData(f"decipherment padding {padding:02X} is not supported")

    @command(INS_GENERATE)
    def generate(self, apdu: CommandApdu, session: Session) -> bytes:
        if apdu.p1 or apdu.p2:
            raise IncorrectParameters("GENERATE ASYMMETRIC KEY PAIR P1P2 must be 0000")
        self._require_operational("key generation")
        items = parse_dict(parse_tlv(apdu.data, TAG_GENERATE_TEMPLATE).value)
        key_ref = _byte(items, TAG_KEY_REF, "key reference")
        algorithm = _byte(items, TAG_ALGORITHM, "algorithm")
        file = self._key_file(key_ref)
        if file.symmetric:
            raise InvalidData(f"key {key_ref:02X} is a symmetric key")
        self._require(file.rules.condition(KeyOp.GENERATE), session, "key generation")
        key_type = KEY_TYPES.get(algorithm)
        if key_type is None:
            if algorithm in _UNSUPPORTED_ALGORITHMS:
                raise ApduError(SW.FUNCTION_NOT_SUPPORTED, f"algorithm {algorithm:02X}")
            raise InvalidData(f"unknown algorithm {algorithm:02X}")
        info = self.keys.generate(key_ref, key_type, _pin_policy(file), TouchPolicy.NEVER)
        return encode_public_key(info)

    # -- GENERAL AUTHENTICATE: the administrator key ----------------------------------

    @command(INS_AUTHENTICATE)
    def general_authenticate(self, apdu: CommandApdu, session: Session) -> bytes:
        if apdu.p1 or apdu.p2 not in (0x00, ADMIN_KEY_REF):
            raise IncorrectParameters("GENERAL AUTHENTICATE P1P2 must be 0000")
        if self.personalising:
            raise ApduError(SW.COMMAND_NOT_ALLOWED, "the card is not activated yet")
        env = session.environment
        if env is None or env.crt != CRT_AUTHENTICATION:
            raise ConditionsNotSatisfied("select the administrator key with MSE first")
        file = self.data.files.get(key_fid(env.key_ref))
        key = None if file is None else file.secret
        if key is None:
            raise ConditionsNotSatisfied(f"no key {env.key_ref:02X} to authenticate with")
        items = parse_dict(parse_tlv(apdu.data, TAG_DYN_AUTH).value)
        if set(items) == {TAG_CHALLENGE}:
            return self._issue_challenge(env.key_ref, key, items[TAG_CHALLENGE], session)
        if set(items) == {TAG_RESPONSE}:
            return self._check_answer(env.key_ref, key, items[TAG_RESPONSE], session)
        raise InvalidData("GENERAL AUTHENTICATE takes 7C { 81 } or 7C { 82 }")

    def _issue_challenge(self, key_ref: int, key: bytes, host: bytes, session: Session) -> bytes:
        if not host:  # external authentication: one block to encrypt
            card = secrets.token_bytes(admin_block_size(key))
            session.challenge = AdminChallenge(ChallengeKind.EXTERNAL, key_ref, card, key=key)
        elif len(host) == _MUTUAL_RANDOM:
            card = secrets.token_bytes(_MUTUAL_RANDOM)
            session.challenge = AdminChallenge(ChallengeKind.MUTUAL, key_ref, card, host, key)
        else:
            raise InvalidData("the host challenge is empty or 16 bytes")
        return encode_tlv(TAG_DYN_AUTH, encode_tlv(TAG_CHALLENGE, card))

    def _check_answer(self, key_ref: int, key: bytes, answer: bytes, session: Session) -> bytes:
        pending = session.previous_challenge
        session.admin = False
        if pending is None or pending.key_ref != key_ref or pending.key != key:
            raise ConditionsNotSatisfied("no administrator challenge outstanding")
        block = admin_block_size(key)
        left = self._spend_admin_try()  # durable before anything is compared
        if pending.kind is ChallengeKind.EXTERNAL:
            good = len(answer) == block and hmac.compare_digest(
                admin_encrypt(key, pending.card_random), answer
            )
            self._admin_result(good, left)
            session.admin = True
            return b""
        # Mutual: the host sends E(Rcard Rhost Z1 80), the card E(Rhost Rcard Z2 80).
        good = False
        if len(answer) == 2 * _MUTUAL_RANDOM + block:
            plain = admin_decrypt(key, answer)
            expected = pending.card_random + pending.host_random
            good = hmac.compare_digest(plain[: 2 * _MUTUAL_RANDOM], expected) and plain[-1] == 0x80
        self._admin_result(good, left)
        session.admin = True
        z2 = secrets.token_bytes(block - 1) + b"\x80"
        proof = admin_encrypt(key, pending.host_random + pending.card_random + z2)
        return encode_tlv(TAG_DYN_AUTH, encode_tlv(TAG_RESPONSE, proof))

    def _spend_admin_try(self) -> int:
        """Take one administrator try (committed); ``6983`` while the counter is at zero."""
        now = self.wall_clock()
        try:
            return self.data.consume_admin_try(now)
        except ValueError:
            wait = self.data.admin_tries(now)[2]
            log.warning("administrator key blocked for %.0f s more", wait)
            raise ApduError(SW.AUTH_METHOD_BLOCKED, f"admin key blocked for {wait:.0f} s") from None

    def _admin_result(self, good: bool, left: int) -> None:
        """A right answer gives the try back; a wrong one answers ``63Cx``."""
        if not good:
            log.warning("wrong administrator key answer; %d tries left", left)
            self.events("admin-key-refused", {"tries_left": left})
            raise _wrong(left, "administrator key answer")
        self.data.restore_admin_tries()


def _parse_private_key(der: bytes) -> PrivateKey:
    """The key value of a key import: DER RSAPrivateKey (what OpenSC sends) or ECPrivateKey."""
    try:
        key = load_der_private_key(der, None)
    except (TypeError, ValueError):
        raise InvalidData("the key value is not a DER private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InvalidData(f"GIDS holds no {type(key).__name__}")
    return key
