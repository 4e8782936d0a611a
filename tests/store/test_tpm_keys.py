"""Keys that live in the TPM: made or wrapped there, used there, never in the files or memory.

A PIV card on the tpm backend, driven in-process by yubikit (as ykman would)
against one real swtpm shared by the module. Every result is checked with
``cryptography``; what the card holds is checked in its decrypted records
(each key record is a TPM blob), in its raw files and in the objects the
applet keeps in memory (no private key material anywhere). A second swtpm
shows that the blobs are useless elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from yubikit.core.smartcard import ApduError
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, PIN_POLICY, SLOT

from .conftest import require_swtpm

require_swtpm()  # before importing the tpm backend, which needs tpm2-pytss

from applets.piv.attestation import OID_KEY_LOCATION  # noqa: E402
from applets.piv.handles import KeyLocation  # noqa: E402
from applets.piv.keys import KeyInfo, KeyType, Origin, PinPolicy, TouchPolicy  # noqa: E402
from vsc.store import (  # noqa: E402
    BackendMismatch,
    BackendSpec,
    CardStore,
    DaParameters,
    bound,
)
from vsc.store.piv import BINDING, StoredKeyStore, _encode_info  # noqa: E402
from vsc.store.settings import CardSettings  # noqa: E402
from vsc.store.tpm import Tpm, TpmKeyVault, _parse_blob  # noqa: E402
from vsc.store.tpmkeys import TpmKey, decode_record, is_tpm_record  # noqa: E402
from vsc.testing.swtpm import Swtpm  # noqa: E402
from vsc.tlv import parse_dict  # noqa: E402

from .test_piv_store import Piv, open_piv_card  # noqa: E402

PIN = "123456"
MESSAGE = b"signed inside the TPM"
TPM_TYPES = [
    KEY_TYPE.RSA1024,
    KEY_TYPE.RSA2048,
    KEY_TYPE.RSA3072,
    KEY_TYPE.ECCP256,
    KEY_TYPE.ECCP384,
]
CURVES = {KEY_TYPE.ECCP256: ec.SECP256R1(), KEY_TYPE.ECCP384: ec.SECP384R1()}
HASHES = {KEY_TYPE.ECCP256: hashes.SHA256(), KEY_TYPE.ECCP384: hashes.SHA384()}
FIXED = ("fixedtpm", "fixedparent", "sensitivedataorigin")


@pytest.fixture(scope="module")
def swtpm_module() -> Iterator[Swtpm]:
    with Swtpm() as tpm:
        Tpm(tpm.tcti).set_da_parameters(DaParameters(32, 7200, 86400), lockout_auth=b"")
        yield tpm


@pytest.fixture
def backend(swtpm_module: Swtpm) -> BackendSpec:
    return BackendSpec.tpm(swtpm_module.tcti)


@pytest.fixture
def piv(store: CardStore, backend: BackendSpec) -> Iterator[Piv]:
    card = open_piv_card(store, backend)
    card.session.authenticate(DEFAULT_MANAGEMENT_KEY)
    yield card
    if not card.stored.closed:
        card.close()


def private_key(key_type: KEY_TYPE) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if key_type.algorithm.name == "RSA":
        return rsa.generate_private_key(65537, key_type.bit_len)
    return ec.generate_private_key(CURVES[key_type])


def secrets_of(key: Any) -> list[bytes]:
    """The private numbers of ``key``, big-endian, as they would appear in a dump."""
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        values = [n.p, n.q, n.d, n.dmp1, n.dmq1]
    else:
        values = [key.private_numbers().private_value]
    return [v.to_bytes((v.bit_length() + 7) // 8, "big") for v in values]


def metadata(piv: Piv, slot: int) -> dict[int, bytes]:
    """GET METADATA of ``slot``, every tag (yubikit's view drops vsc's C0)."""
    return parse_dict(piv.session.protocol.send_apdu(0x00, 0xF7, 0x00, slot))


def key_record(piv: Piv, slot: int) -> bytes:
    """The decrypted record of ``slot``'s private key (the PIN binding is open)."""
    raw = piv.stored.get(f"piv/slot/{slot:02x}/key")
    assert raw is not None
    return raw


def tpm_attributes(record: bytes, slot: int) -> str:
    _, public = _parse_blob(decode_record(slot, record).blob, 2)
    return str(public.publicArea.objectAttributes)


def memory_objects(root: object) -> Iterator[object]:
    """Everything reachable from ``root`` through instance attributes and containers."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, type):
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        else:
            attributes = getattr(item, "__dict__", {})
            stack.extend(attributes.values())
            for name in getattr(type(item), "__slots__", ()):
                if hasattr(item, name):
                    stack.append(getattr(item, name))


def assert_no_private_material(piv: Piv, secrets: list[bytes]) -> None:
    """Not in the card's files, its decrypted records, nor the applet's objects in memory."""
    files = b"".join(p.read_bytes() for p in sorted(piv.stored.path.glob("card.db*")))
    records = b"".join(piv.stored.get(name) or b"" for name in piv.stored.names())
    for item in memory_objects(piv.applet):
        assert not isinstance(item, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey), item
        if isinstance(item, bytes | bytearray):
            records += bytes(item)
    for secret in secrets:
        assert secret not in files
        assert secret not in records


def use_and_check(piv: Piv, slot: SLOT, key_type: KEY_TYPE, public: Any) -> None:
    """Sign (and decrypt, or ECDH) with ``slot``'s key and check the results."""
    s = piv.session
    if key_type.algorithm.name == "RSA":
        signature = s.sign(slot, key_type, MESSAGE, hashes.SHA256(), padding.PKCS1v15())
        public.verify(signature, MESSAGE, padding.PKCS1v15(), hashes.SHA256())
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
        signature = s.sign(slot, key_type, MESSAGE, hashes.SHA256(), pss)
        public.verify(signature, MESSAGE, pss, hashes.SHA256())
        ciphertext = public.encrypt(b"a session key", padding.PKCS1v15())
        assert s.decrypt(slot, ciphertext, padding.PKCS1v15()) == b"a session key"
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        assert s.decrypt(slot, public.encrypt(b"oaep", oaep), oaep) == b"oaep"
    else:
        signature = s.sign(slot, key_type, MESSAGE, HASHES[key_type])
        public.verify(signature, MESSAGE, ec.ECDSA(HASHES[key_type]))
        peer = ec.generate_private_key(CURVES[key_type])
        assert s.calculate_secret(slot, peer.public_key()) == peer.exchange(ec.ECDH(), public)


@pytest.mark.parametrize("key_type", TPM_TYPES, ids=lambda t: t.name)
def test_generated_keys_live_and_work_in_the_tpm(piv: Piv, key_type: KEY_TYPE) -> None:
    public = piv.session.generate_key(SLOT.AUTHENTICATION, key_type)
    assert metadata(piv, 0x9A)[0xC0] == bytes((KeyLocation.TPM,))
    piv.session.verify_pin(PIN)
    use_and_check(piv, SLOT.AUTHENTICATION, key_type, public)

    record = key_record(piv, 0x9A)
    assert is_tpm_record(record)
    attributes = tpm_attributes(record, 0x9A)
    assert all(a in attributes for a in FIXED) and "noda" not in attributes
    assert piv.stored.protection_of("piv/slot/9a/key") == bound(BINDING)
    assert isinstance(piv.applet.keys._load_private_key(0x9A), TpmKey)
    assert_no_private_material(piv, [])


@pytest.mark.parametrize("key_type", TPM_TYPES, ids=lambda t: t.name)
def test_imported_keys_are_wrapped_into_the_tpm(piv: Piv, key_type: KEY_TYPE) -> None:
    key = private_key(key_type)
    piv.session.put_key(SLOT.KEY_MANAGEMENT, key)
    assert metadata(piv, 0x9D)[0xC0] == bytes((KeyLocation.TPM,))
    piv.session.verify_pin(PIN)
    use_and_check(piv, SLOT.KEY_MANAGEMENT, key_type, key.public_key())

    record = key_record(piv, 0x9D)
    assert is_tpm_record(record)
    # TPM2_Import takes no fixedTPM; the authPolicy (ObjectChangeAuth only, see
    # tests/store/test_tpm_pin_auth.py) keeps TPM2_Duplicate out.
    _, public = _parse_blob(decode_record(0x9D, record).blob, 2)
    area = public.publicArea
    assert "adminwithpolicy" in str(area.objectAttributes)
    assert len(bytes(area.authPolicy)) == 32
    assert_no_private_material(piv, secrets_of(key))


def test_a_pin_never_key_is_in_the_tpm_without_pin_authorisation(piv: Piv) -> None:
    public = piv.session.generate_key(SLOT.CARD_AUTH, KEY_TYPE.ECCP256, PIN_POLICY.NEVER)
    signature = piv.session.sign(SLOT.CARD_AUTH, KEY_TYPE.ECCP256, MESSAGE, hashes.SHA256())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, MESSAGE, ec.ECDSA(hashes.SHA256()))
    record = key_record(piv, 0x9E)
    assert "noda" in tpm_attributes(record, 0x9E)
    assert piv.stored.protection_of("piv/slot/9e/key") == "card"


def test_attestation_key_and_statements(piv: Piv) -> None:
    """F9 lives in the TPM too; its statements verify and say where the key lives."""
    assert is_tpm_record(key_record(piv, 0xF9))
    public = piv.session.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP384)
    statement = piv.session.attest_key(SLOT.SIGNATURE)
    issuer = piv.session.get_certificate(SLOT.ATTESTATION)
    statement.verify_directly_issued_by(issuer)
    assert statement.public_key() == public
    location = statement.extensions.get_extension_for_oid(OID_KEY_LOCATION).value
    assert isinstance(location, x509.UnrecognizedExtension)
    assert location.value == b"\x0a\x01\x01"  # ENUMERATED tpm


def test_blobs_are_useless_on_another_tpm(piv: Piv) -> None:
    piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    piv.session.verify_pin(PIN)
    blob = decode_record(0x9A, key_record(piv, 0x9A)).blob
    auth = piv.stored.key_auth(BINDING)
    assert auth is not None
    with Swtpm() as other:
        vault = TpmKeyVault(Tpm(other.tcti))
        with pytest.raises(BackendMismatch, match="not sealed by this TPM"):
            vault.ecdsa(blob, auth, hashlib.sha256(MESSAGE).digest())
        piv.close()
        with pytest.raises(BackendMismatch, match="different TPM"):
            CardStore(piv.stored.path.parent.parent).open("alice", BackendSpec.tpm(other.tcti))


def test_wrong_pins_are_counted_by_the_tpm(piv: Piv, swtpm_module: Swtpm) -> None:
    tpm = Tpm(swtpm_module.tcti)
    before = tpm.da_status().failed_tries
    with pytest.raises(Exception, match=r"PIN"):
        piv.session.verify_pin("999999")
    assert tpm.da_status().failed_tries == before + 1
    piv.session.verify_pin(PIN)
    assert tpm.da_status().failed_tries == before + 1  # a right PIN costs nothing


@pytest.mark.parametrize(
    ("key_type", "key"),
    [
        (KEY_TYPE.ED25519, lambda: ed25519.Ed25519PrivateKey.generate()),
        (KEY_TYPE.X25519, lambda: x25519.X25519PrivateKey.generate()),
        (KEY_TYPE.RSA4096, None),
    ],
    ids=["ED25519", "X25519", "RSA4096"],
)
def test_algorithms_the_tpm_lacks_are_refused(
    piv: Piv, key_type: KEY_TYPE, key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "vsc.store.tpmkeys"), pytest.raises(ApduError) as e:
        piv.session.generate_key(SLOT.AUTHENTICATION, key_type)
    assert e.value.sw == 0x6A80
    assert f"refused a {key_type.name} key: the TPM cannot hold it" in caplog.text
    if key is not None:
        with pytest.raises(ApduError) as e:
            piv.session.put_key(SLOT.AUTHENTICATION, key())
        assert e.value.sw == 0x6A80
    assert piv.applet.keys.get(0x9A) is None


def test_software_keys_when_the_card_allows_them(store: CardStore, backend: BackendSpec) -> None:
    piv = open_piv_card(store, backend, settings=CardSettings(software_keys=True))
    piv.session.authenticate(DEFAULT_MANAGEMENT_KEY)
    public = piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ED25519)
    assert metadata(piv, 0x9A)[0xC0] == bytes((KeyLocation.SOFTWARE,))
    statement = piv.session.attest_key(SLOT.AUTHENTICATION)
    location = statement.extensions.get_extension_for_oid(OID_KEY_LOCATION).value
    assert isinstance(location, x509.UnrecognizedExtension)
    assert location.value == b"\x0a\x01\x02"  # ENUMERATED software
    piv.session.verify_pin(PIN)
    assert isinstance(public, ed25519.Ed25519PublicKey)
    public.verify(piv.session.sign(SLOT.AUTHENTICATION, KEY_TYPE.ED25519, MESSAGE, None), MESSAGE)
    assert not is_tpm_record(key_record(piv, 0x9A))
    # What the TPM can hold still goes there.
    piv.session.generate_key(SLOT.SIGNATURE, KEY_TYPE.ECCP256)
    assert metadata(piv, 0x9C)[0xC0] == bytes((KeyLocation.TPM,))
    piv.close()


def test_a_card_from_before_keeps_its_software_keys(store: CardStore, backend: BackendSpec) -> None:
    """An older TPM card (a bare sealed card key, PKCS#8 records) opens and signs as before."""
    piv = open_piv_card(store, backend, settings=CardSettings.legacy_card())
    old = ec.generate_private_key(ec.SECP256R1())
    # What an older vsc wrote for 9E: information without a location, a PKCS#8 key.
    info = KeyInfo(
        KeyType.ECCP256, PinPolicy.NEVER, TouchPolicy.NEVER, Origin.IMPORTED, old.public_key()
    )
    raw_info = _encode_info(info).replace(b', "location": "software"', b"")
    piv.stored.put("piv/slot/9e/info", raw_info)
    piv.stored.put(
        "piv/slot/9e/key", old.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    )
    piv.close()
    piv = open_piv_card(store, backend)
    assert piv.stored.settings.legacy
    signature = piv.session.sign(SLOT.CARD_AUTH, KEY_TYPE.ECCP256, MESSAGE, hashes.SHA256())
    old.public_key().verify(signature, MESSAGE, ec.ECDSA(hashes.SHA256()))
    assert metadata(piv, 0x9E)[0xC0] == bytes((KeyLocation.SOFTWARE,))
    # New keys of an older card go into the TPM.
    piv.session.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP256)
    assert metadata(piv, 0x9A)[0xC0] == bytes((KeyLocation.TPM,))
    assert isinstance(piv.applet.keys, StoredKeyStore)
    piv.close()
