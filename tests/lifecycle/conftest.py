"""Fixtures for the lifecycle tests: a store on a test clock, a manager, the CLI as a user runs it.

The CLI runs as a subprocess (``python -m vsc.cli``) with a bounded timeout;
the swtpm fixtures come from the store's tests and shut their TPM down
cleanly (TPM2_Shutdown, then the process by its PID).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vsc.lifecycle import AuditLog, CardManager
from vsc.store import WINDOWS_DEFAULTS, BackendSpec, CardStore, ManualClock
from vsc.testing.swtpm import Swtpm

from ..store.conftest import require_swtpm, software_spec

#: Bound of every CLI run; never reached when things work.
CLI_TIMEOUT = 60.0
PIN = "24681357"
NEW_PIN = "13572468"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> CardStore:
    return CardStore(tmp_path / "store", clock=clock)


@pytest.fixture
def manager(store: CardStore) -> CardManager:
    """A manager on the plain backend (the lifecycle logic; backends are tested apart)."""
    return CardManager(store, BackendSpec.plain())


@pytest.fixture
def swtpm() -> Iterator[Swtpm]:
    """A fresh swtpm provisioned the way Windows does (32 tries, 2 h, 24 h)."""
    require_swtpm()
    from vsc.store.tpm import Tpm

    with Swtpm() as tpm:
        Tpm(tpm.tcti).set_da_parameters(WINDOWS_DEFAULTS, lockout_auth=b"")
        yield tpm


@pytest.fixture(params=["plain", "software", "tpm"])
def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> BackendSpec:
    if request.param == "plain":
        return BackendSpec.plain()
    if request.param == "software":
        return software_spec(tmp_path)
    tpm: Swtpm = request.getfixturevalue("swtpm")
    return BackendSpec.tpm(tpm.tcti)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


class Vsc:
    """``python -m vsc.cli`` with a store (``VSC_STORE``) and backend flags of its own."""

    def __init__(self, store: Path, backend: list[str], env: Mapping[str, str] | None = None):
        self.store = store
        self.backend = backend
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VSC_")},
            "VSC_STORE": str(store),
            # The card register (counts per TPM across stores) of this test, not the machine's.
            "VSC_REGISTER": str(store.parent / "register"),
            **(env or {}),
        }

    def run(
        self,
        *args: str,
        backend: bool = True,
        input: str | None = None,
        status: int | None = 0,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        argv = [sys.executable, "-m", "vsc.cli", *args, *(self.backend if backend else [])]
        stdin: dict[str, Any] = (
            {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        )
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=CLI_TIMEOUT,
            check=False,
            start_new_session=True,  # no controlling terminal: prompts read stdin
            **stdin,
        )
        result = Result(done.returncode, done.stdout, done.stderr)
        if status is not None:
            assert result.returncode == status, (
                f"{argv} exited {result.returncode}:\n{result.output}"
            )
        return result

    @property
    def audit(self) -> AuditLog:
        return AuditLog(self.store)

    def audit_text(self) -> str:
        return (self.store / "audit.log").read_text()
