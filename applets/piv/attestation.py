"""X.509 certificates for Yubico-style PIV attestation (docs/piv.md, "Attestation").

Two certificates: the card's self-signed attestation CA for the F9 key (what
object 5FFF01 holds), and per-slot attestation statements signed by the F9
key. The statement copies its issuer and validity from the F9 certificate and
carries Yubico's extensions (arc 1.3.6.1.4.1.41482.3): ``.3`` firmware version
(3 raw bytes), ``.7`` serial number (DER INTEGER), ``.8`` PIN and touch policy
(2 raw bytes), ``.9`` form factor (1 raw byte). As on a YubiKey, ``.7`` and
``.9`` appear only for firmware 5 and later.

vsc adds one extension of its own when the card knows where the attested key
lives: :data:`OID_KEY_LOCATION` (an OID under the UUID arc 2.25, non-critical),
a DER ENUMERATED of :class:`~applets.piv.handles.KeyLocation` (1 TPM, 2 software).

This module only builds certificates; keys.py decides which key signs. A
signer held elsewhere (a :class:`~applets.piv.handles.KeyHandle`, e.g. an F9
key in a TPM) signs the to-be-signed part: the certificate is built with a
stand-in key of the same type and its signature replaced.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
from enum import IntEnum

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from .handles import KeyHandle, KeyLocation

OID_FIRMWARE_VERSION = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.3")
OID_SERIAL_NUMBER = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.7")
OID_USAGE_POLICY = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.8")
OID_FORM_FACTOR = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.9")
#: vsc's "where the private key lives" (2.25: an OID made from a random UUID, X.667).
OID_KEY_LOCATION = x509.ObjectIdentifier("2.25.93171430030303844611874124967005844207")

Signer = CertificateIssuerPrivateKeyTypes | KeyHandle

#: RFC 5280 §4.1.2.5: "no well-defined expiration date".
NO_EXPIRY = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


class FormFactor(IntEnum):
    """Values of the ``.9`` extension (the same codes as yubikit's FORM_FACTOR)."""

    UNKNOWN = 0x00
    USB_A_KEYCHAIN = 0x01
    USB_A_NANO = 0x02
    USB_C_KEYCHAIN = 0x03
    USB_C_NANO = 0x04
    USB_C_LIGHTNING = 0x05
    USB_A_BIO = 0x06
    USB_C_BIO = 0x07


def ca_subject(serial: int) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vsc PIV Attestation {serial}")])


def statement_subject(slot: int) -> x509.Name:
    # Yubico's wording, slot in lower-case hex ("YubiKey PIV Attestation 9a").
    name = f"YubiKey PIV Attestation {slot:02x}"
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def signature_hash(key: Signer) -> hashes.SHA256 | hashes.SHA384 | None:
    """The hash to sign certificates with: SHA-256 (SHA-384 for P-384), none for EdDSA."""
    if isinstance(key, KeyHandle):
        public = key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size > 256:
            return hashes.SHA384()
        return hashes.SHA256()
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def build_ca_certificate(
    key: Signer,
    subject: x509.Name,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime = NO_EXPIRY,
) -> bytes:
    """A self-signed CA certificate (DER) for the F9 attestation key."""
    if not_before is None:
        not_before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    return _sign(builder, key)


def build_statement(
    issuer_key: Signer,
    issuer: x509.Certificate | None,
    public_key: CertificatePublicKeyTypes,
    *,
    slot: int,
    serial: int,
    version: tuple[int, int, int],
    pin_policy: int,
    touch_policy: int,
    form_factor: int,
    location: KeyLocation | None = None,
) -> bytes:
    """The attestation statement (DER) for ``public_key`` in ``slot``.

    Issuer name and validity come from ``issuer`` (the F9 certificate); without
    one, a name built from ``serial`` and a validity from now to no expiry.
    """
    if issuer is not None:
        issuer_name = issuer.subject
        not_before = issuer.not_valid_before_utc
        not_after = issuer.not_valid_after_utc
    else:
        issuer_name = ca_subject(serial)
        not_before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        not_after = NO_EXPIRY
    builder = (
        x509.CertificateBuilder()
        .subject_name(statement_subject(slot))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_raw(OID_FIRMWARE_VERSION, bytes(version)), critical=False)
    )
    if version[0] >= 5:
        builder = builder.add_extension(_raw(OID_SERIAL_NUMBER, der_integer(serial)), False)
    builder = builder.add_extension(
        _raw(OID_USAGE_POLICY, bytes((pin_policy, touch_policy))), critical=False
    )
    if version[0] >= 5:
        builder = builder.add_extension(_raw(OID_FORM_FACTOR, bytes((form_factor,))), False)
    if location is not None:
        enumerated = b"\x0a\x01" + bytes((location,))
        builder = builder.add_extension(_raw(OID_KEY_LOCATION, enumerated), critical=False)
    return _sign(builder, issuer_key)


def der_integer(value: int) -> bytes:
    """DER INTEGER (tag 02) of a non-negative ``value``, shortest two's complement."""
    if value < 0:
        raise ValueError("negative serial")
    # bit_length // 8 + 1 bytes is always the shortest form with a clear sign bit.
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    if len(body) > 0x7F:
        raise ValueError("integer too large")
    return b"\x02" + bytes((len(body),)) + body


def _raw(oid: x509.ObjectIdentifier, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(oid, value)


def _sign(builder: x509.CertificateBuilder, key: Signer) -> bytes:
    if isinstance(key, KeyHandle):
        return _sign_elsewhere(builder, key)
    return builder.sign(key, signature_hash(key)).public_bytes(Encoding.DER)


_DIGEST_INFO_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")


def _sign_elsewhere(builder: x509.CertificateBuilder, key: KeyHandle) -> bytes:
    """Build with a stand-in key of the same type, then let ``key`` sign the TBS part."""
    public = key.public_key()
    algorithm = signature_hash(key)
    assert algorithm is not None
    stand_in = _stand_in(public)
    cert = asn1_x509.Certificate.load(builder.sign(stand_in, algorithm).public_bytes(Encoding.DER))
    digest = hashlib.new(algorithm.name, cert["tbs_certificate"].dump()).digest()
    if isinstance(public, rsa.RSAPublicKey):
        k = public.key_size // 8
        info = _DIGEST_INFO_SHA256 + digest
        signature = key.raw_rsa(b"\x00\x01" + b"\xff" * (k - len(info) - 3) + b"\x00" + info)
    else:
        signature = key.ecdsa(digest)
    cert["signature_value"] = signature
    der: bytes = cert.dump()  # the TBS part keeps its bytes: only the signature is new
    return der


def _stand_in(
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
) -> CertificateIssuerPrivateKeyTypes:
    """A throwaway key of ``public``'s type, only for the certificate's layout."""
    if isinstance(public, rsa.RSAPublicKey):
        return _rsa_stand_in(public.key_size)
    return ec.generate_private_key(public.curve)


@functools.cache
def _rsa_stand_in(bits: int) -> rsa.RSAPrivateKey:
    # RSA generation is slow; the key signs nothing that is kept, so one per size will do.
    return rsa.generate_private_key(65537, bits)
