"""Raw RSA through the system's OpenSSL equals the blinded CRT path, and refuses what it must."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from applets.piv import openssl_rsa
from applets.piv.rsa import RsaCrtKey, blinded_private_op
from vsc.sw import SW, ApduError

pytestmark = pytest.mark.skipif(not openssl_rsa.AVAILABLE, reason="no system libcrypto 3")


@pytest.fixture(scope="module", params=[1024, 2048, 3072])
def key(request: pytest.FixtureRequest) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, request.param)


def below_n(key: rsa.RSAPrivateKey) -> bytes:
    n = key.public_key().public_numbers().n
    k = (key.key_size + 7) // 8
    return (secrets.randbelow(n)).to_bytes(k, "big")


def test_equals_the_blinded_crt_path(key: rsa.RSAPrivateKey) -> None:
    crt = RsaCrtKey.from_private_key(key)
    for block in [below_n(key) for _ in range(5)] + [bytes((key.key_size + 7) // 8)]:
        assert openssl_rsa.private_op(key, block) == blinded_private_op(crt, block)


def test_result_inverts_with_the_public_exponent(key: rsa.RSAPrivateKey) -> None:
    numbers = key.public_key().public_numbers()
    block = below_n(key)
    out = openssl_rsa.private_op(key, block)
    assert out is not None and len(out) == len(block)
    assert pow(int.from_bytes(out, "big"), numbers.e, numbers.n) == int.from_bytes(block, "big")


def test_refuses_blocks_not_below_n_or_of_the_wrong_length(key: rsa.RSAPrivateKey) -> None:
    n = key.public_key().public_numbers().n
    k = (key.key_size + 7) // 8
    for block in (n.to_bytes(k, "big"), b"\xff" * k, below_n(key)[1:], b"\x00" + below_n(key)):
        with pytest.raises(ApduError) as e:
            openssl_rsa.private_op(key, block)
        assert e.value.sw == SW.INVALID_DATA
    assert openssl_rsa.private_op(key, below_n(key)) is not None  # still usable afterwards


def test_many_keys_through_the_cache() -> None:
    keys = [rsa.generate_private_key(65537, 1024) for _ in range(openssl_rsa._CACHE_SIZE + 4)]
    for _ in range(2):  # the second round finds the first keys evicted and freed
        for k in keys:
            crt = RsaCrtKey.from_private_key(k)
            block = below_n(k)
            assert openssl_rsa.private_op(k, block) == blinded_private_op(crt, block)
    assert len(openssl_rsa._cache) == openssl_rsa._CACHE_SIZE
