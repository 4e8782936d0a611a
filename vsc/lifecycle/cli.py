"""``vsc create|list|info|destroy|lock|unlock|unblock|respond|provision|...``: card lifecycle.

The ``tpmvscmgr`` / MyID workflow on the command line (see docs/lifecycle.md)::

    vsc create alice --pin-prompt --generate       # prints the random admin key once
    vsc list
    vsc info alice
    vsc lock alice [--at 18:00]
    vsc unlock alice --for 8h                      # shows a challenge for the helpdesk
    vsc respond --admin-key-prompt K7QD-2M9X-...   # the helpdesk, anywhere, no card
    vsc unlock alice --response XXXXX-XXXXX
    vsc unblock alice                              # same, for a blocked or forgotten PIN
    vsc provision alice --slot 9a --key alice.p12 --admin-key-prompt
    vsc destroy alice
    vsc tpm status

Every card command takes ``--store DIR`` (default ``$VSC_STORE``, else
``~/.local/share/vsc``) and the backend options of the emulator: ``--tpm
TCTI`` (or ``VSC_TPM``), ``--key-file PATH`` (or ``VSC_KEY_FILE``),
``VSC_PASSPHRASE``, ``--insecure-plain``. A card an emulator is serving is
in use: stop the emulator first, or use the card's APDU interface.

Exit status: 0 done; 1 failure (no such card, wrong backend, unreadable
file, ...); 2 usage; 3 refused (PIN policy, capacity, duplicate name, card
in use, wrong response or admin key, admin key blocked); 141 when whoever
reads stdout has gone (see :mod:`vsc.cliutil`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

from applets.piv import PROFILES as PIV_PROFILES
from applets.piv.keys import PinPolicy, TouchPolicy
from applets.piv.mgmt import ManagementKey, ManagementKeyType
from applets.piv.pinrules import CLASSES, CharRule, PinRules
from vsc.cliutil import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CliError,
    Handler,
    Secret,
    SecretOption,
    Subparsers,
    UsageError,
    dump_json,
    fail,
    warn,
)
from vsc.store import (
    BackendSpec,
    CardExists,
    CardInUse,
    CardSettings,
    CardStore,
    StoreError,
    default_store_path,
)
from vsc.sw import ApduError

from . import gids_cli
from .adminkey import parse_admin_key
from .audit import AuditHead, AuditLog
from .base import generate_pin
from .capacity import DEFAULT_CAPACITY
from .certs import ProvisioningError
from .creation import MAX_TRIES
from .errors import LifecycleError, Refused
from .gids import is_gids_challenge
from .helpdesk import Pending, check_unlock
from .manager import CardManager
from .offline import MistypedCode, Purpose, Request, compute_response, describe_minutes
from .profiles import DEFAULT_PROFILE, PROFILES
from .reports import CardReport
from .timespec import format_local, parse_duration, parse_time
from .tpmstatus import SRK_HANDLE, TpmStatus, find_tcti, interrogate

__all__ = ["register"]

BACKEND_ENVIRONMENT: Final = ("VSC_TPM", "VSC_KEY_FILE", "VSC_PASSPHRASE")
_KEY_TYPES: Final = {
    "3des": ManagementKeyType.TDES,
    "aes128": ManagementKeyType.AES128,
    "aes192": ManagementKeyType.AES192,
    "aes256": ManagementKeyType.AES256,
}


# -- parsers -----------------------------------------------------------------------------


def _card_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        type=Path,
        metavar="DIR",
        help="the card store (default: $VSC_STORE, else $XDG_DATA_HOME/vsc or ~/.local/share/vsc)",
    )
    backend = common.add_mutually_exclusive_group()
    backend.add_argument(
        "--tpm", metavar="TCTI", help="the TPM protecting the cards (default: $VSC_TPM)"
    )
    backend.add_argument(
        "--key-file",
        metavar="PATH",
        help="software backend: this 32-byte key file (default: $VSC_KEY_FILE; a passphrase"
        " comes from $VSC_PASSPHRASE)",
    )
    backend.add_argument(
        "--insecure-plain", action="store_true", help="INSECURE, tests only: no protection"
    )
    common.add_argument(
        "--max-cards",
        type=int,
        metavar="N",
        help=f"cards one TPM may hold (default: $VSC_MAX_CARDS or {DEFAULT_CAPACITY})",
    )
    return common


def _pin_options(parser: argparse.ArgumentParser, what: str) -> argparse._MutuallyExclusiveGroup:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--pin", metavar="PIN", help=f"{what} (visible to other users in ps: prefer --pin-prompt)"
    )
    group.add_argument("--pin-prompt", action="store_true", help=f"ask for the {what}")
    return group


#: The card's admin key, wherever a command takes it (see :class:`vsc.cliutil.SecretOption`).
ADMIN_KEY: Final = SecretOption(
    "admin-key",
    "the admin key",
    env="VSC_ADMIN_KEY",
    metavar="HEX",
    prompt_text="Admin key (hex): ",
)
#: ``vsc create``'s: also ``random`` (the default) or ``default``, which are not secrets.
CREATE_ADMIN_KEY: Final = dataclasses.replace(
    ADMIN_KEY, metavar="random|default|HEX", keywords=("random", "default")
)


#: The TPM's owner authorisation: only to make and persist vsc's storage key, once.
OWNER_AUTH: Final = SecretOption(
    "owner-auth",
    "the TPM's owner authorisation",
    env="VSC_OWNER_AUTH",
    prompt_text="TPM owner authorisation: ",
)


def _admin_key_options(parser: argparse.ArgumentParser) -> None:
    ADMIN_KEY.add_to(parser, value_help="the card's admin (management) key in hex")


def register(subparsers: Subparsers) -> None:
    """Add the lifecycle commands to the ``vsc`` command."""
    card = _card_options()

    def add(name: str, handler: Handler, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(
            name, parents=[card], help=help, description=help + ".", **kwargs
        )
        parser.set_defaults(handler=handler)
        return parser

    create = add("create", _create, "create and personalise a managed card (tpmvscmgr create)")
    create.add_argument("name", help="the card's name in the store")
    create.add_argument(
        "--applet",
        choices=("piv", "gids"),
        default="piv",
        help="piv (default): a managed PIV card; gids: a GIDS card as tpmvscmgr makes it"
        " (--default-pin: 12345678, no PUK unless --puk, PIN policy 8-127 by default)",
    )
    pins = _pin_options(
        create,
        "the user PIN (without any PIN option: asked at a terminal, else generated and shown once)",
    )
    pins.add_argument(
        "--default-pin",
        action="store_true",
        help="the factory PIN (PIV 123456, GIDS 12345678), if the policy allows: for tests",
    )
    create.add_argument(
        "--puk",
        default="none",
        metavar="none|default|PUK",
        help="none (default): a random PUK nobody learns, unblock goes through the admin key;"
        " default: 12345678; or the PUK",
    )
    CREATE_ADMIN_KEY.add_to(
        create,
        value_help="random (default; printed once), default (the factory key: anyone can"
        " answer the card's challenges), or the key in hex",
    )
    OWNER_AUTH.add_to(
        create,
        value_help="the TPM's owner authorisation, only if it is set and no storage key is"
        f" persisted at {SRK_HANDLE:#x} (vsc then persists its own there)",
    )
    create.add_argument(
        "--admin-key-type",
        choices=sorted(_KEY_TYPES),
        help="the admin key's algorithm (default: the profile's: aes192 for yubikey-5.7, else"
        " 3des)",
    )
    create.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        choices=sorted(PROFILES),
        help=f"the card it is, what it allows and generates (default {DEFAULT_PROFILE}): "
        + "; ".join(f"{name}: {p.summary}" for name, p in PROFILES.items() if name == p.name),
    )
    create.add_argument(
        "--serial",
        type=_serial,
        metavar="N",
        help="the card's serial number, 1 to 4294967295 (default: random); fixed for its life",
    )
    create.add_argument(
        "--generate",
        action="store_true",
        help="generate the profile's keys on the card, each with a card-signed certificate",
    )
    create.add_argument(
        "--locked",
        action="store_true",
        help="create it locked: a backup card that works only after a helpdesk unlock",
    )
    policy = create.add_argument_group("PIN policy (overrides the profile's, within 6-8)")
    policy.add_argument("--pin-min", type=int, metavar="N", help="minimum length")
    policy.add_argument("--pin-max", type=int, metavar="N", help="maximum length")
    for name in CLASSES:
        policy.add_argument(
            f"--{name}",
            type=CharRule.parse,
            metavar="RULE",
            help="optional, mandatory or not-allowed (also Windows' allowed/required/disallowed)",
        )
    create.add_argument(
        "--pin-retries",
        type=int,
        metavar="N",
        help=f"wrong PINs before the PIN blocks, 1-{MAX_TRIES} (default 3, as PIV; MyID uses 5)",
    )
    create.add_argument(
        "--puk-retries",
        type=int,
        metavar="N",
        help=f"wrong PUKs before the PUK blocks, 1-{MAX_TRIES} (default 3; moot with --puk none)",
    )
    create.add_argument(
        "--admin-tries",
        type=int,
        default=None,
        metavar="N",
        help="wrong admin-key answers before it blocks (default 10; one forgiven per"
        " --admin-recovery)",
    )
    create.add_argument(
        "--admin-recovery",
        type=int,
        default=None,
        metavar="SECONDS",
        help="one wrong admin-key answer forgiven per this many seconds (default 3600)",
    )
    create.add_argument(
        "--pcr",
        type=_pcr_list,
        default=(),
        metavar="N[,N...]",
        help="tpm backend: seal the card to these PCRs (SHA-256 bank) as they are now, e.g. 7"
        " (Secure Boot state); after a legitimate change, `vsc rebind-pcr NAME` re-binds it",
    )
    create.add_argument(
        "--software-keys",
        action="store_true",
        help="tpm backend: allow keys the TPM cannot hold (RSA-4096, Ed25519, X25519) in"
        " software, marked so; without it they are refused",
    )
    create.add_argument("--json", action="store_true", help="machine-readable output")

    rebind = add(
        "rebind-pcr",
        _rebind_pcr,
        "seal a card made with --pcr to the PCRs as they are now, after a legitimate change"
        " of the boot state (needs the PIN and the admin key)",
    )
    rebind.add_argument("name")
    _pin_options(rebind, "the card's PIN")
    _admin_key_options(rebind)

    list_ = add("list", _list, "the cards of the store")
    list_.add_argument("--json", action="store_true", help="machine-readable output")

    info = add("info", _info, "a card's keys, certificates, policies, counters, lock, backend")
    info.add_argument("name")
    info.add_argument("--json", action="store_true", help="machine-readable output")

    destroy = add("destroy", _destroy, "erase a card (tpmvscmgr destroy)")
    destroy.add_argument("name")

    lock = add("lock", _lock, "lock a card now or at a time (VERIFY answers 6983)")
    lock.add_argument("name")
    lock.add_argument(
        "--at",
        metavar="TIME",
        help="when: now (default), +2h, 18:00, or 2026-12-24T18:00[+01:00] (local time)",
    )

    unlock = add(
        "unlock",
        _unlock,
        "unlock a card for a while, by the helpdesk's response to its challenge",
    )
    unlock.add_argument("name")
    unlock.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="how long: 8 hours to 1 week (8h, 1d, 2d12h, 1w) or unrestricted (starts a new"
        " challenge)",
    )
    unlock.add_argument("--response", metavar="RESPONSE", help="the helpdesk's response")

    unblock = add("unblock", _unblock, "reset a blocked or forgotten PIN with the helpdesk's help")
    unblock.add_argument("name")
    unblock.add_argument("--response", metavar="RESPONSE", help="the helpdesk's response")
    _pin_options(unblock, "the new PIN")

    respond = subparsers.add_parser(
        "respond",
        help="the helpdesk: answer a card's challenge with its admin key (no card needed)",
        description="Compute the response to an unblock or unlock challenge.",
    )
    respond.set_defaults(handler=_respond)
    respond.add_argument("challenge", help="the challenge the user reads out")
    _admin_key_options(respond)
    respond.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="refuse unless the challenge asks for exactly this (an unlock's duration)",
    )

    provision = add(
        "provision", _provision, "import a server-generated key and its certificate into a slot"
    )
    provision.add_argument("name")
    _slot_options(provision, key_required=True)

    renew = add("renew", _renew, "write a new certificate (and key) into a slot; the old one goes")
    renew.add_argument("name")
    _slot_options(renew, key_required=False)

    reprovision = add(
        "reprovision", _reprovision, "erase a card's keys and certificates, keep the card"
    )
    reprovision.add_argument("name")
    _admin_key_options(reprovision)
    _pin_options(reprovision, "a new PIN (default: keep the PIN)")
    reprovision.add_argument(
        "--generate", action="store_true", help="generate the profile's keys again"
    )

    csr = add("csr", _csr, "a certificate request (PKCS#10) signed by a key on the card")
    csr.add_argument("name")
    csr.add_argument("--slot", required=True, type=_slot, help="the key's slot (9a, 9c, ...)")
    csr.add_argument("--subject", required=True, help="e.g. 'CN=alice,O=Example'")
    csr.add_argument("-o", "--output", type=Path, help="write PEM here (default: stdout)")
    _pin_options(csr, "the PIN, for a PIN-protected key")

    tpm = subparsers.add_parser(
        "tpm",
        help="the TPM: status (also with no verb), prepare",
        description="The TPM vsc uses. Without a verb: its status, as `vsc tpm status` with"
        " VSC_TPM and VSC_STORE (tpmvscmgr's environment check).",
    )
    # Alone, ``vsc tpm`` is the status of the TPM the environment names.
    tpm.set_defaults(handler=_tpm_status, tpm=None, store=None, json=False, max_cards=None)
    verbs = tpm.add_subparsers(dest="verb", metavar="VERB")
    status = verbs.add_parser(
        "status",
        parents=[card],
        help="present, enabled, owned, ready, dictionary-attack state, cards on it",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_tpm_status)
    prepare = verbs.add_parser(
        "prepare",
        parents=[card],
        help=f"persist vsc's storage key at {SRK_HANDLE:#x} (needs the owner authorisation, once)",
    )
    OWNER_AUTH.add_to(prepare, value_help="the owner authorisation (str:TEXT or hex:HEX)")
    prepare.set_defaults(handler=_tpm_prepare)

    audit = add("audit", _audit, "the store's audit log")
    audit.add_argument("name", nargs="?", help="only this card's events")
    audit.add_argument("--json", action="store_true", help="the JSON lines as they are")
    audit.add_argument(
        "--verify",
        action="store_true",
        help="check the hash chain and each card's anchor; exit 1 if anything was changed",
    )
    audit.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="SEQ:HASH",
        help="with --verify: a head noted earlier (printed by --verify) that must still be there",
    )


def _slot_options(parser: argparse.ArgumentParser, *, key_required: bool) -> None:
    parser.add_argument(
        "--slot", required=True, type=_slot, help="9a, 9c, 9d, 9e or a retired slot 82-95"
    )
    parser.add_argument(
        "--key",
        type=Path,
        required=key_required,
        metavar="FILE",
        help="the private key: PKCS#8 (PEM/DER) or PKCS#12 (with its certificate)",
    )
    parser.add_argument(
        "--cert",
        type=Path,
        required=not key_required,
        metavar="FILE",
        help="the certificate (PEM/DER)" + ("" if not key_required else "; default: the PKCS#12's"),
    )
    password = parser.add_mutually_exclusive_group()
    password.add_argument(
        "--password-prompt", action="store_true", help="ask for the key file's password"
    )
    password.add_argument(
        "--password-env", metavar="VAR", help="the key file's password is in this variable"
    )
    parser.add_argument(
        "--pin-policy",
        choices=["default", "never", "once", "always"],
        default="default",
        help="when the key needs the PIN (default: the slot's)",
    )
    parser.add_argument(
        "--touch-policy",
        choices=["default", "never", "always", "cached"],
        default="default",
        help="touch policy (the emulator approves touches)",
    )
    _admin_key_options(parser)


def _slot(text: str) -> int:
    try:
        return int(text.lower().removeprefix("0x"), 16)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a slot (9a, 9c, 9d, 9e, 82-95)"
        ) from None


# -- plumbing ------------------------------------------------------------------------------


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _backend(args: argparse.Namespace) -> BackendSpec | None:
    """The backend flags, else exactly one variable; None when nothing is configured."""
    configured = args.tpm or args.key_file or args.insecure_plain
    if not configured and not any(os.environ.get(v) for v in BACKEND_ENVIRONMENT):
        return None
    from vsc.emulator import backend_from

    spec = backend_from(tpm=args.tpm, key_file=args.key_file, insecure_plain=args.insecure_plain)
    if spec.kind == "tpm":
        owner = OWNER_AUTH.read(args)
        if owner is not None:
            spec = dataclasses.replace(spec, owner_auth=_owner_auth(owner.value))
    return spec


def _owner_auth(text: str) -> bytes:
    """tpm2-tools' forms: ``hex:0102``, ``str:text``, or the text itself."""
    if text.startswith("hex:"):
        try:
            return bytes.fromhex(text[4:])
        except ValueError:
            raise UsageError("the owner authorisation after hex: is not hex") from None
    return text.removeprefix("str:").encode()


def _capacity(args: argparse.Namespace) -> int:
    if args.max_cards is not None:
        return int(args.max_cards)
    value = os.environ.get("VSC_MAX_CARDS")
    if not value:
        return DEFAULT_CAPACITY
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"VSC_MAX_CARDS={value!r} is not a number") from None


def _store(args: argparse.Namespace) -> CardStore:
    return CardStore(args.store if args.store is not None else default_store_path())


def _manager(args: argparse.Namespace) -> CardManager:
    store = _store(args)
    return CardManager(store, _backend(args), audit=AuditLog(store.root), capacity=_capacity(args))


def _guarded(handler: Handler) -> Handler:
    """Errors become a message and an exit status; nothing secret is in any message."""

    def run(args: argparse.Namespace) -> int:
        from vsc.emulator import CardOpenError

        try:
            return handler(args)
        except (Refused, CardExists, CardInUse) as e:
            return fail(str(e), EXIT_REFUSED)
        except CliError as e:
            return fail(str(e), e.status)
        except (LifecycleError, StoreError, ProvisioningError, CardOpenError, ApduError) as e:
            return fail(str(e))
        except ValueError as e:
            return fail(str(e), EXIT_USAGE)
        except KeyboardInterrupt:
            return fail("interrupted", EXIT_INTERRUPTED)

    return run


def _ask_secret(prompt: str, *, twice: bool = False) -> str:
    value = getpass.getpass(prompt)
    if twice and getpass.getpass("Again: ") != value:
        raise Refused("the two entries differ")
    return value


def _pin(args: argparse.Namespace, prompt: str) -> str | None:
    if getattr(args, "pin_prompt", False):
        return _ask_secret(prompt, twice=True)
    pin: str | None = getattr(args, "pin", None)
    if pin is not None:
        warn(
            "a PIN on the command line is visible to every user of this machine"
            " (ps, /proc/PID/cmdline): use --pin-prompt"
        )
    return pin


def _new_pin(
    args: argparse.Namespace, manager: CardManager, rules: PinRules, *, check: bool = True
) -> tuple[str | None, str]:
    """A new card's PIN and how it came: "chosen" (--pin, --pin-prompt, or asked at a
    terminal), "default" (--default-pin: None, the applet's factory PIN), or "generated"
    (no terminal and no PIN given: random, under the policy, shown once). Never a silent
    well-known PIN. ``rules`` are checked before any prompt or card."""
    if args.default_pin:
        return None, "default"
    if args.pin is not None:
        if check:
            manager.check_pin(rules, args.pin)
        return _pin(args, "User PIN: "), "chosen"
    if args.pin_prompt or _interactive():
        return _ask_secret("User PIN: ", twice=True), "chosen"
    return generate_pin(rules), "generated"


def _admin_key(args: argparse.Namespace) -> ManagementKey:
    """The admin key from --admin-key-file, --admin-key-prompt, --admin-key or $VSC_ADMIN_KEY;
    asked for at a terminal when none is given."""
    secret = ADMIN_KEY.read(args)
    if secret is None:
        if not _interactive():
            raise UsageError(
                "this needs the card's admin key: --admin-key-file PATH, $VSC_ADMIN_KEY or"
                " --admin-key-prompt"
            )
        secret = Secret(ADMIN_KEY.prompt(), "the prompt")
    try:
        return parse_admin_key(secret.value)
    except ValueError as e:
        raise UsageError(f"{e} (from {secret.source})") from None


def _password(args: argparse.Namespace) -> bytes | None:
    if args.password_prompt:
        return _ask_secret("Key file password: ").encode()
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise UsageError(f"{args.password_env} is not set")
        return value.encode()
    return None


# -- commands ------------------------------------------------------------------------------


def _pcr_list(text: str) -> tuple[int, ...]:
    try:
        pcrs = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of PCR numbers: {text!r}") from None
    if not pcrs or not all(0 <= p <= 23 for p in pcrs):
        raise argparse.ArgumentTypeError("PCRs are numbered 0 to 23")
    return pcrs


@_guarded
def _rebind_pcr(args: argparse.Namespace) -> int:
    manager = _manager(args)
    pin = _ask_secret("PIN: ") if args.pin_prompt else _pin(args, "PIN: ")
    if pin is None:
        raise UsageError("this needs the card's PIN: --pin-prompt (or --pin)")
    pcrs = manager.rebind_pcrs(args.name, pin, _admin_key(args))
    print(f"Card {args.name} is sealed to PCR {','.join(map(str, pcrs))} as they are now.")
    return EXIT_OK


@_guarded
def _create(args: argparse.Namespace) -> int:
    manager = _manager(args)
    if manager.capacity != DEFAULT_CAPACITY:
        warn(
            f"a TPM may hold {manager.capacity} cards here, not {DEFAULT_CAPACITY} as on Windows"
            " (--max-cards / VSC_MAX_CARDS); the creation records it"
        )
    with manager.refused_creation(args.name):  # refused before the card is made: audited too
        return _create_card(args, manager)


def _create_card(args: argparse.Namespace, manager: CardManager) -> int:
    _ask_owner_auth_if_needed(manager)
    chosen_key = CREATE_ADMIN_KEY.read(args, confirm=True)
    if args.puk not in ("none", "default"):
        warn(
            "a PUK on the command line is visible to every user of this machine"
            " (ps, /proc/PID/cmdline)"
        )
    admin_key = chosen_key.value if chosen_key is not None else "random"
    if args.applet == "gids":
        if args.pcr or args.software_keys:
            raise UsageError("--pcr and --software-keys are for PIV cards (for now)")
        pin, how = _new_pin(args, manager, gids_cli.pin_rules(args), check=False)
        return gids_cli.create(
            args,
            manager,
            "default" if how == "default" else pin,
            admin_key,
            pin_generated=how == "generated",
        )
    profile = PROFILES[args.profile]
    classes = {name: getattr(args, name) for name in CLASSES if getattr(args, name) is not None}
    rules: PinRules | None = None
    if classes or args.pin_min is not None or args.pin_max is not None:
        rules = profile.rules(min_length=args.pin_min, max_length=args.pin_max, classes=classes)
    pin, how = _new_pin(args, manager, rules or profile.pin_rules)
    kwargs: dict[str, Any] = {}
    if args.admin_tries is not None:
        kwargs["admin_tries"] = args.admin_tries
    if args.admin_recovery is not None:
        kwargs["admin_recovery"] = args.admin_recovery
    if args.pin_retries is not None:
        kwargs["pin_tries"] = args.pin_retries
    if args.puk_retries is not None:
        kwargs["puk_tries"] = args.puk_retries
    if args.serial is not None:
        kwargs["serial"] = args.serial
    created = manager.create(
        args.name,
        settings=CardSettings(software_keys=args.software_keys, pcrs=args.pcr),
        profile=profile.name,
        pin=pin,
        puk=args.puk,
        admin_key=admin_key,
        admin_key_type=_KEY_TYPES[args.admin_key_type] if args.admin_key_type else None,
        rules=rules,
        generate=args.generate,
        locked=args.locked,
        pin_generated=how == "generated",
        **kwargs,
    )
    backend = manager.backend.kind if manager.backend else "?"
    if args.json:
        dump_json(
            {
                "name": created.name,
                "serial": created.serial,
                "profile": created.profile,
                "backend": backend,
                "admin_key": created.admin_key.key.hex() if created.admin_key else None,
                "generated": [f"{s:02X}" for s in created.generated],
                "locked": created.locked,
                **({"pin": pin} if how == "generated" else {}),
            }
        )
        return EXIT_OK
    print(
        f"Created card {created.name} (serial {created.serial}, profile {created.profile},"
        f" {backend} backend){', locked' if created.locked else ''}."
    )
    if created.admin_key is not None:
        print("Admin key (shown this once: give it to the helpdesk that will unblock the card):")
        print(f"  {created.admin_key.key.hex().upper()}")
    elif admin_key == "default":
        print("Admin key: the factory default. Anyone can answer this card's challenges.")
    elif chosen_key is not None:
        print(f"Admin key: the one given ({chosen_key.source}).")
    if how == "generated":
        print(f"PIN (generated, shown this once: give it to the card's user): {pin}")
    elif how == "default":
        print("PIN: the factory default 123456 (--default-pin): the user must change it.")
    if args.puk == "none":
        print("PUK: disabled: a blocked PIN is reset with `vsc unblock`.")
    if created.generated:
        print("Generated on the card: " + ", ".join(f"{s:02X}" for s in created.generated))
    if created.locked:
        print(f"Locked: it works after `vsc unlock {created.name} --for DURATION`.")
    return EXIT_OK


@_guarded
def _list(args: argparse.Namespace) -> int:
    manager = _manager(args)
    cards = manager.list()
    damaged = [card for card in cards if card.damaged]
    if args.json:
        dump_json([dataclasses.asdict(card) for card in cards])
    elif not cards:
        print(f"No cards in {manager.store.root}.")
    else:
        width = max(len(card.name) for card in cards)
        for card in cards:
            serial = str(card.serial) if card.serial is not None else "-"
            state = "in use" if card.in_use else card.state or "(give the backend for details)"
            if card.damaged:
                state = "DAMAGED (see below)"
            profile = card.profile or "-"
            print(f"{card.name:<{width}}  {serial:>8}  {profile:<11}  {card.backend:<8}  {state}")
    if damaged:
        # Loud: a damaged card is never left out, and the listing does not end "all fine".
        for card in damaged:
            warn(f"damaged: {card.damaged}")
        return fail(
            f"{len(damaged)} damaged card(s): {', '.join(c.name for c in damaged)}"
            " (`vsc destroy NAME` removes one; restore it from a backup to keep it)"
        )
    return EXIT_OK


@_guarded
def _info(args: argparse.Namespace) -> int:
    manager = _manager(args)
    if gids_cli.holds(manager, args.name):
        return gids_cli.info(args, manager)
    report = manager.info(args.name)
    if args.json:
        dump_json(dataclasses.asdict(report))
        return EXIT_OK
    _print_report(report)
    return EXIT_OK


def _serial(text: str) -> int:
    """A serial number as a YubiKey's: four bytes, not zero."""
    try:
        serial = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < serial < 2**32:
        raise argparse.ArgumentTypeError("a serial is a number from 1 to 4294967295")
    return serial


def _print_report(r: CardReport) -> None:
    created = datetime.datetime.fromtimestamp(r.created).astimezone().isoformat(timespec="seconds")
    print(f"Card {r.name}  (serial {r.serial})")
    print(f"  path:          {r.path}")
    print(f"  created:       {created}")
    print(f"  profile:       {r.profile or '-'}{'' if r.managed else ' (not managed)'}")
    print(f"  card:          {PIV_PROFILES[r.card_profile].title} ({r.card_profile})")
    print(f"  backend:       {r.backend}")
    print(f"  ECC keys:      {r.ecc}")
    if not r.hardware_bound:
        print("                 not hardware-bound: " + "; ".join(r.weaknesses))
    print(f"  rollback:      {r.rollback}")
    print(f"  boot state:    {r.boot_state}")
    print(f"  state:         {r.lock}")
    if r.pending:
        print(f"  challenge:     outstanding, to {r.pending}")
    pin = f"{r.pin_tries[1]} of {r.pin_tries[0]} tries left"
    if r.pin_state == "blocked":
        pin = f"blocked (0 of {r.pin_tries[0]} tries left)" + (
            ": reset it with `vsc unblock`" if r.admin_unblock else ""
        )
    elif r.pin_state == "factory default":
        pin += " (factory default 123456)"
    print(f"  PIN:           {pin}")
    for line in r.pin_policy:
        print(f"    policy:      {line}")
    puk = f"{r.puk_tries[1]} of {r.puk_tries[0]} tries left"
    if r.puk_state == "disabled":
        puk = "disabled (blocked for good): a blocked PIN is reset with `vsc unblock`"
    elif r.puk_state == "blocked":
        puk = f"blocked (0 of {r.puk_tries[0]} tries left)"
    elif r.puk_state == "factory default":
        puk += " (factory default 12345678: anyone with the card can reset the PIN!)"
    print(f"  PUK:           {puk}")
    admin = f"  admin key:     {r.admin_key_algorithm}"
    if r.admin_key_is_default:
        admin += " (factory default!)"
    if r.admin_tries is not None:
        admin += f", {r.admin_tries[1]} of {r.admin_tries[0]} tries left"
        admin += f", one forgiven per {r.admin_recovery_time} s"
        if r.admin_retry_after:
            admin += f", blocked for {r.admin_retry_after:.0f} s"
    print(admin)
    print(f"  admin unblock: {'yes' if r.admin_unblock else 'no'}")
    da = r.anti_hammering
    print(
        f"  anti-hammering ({da['enforced_by']}): {da['failed_tries']} of {da['max_tries']}"
        f" failures, one forgiven per {da['recovery_time']} s"
        + (", LOCKED OUT" if da["locked_out"] else "")
    )
    print("  slots:")
    for slot in r.slots:
        key = (
            f"{slot.algorithm}, PIN {slot.pin_policy}, touch {slot.touch_policy}, {slot.origin},"
            f" in {slot.key_authorisation or slot.key_location or 'software'}"
            if slot.algorithm
            else "no key"
        )
        print(f"    {slot.slot} {slot.name}: {key}")
        cert = slot.certificate
        if cert is not None:
            mismatch = "" if cert.matches_key or not slot.algorithm else " (NOT this key's)"
            print(f"       certificate {cert.subject}, issuer {cert.issuer}{mismatch}")
            print(f"       serial {cert.serial}, valid {cert.not_before} to {cert.not_after}")


@_guarded
def _destroy(args: argparse.Namespace) -> int:
    _manager(args).destroy(args.name)
    print(f"Destroyed card {args.name}: its files are overwritten and removed.")
    return EXIT_OK


@_guarded
def _lock(args: argparse.Namespace) -> int:
    manager = _manager(args)
    at = parse_time(args.at, manager.now) if args.at else None
    lock_at = manager.lock(args.name, at)
    if lock_at > manager.now:
        print(f"Card {args.name} locks at {format_local(lock_at)}.")
    else:
        print(f"Card {args.name} is locked: VERIFY answers 6983 until a helpdesk unlock.")
    return EXIT_OK


def _show_challenge(pending: Pending, command: str) -> None:
    print(f"Card {pending.name} (serial {pending.serial}) asks to {pending.request.describe()}.")
    print("Read this challenge to your helpdesk:")
    print(f"  {pending.challenge}")
    print(f"Valid until {format_local(pending.expires)}. The helpdesk answers with `vsc respond`.")
    if not sys.stdin.isatty():
        print(f"Then run: {command} --response RESPONSE")


def _interactive() -> bool:
    return sys.stdin.isatty()


def _ask_owner_auth_if_needed(manager: CardManager) -> None:
    """At a terminal, the TPM's owner authorisation when vsc must make its storage key
    (owned TPM, none persisted) and none was given: asked for, not refused."""
    spec = manager.backend
    if spec is None or spec.kind != "tpm" or spec.owner_auth or not _interactive():
        return
    from vsc.store.tpm import OwnerAuthNeeded, Tpm

    assert spec.tcti is not None
    try:
        Tpm(spec.tcti).storage_key()
    except OwnerAuthNeeded:
        print(
            f"The TPM's owner authorisation is set and no storage key is persisted at"
            f" {SRK_HANDLE:#x}: vsc persists its own there, once.",
            file=sys.stderr,
        )
        value = OWNER_AUTH.prompt()
        manager.backend = dataclasses.replace(spec, owner_auth=_owner_auth(value))


@_guarded
def _unlock(args: argparse.Namespace) -> int:
    manager = _manager(args)
    if args.duration is not None and args.response is not None:
        raise UsageError("--for starts a new challenge; --response answers the current one")
    if args.duration is None and args.response is None:
        raise UsageError("give --for DURATION (a new challenge) or --response RESPONSE")
    response = args.response
    if args.duration is not None:
        pending = manager.begin_unlock(args.name, parse_duration(args.duration))
        _show_challenge(pending, f"vsc unlock {args.name}")
        if not _interactive():
            return EXIT_OK
        response = input("Response: ")
    request = manager.complete(args.name, response)
    if request.unrestricted:
        print(f"Card {args.name} is unlocked, without time limit.")
    else:
        print(f"Card {args.name} is unlocked for {describe_minutes(request.minutes)}.")
    return EXIT_OK


@_guarded
def _unblock(args: argparse.Namespace) -> int:
    manager = _manager(args)
    if gids_cli.holds(manager, args.name):
        return gids_cli.unblock(args, manager, _pin(args, "New PIN: "))
    response = args.response
    if response is None:
        pending = manager.begin_unblock(args.name)
        _show_challenge(pending, f"vsc unblock {args.name} --pin-prompt")
        if not _interactive():
            return EXIT_OK
        response = input("Response: ")
    pin = _pin(args, "New PIN: ")
    if pin is None:
        pin = _ask_secret("New PIN: ", twice=True)
    manager.complete(args.name, response, new_pin=pin)
    print(f"Card {args.name}: PIN reset, its counter is full again.")
    return EXIT_OK


@_guarded
def _respond(args: argparse.Namespace) -> int:
    key = _admin_key(args)
    if is_gids_challenge(args.challenge):
        return gids_cli.respond(args.challenge, key.key)
    try:
        request = Request.decode(args.challenge)
    except MistypedCode as e:
        return fail(f"{e}: ask the user to read it again", EXIT_REFUSED)
    if args.duration is not None:
        wanted = parse_duration(args.duration)
        if request.purpose is not Purpose.UNLOCK or request.minutes != wanted:
            return fail(
                f"the challenge asks to {request.describe()}, not for"
                f" {describe_minutes(wanted)}: no response",
                EXIT_REFUSED,
            )
    if request.purpose is Purpose.UNLOCK:
        check_unlock(request.minutes)  # an edited challenge gets no answer
    print(f"The card asks to {request.describe()}.")
    print(f"Response: {compute_response(key.key, request)}")
    return EXIT_OK


def _policies(args: argparse.Namespace) -> tuple[PinPolicy, TouchPolicy]:
    return PinPolicy[args.pin_policy.upper()], TouchPolicy[args.touch_policy.upper()]


def _print_slot(report: Any, what: str) -> None:
    cert = report.certificate
    print(f"{what} slot {report.slot}: {report.algorithm} key ({report.origin})")
    if cert is not None:
        print(f"  certificate {cert.subject}, serial {cert.serial}, valid to {cert.not_after}")


@_guarded
def _provision(args: argparse.Namespace) -> int:
    pin_policy, touch_policy = _policies(args)
    report = _manager(args).provision(
        args.name,
        _admin_key(args),
        args.slot,
        args.key,
        certificate=args.cert,
        password=_password(args),
        pin_policy=pin_policy,
        touch_policy=touch_policy,
    )
    _print_slot(report, "Provisioned")
    return EXIT_OK


@_guarded
def _renew(args: argparse.Namespace) -> int:
    report = _manager(args).renew(
        args.name,
        _admin_key(args),
        args.slot,
        args.cert,
        key_file=args.key,
        password=_password(args),
    )
    _print_slot(report, "Renewed")
    return EXIT_OK


@_guarded
def _reprovision(args: argparse.Namespace) -> int:
    manager = _manager(args)
    erased = manager.reprovision(
        args.name,
        _admin_key(args),
        pin=_pin(args, "New PIN: "),
        generate=args.generate,
    )
    slots = ", ".join(f"{s:02X}" for s in erased) or "none"
    print(f"Card {args.name}: content erased (keys: {slots}); admin key, policy and lock kept.")
    return EXIT_OK


@_guarded
def _csr(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = _manager(args).signing_request(
        args.name, args.slot, args.subject, pin=_pin(args, "PIN: ")
    )
    pem = x509.load_der_x509_csr(der).public_bytes(Encoding.PEM)
    if args.output is None:
        sys.stdout.write(pem.decode())
    else:
        args.output.write_bytes(pem)
    return EXIT_OK


@_guarded
def _tpm_status(args: argparse.Namespace) -> int:
    tcti, source = find_tcti(args.tpm, os.environ)
    status = interrogate(tcti, source, store=_store(args), capacity=_capacity(args))
    if args.json:
        dump_json(dataclasses.asdict(status))
    else:
        _print_tpm(status)
    return EXIT_OK if status.present else EXIT_FAILURE


@_guarded
def _tpm_prepare(args: argparse.Namespace) -> int:
    from vsc.store.tpm import Tpm

    tcti = args.tpm or os.environ.get("VSC_TPM")
    if not tcti:
        raise UsageError("which TPM? --tpm TCTI or VSC_TPM")
    owner = OWNER_AUTH.read(args)
    if owner is None:
        raise UsageError(
            "the owner authorisation: --owner-auth-file PATH, --owner-auth-prompt or VSC_OWNER_AUTH"
        )
    tpm = Tpm(tcti, owner_auth=_owner_auth(owner.value))
    audit = AuditLog(_store(args).root)
    try:
        made = tpm.persist_srk()
    except StoreError as e:
        audit.write("tpm-prepare", None, f"TPM not prepared: {e}", tcti=tcti, outcome="refused")
        raise
    key = tpm.storage_key()
    message = (
        f"vsc's storage key persisted at {SRK_HANDLE:#x} ({key.algorithm})"
        if made
        else f"a storage key is persisted at {SRK_HANDLE:#x} already ({key.algorithm}): kept"
    )
    audit.write("tpm-prepare", None, message, tcti=tcti, persisted=made, outcome="done")
    print(message[0].upper() + message[1:] + "; the owner authorisation is not needed again.")
    return EXIT_OK


def _yes(value: bool | None) -> str:
    return "?" if value is None else "yes" if value else "no"


def _print_tpm(s: TpmStatus) -> None:
    if not s.present:
        print("TPM: not present")
        print(f"  {s.error}")
        print("  Cards can use the software backend instead (--key-file), which is weaker:")
        print("  see docs/security.md.")
        return
    print(f"TPM: present ({s.tcti}, from {s.source})")
    print(f"  manufacturer:  {s.manufacturer}, vendor {s.vendor!r}, firmware {s.firmware}")
    print(f"  enabled:       {_yes(s.enabled)}")
    print(f"  owned:         {_yes(s.owned)} (owner authorisation set)")
    print(f"  lockout auth:  {'set' if s.lockout_auth_set else 'empty'}")
    print(f"  storage key:   {s.storage_key_detail or 'none'}")
    print(f"  status:        {s.verdict}")
    for reason in s.reasons:
        print(f"                 {reason}")
    da = s.dictionary_attack
    print(f"  DA counter:    {da['failed_tries']} failures of {da['max_tries']} allowed")
    print(f"  recovery:      one failure forgiven every {_seconds(int(da['recovery_time']))}")
    print(
        f"  lockout:       a lockout-authorisation failure locks it for"
        f" {_seconds(int(da['lockout_recovery']))}"
    )
    locked = "YES: PINs are refused until it recovers" if da["locked_out"] else "no"
    print(f"  in lockout:    {locked}")
    cards = ", ".join([*s.cards, *s.other_cards]) or "none"
    print(f"  cards:         {len(s.cards) + len(s.other_cards)} of {s.capacity}: {cards}")
    scope = "every store" if s.register_machine_wide else "this user's stores only"
    print(f"  counted in:    {s.register} ({scope})")


def _seconds(value: int) -> str:
    """``7200`` → ``7200 s (2 hours)``."""
    if value and value % 60 == 0:
        return f"{value} s ({describe_minutes(value // 60)})"
    return f"{value} s"


@_guarded
def _audit(args: argparse.Namespace) -> int:
    if args.verify or args.anchor:
        return _verify_audit(args)
    events = AuditLog(_store(args).root).events(args.name)
    for event in events:
        if args.json:
            print(json.dumps(event))
        else:
            print(
                f"{event.get('time', '?')}  {event.get('event', '?'):<18}  {event.get('message')}"
            )
    return EXIT_OK


def _verify_audit(args: argparse.Namespace) -> int:
    if not args.verify:
        raise UsageError("--anchor goes with --verify")
    try:
        expected = tuple(AuditHead.parse(text) for text in args.anchor)
    except ValueError as e:
        raise UsageError(str(e)) from None
    audit = AuditLog(_store(args).root)
    result = audit.verify(expected=expected)
    if args.json:
        dump_json(
            {
                "ok": result.ok,
                "records": result.records,
                "legacy_lines": result.legacy,
                "anchors_checked": result.anchors,
                "head": str(result.head) if result.head else None,
                "findings": [dataclasses.asdict(f) for f in result.findings],
            }
        )
        return EXIT_OK if result.ok else EXIT_FAILURE
    legacy = f" (and {result.legacy} older lines before the chain)" if result.legacy else ""
    print(f"{audit.path}: {result.records} records{legacy}, {result.anchors} anchors checked")
    for finding in result.findings:
        print(f"  TAMPERED OR DAMAGED: {finding}")
    if result.head is not None:
        print(f"  head: {result.head}")
    if not result.ok:
        return fail(f"the audit log does not verify ({len(result.findings)} findings)")
    print("  the chain is intact")
    return EXIT_OK
