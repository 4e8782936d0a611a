"""Talking to a share service: pairing, and short sessions for list and detach.

The endpoint (:mod:`vsc.share.endpoint`) opens its long-lived session with
:func:`open_session` too. Failures are :class:`ShareError` with a message a
person can act on; :class:`Refused` when the service said no (a reader in
use, an unknown reader, not paired).
"""

from __future__ import annotations

import getpass
import hmac
import os
import secrets
import socket
import ssl
from dataclasses import dataclass
from typing import Final

from .home import Peer, ShareHome, fingerprint, format_fingerprint
from .link import DEFAULT_TIMEOUT, LinkClosed, LinkSocket, connect_tls
from .pairing import PairingClient, PairingError
from .protocol import (
    DEFAULT_PORT,
    INSTANCE_SIZE,
    Detach,
    Error,
    ErrorCode,
    Hello,
    ListReaders,
    Message,
    Ok,
    PairChallenge,
    Paired,
    ReaderInfo,
    Readers,
    Reply,
    Role,
    Welcome,
)
from .tls import client_context, pairing_context, peer_certificate

__all__ = [
    "Refused",
    "ShareError",
    "default_session",
    "detach",
    "list_readers",
    "new_instance",
    "open_session",
    "pair",
    "parse_address",
]

_NOT_PAIRED_HINT: Final = (
    "the service refused this machine's certificate: pair first "
    "(on the service: vsc share pair; here: vsc share pair --with HOST CODE)"
)


class ShareError(Exception):
    """Something went wrong talking to a service; the message says what to do."""


class Refused(ShareError):
    """The service answered with an error."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_address(
    text: str, default_port: int = DEFAULT_PORT, *, listen: bool = False
) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` -> (host, port); ``listen`` allows port 0 (any)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not (0 if listen else 1) <= number < 0x10000:
        raise ValueError(f"port out of range in {text!r}")
    return host, number


def default_session() -> str:
    """This login session's name: ``user@host`` plus the logind session id if there is one."""
    base = f"{getpass.getuser()}@{socket.gethostname()}"
    session = os.environ.get("XDG_SESSION_ID")
    return f"{base}:{session}" if session else base


def new_instance() -> bytes:
    return secrets.token_bytes(INSTANCE_SIZE)


@dataclass(frozen=True, slots=True)
class Session:
    """An authenticated link after HELLO."""

    link: LinkSocket
    service_name: str
    service: Peer


def expect(reply: Reply, kind: type[Message]) -> None:
    """Raise :class:`Refused` for an ERROR reply (or an unexpected one)."""
    if isinstance(reply, Error):
        raise Refused(reply.code, reply.message)
    if not isinstance(reply, kind):
        raise ShareError(f"unexpected {type(reply).__name__}")


def open_session(
    home: ShareHome,
    address: tuple[str, int],
    session: str,
    instance: bytes,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    local: bool = False,
) -> Session:
    """Connect with mutual TLS to a pinned service and say HELLO.

    ``local``: the service is this machine's own (same share home), which
    trusts its own certificate: the local user's CLI.
    """
    identity = home.identity()
    peers = [home.own_peer()] if local else home.peers()
    if not peers:
        raise ShareError("no service is paired with this machine: vsc share pair --with HOST CODE")
    context = client_context(identity, "".join(p.pem for p in peers))
    try:
        sock = connect_tls(address, context, timeout=timeout)
    except ssl.SSLCertVerificationError as exc:
        raise ShareError(
            f"{address[0]}:{address[1]} is not a paired service "
            f"(its certificate is not pinned here): {exc.verify_message}"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise ShareError(f"cannot reach {address[0]}:{address[1]}: {exc}") from None
    service = _pinned(peers, sock)
    link = LinkSocket(sock, Role.ENDPOINT)
    try:
        reply, _ = link.request(Hello(session, instance), timeout)
    except LinkClosed as exc:
        link.close()
        raise ShareError(f"{_NOT_PAIRED_HINT} ({exc})") from None
    if not isinstance(reply, Welcome):
        link.close()
        expect(reply, Welcome)
    assert isinstance(reply, Welcome)
    return Session(link, reply.name, service)


def _pinned(peers: list[Peer], sock: ssl.SSLSocket) -> Peer:
    """The pin the service's certificate matches (checked again beyond the TLS layer)."""
    certificate = peer_certificate(sock)
    seen = fingerprint(certificate or b"")
    for peer in peers:
        if certificate is not None and hmac.compare_digest(peer.fingerprint, seen):
            return peer
    sock.close()
    raise ShareError("the service's certificate is not pinned here")


def list_readers(
    home: ShareHome,
    address: tuple[str, int],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    local: bool = False,
) -> tuple[str, tuple[ReaderInfo, ...]]:
    """The service's name and its readers."""
    session = open_session(
        home, address, default_session(), new_instance(), timeout=timeout, local=local
    )
    try:
        reply, _ = session.link.request(ListReaders(), timeout)
        expect(reply, Readers)
        assert isinstance(reply, Readers)
        return session.service_name, reply.readers
    except LinkClosed as exc:
        raise ShareError(str(exc)) from None
    finally:
        session.link.close()


def detach(
    home: ShareHome,
    address: tuple[str, int],
    reader: str = "",
    session: str = "",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    local: bool = False,
) -> int:
    """End attachments (of ``reader``, of ``session``; "" = any); how many ended.

    A peer may end only its own sessions' attachments; the service's own
    identity (the local CLI, ``local``) may end any.
    """
    opened = open_session(
        home, address, default_session(), new_instance(), timeout=timeout, local=local
    )
    link = opened.link
    try:
        reply, _ = link.request(Detach(reader, session), timeout)
        expect(reply, Ok)
        assert isinstance(reply, Ok)
        return reply.count
    except LinkClosed as exc:
        raise ShareError(str(exc)) from None
    finally:
        link.close()


def pair(
    home: ShareHome,
    address: tuple[str, int],
    code: str,
    *,
    name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Peer:
    """Pair with the service at ``address`` using its one-time ``code``; returns the pin."""
    identity = home.identity()
    try:
        sock = connect_tls(address, pairing_context(), timeout=timeout)
    except (OSError, ssl.SSLError) as exc:
        raise ShareError(f"cannot reach {address[0]}:{address[1]}: {exc}") from None
    service_certificate = peer_certificate(sock)
    link = LinkSocket(sock, Role.ENDPOINT)
    try:
        if service_certificate is None:
            raise ShareError("the service sent no certificate")
        client = PairingClient(code, identity.certificate, service_certificate)
        reply, _ = link.request(client.request(name or socket.gethostname()), timeout)
        expect(reply, PairChallenge)
        assert isinstance(reply, PairChallenge)
        service_name = reply.name or address[0]
        proof = client.prove(reply)
        reply, _ = link.request(proof, timeout)
        expect(reply, Paired)
        return home.pin(service_certificate, service_name, f"{address[0]}:{address[1]}")
    except PairingError as exc:
        raise Refused(ErrorCode.PAIRING_FAILED, f"pairing failed: {exc}") from None
    except Refused as exc:
        raise Refused(exc.code, f"pairing failed: {exc}") from None
    except LinkClosed as exc:
        raise ShareError(f"pairing failed: {exc}") from None
    finally:
        link.close()


def describe(peer: Peer) -> str:
    return f"{peer.name} ({format_fingerprint(peer.fingerprint, 4)})"
