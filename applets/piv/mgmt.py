"""The PIV card management key (key reference 9B): algorithms and block cipher.

The management key authenticates the card administrator with a challenge
encrypted in ECB mode without padding (SP 800-73-4 Part 2 Appendix A.1).
3DES is the factory algorithm because yubico-piv-tool
2.2.0 knows no other; AES-128/192/256 are the Yubico extensions of 5.4+.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes

from vsc.sw import InvalidData

from .keys import TouchPolicy


class ManagementKeyType(IntEnum):
    """Algorithm identifiers of the management key (GA P1, metadata tag 01)."""

    TDES = 0x03
    AES128 = 0x08
    AES192 = 0x0A
    AES256 = 0x0C

    @property
    def key_length(self) -> int:
        return _KEY_LENGTHS[self]

    @property
    def block_size(self) -> int:
        return 8 if self is ManagementKeyType.TDES else 16


_KEY_LENGTHS = {
    ManagementKeyType.TDES: 24,
    ManagementKeyType.AES128: 16,
    ManagementKeyType.AES192: 24,
    ManagementKeyType.AES256: 32,
}

#: 01 02 .. 08 three times: the Yubico factory key.
DEFAULT_MANAGEMENT_KEY = bytes(range(1, 9)) * 3


@dataclass(frozen=True, slots=True)
class ManagementKey:
    """The card's management key. The key bytes never appear in a repr."""

    key_type: ManagementKeyType
    key: bytes = field(repr=False)
    touch_policy: TouchPolicy = TouchPolicy.NEVER

    def __post_init__(self) -> None:
        if len(self.key) != self.key_type.key_length:
            raise InvalidData(f"{self.key_type.name} keys have {self.key_type.key_length} bytes")
        if self.touch_policy is TouchPolicy.DEFAULT:
            raise ValueError("the management key's touch policy must be resolved")

    @property
    def is_default(self) -> bool:
        """Whether the key bytes are still the factory value (any algorithm)."""
        return hmac.compare_digest(self.key, DEFAULT_MANAGEMENT_KEY)

    def _algorithm(self) -> BlockCipherAlgorithm:
        if self.key_type is ManagementKeyType.TDES:
            return TripleDES(self.key)
        return algorithms.AES(self.key)

    def encrypt(self, block: bytes) -> bytes:
        """ECB-encrypt whole blocks (the caller checks the length)."""
        encryptor = Cipher(self._algorithm(), modes.ECB()).encryptor()
        return encryptor.update(block) + encryptor.finalize()

    def decrypt(self, block: bytes) -> bytes:
        decryptor = Cipher(self._algorithm(), modes.ECB()).decryptor()
        return decryptor.update(block) + decryptor.finalize()


FACTORY_MANAGEMENT_KEY = ManagementKey(ManagementKeyType.TDES, DEFAULT_MANAGEMENT_KEY)
