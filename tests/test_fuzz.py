"""The fuzz entry point (``python -m vsc.fuzz``): a short campaign, and proof
that the checker catches every kind of violation it claims to.

The broken cards below each break the law one way; a harness that let any of
them pass would make the 0-violation campaigns meaningless.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vsc
from applets.echo import EchoApplet
from applets.piv import PivApplet
from applets.piv.security import SecurityState
from vsc import Card, CommandApdu, Response, command
from vsc.fuzz import (
    DEFAULT_CORPUS,
    FUZZ_SERIAL,
    Fuzzer,
    Harness,
    Run,
    Summary,
    Violation,
    check_response,
    libfuzzer,
    load_seeds,
    main,
    piv_card,
    replay,
    save_crash,
)
from vsc.fuzz.corpus import load_corpus, parse_transcript
from vsc.fuzz.coverage import LineCoverage
from vsc.fuzz.inputs import (
    MAX_STEPS,
    FuzzInput,
    Step,
    StepKind,
    decode_input,
    encode_input,
    format_input,
    parse_input,
)
from vsc.fuzz.mutate import Mutator
from vsc.fuzz.piv import PROFILE
from vsc.fuzz.seeds import seed_inputs
from vsc.testing.plugin import unavailable

CORPUS, TRANSCRIPTS = DEFAULT_CORPUS


def h(text: str) -> Step:
    return Step(StepKind.APDU, bytes.fromhex(text))


# -- broken cards -----------------------------------------------------------------------------


class BadSwPiv(PivApplet):
    """GET VERSION with P1/P2 other than 0000 answers the invalid status word 6000."""

    @command(0xFD)
    def version_with_bad_sw(self, apdu: CommandApdu, session: SecurityState) -> bytes | Response:
        if apdu.p1 or apdu.p2:
            return Response(b"", 0x6000)
        return bytes((5, 7, 1))


class SixCeePiv(PivApplet):
    @command(0xF8)
    def serial_with_6cxx(self, apdu: CommandApdu, session: SecurityState) -> bytes | Response:
        if apdu.p1 == 0x6C:
            return Response(b"", 0x6C10)
        return FUZZ_SERIAL.to_bytes(4, "big")


class HangingPiv(PivApplet):
    @command(0xF8)
    def get_serial(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        if apdu.p1 == 0x01:
            while True:  # a busy loop: only the watchdog gets us out
                pass
        if apdu.p1 == 0x02:
            time.sleep(3600)  # a blocking call: the signal interrupts it
        return FUZZ_SERIAL.to_bytes(4, "big")


class CrashingPiv(PivApplet):
    @command(0xF8)
    def get_serial(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        if apdu.p1 == 0x01:
            raise ZeroDivisionError("a bug in an applet")
        return FUZZ_SERIAL.to_bytes(4, "big")


class BrickablePiv(PivApplet):
    """INS E7 bricks the card for good: GET VERSION answers 00 00 00 from then on."""

    bricked = False

    @command(0xE7)
    def brick(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        self.bricked = True
        return b""

    @command(0xFD)
    def get_version(self, apdu: CommandApdu, session: SecurityState) -> bytes:
        return bytes(3) if self.bricked else bytes((5, 7, 1))


class StickyPinPiv(PivApplet):
    """Every session shares one SecurityState: a power cycle keeps the PIN verified."""

    def __init__(self) -> None:
        super().__init__(serial=FUZZ_SERIAL, profile=PROFILE)
        self.shared = SecurityState()

    def new_session(self) -> SecurityState:
        return self.shared


class ShortResponseCard(Card):
    """Answers one byte to GET SERIAL with P1 = 01, and overlong data to P1 = 02."""

    def transmit(self, apdu: bytes) -> bytes:
        resp = super().transmit(apdu)
        if apdu[1:3] == b"\xf8\x01":
            return b"\x90"
        if apdu[1:3] == b"\xf8\x02":
            return bytes(300) + resp
        return resp


class RaisingPowerCard(Card):
    def reset(self) -> bytes:
        raise OSError("reset failed")


def card_with(piv: PivApplet, card: Card | None = None) -> Card:
    card = card if card is not None else Card()
    card.register(piv, default=True)
    card.register(EchoApplet())
    return card


def factory(cls: type[PivApplet]) -> Callable[[], Card]:
    return lambda: card_with(cls(serial=FUZZ_SERIAL, profile=PROFILE))


# -- the real card ----------------------------------------------------------------------------


def test_short_campaign_on_the_piv_card_has_no_violations(tmp_path: Path) -> None:
    seeds = load_seeds(DEFAULT_CORPUS)
    fuzzer = Fuzzer(Harness(), seeds, seed=8, crash_dir=tmp_path)
    summary = fuzzer.run(iterations=2500)
    assert summary.inputs == 2500
    assert summary.apdus > 20 * summary.inputs  # the probe alone sends ~25
    assert summary.violations == 0, summary.crashes
    assert not list(tmp_path.iterdir())
    assert len(fuzzer.corpus) > len(seeds)  # feedback found new (INS, SW) pairs


def test_every_seed_and_transcript_passes_the_harness() -> None:
    inputs = load_seeds(DEFAULT_CORPUS)
    assert len(inputs) >= 20
    with Harness() as harness:
        for steps in inputs:
            assert harness.run(steps).violation is None, format_input(steps)


def play_with_sws(steps: FuzzInput) -> list[int | None]:
    """The SW of each step's last APDU on a fresh card (None for power events)."""
    with Harness(probe=None) as harness:
        log: list[str] = []
        run = Run(harness, log, set())
        run.card = piv_card()
        sws: list[int | None] = []
        for index, step in enumerate(steps):
            before = len(log)
            run.step = index
            run.play(step)
            answers = [line for line in log[before:] if line.startswith("<")]
            sws.append(int(answers[-1][-5:].replace(" ", ""), 16) if answers else None)
        return sws


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.fuzz")), ids=lambda p: p.stem)
def test_seed_files_answer_as_documented(path: Path) -> None:
    """Each ``=XXXX`` in a seed file is what a factory-fresh card answers."""
    steps = parse_input(path.read_text())
    expected = [step.expect for step in steps]
    assert any(e is not None for e in expected)
    got = play_with_sws(steps)
    mismatches = [
        (i, format_input([steps[i]]).strip(), f"{g:04X}" if g is not None else None)
        for i, (e, g) in enumerate(zip(expected, got, strict=True))
        if e is not None and e != g
    ]
    assert not mismatches


def test_seed_files_are_the_generated_seeds() -> None:
    """The checked-in corpus and the generator agree on names and shapes."""
    generated = seed_inputs()
    files = {p.stem: parse_input(p.read_text()) for p in CORPUS.glob("*.fuzz")}
    assert set(files) == set(generated)
    for name, steps in generated.items():
        assert [s.kind for s in files[name]] == [s.kind for s in steps], name
        assert [s.expect for s in files[name]] == [s.expect for s in steps], name


@pytest.mark.skipif(not TRANSCRIPTS.is_dir(), reason="no recorded transcripts yet")
def test_recorded_transcripts_become_inputs() -> None:
    inputs = load_corpus([TRANSCRIPTS])
    assert inputs
    commands = [s.data for steps in inputs for s in steps if s.kind is StepKind.APDU]
    assert any(c.startswith(bytes.fromhex("00A40400")) for c in commands)
    assert all(len(steps) <= MAX_STEPS for steps in inputs)


# -- the checker catches what it claims to ----------------------------------------------------


def run_one(card_factory: Callable[[], Card], steps: FuzzInput, **kwargs: Any) -> Violation | None:
    return Harness(card_factory, **kwargs).run(steps).violation


@pytest.mark.parametrize(
    ("card_factory", "steps", "kind", "message"),
    [
        (factory(BadSwPiv), (h("00FD0100"),), "law", "invalid status word 6000"),
        (factory(SixCeePiv), (h("00F86C00"),), "law", "6Cxx"),
        (
            lambda: card_with(PivApplet(serial=FUZZ_SERIAL, profile=PROFILE), ShortResponseCard()),
            (h("00F80100"),),
            "law",
            "response of 1 bytes",
        ),
        (
            lambda: card_with(PivApplet(serial=FUZZ_SERIAL, profile=PROFILE), ShortResponseCard()),
            (h("00F8020000"),),
            "law",
            "data bytes for Ne 256",
        ),
        (factory(CrashingPiv), (h("00F80100"),), "internal", "ZeroDivisionError"),
        (factory(BrickablePiv), (h("00E70000"),), "probe", "GET VERSION"),
        (
            lambda: card_with(StickyPinPiv()),
            (h("0020008008313233343536FFFF"),),
            "probe",
            "VERIFY status after power cycle",
        ),
        (
            lambda: card_with(PivApplet(serial=FUZZ_SERIAL, profile=PROFILE), RaisingPowerCard()),
            (Step(StepKind.RESET),),
            "exception",
            "OSError: reset failed",
        ),
    ],
    ids=["invalid-sw", "6cxx", "short", "overlong", "internal", "bricked", "sticky-pin", "raises"],
)
def test_each_kind_of_violation_is_detected(
    card_factory: Callable[[], Card], steps: FuzzInput, kind: str, message: str
) -> None:
    violation = run_one(card_factory, steps)
    assert violation is not None
    assert violation.kind == kind
    assert message in violation.message
    # The same card passes when the input does not trigger the bug.
    assert run_one(card_factory, (h("00FD000000"),)) is None


@pytest.mark.parametrize("p1", [1, 2], ids=["busy-loop", "blocking-sleep"])
def test_hangs_are_detected_by_the_watchdog(p1: int) -> None:
    steps = (h("00A4040005A000000308"), h(f"00F8{p1:02X}00"))
    start = time.monotonic()
    violation = run_one(factory(HangingPiv), steps, timeout=0.3)
    assert violation == Violation("hang", "a card call took longer than 0.3 s", 1)
    assert time.monotonic() - start < 30  # it was interrupted, not waited out


def test_internal_errors_can_be_tolerated() -> None:
    """6F00 is a valid SW: only the strict mode (the default) counts the traceback."""
    steps = (h("00F80100"),)
    assert run_one(factory(CrashingPiv), steps, internal_errors_are_violations=False) is None


def test_a_campaign_finds_a_bug_that_needs_mutation_and_saves_a_replayable_crash(
    tmp_path: Path,
) -> None:
    """No seed sends GET VERSION with P1/P2 ≠ 0000: only a mutation reaches the bug."""
    seeds = load_seeds([CORPUS])
    assert all(
        not s.data.startswith(b"\x00\xfd") or s.data[2:4] == b"\0\0" for x in seeds for s in x
    )
    harness = Harness(factory(BadSwPiv))
    fuzzer = Fuzzer(harness, seeds, seed=3, crash_dir=tmp_path)
    summary = fuzzer.run(iterations=5000, stop_on_violation=True)
    assert summary.violations == 1
    assert summary.inputs > len(seeds)
    assert summary.by_kind == {"law": 1}
    crashes = sorted(tmp_path.glob("violation-law-*.fuzz"))
    assert len(crashes) == 1
    outcome, log = replay(crashes[0], Harness(factory(BadSwPiv)))
    assert outcome.violation is not None and "6000" in outcome.violation.message
    assert log[-1].endswith("60 00")
    # The crash file names the violation and how to replay it.
    assert "replay: python -m vsc.fuzz --replay" in crashes[0].read_text()
    # On the real card the same input is fine.
    assert replay(crashes[0], Harness())[0].violation is None


def test_save_crash_is_idempotent(tmp_path: Path) -> None:
    steps = (h("00FD0100"), Step(StepKind.RESET))
    violation = Violation("law", "x", 0)
    first = save_crash(tmp_path, steps, violation)
    assert save_crash(tmp_path, steps, violation) == first
    assert parse_input(first.read_text()) == steps


# -- the law itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "response", "problem"),
    [
        ("00FD000000", "0507019000", None),
        ("00FD0000", "6D00", None),
        ("00FD0000", "9FFF", None),
        ("0000", "6700", None),
        ("00FD000000", "90", "response of 1 bytes"),
        ("00FD000000", "", "response of 0 bytes"),
        ("00FD000000", "6000", "invalid status word 6000"),
        ("00FD000000", "7000", "invalid status word 7000"),
        ("00FD000000", "A000", "invalid status word A000"),
        ("00FD000000", "6C05", "6Cxx"),
        ("00FD000001", "05079000", "2 data bytes for Ne 1"),
        ("0000", "019000", "1 data bytes for Ne 0"),
    ],
)
def test_check_response(command: str, response: str, problem: str | None) -> None:
    result = check_response(bytes.fromhex(command), bytes.fromhex(response))
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


# -- input forms and the mutator --------------------------------------------------------------


def test_text_form_round_trips_with_expectations_and_keywords() -> None:
    steps = (
        Step(StepKind.APDU, bytes.fromhex("00A4040005A000000308"), 0x9000),
        Step(StepKind.RESET),
        Step(StepKind.POWER_OFF),
        Step(StepKind.POWER_ON),
        Step(StepKind.AUTHENTICATE, bytes.fromhex("0003") + bytes(24), 0x9000),
        Step(StepKind.APDU, b""),
    )
    text = format_input(steps, "a comment\nover two lines")
    assert text.startswith("# a comment\n# over two lines\n")
    assert parse_input(text) == steps
    with pytest.raises(ValueError, match="line 2"):
        parse_input("00 A4\nnot hex\n")


def test_transcript_lines_including_masked_secrets() -> None:
    text = "\n".join(
        [
            "power on",
            "[0] > 00 A4 04 00 05 A0 00 00 03 08",
            "[0] < 61 11 4F 06 90 00",
            "[0] > 00 20 00 80 <9 secret bytes>",
            "[0] < 90 00",
            "reset",
            "> 00 2C 00 80 <17 secret bytes>",
        ]
    )
    steps = parse_transcript(text)
    assert [s.kind for s in steps] == [
        StepKind.POWER_ON,
        StepKind.APDU,
        StepKind.APDU,
        StepKind.RESET,
        StepKind.APDU,
    ]
    assert steps[2].data == bytes.fromhex("0020008008313233343536FFFF")
    assert steps[4].data == bytes.fromhex("002C008010") + b"12345678" + b"123456\xff\xff"


@given(st.lists(st.tuples(st.sampled_from(list(StepKind)), st.binary(max_size=300)), max_size=20))
def test_binary_form_round_trips(raw: list[tuple[StepKind, bytes]]) -> None:
    steps = tuple(
        Step(kind, data if kind in (StepKind.APDU, StepKind.AUTHENTICATE) else b"")
        for kind, data in raw
    )
    assert decode_input(encode_input(steps)) == steps


@given(st.binary(max_size=2000))
def test_any_bytes_decode_to_an_input(data: bytes) -> None:
    steps = decode_input(data)
    assert len(steps) <= MAX_STEPS
    assert all(isinstance(s, Step) for s in steps)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_mutations_stay_inputs(seed: int) -> None:
    pool = list(seed_inputs_cached())
    mutator = Mutator(random.Random(seed))
    steps = random.Random(seed).choice(pool)
    for _ in range(20):
        steps = mutator.mutate(steps, pool)
        assert len(steps) <= MAX_STEPS
        assert all(s.kind in StepKind for s in steps)
        assert decode_input(encode_input(steps)) == tuple(Step(s.kind, s.data) for s in steps)


def test_mutator_is_deterministic_for_a_seed() -> None:
    pool = list(seed_inputs_cached())
    runs = []
    for _ in range(2):
        mutator = Mutator(random.Random(42))
        runs.append([mutator.mutate(pool[i % len(pool)], pool) for i in range(50)])
    assert runs[0] == runs[1]
    assert any(m != pool[i % len(pool)] for i, m in enumerate(runs[0]))


_SEEDS: list[FuzzInput] = []


def seed_inputs_cached() -> list[FuzzInput]:
    if not _SEEDS:
        _SEEDS.extend(load_corpus([CORPUS]))
    return _SEEDS


# -- the command line -------------------------------------------------------------------------


def test_main_runs_a_campaign_and_prints_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--iterations", "60", "--seed", "1", "--crash-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "fuzz: engine=plain seed=1 inputs=60 " in out
    assert "violations=0 (none)" in out


def test_main_with_jobs_adds_up_the_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--iterations", "40", "--jobs", "2", "--seed", "5", "--crash-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "engine=plain x2 seed=5 inputs=40 " in out


def test_main_replays_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "one.fuzz"
    path.write_text("00 FD 00 00 00\nreset\n")
    assert main(["--replay", str(path)]) == 0
    out = capsys.readouterr().out
    assert "> 00 FD 00 00 00\n< 05 07 01 90 00\nreset" in out
    assert "-> no violation" in out


def test_main_writes_the_seed_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--write-seeds", str(tmp_path)]) == 0
    written = sorted(tmp_path.glob("*.fuzz"))
    assert {p.stem for p in written} == {p.stem for p in CORPUS.glob("*.fuzz")}
    assert all(parse_input(p.read_text()) for p in written)


def test_main_shows_progress_with_rates_violations_and_coverage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--seconds", "1.6", "--progress", "0.5", "--coverage-every", "4"]
    code = main([*argv, "--seed", "2", "--crash-dir", str(tmp_path)])
    err, out = capsys.readouterr()[::-1]
    assert code == 0
    progress = [line for line in err.splitlines() if line.startswith("[seed 2] 0:00:0")]
    assert len(progress) >= 2, err
    assert re.search(r"inputs=[\d,]+ [\d,]+/s \(now [\d,]+/s\) apdus/s=[\d,]+ violations=0 ", err)
    match = re.search(r"coverage=(\d+)/(\d+)\(", progress[-1])
    assert match is not None and 0 < int(match.group(1)) < int(match.group(2))
    assert re.search(r"features=\d+ lines=\d+/\d+\([\d.]+%\) seconds=", out)


def test_line_coverage_counts_the_card_only() -> None:
    coverage = LineCoverage()
    # Classify by the path inside the repository: the checkout itself may live
    # under a directory called share/ or fuzz/.
    root = Path(vsc.__file__).resolve().parent.parent
    relative = {Path(path).relative_to(root).as_posix() for path in coverage.sources}
    assert "vsc/card.py" in relative
    assert "applets/piv/applet.py" in relative
    assert not any(path.startswith(("vsc/fuzz/", "vsc/share/")) for path in relative)
    assert coverage.covered == 0 < coverage.total
    outcome = coverage.measure(lambda: Harness().run((h("00A4040005A000000308"),)))
    assert outcome.violation is None
    assert 0 < coverage.covered < coverage.total
    assert any(path.endswith("applets/piv/applet.py") for path, _ in coverage.seen)


def test_the_libfuzzer_target_saves_a_violation_and_raises(tmp_path: Path) -> None:
    summary = Summary(engine="atheris")
    target = libfuzzer.test_one_input(
        Harness(factory(BadSwPiv)), crash_dir=tmp_path, summary=summary
    )
    target(encode_input((h("00A4040005A000000308"), h("00FD000000"))))
    assert summary.inputs == 1 and summary.violations == 0
    with pytest.raises(RuntimeError, match="6000"):
        target(encode_input((h("00FD0102"),)))
    (crash,) = tmp_path.glob("violation-law-*.fuzz")
    assert replay(crash, Harness(factory(BadSwPiv)))[0].violation is not None


def test_the_atheris_engine_runs_seeded_from_the_corpus(tmp_path: Path) -> None:
    if not libfuzzer.available():
        unavailable("atheris is not installed (pip install 'vsc[fuzz]')")
    corpus = tmp_path / "corpus"
    argv = [sys.executable, "-m", "vsc.fuzz", "--engine", "atheris", "--iterations", "400"]
    argv += ["--seed", "3", "--crash-dir", str(tmp_path / "crashes")]
    argv += ["--atheris-corpus", str(corpus), "--progress", "0"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fuzz: engine=atheris seed=3 inputs=400 " in result.stdout
    assert "violations=0 (none)" in result.stdout
    # Its working corpus started from our seeds (binary form) and grew.
    seeds = {encode_input(s) for s in load_seeds(DEFAULT_CORPUS)}
    files = {p.read_bytes() for p in corpus.iterdir()}
    assert seeds <= files and len(files) > len(seeds)
    assert re.search(r"instrumented \d+ functions", result.stderr)
