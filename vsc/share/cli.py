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
)
from .endpoint import DEFAULT_VPCD, Endpoint
from .home import ShareHome, ShareHomeError, format_fingerprint
from .pairing import new_code
from .protocol import DEFAULT_PORT, EndReason, ReaderInfo, ReaderState, ShareMode
from .service import ShareService

if TYPE_CHECKING:
    from ..cliutil import Subparsers

__all__ = ["register"]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_REFUSED: Final = 3
PAIRING_LIFETIME: Final = 600.0

_STATE_TEXT: Final = {
    ReaderState.NO_CARD: "no card",
    ReaderState.CARD_PRESENT: "card present",
    ReaderState.SHARED: "shared in session {session}",
    ReaderState.UNAVAILABLE: "not connected",
}


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
        default=f"0.0.0.0:{DEFAULT_PORT}",
        metavar="HOST[:PORT]",
        help="address to listen on (default %(default)s; port 0: any free port)",
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

    peers = verbs.add_parser("peers", parents=[home], help="this machine's pins")
    peers.set_defaults(handler=_guarded(_peers))
    unpair = verbs.add_parser("unpair", parents=[home], help="forget a paired machine")
    unpair.add_argument("fingerprint", help="the start of its certificate fingerprint")
    unpair.set_defaults(handler=_guarded(_unpair))

    list_ = verbs.add_parser("list", parents=[home], help="the readers and their state")
    list_.add_argument("--from", dest="service", metavar="HOST[:PORT]", help="a remote service")
    list_.add_argument("--json", action="store_true", help="machine-readable output")
    list_.set_defaults(handler=_guarded(_list))

    attach = verbs.add_parser(
        "attach", parents=[home], help="attach a shared reader here, through vpcd (remote side)"
    )
    attach.add_argument("reader", help='the reader\'s name, e.g. "Reader 1"')
    attach.add_argument("--from", dest="service", required=True, metavar="HOST[:PORT]")
    attach.add_argument(
        "--mode",
        choices=[m.name.lower() for m in ShareMode],
        default="exclusive",
        help="exclusive: local applications cannot use the card meanwhile (default); "
        "shared: both sides use it, each burst of APDUs in a PC/SC transaction",
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
    detach_.add_argument("--from", dest="service", metavar="HOST[:PORT]", help="a remote service")
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
        where = home.service_address()
        port = where[1] if where else DEFAULT_PORT
        print(f"Pairing code: {code}")
        print(f"Valid for {int(PAIRING_LIFETIME // 60)} minutes, for one attempt.")
        print("On the remote machine, run:")
        print(f"  vsc share pair --with {socket.gethostname()}:{port} {code}")
        print(f"This machine's certificate: {format_fingerprint(identity.fingerprint)}")
        return EXIT_OK
    if args.code is None:
        return _fail("give the code the service printed: vsc share pair --with HOST CODE", 2)
    try:
        address = parse_address(args.service)
        peer = pair(home, address, args.code)
    except ValueError as exc:
        return _fail(str(exc), 2)
    except ShareError as exc:
        return _fail(str(exc), _error_status(exc))
    print(f"Paired with {peer.name} at {peer.address}.")
    print(f"Its certificate:     {format_fingerprint(peer.fingerprint)}")
    print(f"This machine's:      {format_fingerprint(identity.fingerprint)}")
    return EXIT_OK


def _peers(args: argparse.Namespace) -> int:
    home = _home(args)
    print(f"this machine  {format_fingerprint(home.identity().fingerprint)}")
    for peer in home.peers():
        where = f" at {peer.address}" if peer.address else ""
        print(f"{peer.name}{where}, paired {peer.paired_at}")
        print(f"              {format_fingerprint(peer.fingerprint)}")
    return EXIT_OK


def _unpair(args: argparse.Namespace) -> int:
    try:
        gone = _home(args).unpin(args.fingerprint)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if not gone:
        return _fail(f"no paired machine has a fingerprint starting {args.fingerprint}")
    for peer in gone:
        print(f"forgot {peer.name} ({format_fingerprint(peer.fingerprint, 4)})")
    return EXIT_OK


def _target(home: ShareHome, service: str | None) -> tuple[tuple[str, int], bool]:
    """The service to talk to, and whether it is this machine's own."""
    if service is not None:
        return parse_address(service), False
    address = home.service_address()
    if address is None:
        raise ShareError("no share service runs here (vsc share serve); or use --from HOST")
    return address, True


def _list(args: argparse.Namespace) -> int:
    home = _home(args)
    try:
        address, local = _target(home, args.service)
        name, readers = list_readers(home, address, local=local)
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
        state = _STATE_TEXT[reader.state].format(session=reader.session)
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
        address = parse_address(args.service)
        vpcd = parse_address(args.vpcd, default_port=DEFAULT_VPCD[1])
    except ValueError as exc:
        return _fail(str(exc), 2)
    endpoint = Endpoint(
        home,
        address,
        args.reader,
        session=args.session or default_session(),
        mode=ShareMode[args.mode.upper()],
        vpcd=vpcd,
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
        address, local = _target(home, args.service)
        session = args.session if args.session is not None else ("" if local else default_session())
        count = detach(home, address, args.reader, session, local=local)
    except ValueError as exc:
        return _fail(str(exc), 2)
    except ShareError as exc:
        return _fail(str(exc), _error_status(exc))
    what = args.reader or "readers"
    print(f"detached {count} share(s)" if count != 1 else f"detached {what}")
    return EXIT_OK if count else _fail(f"nothing to detach ({what} not shared by this session)")
