"""PCR binding: a card sealed to the boot state, refused after it changes, re-bound with the
PIN and the admin key, on a real swtpm (PCR 7 extended as a boot loader update would)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import require_swtpm

require_swtpm()  # before importing the tpm backend, which needs tpm2-pytss

from vsc.cliutil import EXIT_FAILURE, EXIT_REFUSED  # noqa: E402
from vsc.store import (  # noqa: E402
    AuthFailed,
    BackendError,
    BackendSpec,
    CardSettings,
    CardStore,
    PcrMismatch,
    Recovery,
    bound,
)
from vsc.store.tpm import Tpm  # noqa: E402
from vsc.testing.swtpm import Swtpm  # noqa: E402

from ..lifecycle.conftest import Vsc  # noqa: E402

PIN = b"24681357"


def extend(swtpm: Swtpm, pcr: int, data: bytes = b"\xab" * 32) -> None:
    """What a measured boot does when a component changes (tpm2-tools, as an OS would)."""
    subprocess.run(
        ["tpm2_pcrextend", f"{pcr}:sha256={data.hex()}", "-T", swtpm.tcti],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


def test_sealed_to_the_boot_state_until_it_changes_then_rebound_with_the_pin(
    store: CardStore, swtpm: Swtpm
) -> None:
    spec = BackendSpec.tpm(swtpm.tcti)
    with store.create("alice", spec, settings=CardSettings(pcrs=(7,))) as card:
        card.create_binding("piv", {"pin": PIN})
        card.put("key/9a", b"key", protection=bound("piv"))
        card.put("admin", b"management key")
    extend(swtpm, 0)  # a PCR the card is not bound to
    with store.open("alice", spec) as card:
        assert card.get("admin") == b"management key"
        assert card.boot_state_summary.startswith("sealed to PCR 7")

    extend(swtpm, 7)
    with pytest.raises(PcrMismatch, match="vsc rebind-pcr alice") as refused:
        store.open("alice", spec)
    assert "PCR 7" in str(refused.value)
    failures = Tpm(swtpm.tcti).da_status().failed_tries
    with pytest.raises(AuthFailed, match="wrong pin"):
        store.open("alice", spec, recover=Recovery("piv", "pin", b"99999999"))
    assert Tpm(swtpm.tcti).da_status().failed_tries == failures + 1  # counted by the TPM

    with store.open("alice", spec, recover=Recovery("piv", "pin", PIN)) as card:
        assert card.get("admin") == b"management key"
        card.reseal_to_boot_state()
    with store.open("alice", spec) as card:  # the new boot state is the card's now
        card.unlock("piv", "pin", PIN)
        assert card.get("key/9a") == b"key"
    extend(swtpm, 7)
    with pytest.raises(PcrMismatch):
        store.open("alice", spec)


def test_binding_to_pcrs_needs_a_tpm(store: CardStore) -> None:
    with pytest.raises(BackendError, match="needs the tpm backend"):
        store.create("alice", BackendSpec.plain(), settings=CardSettings(pcrs=(7,)))
    assert not store.exists("alice")


def test_vsc_create_pcr_info_and_rebind_pcr(tmp_path: Path, swtpm: Swtpm) -> None:
    """The whole story through the CLI: create --pcr 7, a changed boot state refused with
    the way out named, a wrong admin key refused, rebind-pcr with the PIN and admin key."""
    vsc = Vsc(tmp_path / "store", ["--tpm", swtpm.tcti])
    created = vsc.run("create", "alice", "--pin", PIN.decode(), "--pcr", "7", "--json").json()
    admin_key = created["admin_key"]
    shown = vsc.run("info", "alice").stdout
    assert "boot state:    sealed to PCR 7 (SHA-256 bank)" in shown

    extend(swtpm, 7)
    refused = vsc.run("info", "alice", status=EXIT_FAILURE)
    assert "the boot state changed" in refused.stderr and "vsc rebind-pcr alice" in refused.stderr

    wrong = "00" * 24
    vsc.run(
        "rebind-pcr", "alice", "--pin", PIN.decode(), env={"VSC_ADMIN_KEY": wrong},
        status=EXIT_REFUSED,
    )  # fmt: skip
    vsc.run("info", "alice", status=EXIT_FAILURE)  # still bound to the old state
    done = vsc.run("rebind-pcr", "alice", "--pin", PIN.decode(), env={"VSC_ADMIN_KEY": admin_key})
    assert "sealed to PCR 7 as they are now" in done.stdout
    assert "rebind-pcr" in vsc.audit_text()
    assert "boot state:    sealed to PCR 7" in vsc.run("info", "alice").stdout
