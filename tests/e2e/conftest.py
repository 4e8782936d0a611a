"""Fixtures for end-to-end tests: a private pcscd with vpcd, and the emulator process.

Every test gets its own pcscd (``pcscd`` fixture, ~40 ms to start) in its own
mount namespace; ``start_emulator`` starts card processes against it and
waits until pcscd sees the card. Both are stopped by PID after the test, and
their logs are attached to the report of a failed test.

Missing prerequisites (root, pcscd, the vpcd driver, pyscard, a client tool)
skip these tests on a developer machine but fail them when ``CI`` is set, so
CI cannot pass by skipping them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from applets.piv import PivProfile
from vsc.testing import EmulatorProcess, HarnessError, HarnessTimeout, PcscdEnv, skip_reason
from vsc.testing.emulator_proc import EMULATOR_MODULE
from vsc.testing.plugin import running_in_ci, unavailable

__all__ = ["CARD_TIMEOUT", "StartEmulator", "running_in_ci", "unavailable"]

#: Seconds to wait for pcscd to notice a card coming or going (it polls every ~400 ms).
CARD_TIMEOUT = 10.0

_E2E_DIR = Path(__file__).parent
_LOG_SOURCES = pytest.StashKey[list[PcscdEnv | EmulatorProcess]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "yubikey_only: a test of a Yubico extension in a class with PROFILES: generated for "
        "the class's YubiKey profiles only",
    )


@pytest.hookimpl(trylast=True)  # after the tests' own parametrize marks: ids end in the profile
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A class that names its card profiles (``PROFILES``, e.g. test_piv_tools.py's) gets
    its class-scoped ``piv_card`` fixture parametrized with them; a test marked
    ``yubikey_only`` with the YubiKey ones only. Only tests that run are generated.
    """
    profiles: Sequence[PivProfile] | None = getattr(metafunc.cls, "PROFILES", None)
    if profiles is None or "piv_card" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("yubikey_only") is not None:
        profiles = [profile for profile in profiles if profile.is_yubikey]
    metafunc.parametrize("piv_card", profiles, ids=lambda p: p.name, indirect=True, scope="class")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for source in item.stash.get(_LOG_SOURCES, []):
            name = "pcscd" if isinstance(source, PcscdEnv) else "emulator"
            report.sections.append((f"{name} log ({report.when})", source.log_text()))
    return report


def _remember(request: pytest.FixtureRequest, source: PcscdEnv | EmulatorProcess) -> None:
    request.node.stash.setdefault(_LOG_SOURCES, []).append(source)


@pytest.fixture(scope="session")
def e2e_available() -> None:
    reason = skip_reason()
    if reason is not None:
        unavailable(reason)


@pytest.fixture
def tool(e2e_available: None) -> Callable[[str], str]:
    """``tool(name)``: the path of a client program, or skip (fail under CI)."""

    def find(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            unavailable(f"{name} is not installed")
        return path

    return find


@pytest.fixture
def pcscd(request: pytest.FixtureRequest, e2e_available: None) -> Iterator[PcscdEnv]:
    """A private pcscd, readers ``pcscd.reader(0)`` / ``pcscd.reader(1)``."""
    env = PcscdEnv()
    _remember(request, env)
    with env:
        yield env


class StartEmulator(Protocol):
    def __call__(
        self, *args: str, program: Sequence[str] = ..., wait: bool = ...
    ) -> EmulatorProcess: ...


@pytest.fixture
def start_emulator(request: pytest.FixtureRequest, pcscd: PcscdEnv) -> Iterator[StartEmulator]:
    """``start_emulator(*args)`` runs ``python -m vsc.emulator -P <slot 0 port> ARGS``.

    With ``wait`` (the default) it returns once pcscd reports the card in
    slot 0. ``program`` replaces ``-m vsc.emulator`` (e.g. a stand-in script).
    """
    started: list[EmulatorProcess] = []

    def start(
        *args: str, program: Sequence[str] = EMULATOR_MODULE, wait: bool = True
    ) -> EmulatorProcess:
        emulator = EmulatorProcess(pcscd.vpcd_port(0), *args, program=program)
        _remember(request, emulator)
        started.append(emulator)
        emulator.start()
        if wait:
            try:
                pcscd.wait_for_card(
                    pcscd.reader(0),
                    present=True,
                    timeout=CARD_TIMEOUT,
                    check=emulator.check_running,
                )
            except HarnessTimeout as exc:
                raise HarnessError(f"{exc}\nemulator log:\n{emulator.log_text()}") from None
        return emulator

    yield start
    for emulator in reversed(started):
        emulator.stop()


@pytest.fixture
def emulator(start_emulator: StartEmulator) -> EmulatorProcess:
    """The emulator with a factory-default card in slot 0, already seen by pcscd."""
    return start_emulator("-v")
