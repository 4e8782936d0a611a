"""Where a machine keeps its share state: identity, pinned peers, reader names, pairing code.

One directory per machine and user (:func:`default_home`), mode 0700, every
file in it 0600. A home that another user owns, or that its group or others
may write (where someone could swap ``peers.json``, which the service
reloads), is refused with :class:`ShareHomeError`; files are opened without
following symbolic links. A home readable by others is narrowed to 0700:


``identity.key`` / ``identity.crt``
    This machine's TLS identity: an EC P-256 key (PKCS#8 PEM) and a
    self-signed certificate, created on first use.
``peers.json``
    The pinned peers: each paired machine's certificate and its SHA-256
    fingerprint. TLS trusts exactly these certificates (and, on the service,
    its own: the local CLI talks to its service with the service's identity).
``readers.json``
    The stable reader names: PC/SC reader name -> "Reader N". A name, once
    given, is never reused for another reader.
``pairing.json``
    A pending one-time pairing code (expires, consumed by the first pairing
    attempt).
``events.log``
    The event log, JSON lines (:mod:`vsc.share.events`).
``service.json``
    Where this machine's running service listens, for the local CLI.

Every file is written to a temporary name and renamed into place, so a crash
never leaves half a file.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import ShareHomeError, check_owner, open_private, read_private, write_atomic
from .trust import Grant, Peer, PeerRole, TrustStore, fingerprint, to_pem

__all__ = ["HOME_ENV", "Identity", "ShareHome", "ShareHomeError", "default_home"]

HOME_ENV: Final = "VSC_SHARE_HOME"
_CERT_DAYS: Final = 3650
_READER_PREFIX: Final = "Reader "


def default_home() -> Path:
    """``$VSC_SHARE_HOME``, else ``$XDG_DATA_HOME/vsc/share`` (``~/.local/share/vsc/share``)."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "vsc" / "share"


@dataclass(frozen=True, slots=True)
class Identity:
    """This machine's TLS key and certificate (paths for ``ssl``, DER for pairing)."""

    key_path: Path
    cert_path: Path
    certificate: bytes  # DER

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.certificate)

    @property
    def pem(self) -> str:
        return to_pem(self.certificate)


def _new_certificate(name: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key (PKCS#8 PEM) and a self-signed certificate (DER) for TLS."""
    key = ec.generate_private_key(ec.SECP256R1())
    # A unique subject: OpenSSL finds trust anchors by subject name, so two machines
    # with the same host name must not look alike.
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8)),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.DER)


class ShareHome:
    """The share state directory of one machine. Thread-safe; files are the truth."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_home()
        self._lock = threading.RLock()
        self._checked = False
        #: The pinned peers and what each may do (``peers.json``).
        self.trust = TrustStore(self)

    def ensure(self) -> None:
        """Create the home (0700, missing parents too) if needed, and check it."""
        with self._lock:
            missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
            for directory in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    directory.mkdir(mode=0o700)
                    directory.chmod(0o700)  # whatever the umask said
            self.check()

    def check(self) -> None:
        """Refuse a home another user owns or may write; narrow one others may read.

        Checked once per object (the service keeps its object); a home that
        does not exist yet passes (:meth:`ensure` makes it).
        """
        with self._lock:
            if self._checked:
                return
            try:
                info = self.path.stat()
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(info.st_mode):
                raise ShareHomeError(f"{self.path} is not a directory")
            check_owner(self.path, info)
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o022:
                who = "others" if mode & 0o002 else "its group"
                raise ShareHomeError(
                    f"{self.path} is writable by {who} (mode {mode:04o}): someone else could "
                    f"have replaced its pinned peers or identity; check them, then "
                    f"chmod 700 {self.path}"
                )
            if mode != 0o700:
                self.path.chmod(0o700)
            self._checked = True

    # -- files -------------------------------------------------------------------

    @property
    def events_path(self) -> Path:
        self.check()
        return self.path / "events.log"

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON object file of the home ({} if missing); damaged is an error."""
        self.check()
        path = self.path / name
        try:
            data = json.loads(read_private(path))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ShareHomeError(f"{path} is damaged ({exc}); refusing to guess") from None
        if not isinstance(data, dict):
            raise ShareHomeError(f"{path} is damaged (not a JSON object); refusing to guess")
        return data

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Replace a JSON file of the home atomically (mode 0600)."""
        self.ensure()
        write_atomic(self.path / name, (json.dumps(data, indent=2) + "\n").encode())

    # -- identity ----------------------------------------------------------------

    def identity(self, name: str | None = None) -> Identity:
        """This machine's identity, created on first use."""
        key_path, cert_path = self.path / "identity.key", self.path / "identity.crt"
        with self._lock:
            self.check()
            if not cert_path.exists() or not key_path.exists():
                self.ensure()
                label = name or f"vsc-share {socket.gethostname()}"
                key_pem, cert_der = _new_certificate(label)
                write_atomic(key_path, key_pem)
                cert_pem = x509.load_der_x509_certificate(cert_der).public_bytes(
                    serialization.Encoding.PEM
                )
                write_atomic(cert_path, cert_pem)
            os.close(open_private(key_path, os.O_RDONLY))  # ssl reads it by name
            pem = read_private(cert_path)
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        return Identity(key_path, cert_path, der)

    def own_peer(self) -> Peer:
        """This machine's identity as a service :class:`Peer` (the local CLI and its service)."""
        identity = self.identity()
        grants = {PeerRole.SERVICE: Grant("", "")}
        return Peer(identity.fingerprint, identity.certificate, "this machine", grants)

    # -- stable reader names -------------------------------------------------------------

    def reader_names(self) -> dict[str, str]:
        """PC/SC name -> stable name, as persisted."""
        with self._lock:
            names = self.read_json("readers.json").get("readers", {})
        return {str(k): str(v) for k, v in names.items()}

    def name_readers(self, pcsc_names: list[str]) -> dict[str, str]:
        """Stable names for ``pcsc_names``, giving new readers the next free number."""
        with self._lock:
            names = self.reader_names()
            used = {_number(v) for v in names.values()}
            new = [n for n in pcsc_names if n not in names]
            for pcsc_name in new:
                number = max(used, default=0) + 1
                used.add(number)
                names[pcsc_name] = f"{_READER_PREFIX}{number}"
            if new:
                self.write_json("readers.json", {"readers": names})
        return {n: names[n] for n in pcsc_names}

    # -- the pending pairing code ----------------------------------------------------------

    def offer_pairing(self, code: str, lifetime: float) -> float:
        """Store a one-time pairing code; returns its expiry (epoch seconds)."""
        expires = time.time() + lifetime
        with self._lock:
            self.write_json("pairing.json", {"code": code, "expires": expires})
        return expires

    def take_pairing_code(self) -> str | None:
        """The pending code, consumed (one attempt per code); None if none or expired."""
        with self._lock:
            data = self.read_json("pairing.json")
            with contextlib.suppress(FileNotFoundError):
                (self.path / "pairing.json").unlink()
        code, expires = data.get("code"), data.get("expires")
        if not isinstance(code, str) or not isinstance(expires, int | float):
            return None
        return code if time.time() < expires else None

    # -- the running service's address, for the local CLI ----------------------------------

    def record_service(self, host: str, port: int) -> None:
        self.write_json("service.json", {"host": host, "port": port, "pid": os.getpid()})

    def forget_service(self) -> None:
        self.check()
        with contextlib.suppress(FileNotFoundError):
            (self.path / "service.json").unlink()

    def service_listen(self) -> tuple[str, int] | None:
        """The address this machine's running service is bound to, if one runs."""
        data = self.read_json("service.json")
        host, port = data.get("host"), data.get("port")
        if not isinstance(host, str) or not isinstance(port, int):
            return None
        return host, port

    def service_address(self) -> tuple[str, int] | None:
        """Where this machine's service listens (a wildcard address read as loopback)."""
        listen = self.service_listen()
        if listen is None:
            return None
        host, port = listen
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return host, port


def _number(name: str) -> int:
    suffix = name.removeprefix(_READER_PREFIX)
    return int(suffix) if suffix.isdigit() else 0
