"""Pairing: two machines pin each other's certificate, vouched for by a one-time code.

Theory of operation
-------------------
Each machine has a self-signed certificate (:meth:`ShareHome.identity`).
Before pairing they have no reason to trust each other, so the user carries a
one-time code from the service machine to the endpoint machine (read aloud,
pasted into a chat): ``vsc share pair`` prints it, ``vsc share pair --with
HOST CODE`` uses it.

The endpoint connects with TLS 1.3 *without* a client certificate and without
checking the server's certificate (neither is pinned yet); the service lets
such a connection do nothing but pair. Then:

1. endpoint -> service: PAIR_REQUEST(certificate_E, nonce_E)
2. service -> endpoint: PAIR_CHALLENGE(nonce_S, mac_S)
3. endpoint -> service: PAIR_PROOF(mac_E)
4. service -> endpoint: PAIRED

with ``K = HKDF-SHA256(code, salt = nonce_E || nonce_S)`` and
``mac_X = HMAC-SHA256(K, label_X || fp_S || fp_E)``, where ``fp_S`` is the
fingerprint of the certificate the endpoint *saw in the TLS handshake* and
``fp_E`` that of the certificate in PAIR_REQUEST. Each side checks the
other's MAC (constant time) before pinning, so a machine in the middle, which
must show its own certificate to at least one side, makes the fingerprints
differ and the MACs fail. The service consumes the code on the first
PAIR_REQUEST, right or wrong: one guess per code. The code carries 100 bits
(20 Crockford base32 characters), so the MAC in step 2, which an active
attacker can obtain by connecting first, cannot be used to search for the
code offline. (A PAKE would allow a shorter code; ``cryptography`` has none.)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .protocol import NONCE_SIZE, PairChallenge, PairProof, PairRequest
from .trust import fingerprint

__all__ = [
    "CODE_LENGTH",
    "PairingClient",
    "PairingError",
    "PairingServer",
    "new_code",
    "normalize_code",
]

#: Crockford's base32: no I, L, O, U (read 1, 1, 0, V-less), so a code survives being read aloud.
_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ALIASES: Final = str.maketrans({"I": "1", "L": "1", "O": "0"})
CODE_LENGTH: Final = 20  # 100 bits
_GROUP: Final = 4
_INFO: Final = b"vsc-share pairing v1"
_SERVER_LABEL: Final = b"service"
_CLIENT_LABEL: Final = b"endpoint"


class PairingError(Exception):
    """Pairing failed: wrong or expired code, or someone in the middle."""


def new_code() -> str:
    """A fresh code, grouped for reading: ``7KQ2-M9XD-4HRT-P2WZ-8NVC``."""
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + _GROUP] for i in range(0, CODE_LENGTH, _GROUP))


def normalize_code(text: str) -> str:
    """The code's canonical form: upper case, separators dropped, I/L/O read as 1/1/0."""
    cleaned = "".join(ch for ch in text.upper() if ch not in "- \t").translate(_ALIASES)
    if len(cleaned) != CODE_LENGTH or any(ch not in _ALPHABET for ch in cleaned):
        raise PairingError(f"a pairing code is {CODE_LENGTH} characters of {_ALPHABET}")
    return cleaned


def _mac(code: str, label: bytes, nonces: bytes, server_fp: bytes, client_fp: bytes) -> bytes:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=nonces, info=_INFO).derive(
        normalize_code(code).encode()
    )
    return hmac.new(key, label + server_fp + client_fp, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class _Transcript:
    code: str
    client_nonce: bytes
    server_nonce: bytes
    server_fp: bytes
    client_fp: bytes

    def mac(self, label: bytes) -> bytes:
        nonces = self.client_nonce + self.server_nonce
        return _mac(self.code, label, nonces, self.server_fp, self.client_fp)


class PairingServer:
    """The service's half: answer a PAIR_REQUEST, then check the PAIR_PROOF."""

    def __init__(self, code: str, own_certificate: bytes) -> None:
        self._code = normalize_code(code)
        self._own_fp = fingerprint(own_certificate)
        self._transcript: _Transcript | None = None
        self.peer_certificate = b""

    def challenge(self, request: PairRequest) -> PairChallenge:
        self.peer_certificate = request.certificate
        self._transcript = _Transcript(
            self._code,
            request.nonce,
            secrets.token_bytes(NONCE_SIZE),
            self._own_fp,
            fingerprint(request.certificate),
        )
        return PairChallenge(self._transcript.server_nonce, self._transcript.mac(_SERVER_LABEL))

    def verify(self, proof: PairProof) -> bytes:
        """Check the endpoint's proof; return the certificate to pin."""
        if self._transcript is None:
            raise PairingError("proof before request")
        if not hmac.compare_digest(proof.mac, self._transcript.mac(_CLIENT_LABEL)):
            raise PairingError("the endpoint does not know the pairing code")
        return self.peer_certificate


class PairingClient:
    """The endpoint's half: send a PAIR_REQUEST, check the challenge, prove."""

    def __init__(self, code: str, own_certificate: bytes, server_certificate: bytes) -> None:
        self._code = normalize_code(code)
        self._own_certificate = own_certificate
        self._server_fp = fingerprint(server_certificate)
        self._nonce = secrets.token_bytes(NONCE_SIZE)

    def request(self, name: str = "") -> PairRequest:
        return PairRequest(self._own_certificate, self._nonce, name)

    def prove(self, challenge: PairChallenge) -> PairProof:
        """Check the service's MAC; answer with ours. Raises :class:`PairingError`."""
        transcript = _Transcript(
            self._code,
            self._nonce,
            challenge.nonce,
            self._server_fp,
            fingerprint(self._own_certificate),
        )
        if not hmac.compare_digest(challenge.mac, transcript.mac(_SERVER_LABEL)):
            raise PairingError(
                "the service does not know this pairing code (wrong code, or not the service "
                "you think: someone may be in the middle)"
            )
        return PairProof(transcript.mac(_CLIENT_LABEL))
