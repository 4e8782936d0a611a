"""The ``vsc`` commands for GIDS cards: create, info, unblock, respond (see :mod:`.gids`).

``vsc create NAME --applet gids`` takes tpmvscmgr's options; ``vsc info``,
``vsc unblock`` and ``vsc respond`` recognise a GIDS card (or a GIDS
challenge: 8 or 16 bytes in hex) and go this way.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
from typing import Any

from applets.piv.pinrules import CLASSES, PinRules

from .errors import LifecycleError, Refused
from .gids import DEFAULT_PIN, GIDS_RULES, GidsCards, GidsReport, gids_response
from .manager import CardManager
from .profiles import DEFAULT_PROFILE
from .timespec import format_local

__all__ = ["create", "holds", "info", "respond", "unblock"]

_KEY_LENGTHS = {"3des": 24, "aes128": 16, "aes256": 32}
#: ``vsc create`` options that belong to PIV's profiles and mean nothing to a GIDS card.
_PIV_ONLY = ("generate", "locked", "admin_tries", "admin_recovery", "puk_retries", "serial")


def holds(manager: CardManager, name: str) -> bool:
    """Whether ``name`` is a GIDS card (False when it cannot be opened: the PIV path says why)."""
    from vsc.store.errors import StoreError
    from vsc.store.gids import has_gids

    if manager.backend is None:
        return False
    try:
        stored = manager.store.open(name, manager.backend)
    except StoreError:
        return False
    try:
        return has_gids(stored)
    finally:
        stored.close()


def _rules(args: argparse.Namespace) -> PinRules:
    classes = {name: getattr(args, name) for name in CLASSES if getattr(args, name) is not None}
    if not classes and args.pin_min is None and args.pin_max is None:
        return GIDS_RULES
    fields: dict[str, Any] = dataclasses.asdict(GIDS_RULES)
    fields.update(classes)
    if args.pin_min is not None:
        fields["min_length"] = args.pin_min
    if args.pin_max is not None:
        fields["max_length"] = args.pin_max
    try:
        return PinRules(**fields)
    except ValueError as e:
        raise Refused(f"PIN policy refused: {e}") from None


def pin_rules(args: argparse.Namespace) -> PinRules:
    """The PIN policy ``vsc create --applet gids`` sets (tpmvscmgr's, with the overrides)."""
    return _rules(args)


def create(
    args: argparse.Namespace,
    manager: CardManager,
    pin: str | None,
    admin_key: str,
    *,
    pin_generated: bool = False,
) -> int:
    """``vsc create --applet gids``; ``admin_key``: random, default or hex, and ``pin``
    (None or "default": tpmvscmgr's default) read by the caller; a generated PIN is shown."""
    for option in _PIV_ONLY:
        if getattr(args, option, None):
            raise Refused(f"--{option.replace('_', '-')} is for PIV cards, not GIDS")
    if args.profile != DEFAULT_PROFILE:
        raise Refused("--profile is for PIV cards: a GIDS card has containers, not profiles")
    key_type = args.admin_key_type or "3des"
    if key_type not in _KEY_LENGTHS:
        raise Refused(f"a GIDS admin key is {', '.join(_KEY_LENGTHS)}, not {key_type}")
    created = GidsCards(manager).create(
        args.name,
        pin=pin,
        puk=args.puk,
        admin_key=admin_key,
        admin_key_length=_KEY_LENGTHS[key_type],
        rules=_rules(args),
        pin_generated=pin_generated,
        **({"pin_tries": args.pin_retries} if args.pin_retries is not None else {}),
    )
    backend = manager.backend.kind if manager.backend else "?"
    if args.json:
        print(
            json.dumps(
                {
                    "name": created.name,
                    "applet": "gids",
                    "serial": created.serial,
                    "cardid": created.cardid.hex(),
                    "backend": backend,
                    "admin_key": created.admin_key.hex() if created.admin_key else None,
                    "puk": created.puk,
                    **({"pin": pin} if pin_generated else {}),
                },
                indent=2,
            )
        )
        return 0
    print(
        f"Created GIDS card {created.name} (serial {created.serial},"
        f" card ID {created.cardid.hex().upper()}, {backend} backend)."
    )
    if created.admin_key is not None:
        print("Admin key (shown this once: give it to the helpdesk that will unblock the card):")
        print(f"  {created.admin_key.hex().upper()}")
    elif admin_key == "default":
        print("Admin key: tpmvscmgr's default. Anyone can answer this card's challenges.")
    if pin_generated:
        print(f"PIN (generated, shown this once: give it to the card's user): {pin}")
    elif pin in (None, "default"):
        print(f"PIN: tpmvscmgr's default {DEFAULT_PIN}: the user must change it.")
    if created.puk == "none":
        print("No PUK: a blocked PIN is reset with `vsc unblock` and the admin key.")
    return 0


def info(args: argparse.Namespace, manager: CardManager) -> int:
    report = GidsCards(manager).info(args.name)
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2, default=str))
        return 0
    _print(report)
    return 0


def _print(r: GidsReport) -> None:
    print(f"GIDS card {r.name}  (serial {r.serial})")
    print(f"  card ID:       {r.cardid.upper() or '-'}")
    print(f"  backend:       {r.backend}")
    print(f"  ECC keys:      {r.ecc}")
    print(f"  rollback:      {r.rollback}")
    print(f"  state:         {'operational' if r.operational else 'being personalised'}")
    if r.pending:
        print(f"  challenge:     outstanding ({r.pending})")
    print(f"  PIN:           {r.pin_tries[1]} of {r.pin_tries[0]} tries left")
    for line in r.pin_policy:
        print(f"    policy:      {line}")
    if r.puk_tries is None:
        print("  PUK:           none: unblock with `vsc unblock` and the admin key")
    else:
        print(f"  PUK:           {r.puk_tries[1]} of {r.puk_tries[0]} tries left")
    print(
        f"  admin key:     {r.admin_key_algorithm},"
        f" {r.admin_tries[1]} of {r.admin_tries[0]} tries left"
    )
    print("  containers:" + ("" if r.containers else " none"))
    for line in r.containers:
        print(f"    {line}")


def unblock(args: argparse.Namespace, manager: CardManager, pin: str | None) -> int:
    cards = GidsCards(manager)
    response = args.response
    if response is None:
        pending = cards.begin_unblock(args.name)
        print(f"Card {args.name} (serial {pending.serial}) asks to reset its PIN.")
        print("Read this challenge to your helpdesk:")
        print(f"  {pending.text}")
        print(
            f"Valid until {format_local(pending.expires)}. The helpdesk answers with"
            " `vsc respond CHALLENGE --admin-key-prompt`."
        )
        if not sys.stdin.isatty():
            print(f"Then run: vsc unblock {args.name} --pin-prompt --response RESPONSE")
            return 0
        response = input("Response: ")
    if pin is None:
        pin = getpass.getpass("New PIN: ")
        if getpass.getpass("Again: ") != pin:
            raise Refused("the two entries differ")
    cards.complete_unblock(args.name, response, pin)
    print(f"Card {args.name}: PIN reset, its counter is full again.")
    return 0


def respond(challenge: str, key: bytes) -> int:
    try:
        answer = gids_response(key, challenge)
    except LifecycleError as e:
        print(f"vsc: {e}", file=sys.stderr)
        return 3
    print("The GIDS card asks to reset its PIN.")
    print(f"Response: {answer}")
    return 0
