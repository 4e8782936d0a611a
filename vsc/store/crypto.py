"""The store's symmetric crypto: AES-256-GCM envelopes, X25519 sealing, constant-time checks.

Records are encrypted under the card key (sealed by the backend) or to a
binding's X25519 public key (its private half sealed under a PIN-derived
authorisation), always with associated data naming the card and the record,
so a blob moved to another record or another card fails to decrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

KEY_SIZE = 32
NONCE_SIZE = 12


class DecryptionFailed(Exception):
    """Wrong key, wrong associated data, or a modified blob."""


def random_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare secrets without leaking, through timing, where they first differ."""
    return hmac.compare_digest(a, b)


def hkdf(key: bytes, *, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(key)


def verifier(salt: bytes, label: bytes, secret: bytes) -> bytes:
    """A keyed hash to store in place of a secret, checked with :func:`constant_time_equal`."""
    return hmac.new(salt, label + b"\0" + secret, hashlib.sha256).digest()


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``nonce || AES-256-GCM(plaintext)``; a random 96-bit nonce per message."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < NONCE_SIZE + 16:
        raise DecryptionFailed("blob too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
    except InvalidTag:
        raise DecryptionFailed("authentication tag mismatch") from None


def x25519_public(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519_generate() -> bytes:
    """A fresh X25519 private key as 32 raw bytes."""
    return x25519_private_bytes(X25519PrivateKey.generate())


def x25519_private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def seal_to(public: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt to an X25519 public key (ephemeral ECDH + HKDF + AES-GCM): no secret needed."""
    ephemeral = X25519PrivateKey.generate()
    epub = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public))
    key = hkdf(shared, salt=epub + public, info=b"vsc/seal-to/v1\0" + aad)
    return epub + encrypt(key, plaintext, aad)


def open_sealed(private: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`seal_to` with the private key."""
    if len(blob) < 32:
        raise DecryptionFailed("blob too short")
    epub, rest = blob[:32], blob[32:]
    key_ = X25519PrivateKey.from_private_bytes(private)
    public = key_.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        shared = key_.exchange(X25519PublicKey.from_public_bytes(epub))
    except ValueError:
        raise DecryptionFailed("bad ephemeral key") from None
    key = hkdf(shared, salt=epub + public, info=b"vsc/seal-to/v1\0" + aad)
    return decrypt(key, rest, aad)
