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

from .home import ShareHome
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
from .trust import Peer, PeerRole, fingerprint, format_fingerprint

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
    "resolve_service",
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


def resolve_service(home: ShareHome, spec: str | None) -> tuple[Peer, tuple[str, int]]:
    """The paired service ``--from`` names, and where to reach it.

    ``spec`` is the service's name (as paired; any case), the start of its
    fingerprint, an address it was paired at (``HOST[:PORT]``), or
    ``NAME@HOST[:PORT]`` for a paired service that moved; None: the only
    service paired here. The connection is then bound to that service's
    pinned certificate: any other, pinned or not, is refused.
    """
    services = home.trust.peers(PeerRole.SERVICE)
    if not services:
        raise ShareError("no service is paired with this machine: vsc share pair --with HOST CODE")
    if spec is None:
        if len(services) > 1:
            raise ShareError(
                f"several services are paired; say which with --from NAME: {_names(services)}"
            )
        return services[0], _remembered(services[0])
    name, at, where = spec.rpartition("@")
    if at:
        found = _by_name(services, name)
        if found is None:
            raise ShareError(f"no service called {name!r} is paired: {_names(services)}")
        return found, parse_address(where)
    found = _by_name(services, spec)
    if found is not None:
        return found, _remembered(found)
    address = parse_address(spec)
    return _at(services, address), address


def _names(peers: list[Peer]) -> str:
    return ", ".join(p.describe() for p in peers)


def _by_name(services: list[Peer], name: str) -> Peer | None:
    """The service called ``name`` (any case), or whose fingerprint starts with it."""
    wanted = name.casefold()
    found = [p for p in services if p.name.casefold() == wanted]
    hex_prefix = name.replace(":", "").lower()
    if not found and len(hex_prefix) >= 4 and all(c in "0123456789abcdef" for c in hex_prefix):
        found = [p for p in services if p.fingerprint.hex().startswith(hex_prefix)]
    if len(found) > 1:
        raise ShareError(f"{name!r} names several paired services: {_names(found)}")
    return found[0] if found else None


def _remembered(service: Peer) -> tuple[str, int]:
    address = service.grants[PeerRole.SERVICE].address
    if not address:
        raise ShareError(f"no address is known for {service.describe()}: --from NAME@HOST[:PORT]")
    return parse_address(address)


def _at(services: list[Peer], address: tuple[str, int]) -> Peer:
    """The one service paired at ``address``; otherwise the only service paired at all."""
    found = [p for p in services if _same(p.grants[PeerRole.SERVICE].address, address)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ShareError(f"several paired services were at {_show(address)}: {_names(found)}")
    if len(services) == 1:
        return services[0]
    raise ShareError(
        f"no paired service is known at {_show(address)}; paired: {_names(services)} "
        "(--from NAME, or NAME@HOST[:PORT] for one that moved)"
    )


def _same(remembered: str, address: tuple[str, int]) -> bool:
    try:
        return bool(remembered) and parse_address(remembered) == address
    except ValueError:
        return False


def _show(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_session(
    home: ShareHome,
    address: tuple[str, int],
    session: str,
    instance: bytes,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    local: bool = False,
    service: Peer | None = None,
) -> Session:
    """Connect with mutual TLS to the paired ``service`` at ``address`` and say HELLO.

    ``service`` defaults to the one paired at ``address`` (or the only one
    paired); whichever it is, the connection is bound to its certificate: a
    different one, even of another paired service, is refused naming both.
    ``local``: the service is this machine's own (same share home), which
    trusts its own certificate: the local user's CLI.
    """
    identity = home.identity()
    if local:
        expected = home.own_peer()
        anchors = expected.pem
    else:
        services = home.trust.peers(PeerRole.SERVICE)
        if not services:
            raise ShareError(
                "no service is paired with this machine: vsc share pair --with HOST CODE"
            )
        expected = service if service is not None else _at(services, address)
        anchors = "".join(p.pem for p in services)  # to name whoever answers
    context = client_context(identity, anchors)
    try:
        sock = connect_tls(address, context, timeout=timeout)
    except ssl.SSLCertVerificationError as exc:
        raise ShareError(
            f"{_show(address)} is not a paired service "
            f"(its certificate is not pinned here): {exc.verify_message}"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise ShareError(f"cannot reach {_show(address)}: {exc}") from None
    _check_bound(home, expected, sock, address)
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
    return Session(link, reply.name, expected)


def _check_bound(
    home: ShareHome, expected: Peer, sock: ssl.SSLSocket, address: tuple[str, int]
) -> None:
    """The service must show the expected pin (checked beyond the TLS layer); else refuse."""
    certificate = peer_certificate(sock)
    seen = fingerprint(certificate or b"")
    if certificate is not None and hmac.compare_digest(expected.fingerprint, seen):
        return
    sock.close()
    other = home.trust.find(seen)
    who = (
        other.describe()
        if other is not None
        else f"certificate {format_fingerprint(seen, 4)}, which is not pinned here"
    )
    raise ShareError(
        f"{_show(address)} answered as {who}, not as {expected.describe()}, the service "
        "paired under that name: refusing it (the address may lead somewhere else now, or "
        "someone is redirecting the connection)"
    )


def _command_session(
    home: ShareHome,
    address: tuple[str, int],
    timeout: float,
    local: bool,
    service: Peer | None,
) -> Session:
    """A short session for one command (list, detach) of this shell's session."""
    return open_session(
        home,
        address,
        default_session(),
        new_instance(),
        timeout=timeout,
        local=local,
        service=service,
    )


def list_readers(
    home: ShareHome,
    address: tuple[str, int],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    local: bool = False,
    service: Peer | None = None,
) -> tuple[str, tuple[ReaderInfo, ...]]:
    """The service's name and its readers."""
    session = _command_session(home, address, timeout, local, service)
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
    service: Peer | None = None,
) -> int:
    """End attachments (of ``reader``, of ``session``; "" = any); how many ended.

    A peer may end only its own sessions' attachments; the service's own
    identity (the local CLI, ``local``) may end any.
    """
    opened = _command_session(home, address, timeout, local, service)
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
        return home.trust.pin(service_certificate, service_name, PeerRole.SERVICE, _show(address))
    except PairingError as exc:
        raise Refused(ErrorCode.PAIRING_FAILED, f"pairing failed: {exc}") from None
    except Refused as exc:
        raise Refused(exc.code, f"pairing failed: {exc}") from None
    except LinkClosed as exc:
        raise ShareError(f"pairing failed: {exc}") from None
    finally:
        link.close()
