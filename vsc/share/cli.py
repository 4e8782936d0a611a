"""``vsc share ...``: share a local reader into a remote session.

On the machine with the reader (the *service* side)::

    vsc share serve                      # run the share service
    vsc share pair                       # print a one-time pairing code
    vsc share list                       # this machine's readers and their state
    vsc share detach "Reader 1"          # take a reader back from whoever holds it

On the remote machine (the *endpoint* side, where the session runs)::

    vsc share pair --with laptop CODE    # pin each other's certificates
    vsc share list --from laptop         # the readers laptop offers
    vsc share attach "Reader 1" --from laptop [--mode shared]
    vsc share detach "Reader 1" --from laptop

``attach`` runs until the share ends: Ctrl-C (SIGINT) detaches; SIGTERM or
SIGHUP, what a login session's end sends, is a logout. Exit status: 0 done,
1 failure (cannot reach, not paired, ...), 2 usage, 3 refused by the service
(the reader is shared in another session, unknown reader, busy locally,
wrong pairing code).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

from .client import (
    Refused,
    ShareError,
    default_session,
    detach,
    list_readers,
    pair,
    parse_address,
    resolve_service,
)
from .endpoint import DEFAULT_VPCD, Endpoint
from .events import state_text
from .home import ShareHome, ShareHomeError
from .pairing import PairingError, new_code, normalize_code
from .protocol import DEFAULT_PORT, EndReason, ReaderInfo, ShareMode
from .service import DEFAULT_HOST, ShareService, is_loopback
from .trust import ROLE_TEXT, Peer, PeerRole, format_fingerprint

if TYPE_CHECKING:
    from ..cliutil import Subparsers

__all__ = ["register"]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_REFUSED: Final = 3
PAIRING_LIFETIME: Final = 600.0


def register(subparsers: Subparsers) -> None:
    """Add ``share`` and its verbs to the ``vsc`` command."""
    share = subparsers.add_parser(
        "share",
        help="share a local reader into a remote session",
        description="Share a local smart card reader into a remote session (see docs/share.md).",
    )
    share.set_defaults(handler=lambda args: _usage(share))
    verbs = share.add_subparsers(dest="verb", metavar="VERB")
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument(
        "--home",
        type=Path,
        help="share state directory (default: $VSC_SHARE_HOME or ~/.local/share/vsc/share)",
    )

    serve = verbs.add_parser("serve", parents=[home], help="run the share service (reader side)")
    serve.add_argument(
        "--listen",
        default=f"{DEFAULT_HOST}:{DEFAULT_PORT}",
        metavar="HOST[:PORT]",
        help="address to listen on (default %(default)s: this machine only; other machines "
        "reach the service only on an address named here, e.g. 0.0.0.0 for every interface; "
        "port 0: any free port)",
    )
    serve.add_argument("--name", help="the name peers see (default: the host name)")
    serve.add_argument(
        "--transaction-idle",
        type=float,
        default=0.3,
        metavar="SECONDS",
        help="shared mode: end the PC/SC transaction after this long without an APDU",
    )
    serve.set_defaults(handler=_guarded(_serve))

    pair_ = verbs.add_parser(
        "pair",
        parents=[home],
        help="pair two machines: print a code (reader side), or use it (--with, remote side)",
    )
    pair_.add_argument("--with", dest="service", metavar="HOST[:PORT]", help="the share service")
    pair_.add_argument("code", nargs="?", help="the code the service printed")
    pair_.set_defaults(handler=_guarded(_pair))

    peers = verbs.add_parser(
        "peers", parents=[home], help="who this machine trusts, for what, since when"
    )
    peers.add_argument("--json", action="store_true", help="machine-readable output")
    peers.set_defaults(handler=_guarded(_peers))
    unpair = verbs.add_parser("unpair", parents=[home], help="forget a paired machine")
    unpair.add_argument("fingerprint", help="the start of its certificate fingerprint")
    unpair.add_argument(
        "--as",
        dest="role",
        choices=[r.value for r in PeerRole],
        help="withdraw only this direction (default: forget the machine)",
    )
    unpair.set_defaults(handler=_guarded(_unpair))

    list_ = verbs.add_parser("list", parents=[home], help="the readers and their state")
    list_.add_argument(
        "--from",
        dest="service",
        metavar="NAME",
        help="a paired service (name, address, or NAME@HOST[:PORT]; default: this machine's "
        "own service if it runs, else the only service paired here)",
    )
    list_.add_argument("--json", action="store_true", help="machine-readable output")
    list_.set_defaults(handler=_guarded(_list))

    attach = verbs.add_parser(
        "attach", parents=[home], help="attach a shared reader here, through vpcd (remote side)"
    )
    attach.add_argument(
        "reader",
        help='the reader: its stable name ("Reader 1") or PC/SC name, in any case, or the '
        "unique start of one",
    )
    attach.add_argument(
        "--from",
        dest="service",
        metavar="NAME",
        help="the paired service: its name, an address it was paired at, or NAME@HOST[:PORT] "
        "(default: the only service paired here)",
    )
    attach.add_argument(
        "--mode",
        choices=[m.name.lower() for m in ShareMode],
        default="exclusive",
        help="exclusive: local applications cannot use the card meanwhile (default); "
        "shared: both sides use it, each burst of APDUs in a PC/SC transaction, and the card "
        "is never reset under anyone; the remote session gets a logical channel of its own, "
        "so neither side sees the PIN the other verified. On a card without logical channels "
        "shared mode shares the card's security state (a PIN verified on one side counts on "
        "the other): use exclusive mode to keep them apart",
    )
    attach.add_argument(
        "--session", default=None, help="this session's name (default: user@host[:session id])"
    )
    attach.add_argument(
        "--vpcd",
        default=f"{DEFAULT_VPCD[0]}:{DEFAULT_VPCD[1]}",
        metavar="HOST:PORT",
        help="this machine's vpcd reader slot (default %(default)s)",
    )
    attach.set_defaults(handler=_guarded(_attach))

    detach_ = verbs.add_parser(
        "detach", parents=[home], help="end a share (either side); the reader is free again"
    )
    detach_.add_argument("reader", nargs="?", default="", help="the reader (default: all)")
    detach_.add_argument(
        "--from", dest="service", metavar="NAME", help="a paired service (as for list)"
    )
    detach_.add_argument(
        "--session",
        default=None,
        help="only this session's (remote default: this session; local default: any)",
    )
    detach_.set_defaults(handler=_guarded(_detach))


def _guarded(verb: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a verb; a share home that cannot be trusted ends it with a clear message."""

    def run(args: argparse.Namespace) -> int:
        try:
            return verb(args)
        except ShareHomeError as exc:
            return _fail(str(exc))

    return run


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _home(args: argparse.Namespace) -> ShareHome:
    home = ShareHome(args.home)
    home.check()
    return home


def _fail(message: str, status: int = EXIT_FAILURE) -> int:
    print(f"vsc share: {message}", file=sys.stderr)
    return status


def _error_status(exc: ShareError) -> int:
    return EXIT_REFUSED if isinstance(exc, Refused) else EXIT_FAILURE


def _show_events() -> None:
    # The event log lines are for the person running the command.
    logging.getLogger("vsc.share.events").setLevel(logging.INFO)
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        events = logging.getLogger("vsc.share.events")
        events.addHandler(handler)
        events.propagate = False


def _on_signals(handler: Callable[[int], None], signals: tuple[int, ...]) -> dict[int, object]:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        handler(signum)

    return {sig: signal.signal(sig, on_signal) for sig in signals}


def _restore(previous: dict[int, object]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)  # type: ignore[arg-type]  # what signal.signal returned


# --- verbs ----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    _show_events()
    home = _home(args)
    try:
        host, port = parse_address(args.listen, listen=True)
    except ValueError as exc:
        return _fail(str(exc), 2)
    try:
        service = ShareService(
            home, host=host, port=port, name=args.name, transaction_idle=args.transaction_idle
        )
    except ValueError as exc:
        return _fail(str(exc), 2)
    previous = _on_signals(lambda _: service.stop(), (signal.SIGINT, signal.SIGTERM))
    try:
        try:
            service.start()
        except OSError as exc:
            service.stop()
            service.join()
            return _fail(f"cannot listen on {host}:{port}: {exc}")
        home.record_service(*service.address)
        service.wait()
        return EXIT_OK if service.join() else EXIT_FAILURE
    finally:
        home.forget_service()
        _restore(previous)


def _pair(args: argparse.Namespace) -> int:
    home = _home(args)
    identity = home.identity()
    if args.service is None:
        if args.code is not None:
            return _fail("a code goes with --with HOST (the service to pair with)", 2)
        code = new_code()
        home.offer_pairing(code, PAIRING_LIFETIME)
        host, port = home.service_listen() or (DEFAULT_HOST, DEFAULT_PORT)
        print(f"Pairing code: {code}")
        print(f"Valid for {int(PAIRING_LIFETIME // 60)} minutes, for one attempt.")
        print(
            "It lets one machine use this machine's readers (nothing else: that machine "
            "will not lend you its own)."
        )
        print("On the remote machine, run:")
        print(f"  vsc share pair --with {socket.gethostname()}:{port} {code}")
        print(f"This machine's certificate: {format_fingerprint(identity.fingerprint)}")
        if is_loopback(host):
            print(
                f"Note: the service listens on {host}, this machine only. For another machine "
                "to reach it, run it on an address it can reach: vsc share serve --listen "
                "ADDRESS (0.0.0.0: every interface)."
            )
        return EXIT_OK
    if args.code is None:
        return _fail("give the code the service printed: vsc share pair --with HOST CODE", 2)
    try:
        normalize_code(args.code)
        address = parse_address(args.service)
    except (ValueError, PairingError) as exc:
        return _fail(str(exc), 2)
    try:
        peer = pair(home, address, args.code)
    except ShareError as exc:
        return _fail(str(exc), _error_status(exc))
    print(f"Paired with {peer.name} at {peer.address}: this machine may attach its readers")
    print(f"(--from {peer.name}); {peer.name} may not use this machine's readers.")
    print(f"Its certificate:     {format_fingerprint(peer.fingerprint)}")
    print(f"This machine's:      {format_fingerprint(identity.fingerprint)}")
    return EXIT_OK


def _peers(args: argparse.Namespace) -> int:
    home = _home(args)
    peers = home.trust.peers()
    if args.json:
        print(json.dumps(_peers_json(home, peers), indent=2))
        return EXIT_OK
    print(f"this machine  {format_fingerprint(home.identity().fingerprint)}")
    sections = [
        (PeerRole.SERVICE, "Services this machine may attach readers from (--from NAME):"),
        (PeerRole.ENDPOINT, "Endpoints that may use this machine's readers:"),
    ]
    for role, title in sections:
        print(f"\n{title}")
        listed = [p for p in peers if p.may(role)]
        for peer in listed:
            grant = peer.grants[role]
            where = ""
            if grant.address:
                where = (
                    f" at {grant.address}"
                    if role is PeerRole.SERVICE
                    else f" (paired from {grant.address})"
                )
            print(f"  {peer.name}{where}, since {grant.since or 'before pairings had a direction'}")
            print(f"    {format_fingerprint(peer.fingerprint)}")
        if not listed:
            print("  (none)")
    untrusted = [p for p in peers if not p.grants]
    if untrusted:
        print("\nPinned but trusted for nothing (paired before pairings had a direction):")
        for peer in untrusted:
            print(f"  {peer.name}  {format_fingerprint(peer.fingerprint)}")
    return EXIT_OK


def _peers_json(home: ShareHome, peers: list[Peer]) -> dict[str, object]:
    return {
        "this_machine": home.identity().fingerprint.hex(),
        "peers": [
            {
                "name": peer.name,
                "fingerprint": peer.fingerprint.hex(),
                "roles": {
                    role.value: {"since": grant.since, "address": grant.address}
                    for role, grant in peer.grants.items()
                },
            }
            for peer in peers
        ],
    }


def _unpair(args: argparse.Namespace) -> int:
    role = PeerRole(args.role) if args.role else None
    try:
        gone = _home(args).trust.unpin(args.fingerprint, role)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if not gone:
        return _fail(f"no paired machine has a fingerprint starting {args.fingerprint}")
    for peer in gone:
        what = f"no longer trusted as {ROLE_TEXT[role]}" if role else "forgotten"
        print(f"{peer.describe()}: {what}")
    return EXIT_OK


def _target(home: ShareHome, spec: str | None) -> tuple[tuple[str, int], Peer | None]:
    """The service to talk to (None: this machine's own) and where it listens.

    Without ``--from``: this machine's running service if there is one, else
    the only service paired here.
    """
    if spec is None:
        address = home.service_address()
        if address is not None:
            return address, None
        if not home.trust.peers(PeerRole.SERVICE):
            raise ShareError(
                "no share service runs here (vsc share serve), and no service is paired with "
                "this machine (vsc share pair --with HOST CODE)"
            )
    peer, address = resolve_service(home, spec)
    return address, peer


def _list(args: argparse.Namespace) -> int:
    home = _home(args)
    try:
        address, peer = _target(home, args.service)
        name, readers = list_readers(home, address, local=peer is None, service=peer)
    except ValueError as exc:
        return _fail(str(exc), 2)
    except ShareError as exc:
        return _fail(str(exc), _error_status(exc))
    if args.json:
        print(json.dumps({"service": name, "readers": [_reader_json(r) for r in readers]}))
        return EXIT_OK
    print(f"Readers of {name}:")
    width = max((len(r.name) for r in readers), default=0)
    for reader in readers:
        state = state_text(reader)
        print(f"  {reader.name:<{width}}  {state:<32}  {reader.pcsc_name}")
    if not readers:
        print("  (none)")
    return EXIT_OK


def _reader_json(reader: ReaderInfo) -> dict[str, str]:
    return {
        "name": reader.name,
        "pcsc_name": reader.pcsc_name,
        "state": reader.state.name.lower().replace("_", "-"),
        "session": reader.session,
    }


def _attach(args: argparse.Namespace) -> int:
    _show_events()
    home = _home(args)
    try:
        vpcd = parse_address(args.vpcd, default_port=DEFAULT_VPCD[1])
        service, address = resolve_service(home, args.service)
    except ValueError as exc:
        return _fail(str(exc), 2)
    except ShareError as exc:
        return _fail(str(exc))
    endpoint = Endpoint(
        home,
        address,
        args.reader,
        session=args.session or default_session(),
        mode=ShareMode[args.mode.upper()],
        vpcd=vpcd,
        service=service,
    )
    reasons: dict[int, EndReason] = {
        signal.SIGINT: EndReason.DETACH,
        signal.SIGTERM: EndReason.LOGOUT,
        signal.SIGHUP: EndReason.LOGOUT,
    }
    previous = _on_signals(lambda signum: endpoint.stop(reasons[signum]), tuple(reasons))
    try:
        outcome = endpoint.run()
    finally:
        _restore(previous)
    if outcome.refused is not None:
        return _fail(outcome.message, EXIT_REFUSED)
    if outcome.failed:
        return _fail(outcome.message)
    return EXIT_OK


def _detach(args: argparse.Namespace) -> int:
    home = _home(args)
    try:
        address, peer = _target(home, args.service)
        local = peer is None
        session = args.session if args.session is not None else ("" if local else default_session())
        count = detach(home, address, args.reader, session, local=local, service=peer)
    except ValueError as exc:
        return _fail(str(exc), 2)
    except ShareError as exc:
        return _fail(str(exc), _error_status(exc))
    what = args.reader or "readers"
    print(f"detached {count} share(s)" if count != 1 else f"detached {what}")
    return EXIT_OK if count else _fail(f"nothing to detach ({what} not shared by this session)")
