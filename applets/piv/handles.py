"""Private keys held outside this process (a TPM): what the card may ask of them.

A :class:`KeyHandle` stands where a ``cryptography`` private key would: the
key store hands it to the operations of :mod:`applets.piv.keys` and to the
attestation signer, which call its three primitives. It never yields key
material; whoever implements it (``vsc.store``'s TPM keys) decides where the
private key lives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import IntEnum

from cryptography.hazmat.primitives.asymmetric import ec, rsa


class KeyLocation(IntEnum):
    """Where a key's private part lives; the value of GET METADATA tag C0 (a vsc extension)."""

    TPM = 0x01
    SOFTWARE = 0x02


class KeyHandle(ABC):
    """A private RSA or EC key used through its holder; no private material here."""

    @abstractmethod
    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The public half (what the key store recorded for the slot)."""

    @abstractmethod
    def raw_rsa(self, block: bytes) -> bytes:
        """The raw RSA private operation on a k-byte block; ``6A80`` if it is not < n."""

    @abstractmethod
    def ecdsa(self, digest: bytes) -> bytes:
        """A DER ``Ecdsa-Sig-Value`` over a field-size digest."""

    @abstractmethod
    def ecdh(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        """The X coordinate of the shared point (field size)."""
