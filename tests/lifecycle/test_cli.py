"""``vsc`` as a user runs it: subprocesses on a store, with a real swtpm for the TPM backend.

Each command is ``python -m vsc.cli ...`` with ``VSC_STORE`` set and the
backend flags given (bounded by ``CLI_TIMEOUT``). The card between commands
is checked through its APDU interface in this process, exactly as the
emulator would serve it (the card is not in use between commands).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from yubikit.core.smartcard import ApduError as YubikitApduError
from yubikit.piv import KEY_TYPE, MANAGEMENT_KEY_TYPE, SLOT, PivSession

from applets.piv import PivApplet
from vsc.emulator import open_card
from vsc.inproc import CardConnection, YubikitConnection
from vsc.lifecycle import CardManager, Request, parse_duration
from vsc.lifecycle.gids import GidsCards
from vsc.lifecycle.tpmstatus import DEVICES
from vsc.store import AuthFailed, BackendSpec, CardStore
from vsc.testing.swtpm import Swtpm

from ..gids.test_lifecycle import verify as gids_verify
from .conftest import CLI_TIMEOUT, NEW_PIN, PIN, Vsc

OK, BLOCKED, LOCKED = 0x9000, 0x6983, 0x6283
CHALLENGE_RE = re.compile(r"^  ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})$", re.M)
RESPONSE_RE = re.compile(r"^Response: ([0-9A-Z]{5}-[0-9A-Z]{5})$", re.M)


@pytest.fixture
def vsc(tmp_path: Path, swtpm: Swtpm) -> Vsc:
    """The CLI on a store whose cards a private swtpm protects (``--tpm``)."""
    return Vsc(tmp_path / "store", ["--tpm", swtpm.tcti])


@pytest.fixture
def plain(tmp_path: Path) -> Vsc:
    return Vsc(tmp_path / "plain-store", ["--insecure-plain"])


def block(pin: str) -> bytes:
    return pin.encode().ljust(8, b"\xff")


class Card:
    """One card of ``vsc``'s store, served in this process while the CLI is not running."""

    def __init__(self, vsc: Vsc, name: str, backend: BackendSpec) -> None:
        card, self.stored = open_card(name, backend, store=vsc.store)
        self.piv = next(a for a in card.applets if isinstance(a, PivApplet))
        self.conn = CardConnection(card)
        assert self.sw(0xA4, 0x04, 0x00, bytes.fromhex("A000000308")) == OK

    def __enter__(self) -> Card:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stored.close()

    def sw(self, ins: int, p1: int, p2: int, data: bytes = b"") -> int:
        return self.conn.send(0x00, ins, p1, p2, data)[1]

    def verify(self, pin: str) -> int:
        return self.sw(0x20, 0x00, 0x80, block(pin))


def tpm_backend(vsc: Vsc) -> BackendSpec:
    return BackendSpec.tpm(vsc.backend[1])


def challenge_of(output: str) -> str:
    match = CHALLENGE_RE.search(output)
    assert match, output
    return match.group(1)


def respond(vsc: Vsc, admin_key: str, challenge: str, *extra: str) -> str:
    result = vsc.run("respond", "--admin-key", admin_key, challenge, *extra, backend=False)
    match = RESPONSE_RE.search(result.stdout)
    assert match, result.output
    return match.group(1)


def create(vsc: Vsc, name: str, *extra: str) -> dict[str, object]:
    created = vsc.run("create", name, "--pin", PIN, "--json", *extra).json()
    assert isinstance(created, dict)
    return created


# -- create, list, info, destroy ----------------------------------------------------------------


def test_create_list_info_destroy(vsc: Vsc) -> None:
    result = vsc.run("create", "alice", "--pin", PIN, "--generate")
    key = re.search(r"^  ([0-9A-F]{48})$", result.stdout, re.M)
    assert key, result.stdout
    admin_key = key.group(1)
    assert "shown this once" in result.stdout and "tpm backend" in result.stdout
    assert "9A, 9C" in result.stdout

    again = vsc.run("create", "alice", "--pin", PIN, status=3)
    assert "'alice' already exists" in again.stderr

    info = vsc.run("info", "alice", "--json").json()
    assert info["managed"] and info["backend_kind"] == "tpm" and info["hardware_bound"]
    assert info["lock"] == "unlocked" and info["admin_tries"] == [10, 10]
    assert {s["slot"] for s in info["slots"]} == {"9A", "9C", "F9"}
    text = vsc.run("info", "alice").stdout
    assert "tpm: TPM 2.0 (IBM" in text and "admin unblock: yes" in text
    assert "PUK:           disabled (blocked for good)" in text
    assert admin_key not in text and admin_key.lower() not in text  # shown once, never again

    cards = vsc.run("list", "--json").json()
    assert [(c["name"], c["serial"], c["state"]) for c in cards] == [
        ("alice", info["serial"], "unlocked")
    ]
    # Without a backend the listing still shows what the files tell.
    bare = vsc.run("list", backend=False).stdout
    assert bare.startswith("alice") and "tpm" in bare

    vsc.run("destroy", "alice")
    assert not (vsc.store / "cards" / "alice").exists()
    gone = vsc.run("info", "alice", status=1)
    assert "no card 'alice'" in gone.stderr
    events = [(e["event"], e["outcome"]) for e in vsc.audit.events("alice")]
    assert events == [
        ("create", "success"),
        ("personalise", "success"),
        ("create", "refused"),  # the second create: the card exists
        ("destroy", "success"),
    ]
    assert admin_key.lower() not in vsc.audit_text()


def test_more_cards_than_the_tpm_holds_are_refused(vsc: Vsc) -> None:
    create(vsc, "a", "--max-cards", "2")
    create(vsc, "b", "--max-cards", "2")
    refused = vsc.run("create", "c", "--pin", PIN, "--max-cards", "2", status=3)
    assert "already holds 2 cards (a, b)" in refused.stderr and "capacity is 2" in refused.stderr
    vsc.env["VSC_MAX_CARDS"] = "3"
    create(vsc, "c")  # the variable raises it
    assert vsc.run("list", "--json").json()[2]["name"] == "c"


def test_the_ecc_policy_of_a_tpm_card_is_shown(vsc: Vsc, plain: Vsc) -> None:
    admin_key = bytes.fromhex(str(create(vsc, "y57", "--profile", "yubikey-5.7")["admin_key"]))
    info = vsc.run("info", "y57", "--json").json()
    assert info["ecc"].startswith("P-256, P-384 in the TPM")
    assert info["ecc"].endswith("Ed25519, X25519 refused: no TPM 2.0 holds them")
    # What info says is what the card does.
    card, stored = open_card("y57", tpm_backend(vsc), store=vsc.store)
    try:
        session = PivSession(YubikitConnection(card))
        session.authenticate(MANAGEMENT_KEY_TYPE.AES192, admin_key)
        for refused in (KEY_TYPE.ED25519, KEY_TYPE.X25519):
            with pytest.raises(YubikitApduError) as e:
                session.generate_key(SLOT.AUTHENTICATION, refused)
            assert e.value.sw == 0x6A80
        session.generate_key(SLOT.AUTHENTICATION, KEY_TYPE.ECCP384)
    finally:
        stored.close()
    create(vsc, "w", "--profile", "windows")
    assert "ECC keys:      P-256, P-384 in the TPM" in vsc.run("info", "w").stdout
    create(plain, "soft", "--profile", "yubikey-5.7")
    soft = plain.run("info", "soft", "--json").json()["ecc"]
    assert soft == "P-256, P-384, Ed25519, X25519 (keys in software)"
    create(vsc, "g", "--applet", "gids")  # GIDS: P-256 and P-384, both in the TPM
    assert "ECC keys:      P-256, P-384 in the TPM" in vsc.run("info", "g").stdout


def test_cards_are_counted_per_tpm_across_stores(vsc: Vsc, tmp_path: Path) -> None:
    other = Vsc(tmp_path / "other-store", vsc.backend)  # another directory, the same TPM
    other.env["VSC_REGISTER"] = vsc.env["VSC_REGISTER"]  # the machine's register
    for store in (vsc, other):
        store.env["VSC_MAX_CARDS"] = "3"
    created = vsc.run("create", "a1", "--pin", PIN)
    assert "may hold 3 cards here, not 10" in created.stderr  # an override is said
    assert next(iter(vsc.audit.events("a1")))["capacity"] == 3  # and recorded
    create(vsc, "a2")
    create(other, "b1")
    refused = other.run("create", "b2", "--pin", PIN, status=3)
    assert "already holds 3 cards (b1, " in refused.stderr and "capacity is 3" in refused.stderr
    assert str(vsc.store / "cards" / "a1") in refused.stderr
    status = other.run("tpm", "status", "--json").json()
    assert status["cards"] == ["b1"] and len(status["other_cards"]) == 2
    assert "3 of 3: b1, " in other.run("tpm", "status").stdout

    vsc.run("destroy", "a1")  # a place freed for every store
    create(other, "b2")
    other.run("create", "b3", "--pin", PIN, status=3)
    shutil.rmtree(vsc.store)  # a store deleted wholesale: its cards stop counting
    create(other, "b3")
    assert other.run("tpm", "status", "--json").json()["other_cards"] == []


def test_the_pin_policy_is_enforced_in_the_cli(vsc: Vsc) -> None:
    refused = vsc.run(
        "create", "a", "--pin", "abcdefgh", "--digits", "mandatory", status=3, backend=False
    )
    assert "rule digits" in refused.stderr and "must contain a digit" in refused.stderr
    refused = vsc.run("create", "a", "--profile", "windows", "--default-pin", status=3)
    assert "rule min-length" in refused.stderr and "factory PIN" in refused.stderr
    usage = vsc.run("create", "a", "--pin-min", "4", status=2)
    assert "6 to 8" in usage.stderr
    refused = vsc.run("create", "a", "--pin", "12345678", "--symbols", "required", status=3)
    assert "rule symbols" in refused.stderr
    assert vsc.run("list", "--json").json() == []  # nothing was made
    # A prompted PIN (twice, on stdin here: no terminal) goes through the same rules.
    refused = vsc.run("create", "a", "--pin-prompt", input="1234\n1234\n", status=3)
    assert "rule min-length" in refused.stderr
    vsc.run("create", "a", "--pin-prompt", input=f"{PIN}\n{PIN}\n")
    with Card(vsc, "a", tpm_backend(vsc)) as card:
        assert card.verify(PIN) == OK
        # Through the card: CHANGE REFERENCE DATA refuses a PIN the policy refuses.
        assert card.sw(0x24, 0x00, 0x80, block(PIN) + block("12\x01456")) == 0x6A80
        assert card.verify(PIN) == OK
    events = [(e["event"], e["outcome"]) for e in vsc.audit.events("a")]
    # Five refused creations (audited too, whichever check refused them), then the card.
    assert events == [("create", "refused")] * 5 + [
        ("create", "success"),
        ("personalise", "success"),
        ("pin-refused", "refused"),
    ]


def test_retries_are_chosen_at_creation(plain: Vsc) -> None:
    """MyID's 5 PIN tries, say; PIV's 3 stay the default. The card counts them."""
    plain.run("create", "alice", "--pin-prompt", "--pin-retries", "5", "--puk", "87654321",
              "--puk-retries", "4", input=f"{PIN}\n{PIN}\n")  # fmt: skip
    info = plain.run("info", "alice", "--json").json()
    assert info["pin_tries"] == [5, 5] and info["puk_tries"] == [4, 4]
    assert info["puk_state"] == "set"
    with Card(plain, "alice", BackendSpec.plain()) as card:
        assert [card.verify("00000000") for _ in range(5)] == [
            0x63C4,
            0x63C3,
            0x63C2,
            0x63C1,
            0x63C0,
        ]
        assert card.verify(PIN) == BLOCKED
    assert plain.run("info", "alice", "--json").json()["pin_state"] == "blocked"
    for bad in ("0", "16"):
        refused = plain.run("create", "bob", "--pin-retries", bad, status=1)
        assert "1 to 15" in refused.stderr
    assert plain.run("info", "bob", status=1)
    default = plain.run("create", "carol", "--pin-prompt", input=f"{PIN}\n{PIN}\n")
    assert "PUK: disabled" in default.stdout
    assert plain.run("info", "carol", "--json").json()["pin_tries"] == [3, 3]


def test_create_never_leaves_a_pin_anyone_knows(plain: Vsc) -> None:
    """Without a PIN option and without a terminal, a random PIN under the policy is made
    and shown once; the factory PIN takes --default-pin, said out loud (GIDS alike)."""
    created = plain.run("create", "alice")
    shown = re.search(r"^PIN \(generated, .*\): (\S+)$", created.stdout, re.M)
    assert shown, created.stdout
    pin = shown.group(1)
    assert len(pin) == 8 and pin.isdigit()  # the yubikey profile: any 8 digits will do
    digits = plain.run("create", "bob", "--profile", "piv", "--json").json()["pin"]
    assert len(digits) == 8 and digits.isdigit() and digits != pin
    with Card(plain, "alice", BackendSpec.plain()) as card:
        assert card.verify("123456") == 0x63C2  # not the factory PIN
        assert card.verify(pin) == OK
    with Card(plain, "bob", BackendSpec.plain()) as card:
        assert card.verify(digits) == OK
    assert plain.run("info", "alice", "--json").json()["pin_state"] == "set"
    (personalised,) = [e for e in plain.audit.events("alice") if e["event"] == "personalise"]
    assert personalised["pin_kind"] == "generated" and "generated PIN" in personalised["message"]
    assert pin not in plain.audit_text() and digits not in plain.audit_text()
    assert pin not in plain.run("info", "alice").stdout  # shown once only

    factory = plain.run("create", "carol", "--default-pin")
    assert "factory default 123456 (--default-pin)" in factory.stdout
    assert plain.run("info", "carol", "--json").json()["pin_state"] == "factory default"
    conflict = plain.run("create", "dave", "--default-pin", "--pin", PIN, status=2)
    assert "not allowed with" in conflict.stderr

    gids = plain.run("create", "g", "--applet", "gids", "--json").json()
    assert len(gids["pin"]) == 8 and gids["pin"].isdigit()
    cards = GidsCards(CardManager(CardStore(plain.store), BackendSpec.plain()))
    assert gids_verify(cards, "g", gids["pin"]) == OK
    assert gids_verify(cards, "g", "12345678") != OK  # not tpmvscmgr's default
    default = plain.run("create", "h", "--applet", "gids", "--default-pin")
    assert "tpmvscmgr's default 12345678" in default.stdout
    assert gids_verify(cards, "h", "12345678") == OK
    events = [e for e in plain.audit.events() if e["event"] == "personalise"]
    assert [e["pin_kind"] for e in events] == [
        "generated", "generated", "default", "generated", "default"
    ]  # fmt: skip


def test_a_pin_longer_than_piv_allows_is_refused_never_cut(plain: Vsc) -> None:
    """tpmvscmgr takes up to 127 characters; a PIV PIN block holds 8 bytes: say so."""
    for args in (["--pin", "123456789"], ["--pin", "pässwört"]):  # 9 and 10 bytes
        refused = plain.run("create", "alice", *args, status=3)
        assert "at most 8" in refused.stderr and "never shortens" in refused.stderr
        assert "--applet gids" in refused.stderr  # where a long PIN fits
    prompted = plain.run("create", "alice", "--pin-prompt", input="1234567890\n" * 2, status=3)
    assert "it has 10 bytes" in prompted.stderr
    policy = plain.run("create", "alice", "--pin-max", "24", status=2)
    assert "8-byte PIN block" in policy.stderr and "127 characters" in policy.stderr
    assert plain.run("list", "--json").json() == []  # nothing made
    # Unblocking to a long PIN: refused before any try is spent, the card unchanged.
    admin_key = str(create(plain, "alice")["admin_key"])
    challenge = challenge_of(plain.run("unblock", "alice").stdout)
    response = respond(plain, admin_key, challenge)
    long = plain.run("unblock", "alice", "--pin", "123456789", "--response", response, status=3)
    assert "at most 8" in long.stderr
    assert plain.run("info", "alice", "--json").json()["admin_tries"] == [10, 10]
    plain.run("unblock", "alice", "--pin", "12345678", "--response", response)
    with Card(plain, "alice", BackendSpec.plain()) as card:
        assert card.verify("12345678") == OK
    # A GIDS card takes Windows' long PINs.
    long_pin = "correct horse battery staple"
    plain.run("create", "g", "--applet", "gids", "--pin", long_pin)
    cards = GidsCards(CardManager(CardStore(plain.store), BackendSpec.plain()))
    assert gids_verify(cards, "g", long_pin) == OK


# -- locks, unlocks, unblocks ------------------------------------------------------------


def test_lock_then_unlock_for_eight_hours(vsc: Vsc) -> None:
    admin_key = str(create(vsc, "alice")["admin_key"])
    assert "is locked" in vsc.run("lock", "alice").stdout
    assert vsc.run("info", "alice", "--json").json()["locked"]
    with Card(vsc, "alice", tpm_backend(vsc)) as card:
        assert card.verify(PIN) == LOCKED

    shown = vsc.run("unlock", "alice", "--for", "8h").stdout
    assert "asks to unlock the card for 8 hours" in shown
    challenge = challenge_of(shown)
    # The helpdesk, anywhere: no store, no backend, no card.
    helpdesk = Vsc(Path("/nonexistent-store"), [])
    refused = helpdesk.run(
        "respond", "--admin-key", admin_key, challenge, "--for", "1w", status=3, backend=False
    )
    assert "not for 1 week" in refused.stderr
    response = respond(helpdesk, admin_key, challenge, "--for", "8h")
    assert (
        "unlock the card for 8 hours"
        in helpdesk.run("respond", "--admin-key", admin_key, challenge, backend=False).stdout
    )
    # The user edits the challenge to ask for a week (check byte and all) and gets a
    # response for that: the card refuses it, and it costs a try of the admin key.
    asked = Request.decode(challenge)
    edited = Request(asked.purpose, parse_duration("1w"), asked.nonce).encode()
    assert (
        "for 1 week"
        in helpdesk.run("respond", "--admin-key", admin_key, edited, backend=False).stdout
    )
    wrong = vsc.run("unlock", "alice", "--response", respond(helpdesk, admin_key, edited), status=3)
    assert "wrong response: 9 tries left" in wrong.stderr
    assert vsc.run("info", "alice", "--json").json()["locked"]
    done = vsc.run("unlock", "alice", "--response", response)
    assert "unlocked for 8 hours" in done.stdout
    info = vsc.run("info", "alice", "--json").json()
    assert not info["locked"] and info["lock"].startswith("unlocked until")
    with Card(vsc, "alice", tpm_backend(vsc)) as card:
        assert card.verify(PIN) == OK
    events = [e for e in vsc.audit.events("alice") if e["event"] == "unlock"]
    assert events and events[-1]["minutes"] == 480


def test_lock_at_a_time_and_usage_errors(vsc: Vsc) -> None:
    create(vsc, "alice")
    scheduled = vsc.run("lock", "alice", "--at", "+2h").stdout
    assert "locks at" in scheduled
    assert not vsc.run("info", "alice", "--json").json()["locked"]
    vsc.run("lock", "alice", "--at", "teatime", status=2)
    vsc.run("unlock", "alice", status=2)  # neither --for nor --response
    vsc.run("unlock", "alice", "--for", "forever-ish", status=2)
    none = vsc.run("unlock", "alice", "--response", "ABCDE-FGHJK", status=3)
    assert "no challenge outstanding" in none.stderr


def test_a_time_limited_unlock_lasts_eight_hours_to_a_week(plain: Vsc) -> None:
    """MyID's range, in `vsc unlock --for` and in what `vsc respond` answers."""
    admin_key = str(create(plain, "alice", "--locked")["admin_key"])
    for duration in ("7h59m", "30m", "1w1m", "2w"):
        refused = plain.run("unlock", "alice", "--for", duration, status=3)
        assert "outside the range: a time-limited unlock lasts 8 hours to 1 week" in (
            refused.stderr
        )
    assert "challenge" not in str(plain.audit.events("alice"))  # none was issued
    # A challenge edited to ask for an hour gets no response from the helpdesk.
    asked = Request.decode(challenge_of(plain.run("unlock", "alice", "--for", "1w").stdout))
    edited = Request(asked.purpose, 60, asked.nonce).encode()
    refused = plain.run("respond", "--admin-key", admin_key, edited, status=3, backend=False)
    assert "outside the range" in refused.stderr and "Response" not in refused.stdout
    plain.run("unlock", "alice", "--response", respond(plain, admin_key, asked.encode()))
    assert plain.run("info", "alice", "--json").json()["lock"].startswith("unlocked until")
    for duration in ("8h", "unrestricted"):
        shown = plain.run("unlock", "alice", "--for", duration).stdout
        plain.run("unlock", "alice", "--response", respond(plain, admin_key, challenge_of(shown)))
    assert plain.run("info", "alice", "--json").json()["lock"] == "unlocked"


def test_unblock_with_the_helpdesk(vsc: Vsc) -> None:
    admin_key = str(create(vsc, "alice", "--generate")["admin_key"])
    with Card(vsc, "alice", tpm_backend(vsc)) as card:
        for _ in range(3):
            card.verify("00000000")
        assert card.verify(PIN) == BLOCKED
    shown = vsc.run("unblock", "alice").stdout
    assert "asks to unblock the PIN" in shown
    response = respond(vsc, admin_key, challenge_of(shown))
    refused = vsc.run("unblock", "alice", "--response", response, "--pin", "123", status=3)
    assert "rule min-length" in refused.stderr
    vsc.run(
        "unblock", "alice", "--response", response, "--pin-prompt", input=f"{NEW_PIN}\n{NEW_PIN}\n"
    )
    info = vsc.run("info", "alice", "--json").json()
    assert info["pin_tries"] == [3, 3] and info["admin_tries"] == [10, 10]
    with Card(vsc, "alice", tpm_backend(vsc)) as card:
        assert card.verify(NEW_PIN) == OK
        # The PIN-bound 9A key works again: sign through GENERAL AUTHENTICATE.
        digest = bytes(32)
        template = bytes.fromhex("7C2482008120") + digest
        assert card.sw(0x87, 0x11, 0x9A, template) == OK
    again = vsc.run("unblock", "alice", "--response", response, "--pin", NEW_PIN, status=3)
    assert "no challenge outstanding" in again.stderr  # a response works once


def lock_out(tcti: str) -> None:
    """Put the TPM into dictionary-attack lockout: one failure allowed, one made."""
    from vsc.store import DaParameters, LockedOut
    from vsc.store.tpm import Tpm

    tpm = Tpm(tcti)
    tpm.set_da_parameters(DaParameters(1, 7200, 86400), lockout_auth=b"")
    blob = tpm.seal(b"x", b"right")
    with pytest.raises(LockedOut):
        for _ in range(2):
            with contextlib.suppress(AuthFailed):
                tpm.unseal(blob, b"wrong")
    assert tpm.da_status().locked_out


def test_an_unblock_the_tpm_cannot_do_keeps_its_challenge(vsc: Vsc) -> None:
    from vsc.store.tpm import Tpm

    admin_key = str(create(vsc, "alice", "--generate")["admin_key"])
    with Card(vsc, "alice", tpm_backend(vsc)) as card:
        for _ in range(3):
            card.verify("00000000")
    response = respond(vsc, admin_key, challenge_of(vsc.run("unblock", "alice").stdout))
    lock_out(vsc.backend[1])
    failed = vsc.run("unblock", "alice", "--response", response, "--pin", NEW_PIN, status=1)
    assert "dictionary-attack lockout" in failed.stderr
    assert "the challenge stays valid" in failed.stderr and "same response" in failed.stderr
    event = list(vsc.audit.events("alice"))[-1]
    assert event["event"] == "unblock-failed" and event["challenge"] == "kept"
    assert event["outcome"] == "failed" and "lockout" in event["reason"]
    info = vsc.run("info", "alice", "--json").json()
    assert info["admin_tries"] == [10, 10] and info["pin_tries"][1] == 0  # nothing spent, no reset

    Tpm(vsc.backend[1]).da_reset(b"")  # whoever holds the lockout authorisation, or time
    vsc.run("unblock", "alice", "--response", response, "--pin", NEW_PIN)
    with Card(vsc, "alice", tpm_backend(vsc)) as card:
        assert card.verify(NEW_PIN) == OK
    assert NEW_PIN not in vsc.audit_text() and response not in vsc.audit_text()


def test_a_gids_unblock_the_tpm_cannot_do_keeps_its_challenge(vsc: Vsc) -> None:
    from vsc.store.tpm import Tpm

    key = str(create(vsc, "g", "--applet", "gids")["admin_key"])
    challenge = re.search(
        r"^  ((?:[0-9A-F]{2} ){7}[0-9A-F]{2})$", vsc.run("unblock", "g").stdout, re.M
    )
    assert challenge is not None
    answered = vsc.run("respond", challenge.group(1), "--admin-key", key, backend=False).stdout
    response = answered.split("Response: ")[1].strip()
    lock_out(vsc.backend[1])
    failed = vsc.run("unblock", "g", "--pin", NEW_PIN, "--response", response, status=1)
    assert "dictionary-attack lockout" in failed.stderr and "stays valid" in failed.stderr
    assert list(vsc.audit.events("g"))[-1]["event"] == "unblock-failed"
    Tpm(vsc.backend[1]).da_reset(b"")
    vsc.run("unblock", "g", "--pin", NEW_PIN, "--response", response)
    assert list(vsc.audit.events("g"))[-1]["event"] == "unblock"


# -- provisioning ---------------------------------------------------------------------------


def test_provision_renew_reprovision_csr(vsc: Vsc, tmp_path: Path) -> None:
    admin_key = str(create(vsc, "alice")["admin_key"])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "alice@example")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    cert = builder.serial_number(1).sign(key, hashes.SHA256())
    p12 = tmp_path / "alice.p12"
    p12.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"alice", key, cert, None, serialization.BestAvailableEncryption(b"pw")
        )
    )
    vsc.env["P12_PASSWORD"] = "pw"
    out = vsc.run(
        "provision", "alice", "--slot", "9a", "--key", str(p12), "--password-env",
        "P12_PASSWORD", "--admin-key", admin_key,
    ).stdout  # fmt: skip
    assert "Provisioned slot 9A: ECCP256 key (imported)" in out and "CN=alice@example" in out
    wrong = vsc.run(
        "provision", "alice", "--slot", "9a", "--key", str(p12), "--password-env",
        "P12_PASSWORD", "--admin-key", "00" * 24, status=3,
    )  # fmt: skip
    assert "wrong admin key: 9 tries left" in wrong.stderr

    renewed = tmp_path / "renewed.pem"
    renewed.write_bytes(
        builder.serial_number(2).sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    )
    out = vsc.run(
        "renew", "alice", "--slot", "9a", "--cert", str(renewed), "--admin-key", admin_key
    ).stdout
    assert "Renewed slot 9A" in out and "serial 2," in out
    (renew_event,) = [e for e in vsc.audit.events("alice") if e["event"] == "renew"]
    assert renew_event["replaced_certificate_serial"] == "1"

    csr = tmp_path / "req.pem"
    vsc.run(
        "csr", "alice", "--slot", "9a", "--subject", "CN=alice,O=Example", "--pin", PIN,
        "-o", str(csr),
    )  # fmt: skip
    request = x509.load_pem_x509_csr(csr.read_bytes())
    assert request.is_signature_valid
    assert request.public_key() == key.public_key()

    out = vsc.run("reprovision", "alice", "--admin-key", admin_key).stdout
    assert "keys: 9A" in out
    info = vsc.run("info", "alice", "--json").json()
    assert {s["slot"] for s in info["slots"]} == {"F9"}


# -- the TPM -----------------------------------------------------------------------------------


def test_tpm_status(vsc: Vsc, swtpm: Swtpm) -> None:
    create(vsc, "alice")
    status = vsc.run("tpm", "status", "--json").json()
    assert status["present"] and status["manufacturer"] == "IBM"
    assert status["vendor"].startswith("SW")
    assert status["enabled"] and not status["owned"] and status["storage_key"]
    assert status["verdict"] == "ready" and "lockout authorisation is empty" in status["reasons"][0]
    assert status["dictionary_attack"] == {
        "failed_tries": 0,
        "max_tries": 32,
        "recovery_time": 7200,
        "lockout_recovery": 86400,
        "locked_out": False,
    }
    assert status["cards"] == ["alice"] and status["capacity"] == 10
    text = vsc.run("tpm", "status").stdout
    assert "TPM: present" in text and "cards:         1 of 10: alice" in text
    assert "DA counter:    0 failures of 32 allowed" in text
    assert "recovery:      one failure forgiven every 7200 s (2 hours)" in text
    assert "locks it for 86400 s (1 day)" in text and "in lockout:    no" in text
    assert "storage key:   ECC P-256, made from vsc's template" in text

    # A lockout authorisation vsc does not know: reduced functionality.
    from vsc.store.tpm import Tpm

    Tpm(swtpm.tcti).change_lockout_auth(b"", b"only the admin knows")
    status = vsc.run("tpm", "status", "--json").json()
    assert status["verdict"] == "ready, with reduced functionality"
    assert status["lockout_auth_set"]
    Tpm(swtpm.tcti).change_lockout_auth(b"only the admin knows", b"")

    # VSC_TPM works as --tpm does; `vsc tpm` alone is the status.
    env_only = Vsc(vsc.store, [], env={"VSC_TPM": swtpm.tcti})
    assert env_only.run("tpm", "status", "--json").json()["source"] == "VSC_TPM"
    alone = env_only.run("tpm").stdout
    assert "DA counter:    0 failures of 32 allowed" in alone and "alice" in alone


def tpm2(tcti: str, *argv: str) -> None:
    """A tpm2-tools command on the test's swtpm (as an administrator provisions a TPM)."""
    subprocess.run([*argv, "-T", tcti], check=True, capture_output=True, timeout=CLI_TIMEOUT)


def test_a_tpm_whose_owner_authorisation_is_set(vsc: Vsc, tmp_path: Path) -> None:
    tcti = vsc.backend[1]
    create(vsc, "early")  # vsc's storage key made from its template (owner auth empty)
    tpm2(tcti, "tpm2_changeauth", "-c", "owner", "owner-secret")

    status = vsc.run("tpm", "status", "--json").json()
    assert status["owned"] and not status["storage_key"] and status["verdict"] == "not ready"
    assert "owner authorisation is set" in status["reasons"][0]
    assert "vsc tpm prepare" in status["reasons"][0]
    refused = vsc.run("create", "a", "--pin", PIN, status=1)
    assert "owner authorisation is set" in refused.stderr and "wrong" not in refused.stderr
    assert "owner authorisation is set" in vsc.run("info", "early", status=1).stderr
    wrong = vsc.run("tpm", "prepare", env={"VSC_OWNER_AUTH": "not it"}, status=1)
    assert "wrong owner authorisation" in wrong.stderr

    secret = tmp_path / "owner-auth"
    secret.write_text("owner-secret\n")
    secret.chmod(0o600)
    create(vsc, "a", "--owner-auth-file", str(secret))  # made, and the storage key persisted
    again = vsc.run("tpm", "prepare", env={"VSC_OWNER_AUTH": "owner-secret"}).stdout
    assert "persisted at 0x81000001 already (ECC P-256)" in again
    status = vsc.run("tpm", "status", "--json").json()
    assert status["verdict"] == "ready" and status["storage_key"]
    assert status["storage_key_detail"] == "ECC P-256, persisted at 0x81000001"
    assert "storage key:   ECC P-256, persisted at 0x81000001" in vsc.run("tpm", "status").stdout

    # From now on nothing needs the owner authorisation: new cards, old cards, the card itself.
    create(vsc, "b")
    assert vsc.run("info", "early", "--json").json()["backend_kind"] == "tpm"
    with Card(vsc, "a", tpm_backend(vsc)) as card:
        assert card.verify(PIN) == OK
    assert "owner-secret" not in vsc.audit_text()
    prepared = [e for e in vsc.audit.events() if e["event"] == "tpm-prepare"]
    assert [e["outcome"] for e in prepared] == ["refused", "done"]


def test_a_tpm_provisioned_as_windows_does(vsc: Vsc, tmp_path: Path) -> None:
    """Owner authorisation set, an RSA-2048 SRK persisted at 0x81000001 (tpm2-tools)."""
    tcti = vsc.backend[1]
    context = tmp_path / "srk.ctx"
    tpm2(tcti, "tpm2_changeauth", "-c", "owner", "owner-secret")
    tpm2(
        tcti, "tpm2_createprimary", "-C", "o", "-P", "owner-secret", "-G", "rsa2048",
        "-c", str(context),
    )  # fmt: skip
    tpm2(
        tcti, "tpm2_evictcontrol", "-C", "o", "-P", "owner-secret", "-c", str(context), "0x81000001"
    )
    status = vsc.run("tpm", "status", "--json").json()
    assert status["owned"] and status["verdict"] == "ready"
    assert status["storage_key_detail"] == "RSA-2048, persisted at 0x81000001"

    create(vsc, "w", "--generate")  # no owner authorisation anywhere
    info = vsc.run("info", "w", "--json").json()
    assert info["backend_kind"] == "tpm"
    with Card(vsc, "w", tpm_backend(vsc)) as card:
        assert card.verify(PIN) == OK
        assert card.sw(0x87, 0x11, 0x9A, bytes.fromhex("7C2482008120") + bytes(32)) == OK
    assert vsc.run("tpm", "status", "--json").json()["cards"] == ["w"]


def test_no_tpm_is_said_plainly(plain: Vsc) -> None:
    if any(device.exists() for device in DEVICES):
        pytest.skip("this machine has a TPM device")
    result = plain.run("tpm", "status", backend=False, status=1)
    assert result.stdout.startswith("TPM: not present")
    assert "no TPM" in result.stdout
    broken = plain.run("tpm", "status", "--tpm", "swtpm:path=/nonexistent", backend=False, status=1)
    assert "cannot reach the TPM" in broken.stdout


# -- the other backends, the environment, share -------------------------------------------------


def test_software_backend_and_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "store.key"
    vsc = Vsc(tmp_path / "store", ["--key-file", str(key_file)])
    create(vsc, "bob")
    assert vsc.run("info", "bob", "--json").json()["backend_kind"] == "software"
    env = Vsc(tmp_path / "store", [], env={"VSC_KEY_FILE": str(key_file)})
    assert env.run("lock", "bob").returncode == 0
    wrong = Vsc(tmp_path / "store", ["--insecure-plain"])
    mismatch = wrong.run("info", "bob", status=1)
    assert "software backend, not plain" in mismatch.stderr
    both = Vsc(tmp_path / "store", [], env={"VSC_KEY_FILE": "/k", "VSC_TPM": "swtpm:path=/s"})
    assert "choose one backend" in both.run("info", "bob", status=1).stderr
    none = Vsc(tmp_path / "store", [])
    assert "protection backend" in none.run("info", "bob", status=1).stderr


def test_a_card_in_use_is_refused(plain: Vsc) -> None:
    create(plain, "alice")
    _, stored = open_card("alice", BackendSpec.plain(), store=plain.store)
    try:
        busy = plain.run("lock", "alice", status=3)
        assert "in use by process" in busy.stderr
        plain.run("destroy", "alice", status=3)
    finally:
        stored.close()
    plain.run("destroy", "alice")


def test_share_is_still_there(tmp_path: Path) -> None:
    vsc = Vsc(tmp_path / "store", [])
    peers = vsc.run("share", "peers", "--home", str(tmp_path / "share"), backend=False)
    assert peers.stdout.startswith("this machine")


# -- a user at a terminal ---------------------------------------------------------------------


def in_terminal(
    vsc: Vsc, args: list[str], replies: list[tuple[str, Callable[[str], str]]]
) -> tuple[int, str]:
    """Run ``vsc ARGS`` on a pseudo-terminal (its controlling terminal: getpass and the
    interactive prompts use it); answer each prompt with ``reply(output so far)``."""
    argv = [sys.executable, "-m", "vsc.cli", *args, *vsc.backend]
    pid, fd = pty.fork()
    if pid == 0:  # the child: nothing but exec
        os.execve(sys.executable, argv, vsc.env)
    output = b""
    deadline = time.monotonic() + CLI_TIMEOUT

    def read_until(marker: bytes | None) -> None:
        nonlocal output
        while marker is None or marker not in output:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in time; output:\n{output.decode(errors='replace')}"
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                assert marker is None, f"ended before {marker!r}: {output.decode()}"
                return
            output += chunk

    try:
        for prompt, reply in replies:
            read_until(prompt.encode())
            text = output.decode(errors="replace").replace("\r\n", "\n")  # a terminal's lines
            os.write(fd, reply(text).encode() + b"\n")
            output = output.replace(prompt.encode(), b"<answered>", 1)  # the next prompt is new
        read_until(None)
        _, status = os.waitpid(pid, 0)
        pid = 0
        return os.waitstatus_to_exitcode(status), output.decode(errors="replace")
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def test_unblock_at_a_terminal(plain: Vsc) -> None:
    """The user reads the challenge out and types the response and the new PIN."""
    admin_key = str(create(plain, "alice")["admin_key"])

    def response(output: str) -> str:
        return respond(plain, admin_key, challenge_of(output))

    status, output = in_terminal(
        plain,
        ["unblock", "alice"],
        [
            ("Response: ", response),
            ("New PIN: ", lambda _: NEW_PIN),
            ("Again: ", lambda _: NEW_PIN),
        ],
    )
    assert status == 0, output
    assert "PIN reset" in output and NEW_PIN not in output  # the PIN is not echoed
    with Card(plain, "alice", BackendSpec.plain()) as card:
        assert card.verify(NEW_PIN) == OK


def test_create_at_a_terminal_asks_for_the_pin(plain: Vsc) -> None:
    """No PIN option at a terminal: the PIN is asked for (twice), never generated or shown."""
    status, output = in_terminal(
        plain, ["create", "alice"], [("User PIN: ", lambda _: PIN), ("Again: ", lambda _: PIN)]
    )
    assert status == 0, output
    assert "generated" not in output and PIN not in output
    with Card(plain, "alice", BackendSpec.plain()) as card:
        assert card.verify(PIN) == OK


def test_create_at_a_terminal_asks_for_the_tpm_owner_authorisation(vsc: Vsc) -> None:
    """An owned TPM with no storage key persisted: at a terminal the owner authorisation is
    asked for (never echoed or kept), and vsc's storage key is persisted with it."""
    tpm2(vsc.backend[1], "tpm2_changeauth", "-c", "owner", "owner-secret")
    status, output = in_terminal(
        vsc,
        ["create", "alice", "--pin", PIN],
        [("TPM owner authorisation: ", lambda _: "owner-secret")],
    )
    assert status == 0, output
    assert "owner-secret" not in output and "Created card alice" in output
    detail = vsc.run("tpm", "status", "--json").json()["storage_key_detail"]
    assert detail == "ECC P-256, persisted at 0x81000001"
    assert "owner-secret" not in vsc.audit_text()


# -- output into a closed pipe ------------------------------------------------------------


def test_output_into_a_closed_pipe_ends_quietly(plain: Vsc) -> None:
    """``vsc audit --json | head -1``: the reader is gone; no traceback, SIGPIPE's status."""
    plain.run("create", "alice", "--pin-prompt", input=f"{PIN}\n{PIN}\n")
    for args in (["audit", "--json"], ["list"], ["info", "alice", "--json"], ["--help"]):
        read, write = os.pipe()
        os.close(read)  # the reader has gone before the first byte
        try:
            done = subprocess.run(
                [sys.executable, "-m", "vsc.cli", *args, *plain.backend],
                stdout=write, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                env=plain.env, timeout=CLI_TIMEOUT, check=False,
            )  # fmt: skip
        finally:
            os.close(write)
        assert done.stderr == b"", (args, done.stderr.decode())
        assert done.returncode == (0 if args == ["--help"] else 141), args  # argparse: 0
    # Through a shell, as the issue was found: the first line arrives, nothing else is said.
    shell = subprocess.run(
        ["bash", "-c", "set -o pipefail; python -m vsc.cli audit --json | head -1"],
        capture_output=True, text=True, env={**plain.env, "PATH": os.path.dirname(sys.executable)
        + os.pathsep + os.environ.get("PATH", "")}, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip
    assert shell.stderr == "" and json.loads(shell.stdout)["event"] == "create"
