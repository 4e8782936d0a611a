"""Benchmark fixtures: provisioned PIV cards, key material and the APDUs a client sends.

Keys are made once per run (:func:`key_set`) and put into cards through the
key store's public API (``import_key``), certificates and the CHUID through
:class:`~applets.piv.state.PivData`, so a card is ready in milliseconds and
every benchmark sees the same card. The APDUs are the bytes OpenSC,
yubico-piv-tool and ykman send (docs/piv.md, "Commands").
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass
from functools import cache

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.x509.oid import NameOID

from applets.echo import ECHO_AID, EchoApplet
from applets.piv import PivApplet
from applets.piv.keys import KeyType, PinPolicy, TouchPolicy
from applets.piv.objects import ObjectId, certificate_value
from vsc import Card
from vsc.tlv import encode_tlv

PIN = b"123456\xff\xff"
MANAGEMENT_KEY = bytes(range(1, 9)) * 3  # the factory 3DES key

# Slots used by the benchmarks (PIN policy ONCE: one VERIFY unlocks them all).
SLOT_P256 = 0x9A
SLOT_RSA = 0x9D
SLOT_P384 = 0x82
SLOT_ED25519 = 0x83

# A realistic CHUID (FASC-N, GUID, expiry, empty signature): 61 bytes.
CHUID = bytes.fromhex(
    "3019d4e739da739ced39ce739d836858210842108421c84210c3eb"
    "3410" + "11" * 16 + "350832303530303130313e00fe00"
)
CERT_SIZE = 2048

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class KeySet:
    """One key per benchmarked algorithm, plus their DER forms for re-import."""

    p256: ec.EllipticCurvePrivateKey
    p384: ec.EllipticCurvePrivateKey
    ed25519: ed25519.Ed25519PrivateKey
    rsa2048: rsa.RSAPrivateKey
    certificate: bytes  # DER, CERT_SIZE bytes, for the P-256 key in 9A

    def der(self) -> dict[KeyType, bytes]:
        """PKCS#8 DER of each key (loading it gives a fresh, unshared key object)."""
        keys: dict[KeyType, PrivateKey] = {
            KeyType.ECCP256: self.p256,
            KeyType.ECCP384: self.p384,
            KeyType.ED25519: self.ed25519,
            KeyType.RSA2048: self.rsa2048,
        }
        return {
            kt: k.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            for kt, k in keys.items()
        }


def _certificate(key: ec.EllipticCurvePrivateKey, size: int) -> bytes:
    """A self-signed certificate padded to exactly ``size`` DER bytes.

    Real certificates with SANs and policies are 1-2 KB; an opaque extension
    takes up the difference (the card never parses certificates).
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vsc benchmark")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    filler_oid = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")

    def build(filler: int) -> bytes:
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650))
            .add_extension(x509.UnrecognizedExtension(filler_oid, b"\x00" * filler), False)
            .sign(key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)

    filler = size - len(build(0))
    # Length-of-length changes and the ECDSA signature's variable size: nudge until exact.
    for _ in range(64):
        der = build(max(0, filler))
        if len(der) == size:
            return der
        filler += size - len(der)
    return der


@cache
def key_set() -> KeySet:
    """The run's keys (RSA generation takes ~0.1-1 s, so once)."""
    p256 = ec.generate_private_key(ec.SECP256R1())
    return KeySet(
        p256=p256,
        p384=ec.generate_private_key(ec.SECP384R1()),
        ed25519=ed25519.Ed25519PrivateKey.generate(),
        rsa2048=rsa.generate_private_key(65537, 2048),
        certificate=_certificate(p256, CERT_SIZE),
    )


def provision(applet: PivApplet, keys: KeySet, *, fresh_keys: bool = False) -> None:
    """Put the benchmark keys, the certificate and a CHUID on ``applet``.

    ``fresh_keys`` loads every key from DER, so the card owns its own key
    objects (what a real card store would hold; used for memory figures).
    """
    material: dict[KeyType, PrivateKey] = {
        KeyType.ECCP256: keys.p256,
        KeyType.ECCP384: keys.p384,
        KeyType.ED25519: keys.ed25519,
        KeyType.RSA2048: keys.rsa2048,
    }
    if fresh_keys:
        for key_type, der in keys.der().items():
            # Our own keys: skip RSA's primality re-check (~30 ms per key).
            loaded = serialization.load_der_private_key(
                der, None, unsafe_skip_rsa_key_validation=True
            )
            assert isinstance(
                loaded,
                ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
            )
            material[key_type] = loaded
    slots = {
        KeyType.ECCP256: SLOT_P256,
        KeyType.ECCP384: SLOT_P384,
        KeyType.ED25519: SLOT_ED25519,
        KeyType.RSA2048: SLOT_RSA,
    }
    for key_type, key in material.items():
        applet.keys.import_key(slots[key_type], key_type, key, PinPolicy.ONCE, TouchPolicy.NEVER)
    applet.data.put_object(ObjectId.AUTHENTICATION, certificate_value(keys.certificate))
    applet.data.put_object(ObjectId.CHUID, CHUID)


def piv_card(keys: KeySet | None = None, *, fresh_keys: bool = False) -> tuple[Card, PivApplet]:
    """A powered card with a provisioned PIV applet selected on channel 0."""
    applet = PivApplet()
    if keys is not None:
        provision(applet, keys, fresh_keys=fresh_keys)
    card = Card([applet], default=applet)
    card.power_on()
    return card, applet


def echo_card() -> Card:
    """The engine's cost floor: the diagnostic echo applet, selected."""
    applet = EchoApplet()
    card = Card([applet], default=applet)
    card.power_on()
    return card


# --- the APDUs ---------------------------------------------------------------------------

SELECT_PIV = bytes.fromhex("00A4040005A000000308")  # yubico-piv-tool's, RID only
SELECT_ECHO = bytes.fromhex("00A4040006") + ECHO_AID
ECHO_4 = bytes.fromhex("0001000004DEADBEEF")
GET_DATA_CHUID = bytes.fromhex("00CB3FFF055C035FC10200")
GET_DATA_CERT = bytes.fromhex("00CB3FFF055C035FC10500")
GET_RESPONSE = bytes.fromhex("00C0000000")
VERIFY_QUERY = bytes.fromhex("00200080")
VERIFY_PIN = bytes.fromhex("0020008008") + PIN
MGMT_WITNESS = bytes.fromhex("008703 9B 04 7C028000".replace(" ", ""))


def short_apdu(ins: int, p1: int, p2: int, data: bytes, *, le: bool = True) -> bytes:
    """A short case 3/4 APDU (Le 00 = up to 256 bytes)."""
    assert len(data) <= 255
    return bytes((0, ins, p1, p2, len(data))) + data + (b"\x00" if le else b"")


def extended_apdu(ins: int, p1: int, p2: int, data: bytes) -> bytes:
    """An extended case 4 APDU with Le 0000 (up to 65536 bytes), as ykman sends over USB."""
    return bytes((0, ins, p1, p2, 0)) + len(data).to_bytes(2, "big") + data + b"\x00\x00"


def chained_apdus(ins: int, p1: int, p2: int, data: bytes) -> list[bytes]:
    """Short APDUs with command chaining (CLA 10), as OpenSC and yubico-piv-tool send."""
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)]
    out = [bytes((0x10, ins, p1, p2, len(c))) + c for c in chunks[:-1]]
    return [*out, short_apdu(ins, p1, p2, chunks[-1])]


def ga_template(payload: bytes, tag: int = 0x81) -> bytes:
    """GENERAL AUTHENTICATE's 7C template: 82 00 (response wanted) and the input."""
    return encode_tlv(0x7C, encode_tlv(0x82, b"") + encode_tlv(tag, payload))


def ga_sign(key_type: KeyType, slot: int, payload: bytes) -> bytes:
    return short_apdu(0x87, key_type, slot, ga_template(payload))


def pkcs1v15_sign_block(digest: bytes, k: int = 256) -> bytes:
    """EMSA-PKCS1-v1_5 encoding of a SHA-256 digest: ``00 01 FF.. 00 DigestInfo``."""
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + digest
    return b"\x00\x01" + b"\xff" * (k - 3 - len(digest_info)) + b"\x00" + digest_info


def pkcs1v15_encrypt_block(message: bytes, k: int = 256) -> bytes:
    """EME-PKCS1-v1_5 encoding (type 2): ``00 02 <non-zero random> 00 M``."""
    pad = bytearray()
    while len(pad) < k - 3 - len(message):
        pad += bytes(b for b in secrets.token_bytes(k) if b)
    return b"\x00\x02" + bytes(pad[: k - 3 - len(message)]) + b"\x00" + message


def rsa_encrypt_raw(public_key: rsa.RSAPublicKey, block: bytes) -> bytes:
    """``block^e mod n``: what the host sends the card to decrypt."""
    numbers = public_key.public_numbers()
    c = pow(int.from_bytes(block, "big"), numbers.e, numbers.n)
    return c.to_bytes(256, "big")


def tdes_ecb(key: bytes, block: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(TripleDES(key), modes.ECB())
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(block) + ctx.finalize()


def mgmt_response(witness_response: bytes, challenge: bytes) -> bytes:
    """Mutual authentication step 2 from the card's step-1 answer (7C 0A 80 08 E(R) 90 00)."""
    encrypted_witness = witness_response[4:12]
    witness = tdes_ecb(MANAGEMENT_KEY, encrypted_witness, decrypt=True)
    template = encode_tlv(0x7C, encode_tlv(0x80, witness) + encode_tlv(0x81, challenge))
    return short_apdu(0x87, 0x03, 0x9B, template)
