"""TLS 1.3 contexts for the link: mutual authentication against pinned certificates.

Both sides present their self-signed certificate and trust exactly the
certificates pinned by pairing (:mod:`vsc.share.pairing`): the pinned
certificates are the trust anchors, hostnames are not checked, and after the
handshake the peer's certificate fingerprint is compared with the pins once
more (:func:`peer_fingerprint`), so nothing but a pinned certificate itself
is ever accepted. TLS 1.3 only, no session tickets (no resumption state to
protect).

The service asks for a client certificate but does not require one
(``CERT_OPTIONAL``): a connection without one may only pair. A client
certificate that is not pinned fails the handshake.
"""

from __future__ import annotations

import socket
import ssl

from .home import Identity
from .trust import fingerprint

__all__ = ["client_context", "pairing_context", "peer_certificate", "server_context"]


def _base(purpose: ssl._SSLMethod) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


def server_context(identity: Identity, trusted_pem: str) -> ssl.SSLContext:
    """The service's context: its identity; clients verified against ``trusted_pem``."""
    context = _base(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(identity.cert_path, identity.key_path)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.num_tickets = 0
    if trusted_pem:
        context.load_verify_locations(cadata=trusted_pem)
    return context


def client_context(identity: Identity, trusted_pem: str) -> ssl.SSLContext:
    """An endpoint's context: its identity; the service verified against ``trusted_pem``."""
    if not trusted_pem:
        raise ValueError("no pinned service: pair first (vsc share pair --with HOST CODE)")
    context = _base(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the pin is the identity, not a name
    context.load_verify_locations(cadata=trusted_pem)
    context.load_cert_chain(identity.cert_path, identity.key_path)
    return context


def pairing_context() -> ssl.SSLContext:
    """An endpoint's context for pairing: no client certificate, server not yet known.

    The pairing MACs bind the server certificate seen here, so not verifying
    it at the TLS layer is safe: a substitute certificate makes pairing fail.
    """
    context = _base(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def peer_certificate(sock: ssl.SSLSocket) -> bytes | None:
    """The peer's certificate (DER) after the handshake, or None if it sent none."""
    return sock.getpeercert(binary_form=True)


def peer_fingerprint(sock: ssl.SSLSocket) -> bytes | None:
    certificate = peer_certificate(sock)
    return None if certificate is None else fingerprint(certificate)


def tune(sock: socket.socket, *, keepalive: float = 30.0) -> None:
    """TCP_NODELAY (APDUs are small and latency-bound) and keepalive (to notice dead peers)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(keepalive)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(keepalive / 3)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
