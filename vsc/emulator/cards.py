"""What a slot serves: factory-fresh cards in memory and persistent cards from the store.

Every card-construction choice lives here: the application (``--applet``),
a PIV card's profile, serial and transport (``--profile``, ``--serial``,
``--transport``; docs/piv.md, "Profiles" and "The device"), the store
location of a ``--card``, its protection backend (never guessed), and the
audit hook of a card that belongs to a store. The command line
(:mod:`vsc.emulator.cli`) collects the options and calls :func:`default_card`
for in-memory slots and :func:`open_card` for ``--card``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from applets.cards import Transport, build_card
from applets.echo import EchoApplet
from applets.gids import GIDS_ATR, GidsApplet
from applets.piv import DEFAULT_PROFILE, PROFILES, PivApplet, PivProfile
from applets.piv.profile import profile_named

from ..card import Card
from ..lifecycle.audit import AuditLog
from ..store import (
    BackendSpec,
    CardExists,
    CardNotFound,
    CardSettings,
    CardStore,
    StoredCard,
    creating_card,
    default_store_path,
)
from ..store import open_card as open_stored_card
from ..store.application import ApplicationMismatch
from ..store.files import make_private_dirs
from ..store.gids import has_gids, open_gids
from ..store.piv import open_piv
from ..store.store import CARDS_DIR

__all__ = [
    "APPLETS",
    "BACKEND_ENVIRONMENT",
    "DEFAULT_PROFILE",
    "PROFILES",
    "SERIAL_BASE",
    "CardOpenError",
    "PivProfile",
    "Transport",
    "backend_from",
    "default_card",
    "default_serial",
    "open_card",
]

# Not __name__: one logger for the whole front-end, as before its split.
log = logging.getLogger("vsc.emulator")

#: The card applications ``--applet`` offers.
APPLETS: Final = ("piv", "gids")


#: In-memory cards without ``--serial`` get this plus their slot's port: stable from
#: one start to the next, and different for every reader.
SERIAL_BASE: Final = 10_000_000


def default_serial(port: int) -> int:
    """The serial of an in-memory card on vpcd port ``port`` (8 digits, like a YubiKey's)."""
    return SERIAL_BASE + port % 90_000_000


def default_card(
    serial: int | None = None,
    applet: str = "piv",
    *,
    profile: PivProfile | str = DEFAULT_PROFILE,
    transport: Transport = Transport.NFC,
) -> Card:
    """A factory-default card: the applets a fresh emulator offers.

    ``applet`` chooses the card's application: ``piv`` (a card of ``profile``,
    a profile or its name, by default a YubiKey 5.4; ``transport`` chooses a
    YubiKey's ATR) or ``gids`` (an empty GIDS card with the ATR of a Windows
    virtual smart card).
    """
    if isinstance(profile, str):
        profile = profile_named(profile)
    if applet == "gids":
        return _gids_card(GidsApplet(serial=serial))
    if applet == "piv":
        return build_card(PivApplet(serial=serial, profile=profile), transport)
    raise ValueError(f"unknown applet {applet!r}; choose one of {', '.join(APPLETS)}")


def _gids_card(gids: GidsApplet) -> Card:
    card = Card(atr=GIDS_ATR)
    card.register(gids, default=True)
    card.register(EchoApplet())
    return card


#: Environment variables that choose a protection backend (``--tpm`` etc. win over them).
BACKEND_ENVIRONMENT: Final = ("VSC_TPM", "VSC_KEY_FILE", "VSC_PASSPHRASE")


class CardOpenError(Exception):
    """A ``--card`` that cannot be served: the emulator says why and exits with status 2."""


def backend_from(
    *,
    tpm: str | None = None,
    key_file: str | None = None,
    insecure_plain: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> BackendSpec:
    """The protection backend of ``--card``: a flag, else exactly one of the variables.

    Never a default: a TPM only from ``--tpm``/``VSC_TPM``, nothing unprotected
    without ``--insecure-plain``.
    """
    if tpm:
        return BackendSpec.tpm(tpm)
    if key_file:
        return BackendSpec.software(key_file=key_file)
    if insecure_plain:
        return BackendSpec.plain()
    chosen = [name for name in BACKEND_ENVIRONMENT if environ.get(name)]
    if len(chosen) > 1:
        raise CardOpenError(
            f"{' and '.join(chosen)} are all set: choose one backend"
            " (or give --tpm, --key-file or --insecure-plain)"
        )
    if not chosen:
        raise CardOpenError(
            "--card needs a protection backend: --tpm TCTI (or VSC_TPM) for a TPM,"
            " --key-file PATH (or VSC_KEY_FILE) or VSC_PASSPHRASE for the software backend,"
            " or --insecure-plain for tests"
        )
    value = environ[chosen[0]]
    if chosen[0] == "VSC_TPM":
        return BackendSpec.tpm(value)
    if chosen[0] == "VSC_KEY_FILE":
        return BackendSpec.software(key_file=value)
    return BackendSpec.software(passphrase=value.encode())


def _card_location(spec: str, store: Path | None) -> tuple[Path, str]:
    """``--card`` names a card in the store, or (with a ``/``, or a leading ``.``/``~``) a path."""
    if "/" in spec or spec.startswith((".", "~")):
        path = Path(spec).expanduser().absolute()
        return path, path.name
    return CardStore(store if store is not None else default_store_path()).path_of(spec), spec


def _open_or_create(
    path: Path,
    name: str,
    backend: BackendSpec,
    applet: str | None,
    *,
    profile: PivProfile | None = None,
    serial: int | None = None,
    settings: CardSettings | None = None,
) -> tuple[StoredCard, bool]:
    """The card at ``path``; one that does not exist at all is made whole (factory-fresh,
    with ``settings``).

    Returns the open card and whether it was created now. A card that exists is
    never made again, whatever is wrong with it (:class:`vsc.store.CorruptStore`).
    """
    try:
        return open_stored_card(path, backend, name=name), False
    except CardNotFound:
        if os.path.lexists(path):
            raise CardOpenError(f"{path} exists but is not a card") from None
    if applet == "gids" and profile is not None:
        raise CardOpenError(f"card {name!r} would be a GIDS card: profiles are for PIV cards")
    if path.parent.name == CARDS_DIR:
        CardStore(path.parent.parent).make()
    else:
        make_private_dirs(path.parent, "card directory")
    try:
        with creating_card(path, backend, name=name, settings=settings) as stored:
            if applet == "gids":
                open_gids(stored, provision=True)
            else:
                open_piv(stored, serial=serial, profile=profile, provision=True)
    except CardExists:  # another process created it a moment ago
        return open_stored_card(path, backend, name=name), False
    log.warning("card %r: created with factory defaults at %s", name, path)
    return open_stored_card(path, backend, name=name), True


def _stored_card(
    stored: StoredCard,
    applet: str | None,
    *,
    profile: PivProfile | None = None,
    serial: int | None = None,
    transport: Transport = Transport.NFC,
) -> tuple[Card, PivApplet | GidsApplet]:
    """The card of ``stored``: the application it holds (:class:`CardOpenError` if not ``applet``).

    A PIV card keeps its profile and serial; ``profile`` and ``serial``, if
    given, must be its own.
    """
    try:
        if applet == "gids" or (applet is None and has_gids(stored)):
            if profile is not None:
                raise CardOpenError(
                    f"card {stored.name!r} is a GIDS card: profiles are for PIV cards"
                )
            gids = open_gids(stored)
            return _gids_card(gids), gids
        piv = open_piv(stored, serial=serial, profile=profile)
    except ApplicationMismatch as e:
        raise CardOpenError(str(e)) from None
    except ValueError as exc:
        raise CardOpenError(f"card {stored.name!r}: {exc}") from None
    return build_card(piv, transport), piv


def open_card(
    spec: str,
    backend: BackendSpec,
    *,
    store: Path | None = None,
    applet: str | None = None,
    profile: PivProfile | None = None,
    serial: int | None = None,
    transport: Transport = Transport.NFC,
    settings: CardSettings | None = None,
) -> tuple[Card, StoredCard]:
    """The persistent card ``--card PATH|NAME`` names, created factory-fresh when missing.

    A new card gets ``applet`` (PIV by default), ``settings`` and, for PIV,
    ``profile`` (default: the default profile) and ``serial`` (default:
    random); an existing one keeps its own (:class:`CardOpenError` if
    ``applet``, ``profile`` or ``serial`` name others). ``transport`` chooses
    a YubiKey's ATR.

    Returns the card to serve and its store handle, which the caller closes
    once no thread uses the card any more. Raises :class:`vsc.store.StoreError`
    (in use, another TPM or key, unreadable) or :class:`CardOpenError`.
    """
    path, name = _card_location(spec, store)
    # A card of a store: its security events, through its APDUs and its store, go to
    # the store's audit log (checked first: a card is not served unaudited).
    audit = AuditLog(path.parent.parent, via="emulator") if path.parent.name == CARDS_DIR else None
    if audit is not None:
        CardStore(audit.root).make()
        audit.check()
    stored, created = _open_or_create(
        path, name, backend, applet, profile=profile, serial=serial, settings=settings
    )
    try:
        if audit is not None:
            stored.events = audit.card_hook(name)
            if created:
                made = applet or (profile or DEFAULT_PROFILE).name
                audit.write(
                    "create",
                    name,
                    f"{name}: created with factory defaults by the emulator"
                    f" ({made}, {backend.kind} backend)",
                    profile=made,
                    backend=backend.kind,
                )
        info = stored.backend
        if info.kind == "plain":
            log.warning("card %r: --insecure-plain: its keys and PINs are NOT protected", name)
        log.info("card %r at %s: %s", name, path, info.summary)
        card, _ = _stored_card(stored, applet, profile=profile, serial=serial, transport=transport)
    except BaseException:
        stored.close()
        raise
    return card, stored
