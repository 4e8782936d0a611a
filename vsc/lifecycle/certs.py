"""Certificates and keys for provisioning: files in, card-signed certificates and requests out.

* :func:`load_key_file` reads a server-generated key: PKCS#8 (PEM or DER,
  encrypted or not; traditional PEM too) or PKCS#12 (with its certificate).
* :func:`load_certificate` reads a certificate (PEM or DER).
* :func:`self_signed` and :func:`signing_request` make an X.509 certificate
  or a PKCS#10 request for a key *on the card*: the card signs (through
  :meth:`applets.piv.keys.KeyStore.sign`, the operation GENERAL AUTHENTICATE
  performs), the private key never leaves the key store. The structures are
  assembled with asn1crypto, since cryptography signs only with keys it holds.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from asn1crypto import algos as asn1_algos
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_private_key,
    load_pem_private_key,
    pkcs12,
)

from applets.piv.keys import KeyStore, KeyType, PrivateKey

__all__ = [
    "KeyMaterial",
    "ProvisioningError",
    "load_certificate",
    "load_key_file",
    "parse_subject",
    "self_signed",
    "signing_request",
]

# DER DigestInfo prefixes (RFC 8017 §9.2 note 1).
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
}


class ProvisioningError(ValueError):
    """A key or certificate file that cannot be used (the message says why)."""


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """A private key and, from a PKCS#12 file, its certificate."""

    private_key: PrivateKey
    certificate: x509.Certificate | None


def _check_key(key: object, path: Path) -> PrivateKey:
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | x25519.X25519PrivateKey,
    ):
        raise ProvisioningError(f"{path}: a {type(key).__name__} cannot go on a PIV card")
    try:
        KeyType.of(key)
    except ValueError as e:
        raise ProvisioningError(f"{path}: {e}") from None
    return key


def load_key_file(path: Path, password: bytes | None = None) -> KeyMaterial:
    """A PKCS#8 or PKCS#12 file (by content, not by name)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProvisioningError(f"cannot read {path}: {e.strerror}") from None
    if b"-----BEGIN" in data:
        try:
            key = load_pem_private_key(data, password)
        except TypeError:
            raise ProvisioningError(f"{path} is encrypted: give its password") from None
        except ValueError as e:
            raise ProvisioningError(f"{path}: not a usable PEM private key ({e})") from None
        return KeyMaterial(_check_key(key, path), _pem_certificate(data))
    try:
        return KeyMaterial(_check_key(load_der_private_key(data, password), path), None)
    except TypeError:
        raise ProvisioningError(f"{path} is encrypted: give its password") from None
    except ValueError:
        pass  # not PKCS#8 DER: try PKCS#12
    try:
        p12_key, cert, _ = pkcs12.load_key_and_certificates(data, password)
    except ValueError as e:
        reason = "wrong password?" if password else "encrypted? give its password"
        raise ProvisioningError(
            f"{path}: neither PKCS#8 nor a readable PKCS#12 ({reason}: {e})"
        ) from None
    if p12_key is None:
        raise ProvisioningError(f"{path}: the PKCS#12 file holds no private key")
    return KeyMaterial(_check_key(p12_key, path), cert)


def _pem_certificate(data: bytes) -> x509.Certificate | None:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return None
    return x509.load_pem_x509_certificate(data)


def load_certificate(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProvisioningError(f"cannot read {path}: {e.strerror}") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise ProvisioningError(f"{path}: not a certificate ({e})") from None


def parse_subject(text: str) -> x509.Name:
    """``CN=alice,O=Example`` (RFC 4514); a bare word is a common name."""
    if "=" not in text:
        return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, text)])
    try:
        return x509.Name.from_rfc4514_string(text)
    except ValueError as e:
        raise ProvisioningError(f"bad subject {text!r}: {e}") from None


class _PublicKey(Protocol):
    def public_bytes(self, encoding: Encoding, format: PublicFormat) -> bytes: ...


def spki(key: _PublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo: how keys and certificates are matched."""
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# -- signing on the card ------------------------------------------------------------------


def _algorithm(key_type: KeyType) -> tuple[str, str | None]:
    """(asn1crypto signature algorithm, hash) for a card key."""
    if key_type.is_rsa:
        return "sha256_rsa", "sha256"
    if key_type is KeyType.ECCP256:
        return "sha256_ecdsa", "sha256"
    if key_type is KeyType.ECCP384:
        return "sha384_ecdsa", "sha384"
    if key_type is KeyType.ED25519:
        return "ed25519", None
    raise ProvisioningError(f"a {key_type.name} key cannot sign")


def _card_sign(keys: KeyStore, slot: int, key_type: KeyType, message: bytes) -> bytes:
    """What GENERAL AUTHENTICATE computes, from the host's side of the padding."""
    _, hash_name = _algorithm(key_type)
    if hash_name is None:  # Ed25519 signs the message itself
        return keys.sign(slot, message, key_type=key_type)
    digest = hashlib.new(hash_name, message).digest()
    if not key_type.is_rsa:
        return keys.sign(slot, digest, key_type=key_type)
    size = key_type.bit_len // 8
    info = _DIGEST_INFO[hash_name] + digest
    block = b"\x00\x01" + b"\xff" * (size - len(info) - 3) + b"\x00" + info
    return keys.sign(slot, block, key_type=key_type)


def _signer(keys: KeyStore, slot: int) -> tuple[KeyType, bytes, object]:
    info = keys.get(slot)
    if info is None:
        raise ProvisioningError(f"slot {slot:02X} holds no key")
    name, _ = _algorithm(info.key_type)
    return (
        info.key_type,
        spki(info.public_key),
        asn1_algos.SignedDigestAlgorithm({"algorithm": name}),
    )


def _time(moment: datetime.datetime) -> object:
    kind = "utc_time" if moment.year < 2050 else "general_time"
    return asn1_x509.Time({kind: moment})


def self_signed(keys: KeyStore, slot: int, subject: x509.Name, *, days: int = 365) -> bytes:
    """A self-signed certificate (DER) for the key in ``slot``, signed by the card.

    Needs the key usable: for a PIN-protected slot of a stored card, the PIN
    binding unlocked.
    """
    key_type, public, algorithm = _signer(keys, slot)
    name = asn1_x509.Name.load(subject.public_bytes())
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    tbs = asn1_x509.TbsCertificate(
        {
            "version": "v3",
            "serial_number": secrets.randbits(126) | 1 << 126,
            "signature": algorithm,
            "issuer": name,
            "validity": {
                "not_before": _time(now - datetime.timedelta(minutes=5)),
                "not_after": _time(now + datetime.timedelta(days=days)),
            },
            "subject": name,
            "subject_public_key_info": asn1_keys.PublicKeyInfo.load(public),
            "extensions": [
                {"extn_id": "basic_constraints", "critical": True, "extn_value": {"ca": False}},
                {
                    "extn_id": "key_usage",
                    "critical": True,
                    "extn_value": {"digital_signature"},
                },
            ],
        }
    )
    signature = _card_sign(keys, slot, key_type, tbs.dump())
    certificate = asn1_x509.Certificate(
        {"tbs_certificate": tbs, "signature_algorithm": algorithm, "signature_value": signature}
    )
    der: bytes = certificate.dump()
    return der


def signing_request(keys: KeyStore, slot: int, subject: x509.Name) -> bytes:
    """A PKCS#10 request (DER) for the key in ``slot``, signed by the card."""
    key_type, public, algorithm = _signer(keys, slot)
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": asn1_x509.Name.load(subject.public_bytes()),
            "subject_pk_info": asn1_keys.PublicKeyInfo.load(public),
            "attributes": [],
        }
    )
    signature = _card_sign(keys, slot, key_type, info.dump())
    request = asn1_csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": algorithm,
            "signature": signature,
        }
    )
    der: bytes = request.dump()
    return der
