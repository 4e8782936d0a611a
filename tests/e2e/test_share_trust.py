"""Share security regressions (issue 12), through real processes, real TLS and real pcscd.

Each test here failed on the code before its fix:

* the share homes: directories 0700, files 0600, ``events.log`` never
  written through a symbolic link, a home another user owns or can write
  refused;
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vsc.testing import PcscdEnv

from .sharebed import Process, ShareBed, share_bed

pytestmark = pytest.mark.e2e

NOBODY = 65534


@pytest.fixture
def bed(e2e_available: None, tool: Callable[[str], str]) -> Iterator[ShareBed]:
    yield from share_bed(tool)


def share(
    *args: str, env: dict[str, str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vsc.cli", "share", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- the share homes -----------------------------------------------------------------------------


def test_share_homes_hold_private_files_only(bed: ShareBed) -> None:
    endpoint = bed.attach()
    bed.remote_card(process=endpoint)
    bed.wait_event("endpoint", lambda e: e["event"] == "attached")
    for home in (bed.service_home, bed.endpoint_home):
        assert mode(home) == 0o700, home
        files = sorted(home.iterdir())
        assert {"events.log", "identity.key", "identity.crt", "peers.json"} <= {
            f.name for f in files
        }
        for path in files:
            assert stat.S_ISREG(path.lstat().st_mode), path
            assert mode(path) == 0o600, f"{path}: {oct(mode(path))}"


def test_events_log_is_never_written_through_a_symlink(pcscd: PcscdEnv, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (home / "events.log").symlink_to(victim)

    argv = ["share", "serve", "--home", str(home), "--listen", "127.0.0.1:0"]
    service = Process([sys.executable, "-m", "vsc.cli", *argv], tmp_path / "serve.log", pcscd.env)
    try:
        status = service.wait(15.0)
    finally:
        service.stop()
    assert status == 1, service.text()
    assert "events.log" in service.text() and "symbolic link" in service.text()
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("problem", ["writable by others", "owned by another user"])
def test_a_share_home_others_control_is_refused(
    pcscd: PcscdEnv, tmp_path: Path, problem: str
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    assert share("peers", "--home", str(home), env=pcscd.env).returncode == 0  # made here
    if problem == "writable by others":
        home.chmod(0o777)
    else:
        os.chown(home, NOBODY, NOBODY)
    for verb in (["peers"], ["pair"], ["list"], ["serve", "--listen", "127.0.0.1:0"]):
        result = share(*verb, "--home", str(home), env=pcscd.env)
        assert result.returncode == 1, (verb, result.stdout, result.stderr)
        assert str(home) in result.stderr and problem in result.stderr, result.stderr
