"""Raw RSA (no padding) through the system's OpenSSL 3, when it is there.

``cryptography`` offers no unpadded RSA private operation, and the pure
CRT path in :mod:`applets.piv.rsa` costs ~3x OpenSSL's signature even with
gmpy2. libcrypto's ``EVP_PKEY_decrypt`` with ``RSA_NO_PADDING`` is the same
operation OpenSSL uses for signatures: blinded, CRT, and checked against the
public key before it returns. It is loaded through ctypes from the system
library (``cryptography`` keeps its own OpenSSL private), and everything
falls back to :mod:`applets.piv.rsa` when it is missing.

Contexts are cached per key object (a small LRU: one ``EVP_PKEY`` and its
context each, freed when evicted); the cache is shared by cards in other
threads, hence the lock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections import OrderedDict

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vsc.sw import InvalidData

_RSA_NO_PADDING = 3
_CACHE_SIZE = 16


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        if lib.OpenSSL_version_num() < 0x30000000:
            return None  # EVP_PKEY_CTX_set_rsa_padding is a function from 3.0 on
        pp = ctypes.POINTER(ctypes.c_char_p)
        lib.d2i_AutoPrivateKey.restype = ctypes.c_void_p
        lib.d2i_AutoPrivateKey.argtypes = [ctypes.c_void_p, pp, ctypes.c_long]
        lib.EVP_PKEY_free.argtypes = [ctypes.c_void_p]
        lib.EVP_PKEY_CTX_new.restype = ctypes.c_void_p
        lib.EVP_PKEY_CTX_new.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.EVP_PKEY_CTX_free.argtypes = [ctypes.c_void_p]
        lib.EVP_PKEY_decrypt_init.argtypes = [ctypes.c_void_p]
        lib.EVP_PKEY_CTX_set_rsa_padding.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.EVP_PKEY_decrypt.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        lib.ERR_clear_error.argtypes = []
    except (OSError, AttributeError):
        return None
    return lib


_LIB = _load()
#: True when raw RSA runs in the system's OpenSSL.
AVAILABLE = _LIB is not None


class _Context:
    """An EVP_PKEY and its decrypt context, set to no padding."""

    __slots__ = ("ctx", "key", "pkey")

    def __init__(self, lib: ctypes.CDLL, key: rsa.RSAPrivateKey) -> None:
        self.key = key  # keeps id(key) unique while cached
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cursor = ctypes.c_char_p(der)
        self.pkey = lib.d2i_AutoPrivateKey(None, ctypes.byref(cursor), len(der))
        self.ctx = lib.EVP_PKEY_CTX_new(self.pkey, None) if self.pkey else None
        if (
            not self.ctx
            or lib.EVP_PKEY_decrypt_init(self.ctx) != 1
            or lib.EVP_PKEY_CTX_set_rsa_padding(self.ctx, _RSA_NO_PADDING) != 1
        ):
            self.free(lib)
            raise RuntimeError("OpenSSL refused the RSA key")

    def free(self, lib: ctypes.CDLL) -> None:
        if self.ctx:
            lib.EVP_PKEY_CTX_free(self.ctx)
        if self.pkey:
            lib.EVP_PKEY_free(self.pkey)
        self.ctx = self.pkey = None


_cache: OrderedDict[int, _Context] = OrderedDict()
_lock = threading.Lock()


def _context(lib: ctypes.CDLL, key: rsa.RSAPrivateKey) -> _Context:
    entry = _cache.get(id(key))
    if entry is not None and entry.key is key:
        _cache.move_to_end(id(key))
        return entry
    entry = _Context(lib, key)
    _cache[id(key)] = entry
    while len(_cache) > _CACHE_SIZE:
        _, old = _cache.popitem(last=False)
        old.free(lib)
    return entry


def private_op(key: rsa.RSAPrivateKey, block: bytes) -> bytes | None:
    """``block^d mod n`` as k bytes through OpenSSL; None when OpenSSL is not there.

    ``6A80`` for a block of the wrong length or not below n.
    """
    lib = _LIB
    if lib is None:
        return None
    k = (key.key_size + 7) // 8
    if len(block) != k:
        raise InvalidData(f"RSA input is {len(block)} bytes, modulus is {k}")
    out = ctypes.create_string_buffer(k)
    size = ctypes.c_size_t(k)
    with _lock:
        try:
            entry = _context(lib, key)
        except RuntimeError:
            return None
        ok = lib.EVP_PKEY_decrypt(entry.ctx, out, ctypes.byref(size), block, k) == 1
        if not ok:
            lib.ERR_clear_error()
    if not ok:
        raise InvalidData("RSA input not below the modulus")  # the only input OpenSSL refuses
    return out.raw[: size.value].rjust(k, b"\x00")
