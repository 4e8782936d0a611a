"""Protection backends: what seals a card's keys. ``tpm``, ``software`` or ``plain``.

Theory of operation
-------------------
A backend seals small secrets (the card key, a binding's private key) and
nothing else; the card store encrypts everything else under those (envelope
encryption, :mod:`vsc.store.crypto`). ``seal(data, auth=...)`` with an
authorisation value makes a *DA-protected* blob: ``unseal`` must be given the
same value, a wrong one raises :class:`AuthFailed` and is counted by the
anti-hammering logic (the TPM's own, or the store's for the other backends).
A blob sealed without ``auth`` is not DA-protected.

* ``tpm`` (:mod:`vsc.store.tpm`, imported only when chosen): blobs are TPM
  objects under a primary storage key derived from the TPM's seed; they load
  on that TPM only, and the TPM itself checks ``auth`` and counts failures.
* ``software``: AES-256-GCM under a master key from a 0600 key file or a
  passphrase (scrypt). No hardware: whoever has the files and the key can
  guess PINs offline. Reported as weaker by :meth:`Protector.describe`.
* ``plain``: no secrecy at all, for tests; chosen only by name.

A card records its backend's *identity* (kind, SRK name, key id, KDF salt)
when it is created; opening it with another TPM, key file or passphrase
raises :class:`BackendMismatch` with a message saying which.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .antihammer import AntiHammer
from .crypto import DecryptionFailed, constant_time_equal, decrypt, encrypt, hkdf
from .errors import AuthFailed, BackendError, BackendMismatch, CorruptStore

BACKENDS = ("tpm", "software", "plain")


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """How a card is protected, for ``vsc info`` and logs (no secrets)."""

    kind: str
    summary: str
    #: Secrets are unusable without this machine's TPM (a copied store is useless).
    hardware_bound: bool
    #: Wrong PINs are counted by hardware, not by a file an attacker could edit.
    hardware_anti_hammering: bool
    #: Whoever holds the files (and the key file) can test PIN guesses offline.
    offline_guessing: bool
    weaknesses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """The backend a user asked for (``--tpm TCTI``, a key file, a passphrase, or ``plain``).

    ``passphrase_log2_n`` / ``auth_log2_n`` are the scrypt costs (log2 N) the
    software backend uses for a passphrase and for each PIN; recorded in new
    cards, ignored when opening (the card's own values are used).
    """

    kind: str
    tcti: str | None = None
    key_file: Path | None = None
    passphrase: bytes | None = field(default=None, repr=False)
    lockout_auth: bytes = field(default=b"", repr=False)
    #: The TPM's owner authorisation: to make (and persist) the storage key, and to
    #: define and remove cards' rollback counters (NV indices of the owner hierarchy).
    owner_auth: bytes = field(default=b"", repr=False)
    passphrase_log2_n: int = 15
    auth_log2_n: int = 14

    def __post_init__(self) -> None:
        if self.kind not in BACKENDS:
            raise ValueError(f"unknown backend {self.kind!r}; choose one of {', '.join(BACKENDS)}")
        if self.kind == "tpm" and not self.tcti:
            raise ValueError("the tpm backend needs an explicit TCTI (--tpm / VSC_TPM)")
        if self.kind == "software" and (self.key_file is None) == (self.passphrase is None):
            raise ValueError("the software backend needs exactly one of a key file or a passphrase")

    @classmethod
    def tpm(cls, tcti: str, *, lockout_auth: bytes = b"", owner_auth: bytes = b"") -> BackendSpec:
        return cls("tpm", tcti=tcti, lockout_auth=lockout_auth, owner_auth=owner_auth)

    @classmethod
    def software(
        cls,
        *,
        key_file: Path | str | None = None,
        passphrase: bytes | None = None,
        passphrase_log2_n: int = 15,
        auth_log2_n: int = 14,
    ) -> BackendSpec:
        return cls(
            "software",
            key_file=Path(key_file) if key_file is not None else None,
            passphrase=passphrase,
            passphrase_log2_n=passphrase_log2_n,
            auth_log2_n=auth_log2_n,
        )

    @classmethod
    def plain(cls) -> BackendSpec:
        return cls("plain")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> BackendSpec | None:
        """``VSC_TPM`` (a TCTI) selects the TPM; ``VSC_KEY_FILE`` the software backend."""
        if tcti := environ.get("VSC_TPM"):
            return cls.tpm(tcti)
        if key_file := environ.get("VSC_KEY_FILE"):
            return cls.software(key_file=key_file)
        return None


class KeyVault(ABC):
    """Private keys that live in hardware: made or wrapped there, used there, never read out.

    Algorithms are named as :data:`vsc.store.tpm.KEY_ALGORITHMS` names them
    (``rsa2048``, ``eccp256``, ...). A *blob* is the hardware's own wrapped
    form of a key: it is usable only by that hardware and only with ``auth``.
    ``da``: the hardware's dictionary-attack logic guards ``auth`` (a PIN-bound
    key); without it the key works in lockout too.
    """

    @abstractmethod
    def supports(self, algorithm: str) -> bool:
        """Whether keys of ``algorithm`` can live here."""

    @abstractmethod
    def generate(
        self, algorithm: str, auth: bytes, *, da: bool, admin_policy: bytes | None = None
    ) -> bytes:
        """A new key generated inside; its blob. With ``admin_policy`` (from
        :meth:`admin_policy`) its authValue can later be changed by :meth:`change_auth`."""

    @abstractmethod
    def import_key(
        self, private_der: bytes, auth: bytes, *, da: bool, admin_policy: bytes | None = None
    ) -> bytes:
        """Wrap a key made elsewhere (PKCS#8 DER); its blob. ``ValueError`` if it cannot."""

    @abstractmethod
    def create_admin_entity(self, auth: bytes) -> bytes:
        """A key-admin entity: an object whose authValue ``auth`` (high-entropy, not
        DA-protected) authorises changing keys' authValues; its blob."""

    @abstractmethod
    def admin_policy(self, entity_blob: bytes) -> bytes:
        """The admin policy of keys whose authValue the entity may change."""

    @abstractmethod
    def change_auth(
        self, blob: bytes, new_auth: bytes, entity_blob: bytes, entity_auth: bytes
    ) -> bytes:
        """The key's new blob, usable with ``new_auth`` (the entity's policy, proved with
        ``entity_auth``). The old blob keeps working with the old value: destroy it."""

    @abstractmethod
    def authorisation(self, blob: bytes) -> tuple[bool, bytes | None]:
        """(DA-protected, admin policy or None) of a key, read from its blob."""

    @abstractmethod
    def public_key(self, blob: bytes) -> bytes:
        """The key's SubjectPublicKeyInfo (DER), read from the blob (no hardware call)."""

    @abstractmethod
    def rsa_private(self, blob: bytes, auth: bytes, block: bytes) -> bytes:
        """The raw RSA private operation on a k-byte block < n. ``ValueError`` for a bad one."""

    @abstractmethod
    def ecdsa(self, blob: bytes, auth: bytes, digest: bytes) -> tuple[int, int]:
        """ECDSA (r, s) of a field-size digest."""

    @abstractmethod
    def ecdh(self, blob: bytes, auth: bytes, x: bytes, y: bytes) -> bytes:
        """The shared X coordinate with the peer point (x, y). ``ValueError`` off the curve."""


@dataclass(frozen=True, slots=True)
class CounterRef:
    """A hardware counter, by its handle."""

    handle: int


class CounterBank(ABC):
    """Monotonic counters in hardware (TPM NV counters): no one can set one back.

    Each counter has a 32-byte authValue that its reads and increments need;
    defining and removing one takes the TPM owner's authorisation.
    """

    @abstractmethod
    def reserve(self) -> CounterRef:
        """A handle no counter has now. Record it before :meth:`define`: whoever finds the
        record of a creation that died frees the counter (:meth:`remove` with its auth)."""

    @abstractmethod
    def define(self, ref: CounterRef, auth: bytes) -> int:
        """Define counter ``ref``, already incremented once: its value. :class:`NoCounter`
        when the hardware needs an authorisation that was not given."""

    @abstractmethod
    def read(self, ref: CounterRef, auth: bytes) -> int:
        """The value; :class:`CorruptStore` if the counter is gone or is not a counter."""

    @abstractmethod
    def increment(self, ref: CounterRef, auth: bytes) -> None:
        """Advance the counter by one (one write to the hardware's non-volatile memory)."""

    @abstractmethod
    def remove(self, ref: CounterRef, auth: bytes | None = None) -> bool:
        """Free the counter (the card it guarded is gone); whether it was there. With
        ``auth``, only if that is the counter's auth (one an interrupted creation recorded)."""


class Protector(ABC):
    """One backend instance, ready to seal and unseal."""

    kind: ClassVar[str]

    @abstractmethod
    def seal(self, plaintext: bytes, *, auth: bytes | None = None) -> bytes:
        """A blob only this backend opens; with ``auth``, only with that value (DA-protected)."""

    @abstractmethod
    def unseal(self, blob: bytes, *, auth: bytes | None = None) -> bytes:
        """Inverse of :meth:`seal`. :class:`AuthFailed` on a wrong ``auth``."""

    def seal_to_pcrs(self, plaintext: bytes, pcrs: tuple[int, ...]) -> bytes:
        """A blob :meth:`unseal` opens only while ``pcrs`` (SHA-256 bank) hold today's
        values (:class:`PcrMismatch` otherwise). Only a TPM can do that."""
        raise BackendError(
            f"binding to the boot state (PCRs) needs the tpm backend, not {self.kind}"
        )

    @abstractmethod
    def describe(self) -> BackendInfo: ...

    @abstractmethod
    def identity(self) -> dict[str, str]:
        """What a new card records so that another TPM / key is recognised at open."""

    def derive_auth(self, salt: bytes, label: bytes, secret: bytes) -> bytes:
        """The authorisation value for a PIN (or other secret): 32 bytes, bound to the card."""
        return hmac.new(salt, b"vsc/auth/v1\0" + label + b"\0" + secret, hashlib.sha256).digest()

    def anti_hammer(self) -> AntiHammer | None:
        """The hardware's own dictionary-attack logic, or ``None`` for the store's."""
        return None

    def key_vault(self) -> KeyVault | None:
        """Where private keys can live in hardware (a TPM), or ``None``: keys in software."""
        return None

    def counter_bank(self) -> CounterBank | None:
        """Monotonic hardware counters for rollback protection, or ``None`` (none here)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the protector is unusable afterwards."""


def open_protector(spec: BackendSpec, identity: Mapping[str, str] | None = None) -> Protector:
    """A protector for a new card (``identity`` None) or for the card that recorded ``identity``."""
    if identity is not None and identity.get("kind") != spec.kind:
        recorded = identity.get("kind", "?")
        hint = " (give --tpm TCTI or set VSC_TPM)" if recorded == "tpm" else ""
        raise BackendMismatch(
            f"the card is protected by the {recorded} backend, not {spec.kind}{hint}"
        )
    if spec.kind == "plain":
        return PlainProtector()
    if spec.kind == "software":
        return SoftwareProtector.open(spec, identity)
    from .tpm import TpmProtector  # tpm2-pytss is optional: import only when chosen

    return TpmProtector.open(spec, identity)


# -- plain --------------------------------------------------------------------------------


class PlainProtector(Protector):
    """No protection: blobs hold the plaintext (and a hash of ``auth`` to check it). Tests only."""

    kind = "plain"

    def seal(self, plaintext: bytes, *, auth: bytes | None = None) -> bytes:
        check = b"\x01" + hashlib.sha256(auth).digest() if auth is not None else b"\x00"
        return b"P" + check + plaintext

    def unseal(self, blob: bytes, *, auth: bytes | None = None) -> bytes:
        if blob[:1] != b"P" or len(blob) < 2:
            raise BackendMismatch("not a blob of the plain backend")
        if blob[1] == 0:
            if auth is not None:
                raise AuthFailed("this blob takes no authorisation")
            return blob[2:]
        expected = blob[2:34]
        if auth is None or not constant_time_equal(hashlib.sha256(auth).digest(), expected):
            raise AuthFailed("wrong authorisation")
        return blob[34:]

    def describe(self) -> BackendInfo:
        return BackendInfo(
            kind="plain",
            summary="plain: no protection (tests only)",
            hardware_bound=False,
            hardware_anti_hammering=False,
            offline_guessing=True,
            weaknesses=("secrets are stored unencrypted: anyone who reads the files has them",),
        )

    def identity(self) -> dict[str, str]:
        return {"kind": "plain"}


# -- software -----------------------------------------------------------------------------

_KEY_FILE_SIZE = 32
_SEAL_VERSION = 1


def create_key_file(path: Path) -> None:
    """Write a new random 32-byte master key, mode 0600; refuses to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, secrets.token_bytes(_KEY_FILE_SIZE))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_file(path: Path) -> bytes:
    """The master key; refuses a file others can read or that someone else owns."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise BackendError(f"key file {path} does not exist") from None
    except OSError as e:
        raise BackendError(f"cannot open key file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BackendError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise BackendError(
                f"key file {path} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o});"
                " chmod 600 it"
            )
        if st.st_uid != os.geteuid():
            raise BackendError(f"key file {path} belongs to another user")
        key = os.read(fd, _KEY_FILE_SIZE + 1)
    finally:
        os.close(fd)
    if len(key) != _KEY_FILE_SIZE:
        raise BackendError(f"key file {path} must hold exactly {_KEY_FILE_SIZE} bytes")
    return key


def _scrypt(secret: bytes, salt: bytes, log2_n: int) -> bytes:
    if not 1 <= log2_n <= 22:
        raise CorruptStore(f"unreasonable scrypt cost 2^{log2_n}")
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=8, p=1).derive(secret)


class SoftwareProtector(Protector):
    """AES-256-GCM under a master key from a key file or a passphrase."""

    kind = "software"

    def __init__(self, master: bytes, identity: dict[str, str], source: str) -> None:
        self._master = master
        self._identity = identity
        self._source = source

    @classmethod
    def open(cls, spec: BackendSpec, identity: Mapping[str, str] | None) -> SoftwareProtector:
        if identity is None:
            return cls._create(spec)
        try:
            source = identity["source"]
            auth_log2_n = int(identity["auth_log2_n"])
            key_id = identity["key_id"]
            if source == "passphrase":
                salt, log2_n = bytes.fromhex(identity["salt"]), int(identity["log2_n"])
        except (KeyError, ValueError) as e:
            raise CorruptStore(f"bad software backend record: {e}") from e
        if source == "passphrase":
            if spec.passphrase is None:
                raise BackendMismatch("this card is protected by a passphrase, not a key file")
            master = _scrypt(spec.passphrase, salt, log2_n)
        else:
            if spec.key_file is None:
                raise BackendMismatch("this card is protected by a key file, not a passphrase")
            master = read_key_file(spec.key_file)
        if not constant_time_equal(_key_id(master).encode(), key_id.encode()):
            what = "wrong passphrase" if source == "passphrase" else f"key file {spec.key_file}"
            raise BackendMismatch(f"{what}: not the key this card was sealed with")
        described = "passphrase" if source == "passphrase" else f"key file {spec.key_file}"
        return cls(master, dict(identity) | {"auth_log2_n": str(auth_log2_n)}, described)

    @classmethod
    def _create(cls, spec: BackendSpec) -> SoftwareProtector:
        identity = {"kind": "software", "auth_log2_n": str(spec.auth_log2_n)}
        if spec.passphrase is not None:
            salt = secrets.token_bytes(16)
            master = _scrypt(spec.passphrase, salt, spec.passphrase_log2_n)
            identity |= {
                "source": "passphrase",
                "salt": salt.hex(),
                "log2_n": str(spec.passphrase_log2_n),
            }
            source = "passphrase"
        else:
            assert spec.key_file is not None
            if not spec.key_file.exists():
                create_key_file(spec.key_file)
            master = read_key_file(spec.key_file)
            identity["source"] = "key-file"
            source = f"key file {spec.key_file}"
        identity["key_id"] = _key_id(master)
        return cls(master, identity, source)

    def seal(self, plaintext: bytes, *, auth: bytes | None = None) -> bytes:
        header = bytes([_SEAL_VERSION, auth is not None]) + secrets.token_bytes(16)
        return header + encrypt(self._wrap_key(header, auth), plaintext, header)

    def unseal(self, blob: bytes, *, auth: bytes | None = None) -> bytes:
        header = blob[:18]
        if len(blob) < 18 or header[0] != _SEAL_VERSION or header[1] > 1:
            raise BackendMismatch("not a blob of the software backend")
        if header[1] != (auth is not None):
            raise AuthFailed("authorisation given to a blob that takes none, or the reverse")
        try:
            return decrypt(self._wrap_key(header, auth), blob[18:], header)
        except DecryptionFailed:
            if auth is None:
                raise BackendMismatch("sealed under another master key") from None
            raise AuthFailed("wrong authorisation") from None

    def _wrap_key(self, header: bytes, auth: bytes | None) -> bytes:
        info = b"vsc/software-seal/v1\0" + header[:2] + (auth or b"")
        return hkdf(self._master, salt=header[2:18], info=info)

    def derive_auth(self, salt: bytes, label: bytes, secret: bytes) -> bytes:
        # Slow on purpose: with the key file in hand, every PIN guess costs one scrypt.
        fast = super().derive_auth(salt, label, secret)
        return _scrypt(fast, salt + label, int(self._identity["auth_log2_n"]))

    def describe(self) -> BackendInfo:
        return BackendInfo(
            kind="software",
            summary=f"software: AES-256-GCM under a {self._source}",
            hardware_bound=False,
            hardware_anti_hammering=False,
            offline_guessing=True,
            weaknesses=(
                "no hardware: the store and its key (file or passphrase) open the card anywhere",
                "wrong PINs are counted in the card's own file, which its owner can edit",
                "whoever has the files and the key can test PIN guesses offline (scrypt-slowed)",
            ),
        )

    def identity(self) -> dict[str, str]:
        return dict(self._identity)


def _key_id(master: bytes) -> str:
    return hmac.new(master, b"vsc/key-id/v1", hashlib.sha256).hexdigest()[:16]
