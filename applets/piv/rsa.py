"""The raw RSA private operation PIV's GENERAL AUTHENTICATE needs.

The host pads; the card computes ``c^d mod n`` on a k-byte block and returns
k bytes (docs/piv.md, "Commands", GA). ``cryptography`` has no unpadded private
operation, so there are two paths to the same number:

* **Fast path.** A block that is exactly a PKCS#1 v1.5 type-1 signature block
  ``00 01 FF..FF 00 DigestInfo(hash)`` for SHA-1/224/256/384/512 is handed to
  OpenSSL as ``sign(hash, PKCS1v15(), Prehashed(alg))``. PKCS#1 v1.5 signing is
  deterministic, so the result is the raw operation on that block, at OpenSSL
  speed. This is what OpenSC, libykpiv and ykman send for signatures.
* **Raw path.** Everything else (decryption blocks, PSS, arbitrary blocks):
  CRT exponentiation with base blinding (random r; work on ``c·r^e``, unblind
  with ``r⁻¹``), so the timing of the secret exponentiation does not depend on
  the host-chosen input. ``gmpy2`` (optional) makes it ~10x faster and its
  ``powmod_sec`` is constant-time; without it Python's ``pow`` is used. The
  result is checked with the public exponent before it leaves (a faulty CRT
  half would otherwise leak a factor of n).
"""

from __future__ import annotations

import hmac
import importlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from vsc.sw import SW, ApduError, InvalidData

from . import openssl_rsa

PowMod = Callable[[int, int, int], int]


def _load_accelerator() -> tuple[PowMod, PowMod] | None:
    """``(powmod, powmod_sec)`` from gmpy2 when it is installed."""
    try:
        gmpy2 = importlib.import_module("gmpy2")
    except ImportError:
        return None
    fast = cast(Callable[[int, int, int], object], gmpy2.powmod)
    sec = cast(Callable[[int, int, int], object], gmpy2.powmod_sec)

    def powmod(base: int, exp: int, mod: int) -> int:
        return int(cast(int, fast(base, exp, mod)))

    def powmod_sec(base: int, exp: int, mod: int) -> int:
        return int(cast(int, sec(base, exp, mod)))

    return powmod, powmod_sec


_ACCEL = _load_accelerator()
#: True when gmpy2 is importable and used for the raw path.
ACCELERATED = _ACCEL is not None

# DigestInfo prefixes (RFC 8017 §9.2 note 1) of the hashes the fast path knows.
_DIGEST_INFO: dict[bytes, hashes.HashAlgorithm] = {
    bytes.fromhex("3021300906052b0e03021a05000414"): hashes.SHA1(),
    bytes.fromhex("302d300d06096086480165030402040500041c"): hashes.SHA224(),
    bytes.fromhex("3031300d060960864801650304020105000420"): hashes.SHA256(),
    bytes.fromhex("3041300d060960864801650304020205000430"): hashes.SHA384(),
    bytes.fromhex("3051300d060960864801650304020305000440"): hashes.SHA512(),
}


@dataclass(frozen=True, slots=True)
class RsaCrtKey:
    """The CRT form of an RSA private key (secret fields kept out of repr)."""

    n: int
    e: int
    p: int = field(repr=False)
    q: int = field(repr=False)
    dp: int = field(repr=False)
    dq: int = field(repr=False)
    qinv: int = field(repr=False)

    @classmethod
    def from_private_key(cls, key: rsa.RSAPrivateKey) -> RsaCrtKey:
        numbers = key.private_numbers()
        public = numbers.public_numbers
        return cls(
            n=public.n,
            e=public.e,
            p=numbers.p,
            q=numbers.q,
            dp=numbers.dmp1,
            dq=numbers.dmq1,
            qinv=numbers.iqmp,
        )

    @property
    def size(self) -> int:
        """k, the modulus length in bytes."""
        return (self.n.bit_length() + 7) // 8


def check_block(n: int, block: bytes) -> int:
    """The block as an integer; ``6A80`` unless it is k bytes and below n."""
    k = (n.bit_length() + 7) // 8
    if len(block) != k:
        raise InvalidData(f"RSA input is {len(block)} bytes, modulus is {k}")
    value = int.from_bytes(block, "big")
    if value >= n:
        raise InvalidData("RSA input not below the modulus")
    return value


def private_op(key: rsa.RSAPrivateKey, block: bytes) -> bytes:
    """``block^d mod n`` as k bytes; ``6A80`` for a wrong length or block >= n."""
    k = (key.key_size + 7) // 8
    # A k-byte block starting 00 01 is below n (whose top bit is in its first
    # byte), so the fast path needs neither n nor the CRT numbers (~6 us).
    if len(block) == k:
        signature = _pkcs1v15_fast_path(key, k, block)
        if signature is not None:
            return signature
    raw = openssl_rsa.private_op(key, block)
    if raw is not None:
        return raw
    crt = RsaCrtKey.from_private_key(key)
    check_block(crt.n, block)
    return blinded_private_op(crt, block)


def blinded_private_op(crt: RsaCrtKey, block: bytes) -> bytes:
    """The raw path alone: blinded CRT exponentiation, verified before return."""
    c = check_block(crt.n, block)
    powmod, powmod_sec = _ACCEL if _ACCEL is not None else (pow, pow)
    n = crt.n
    r, r_inv = _blinding_pair(n)
    blinded = c * powmod(r, crt.e, n) % n
    m1 = powmod_sec(blinded % crt.p, crt.dp, crt.p)
    m2 = powmod_sec(blinded % crt.q, crt.dq, crt.q)
    h = crt.qinv * (m1 - m2) % crt.p
    m = (m2 + h * crt.q) * r_inv % n
    result = m.to_bytes(crt.size, "big")
    # Fault check: a wrong CRT half here would reveal gcd(m^e - c, n) = p or q.
    if not hmac.compare_digest(powmod(m, crt.e, n).to_bytes(crt.size, "big"), block):
        raise ApduError(SW.EXECUTION_ERROR, "RSA private operation self-check failed")
    return result


def _blinding_pair(n: int) -> tuple[int, int]:
    while True:
        r = secrets.randbelow(n - 2) + 2
        try:
            # gmpy2 inverts in ~9 us where Python's pow takes ~300 us.
            return r, (_ACCEL[0] if _ACCEL is not None else pow)(r, -1, n)
        except (ValueError, ZeroDivisionError):  # r shares a factor with n: astronomically rare
            continue


def _pkcs1v15_fast_path(key: rsa.RSAPrivateKey, k: int, block: bytes) -> bytes | None:
    """OpenSSL's signature when ``block`` is exactly a PKCS#1 v1.5 type-1 block."""
    if block[:2] != b"\x00\x01":
        return None
    separator = block.find(b"\x00", 2)
    if separator < 10 or block[2:separator] != b"\xff" * (separator - 2):
        return None  # PKCS#1 wants at least 8 bytes of FF padding
    digest_info = block[separator + 1 :]
    for prefix, algorithm in _DIGEST_INFO.items():
        if (
            digest_info.startswith(prefix)
            and len(digest_info) == len(prefix) + algorithm.digest_size
        ):
            digest = digest_info[len(prefix) :]
            try:
                signature = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(algorithm))
            except ValueError:
                return None
            return signature.rjust(k, b"\x00")
    return None
