"""The cryptography of the GIDS card edge that is not a key store's private operation.

* The administrator key: 3DES-192 (what tpmvscmgr and gids-tool issue) or
  AES-128/256, told apart by length (24, 16, 32 bytes). The protocol
  encrypts in CBC mode with a zero IV and no padding (GIDS §9.9.2 says ECB;
  the Windows minidriver and OpenSC use CBC, which is the same for the
  one-block answer of external authentication).
* RSA paddings the card adds or removes around the raw private operation
  (:func:`applets.piv.rsa.private_op`): PKCS#1 v1.5 type 1 for signatures,
  type 2 and OAEP (SHA-1, empty label, what Windows uses) for decipherment.

Unpadding answers ``6A80`` on a malformed block. That is a padding oracle
only for a caller who already may decipher (PERFORM SECURITY OPERATION needs
the key's condition, the PIN), so it tells nobody anything new.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes

from vsc.sw import InvalidData

__all__ = [
    "ADMIN_KEY_LENGTHS",
    "admin_block_size",
    "admin_decrypt",
    "admin_encrypt",
    "oaep_decode",
    "pkcs1_type1",
    "pkcs1_type2_decode",
]

#: Administrator key lengths and their cipher.
ADMIN_KEY_LENGTHS = {24: "3DES", 16: "AES-128", 32: "AES-256"}


def _cipher(key: bytes) -> BlockCipherAlgorithm:
    if len(key) == 24:
        return TripleDES(key)
    if len(key) in (16, 32):
        return algorithms.AES(key)
    raise InvalidData(f"no administrator key algorithm has {len(key)}-byte keys")


def admin_block_size(key: bytes) -> int:
    return 8 if len(key) == 24 else 16


def admin_encrypt(key: bytes, data: bytes) -> bytes:
    """CBC, zero IV, whole blocks (the caller sizes ``data``)."""
    algorithm = _cipher(key)
    encryptor = Cipher(algorithm, modes.CBC(bytes(algorithm.block_size // 8))).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def admin_decrypt(key: bytes, data: bytes) -> bytes:
    algorithm = _cipher(key)
    if not data or len(data) % (algorithm.block_size // 8):
        raise InvalidData("administrator cryptogram is not whole blocks")
    decryptor = Cipher(algorithm, modes.CBC(bytes(algorithm.block_size // 8))).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def pkcs1_type1(data: bytes, k: int) -> bytes:
    """``00 01 FF.. 00 data``: the signature block the card pads for the host (RFC 8017 §9.2)."""
    if len(data) > k - 11:
        raise InvalidData(f"{len(data)} bytes do not fit a PKCS#1 block of {k}")
    return b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data


def pkcs1_type2_decode(block: bytes) -> bytes:
    """The message of an ``00 02 <8+ non-zero> 00 M`` block (RFC 8017 §7.2.2)."""
    separator = block.find(b"\x00", 2)
    if block[:2] != b"\x00\x02" or separator < 10:
        raise InvalidData("decryption error")
    return block[separator + 1 :]


def _mgf1(seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha1(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def oaep_decode(block: bytes) -> bytes:
    """EME-OAEP decoding with SHA-1 and an empty label (RFC 8017 §7.1.2)."""
    h = 20
    if len(block) < 2 * h + 2:
        raise InvalidData("decryption error")
    masked_seed, masked_db = block[1 : 1 + h], block[1 + h :]
    seed = bytes(a ^ b for a, b in zip(masked_seed, _mgf1(masked_db, h), strict=True))
    db = bytes(a ^ b for a, b in zip(masked_db, _mgf1(seed, len(masked_db)), strict=True))
    label_ok = hmac.compare_digest(db[:h], hashlib.sha1(b"").digest())
    separator = db.find(b"\x01", h)
    padding_ok = separator >= 0 and not any(db[h:separator])
    if not (label_ok and padding_ok and block[0] == 0):
        raise InvalidData("decryption error")
    return db[separator + 1 :]
