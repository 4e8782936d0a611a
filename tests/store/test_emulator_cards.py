"""``python -m vsc.emulator --card``: choosing the backend, finding and creating cards, exit status.

No pcscd here: a card is opened before the emulator connects to vpcd, so the
start-up paths are tested against a port where nothing listens (the emulator
keeps retrying there). Serving a persistent card through pcscd is in
``tests/e2e/test_persistence.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vsc.emulator import CardOpenError, backend_from, main, open_card
from vsc.store import WINDOWS_DEFAULTS, BackendSpec, CardStore, create_key_file
from vsc.testing import EmulatorProcess
from vsc.testing.swtpm import Swtpm

from .conftest import require_swtpm, software_spec

TIMEOUT = 30.0  # bound of every wait and subprocess; never reached when things work
EMULATOR = [sys.executable, "-m", "vsc.emulator"]


def test_flags_choose_the_backend_over_the_environment() -> None:
    env = {"VSC_TPM": "swtpm:path=/x", "VSC_KEY_FILE": "/k", "VSC_PASSPHRASE": "p"}
    assert backend_from(tpm="device:/dev/tpmrm0", environ=env) == BackendSpec.tpm(
        "device:/dev/tpmrm0"
    )
    assert backend_from(key_file="/other", environ=env).key_file == Path("/other")
    assert backend_from(insecure_plain=True, environ=env).kind == "plain"


@pytest.mark.parametrize(
    ("variable", "kind"),
    [("VSC_TPM", "tpm"), ("VSC_KEY_FILE", "software"), ("VSC_PASSPHRASE", "software")],
)
def test_one_environment_variable_chooses_the_backend(variable: str, kind: str) -> None:
    spec = backend_from(environ={variable: "swtpm:path=/s", "VSC_STORE": "/ignored"})
    assert spec.kind == kind
    if variable == "VSC_PASSPHRASE":
        assert spec.passphrase == b"swtpm:path=/s"


def test_no_backend_is_guessed() -> None:
    with pytest.raises(CardOpenError, match="--card needs a protection backend"):
        backend_from(environ={})
    with pytest.raises(CardOpenError, match="VSC_TPM and VSC_KEY_FILE are all set"):
        backend_from(environ={"VSC_TPM": "swtpm:path=/s", "VSC_KEY_FILE": "/k"})


def test_card_by_name_is_created_in_the_store_then_reopened(tmp_path: Path) -> None:
    root = tmp_path / "store"
    card, stored = open_card("alice", BackendSpec.plain(), store=root)
    serial = card.transmit(bytes.fromhex("00F8000000"))
    stored.close()
    assert CardStore(root).names() == ["alice"]
    card, stored = open_card("alice", BackendSpec.plain(), store=root)
    assert card.transmit(bytes.fromhex("00F8000000")) == serial  # the same card
    stored.close()


def test_card_by_path(tmp_path: Path) -> None:
    path = tmp_path / "some" / "dir" / "bob"
    _, stored = open_card(str(path), BackendSpec.plain())
    assert stored.path == path and stored.name == "bob"
    stored.close()
    (tmp_path / "not-a-card").mkdir()
    (tmp_path / "not-a-card" / "file").write_text("mine")
    with pytest.raises(CardOpenError, match="exists but is not a card"):
        open_card(str(tmp_path / "not-a-card"), BackendSpec.plain())


def test_main_exits_2_for_a_card_in_use(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = CardStore(tmp_path / "store")
    with store.create("alice", BackendSpec.plain()):
        argv = ["-P", "1", "--store", str(store.root), "--insecure-plain", "--card", "alice"]
        with caplog.at_level(logging.ERROR, logger="vsc.emulator"):
            assert main(argv) == 2
    assert "is in use" in caplog.text and "one card, one process" in caplog.text


def test_main_exits_2_without_a_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VSC_TPM", "VSC_KEY_FILE", "VSC_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["-P", "1", "--store", str(tmp_path), "--card", "alice"]) == 2
    assert not (tmp_path / "cards" / "alice").exists()


def test_backend_flags_need_a_card(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--insecure-plain"])
    assert e.value.code == 2
    assert "give --card too" in capsys.readouterr().err


# -- as a process ---------------------------------------------------------------------------------


def unused_port() -> int:
    """A TCP port nobody listens on (the emulator retries there until stopped)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_in_use(store: CardStore, name: str, emulator: EmulatorProcess) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not (store.exists(name) and store.info(name).in_use):
        emulator.check_running()
        assert time.monotonic() < deadline, f"card never opened:\n{emulator.log_text()}"
        time.sleep(0.02)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[CardStore, EmulatorProcess, list[str]]]:
    """An emulator process serving card "alice" (software backend) to a port without vpcd."""
    store = CardStore(tmp_path / "store")
    flags = ["--store", str(store.root), "--key-file", str(tmp_path / "store.key")]
    emulator = EmulatorProcess(unused_port(), "-v", "--card", "alice", *flags)
    emulator.start()
    try:
        wait_in_use(store, "alice", emulator)
        yield store, emulator, flags
    finally:
        emulator.stop()


def test_second_process_on_a_card_exits_2_naming_the_holder(
    serving: tuple[CardStore, EmulatorProcess, list[str]],
) -> None:
    _, emulator, flags = serving
    second = subprocess.run(
        [*EMULATOR, "-P", str(unused_port()), "--card", "alice", *flags],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert second.returncode == 2
    assert f"is in use by process {emulator.pid}" in second.stderr
    emulator.check_running()  # the first one serves on


def test_sigterm_closes_the_card(serving: tuple[CardStore, EmulatorProcess, list[str]]) -> None:
    store, emulator, _ = serving
    assert emulator.stop() == 0
    # SQLite folds and removes the log when the last connection closes: the card was
    # closed, not just abandoned to the kernel.
    assert not (store.path_of("alice") / "card.db-wal").exists()
    assert not store.info("alice").in_use


def test_another_key_exits_2(
    tmp_path: Path, serving: tuple[CardStore, EmulatorProcess, list[str]]
) -> None:
    store, emulator, _ = serving
    emulator.stop()
    (tmp_path / "other").mkdir()
    other = tmp_path / "other" / "store.key"
    create_key_file(other)
    result = subprocess.run(
        [*EMULATOR, "-P", "1", "--store", str(store.root), "--card", "alice",
         "--key-file", str(other)],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not the key this card was sealed with" in result.stderr


def test_sigkill_leaves_the_card_usable(
    serving: tuple[CardStore, EmulatorProcess, list[str]], tmp_path: Path
) -> None:
    store, emulator, _ = serving
    os.kill(emulator.pid, signal.SIGKILL)
    assert emulator.stop() == -signal.SIGKILL
    # The kernel released the lock; SQLite's log is still there and is replayed.
    card, stored = open_card("alice", software_spec(tmp_path), store=store.root)
    try:
        stored.integrity_check()
        assert card.transmit(bytes.fromhex("00F8000000"))[-2:] == b"\x90\x00"
    finally:
        stored.close()


def test_a_store_copied_to_another_tpm_exits_2(tmp_path: Path) -> None:
    require_swtpm()
    from vsc.store.tpm import Tpm

    store = tmp_path / "store"
    with Swtpm() as tpm, Swtpm() as other:
        Tpm(tpm.tcti).set_da_parameters(WINDOWS_DEFAULTS, lockout_auth=b"")
        _, stored = open_card("alice", BackendSpec.tpm(tpm.tcti), store=store)
        stored.close()
        shutil.copytree(store, tmp_path / "copy")
        result = subprocess.run(
            [*EMULATOR, "-P", "1", "--store", str(tmp_path / "copy"), "--card", "alice",
             "--tpm", other.tcti],
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert "sealed by a different TPM" in result.stderr
