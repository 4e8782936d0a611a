"""Tests for applets/piv/keys.py, rsa.py and attestation.py.

Every result is checked with ``cryptography`` (or plain integer arithmetic)
on the public side; TLVs and padding are built here, independently of the
code under test. RSA keys are generated once per module (RSA-4096 is slow).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils, x25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from cryptography.x509.oid import NameOID

from applets.piv import rsa as raw_rsa
from applets.piv.attestation import (
    OID_FIRMWARE_VERSION,
    OID_FORM_FACTOR,
    OID_SERIAL_NUMBER,
    OID_USAGE_POLICY,
    FormFactor,
)
from applets.piv.keys import (
    ATTESTATION_SLOT,
    KeyInfo,
    KeyNotFound,
    KeyStore,
    KeyType,
    MemoryKeyStore,
    Origin,
    PinPolicy,
    PrivateKey,
    TouchPolicy,
    create_attestation_key,
    default_pin_policy,
    encode_public_key,
    encode_public_key_data,
    generate_private_key,
    parse_private_key,
    resolve_pin_policy,
    resolve_touch_policy,
)
from vsc.sw import SW, ApduError

RSA_TYPES = [KeyType.RSA1024, KeyType.RSA2048, KeyType.RSA3072, KeyType.RSA4096]
EC_TYPES = [KeyType.ECCP256, KeyType.ECCP384]
SIGN_TYPES = [*RSA_TYPES, *EC_TYPES, KeyType.ED25519]
# One slot per key type in the shared store.
SLOT_OF = {
    KeyType.RSA1024: 0x82,
    KeyType.RSA2048: 0x83,
    KeyType.RSA3072: 0x84,
    KeyType.RSA4096: 0x85,
    KeyType.ECCP256: 0x86,
    KeyType.ECCP384: 0x87,
    KeyType.ED25519: 0x88,
    KeyType.X25519: 0x89,
}
SERIAL = 13371337
VERSION = (5, 7, 1)

DIGEST_INFO = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha224": bytes.fromhex("302d300d06096086480165030402040500041c"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


# --- helpers written independently of the code under test ----------------------------


def tlv(tag: int, value: bytes) -> bytes:
    if len(value) < 0x80:
        length = bytes([len(value)])
    elif len(value) < 0x100:
        length = bytes([0x81, len(value)])
    else:
        length = bytes([0x82]) + len(value).to_bytes(2, "big")
    return tag.to_bytes((tag.bit_length() + 7) // 8, "big") + length + value


def pkcs1_type1(k: int, hash_name: str, message: bytes) -> bytes:
    t = DIGEST_INFO[hash_name] + hashlib.new(hash_name, message).digest()
    return b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t


def unpad_type2(block: bytes) -> bytes:
    assert block[:2] == b"\x00\x02"
    separator = block.index(b"\x00", 2)
    assert separator >= 10
    return block[separator + 1 :]


def mgf1(seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def unpad_oaep_sha256(block: bytes) -> bytes:
    h_len = 32
    assert block[0] == 0
    masked_seed, masked_db = block[1 : 1 + h_len], block[1 + h_len :]
    seed = bytes(a ^ b for a, b in zip(masked_seed, mgf1(masked_db, h_len), strict=True))
    db = bytes(a ^ b for a, b in zip(masked_db, mgf1(seed, len(masked_db)), strict=True))
    assert db[:h_len] == hashlib.sha256(b"").digest()
    rest = db[h_len:].lstrip(b"\x00")
    assert rest[0] == 1
    return rest[1:]


def rsa_public(info: KeyInfo) -> rsa.RSAPublicKey:
    assert isinstance(info.public_key, rsa.RSAPublicKey)
    return info.public_key


def raw_public_op(public_key: rsa.RSAPublicKey, data: bytes) -> int:
    numbers = public_key.public_numbers()
    return pow(int.from_bytes(data, "big"), numbers.e, numbers.n)


def import_tlvs(key: PrivateKey) -> bytes:
    """IMPORT KEY data the way ykman/libykpiv build it ("Key import" in docs/piv.md)."""
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        half = key.key_size // 16
        return b"".join(
            tlv(tag, value.to_bytes(half, "big"))
            for tag, value in zip(range(1, 6), (n.p, n.q, n.dmp1, n.dmq1, n.iqmp), strict=True)
        )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = key.curve.key_size // 8
        return tlv(6, key.private_numbers().private_value.to_bytes(size, "big"))
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return tlv(7 if isinstance(key, ed25519.Ed25519PrivateKey) else 8, raw)


def assert_sw(sw: int, fn: Callable[[], object]) -> None:
    with pytest.raises(ApduError) as caught:
        fn()
    assert caught.value.sw == sw


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store() -> MemoryKeyStore:
    """One generated key of every type, plus the F9 attestation CA."""
    s = MemoryKeyStore()
    create_attestation_key(s, serial=SERIAL)
    for key_type, slot in SLOT_OF.items():
        s.generate(slot, key_type, PinPolicy.DEFAULT, TouchPolicy.DEFAULT)
    return s


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def host_keys(rsa2048: rsa.RSAPrivateKey) -> dict[KeyType, PrivateKey]:
    """Host-side keys to import (RSA-3072/4096 skipped: import is size-generic)."""
    keys: dict[KeyType, PrivateKey] = {
        KeyType.RSA1024: rsa.generate_private_key(65537, 1024),
        KeyType.RSA2048: rsa2048,
        KeyType.ECCP256: ec.generate_private_key(ec.SECP256R1()),
        KeyType.ECCP384: ec.generate_private_key(ec.SECP384R1()),
        KeyType.ED25519: ed25519.Ed25519PrivateKey.generate(),
        KeyType.X25519: x25519.X25519PrivateKey.generate(),
    }
    return keys


@pytest.fixture
def fresh() -> MemoryKeyStore:
    return MemoryKeyStore()


@pytest.fixture
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(raw_rsa, "_ACCEL", None)
    yield


# --- generation, signing, agreement ---------------------------------------------------


def test_generated_info(store: MemoryKeyStore) -> None:
    for key_type, slot in SLOT_OF.items():
        info = store.get(slot)
        assert info is not None
        assert info.key_type is key_type
        assert info.origin is Origin.GENERATED
        assert KeyType.of(info.public_key) is key_type
        assert info.pin_policy is PinPolicy.ONCE  # retired slots default to ONCE
        assert info.touch_policy is TouchPolicy.NEVER
    rsa_info = store.get(SLOT_OF[KeyType.RSA4096])
    assert rsa_info is not None
    assert rsa_public(rsa_info).public_numbers().e == 65537
    assert rsa_public(rsa_info).key_size == 4096


@pytest.mark.parametrize("key_type", RSA_TYPES, ids=lambda t: t.name)
def test_rsa_pkcs1_signature_verifies(store: MemoryKeyStore, key_type: KeyType) -> None:
    slot = SLOT_OF[key_type]
    info = store.require(slot)
    message = b"sign me " + key_type.name.encode()
    k = key_type.bit_len // 8
    signature = store.sign(slot, pkcs1_type1(k, "sha256", message), key_type=key_type)
    assert len(signature) == k
    rsa_public(info).verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("key_type", EC_TYPES, ids=lambda t: t.name)
def test_ecdsa_signature_verifies(store: MemoryKeyStore, key_type: KeyType) -> None:
    slot = SLOT_OF[key_type]
    public_key = store.require(slot).public_key
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    algorithm = hashes.SHA256() if key_type is KeyType.ECCP256 else hashes.SHA384()
    message = b"ecdsa message"
    h = hashes.Hash(algorithm)
    h.update(message)
    signature = store.sign(slot, h.finalize())
    assert signature[0] == 0x30  # DER SEQUENCE
    public_key.verify(signature, message, ec.ECDSA(algorithm))


@pytest.mark.parametrize("key_type", EC_TYPES, ids=lambda t: t.name)
def test_ecdsa_input_shorter_and_longer_than_field(
    store: MemoryKeyStore, key_type: KeyType
) -> None:
    slot = SLOT_OF[key_type]
    public_key = store.require(slot).public_key
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    size = key_type.bit_len // 8
    # Shorter: e.g. ykman's SHA-256 hash on a P-384 key; left-zero padding keeps e.
    short = hashlib.sha256(b"short").digest()[: size - 12]
    signature = store.sign(slot, short)
    public_key.verify(
        signature, short.rjust(size, b"\x00"), ec.ECDSA(utils.Prehashed(_hash_of_size(size)))
    )
    # Longer: the leftmost field-size bytes are e.
    long = hashlib.sha512(b"long").digest() + b"\x01" * 40
    signature = store.sign(slot, long)
    public_key.verify(signature, long[:size], ec.ECDSA(utils.Prehashed(_hash_of_size(size))))
    assert_sw(SW.INVALID_DATA, lambda: store.sign(slot, b""))


def _hash_of_size(size: int) -> hashes.HashAlgorithm:
    return hashes.SHA256() if size == 32 else hashes.SHA384()


def test_ecdsa_p384_with_sha256_hash_verifies_as_sha256(store: MemoryKeyStore) -> None:
    slot = SLOT_OF[KeyType.ECCP384]
    public_key = store.require(slot).public_key
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    digest = hashlib.sha256(b"ykman pads nothing").digest()
    public_key.verify(store.sign(slot, digest), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_ed25519_signs_the_whole_message(store: MemoryKeyStore) -> None:
    slot = SLOT_OF[KeyType.ED25519]
    public_key = store.require(slot).public_key
    assert isinstance(public_key, ed25519.Ed25519PublicKey)
    for message in (b"", b"m", os.urandom(3000)):
        signature = store.sign(slot, message)
        assert len(signature) == 64
        public_key.verify(signature, message)


@pytest.mark.parametrize("key_type", EC_TYPES, ids=lambda t: t.name)
def test_ecdh(store: MemoryKeyStore, key_type: KeyType) -> None:
    slot = SLOT_OF[key_type]
    public_key = store.require(slot).public_key
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    peer = ec.generate_private_key(public_key.curve)
    point = peer.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    shared = store.agree(slot, point, key_type=key_type)
    assert len(shared) == key_type.bit_len // 8
    assert shared == peer.exchange(ec.ECDH(), public_key)


def test_x25519(store: MemoryKeyStore) -> None:
    slot = SLOT_OF[KeyType.X25519]
    public_key = store.require(slot).public_key
    assert isinstance(public_key, x25519.X25519PublicKey)
    peer = x25519.X25519PrivateKey.generate()
    peer_bytes = peer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert store.agree(slot, peer_bytes) == peer.exchange(public_key)


@pytest.mark.parametrize("key_type", EC_TYPES, ids=lambda t: t.name)
def test_ecdh_rejects_bad_points(store: MemoryKeyStore, key_type: KeyType) -> None:
    slot = SLOT_OF[key_type]
    public_key = store.require(slot).public_key
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    good = (
        ec.generate_private_key(public_key.curve)
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    other_curve: ec.EllipticCurve = (
        ec.SECP384R1() if key_type is KeyType.ECCP256 else ec.SECP256R1()
    )
    wrong_curve = (
        ec.generate_private_key(other_curve)
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    compressed = (
        ec.generate_private_key(public_key.curve)
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    )
    off_curve = good[:-1] + bytes([good[-1] ^ 1])
    size = key_type.bit_len // 8
    bad_points = [
        b"",
        good[:-1],
        good + b"\x00",
        b"\x05" + good[1:],
        off_curve,
        wrong_curve,
        compressed,
        b"\x04" + bytes(2 * size),  # (0, 0) is not on the curve
    ]
    for bad in bad_points:
        assert_sw(SW.INVALID_DATA, lambda bad=bad: store.agree(slot, bad))  # type: ignore[misc]


def test_x25519_rejects_bad_peers(store: MemoryKeyStore) -> None:
    slot = SLOT_OF[KeyType.X25519]
    small_order = [bytes(32), (1).to_bytes(32, "little")]  # shared secret all zero
    for bad in [b"", bytes(31), bytes(33), *small_order]:
        assert_sw(SW.INVALID_DATA, lambda bad=bad: store.agree(slot, bad))  # type: ignore[misc]


def test_operations_on_the_wrong_key_type(store: MemoryKeyStore) -> None:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    assert_sw(SW.INVALID_DATA, lambda: store.sign(SLOT_OF[KeyType.X25519], bytes(32)))
    assert_sw(SW.INVALID_DATA, lambda: store.agree(SLOT_OF[KeyType.RSA1024], point))
    assert_sw(SW.INVALID_DATA, lambda: store.agree(SLOT_OF[KeyType.ED25519], bytes(32)))
    # GA's P1 must name the stored key's algorithm.
    slot = SLOT_OF[KeyType.ECCP256]
    assert_sw(SW.INVALID_DATA, lambda: store.sign(slot, bytes(32), key_type=KeyType.ECCP384))
    assert_sw(SW.INVALID_DATA, lambda: store.agree(slot, point, key_type=KeyType.RSA2048))


def test_empty_slot_is_reference_not_found(fresh: MemoryKeyStore) -> None:
    assert fresh.get(0x9A) is None
    for call in (
        lambda: fresh.sign(0x9A, bytes(32)),
        lambda: fresh.agree(0x9A, bytes(32)),
        lambda: fresh.delete(0x9A),
        lambda: fresh.move(0x9A, 0x9C),
        lambda: fresh.attest(0x9A, serial=1, version=VERSION),
        lambda: fresh.require(0x9A),
    ):
        with pytest.raises(KeyNotFound) as caught:
            call()
        assert caught.value.sw == SW.REFERENCE_NOT_FOUND


def test_slot_out_of_range(fresh: MemoryKeyStore) -> None:
    assert_sw(SW.INCORRECT_PARAMETERS, lambda: fresh.get(0x100))
    assert_sw(SW.INCORRECT_PARAMETERS, lambda: fresh.generate(-1, KeyType.ECCP256))


# --- raw RSA ------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", RSA_TYPES, ids=lambda t: t.name)
def test_rsa_decrypt_pkcs1v15_type2(store: MemoryKeyStore, key_type: KeyType) -> None:
    slot = SLOT_OF[key_type]
    public_key = rsa_public(store.require(slot))
    secret = os.urandom(32)
    ciphertext = public_key.encrypt(secret, padding.PKCS1v15())
    block = store.sign(slot, ciphertext)
    assert len(block) == key_type.bit_len // 8
    assert unpad_type2(block) == secret


@pytest.mark.parametrize("key_type", [KeyType.RSA1024, KeyType.RSA2048], ids=lambda t: t.name)
def test_rsa_decrypt_oaep(store: MemoryKeyStore, key_type: KeyType, no_accelerator: None) -> None:
    slot = SLOT_OF[key_type]
    public_key = rsa_public(store.require(slot))
    secret = os.urandom(24)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    block = store.sign(slot, public_key.encrypt(secret, oaep))
    assert unpad_oaep_sha256(block) == secret


@pytest.mark.parametrize("hash_name", list(HASHES))
def test_pkcs1v15_block_equals_cryptography_signature(
    rsa2048: rsa.RSAPrivateKey, hash_name: str
) -> None:
    s = MemoryKeyStore()
    s.import_key(0x9C, KeyType.RSA2048, rsa2048)
    message = b"the same signature, either way"
    expected = rsa2048.sign(message, padding.PKCS1v15(), HASHES[hash_name]())
    assert s.sign(0x9C, pkcs1_type1(256, hash_name, message)) == expected


@pytest.mark.parametrize("hash_name", ["sha1", "sha256", "sha512"])
def test_blinded_raw_path_equals_fast_path(rsa2048: rsa.RSAPrivateKey, hash_name: str) -> None:
    block = pkcs1_type1(256, hash_name, b"two roads")
    fast = raw_rsa._pkcs1v15_fast_path(rsa2048, 256, block)
    assert fast is not None  # the block really takes the OpenSSL path
    crt = raw_rsa.RsaCrtKey.from_private_key(rsa2048)
    assert raw_rsa.blinded_private_op(crt, block) == fast
    assert raw_rsa.private_op(rsa2048, block) == fast


def test_pure_python_path_equals_accelerated(
    rsa2048: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    crt = raw_rsa.RsaCrtKey.from_private_key(rsa2048)
    block = b"\x00" + os.urandom(255)
    accelerated = raw_rsa.blinded_private_op(crt, block)
    monkeypatch.setattr(raw_rsa, "_ACCEL", None)
    assert raw_rsa.blinded_private_op(crt, block) == accelerated
    assert raw_public_op(rsa2048.public_key(), accelerated) == int.from_bytes(block, "big")


def test_raw_rsa_arbitrary_blocks(rsa2048: rsa.RSAPrivateKey) -> None:
    public_key = rsa2048.public_key()
    n = public_key.public_numbers().n
    k = 256
    short_padding = b"\x00\x01" + b"\xff" * 4 + b"\x00" + os.urandom(k - 7)  # < 8 FF bytes
    t = DIGEST_INFO["sha256"] + os.urandom(31)  # a digest one byte short
    wrong_length_digest = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
    no_digest_info = b"\x00\x01" + b"\xff" * (k - 39) + b"\x00" + os.urandom(36)  # TLS-style
    for block in (
        bytes(k),
        (1).to_bytes(k, "big"),
        (n - 1).to_bytes(k, "big"),
        short_padding,
        wrong_length_digest,
        no_digest_info,
    ):
        result = raw_rsa.private_op(rsa2048, block)
        assert len(result) == k
        assert raw_public_op(public_key, result) == int.from_bytes(block, "big")


@pytest.mark.parametrize("key_type", [KeyType.RSA1024, KeyType.RSA4096], ids=lambda t: t.name)
def test_rsa_input_must_be_k_bytes_below_n(store: MemoryKeyStore, key_type: KeyType) -> None:
    slot = SLOT_OF[key_type]
    n = rsa_public(store.require(slot)).public_numbers().n
    k = key_type.bit_len // 8
    for bad in (b"", bytes(k - 1), bytes(k + 1), n.to_bytes(k, "big"), b"\xff" * k):
        assert_sw(SW.INVALID_DATA, lambda bad=bad: store.sign(slot, bad))  # type: ignore[misc]
    assert len(store.sign(slot, (n - 1).to_bytes(k, "big"))) == k


def test_rsa_fault_is_caught(rsa2048: rsa.RSAPrivateKey) -> None:
    crt = raw_rsa.RsaCrtKey.from_private_key(rsa2048)
    broken = raw_rsa.RsaCrtKey(crt.n, crt.e, crt.p, crt.q, crt.dp ^ 2, crt.dq, crt.qinv)
    assert_sw(
        SW.EXECUTION_ERROR, lambda: raw_rsa.blinded_private_op(broken, b"\x00" * 255 + b"\x07")
    )


def test_crt_key_repr_hides_secrets(rsa2048: rsa.RSAPrivateKey) -> None:
    crt = raw_rsa.RsaCrtKey.from_private_key(rsa2048)
    text = repr(crt)
    assert str(crt.p) not in text and str(crt.dp) not in text
    assert str(crt.n) in text


# --- import -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key_type",
    [KeyType.RSA1024, KeyType.RSA2048, *EC_TYPES, KeyType.ED25519, KeyType.X25519],
    ids=lambda t: t.name,
)
def test_import_round_trip(host_keys: dict[KeyType, PrivateKey], key_type: KeyType) -> None:
    host = host_keys[key_type]
    data = import_tlvs(host) + tlv(0xAA, b"\x03") + tlv(0xAB, b"\x02")  # policies are skipped
    parsed = parse_private_key(key_type, data)
    public_raw = host.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert (
        parsed.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        == public_raw
    )
    s = MemoryKeyStore()
    info = s.import_key(0x9D, key_type, parsed, PinPolicy.ALWAYS, TouchPolicy.CACHED)
    assert info.origin is Origin.IMPORTED
    assert (info.pin_policy, info.touch_policy) == (PinPolicy.ALWAYS, TouchPolicy.CACHED)
    assert info.public_key == host.public_key()
    # The imported key works like the host's.
    if isinstance(host, rsa.RSAPrivateKey):
        k = host.key_size // 8
        expected = host.sign(b"imported", padding.PKCS1v15(), hashes.SHA384())
        assert s.sign(0x9D, pkcs1_type1(k, "sha384", b"imported")) == expected
    elif isinstance(host, ec.EllipticCurvePrivateKey):
        peer = ec.generate_private_key(host.curve)
        point = peer.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        assert s.agree(0x9D, point) == host.exchange(ec.ECDH(), peer.public_key())
    elif isinstance(host, ed25519.Ed25519PrivateKey):
        assert s.sign(0x9D, b"msg") == host.sign(b"msg")  # Ed25519 is deterministic
    else:
        assert isinstance(host, x25519.X25519PrivateKey)
        peer_x = x25519.X25519PrivateKey.generate()
        peer_bytes = peer_x.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert s.agree(0x9D, peer_bytes) == host.exchange(peer_x.public_key())


def test_import_accepts_unpadded_elements(host_keys: dict[KeyType, PrivateKey]) -> None:
    host = host_keys[KeyType.RSA1024]
    assert isinstance(host, rsa.RSAPrivateKey)
    n = host.private_numbers()
    minimal = b"".join(
        tlv(tag, value.to_bytes((value.bit_length() + 7) // 8, "big"))
        for tag, value in zip(range(1, 6), (n.p, n.q, n.dmp1, n.dmq1, n.iqmp), strict=True)
    )
    assert parse_private_key(KeyType.RSA1024, minimal).public_key() == host.public_key()


def _rsa_tlvs(p: int, q: int, dp: int, dq: int, qinv: int, half: int) -> bytes:
    values = (p, q, dp, dq, qinv)
    return b"".join(
        tlv(t, v.to_bytes(half, "big")) for t, v in zip(range(1, 6), values, strict=True)
    )


def test_import_rejects_inconsistent_rsa(host_keys: dict[KeyType, PrivateKey]) -> None:
    host = host_keys[KeyType.RSA1024]
    assert isinstance(host, rsa.RSAPrivateKey)
    n = host.private_numbers()
    p, q, dp, dq, qinv = n.p, n.q, n.dmp1, n.dmq1, n.iqmp
    cases = [
        _rsa_tlvs(p, q, dp ^ 2, dq, qinv, 64),  # wrong dP
        _rsa_tlvs(p, q, dp, dq ^ 2, qinv, 64),  # wrong dQ
        _rsa_tlvs(p, q, dp, dq, qinv ^ 1, 64),  # wrong qInv
        _rsa_tlvs(q, p, dq, dp, qinv, 64),  # swapped primes, qInv no longer q^-1 mod p
        _rsa_tlvs(p, p, dp, dp, 1, 64),  # p == q
    ]
    for data in cases:
        assert_sw(SW.INVALID_DATA, lambda data=data: parse_private_key(KeyType.RSA1024, data))  # type: ignore[misc]
    # Consistent on paper but p is composite: OpenSSL's key check must catch it.
    e = 65537
    fake_p = p + 2
    while True:
        fake_p += 2
        try:
            d = pow(e, -1, (fake_p - 1) * (q - 1))
            fake_qinv = pow(q, -1, fake_p)
        except ValueError:
            continue
        if (fake_p * q).bit_length() == 1024 and not _probably_prime(fake_p):
            break
    data = _rsa_tlvs(fake_p, q, d % (fake_p - 1), d % (q - 1), fake_qinv, 64)
    assert_sw(SW.INVALID_DATA, lambda: parse_private_key(KeyType.RSA1024, data))
    # A key of the wrong size for P1.
    assert_sw(SW.INVALID_DATA, lambda: parse_private_key(KeyType.RSA2048, import_tlvs(host)))


def _probably_prime(n: int) -> bool:
    return all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7))


def test_import_rejects_malformed_tlvs(host_keys: dict[KeyType, PrivateKey]) -> None:
    ec_data = import_tlvs(host_keys[KeyType.ECCP256])
    rsa_key = host_keys[KeyType.RSA1024]
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    n = rsa_key.private_numbers()
    no_qinv = b"".join(
        tlv(tag, value.to_bytes(64, "big"))
        for tag, value in zip(range(1, 5), (n.p, n.q, n.dmp1, n.dmq1), strict=True)
    )
    cases: list[tuple[KeyType, bytes]] = [
        (KeyType.ECCP256, b""),
        (KeyType.ECCP256, ec_data[:-1]),  # truncated TLV
        (KeyType.ECCP256, ec_data + ec_data),  # repeated tag
        (KeyType.ECCP256, ec_data + tlv(0x07, bytes(32))),  # unexpected tag
        (KeyType.ECCP256, tlv(0x07, bytes(32))),  # wrong tag for the algorithm
        (KeyType.ECCP256, tlv(0x06, bytes(32))),  # scalar 0
        (KeyType.ECCP256, tlv(0x06, b"\xff" * 32)),  # scalar >= order
        (KeyType.ECCP256, tlv(0x06, b"\x01" * 33)),  # too long
        (KeyType.RSA1024, no_qinv),  # qInv missing
        (KeyType.RSA1024, no_qinv + tlv(0x05, b"")),  # empty element
        (KeyType.RSA1024, ec_data),
        (KeyType.ED25519, tlv(0x07, bytes(31))),
        (KeyType.X25519, tlv(0x08, bytes(33))),
        (KeyType.X25519, tlv(0x07, bytes(32))),
    ]
    for key_type, data in cases:
        assert_sw(SW.INVALID_DATA, lambda k=key_type, d=data: parse_private_key(k, d))  # type: ignore[misc]
    # A 32-byte scalar is also a valid P-384 scalar (clients pad; the card need not).
    assert KeyType.of(parse_private_key(KeyType.ECCP384, ec_data)) is KeyType.ECCP384


def test_import_key_type_must_match(host_keys: dict[KeyType, PrivateKey]) -> None:
    s = MemoryKeyStore()
    host = host_keys[KeyType.ECCP256]
    assert_sw(SW.INVALID_DATA, lambda: s.import_key(0x9A, KeyType.ECCP384, host))
    assert_sw(SW.INVALID_DATA, lambda: s.import_key(0x9A, KeyType.ED25519, host))
    assert s.get(0x9A) is None


# --- encodings ----------------------------------------------------------------------------


def test_encode_public_key_templates(store: MemoryKeyStore) -> None:
    p256 = store.require(SLOT_OF[KeyType.ECCP256])
    encoded = encode_public_key(p256)
    assert encoded[:6] == bytes.fromhex("7F4943864104") and len(encoded) == 70
    assert encoded == encode_public_key(p256.public_key)
    assert encoded[5:] == p256.public_key.public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint
    )
    p384 = encode_public_key(store.require(SLOT_OF[KeyType.ECCP384]))
    assert p384[:6] == bytes.fromhex("7F4963866104") and len(p384) == 102
    for key_type in (KeyType.ED25519, KeyType.X25519):
        info = store.require(SLOT_OF[key_type])
        encoded = encode_public_key(info)
        assert encoded[:5] == bytes.fromhex("7F49228620")
        assert encoded[5:] == info.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    rsa2048 = store.require(SLOT_OF[KeyType.RSA2048])
    encoded = encode_public_key(rsa2048)
    n = rsa_public(rsa2048).public_numbers().n
    assert encoded == bytes.fromhex("7F4982010981820100") + n.to_bytes(256, "big") + bytes.fromhex(
        "8203010001"
    )
    rsa1024 = store.require(SLOT_OF[KeyType.RSA1024])
    n = rsa_public(rsa1024).public_numbers().n
    assert encode_public_key(rsa1024) == (
        bytes.fromhex("7F498188818180") + n.to_bytes(128, "big") + bytes.fromhex("8203010001")
    )
    assert encode_public_key_data(rsa1024) == encode_public_key(rsa1024)[4:]
    rsa4096 = encode_public_key(store.require(SLOT_OF[KeyType.RSA4096]))
    assert rsa4096[:9] == bytes.fromhex("7F4982020981820200")


# --- policies -----------------------------------------------------------------------------


def test_policy_resolution(fresh: MemoryKeyStore) -> None:
    expected = {
        0x9A: PinPolicy.ONCE,
        0x9C: PinPolicy.ALWAYS,
        0x9D: PinPolicy.ONCE,
        0x9E: PinPolicy.NEVER,
        0x82: PinPolicy.ONCE,
        0x95: PinPolicy.ONCE,
    }
    for slot, policy in expected.items():
        assert default_pin_policy(slot) is policy
        info = fresh.generate(slot, KeyType.ECCP256, PinPolicy.DEFAULT, TouchPolicy.DEFAULT)
        assert (info.pin_policy, info.touch_policy) == (policy, TouchPolicy.NEVER)
    info = fresh.generate(0x9E, KeyType.ED25519, PinPolicy.ALWAYS, TouchPolicy.ALWAYS)
    assert (info.pin_policy, info.touch_policy) == (PinPolicy.ALWAYS, TouchPolicy.ALWAYS)
    assert resolve_pin_policy(0x9C, PinPolicy.NEVER) is PinPolicy.NEVER
    assert resolve_touch_policy(TouchPolicy.CACHED) is TouchPolicy.CACHED
    for bio in (PinPolicy.MATCH_ONCE, PinPolicy.MATCH_ALWAYS):
        assert_sw(SW.INVALID_DATA, lambda bio=bio: fresh.generate(0x9A, KeyType.ECCP256, bio))  # type: ignore[misc]


# --- move, delete, reset ----------------------------------------------------------------


def test_move_keeps_key_and_metadata(fresh: MemoryKeyStore) -> None:
    info = fresh.generate(0x9A, KeyType.ECCP256, PinPolicy.ALWAYS, TouchPolicy.CACHED)
    fresh.move(0x9A, 0x85)
    assert fresh.get(0x9A) is None
    assert fresh.get(0x85) == info
    public_key = info.public_key
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    digest = hashlib.sha256(b"moved").digest()
    public_key.verify(fresh.sign(0x85, digest), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_move_errors(fresh: MemoryKeyStore) -> None:
    fresh.generate(0x9A, KeyType.ECCP256)
    fresh.generate(0x9C, KeyType.ED25519)
    assert_sw(SW.REFERENCE_NOT_FOUND, lambda: fresh.move(0x9D, 0x9E))
    # 6A80: yubikit's SW.INCORRECT_PARAMETERS, which ykman reports as "DEST slot is not empty".
    assert_sw(SW.INVALID_DATA, lambda: fresh.move(0x9A, 0x9C))
    assert_sw(SW.INVALID_DATA, lambda: fresh.move(0x9A, 0x9A))
    assert fresh.require(0x9A).key_type is KeyType.ECCP256
    assert fresh.require(0x9C).key_type is KeyType.ED25519


def test_delete(fresh: MemoryKeyStore) -> None:
    fresh.generate(0x9D, KeyType.X25519)
    fresh.delete(0x9D)
    assert fresh.get(0x9D) is None
    assert_sw(SW.REFERENCE_NOT_FOUND, lambda: fresh.delete(0x9D))
    assert_sw(SW.REFERENCE_NOT_FOUND, lambda: fresh.agree(0x9D, bytes(32)))


def test_generate_replaces(fresh: MemoryKeyStore) -> None:
    first = fresh.generate(0x9A, KeyType.ECCP256)
    second = fresh.generate(0x9A, KeyType.ED25519)
    assert fresh.get(0x9A) == second != first


def test_reset_keeps_only_f9(fresh: MemoryKeyStore) -> None:
    ca = create_attestation_key(fresh, serial=7)
    f9 = fresh.require(ATTESTATION_SLOT)
    for slot in (0x9A, 0x9C, 0x9D, 0x9E, 0x82, 0x95):
        fresh.generate(slot, KeyType.ECCP256)
    fresh.reset()
    for slot in (0x9A, 0x9C, 0x9D, 0x9E, 0x82, 0x95):
        assert fresh.get(slot) is None
    assert fresh.get(ATTESTATION_SLOT) == f9
    assert fresh.attestation_certificate == ca
    # Still a working attestation CA after the reset.
    fresh.generate(0x9A, KeyType.ECCP256)
    statement = x509.load_der_x509_certificate(fresh.attest(0x9A, serial=7, version=VERSION))
    statement.verify_directly_issued_by(x509.load_der_x509_certificate(ca))


def test_no_private_key_leaves_the_public_api(store: MemoryKeyStore) -> None:
    private_types = (
        rsa.RSAPrivateKey,
        ec.EllipticCurvePrivateKey,
        ed25519.Ed25519PrivateKey,
        x25519.X25519PrivateKey,
    )
    for slot in SLOT_OF.values():
        info = store.get(slot)
        assert info is not None
        assert not any(isinstance(getattr(info, f), private_types) for f in info.__slots__)
    public = [name for name in dir(store) if not name.startswith("_")]
    for name in public:
        assert not isinstance(getattr(store, name), private_types)
    assert "PRIVATE" not in repr(store)
    assert repr(store).startswith("<MemoryKeyStore slots=")


# --- attestation --------------------------------------------------------------------------


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes:
    value = cert.extensions.get_extension_for_oid(oid).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def test_attestation_ca(store: MemoryKeyStore) -> None:
    der = store.attestation_certificate
    assert der is not None
    ca = x509.load_der_x509_certificate(der)
    ca.verify_directly_issued_by(ca)  # self-signed
    cn = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == f"vsc PIV Attestation {SERIAL}"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.public_key() == store.require(ATTESTATION_SLOT).public_key
    assert store.require(ATTESTATION_SLOT).key_type is KeyType.ECCP256


@pytest.mark.parametrize("key_type", list(SLOT_OF), ids=lambda t: t.name)
def test_attestation_statement(store: MemoryKeyStore, key_type: KeyType) -> None:
    slot = SLOT_OF[key_type]
    info = store.require(slot)
    der = store.attest(slot, serial=SERIAL, version=VERSION)
    assert der[0] == 0x30
    cert = x509.load_der_x509_certificate(der)
    ca_der = store.attestation_certificate
    assert ca_der is not None
    ca = x509.load_der_x509_certificate(ca_der)
    cert.verify_directly_issued_by(ca)
    assert cert.public_key() == info.public_key
    assert cert.issuer == ca.subject
    assert cert.not_valid_before_utc == ca.not_valid_before_utc
    assert cert.not_valid_after_utc == ca.not_valid_after_utc
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == f"YubiKey PIV Attestation {slot:02x}"
    assert _ext(cert, OID_FIRMWARE_VERSION) == bytes([5, 7, 1])
    serial_der = _ext(cert, OID_SERIAL_NUMBER)
    assert serial_der[0] == 0x02 and serial_der[1] == len(serial_der) - 2
    assert int.from_bytes(serial_der[2:], "big", signed=True) == SERIAL
    assert _ext(cert, OID_USAGE_POLICY) == bytes([PinPolicy.ONCE, TouchPolicy.NEVER])
    assert _ext(cert, OID_FORM_FACTOR) == bytes([FormFactor.USB_A_KEYCHAIN])


def test_attestation_policies_and_old_firmware(fresh: MemoryKeyStore) -> None:
    create_attestation_key(fresh, serial=0x80000000)
    fresh.generate(0x9C, KeyType.ECCP384, PinPolicy.DEFAULT, TouchPolicy.CACHED)
    cert = x509.load_der_x509_certificate(
        fresh.attest(0x9C, serial=0x80000000, version=VERSION, form_factor=FormFactor.USB_C_NANO)
    )
    assert _ext(cert, OID_USAGE_POLICY) == bytes([PinPolicy.ALWAYS, TouchPolicy.CACHED])
    assert _ext(cert, OID_SERIAL_NUMBER) == bytes.fromhex("02050080000000")  # positive INTEGER
    assert _ext(cert, OID_FORM_FACTOR) == b"\x04"
    # Firmware 4 statements carry no serial or form factor (as on a YubiKey 4).
    old = x509.load_der_x509_certificate(fresh.attest(0x9C, serial=1, version=(4, 3, 5)))
    oids = {ext.oid for ext in old.extensions}
    assert OID_SERIAL_NUMBER not in oids and OID_FORM_FACTOR not in oids
    assert _ext(old, OID_FIRMWARE_VERSION) == bytes([4, 3, 5])


@pytest.mark.parametrize(
    "ca_type", [KeyType.RSA2048, KeyType.ECCP384, KeyType.ED25519], ids=lambda t: t.name
)
def test_attestation_with_other_f9_key_types(ca_type: KeyType) -> None:
    s = MemoryKeyStore()
    ca = x509.load_der_x509_certificate(create_attestation_key(s, serial=42, key_type=ca_type))
    ca.verify_directly_issued_by(ca)
    s.generate(0x9A, KeyType.ECCP256)
    cert = x509.load_der_x509_certificate(s.attest(0x9A, serial=42, version=VERSION))
    cert.verify_directly_issued_by(ca)


def test_attestation_refusals(host_keys: dict[KeyType, PrivateKey]) -> None:
    s = MemoryKeyStore()
    s.generate(0x9A, KeyType.ECCP256)
    # No F9 key yet.
    assert_sw(SW.CONDITIONS_NOT_SATISFIED, lambda: s.attest(0x9A, serial=1, version=VERSION))
    create_attestation_key(s, serial=1)
    s.import_key(0x9D, KeyType.ECCP256, host_keys[KeyType.ECCP256])
    assert_sw(SW.INVALID_DATA, lambda: s.attest(0x9D, serial=1, version=VERSION))
    assert_sw(SW.REFERENCE_NOT_FOUND, lambda: s.attest(0x9E, serial=1, version=VERSION))
    # An X25519 key in F9 cannot sign anything.
    s.generate(ATTESTATION_SLOT, KeyType.X25519)
    assert_sw(SW.CONDITIONS_NOT_SATISFIED, lambda: s.attest(0x9A, serial=1, version=VERSION))


def test_attestation_follows_a_replaced_f9(fresh: MemoryKeyStore) -> None:
    create_attestation_key(fresh, serial=5)
    fresh.generate(0x9A, KeyType.ED25519)
    # The user replaces F9 (IMPORT + PUT DATA 5FFF01 on a YubiKey).
    new_f9 = generate_private_key(KeyType.RSA2048)
    fresh.import_key(ATTESTATION_SLOT, KeyType.RSA2048, new_f9)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "My Attestation CA")])
    new_ca_der = fresh.self_sign_attestation_key(subject)
    assert fresh.attestation_certificate == new_ca_der
    new_ca = x509.load_der_x509_certificate(new_ca_der)
    cert = x509.load_der_x509_certificate(fresh.attest(0x9A, serial=5, version=VERSION))
    cert.verify_directly_issued_by(new_ca)
    assert cert.issuer == subject
    # An explicit issuer certificate wins over the remembered one.
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Object 5FFF01")])
    other_der = _store_ca_for(new_f9, other)
    cert = x509.load_der_x509_certificate(
        fresh.attest(0x9A, serial=5, version=VERSION, issuer=other_der)
    )
    assert cert.issuer == other
    cert.verify_directly_issued_by(x509.load_der_x509_certificate(other_der))
    assert_sw(SW.INVALID_DATA, lambda: fresh.set_attestation_certificate(b"\x30\x03junk"))
    assert_sw(
        SW.CONDITIONS_NOT_SATISFIED,
        lambda: fresh.attest(0x9A, serial=5, version=VERSION, issuer=b"junk"),
    )


def _store_ca_for(key: PrivateKey, subject: x509.Name) -> bytes:
    """A CA certificate made outside the store for the same F9 key."""
    assert isinstance(key, rsa.RSAPrivateKey)
    scratch: KeyStore = MemoryKeyStore()
    scratch.import_key(ATTESTATION_SLOT, KeyType.RSA2048, key)
    return scratch.self_sign_attestation_key(subject)


def test_key_type_properties() -> None:
    assert [t.bit_len for t in RSA_TYPES] == [1024, 2048, 3072, 4096]
    assert KeyType.ECCP384.bit_len == 384 and KeyType.X25519.bit_len == 256
    assert all(t.is_rsa and not t.is_ec for t in RSA_TYPES)
    assert all(t.is_ec and not t.is_rsa for t in EC_TYPES)
    assert not KeyType.ED25519.is_ec and not KeyType.X25519.is_rsa
    assert_sw(SW.INVALID_DATA, lambda: KeyType.of(ec.generate_private_key(ec.SECP521R1())))
