"""The command line of ``python -m vsc.emulator``: flags, cards, signals, exit status.

A new card-construction option goes in three places here: the flag in
:func:`_add_card_options`, its checks in :func:`_check`, and its value passed
on in :func:`_build_cards` (to :func:`~vsc.emulator.cards.open_card` for a
``--card`` and to :func:`~vsc.emulator.cards.default_card` for a slot kept
in memory).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .. import trace
from ..card import Card
from ..store import CardSettings, StoredCard, StoreError
from .cards import (
    APPLETS,
    DEFAULT_PROFILE,
    PROFILES,
    SERIAL_BASE,
    CardOpenError,
    PivProfile,
    Transport,
    backend_from,
    default_card,
    default_serial,
    open_card,
)
from .server import DEFAULT_FRAME_TIMEOUT, DEFAULT_HOST, DEFAULT_PORT, Emulator

__all__ = ["main"]

log = logging.getLogger("vsc.emulator")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vsc.emulator",
        description="Serve virtual smart cards to pcscd through vsmartcard's vpcd driver.",
        epilog=(
            "A --card is persistent: it lives in a card store (--store; created with factory "
            "defaults when missing) and every change is on disk before the card answers. Its "
            "secrets are protected by a TPM (--tpm TCTI or VSC_TPM), by a key file (--key-file "
            "or VSC_KEY_FILE) or a passphrase (VSC_PASSPHRASE) in software, or not at all "
            "(--insecure-plain, tests only); nothing is chosen for you. Slots without a --card "
            "get a factory-fresh card kept in memory only. Exit status 2: a card cannot be "
            "opened (in use by another process, sealed by another TPM or key, ...)."
        ),
    )
    parser.add_argument(
        "-H", "--host", default=DEFAULT_HOST, help="vpcd's host (-R: the address to listen on)"
    )
    parser.add_argument(
        "-P", "--port", type=int, default=DEFAULT_PORT, help=f"vpcd's port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "-R",
        "--reversed",
        action="store_true",
        help="listen on host:port and let vpcd connect to the card",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: log connections (INFO); -vv: also trace every APDU",
    )
    _add_card_options(parser)
    parser.add_argument(
        "--slots",
        type=int,
        metavar="N",
        help="serve N cards on ports P .. P+N-1 (a vpcd entry has 2 readers: P and P+1); "
        "default: the number of --card options, at least 1",
    )
    parser.add_argument(
        "--frame-timeout",
        type=float,
        default=DEFAULT_FRAME_TIMEOUT,
        metavar="SECONDS",
        help="the time a frame may take from its first byte to its last, and (-R) a new "
        "connection's wait for its first frame and the quiet after which a fresh vpcd "
        "connection takes over a slot (default %(default)s)",
    )
    return parser


def _add_card_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose what card each slot serves (see :func:`_build_cards`)."""
    parser.add_argument(
        "--card",
        action="append",
        default=[],
        metavar="PATH|NAME",
        help=(
            "a persistent card: a NAME in the store or a directory PATH (with a '/'); one per "
            "slot in order (repeatable); created with factory defaults when missing"
        ),
    )
    parser.add_argument(
        "--store",
        type=Path,
        metavar="DIR",
        help="the card store for --card NAME (default: $VSC_STORE, else $XDG_DATA_HOME/vsc "
        "or ~/.local/share/vsc)",
    )
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument(
        "--tpm",
        metavar="TCTI",
        help="protect cards with this TPM, e.g. device:/dev/tpmrm0 or swtpm:path=SOCKET "
        "(default: $VSC_TPM; never a TPM found by chance)",
    )
    backend.add_argument(
        "--key-file",
        metavar="PATH",
        help="protect cards in software under this 32-byte key file, mode 0600, created for "
        "a new card (default: $VSC_KEY_FILE; a passphrase comes from $VSC_PASSPHRASE)",
    )
    backend.add_argument(
        "--insecure-plain",
        action="store_true",
        help="INSECURE, for tests: store the cards' keys and PINs unprotected",
    )
    parser.add_argument(
        "--software-keys",
        action="store_true",
        help="a TPM card created now may keep keys the TPM cannot hold (RSA-4096, Ed25519, "
        "X25519) in software, marked so in GET METADATA and attestations; without it they are "
        "refused (6A80). A card keeps the choice it was created with",
    )
    parser.add_argument(
        "--applet",
        choices=APPLETS,
        help="the card application: piv (the default) or gids (an empty GIDS card, as a "
        "Windows virtual smart card before personalisation); for the fresh cards of slots "
        "without --card and for a --card created now (a stored card keeps its own)",
    )
    parser.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        help=f"the card a PIV card is (default {DEFAULT_PROFILE.name}): yubikey-5.4 (3DES"
        " management key, what yubico-piv-tool 2.2.0 can administer), yubikey-5.7 (AES-192,"
        " MOVE/DELETE KEY, RSA-3072/4096, Ed25519, X25519) or piv (a plain SP 800-73-4 card, no"
        " Yubico extensions); for fresh cards and a --card created now (a stored card keeps its"
        " own)",
    )
    parser.add_argument(
        "--serial",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="the serial number of the card in each slot, in order (repeatable; a stored card"
        f" keeps its own): default for cards in memory {SERIAL_BASE} + the slot's port, the"
        " same at every start",
    )
    parser.add_argument(
        "--transport",
        choices=tuple(Transport),
        default=Transport.NFC,
        help="how a YubiKey is attached, which decides its ATR: nfc (default; any reader name)"
        ' or usb (for a vpcd reader named "Yubico YubiKey CCID": ykman then uses extended'
        " APDUs)",
    )


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Refuse contradictory options (exit status 2, argparse's); the number of slots."""
    slots: int = args.slots if args.slots is not None else max(1, len(args.card))
    if slots < 1:
        parser.error("--slots must be at least 1")
    if slots < len(args.card):
        parser.error(f"{len(args.card)} cards do not fit in {slots} slots")
    if len(set(args.card)) != len(args.card):
        parser.error("the same --card twice: a card can be in one reader only")
    if len(args.serial) > slots:
        parser.error(f"{len(args.serial)} serials for {slots} slots")
    if any(not 0 < serial < 2**32 for serial in args.serial):
        parser.error("a serial is a number from 1 to 4294967295")
    if len(set(args.serial)) != len(args.serial):
        parser.error("the same --serial twice: every card has its own")
    if args.applet == "gids" and args.profile is not None:
        parser.error("--profile is for PIV cards")
    lowest = 0 if args.reversed else 1
    if not lowest <= args.port or args.port + slots - 1 > 0xFFFF:
        parser.error("ports out of range")
    if args.frame_timeout <= 0:
        parser.error("--frame-timeout must be positive")
    if not args.card:
        for flag, value in (
            ("--store", args.store),
            ("--tpm", args.tpm),
            ("--key-file", args.key_file),
            ("--insecure-plain", args.insecure_plain),
            ("--software-keys", args.software_keys),
        ):
            if value:
                parser.error(f"{flag} applies to persistent cards: give --card too")
    return slots


def _build_cards(args: argparse.Namespace, slots: int, stored: list[StoredCard]) -> list[Card]:
    """Every slot's card: the ``--card`` ones in order, then factory-fresh ones in memory.

    Each store handle is appended to ``stored`` (the caller closes them).
    """
    cards = []
    profile: PivProfile | None = None if args.profile is None else PROFILES[args.profile]
    transport = Transport(args.transport)

    def serial(slot: int) -> int | None:
        return args.serial[slot] if slot < len(args.serial) else None

    if args.card:
        backend = backend_from(
            tpm=args.tpm, key_file=args.key_file, insecure_plain=args.insecure_plain
        )
        settings = CardSettings(software_keys=args.software_keys)
        for slot, spec in enumerate(args.card):
            card, handle = open_card(
                spec,
                backend,
                store=args.store,
                applet=args.applet,
                profile=profile,
                serial=serial(slot),
                transport=transport,
                settings=settings,
            )
            stored.append(handle)
            cards.append(card)
    cards += [
        default_card(
            serial(slot) or default_serial(args.port + slot),
            args.applet or "piv",
            profile=profile or DEFAULT_PROFILE,
            transport=transport,
        )
        for slot in range(len(cards), slots)
    ]
    return cards


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    slots = _check(parser, args)
    level = (logging.WARNING, logging.INFO)[args.verbose] if args.verbose < 2 else trace.TRACE
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # The handlers go in first, so a signal during card setup or right after start
    # still ends in a clean exit rather than a traceback or death by signal.
    emulator: Emulator | None = None
    stop_requested = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        log.info("%s: stopping", signal.Signals(signum).name)
        stop_requested = True
        if emulator is not None:
            emulator.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stored: list[StoredCard] = []
    # Threads that did not stop may still be inside a card: leave those cards open
    # (the process is ending; the kernel releases their locks, SQLite their files).
    threads_stopped = True
    try:
        try:
            cards = _build_cards(args, slots, stored)
        except (CardOpenError, StoreError, ValueError) as exc:
            log.error("cannot serve the card: %s", exc)
            return 2
        emulator = Emulator(
            cards,
            host=args.host,
            port=args.port,
            reversed=args.reversed,
            frame_timeout=args.frame_timeout,
        )
        if stop_requested:
            emulator.stop()
        try:
            emulator.start()
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
            return 1
        if args.reversed:
            log.info("listening on ports %s", ", ".join(map(str, emulator.ports)))
        emulator.wait()
        threads_stopped = emulator.join()
        return 0 if threads_stopped else 1
    finally:
        if emulator is not None:
            emulator.close()
        if threads_stopped:
            for handle in stored:
                handle.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
