"""Real clients, unchanged, against a card whose keys live in a TPM.

The classes of ``test_piv_tools.py`` (opensc-tool and piv-tool, yubico-piv-tool,
pkcs11-tool, ykman) run again, each on its own stored card on the tpm backend
(``--card tpm --tpm TCTI``, a private swtpm per class): every key they
generate or import is a TPM key, every signature, decryption and ECDH is the
TPM's, and the results are checked as before (openssl, cryptography). On top:
GET METADATA tells each key's location (vsc's tag C0), and OpenSSH uses the
card through OpenSC's PKCS#11 module (``ssh-keygen -D``, and an ssh-agent
signature checked by ``ssh-keygen -Y check-novalidate``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from applets.piv.profile import DEFAULT_PROFILE, YUBIKEY_5_7
from vsc.store import DaParameters
from vsc.testing import PcscdEnv
from vsc.testing.swtpm import Swtpm, swtpm_skip_reason

from . import test_piv_tools as base
from .conftest import CARD_TIMEOUT, StartEmulator, unavailable
from .test_piv_tools import (  # the class fixtures, resolved against card_args below
    PIN,
    PKCS11_KEYS,
    PivCard,
    card,
    piv_card,
    pkcs11_module,
    provisioned,
)

pytestmark = pytest.mark.e2e

__all__ = ["card", "piv_card", "provisioned"]

TPM_LOCATION = b"\x01"


#: The profiles these classes run on with a TPM card (test_piv_tools runs every profile
#: in memory; the key store under them is the same for all).
TPM_PROFILES = (DEFAULT_PROFILE,)


@pytest.fixture(scope="class")
def card_args(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A stored card on a private swtpm (requested before the emulator: it outlives it)."""
    reason = swtpm_skip_reason()
    if reason is not None:
        unavailable(reason)
    from vsc.store.tpm import Tpm

    store = tmp_path_factory.mktemp("tpm-store")
    with Swtpm() as tpm:
        Tpm(tpm.tcti).set_da_parameters(DaParameters(32, 7200, 86400), lockout_auth=b"")
        yield ["--card", "tpm", "--store", str(store), "--tpm", tpm.tcti]


class TestOpenSCOnTpm(base.TestOpenSC):
    PROFILES = TPM_PROFILES


class TestYubicoPivToolOnTpm(base.TestYubicoPivTool):
    PROFILES = TPM_PROFILES


class TestYkmanOnTpm(base.TestYkman):
    PROFILES = TPM_PROFILES


class TestPkcs11ToolOnTpm(base.TestPkcs11Tool):
    PROFILES = TPM_PROFILES
    TOOLS = (*base.TestPkcs11Tool.TOOLS, "ssh-keygen", "ssh-agent", "ssh-add")

    def test_every_key_lives_in_the_tpm(self, card: PivCard, provisioned: dict[str, Path]) -> None:
        for slot, _, _ in PKCS11_KEYS:
            sw, tags = card.metadata(int(slot, 16))
            assert sw == 0x9000 and tags[0xC0] == TPM_LOCATION, slot
        assert card.metadata(0xF9)[1][0xC0] == TPM_LOCATION  # the attestation key too

    def test_ssh_keygen_lists_the_card_keys(
        self, card: PivCard, provisioned: dict[str, Path]
    ) -> None:
        listed = card.run("ssh-keygen", "-D", pkcs11_module()).stdout
        for slot in ("9a", "9c"):
            public = card.run("ssh-keygen", "-i", "-m", "PKCS8", "-f", provisioned[slot]).stdout
            assert public.split()[1] in listed, slot

    def test_ssh_agent_signs_with_the_card(
        self, card: PivCard, provisioned: dict[str, Path]
    ) -> None:
        """ssh-agent loads OpenSC's module (PIN by askpass) and signs with the TPM's 9A key."""
        public = card.path("9a.ssh.pub")
        public.write_text(
            card.run("ssh-keygen", "-i", "-m", "PKCS8", "-f", provisioned["9a"]).stdout
        )
        data, askpass = card.path("ssh-data"), card.path("askpass")
        data.write_bytes(b"signed through ssh-agent and the TPM")
        askpass.write_text(f"#!/bin/sh\necho {PIN}\n")
        askpass.chmod(0o700)
        script = (
            'eval "$(ssh-agent -s -a "$WORK/agent.sock")" >/dev/null\n'
            "trap 'ssh-agent -k >/dev/null' EXIT\n"
            f'ssh-add -s "{pkcs11_module()}" </dev/null\n'
            'ssh-keygen -Y sign -n file -f "$WORK/9a.ssh.pub" "$WORK/ssh-data"\n'
        )
        result = card.pcscd.run(
            ["sh", "-ec", script],
            timeout=base.CLIENT_TIMEOUT,
            extra_env={
                "WORK": str(card.workdir),
                "SSH_ASKPASS": str(askpass),
                "SSH_ASKPASS_REQUIRE": "force",
                "DISPLAY": ":0",
            },
        )
        assert result.returncode == 0, result.stdout + result.stderr
        signature = card.path("ssh-data.sig")
        checked = subprocess.run(
            ["ssh-keygen", "-Y", "check-novalidate", "-n", "file", "-f", str(public),
             "-s", str(signature)],
            input=data.read_bytes(), capture_output=True, timeout=base.CLIENT_TIMEOUT, check=False,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def tpm_args(tmp_path: Path) -> Iterator[list[str]]:
    """A stored card on its own swtpm (requested before the emulator, so it outlives it)."""
    reason = swtpm_skip_reason()
    if reason is not None:
        unavailable(reason)
    with Swtpm() as tpm:
        yield ["--card", "c", "--store", str(tmp_path / "store"), "--tpm", tpm.tcti]


def test_keys_the_tpm_lacks_are_refused_or_software_by_choice(
    tpm_args: list[str], start_emulator: StartEmulator, pcscd: PcscdEnv, tmp_path: Path
) -> None:
    """ykman asks for Ed25519 (a YubiKey 5.7 has it): refused with a log line by default; in
    software, marked, with --software-keys (a choice made when the card is created)."""
    profile = ("--profile", YUBIKEY_5_7.name)
    emulator = start_emulator(*tpm_args, *profile)
    client = PivCard(pcscd, emulator, tmp_path, YUBIKEY_5_7)
    generate = ("keys", "generate", "-m", base.FACTORY_KEY, "-a", "ED25519", "9a", "-")
    out = client.ykman(*generate, returncode=None)
    assert "Error" in out, out
    assert "refused a ED25519 key: the TPM cannot hold it" in emulator.log_text()
    assert client.metadata(0x9A)[0] == 0x6A88  # nothing was stored
    assert emulator.stop() == 0
    pcscd.wait_for_card(pcscd.reader(0), present=False, timeout=CARD_TIMEOUT)

    tpm_args[1] = "d"  # a new card, this time allowing software keys
    emulator = start_emulator(*tpm_args, *profile, "--software-keys")
    client = PivCard(pcscd, emulator, tmp_path, YUBIKEY_5_7)
    client.ykman(*generate)
    sw, tags = client.metadata(0x9A)
    assert sw == 0x9000 and tags[0xC0] == b"\x02"  # software
    client.ykman("keys", "generate", "-m", base.FACTORY_KEY, "-a", "ECCP256", "9c", "-")
    assert client.metadata(0x9C)[1][0xC0] == TPM_LOCATION


def test_a_card_put_back_from_an_older_copy_is_refused(
    tpm_args: list[str], start_emulator: StartEmulator, pcscd: PcscdEnv, tmp_path: Path
) -> None:
    """yubico-piv-tool changes the PIN; the copy from before (whose PIN seal would still open
    with the old PIN on this TPM) is refused: "rolled back", exit status 2 (cannot serve it)."""
    card_dir = Path(tpm_args[3]) / "cards" / tpm_args[1]
    emulator = start_emulator(*tpm_args)
    assert emulator.stop() == 0
    pcscd.wait_for_card(pcscd.reader(0), present=False, timeout=CARD_TIMEOUT)
    old = tmp_path / "old"
    shutil.copytree(card_dir, old)

    emulator = start_emulator(*tpm_args)
    client = PivCard(pcscd, emulator, tmp_path, DEFAULT_PROFILE)
    client.yubico("-a", "change-pin", "-P", PIN, "-N", "24681357")
    assert emulator.stop() == 0
    pcscd.wait_for_card(pcscd.reader(0), present=False, timeout=CARD_TIMEOUT)

    shutil.rmtree(card_dir)
    shutil.copytree(old, card_dir)
    emulator = start_emulator(*tpm_args, wait=False)
    deadline = time.monotonic() + CARD_TIMEOUT
    while emulator.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emulator.stop() == 2, emulator.log_text()
    assert "rolled back" in emulator.log_text()
