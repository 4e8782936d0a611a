"""The pytest plugin (vsc.testing.plugin), run the way a user runs it: in a pytest of its own.

Each test writes test files into an empty directory and runs pytest there
in a subprocess, so the plugin is found through its ``pytest11`` entry
point as in a project that only installed vsc. The examples of
docs/testing.md run exactly as written, with two pytest-xdist workers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from yubikit.core import TRANSPORT
from yubikit.core.smartcard import SmartCardConnection
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, OBJECT_ID, PivSession

from vsc.testing.plugin import CardSpec, VscReader, pcscd_problem, swtpm_problem, unavailable

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "testing.md"
INNER_TIMEOUT = 180.0


@pytest.fixture
def prerequisites() -> None:
    for problem in (pcscd_problem(), swtpm_problem()):
        if problem is not None:
            unavailable(problem)


def run_pytest(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--timeout=120"]
    return subprocess.run(
        [*argv, *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=INNER_TIMEOUT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def results(junit: Path) -> dict[str, str]:
    """Test id -> passed / failed / skipped / error, from a JUnit XML report."""
    outcome = {}
    for case in ET.parse(junit).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcome[f"{case.get('classname')}::{case.get('name')}"] = (
            {"failure": "failed", "error": "error", "skipped": "skipped"}[kinds[0]]
            if kinds
            else "passed"
        )
    return outcome


def documented_examples() -> dict[str, str]:
    """The complete test files of docs/testing.md: code blocks that start ``# test_*.py``."""
    files = {}
    for block in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S):
        match = re.match(r"# (test_\w+\.py)\n", block)
        if match is not None:
            files[match.group(1)] = block
    return files


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` has exited (a zombie counts as gone), waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_the_documented_examples_pass_in_parallel(prerequisites: None, tmp_path: Path) -> None:
    examples = documented_examples()
    assert {"test_yubikit_inproc.py", "test_c_client.py", "test_tpm_card.py"} <= set(examples)
    assert {"test_fuzz_properties.py", "test_card_profiles.py", "test_usb_reader.py"} <= set(
        examples
    )
    for name, text in examples.items():
        (tmp_path / name).write_text(text)
    junit = tmp_path / "junit.xml"

    run = run_pytest(tmp_path, "-n", "2", f"--junitxml={junit}")

    outcome = results(junit)
    assert set(outcome.values()) == {"passed"}, run.stdout[-6000:]
    for name, text in examples.items():
        for function in re.findall(r"^def (test_\w+)", text, re.M):
            assert any(function in test_id for test_id in outcome), (name, function)


_PARALLEL = """
import json, os
from pathlib import Path

import pytest

RECORD = Path(os.environ["VSC_PLUGIN_RECORD"])


@pytest.mark.parametrize("n", range(4))
@pytest.mark.vsc_card(backend="tpm")
def test_reader_tpm_and_store(n, vsc_reader, vsc_tpm, vsc_store):
    result = vsc_reader.run(["opensc-tool", "--reader", vsc_reader.name, "--atr"])
    assert result.returncode == 0, result.stderr
    with RECORD.open("a") as f:
        f.write(json.dumps({
            "worker": os.environ.get("PYTEST_XDIST_WORKER"),
            "port": vsc_reader.pcscd.port,
            "socket": str(vsc_reader.pcscd.socket_path),
            "pcscd": vsc_reader.pcscd.pid,
            "tcti": vsc_tpm.tcti,
            "swtpm": vsc_tpm.pid,
            "store": str(vsc_store.root),
        }) + "\\n")
    assert n != 3, "fails on purpose: the teardown must still stop everything"
"""


def test_parallel_runs_do_not_collide_and_leave_no_process(
    prerequisites: None, tmp_path: Path
) -> None:
    (tmp_path / "test_parallel.py").write_text(_PARALLEL)
    record = tmp_path / "record.jsonl"
    junit = tmp_path / "junit.xml"

    run_pytest(tmp_path, "-n", "2", f"--junitxml={junit}", env={"VSC_PLUGIN_RECORD": str(record)})

    assert sorted(results(junit).values()) == ["failed", "passed", "passed", "passed"]
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(rows) == 4
    assert len({row["worker"] for row in rows}) == 2, rows  # both workers ran some
    for key in ("port", "socket", "pcscd", "tcti", "swtpm", "store"):
        assert len({row[key] for row in rows}) == 4, (key, rows)
    for row in rows:  # including the failed test's
        assert gone(row["pcscd"]) and gone(row["swtpm"]), row


_INTERRUPTED = """
import json, os, time
from pathlib import Path

import pytest


@pytest.mark.vsc_card(backend="tpm")
def test_waits_to_be_interrupted(vsc_reader, vsc_tpm):
    Path(os.environ["VSC_PLUGIN_RECORD"]).write_text(
        json.dumps({"pcscd": vsc_reader.pcscd.pid, "swtpm": vsc_tpm.pid})
    )
    time.sleep(60)
"""


def test_an_interrupted_run_stops_its_processes(prerequisites: None, tmp_path: Path) -> None:
    (tmp_path / "test_interrupted.py").write_text(_INTERRUPTED)
    record = tmp_path / "record.json"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s"]
    inner = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env={**os.environ, "VSC_PLUGIN_RECORD": str(record)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not record.exists():
            assert inner.poll() is None and time.monotonic() < deadline, inner.stdout
            time.sleep(0.05)
        time.sleep(0.2)  # the file is written in one call, but let it land
        pids = json.loads(record.read_text())
        inner.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = inner.communicate(timeout=60)
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()
    assert inner.returncode == 2, output  # pytest's "interrupted"
    assert "KeyboardInterrupt" in output
    assert gone(pids["pcscd"]) and gone(pids["swtpm"]), pids


_MISSING = """
import vsc.testing.plugin as plugin

plugin.pcscd_problem = lambda: "simulated: no pcscd on this machine"
plugin.swtpm_problem = lambda: "simulated: no swtpm on this machine"
"""


@pytest.mark.parametrize("ci", ["", "true"], ids=["developer", "ci"])
def test_a_missing_prerequisite_skips_but_fails_under_ci(tmp_path: Path, ci: str) -> None:
    (tmp_path / "conftest.py").write_text(_MISSING)
    (tmp_path / "test_needs.py").write_text(
        "def test_reader(vsc_reader):\n    pass\n\ndef test_tpm(vsc_tpm):\n    pass\n"
    )

    run = run_pytest(tmp_path, "-rsf", env={"CI": ci})

    if ci:  # failed in the fixture: an error at setup, and the run fails
        assert run.returncode == 1 and "2 errors" in run.stdout, run.stdout
        assert "prerequisite missing (CI is set): simulated: no pcscd" in run.stdout
    else:
        assert run.returncode == 0 and "2 skipped" in run.stdout, run.stdout
        assert "simulated: no swtpm on this machine" in run.stdout


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        ("tpm", CardSpec(backend="tpm")),
        ({"backend": "software", "serial": 7}, CardSpec(backend="software", serial=7)),
        (CardSpec(), CardSpec()),
    ],
)
def test_card_specs_from_parameters(value: object, spec: CardSpec) -> None:
    assert CardSpec.of(value) == spec


@pytest.mark.parametrize("value", ["floppy", {"colour": "red"}, 42])
def test_bad_card_specs_are_usage_errors(value: object) -> None:
    with pytest.raises(pytest.UsageError):
        CardSpec.of(value)


@pytest.mark.vsc_card(serial=12345)
def test_the_marker_chooses_the_card(vsc_card: object) -> None:
    from vsc import Card

    assert isinstance(vsc_card, Card)
    assert vsc_card.transmit(bytes.fromhex("00A4040005A000000308"))[-2:] == b"\x90\x00"
    assert (
        vsc_card.transmit(bytes.fromhex("00F8000000")) == (12345).to_bytes(4, "big") + b"\x90\x00"
    )


def test_an_unknown_profile_is_a_usage_error_naming_the_known_ones() -> None:
    from vsc.testing.plugin import _memory_card, card_profiles

    with pytest.raises(pytest.UsageError, match=r"known profiles \[") as error:
        _memory_card(CardSpec(profile="no-such-card"))
    for name in card_profiles():
        assert repr(name) in str(error.value)


PROFILE_VERSIONS = {"yubikey-5.4": "050403", "yubikey-5.7": "050701", "piv": None}


@pytest.mark.parametrize(
    "vsc_card, profile",
    [
        pytest.param(
            {"backend": backend, "profile": profile, "serial": 4242},
            profile,
            id=f"{backend}-{profile}",
        )
        for backend in ("memory", "plain")
        for profile in PROFILE_VERSIONS
    ],
    indirect=["vsc_card"],
)
def test_the_profile_parameter_chooses_the_card(vsc_card: object, profile: str) -> None:
    """Each profile's card, in memory and stored: its version, or no Yubico instruction at all."""
    from vsc import Card

    assert isinstance(vsc_card, Card)
    assert vsc_card.transmit(bytes.fromhex("00A4040005A000000308"))[-2:] == b"\x90\x00"
    version, serial = PROFILE_VERSIONS[profile], (4242).to_bytes(4, "big")
    if version is None:
        assert vsc_card.transmit(bytes.fromhex("00FD000000")) == b"\x6d\x00"
        assert vsc_card.transmit(bytes.fromhex("00F8000000")) == b"\x6d\x00"
    else:
        assert vsc_card.transmit(bytes.fromhex("00FD000000")) == bytes.fromhex(version + "9000")
        assert vsc_card.transmit(bytes.fromhex("00F8000000")) == serial + b"\x90\x00"


class _Recording(SmartCardConnection):
    """A yubikit connection that keeps the APDUs sent through it."""

    def __init__(self, inner: SmartCardConnection) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    @property
    def transport(self) -> TRANSPORT:
        return self.inner.transport

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(bytes(apdu))
        return self.inner.send_and_receive(apdu)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(
    ("vsc_card", "transport"),
    [
        pytest.param({}, TRANSPORT.NFC, id="default"),
        pytest.param({"transport": "usb"}, TRANSPORT.USB, id="usb"),
    ],
    indirect=["vsc_card"],
)
def test_the_transport_option_gives_yubikit_the_usb_path(
    vsc_reader: VscReader, transport: TRANSPORT
) -> None:
    """yubikit through pcscd, as ykman opens a device: the reader's name and the card's ATR
    make it a YubiKey on USB (one extended APDU for 1 KiB of PUT DATA) or, by default, on
    NFC (short APDUs, chained)."""
    from ykman.pcsc import list_devices

    vsc_reader.use_in_process()
    (device,) = list_devices(vsc_reader.name)  # type: ignore[no-untyped-call]
    assert device.transport == transport
    data = bytes(range(256)) * 4
    with device.open_connection(SmartCardConnection) as connection:
        recording = _Recording(connection)
        assert recording.transport == transport
        piv = PivSession(recording)
        piv.authenticate(DEFAULT_MANAGEMENT_KEY)
        piv.put_object(OBJECT_ID.AUTHENTICATION, data)
        assert piv.get_object(OBJECT_ID.AUTHENTICATION) == data

    put = [apdu for apdu in recording.sent if apdu[1] == 0xDB]
    if transport == TRANSPORT.USB:
        assert len(put) == 1 and put[0][4] == 0 and len(put[0]) > len(data), put
    else:
        assert len(put) > 1 and all(len(apdu) <= 5 + 255 for apdu in put), put
        assert all(apdu[0] & 0x10 for apdu in put[:-1]) and not put[-1][0] & 0x10


def test_an_unknown_transport_is_a_usage_error() -> None:
    with pytest.raises(pytest.UsageError, match="transport 'bluetooth'"):
        CardSpec.of({"transport": "bluetooth"})
