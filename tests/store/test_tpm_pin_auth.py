"""The PIN is the TPM key's authorisation: PIN-derived authValues, the key-admin entity.

A PIV card on a real swtpm, driven in-process by yubikit. What the TPM holds
is checked with tpm2-pytss' ESAPI directly (not through vsc's TPM layer): a
key blob from the card's records is loaded under the storage key and asked
to sign with exactly the PIN-derived authValue, and with other values, whose
failure the TPM's dictionary-attack counter counts.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from yubikit.core.smartcard import ApduError
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, PIN_POLICY, SLOT

from .conftest import require_swtpm

require_swtpm()  # before importing the tpm backend, which needs tpm2-pytss

from applets.gids.host import authenticate_mutual  # noqa: E402
from applets.piv.keys import KeyInfo, KeyType, Origin, PinPolicy, TouchPolicy  # noqa: E402
from vsc.apdu import CommandApdu  # noqa: E402
from vsc.lifecycle import CardManager  # noqa: E402
from vsc.store import (  # noqa: E402
    AuthFailed,
    BackendSpec,
    CardStore,
    StoredCard,
    bound,
)
from vsc.store.piv import BINDING, _encode_info  # noqa: E402
from vsc.store.tpm import Tpm, TpmKeyVault, _parse_blob  # noqa: E402
from vsc.store.tpmkeys import MAGIC, KeyAuth, KeyRecord, decode_record  # noqa: E402
from vsc.testing.swtpm import Swtpm  # noqa: E402

from .test_piv_store import Piv, open_piv_card  # noqa: E402
from .test_tpm_keys import backend, swtpm_module  # noqa: E402  (fixtures: a swtpm, 32 tries)
from .tpm_esapi import key_use, pin_derived_auth  # noqa: E402

__all__ = ["backend", "swtpm_module"]

PIN, NEW_PIN, PUK, DEFAULT_PIN = "123456", "87654321", "12345678", "123456"
ENTITY, ENTITY_AUTH = "tpm/key-admin/piv", "tpm/key-admin/piv/auth"


@pytest.fixture
def piv(store: CardStore, backend: BackendSpec, swtpm_module: Swtpm) -> Iterator[Piv]:
    card = open_piv_card(store, backend)
    card.session.authenticate(DEFAULT_MANAGEMENT_KEY)
    yield card
    if not card.stored.closed:
        card.close()
    Tpm(swtpm_module.tcti).da_reset(lockout_auth=b"")  # the wrong values tried here


def block(pin: str) -> bytes:
    return pin.encode().ljust(8, b"\xff")


def pin_auth(piv: Piv, pin: str) -> bytes:
    """The authValue the card derives from ``pin`` for its PIV keys, computed here."""
    return pin_derived_auth(piv.stored, BINDING, block(pin))


def record(piv: Piv, slot: int) -> KeyRecord:
    raw = piv.stored.get(f"piv/slot/{slot:02x}/key")
    assert raw is not None
    return decode_record(slot, raw)


def failed_tries(tcti: str) -> int:
    return Tpm(tcti).da_status().failed_tries  # TPM_PT_LOCKOUT_COUNTER


def assert_pin_authorised(piv: Piv, tcti: str, slot: int, pin: str) -> None:
    """``slot``'s key signs with exactly ``pin``'s derived value; another value is a
    failure the TPM counts."""
    rec = record(piv, slot)
    assert rec.auth is KeyAuth.PIN and rec.value is None
    assert key_use(tcti, rec.blob, pin_auth(piv, pin)) == 0
    before = failed_tries(tcti)
    assert key_use(tcti, rec.blob, secrets.token_bytes(32)) != 0
    assert failed_tries(tcti) == before + 1


def sign_checks(piv: Piv, slot: SLOT, public: object) -> None:
    assert isinstance(public, ec.EllipticCurvePublicKey)
    signature = piv.session.sign(slot, KEY_TYPE.ECCP256, b"data", hashes.SHA256())
    public.verify(signature, b"data", ec.ECDSA(hashes.SHA256()))


def policy_of(entity_name: bytes) -> bytes:
    """PolicyCommandCode(ObjectChangeAuth) ; PolicySecret(entity), by TPM 2.0 Part 3's
    PolicyUpdate, written out here independently of vsc's TPM layer."""
    digest = hashlib.sha256(bytes(32) + bytes.fromhex("0000016C00000150")).digest()
    digest = hashlib.sha256(digest + bytes.fromhex("00000151") + entity_name).digest()
    return hashlib.sha256(digest).digest()


def test_a_key_made_before_verify_is_pending_then_pin_derived(
    piv: Piv, swtpm_module: Swtpm
) -> None:
    public = piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    keys = piv.applet.stored_keys
    assert keys.authorisation(0x9A) == "tpm (pending PIN: made before the PIN was verified)"
    piv.session.verify_pin(PIN)  # converts it
    assert keys.authorisation(0x9A) == "tpm (PIN)"
    assert piv.stored.key_auth(BINDING) == pin_auth(piv, PIN)
    assert_pin_authorised(piv, swtpm_module.tcti, 0x9A, PIN)
    assert piv.stored.protection_of("piv/slot/9a/key") == bound(BINDING)
    sign_checks(piv, SLOT.AUTHENTICATION, public)


def test_a_key_made_after_verify_is_pin_derived_at_once(piv: Piv, swtpm_module: Swtpm) -> None:
    piv.session.verify_pin(PIN)
    key = ec.generate_private_key(ec.SECP256R1())
    piv.session.put_key(SLOT.SIGNATURE, key)
    assert_pin_authorised(piv, swtpm_module.tcti, 0x9C, PIN)
    piv.session.verify_pin(PIN)  # PIN-always slot
    sign_checks(piv, SLOT.SIGNATURE, key.public_key())


def test_the_admin_policy_is_the_entity_s_and_only_its_value_changes_the_key(
    piv: Piv, swtpm_module: Swtpm
) -> None:
    piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.session.verify_pin(PIN)
    rec = record(piv, 0x9A)
    _, public = _parse_blob(rec.blob, 2)
    attributes = str(public.publicArea.objectAttributes)
    assert "adminwithpolicy" in attributes and "userwithauth" in attributes
    assert "noda" not in attributes
    entity = piv.stored.get(ENTITY)
    k_adm = piv.stored.get(ENTITY_AUTH)
    assert entity is not None and k_adm is not None and len(k_adm) == 32
    assert piv.stored.protection_of(ENTITY) == "card"
    assert piv.stored.protection_of(ENTITY_AUTH) == bound(BINDING)
    _, entity_public = _parse_blob(entity, 1)
    assert "noda" in str(entity_public.publicArea.objectAttributes)
    name = bytes(entity_public.get_name())
    assert bytes(public.publicArea.authPolicy) == policy_of(name)
    # The TPM agrees: through the policy, with K_adm, the authValue changes; not without.
    vault = TpmKeyVault(Tpm(swtpm_module.tcti))
    with pytest.raises(AuthFailed):
        vault.change_auth(rec.blob, bytes(32), entity, secrets.token_bytes(32))
    other = secrets.token_bytes(32)
    changed = vault.change_auth(rec.blob, other, entity, k_adm)
    assert key_use(swtpm_module.tcti, changed, other) == 0


def test_pin_never_keys_are_no_da_and_not_pin_derived(piv: Piv, swtpm_module: Swtpm) -> None:
    public = piv.session.generate_key(SLOT.CARD_AUTH, KEY_TYPE.ECCP256, PIN_POLICY.NEVER)
    sign_checks(piv, SLOT.CARD_AUTH, public)  # no PIN
    rec = record(piv, 0x9E)
    assert rec.auth is KeyAuth.RANDOM and rec.value is not None
    assert piv.stored.protection_of("piv/slot/9e/key") == "card"
    _, area = _parse_blob(rec.blob, 2)
    attributes = str(area.publicArea.objectAttributes)
    assert "noda" in attributes and "adminwithpolicy" not in attributes
    assert key_use(swtpm_module.tcti, rec.blob, rec.value) == 0
    assert key_use(swtpm_module.tcti, rec.blob, pin_auth(piv, PIN)) != 0
    assert piv.applet.stored_keys.authorisation(0x9E) == "tpm (no PIN)"


def test_a_pin_change_reauthorises_every_key(piv: Piv, swtpm_module: Swtpm) -> None:
    tcti = swtpm_module.tcti
    public = piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.session.verify_pin(PIN)
    old = record(piv, 0x9A).blob
    pending = piv.session.generate_key(SLOT.KEY_MANAGEMENT, KEY_TYPE.ECCP256)
    piv.session.change_pin(PIN, NEW_PIN)
    for slot in (0x9A, 0x9D):
        assert_pin_authorised(piv, tcti, slot, NEW_PIN)
        assert key_use(tcti, record(piv, slot).blob, pin_auth(piv, PIN)) != 0
    assert record(piv, 0x9A).blob != old
    files = b"".join(p.read_bytes() for p in sorted(piv.stored.path.glob("card.db*")))
    assert old not in files  # it would still load with the old PIN's value
    sign_checks(piv, SLOT.AUTHENTICATION, public)
    sign_checks(piv, SLOT.KEY_MANAGEMENT, pending)


def test_a_puk_unblock_reauthorises_the_keys(piv: Piv, swtpm_module: Swtpm) -> None:
    public = piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.session.verify_pin(PIN)
    for _ in range(3):
        with pytest.raises(Exception, match="PIN"):
            piv.session.verify_pin("00000000")
    piv.session.unblock_pin(PUK, NEW_PIN)
    piv.session.verify_pin(NEW_PIN)
    assert_pin_authorised(piv, swtpm_module.tcti, 0x9A, NEW_PIN)
    sign_checks(piv, SLOT.AUTHENTICATION, public)


def test_set_pin_retries_reauthorises_the_keys_to_the_default_pin(
    piv: Piv, swtpm_module: Swtpm
) -> None:
    piv.session.change_pin(PIN, NEW_PIN)
    public = piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.session.verify_pin(NEW_PIN)
    piv.session.set_pin_attempts(5, 4)
    piv.session.verify_pin(DEFAULT_PIN)
    assert_pin_authorised(piv, swtpm_module.tcti, 0x9A, DEFAULT_PIN)
    sign_checks(piv, SLOT.AUTHENTICATION, public)


def test_the_keys_follow_the_pin_across_reopening(
    piv: Piv, store: CardStore, backend: BackendSpec, swtpm_module: Swtpm
) -> None:
    public = piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.close()
    again = open_piv_card(store, backend)
    again.session.verify_pin(PIN)
    again.session.change_pin(PIN, NEW_PIN)
    again.close()
    third = open_piv_card(store, backend)
    with pytest.raises(ApduError):
        third.session.sign(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256, b"data", hashes.SHA256())
    third.session.verify_pin(NEW_PIN)
    sign_checks(third, SLOT.AUTHENTICATION, public)
    assert_pin_authorised(third, swtpm_module.tcti, 0x9A, NEW_PIN)
    third.close()


def test_a_version_1_record_still_works_and_is_never_converted(
    piv: Piv, store: CardStore, backend: BackendSpec, swtpm_module: Swtpm
) -> None:
    """A key record as written before PIN-derived authValues: random authValue, no admin
    policy, sealed to the binding; its information without ``tpm_auth``."""
    vault = TpmKeyVault(Tpm(swtpm_module.tcti))
    auth = secrets.token_bytes(32)
    blob = vault.generate("eccp256", auth, da=True)
    public = load_der_public_key(vault.public_key(blob))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    info = KeyInfo(KeyType.ECCP256, PinPolicy.ONCE, TouchPolicy.NEVER, Origin.GENERATED, public)
    raw_info = _encode_info(info).replace(b'"location": "software"', b'"location": "tpm"')
    v1 = MAGIC + b"\x01" + auth + blob
    with piv.stored.transaction():
        piv.stored.put("piv/slot/9a/info", raw_info)
        piv.stored.put("piv/slot/9a/key", v1, protection=bound(BINDING))
    piv.close()

    card = open_piv_card(store, backend)
    assert card.applet.stored_keys.authorisation(0x9A) == "tpm (sealed random auth, older card)"
    card.session.verify_pin(PIN)
    sign_checks(card, SLOT.AUTHENTICATION, public)
    assert card.stored.get("piv/slot/9a/key") == v1  # not converted
    card.session.change_pin(PIN, NEW_PIN)
    card.session.verify_pin(NEW_PIN)
    sign_checks(card, SLOT.AUTHENTICATION, public)
    assert card.stored.get("piv/slot/9a/key") == v1
    card.close()


def test_a_refused_conversion_leaves_the_key_pending_and_verify_succeeds(
    piv: Piv, caplog: pytest.LogCaptureFixture
) -> None:
    public = piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    assert (piv.applet.stored_keys.authorisation(0x9A) or "").startswith("tpm (pending PIN")
    piv.stored.delete(ENTITY_AUTH)  # the entity's value is gone: the TPM cannot be asked
    with caplog.at_level(logging.WARNING, "vsc.store.piv"):
        piv.session.verify_pin(PIN)
    assert "slot 9A stays pending" in caplog.text
    assert record(piv, 0x9A).auth is KeyAuth.PENDING
    sign_checks(piv, SLOT.AUTHENTICATION, public)


def test_a_refused_reauthorisation_rolls_the_whole_pin_change_back(
    piv: Piv, swtpm_module: Swtpm
) -> None:
    public = piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.session.verify_pin(PIN)
    before = record(piv, 0x9A)
    piv.stored.delete(ENTITY_AUTH)
    with pytest.raises(ApduError):
        piv.session.change_pin(PIN, NEW_PIN)
    piv.session.verify_pin(PIN)  # the old PIN still opens the card
    assert record(piv, 0x9A) == before
    assert piv.stored.key_auth(BINDING) == pin_auth(piv, PIN)
    sign_checks(piv, SLOT.AUTHENTICATION, public)
    with pytest.raises(Exception, match="PIN"):
        piv.session.verify_pin(NEW_PIN)


# -- GIDS and managed PIV cards -------------------------------------------------------------


def gids_pin_auth(stored: StoredCard, pin: bytes) -> bytes:
    return pin_derived_auth(stored, "gids", pin)


def test_gids_keys_follow_the_pin_and_the_administrator_s_unblock(
    store: CardStore, backend: BackendSpec, swtpm_module: Swtpm
) -> None:
    from ..gids.test_store import ADMIN, Cards, _check
    from ..gids.test_store import NEW_PIN as GIDS_NEW_PIN
    from ..gids.test_store import PIN as GIDS_PIN

    tcti = swtpm_module.tcti
    cards = Cards(store, backend)
    card, key = cards.personalised()  # the PIN verified, then key 81 generated
    raw = card.stored.get("gids/key/81/key")
    assert raw is not None
    rec = decode_record(0x81, raw)
    assert rec.auth is KeyAuth.PIN
    assert key_use(tcti, rec.blob, gids_pin_auth(card.stored, GIDS_PIN)) == 0
    card.send(CommandApdu(0, 0x24, 0x00, 0x80, GIDS_PIN + GIDS_NEW_PIN))  # PIN change
    raw = card.stored.get("gids/key/81/key")
    assert raw is not None
    changed = decode_record(0x81, raw).blob
    assert key_use(tcti, changed, gids_pin_auth(card.stored, GIDS_NEW_PIN)) == 0
    assert key_use(tcti, changed, gids_pin_auth(card.stored, GIDS_PIN)) != 0
    assert card.applet.stored_keys.authorisation(0x81) == "tpm (PIN)"
    card.close()

    card = cards.open()  # the administrator sets a PIN nobody used before
    authenticate_mutual(card.card.transmit, ADMIN)
    card.send(CommandApdu(0, 0x2C, 0x02, 0x80, GIDS_PIN))
    card.close()
    card = cards.open()
    assert card.verify(GIDS_PIN) == 0x9000
    digest = hashlib.sha256(b"after the unblock").digest()
    _check(key, card.sign(digest), digest)
    raw = card.stored.get("gids/key/81/key")
    assert raw is not None
    assert key_use(tcti, decode_record(0x81, raw).blob, gids_pin_auth(card.stored, GIDS_PIN)) == 0
    card.close()


def test_a_managed_card_s_admin_reset_reauthorises_its_keys(
    tmp_path: Path, backend: BackendSpec, swtpm_module: Swtpm
) -> None:
    from ..lifecycle.conftest import NEW_PIN as M_NEW_PIN
    from ..lifecycle.conftest import PIN as M_PIN
    from ..lifecycle.test_manager import block_the_pin, respond, sign_works

    manager = CardManager(CardStore(tmp_path / "managed"), backend)
    created = manager.create("alice", pin=M_PIN, generate=True)
    (slot,) = [s for s in manager.info("alice").slots if s.slot == "9A"]
    assert slot.key_authorisation == "tpm (PIN)"
    block_the_pin(manager, "alice")
    pending = manager.begin_unblock("alice")
    manager.complete("alice", respond(created, pending.challenge), new_pin=M_NEW_PIN)
    sign_works(manager, "alice", M_NEW_PIN)
    stored = manager.store.open("alice", backend)
    try:
        stored.unlock(BINDING, "pin", block(M_NEW_PIN))
        raw = stored.get("piv/slot/9a/key")
        assert raw is not None
        rec = decode_record(0x9A, raw)
        assert rec.auth is KeyAuth.PIN
        new = pin_derived_auth(stored, BINDING, block(M_NEW_PIN))
        old = pin_derived_auth(stored, BINDING, block(M_PIN))
        assert key_use(swtpm_module.tcti, rec.blob, new) == 0
        assert key_use(swtpm_module.tcti, rec.blob, old) != 0
    finally:
        stored.close()
    Tpm(swtpm_module.tcti).da_reset(lockout_auth=b"")


def test_the_admin_policy_does_not_open_duplication(piv: Piv, swtpm_module: Swtpm) -> None:
    """An imported key lacks fixedTPM/fixedParent; TPM2_Duplicate needs a policy session
    whose command is Duplicate, which the ObjectChangeAuth policy never is."""
    from tpm2_pytss import (
        ESAPI,
        ESYS_TR,
        TPM2_ALG,
        TPM2_CC,
        TPM2_RC,
        TPM2_SE,
        TPM2B_DATA,
        TPMT_SYM_DEF,
        TPMT_SYM_DEF_OBJECT,
        TSS2_Exception,
    )

    from vsc.store.tpm import _srk_template

    piv.session.put_key(SLOT.KEY_MANAGEMENT, ec.generate_private_key(ec.SECP256R1()))
    piv.session.verify_pin(PIN)
    rec, entity, k_adm = record(piv, 0x9D), piv.stored.get(ENTITY), piv.stored.get(ENTITY_AUTH)
    assert entity is not None and k_adm is not None
    ctx = ESAPI(swtpm_module.tcti)
    handles = []
    try:
        srk = ctx.create_primary(None, _srk_template())[0]
        handles.append(srk)
        key = ctx.load(srk, *_parse_blob(rec.blob, 2))
        entity_handle = ctx.load(srk, *_parse_blob(entity, 1))
        handles += [key, entity_handle]
        ctx.tr_set_auth(entity_handle, k_adm)
        # The entity's policy names another command; a Duplicate policy is another digest.
        expected = {
            TPM2_CC.ObjectChangeAuth: TPM2_RC.POLICY_CC,
            TPM2_CC.Duplicate: TPM2_RC.POLICY_FAIL,
        }
        for code in expected:
            policy = ctx.start_auth_session(
                ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF.parse("null"),
                TPM2_ALG.SHA256,
            )  # fmt: skip
            handles.append(policy)
            ctx.policy_command_code(policy, code)
            ctx.policy_secret(entity_handle, policy)
            with pytest.raises(TSS2_Exception) as refused:
                ctx.duplicate(
                    key, ESYS_TR.NULL, TPM2B_DATA(),
                    TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL), session1=policy,
                )  # fmt: skip
            assert refused.value.error == expected[code]
    finally:
        for handle in reversed(handles):
            ctx.flush_context(handle)
        ctx.close()
