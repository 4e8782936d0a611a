"""Recorded real-client conversations, replayed byte for byte against a fresh card.

Each file in ``fixtures/transcripts/`` is what a real client (opensc-tool,
yubico-piv-tool, pkcs11-tool, ykman) sent through pcscd + vpcd to the
emulator's PIV card and what the card answered (recorded by
``tests/e2e/test_piv_transcripts.py``; see fixtures/transcripts/README.md). Replaying it
needs neither pcscd nor the client: a change in any answer the clients rely
on fails here, with the conversation leading up to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from applets.cards import build_card
from applets.piv import DEFAULT_PROFILE, PivApplet
from applets.piv.profile import profile_named
from vsc.card import Card
from vsc.testing.transcript import (
    Exchange,
    Power,
    RecordingCard,
    ReplayMismatch,
    Transcript,
    TranscriptError,
    replay,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "transcripts"

#: The scenarios issue 3 asks for; a missing file fails test_every_scenario_is_recorded.
SCENARIOS = frozenset(
    {
        "opensc-tool-name",
        "piv-tool-name",
        "pkcs11-tool-login",
        "yubico-piv-tool-status",
        "yubico-piv-tool-pin",
        "ykman-piv-info",
        "ykman-piv-access",
    }
)

PIV_AID = bytes.fromhex("A000000308")
SELECT_PIV = bytes.fromhex("00A4040005") + PIV_AID
GET_SERIAL = bytes.fromhex("00F8000000")


def make_card(params: Mapping[str, int | str], card_class: type[Card] = Card) -> Card:
    """The emulator's card of ``params["profile"]`` (default: the default card) with
    ``params["serial"]``: PIV, a YubiKey's Management application, the echo applet."""
    profile = profile_named(str(params.get("profile", DEFAULT_PROFILE.name)))
    piv = PivApplet(serial=int(params["serial"]), profile=profile)
    return build_card(piv, card_class=card_class)


def fixture_paths() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


def load(name: str) -> Transcript:
    return Transcript.load(FIXTURES / f"{name}.json")


def test_every_scenario_is_recorded() -> None:
    names = {path.stem for path in fixture_paths()}
    assert names >= SCENARIOS
    for path in fixture_paths():
        assert Transcript.load(path).name == path.stem


@pytest.mark.parametrize("path", fixture_paths(), ids=lambda p: p.stem)
def test_replay(path: Path) -> None:
    transcript = Transcript.load(path)
    checked = replay(transcript, make_card(transcript.card))
    assert checked == len(transcript.exchanges) > 0
    # Every scenario is a conversation with the PIV applet (its APT or discovery object).
    assert any(PIV_AID in e.response for e in transcript.exchanges)


def test_a_changed_answer_fails_the_replay() -> None:
    # Forge the recorded answer to GET SERIAL (the first one) as serial + 1.
    transcript = load("yubico-piv-tool-status")
    serial = int(transcript.card["serial"])
    index = next(
        i
        for i, e in enumerate(transcript.events)
        if isinstance(e, Exchange) and e.command == GET_SERIAL
    )
    recorded = transcript.events[index]
    assert isinstance(recorded, Exchange)
    assert recorded.response == serial.to_bytes(4, "big") + b"\x90\x00"
    forged = Exchange(GET_SERIAL, (serial + 1).to_bytes(4, "big") + b"\x90\x00")
    events = (*transcript.events[:index], forged, *transcript.events[index + 1 :])

    with pytest.raises(ReplayMismatch) as failure:
        replay(replace(transcript, events=events), make_card(transcript.card))

    assert failure.value.index == index
    assert failure.value.actual == recorded.response
    assert "> 00 F8 00 00 00" in str(failure.value)


def test_a_card_with_another_serial_fails_the_replay() -> None:
    transcript = load("yubico-piv-tool-status")
    other = {**transcript.card, "serial": int(transcript.card["serial"]) + 1}
    with pytest.raises(ReplayMismatch):
        replay(transcript, make_card(other))


def test_power_events_are_replayed() -> None:
    # The PIN is verified, then the card is reset: the status query must fail
    # again, which only a replay that performs the reset reproduces.
    recorder = make_card({"serial": 12345678}, RecordingCard)
    assert isinstance(recorder, RecordingCard)
    verify = bytes.fromhex("0020008008313233343536FFFF")
    status = bytes.fromhex("0020008000")
    recorder.transmit(SELECT_PIV)
    recorder.transmit(verify)
    assert recorder.transmit(status) == b"\x90\x00"
    recorder.reset()
    assert recorder.transmit(status) == b"\x63\xc3"
    recorder.power_off()
    transcript = recorder.transcript("reset", card={"serial": 12345678})

    kinds = [e if isinstance(e, Power) else "x" for e in transcript.events]
    assert kinds == [Power.ON, "x", "x", "x", Power.RESET, "x", Power.OFF]
    assert replay(transcript, make_card(transcript.card)) == 4
    without_reset = replace(
        transcript, events=tuple(e for e in transcript.events if e is not Power.RESET)
    )
    with pytest.raises(ReplayMismatch) as failure:
        replay(without_reset, make_card(transcript.card))
    assert failure.value.actual == b"\x90\x00"


def test_json_round_trip() -> None:
    transcript = load("ykman-piv-info")
    assert Transcript.from_json(transcript.to_json()) == transcript
    assert (FIXTURES / "ykman-piv-info.json").read_text() == transcript.to_json()


def test_wildcards_match_any_data_byte() -> None:
    text = Transcript(
        "w",
        b"\x3b\x00",
        (Exchange(b"\x00\x84\x00\x00\x02", bytes.fromhex("AB009000"), frozenset({1})),),
    ).to_json()
    assert "< AB ?? 90 00" in text
    (exchange,) = Transcript.from_json(text).exchanges
    assert exchange.matches(bytes.fromhex("AB7F9000"))
    assert not exchange.matches(bytes.fromhex("AC7F9000"))
    assert not exchange.matches(bytes.fromhex("AB7F6A82"))
    assert not exchange.matches(bytes.fromhex("AB9000"))
    with pytest.raises(TranscriptError, match="status word"):
        Exchange(b"\x00", bytes.fromhex("9000"), frozenset({0}))


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda d: d.pop("atr"), "missing field"),
        (lambda d: d.update(format="other/1"), "not a vsc-transcript/1"),
        (lambda d: d["events"].append("> 00 A4"), "command and its response"),
        (lambda d: d["events"].insert(1, "< 90 00"), "command and its response"),
        (lambda d: d["events"].__setitem__(slice(1, 1), ["> 00 XY", "< 90 00"]), "not hex"),
        (lambda d: d.update(card={"serial": [1]}), "bad entry"),
    ],
)
def test_malformed_files_are_rejected(mutation: Any, message: str) -> None:
    document = json.loads(load("opensc-tool-name").to_json())
    mutation(document)
    with pytest.raises(TranscriptError, match=message):
        Transcript.from_json(json.dumps(document))
