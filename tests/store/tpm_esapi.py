"""A TPM key blob of a card, used through tpm2-pytss' ESAPI directly (not vsc's TPM layer).

Tests load a blob from a card's records under the storage root key and ask
the TPM for one private operation with a given authValue: what the TPM says
is what the key's authorisation is, independently of how vsc uses it.
"""

from __future__ import annotations

import hashlib

from tpm2_pytss import (
    ESAPI,
    TPM2_ALG,
    TPM2_RH,
    TPM2_ST,
    TPM2B_DATA,
    TPM2B_DIGEST,
    TPM2B_PUBLIC_KEY_RSA,
    TPMT_RSA_DECRYPT,
    TPMT_SIG_SCHEME,
    TPMT_TK_HASHCHECK,
    TSS2_Exception,
)

from vsc.store import StoredCard
from vsc.store.tpm import _parse_blob, _srk_template

DIGEST = hashlib.sha256(b"signed with the PIN's authValue").digest()


def pin_derived_auth(stored: StoredCard, binding: str, pin: bytes) -> bytes:
    """The authValue a card derives from ``pin`` for ``binding``'s keys, computed here."""
    salt = stored._salt + stored.card_id
    return stored.protector.derive_auth(salt, f"{binding}\0key\0pin".encode(), pin)


def key_use(tcti: str, blob: bytes, auth: bytes) -> int:
    """Load ``blob`` under the SRK and use it once with ``auth`` (password session): ECDSA
    (TPM2_Sign) or raw RSA (TPM2_RSA_Decrypt, no scheme). 0, or the TPM's error code."""
    private, public = _parse_blob(blob, 2)
    ctx = ESAPI(tcti)
    handles = []
    try:
        srk = ctx.create_primary(None, _srk_template())[0]
        handles.append(srk)
        key = ctx.load(srk, private, public)
        handles.append(key)
        ctx.tr_set_auth(key, auth)
        try:
            if public.publicArea.type == TPM2_ALG.RSA:
                block = b"\x00\x01" + b"\x02" * (
                    int(public.publicArea.parameters.rsaDetail.keyBits) // 8 - 2
                )
                ctx.rsa_decrypt(
                    key,
                    TPM2B_PUBLIC_KEY_RSA(block),
                    TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL),
                    TPM2B_DATA(),
                )
            else:
                scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
                scheme.details.any.hashAlg = TPM2_ALG.SHA256
                ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
                ctx.sign(key, TPM2B_DIGEST(DIGEST), scheme, ticket)
        except TSS2_Exception as e:
            return int(e.error)
        return 0
    finally:
        for handle in reversed(handles):
            ctx.flush_context(handle)
        ctx.close()
