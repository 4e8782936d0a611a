"""The GIDS fuzz target: its seeds replay as recorded, a campaign keeps the law, the probe bites."""

from __future__ import annotations

from pathlib import Path

import pytest

from applets.echo import EchoApplet
from applets.gids import GIDS_ATR, GidsApplet
from applets.gids.security import Session
from vsc import Card
from vsc.fuzz import Fuzzer, Harness, main
from vsc.fuzz.gids import gids_authenticate, gids_card, gids_probe, gids_seeds
from vsc.fuzz.inputs import StepKind

SEEDS = gids_seeds()


def harness() -> Harness:
    return Harness(gids_card, gids_probe, authenticate=gids_authenticate)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_each_seed_answers_as_recorded(name: str) -> None:
    steps = SEEDS[name]
    log: list[str] = []
    outcome = harness().run(steps, log)
    assert outcome.violation is None
    answers = [line for line in log if line.startswith("< ")]
    expected = [s.expect for s in steps if s.kind is StepKind.APDU]
    # The macro's three exchanges are not steps of their own: compare APDU steps in order.
    apdu_answers = iter(answers)
    got = []
    for step in steps:
        if step.kind is StepKind.AUTHENTICATE:
            for _ in range(3):
                next(apdu_answers)
        elif step.kind is StepKind.APDU:
            got.append(int(next(apdu_answers)[-5:].replace(" ", ""), 16))
    assert got == expected


def test_the_seeds_reach_both_life_cycles_and_the_administrator() -> None:
    assert SEEDS["factory-probe"][-1].expect == 0x6A88  # no PIN on a factory card
    unblock = SEEDS["block-unblock-change"]
    assert [s.expect for s in unblock[-3:]] == [0x9000, 0x9000, 0x9000]
    assert any(s.kind is StepKind.AUTHENTICATE for s in unblock)


def test_a_short_campaign_keeps_the_law(tmp_path: Path) -> None:
    fuzzer = Fuzzer(harness(), SEEDS.values(), seed=18, crash_dir=tmp_path)
    summary = fuzzer.run(iterations=2000)
    assert summary.violations == 0, summary.crashes
    assert summary.inputs == 2000


class _OpenApplet(GidsApplet):
    """Broken on purpose: every access condition is met."""

    def _require(self, condition: int | None, session: Session, what: str) -> None:
        return None


def test_the_probe_catches_an_applet_that_grants_without_authentication() -> None:
    def broken() -> Card:
        applet = _OpenApplet()
        return Card([applet, EchoApplet()], atr=GIDS_ATR, default=applet)

    outcome = Harness(broken, gids_probe, authenticate=gids_authenticate).run(
        SEEDS["gids-tool-initialize"]
    )
    assert outcome.violation is not None
    assert outcome.violation.kind == "probe"
    assert "PUT DATA cardid" in outcome.violation.message


def test_main_fuzzes_the_gids_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["--target", "gids", "--iterations", "50", "--seed", "2", "--crash-dir", str(tmp_path)]
    )
    assert code == 0
    assert "inputs=50" in capsys.readouterr().out
