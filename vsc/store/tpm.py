"""The ``tpm`` backend: sealing under a TPM 2.0 storage key, via tpm2-pytss.

Theory of operation
-------------------
Every operation opens its own ESAPI connection to the configured TCTI (never
a default one), gets the storage root key (SRK: the persisted one, see
below, or vsc's own from the standard ECC P-256 template, made once per
process and then loaded from its saved context, made afresh when the TPM no
longer takes that context, e.g. after a restart), starts a salted HMAC
session on it with parameter encryption, does its work and flushes
everything. The SRK is deterministic (same TPM seed, same template, same
key), so nothing stays loaded between operations: a second card process, a
TPM without a resource manager (swtpm has 3 object slots), or the TPM's
owner see no leftovers.

A managed machine's TPM has its owner authorisation set and the SRK
persisted at ``0x81000001`` (TCG's provisioning guidance; Windows does
this): vsc then uses that key and needs no owner authorisation. Without a
persisted key it makes its own from the template, which needs the owner
authorisation when one is set: given once (:meth:`Tpm.persist_srk`), vsc's
key is persisted there and nothing later asks for it. A card records the
name of the key it was sealed under and is always opened under that one.

A sealed blob is a ``TPM2B_PRIVATE`` + ``TPM2B_PUBLIC`` keyed-hash object
under the SRK. Only this TPM can load it. A card records the SRK's name; a
different TPM (or this one after TPM2_Clear) has another SRK, and
:meth:`TpmProtector.open` says so before trying anything.

With ``auth`` the object's authValue is that value and it is DA-protected
(``noDA`` clear): the TPM compares the value and its dictionary-attack logic
counts failures (``TPM_RC_AUTH_FAIL`` → :class:`AuthFailed`,
``TPM_RC_LOCKOUT`` → :class:`LockedOut`). A TPM that cannot be reached, or
goes away mid-command (the socket or device fails), is
:class:`BackendUnavailable`: the operation did not complete, and the next one
connects afresh, so a restarted TPM is picked up without reopening the card. The session's parameter
encryption keeps the authValue, the sealed data and the unsealed result off
the wire in clear.

A process killed between a load and its flush leaves a transient object
behind; without a resource manager the TPM then runs out of slots. On
``TPM_RC_OBJECT_MEMORY`` / ``SESSION_MEMORY`` we flush every transient
object and session once and retry. Use a resource manager (``/dev/tpmrm0``,
tpm2-abrmd) when several programs share a TPM.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .antihammer import AntiHammer, DaParameters, DaStatus
from .errors import (
    AuthFailed,
    BackendError,
    BackendMismatch,
    BackendUnavailable,
    CorruptStore,
    LockedOut,
    NoCounter,
    PcrMismatch,
)
from .protect import BackendInfo, BackendSpec, CounterBank, CounterRef, KeyVault, Protector

# The C library prints every TPM error (each wrong PIN) to stderr unless told not to.
os.environ.setdefault("TSS2_LOG", "all+NONE")

try:
    from tpm2_pytss import (
        ESAPI,
        ESYS_TR,
        TPM2_ALG,
        TPM2_CAP,
        TPM2_CC,
        TPM2_HT,
        TPM2_NT,
        TPM2_PT,
        TPM2_RC,
        TPM2_RH,
        TPM2_SE,
        TPM2_ST,
        TPM2_SU,
        TPM2B_AUTH,
        TPM2B_DATA,
        TPM2B_DIGEST,
        TPM2B_ECC_POINT,
        TPM2B_NV_PUBLIC,
        TPM2B_PRIVATE,
        TPM2B_PUBLIC,
        TPM2B_PUBLIC_KEY_RSA,
        TPM2B_SENSITIVE,
        TPM2B_SENSITIVE_CREATE,
        TPM2B_SENSITIVE_DATA,
        TPMA_NV,
        TPMA_OBJECT,
        TPMA_PERMANENT,
        TPMA_SESSION,
        TPML_PCR_SELECTION,
        TPMS_ECC_POINT,
        TPMS_KEYEDHASH_PARMS,
        TPMS_NV_PUBLIC,
        TPMS_SENSITIVE_CREATE,
        TPMT_KEYEDHASH_SCHEME,
        TPMT_PUBLIC,
        TPMT_PUBLIC_PARMS,
        TPMT_RSA_DECRYPT,
        TPMT_SIG_SCHEME,
        TPMT_SYM_DEF,
        TPMT_SYM_DEF_OBJECT,
        TPMT_TK_HASHCHECK,
        TPMU_PUBLIC_PARMS,
        TSS2_Exception,
    )
    from tpm2_pytss.utils import wrap
except ImportError as e:  # pragma: no cover - depends on the environment
    raise BackendError(
        "the tpm backend needs tpm2-pytss: pip install 'vsc[tpm]' (needs libtss2-dev)"
    ) from e

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_BLOB_VERSION = 1
#: A sealed blob whose policy is PolicyPCR: ``03 | n | n PCR indices | private | public``.
_PCR_BLOB_VERSION = 3
#: TPM2B_SENSITIVE_DATA holds at most MAX_SYM_DATA (128) bytes.
MAX_SEALED_SIZE = 128
_TCTI_LAYER = 10 << 16
_LAYER_MASK = 0xFF << 16

# TCG's storage root key template (ECC NIST P-256, AES-128-CFB, restricted decrypt).
_SRK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
)
_SEALED_ATTRIBUTES = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.USERWITHAUTH


#: Keys made in the TPM: never leave it (fixedTPM, fixedParent), generated inside it
#: (sensitiveDataOrigin), one key for both raw RSA / ECDSA and decryption / ECDH
#: (sign and decrypt, no scheme fixed), usable with its authValue (userWithAuth).
_KEY_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.DECRYPT
)
#: Keys wrapped into the TPM (TPM2_Import): the TPM refuses fixedTPM and fixedParent
#: on them, but TPM2_Duplicate needs a policy session satisfying the key's authPolicy,
#: and theirs is empty (no policy matches it): they cannot leave the TPM either.
_IMPORTED_ATTRIBUTES = TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.DECRYPT
#: The key algorithms the store asks for, as tpm2-pytss templates (no scheme: the card
#: pads RSA blocks itself; the ECDSA hash is chosen per signature).
KEY_ALGORITHMS = {
    "rsa1024": "rsa1024:null:null",
    "rsa2048": "rsa2048:null:null",
    "rsa3072": "rsa3072:null:null",
    "rsa4096": "rsa4096:null:null",
    "eccp256": "ecc256:null:null",
    "eccp384": "ecc384:null:null",
}
_KEY_BLOB_VERSION = 2
#: TPM 2.0 command codes of the key-admin policy (Part 2, TPM_CC).
_CC_OBJECT_CHANGE_AUTH = 0x00000150
_CC_POLICY_SECRET = 0x00000151
_CC_POLICY_COMMAND_CODE = 0x0000016C
_ECDSA_HASHES = {32: TPM2_ALG.SHA256, 48: TPM2_ALG.SHA384}
#: Input the TPM refuses as such (not a TPM failure): an RSA block >= n, a point off the curve.
_BAD_INPUT = (TPM2_RC.VALUE, TPM2_RC.ECC_POINT, TPM2_RC.NO_RESULT, TPM2_RC.SIZE, TPM2_RC.KEY)

#: Rollback counters: NV counters (never decrease; a new one starts above every counter
#: the TPM ever had) read and advanced with their own high-entropy authValue (noDA).
_COUNTER_ATTRIBUTES = (
    TPMA_NV.AUTHWRITE
    | TPMA_NV.AUTHREAD
    | TPMA_NV.NO_DA
    | (TPM2_NT.COUNTER << TPMA_NV.TPM2_NT_SHIFT)
)
#: Handles for them come from the owner's range of the TCG handle registry.
_COUNTER_FIRST = 0x01800000
_COUNTER_RANGE = 0x00400000


def _srk_template() -> Any:
    return TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=_SRK_ATTRIBUTES)


def _sealed_template(da_protected: bool) -> Any:
    attributes = _SEALED_ATTRIBUTES if da_protected else _SEALED_ATTRIBUTES | TPMA_OBJECT.NODA
    scheme = TPMT_KEYEDHASH_SCHEME(scheme=TPM2_ALG.NULL)
    return TPM2B_PUBLIC(
        TPMT_PUBLIC(
            type=TPM2_ALG.KEYEDHASH,
            nameAlg=TPM2_ALG.SHA256,
            objectAttributes=attributes,
            parameters=TPMU_PUBLIC_PARMS(keyedHashDetail=TPMS_KEYEDHASH_PARMS(scheme=scheme)),
        )
    )


@dataclass(frozen=True, slots=True)
class TpmInfo:
    manufacturer: str
    vendor: str
    firmware: str


class _Op:
    """One connection's work: the SRK, a salted session, and every handle to flush."""

    def __init__(self, ctx: Any, tpm: Tpm | None = None) -> None:
        self.ctx = ctx
        self._tpm = tpm
        self._flush: list[Any] = []
        self._srk: Any = None
        self.srk_persisted = False
        self._session: Any = None
        # Set just before a command that checks an authorisation goes out: a TPM lost
        # after that may have compared (and counted) it; one lost before has not.
        self.comparing = False

    @property
    def srk(self) -> Any:
        if self._srk is None:
            self._srk = _storage_key(self)
        return self._srk

    @property
    def session(self) -> Any:
        if self._session is None:
            session = self.ctx.start_auth_session(
                self.srk,
                ESYS_TR.NONE,
                TPM2_SE.HMAC,
                TPMT_SYM_DEF.parse("aes128cfb"),
                TPM2_ALG.SHA256,
            )
            self._session = self.track(session)
            self.ctx.trsess_set_attributes(
                session,
                TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT,
            )
        return self._session

    def track(self, handle: Any) -> Any:
        self._flush.append(handle)
        return handle

    def close(self) -> None:
        for handle in reversed(self._flush):
            with contextlib.suppress(TSS2_Exception):
                self.ctx.flush_context(handle)
        self._flush.clear()


class Tpm:
    """A TPM reached through an explicit TCTI (``swtpm:path=S``, ``device:/dev/tpmrm0``)."""

    def __init__(
        self, tcti: str, *, owner_auth: bytes = b"", srk_name: bytes | None = None
    ) -> None:
        if not tcti or not tcti.strip():
            raise BackendError("no TPM configured: give --tpm TCTI or set VSC_TPM")
        self.tcti = tcti
        #: Needed only to make the storage key when the owner authorisation is set.
        self.owner_auth = owner_auth
        #: The storage key a card was sealed under (None: the persisted one, else vsc's).
        self.wanted_srk = srk_name
        self._supported: dict[str, bool] = {}
        self._srk_context: Any = None

    # -- plumbing ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        try:
            ctx = ESAPI(self.tcti)
        except TSS2_Exception as e:
            raise BackendUnavailable(f"cannot reach the TPM at {self.tcti!r}: {e}") from None
        except (ValueError, RuntimeError, OSError) as e:
            raise BackendError(f"bad TCTI {self.tcti!r}: {e}") from None
        try:
            yield ctx
        finally:
            ctx.close()

    def saved_srk(self, ctx: Any) -> Any:
        """vsc's storage key from the context saved when it was made, or None.

        Loading a context is a fraction of the cost of TPM2_CreatePrimary. The
        TPM refuses a context after a restart, or one it did not save (its
        integrity key differs): the key is then made again (and saved again).
        """
        if self._srk_context is None:
            return None
        try:
            return ctx.context_load(self._srk_context)
        except TSS2_Exception as e:
            if int(e.rc) & _LAYER_MASK:  # the connection or the TSS failed, not the TPM
                raise
            self._srk_context = None
            return None

    def save_srk(self, ctx: Any, handle: Any) -> None:
        with contextlib.suppress(TSS2_Exception):
            self._srk_context = ctx.context_save(handle)

    def run(self, work: Callable[[_Op], _T]) -> _T:
        """Run ``work`` on a fresh connection; TPM errors become store errors."""
        for attempt in (1, 2):
            with self._connect() as ctx:
                op = _Op(ctx, self)
                try:
                    return work(op)
                except TSS2_Exception as e:
                    if attempt == 1 and e.error in (TPM2_RC.OBJECT_MEMORY, TPM2_RC.SESSION_MEMORY):
                        op.close()
                        _flush_leftovers(ctx)
                        continue
                    raise _translate(e, self.tcti, compared=op.comparing) from None
                finally:
                    op.close()
        raise AssertionError("unreachable")

    # -- sealing -------------------------------------------------------------------------

    def srk_name(self) -> bytes:
        return self.storage_key().name

    def storage_key(self) -> StorageKey:
        """The storage key this TPM object seals under, and where it comes from."""

        def work(op: _Op) -> StorageKey:
            name = bytes(op.ctx.tr_get_name(op.srk).marshal())
            public, _, _ = op.ctx.read_public(op.srk)
            return StorageKey(name, op.srk_persisted, _algorithm(public.publicArea))

        return self.run(work)

    def persist_srk(self) -> bool:
        """Persist vsc's storage key at :data:`SRK_HANDLE` (owner authorisation); False if
        a storage key is there already. Something else there is refused, never replaced."""

        def work(op: _Op) -> bool:
            if _persisted_srk(op.ctx) is not None:
                return False
            if _handle_exists(op.ctx, SRK_HANDLE):
                raise BackendError(
                    f"{SRK_HANDLE:#x} holds a key that is not a storage key: vsc will not"
                    " replace it (tpm2_evictcontrol frees the handle)"
                )
            handle = _make_storage_key(op)
            op.ctx.evict_control(ESYS_TR.OWNER, handle, SRK_HANDLE)
            return True

        return self.run(work)

    def seal(self, data: bytes, auth: bytes | None) -> bytes:
        if len(data) > MAX_SEALED_SIZE:
            raise ValueError(f"the TPM seals at most {MAX_SEALED_SIZE} bytes")
        sensitive = TPM2B_SENSITIVE_CREATE(
            TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(auth or b""), data=TPM2B_SENSITIVE_DATA(data))
        )
        template = _sealed_template(da_protected=auth is not None)

        def work(op: _Op) -> bytes:
            private, public, *_ = op.ctx.create(op.srk, sensitive, template, session1=op.session)
            return bytes([_BLOB_VERSION]) + bytes(private.marshal()) + bytes(public.marshal())

        return self.run(work)

    def seal_pcrs(self, data: bytes, pcrs: tuple[int, ...]) -> bytes:
        """Seal ``data`` to the values ``pcrs`` (SHA-256 bank) hold now (PolicyPCR, no auth).

        The object has no authValue use (``userWithAuth`` clear) and is ``noDA``:
        only a policy session in which the TPM found the same PCR values opens it.
        """
        if len(data) > MAX_SEALED_SIZE:
            raise ValueError(f"the TPM seals at most {MAX_SEALED_SIZE} bytes")
        if not pcrs or len(set(pcrs)) != len(pcrs) or not all(0 <= p < 24 for p in pcrs):
            raise ValueError("PCRs are distinct numbers from 0 to 23")
        selection = _pcr_selection(pcrs)
        sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(data)))
        template = _sealed_template(da_protected=False)
        template.publicArea.objectAttributes &= ~TPMA_OBJECT.USERWITHAUTH

        def work(op: _Op) -> bytes:
            trial = op.track(
                op.ctx.start_auth_session(
                    ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, TPMT_SYM_DEF.parse("null"),
                    TPM2_ALG.SHA256,
                )
            )  # fmt: skip
            op.ctx.policy_pcr(trial, TPM2B_DIGEST(), selection)
            template.publicArea.authPolicy = op.ctx.policy_get_digest(trial)
            private, public, *_ = op.ctx.create(op.srk, sensitive, template, session1=op.session)
            head = bytes([_PCR_BLOB_VERSION, len(pcrs), *pcrs])
            return head + bytes(private.marshal()) + bytes(public.marshal())

        return self.run(work)

    def _unseal_pcrs(self, blob: bytes) -> bytes:
        count = blob[1] if len(blob) > 1 else 0
        pcrs = tuple(blob[2 : 2 + count])
        private, public = _parse_blob(bytes([_BLOB_VERSION]) + blob[2 + count :])
        selection = _pcr_selection(pcrs)

        def work(op: _Op) -> bytes:
            handle = op.track(_load(op, private, public))
            policy = op.track(
                op.ctx.start_auth_session(
                    op.srk, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF.parse("aes128cfb"),
                    TPM2_ALG.SHA256,
                )
            )  # fmt: skip
            op.ctx.trsess_set_attributes(
                policy, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT
            )
            try:
                op.ctx.policy_pcr(policy, TPM2B_DIGEST(), selection)
                return bytes(op.ctx.unseal(handle, session1=policy))
            except TSS2_Exception as e:
                if e.error in (TPM2_RC.POLICY_FAIL, TPM2_RC.PCR_CHANGED, TPM2_RC.VALUE):
                    names = ", ".join(str(p) for p in pcrs)
                    raise PcrMismatch(
                        f"the boot state changed: PCR {names} no longer hold the values the"
                        " secret was sealed to"
                    ) from None
                raise

        return self.run(work)

    def unseal(self, blob: bytes, auth: bytes | None) -> bytes:
        if blob[:1] == bytes([_PCR_BLOB_VERSION]):
            return self._unseal_pcrs(blob)
        private, public = _parse_blob(blob)

        def work(op: _Op) -> bytes:
            handle = op.track(_load(op, private, public))
            op.ctx.tr_set_auth(handle, auth or b"")
            op.comparing = auth is not None
            return bytes(op.ctx.unseal(handle, session1=op.session))

        return self.run(work)

    # -- keys that live in the TPM ----------------------------------------------------------

    def supports(self, algorithm: str) -> bool:
        """Whether this TPM makes keys of ``algorithm`` (a name of :data:`KEY_ALGORITHMS`)."""
        known = self._supported.get(algorithm)
        if known is not None:
            return known
        template = KEY_ALGORITHMS.get(algorithm)
        if template is None:
            self._supported[algorithm] = False
            return False
        area = TPM2B_PUBLIC.parse(template, objectAttributes=_KEY_ATTRIBUTES).publicArea

        def work(op: _Op) -> bool:
            try:
                op.ctx.test_parms(TPMT_PUBLIC_PARMS(type=area.type, parameters=area.parameters))
            except TSS2_Exception as e:
                if e.error in (TPM2_RC.VALUE, TPM2_RC.CURVE, TPM2_RC.KEY_SIZE, TPM2_RC.ASYMMETRIC):
                    return False
                raise
            return True

        self._supported[algorithm] = result = self.run(work)
        return result

    def create_key(
        self, algorithm: str, auth: bytes, *, da: bool, admin_policy: bytes | None = None
    ) -> bytes:
        """A new key generated in the TPM under the SRK; its blob (only this TPM loads it).

        ``da``: the TPM's dictionary-attack logic guards ``auth`` (a PIN-bound key);
        otherwise the key is ``noDA`` (a key anyone with the card may use).
        ``admin_policy``: the key's ADMIN role (ObjectChangeAuth) needs that policy
        (``adminWithPolicy``, see :func:`change_auth_policy`); its USER role stays
        the authValue.
        """
        template = TPM2B_PUBLIC.parse(KEY_ALGORITHMS[algorithm], objectAttributes=_KEY_ATTRIBUTES)
        _set_key_authorisation(template, da, admin_policy)
        sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(auth)))

        def work(op: _Op) -> bytes:
            private, public, *_ = op.ctx.create(op.srk, sensitive, template, session1=op.session)
            return _key_blob(private, public)

        return self.run(work)

    def import_key(
        self, private_der: bytes, auth: bytes, *, da: bool, admin_policy: bytes | None = None
    ) -> bytes:
        """Wrap a key made elsewhere (PKCS#8 DER) into the TPM (TPM2_Import); its blob.

        The key is encrypted to the SRK's public key here (the duplication
        format's outer wrapper, a fresh seed per key) and decrypted only inside
        the TPM, which returns it wrapped under its own storage key.
        ``da`` and ``admin_policy`` as for :meth:`create_key`. TPM2_Duplicate
        needs a policy session whose command is Duplicate: the admin policy
        names ObjectChangeAuth, so it does not open duplication either.
        """
        try:
            public = TPM2B_PUBLIC(
                TPMT_PUBLIC.from_pem(private_der, objectAttributes=_IMPORTED_ATTRIBUTES)
            )
            sensitive = TPM2B_SENSITIVE.from_pem(private_der)
        except (ValueError, TypeError) as e:
            raise ValueError(f"the TPM cannot hold this key: {e}") from None
        _set_key_authorisation(public, da, admin_policy)
        sensitive.sensitiveArea.authValue = TPM2B_AUTH(auth)
        no_inner = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL)

        def work(op: _Op) -> bytes:
            srk_public, *_ = op.ctx.read_public(op.srk)
            key, duplicate, seed = wrap(srk_public.publicArea, public, sensitive, b"", no_inner)
            private = op.ctx.import_(
                op.srk, key, public, duplicate, seed, no_inner, session1=op.session
            )
            return _key_blob(private, public)

        return self.run(work)

    def create_admin_entity(self, auth: bytes) -> bytes:
        """A small sealed object whose authValue is ``auth`` (``noDA``: a random value, never
        guessed); its blob. Keys made with :func:`change_auth_policy` of its name let
        whoever proves ``auth`` change their authValue (ObjectChangeAuth), nothing else."""
        sensitive = TPM2B_SENSITIVE_CREATE(
            TPMS_SENSITIVE_CREATE(
                userAuth=TPM2B_AUTH(auth), data=TPM2B_SENSITIVE_DATA(secrets.token_bytes(16))
            )
        )
        template = _sealed_template(da_protected=False)

        def work(op: _Op) -> bytes:
            private, public, *_ = op.ctx.create(op.srk, sensitive, template, session1=op.session)
            return bytes([_BLOB_VERSION]) + bytes(private.marshal()) + bytes(public.marshal())

        return self.run(work)

    def change_key_auth(
        self, blob: bytes, new_auth: bytes, entity_blob: bytes, entity_auth: bytes
    ) -> bytes:
        """The key of ``blob`` with authValue ``new_auth`` (TPM2_ObjectChangeAuth in a policy
        session: PolicyCommandCode, then PolicySecret on the entity with ``entity_auth``);
        its new blob. The old blob still loads with the old value: destroy it."""
        private, public = _parse_blob(blob, _KEY_BLOB_VERSION)
        entity_private, entity_public = _parse_blob(entity_blob)

        def work(op: _Op) -> bytes:
            entity = op.track(_load(op, entity_private, entity_public))
            op.ctx.tr_set_auth(entity, entity_auth)
            key = op.track(_load(op, private, public))
            policy = op.track(
                op.ctx.start_auth_session(
                    ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF.parse("null"),
                    TPM2_ALG.SHA256,
                )
            )  # fmt: skip
            op.ctx.trsess_set_attributes(policy, TPMA_SESSION.CONTINUESESSION)
            op.ctx.policy_command_code(policy, TPM2_CC.ObjectChangeAuth)
            op.ctx.policy_secret(entity, policy, session1=op.session)
            # The new authValue goes to the TPM encrypted by the salted HMAC session (as
            # an extra, decrypt-only session); the entity's value never leaves this process.
            new_private = op.ctx.object_change_auth(
                key, op.srk, TPM2B_AUTH(new_auth), session1=policy, session2=op.session
            )
            return _key_blob(new_private, public)

        return self.run(work)

    def _use_key(self, blob: bytes, auth: bytes, command: Callable[[_Op, Any], _T]) -> _T:
        private, public = _parse_blob(blob, _KEY_BLOB_VERSION)
        da = not public.publicArea.objectAttributes & TPMA_OBJECT.NODA

        def work(op: _Op) -> _T:
            handle = op.track(_load(op, private, public))
            op.ctx.tr_set_auth(handle, auth)
            op.comparing = bool(da)
            try:
                return command(op, handle)
            except TSS2_Exception as e:
                if e.error in _BAD_INPUT:
                    raise ValueError(f"the TPM refused the input: {e}") from None
                raise

        return self.run(work)

    def rsa_private(self, blob: bytes, auth: bytes, block: bytes) -> bytes:
        """The raw RSA private op on ``block`` (k bytes, < n): TPM2_RSA_Decrypt, no scheme."""
        size = len(block)

        def command(op: _Op, key: Any) -> bytes:
            result = op.ctx.rsa_decrypt(
                key,
                TPM2B_PUBLIC_KEY_RSA(block),
                TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL),
                TPM2B_DATA(),
                session1=op.session,
            )
            return bytes(result).rjust(size, b"\0")

        return self._use_key(blob, auth, command)

    def ecdsa(self, blob: bytes, auth: bytes, digest: bytes) -> tuple[int, int]:
        """ECDSA (r, s) over ``digest`` (32 or 48 bytes): TPM2_Sign with an unrestricted key."""
        hash_alg = _ECDSA_HASHES.get(len(digest))
        if hash_alg is None:
            raise ValueError("an ECDSA digest has 32 or 48 bytes")
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = hash_alg
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)

        def command(op: _Op, key: Any) -> tuple[int, int]:
            # Keep the whole answer referenced while reading it: its parts point into it.
            signature = op.ctx.sign(key, TPM2B_DIGEST(digest), scheme, ticket, session1=op.session)
            ecdsa = signature.signature.ecdsa
            return (
                int.from_bytes(bytes(ecdsa.signatureR), "big"),
                int.from_bytes(bytes(ecdsa.signatureS), "big"),
            )

        return self._use_key(blob, auth, command)

    def ecdh(self, blob: bytes, auth: bytes, x: bytes, y: bytes) -> bytes:
        """The X coordinate of d·P for the peer point (x, y): TPM2_ECDH_ZGen."""
        point = TPM2B_ECC_POINT(TPMS_ECC_POINT(x=x, y=y))

        def command(op: _Op, key: Any) -> bytes:
            shared = op.ctx.ecdh_zgen(key, point, session1=op.session)
            x_shared = bytes(shared.point.x)
            return x_shared.rjust(len(x), b"\0")

        return self._use_key(blob, auth, command)

    # -- monotonic counters (NV counter indices) --------------------------------------------

    def free_counter_handle(self) -> CounterRef:
        """A handle of the owner range with no NV index now, for :meth:`define_counter`."""

        def work(op: _Op) -> CounterRef:
            for _ in range(16):
                handle = _COUNTER_FIRST + secrets.randbelow(_COUNTER_RANGE)
                if not _handle_exists(op.ctx, handle):
                    return CounterRef(handle)
            raise BackendError("no free NV handle found for a rollback counter")

        return self.run(work)

    def define_counter(self, ref: CounterRef, auth: bytes, owner_auth: bytes) -> int:
        """Define the NV counter ``ref``, increment it once: its value."""
        try:
            result = self._define_counter_at(ref.handle, auth, owner_auth)
        except AuthFailed:
            raise NoCounter(
                "the TPM's owner authorisation is set and a new card's rollback counter (an"
                " NV index) needs it: vsc create with --owner-auth-file PATH,"
                " --owner-auth-prompt or VSC_OWNER_AUTH"
                + (" (the one given was refused)" if owner_auth else "")
            ) from None
        if result is None:
            raise BackendError(f"the TPM's NV handle {ref.handle:#010x} was taken meanwhile")
        return result[1]

    def _define_counter_at(
        self, handle: int, auth: bytes, owner_auth: bytes
    ) -> tuple[CounterRef, int] | None:
        public = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=handle, nameAlg=TPM2_ALG.SHA256, attributes=_COUNTER_ATTRIBUTES, dataSize=8
            )
        )

        def work(op: _Op) -> tuple[CounterRef, int] | None:
            op.ctx.tr_set_auth(ESYS_TR.OWNER, owner_auth)
            try:
                index = op.ctx.nv_define_space(TPM2B_AUTH(auth), public, session1=op.session)
            except TSS2_Exception as e:
                if e.error == TPM2_RC.NV_DEFINED:
                    return None  # taken: try another handle
                raise
            op.ctx.tr_set_auth(index, auth)
            op.ctx.nv_increment(index, session1=op.session)  # a counter reads once written
            return CounterRef(handle), _read_counter(op, index)

        return self.run(work)

    def _counter(self, op: _Op, ref: CounterRef, auth: bytes, *, check: bool = True) -> Any:
        try:
            index = op.ctx.tr_from_tpmpublic(ref.handle)
        except TSS2_Exception as e:
            if e.error == TPM2_RC.HANDLE:
                raise CorruptStore(
                    f"its rollback counter {ref.handle:#010x} is gone from the TPM"
                ) from None
            raise
        # Whoever redefines the index cannot make it go back as long as it is a counter:
        # a new counter starts above every value a counter of this TPM ever had. (Only
        # a counter can be incremented: TPM2_NV_Increment checks that itself.)
        if check and _nv_type(op, index) != TPM2_NT.COUNTER:
            raise CorruptStore(
                f"the TPM's NV index {ref.handle:#010x} is not the card's rollback counter"
            )
        op.ctx.tr_set_auth(index, auth)
        return index

    def read_counter(self, ref: CounterRef, auth: bytes) -> int:
        return self.run(lambda op: _read_counter(op, self._counter(op, ref, auth)))

    def increment_counter(self, ref: CounterRef, auth: bytes) -> None:
        # The hot path (once per PIN try): an HMAC session keyed by the counter's own
        # authValue keeps that off the wire; the command has no parameter to encrypt,
        # so no salted session (and no SRK) is needed.
        def work(op: _Op) -> None:
            index = self._counter(op, ref, auth, check=False)
            session = op.track(
                op.ctx.start_auth_session(
                    ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC, TPMT_SYM_DEF.parse("null"),
                    TPM2_ALG.SHA256,
                )
            )  # fmt: skip
            op.ctx.nv_increment(index, session1=session)

        self.run(work)

    def undefine_counter(
        self, ref: CounterRef, owner_auth: bytes, auth: bytes | None = None
    ) -> bool:
        """Free the counter ``ref``. With ``auth``, only if that is its authValue (the handle
        an interrupted creation recorded may be free, or another card's): whether it was."""

        def work(op: _Op) -> bool:
            if auth is not None:
                if not _handle_exists(op.ctx, ref.handle):
                    return False
                index = op.ctx.tr_from_tpmpublic(ref.handle)
                op.ctx.tr_set_auth(index, auth)
                try:
                    _read_counter(op, index)
                except TSS2_Exception as e:
                    if e.error in (TPM2_RC.BAD_AUTH, TPM2_RC.AUTH_FAIL):
                        return False  # not this card's: its authValue differs (noDA)
                    if e.error != TPM2_RC.NV_UNINITIALIZED:  # defined, never incremented
                        raise
            else:
                index = self._counter(op, ref, b"")
            op.ctx.tr_set_auth(ESYS_TR.OWNER, owner_auth)
            op.ctx.nv_undefine_space(index, session1=op.session)
            return True

        return self.run(work)

    # -- information and dictionary-attack logic ------------------------------------------

    def properties(self, first: int, count: int) -> dict[int, int]:
        def work(op: _Op) -> dict[int, int]:
            _, data = op.ctx.get_capability(TPM2_CAP.TPM_PROPERTIES, first, count)
            return {int(p.property): int(p.value) for p in data.data.tpmProperties}

        return self.run(work)

    def info(self) -> TpmInfo:
        fixed = self.properties(int(TPM2_PT.FIXED), 64)
        base = int(TPM2_PT.FIXED)
        vendor = b"".join(fixed.get(base + i, 0).to_bytes(4, "big") for i in range(6, 10))
        return TpmInfo(
            manufacturer=_fourcc(fixed.get(int(TPM2_PT.MANUFACTURER), 0)),
            vendor=vendor.rstrip(b"\0").decode("ascii", "replace").strip(),
            firmware=f"{fixed.get(base + 11, 0):08x}.{fixed.get(base + 12, 0):08x}",
        )

    def da_status(self) -> DaStatus:
        var = self.properties(int(TPM2_PT.VAR), 64)
        permanent = var.get(int(TPM2_PT.PERMANENT), 0)
        return DaStatus(
            parameters=DaParameters(
                var.get(int(TPM2_PT.MAX_AUTH_FAIL), 0),
                var.get(int(TPM2_PT.LOCKOUT_INTERVAL), 0),
                var.get(int(TPM2_PT.LOCKOUT_RECOVERY), 0),
            ),
            failed_tries=var.get(int(TPM2_PT.LOCKOUT_COUNTER), 0),
            locked_out=bool(permanent & TPMA_PERMANENT.INLOCKOUT),
            lockout_auth_available=None,  # a TPM does not report it
            enforced_by="tpm",
        )

    def _with_lockout(self, lockout_auth: bytes, command: Callable[[_Op], None]) -> None:
        def work(op: _Op) -> None:
            op.ctx.tr_set_auth(ESYS_TR.LOCKOUT, lockout_auth)
            command(op)

        try:
            self.run(work)
        except AuthFailed:
            raise AuthFailed("wrong lockout authorisation") from None
        except LockedOut:
            raise LockedOut("the TPM's lockout authorisation is blocked for now") from None

    def set_da_parameters(self, params: DaParameters, lockout_auth: bytes) -> None:
        self._with_lockout(
            lockout_auth,
            lambda op: op.ctx.dictionary_attack_parameters(
                params.max_tries,
                params.recovery_time,
                params.lockout_recovery,
                session1=op.session,
            ),
        )

    def da_reset(self, lockout_auth: bytes) -> None:
        self._with_lockout(
            lockout_auth, lambda op: op.ctx.dictionary_attack_lock_reset(session1=op.session)
        )

    def change_lockout_auth(self, current: bytes, new: bytes) -> None:
        self._with_lockout(
            current,
            lambda op: op.ctx.hierarchy_change_auth(
                ESYS_TR.LOCKOUT, TPM2B_AUTH(new), session1=op.session
            ),
        )

    def shutdown(self) -> None:
        """TPM2_Shutdown(CLEAR), for fixtures that stop a simulator (the OS does it otherwise)."""
        self.run(lambda op: op.ctx.shutdown(TPM2_SU.CLEAR))


#: Where a managed machine keeps its storage root key (TCG provisioning guidance).
SRK_HANDLE = 0x81000001
_STORAGE = (
    TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
)


class OwnerAuthNeeded(BackendError):
    """The storage key must be made and the owner authorisation is set (and not given)."""


@dataclass(frozen=True, slots=True)
class StorageKey:
    """The key cards are sealed under: its name, whether persisted, its algorithm."""

    name: bytes
    persisted: bool
    algorithm: str

    def describe(self) -> str:
        where = f"persisted at {SRK_HANDLE:#x}" if self.persisted else "made from vsc's template"
        return f"{self.algorithm}, {where}"


def _algorithm(area: Any) -> str:
    if area.type == TPM2_ALG.RSA:
        return f"RSA-{int(area.parameters.rsaDetail.keyBits)}"
    if area.type == TPM2_ALG.ECC:
        return "ECC " + {3: "P-256", 4: "P-384", 5: "P-521"}.get(
            int(area.parameters.eccDetail.curveID), "curve"
        )
    return "unknown"


def _handle_exists(ctx: Any, handle: int) -> bool:
    _, data = ctx.get_capability(TPM2_CAP.HANDLES, handle, 1)
    return handle in [int(h) for h in data.data.handles]


def _persisted_srk(ctx: Any) -> Any:
    """The storage key at :data:`SRK_HANDLE` (an ESYS_TR, never flushed), or None."""
    if not _handle_exists(ctx, SRK_HANDLE):
        return None
    handle = ctx.tr_from_tpmpublic(SRK_HANDLE)
    public, _, _ = ctx.read_public(handle)
    attributes = public.publicArea.objectAttributes
    if attributes & _STORAGE != _STORAGE or attributes & TPMA_OBJECT.SIGN_ENCRYPT:
        log.warning("%#x holds a key that is not a storage key: not used", SRK_HANDLE)
        ctx.tr_close(handle)
        return None
    return handle


def _make_storage_key(op: _Op) -> Any:
    """vsc's storage key made from the template (tracked), with the owner authorisation."""
    owner_auth = op._tpm.owner_auth if op._tpm is not None else b""
    op.ctx.tr_set_auth(ESYS_TR.OWNER, owner_auth)
    try:
        return op.track(op.ctx.create_primary(None, _srk_template())[0])
    except TSS2_Exception as e:
        if e.error not in (TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH):
            raise
    if owner_auth:
        raise OwnerAuthNeeded("wrong owner authorisation: the TPM refused it") from None
    raise OwnerAuthNeeded(
        f"the TPM's owner authorisation is set and no storage key is persisted at"
        f" {SRK_HANDLE:#x}: give the owner authorisation once (vsc tpm prepare with"
        " --owner-auth-file PATH, --owner-auth-prompt or VSC_OWNER_AUTH) and vsc persists its"
        " storage key there; or persist one yourself (tpm2_createprimary -C o, then"
        f" tpm2_evictcontrol -C o ... {SRK_HANDLE:#x})"
    ) from None


def _storage_key(op: _Op) -> Any:
    """The persisted storage key when there is one (and it is the one wanted), else vsc's
    (its saved context when this process made it before)."""
    tpm = op._tpm
    saved = tpm.saved_srk(op.ctx) if tpm is not None else None
    if saved is not None:
        return op.track(saved)
    wanted = tpm.wanted_srk if tpm is not None else None
    persisted = _persisted_srk(op.ctx)
    if persisted is not None:
        if wanted is None or bytes(op.ctx.tr_get_name(persisted).marshal()) == wanted:
            op.srk_persisted = True
            return persisted
        op.ctx.tr_close(persisted)
    handle = _make_storage_key(op)
    if tpm is not None:
        tpm.save_srk(op.ctx, handle)
    return handle


def _nv_type(op: _Op, index: Any) -> int:
    public, _ = op.ctx.nv_read_public(index)
    attributes = int(public.nvPublic.attributes)
    return (attributes & int(TPMA_NV.TPM2_NT_MASK)) >> int(TPMA_NV.TPM2_NT_SHIFT)


def _pcr_selection(pcrs: tuple[int, ...]) -> Any:
    return TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(p) for p in sorted(pcrs)))


def _read_counter(op: _Op, index: Any) -> int:
    return int.from_bytes(bytes(op.ctx.nv_read(index, 8, session1=op.session)), "big")


def _fourcc(value: int) -> str:
    return value.to_bytes(4, "big").rstrip(b"\0").decode("ascii", "replace").strip()


def _key_blob(private: Any, public: Any) -> bytes:
    return bytes([_KEY_BLOB_VERSION]) + bytes(private.marshal()) + bytes(public.marshal())


def _set_key_authorisation(template: Any, da: bool, admin_policy: bytes | None) -> None:
    area = template.publicArea
    if not da:
        area.objectAttributes |= TPMA_OBJECT.NODA
    if admin_policy is not None:
        area.objectAttributes |= TPMA_OBJECT.ADMINWITHPOLICY
        area.authPolicy = TPM2B_DIGEST(admin_policy)


def object_name(blob: bytes) -> bytes:
    """The TPM name (nameAlg ‖ digest of the public area) of a sealed object's blob."""
    _, public = _parse_blob(blob)
    return bytes(public.get_name())


def change_auth_policy(entity_name: bytes) -> bytes:
    """The policy digest PolicyCommandCode(ObjectChangeAuth) ; PolicySecret(entity, no
    policyRef), computed as the TPM's PolicyUpdate does (TPM 2.0 Part 3, 23.2.3)."""
    digest = bytes(32)
    cc = _CC_POLICY_COMMAND_CODE.to_bytes(4, "big") + _CC_OBJECT_CHANGE_AUTH.to_bytes(4, "big")
    digest = hashlib.sha256(digest + cc).digest()
    digest = hashlib.sha256(digest + _CC_POLICY_SECRET.to_bytes(4, "big") + entity_name).digest()
    return hashlib.sha256(digest).digest()  # the empty policyRef


def key_authorisation(blob: bytes) -> tuple[bool, bytes | None]:
    """(DA-protected, the admin policy or None) of a key blob, read from its public area."""
    _, public = _parse_blob(blob, _KEY_BLOB_VERSION)
    area = public.publicArea
    da = not area.objectAttributes & TPMA_OBJECT.NODA
    with_policy = bool(area.objectAttributes & TPMA_OBJECT.ADMINWITHPOLICY)
    return da, bytes(area.authPolicy) if with_policy else None


def key_public_der(blob: bytes) -> bytes:
    """The public key (SubjectPublicKeyInfo DER) of a key blob, read from its public area."""
    _, public = _parse_blob(blob, _KEY_BLOB_VERSION)
    try:
        der: bytes = public.publicArea.to_der()
    except (ValueError, TypeError) as e:
        raise CorruptStore(f"malformed TPM key: {e}") from None
    return der


def _load(op: _Op, private: Any, public: Any) -> Any:
    try:
        return op.ctx.load(op.srk, private, public, session1=op.session)
    except TSS2_Exception as e:
        if e.error in (TPM2_RC.INTEGRITY, TPM2_RC.BINDING, TPM2_RC.SIZE):
            raise BackendMismatch("this blob was not sealed by this TPM") from None
        raise


def _parse_blob(blob: bytes, version: int = _BLOB_VERSION) -> tuple[Any, Any]:
    if not blob or blob[0] != version:
        raise BackendMismatch("not a blob of the tpm backend")
    try:
        private, used = TPM2B_PRIVATE.unmarshal(blob[1:])
        public, used2 = TPM2B_PUBLIC.unmarshal(blob[1 + used :])
    except (TSS2_Exception, ValueError, TypeError) as e:
        raise CorruptStore(f"malformed TPM blob: {e}") from None
    if 1 + used + used2 != len(blob):
        raise CorruptStore("malformed TPM blob: trailing bytes")
    return private, public


def _translate(e: Any, tcti: str, *, compared: bool = False) -> Exception:
    if e.error in (TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH):
        return AuthFailed("wrong authorisation (checked by the TPM)")
    if e.error == TPM2_RC.LOCKOUT:
        return LockedOut("the TPM is in dictionary-attack lockout")
    if int(e.rc) & _LAYER_MASK == _TCTI_LAYER:
        return BackendUnavailable(f"lost the TPM at {tcti!r}: {e}", compared=compared)
    return BackendError(f"TPM error: {e}")


def _flush_leftovers(ctx: Any) -> None:
    """Flush transient objects and sessions left by killed processes (no resource manager)."""
    log.warning("TPM out of object or session slots: flushing leftovers of killed processes")
    for kind in (TPM2_HT.TRANSIENT, TPM2_HT.HMAC_SESSION, TPM2_HT.POLICY_SESSION):
        with contextlib.suppress(TSS2_Exception):
            _, data = ctx.get_capability(TPM2_CAP.HANDLES, int(kind) << 24, 64)
            for handle in data.data.handles:
                with contextlib.suppress(TSS2_Exception):
                    tr = ctx.tr_from_tpmpublic(int(handle))
                    ctx.flush_context(tr)


class TpmProtector(Protector):
    kind = "tpm"

    def __init__(
        self,
        tpm: Tpm,
        srk: StorageKey,
        info: TpmInfo,
        lockout_auth: bytes,
        owner_auth: bytes = b"",
    ) -> None:
        self.tpm = tpm
        self._srk = srk
        self._info = info
        self._lockout_auth = lockout_auth
        self._owner_auth = owner_auth

    @classmethod
    def open(cls, spec: BackendSpec, identity: Mapping[str, str] | None) -> TpmProtector:
        assert spec.tcti is not None
        wanted = identity.get("srk_name") if identity is not None else None
        tpm = Tpm(
            spec.tcti,
            owner_auth=spec.owner_auth,
            srk_name=bytes.fromhex(wanted) if wanted else None,
        )
        if identity is None and spec.owner_auth:
            tpm.persist_srk()  # a new card on an owned TPM: nothing later needs the owner auth
        srk = tpm.storage_key()
        if identity is not None and identity.get("srk_name") != srk.name.hex():
            raise BackendMismatch(
                f"the card was sealed by a different TPM than the one at {spec.tcti!r}"
                " (its storage key differs: the store was copied from another machine, or"
                " this TPM was cleared); it cannot be opened here"
            )
        return cls(tpm, srk, tpm.info(), spec.lockout_auth, spec.owner_auth)

    def seal(self, plaintext: bytes, *, auth: bytes | None = None) -> bytes:
        return self.tpm.seal(plaintext, auth)

    def unseal(self, blob: bytes, *, auth: bytes | None = None) -> bytes:
        return self.tpm.unseal(blob, auth)

    def seal_to_pcrs(self, plaintext: bytes, pcrs: tuple[int, ...]) -> bytes:
        return self.tpm.seal_pcrs(plaintext, pcrs)

    def describe(self) -> BackendInfo:
        return BackendInfo(
            kind="tpm",
            summary=(
                f"tpm: TPM 2.0 ({self._info.manufacturer} {self._info.vendor},"
                f" firmware {self._info.firmware}) via {self.tpm.tcti}"
            ),
            hardware_bound=True,
            hardware_anti_hammering=True,
            offline_guessing=False,
            weaknesses=(
                "a program running as the card's user with this TPM can unseal the card key"
                " (no PIN needed): it reads the card's unbound records and can rewrite its files",
                "cards made before TPM-resident keys keep their software keys and have no"
                " rollback counter",
            ),
        )

    def identity(self) -> dict[str, str]:
        srk = f"persistent-{SRK_HANDLE:#x}" if self._srk.persisted else "ecc-p256-tcg"
        return {"kind": "tpm", "srk": srk, "srk_name": self._srk.name.hex()}

    def anti_hammer(self) -> AntiHammer:
        return TpmAntiHammer(self.tpm, self._lockout_auth)

    def key_vault(self) -> TpmKeyVault:
        return TpmKeyVault(self.tpm)

    def counter_bank(self) -> TpmCounterBank:
        return TpmCounterBank(self.tpm, self._owner_auth)


class TpmCounterBank(CounterBank):
    """Rollback counters as NV counter indices of this TPM."""

    def __init__(self, tpm: Tpm, owner_auth: bytes) -> None:
        self.tpm = tpm
        self._owner_auth = owner_auth

    def reserve(self) -> CounterRef:
        return self.tpm.free_counter_handle()

    def define(self, ref: CounterRef, auth: bytes) -> int:
        return self.tpm.define_counter(ref, auth, self._owner_auth)

    def read(self, ref: CounterRef, auth: bytes) -> int:
        return self.tpm.read_counter(ref, auth)

    def increment(self, ref: CounterRef, auth: bytes) -> None:
        self.tpm.increment_counter(ref, auth)

    def remove(self, ref: CounterRef, auth: bytes | None = None) -> bool:
        return self.tpm.undefine_counter(ref, self._owner_auth, auth)


class TpmKeyVault(KeyVault):
    """Private keys under this TPM's SRK; every use one salted, encrypted session."""

    def __init__(self, tpm: Tpm) -> None:
        self.tpm = tpm

    def supports(self, algorithm: str) -> bool:
        return self.tpm.supports(algorithm)

    def generate(
        self, algorithm: str, auth: bytes, *, da: bool, admin_policy: bytes | None = None
    ) -> bytes:
        return self.tpm.create_key(algorithm, auth, da=da, admin_policy=admin_policy)

    def import_key(
        self, private_der: bytes, auth: bytes, *, da: bool, admin_policy: bytes | None = None
    ) -> bytes:
        return self.tpm.import_key(private_der, auth, da=da, admin_policy=admin_policy)

    def create_admin_entity(self, auth: bytes) -> bytes:
        return self.tpm.create_admin_entity(auth)

    def admin_policy(self, entity_blob: bytes) -> bytes:
        return change_auth_policy(object_name(entity_blob))

    def change_auth(
        self, blob: bytes, new_auth: bytes, entity_blob: bytes, entity_auth: bytes
    ) -> bytes:
        return self.tpm.change_key_auth(blob, new_auth, entity_blob, entity_auth)

    def authorisation(self, blob: bytes) -> tuple[bool, bytes | None]:
        return key_authorisation(blob)

    def public_key(self, blob: bytes) -> bytes:
        return key_public_der(blob)

    def rsa_private(self, blob: bytes, auth: bytes, block: bytes) -> bytes:
        return self.tpm.rsa_private(blob, auth, block)

    def ecdsa(self, blob: bytes, auth: bytes, digest: bytes) -> tuple[int, int]:
        return self.tpm.ecdsa(blob, auth, digest)

    def ecdh(self, blob: bytes, auth: bytes, x: bytes, y: bytes) -> bytes:
        return self.tpm.ecdh(blob, auth, x, y)


class TpmAntiHammer(AntiHammer):
    """The TPM's own dictionary-attack state: read, set, reset; the TPM enforces it."""

    enforced_by = "tpm"

    def __init__(self, tpm: Tpm, default_lockout_auth: bytes = b"") -> None:
        self.tpm = tpm
        self._default = default_lockout_auth

    def status(self) -> DaStatus:
        return self.tpm.da_status()

    def set_parameters(self, params: DaParameters, *, lockout_auth: bytes | None = None) -> None:
        self.tpm.set_da_parameters(params, self._default if lockout_auth is None else lockout_auth)

    def reset(self, *, lockout_auth: bytes | None = None) -> None:
        self.tpm.da_reset(self._default if lockout_auth is None else lockout_auth)
