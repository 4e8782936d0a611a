"""Record real clients' conversations with the PIV card, for tests/test_transcripts.py.

Each scenario runs real client commands against a card served through a
private pcscd + vpcd by the emulator's socket loop (in this process, so the
card can be a :class:`~vsc.testing.transcript.RecordingCard` with a fixed
serial). The test checks that the clients succeeded, that the fresh recording
replays byte for byte on a fresh card (the scenario is deterministic: no card
randomness, and the recorder saw everything), and, when the client versions
are those of the fixture file, that the clients said what the fixture says.

To re-record the fixture files after a deliberate change of the card or the
clients::

    VSC_RECORD_TRANSCRIPTS=1 .venv/bin/pytest tests/e2e/test_piv_transcripts.py

which rewrites ``fixtures/transcripts/<scenario>.json``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass

import pytest

from applets.piv import DEFAULT_PROFILE
from vsc.emulator import Emulator
from vsc.testing import PcscdEnv
from vsc.testing.transcript import RecordingCard, Transcript, replay

from ..test_transcripts import FIXTURES, SCENARIOS, make_card
from .conftest import CARD_TIMEOUT
from .test_piv_tools import pkcs11_module, program

pytestmark = pytest.mark.e2e

SERIAL = 12345678
CLIENT_TIMEOUT = 30.0
RECORD_ENV = "VSC_RECORD_TRANSCRIPTS"


@dataclass(frozen=True, slots=True)
class Step:
    """One client command: ``{reader}`` and ``{pkcs11}`` are filled in when it runs."""

    argv: tuple[str, ...]
    expect: str
    returncode: int = 0


@dataclass(frozen=True, slots=True)
class Scenario:
    description: str
    steps: tuple[Step, ...]


def _yubico(*args: str, expect: str, returncode: int = 0) -> Step:
    return Step(("yubico-piv-tool", "-r", "{reader}", *args), expect, returncode)


def _ykman(*args: str, expect: str) -> Step:
    return Step(("ykman", "--reader", "{reader}", "piv", *args), expect)


SCENARIO_TABLE: dict[str, Scenario] = {
    "opensc-tool-name": Scenario(
        "OpenSC's card detection (all its drivers' match probes) naming a PIV card.",
        (Step(("opensc-tool", "-r", "{reader}", "-n"), "Personal Identity Verification Card"),),
    ),
    "piv-tool-name": Scenario(
        "piv-tool identifying the card through OpenSC's PIV driver.",
        (Step(("piv-tool", "-r", "{reader}", "-n"), "Personal Identity Verification Card"),),
    ),
    "pkcs11-tool-login": Scenario(
        "opensc-pkcs11.so: slot list, then C_Login and the object list of a factory card.",
        (
            Step(("pkcs11-tool", "--module", "{pkcs11}", "--list-slots"), "token label"),
            Step(
                ("pkcs11-tool", "--module", "{pkcs11}", "--login", "--pin", "123456", "-O"),
                "Discovery Object",
            ),
        ),
    ),
    "yubico-piv-tool-status": Scenario(
        "libykpiv's connect sequence, version and status of a factory card.",
        (
            _yubico("-a", "version", expect="Application version 5.4.3 found."),
            _yubico("-a", "status", expect=f"Serial Number:\t{SERIAL}"),
        ),
    ),
    "yubico-piv-tool-pin": Scenario(
        "yubico-piv-tool: verify (right, wrong), change PIN and PUK, block the PIN, unblock.",
        (
            _yubico("-a", "verify-pin", "-P", "123456", expect="Successfully verified PIN."),
            _yubico("-a", "verify-pin", "-P", "000000", expect="2 tries left", returncode=1),
            _yubico("-a", "change-pin", "-P", "123456", "-N", "654321", expect="changed the pin"),
            _yubico("-a", "verify-pin", "-P", "654321", expect="Successfully verified PIN."),
            _yubico(
                "-a", "change-puk", "-P", "12345678", "-N", "87654321", expect="changed the puk"
            ),
            _yubico("-a", "verify-pin", "-P", "000000", expect="2 tries left", returncode=1),
            _yubico("-a", "verify-pin", "-P", "000000", expect="1 tries left", returncode=1),
            _yubico("-a", "verify-pin", "-P", "000000", expect="blocked", returncode=1),
            _yubico("-a", "verify-pin", "-P", "654321", expect="blocked", returncode=1),
            _yubico("-a", "unblock-pin", "-P", "87654321", "-N", "123456", expect="unblocked"),
            _yubico("-a", "status", expect="PIN tries left:\t3"),
        ),
    ),
    "ykman-piv-info": Scenario(
        "ykman's device probing (the Management application), then PivSession and `piv info`.",
        (_ykman("info", expect="PIV version:              5.4.3"),),
    ),
    "ykman-piv-access": Scenario(
        "ykman: change PIN, change PUK, unblock the PIN with the PUK.",
        (
            _ykman("access", "change-pin", "-P", "123456", "-n", "654321", expect="New PIN set."),
            _ykman(
                "access", "change-puk", "-p", "12345678", "-n", "87654321", expect="New PUK set."
            ),
            _ykman(
                "access", "unblock-pin", "-p", "87654321", "-n", "123456", expect="New PIN set."
            ),
        ),
    ),
}


#: How to learn each client package's version: (argv, pattern).
_VERSION_PROBES = {
    "opensc": (("opensc-tool", "-i"), r"OpenSC (\S+)"),
    "yubico-piv-tool": (("yubico-piv-tool", "--version"), r"yubico-piv-tool (\S+)"),
    "ykman": (("ykman", "--version"), r"version: (\S+)"),
}
_PACKAGE = {"opensc-tool": "opensc", "piv-tool": "opensc", "pkcs11-tool": "opensc"}


def _versions(programs: set[str]) -> dict[str, str]:
    """The client packages' versions, for the reader of a fixture file."""
    found: dict[str, str] = {}
    for package in sorted({_PACKAGE.get(p, p) for p in programs}):
        (client, *args), pattern = _VERSION_PROBES[package]
        out = subprocess.run(
            [program(client), *args],
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            check=False,
        )
        match = re.search(pattern, out.stdout)
        found[package] = match.group(1) if match else "unknown"
    return found


def record(pcscd: PcscdEnv, name: str, scenario: Scenario) -> Transcript:
    """Run the scenario's clients against a recording card; its transcript."""
    params: dict[str, int | str] = {"serial": SERIAL, "profile": DEFAULT_PROFILE.name}
    card = make_card(params, RecordingCard)
    assert isinstance(card, RecordingCard)
    fill = {"reader": pcscd.reader(0)}
    if any("{pkcs11}" in step.argv for step in scenario.steps):
        fill["pkcs11"] = pkcs11_module()
    with Emulator([card], host="127.0.0.1", port=pcscd.vpcd_port(0)):
        pcscd.wait_for_card(pcscd.reader(0), present=True, timeout=CARD_TIMEOUT)
        for step in scenario.steps:
            argv = [program(step.argv[0]), *(arg.format(**fill) for arg in step.argv[1:])]
            result = pcscd.run(argv, timeout=CLIENT_TIMEOUT)
            output = result.stdout + result.stderr
            assert result.returncode == step.returncode, f"{argv}:\n{output}"
            assert step.expect in output, f"{argv}:\n{output}"
    return card.transcript(
        name,
        description=scenario.description,
        card=params,
        clients=_versions({step.argv[0] for step in scenario.steps}),
        commands=tuple(shlex.join(step.argv) for step in scenario.steps),
    )


def test_scenarios_are_the_fixture_set() -> None:
    assert set(SCENARIO_TABLE) == SCENARIOS


@pytest.mark.parametrize("name", sorted(SCENARIO_TABLE))
def test_record_and_replay(name: str, pcscd: PcscdEnv) -> None:
    transcript = record(pcscd, name, SCENARIO_TABLE[name])

    assert replay(transcript, make_card(transcript.card)) == len(transcript.exchanges) > 0
    path = FIXTURES / f"{name}.json"
    if os.environ.get(RECORD_ENV, "").strip() not in ("", "0"):
        FIXTURES.mkdir(parents=True, exist_ok=True)
        transcript.save(path)
    # Same clients, same card: the same conversation as the fixture. (Power
    # events are left out: pcscd's idle power-down depends on timing.)
    fixture = Transcript.load(path)
    if fixture.clients == transcript.clients:
        assert transcript.exchanges == fixture.exchanges, (
            f"the clients now talk differently to the card than in {path}; if the card "
            f"changed on purpose, re-record with {RECORD_ENV}=1"
        )
