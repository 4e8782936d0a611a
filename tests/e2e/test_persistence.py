"""A persistent card through the real path: its certificates, keys and counters outlive the process.

``python -m vsc.emulator --card alice --store DIR`` with the software backend
(a key file) and with the tpm backend (a private swtpm) serves a card to a
private pcscd; yubico-piv-tool, pkcs11-tool and opensc-tool use it. The
emulator is then stopped, by SIGTERM or by SIGKILL, and started again on the
same store: the certificate reads back the same, the PIN-protected key signs
with the changed PIN, the key with PIN policy "never" signs without one
(both signatures verified by ``openssl``), and the PIN retry counter still
shows the wrong PIN given just before the stop.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from vsc.store import WINDOWS_DEFAULTS
from vsc.testing import EmulatorProcess, PcscdEnv
from vsc.testing.swtpm import Swtpm, swtpm_skip_reason
from vsc.tlv import parse_dict

from .conftest import CARD_TIMEOUT, StartEmulator, unavailable
from .test_opensc_engine import send_apdus
from .test_piv_tools import CLIENT_TIMEOUT, openssl, pkcs11_module, program

pytestmark = pytest.mark.e2e

PIN, NEW_PIN = "123456", "24681357"
SELECT_PIV = bytes.fromhex("00A4040005A000000308")
TOOLS = ("yubico-piv-tool", "pkcs11-tool", "opensc-tool", "openssl")


@pytest.fixture(params=["software", "tpm"])
def backend_flags(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """The emulator's backend flags; the tpm one on a private swtpm, shut down after the test.

    Requested before ``start_emulator`` so that the emulator stops before the TPM does.
    """
    if request.param == "software":
        yield ["--key-file", str(tmp_path / "store.key")]
        return
    reason = swtpm_skip_reason()
    if reason is not None:
        unavailable(reason)
    from vsc.store.tpm import Tpm

    with Swtpm() as tpm:
        # A fresh swtpm locks out after 3 failures; provision it the way Windows does.
        Tpm(tpm.tcti).set_da_parameters(WINDOWS_DEFAULTS, lockout_auth=b"")
        yield ["--tpm", tpm.tcti]


class Client:
    """The clients of the card in slot 0 of ``pcscd``; files in ``workdir``."""

    def __init__(self, pcscd: PcscdEnv, workdir: Path) -> None:
        self.pcscd = pcscd
        self.workdir = workdir

    def path(self, name: str) -> Path:
        return self.workdir / name

    def run(self, *argv: str | Path, returncode: int = 0) -> str:
        command = [program(str(argv[0])), *map(str, argv[1:])]
        result = self.pcscd.run(command, timeout=CLIENT_TIMEOUT)
        output = result.stdout + result.stderr
        assert result.returncode == returncode, f"{command} exited {result.returncode}:\n{output}"
        return output

    def yubico(self, *args: str | Path, returncode: int = 0) -> str:
        return self.run("yubico-piv-tool", "-r", self.pcscd.reader(0), *args, returncode=returncode)

    def status(self) -> str:
        return self.yubico("-a", "status")

    def pin_retries(self) -> tuple[int, int]:
        """(maximum, remaining) from GET METADATA; VERIFY would not tell once the PIN is
        verified in the card's session, which outlives the client that verified it."""
        _, meta = send_apdus(self.pcscd, SELECT_PIV, bytes.fromhex("00F7008000"))
        assert meta.sw == 0x9000, hex(meta.sw)
        maximum, remaining = parse_dict(meta.data)[0x06]
        return maximum, remaining

    def sign_9a(self, pin: str, public: Path) -> None:
        """ECDSA with the PIN-protected 9A key through PKCS#11, verified by openssl."""
        data, sig = self.path("9a.data"), self.path("9a.sig")
        data.write_bytes(os.urandom(64))
        self.run(
            "pkcs11-tool", "--module", pkcs11_module(), "--login", "--pin", pin, "--sign",
            "--id", "01", "-m", "ECDSA-SHA256", "--signature-format", "openssl",
            "-i", data, "-o", sig,
        )  # fmt: skip
        openssl("dgst", "-sha256", "-verify", public, "-signature", sig, data)

    def sign_9e(self, public: Path) -> None:
        """A raw GENERAL AUTHENTICATE with 9E (PIN policy never): no VERIFY at all."""
        data, sig = self.path("9e.data"), self.path("9e.sig")
        data.write_bytes(os.urandom(64))
        digest = bytes.fromhex(openssl("dgst", "-sha256", "-r", data).stdout.split()[0])
        template = b"\x7c\x24\x82\x00\x81\x20" + digest
        _, signed = send_apdus(self.pcscd, SELECT_PIV, bytes.fromhex("0087119E26") + template)
        assert signed.sw == 0x9000, hex(signed.sw)
        sig.write_bytes(parse_dict(parse_dict(signed.data)[0x7C])[0x82])
        openssl("dgst", "-sha256", "-verify", public, "-signature", sig, data)


def restart(
    how: str, emulator: EmulatorProcess, pcscd: PcscdEnv, start: StartEmulator, args: list[str]
) -> EmulatorProcess:
    """Stop the emulator (SIGTERM: it exits 0; SIGKILL), wait for pcscd to see no card, start."""
    if how == "sigkill":
        os.kill(emulator.pid, signal.SIGKILL)
        assert emulator.stop() == -signal.SIGKILL
    else:
        assert emulator.stop() == 0
    pcscd.wait_for_card(pcscd.reader(0), present=False, timeout=CARD_TIMEOUT)
    return start(*args)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_card_survives_the_emulator(
    backend_flags: list[str],
    start_emulator: StartEmulator,
    pcscd: PcscdEnv,
    tmp_path: Path,
    how: str,
) -> None:
    for name in TOOLS:
        program(name)
    args = ["-vv", "--card", "alice", "--store", str(tmp_path / "store"), *backend_flags]
    emulator = start_emulator(*args)
    client = Client(pcscd, tmp_path)

    # Personalise: a generated, PIN-protected 9A key with a certificate, an imported
    # 9E key (PIN policy never), a new PIN, then one wrong PIN.
    public_9a, cert = client.path("9a.pub"), client.path("9a.crt")
    client.yubico("-a", "generate", "-s", "9a", "-A", "ECCP256", "-o", public_9a)
    ca_key = client.path("ca.key")
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ca_key)
    openssl(
        "x509", "-new", "-force_pubkey", public_9a, "-key", ca_key, "-subj", "/CN=vsc persistence",
        "-days", "2", "-out", cert,
    )  # fmt: skip
    client.yubico("-a", "import-certificate", "-s", "9a", "-i", cert)
    key_9e, public_9e = client.path("9e.key"), client.path("9e.pub")
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key_9e)
    openssl("pkey", "-in", key_9e, "-pubout", "-out", public_9e)
    client.yubico("-a", "import-key", "-s", "9e", "-i", key_9e)
    client.yubico("-a", "change-pin", "-P", PIN, "-N", NEW_PIN)
    out = client.yubico("-a", "verify-pin", "-P", "000000", returncode=1)
    assert "2 tries left" in out
    serial = [line for line in client.status().splitlines() if line.startswith("Serial")]

    emulator = restart(how, emulator, pcscd, start_emulator, args)

    status = client.status()
    assert [line for line in status.splitlines() if line.startswith("Serial")] == serial
    assert "PIN tries left:\t2" in status  # the wrong PIN before the stop still counts
    read = client.path("read.crt")
    client.yubico("-a", "read-certificate", "-s", "9a", "-o", read)
    assert read.read_text() == cert.read_text()
    client.sign_9e(public_9e)
    assert "1 tries left" in client.yubico("-a", "verify-pin", "-P", PIN, returncode=1)
    client.sign_9a(NEW_PIN, public_9a)  # the changed PIN, and the key it protects
    assert client.pin_retries() == (3, 3)  # restored by the right PIN
    assert emulator.stop() == 0
