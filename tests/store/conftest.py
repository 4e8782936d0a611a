"""Fixtures for the card store: a store in a temp dir, a test clock, backends, a real swtpm."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vsc.store import WINDOWS_DEFAULTS, BackendSpec, CardStore, ManualClock
from vsc.testing.swtpm import Swtpm, swtpm_skip_reason


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_swtpm() -> None:
    """Skip without swtpm and tpm2-pytss; fail instead under CI, which must run the TPM tests."""
    reason = swtpm_skip_reason()
    if reason is None:
        return
    if running_in_ci():
        pytest.fail(f"TPM test prerequisite missing (CI is set): {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def software_spec(tmp_path: Path) -> BackendSpec:
    """The software backend with scrypt costs of 2^4: its logic without its deliberate slowness."""
    return BackendSpec.software(key_file=tmp_path / "store.key", passphrase_log2_n=4, auth_log2_n=4)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> CardStore:
    return CardStore(tmp_path / "store", clock=clock)


@pytest.fixture
def swtpm() -> Iterator[Swtpm]:
    require_swtpm()
    with Swtpm() as tpm:
        yield tpm


@pytest.fixture(params=["plain", "software", "tpm"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> BackendSpec:
    """Each protection backend in turn (the tpm one on a fresh swtpm)."""
    if request.param == "plain":
        return BackendSpec.plain()
    if request.param == "software":
        return software_spec(tmp_path)
    from vsc.store.tpm import Tpm

    tpm: Swtpm = request.getfixturevalue("swtpm")
    # A fresh swtpm locks out after 3 failures; provision it the way Windows does.
    Tpm(tpm.tcti).set_da_parameters(WINDOWS_DEFAULTS, lockout_auth=b"")
    return BackendSpec.tpm(tpm.tcti)
