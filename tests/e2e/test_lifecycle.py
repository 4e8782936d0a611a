"""The card lifecycle through the real path: ``vsc`` commands, the emulator, pcscd, real clients.

A private swtpm protects a store; ``vsc`` (a subprocess, as a user runs it)
creates and personalises the cards; ``python -m vsc.emulator --card`` serves
them to a private pcscd; yubico-piv-tool, opensc-tool, pkcs11-tool and a
pyscard "remote tool" use them. Checked:

* a locked card refuses VERIFY with 6283 (yubikit: an ApduError, not "invalid
  PIN, 0 tries"; yubico-piv-tool and pkcs11-tool: neither "blocked" nor "wrong
  PIN"), spending no try; the helpdesk's offline response unlocks it; a remote
  tool locks and unlocks it through APDUs (INS F1 after GA 9B);
* no client command gives a managed card a PIN or PUK anyone knows: ykman's
  set-retries keeps the user's PIN and the disabled PUK, a RESET leaves both
  blocked, the helpdesk's reprovision brings back a new PIN only;
* a blocked PIN reset with ``vsc unblock`` + ``vsc respond``, then with the
  card's own management-key challenge/response (GA 9B + RESET RETRY COUNTER
  P1 = 02): each time pkcs11-tool signs again and openssl verifies;
* a PIN the card's policy refuses through CHANGE REFERENCE DATA: the client
  fails, the emulator's log names the rule;
* the audit log has the card-side events and no secret.

The emulator is stopped by its PID before each ``vsc`` command on its card
(one card, one process) and before the TPM fixture shuts the swtpm down.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from vsc.store import WINDOWS_DEFAULTS
from vsc.testing import EmulatorProcess, PcscdEnv
from vsc.testing.swtpm import Swtpm, swtpm_skip_reason
from vsc.tlv import encode_tlv, parse_tlv

from ..lifecycle.conftest import NEW_PIN, PIN, Vsc
from .conftest import CARD_TIMEOUT, StartEmulator, unavailable
from .test_opensc_engine import _bounded, send_apdus
from .test_piv_tools import CLIENT_TIMEOUT, openssl, pkcs11_module, program

pytestmark = pytest.mark.e2e

SELECT_PIV = bytes.fromhex("00A4040005A000000308")
CHALLENGE_RE = re.compile(r"^  ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})$", re.M)
RESPONSE_RE = re.compile(r"^Response: ([0-9A-Z]{5}-[0-9A-Z]{5})$", re.M)
TOOLS = ("yubico-piv-tool", "opensc-tool", "pkcs11-tool", "openssl")


@pytest.fixture
def tpm() -> Iterator[Swtpm]:
    """A private swtpm; requested before ``start_emulator`` so it stops after the emulator."""
    reason = swtpm_skip_reason()
    if reason is not None:
        unavailable(reason)
    from vsc.store.tpm import Tpm

    with Swtpm() as swtpm:
        Tpm(swtpm.tcti).set_da_parameters(WINDOWS_DEFAULTS, lockout_auth=b"")
        yield swtpm


@pytest.fixture
def vsc(tmp_path: Path, tpm: Swtpm) -> Vsc:
    for name in TOOLS:
        program(name)
    return Vsc(tmp_path / "store", ["--tpm", tpm.tcti])


class Serving:
    """Starts and stops the emulator serving one card of ``vsc``'s store."""

    def __init__(self, vsc: Vsc, pcscd: PcscdEnv, start: StartEmulator, name: str) -> None:
        self.args = ["-v", "--card", name, "--store", str(vsc.store), *vsc.backend]
        self.pcscd = pcscd
        self.start_emulator = start
        self.process: EmulatorProcess | None = None
        self.logs: list[str] = []

    def start(self) -> None:
        self.process = self.start_emulator(*self.args)

    def stop(self) -> None:
        assert self.process is not None
        assert self.process.stop() == 0
        self.logs.append(self.process.log_text())
        self.process = None
        self.pcscd.wait_for_card(self.pcscd.reader(0), present=False, timeout=CARD_TIMEOUT)

    def log_text(self) -> str:
        current = self.process.log_text() if self.process is not None else ""
        return "".join(self.logs) + current


def yubico(pcscd: PcscdEnv, *args: str, returncode: int = 0) -> str:
    command = [program("yubico-piv-tool"), "-r", pcscd.reader(0), *args]
    result = pcscd.run(command, timeout=CLIENT_TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == returncode, f"{command} exited {result.returncode}:\n{output}"
    return output


def helpdesk(vsc: Vsc, admin_key: str, shown: str) -> str:
    """``vsc respond`` on the challenge ``shown`` (no store, no card)."""
    match = CHALLENGE_RE.search(shown)
    assert match, shown
    desk = Vsc(Path("/nonexistent"), [])
    out = desk.run("respond", "--admin-key", admin_key, match.group(1), backend=False).stdout
    response = RESPONSE_RE.search(out)
    assert response, out
    return response.group(1)


def sign_with_pkcs11(pcscd: PcscdEnv, workdir: Path, pin: str) -> None:
    """ECDSA with the PIN-protected 9A key through PKCS#11; openssl verifies it with the
    public key of the certificate yubico-piv-tool reads from the card."""
    cert, public = workdir / "9a.crt", workdir / "9a.pub"
    yubico(pcscd, "-a", "read-certificate", "-s", "9a", "-o", str(cert))
    public.write_text(openssl("x509", "-in", cert, "-pubkey", "-noout").stdout)
    data, sig = workdir / "data", workdir / "sig"
    data.write_bytes(os.urandom(64))
    command = [
        program("pkcs11-tool"), "--module", pkcs11_module(), "--login", "--pin", pin,
        "--sign", "--id", "01", "-m", "ECDSA-SHA256", "--signature-format", "openssl",
        "-i", str(data), "-o", str(sig),
    ]  # fmt: skip
    result = pcscd.run(command, timeout=CLIENT_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    openssl("dgst", "-sha256", "-verify", public, "-signature", sig, data)


def yubikit_verify(pcscd: PcscdEnv, pin: str) -> tuple[int, int]:
    """yubikit's VERIFY through pcscd: (the status word it got, the PIN tries it reads)."""
    from smartcard.pcsc.PCSCReader import PCSCReader
    from ykman.pcsc import ScardSmartCardConnection
    from yubikit.core import InvalidPinError
    from yubikit.core.smartcard import ApduError
    from yubikit.piv import PivSession

    def session() -> tuple[int, int]:
        pcscd.use_in_process()
        reader = PCSCReader(pcscd.reader(0)).createConnection()
        connection = ScardSmartCardConnection(reader)  # type: ignore[no-untyped-call]
        try:
            piv = PivSession(connection)
            try:
                piv.verify_pin(pin)
                sw = 0x9000
            except InvalidPinError as e:  # what yubikit says for 63Cx and 6983
                sw = 0x6983 if e.attempts_remaining == 0 else 0x63C0 | e.attempts_remaining
            except ApduError as e:
                sw = e.sw
            return sw, piv.get_pin_metadata().attempts_remaining
        finally:
            connection.close()  # type: ignore[no-untyped-call]

    return _bounded(session, CLIENT_TIMEOUT)


class RemoteTool:
    """What a remote administration tool does through PC/SC: GA 9B with the admin key,
    then a lifecycle command. pyscard, every call bounded."""

    def __init__(self, pcscd: PcscdEnv, admin_key: str) -> None:
        self.pcscd = pcscd
        self.key = bytes.fromhex(admin_key)

    def run(self, *commands: bytes) -> list[int]:
        """SELECT, authenticate, then ``commands``; the status word of each command."""

        def session() -> list[int]:
            from smartcard.System import readers

            self.pcscd.use_in_process()
            (reader,) = [r for r in readers() if str(r) == self.pcscd.reader(0)]
            connection: Any = reader.createConnection()
            connection.connect()
            try:
                assert self._send(connection, SELECT_PIV)[1] == 0x9000
                out, sw = self._send(connection, bytes.fromhex("0087039B047C028100"))
                assert sw == 0x9000, hex(sw)
                challenge = parse_tlv(parse_tlv(out, 0x7C).value, 0x81).value
                encryptor = Cipher(TripleDES(self.key), modes.ECB()).encryptor()
                answer = encode_tlv(0x7C, encode_tlv(0x82, encryptor.update(challenge)))
                auth = bytes((0x00, 0x87, 0x03, 0x9B, len(answer))) + answer
                assert self._send(connection, auth)[1] == 0x9000
                return [self._send(connection, command)[1] for command in commands]
            finally:
                connection.disconnect()

        return _bounded(session, CLIENT_TIMEOUT)

    @staticmethod
    def _send(connection: Any, apdu: bytes) -> tuple[bytes, int]:
        data, sw1, sw2 = connection.transmit(list(apdu))
        return bytes(data), sw1 << 8 | sw2


def test_a_locked_card_refuses_verify_until_the_helpdesk_unlocks_it(
    vsc: Vsc, pcscd: PcscdEnv, start_emulator: StartEmulator
) -> None:
    created = vsc.run("create", "backup", "--pin", PIN, "--locked", "--json").json()
    admin_key = created["admin_key"]
    serving = Serving(vsc, pcscd, start_emulator, "backup")
    serving.start()
    # Locked is not blocked: 6283 ("selected file deactivated"), not 6983, and no try spent.
    assert yubikit_verify(pcscd, PIN) == (0x6283, 3)
    out = yubico(pcscd, "-a", "verify-pin", "-P", PIN, returncode=1)
    assert "blocked" not in out.lower() and "tries left" not in out.lower()
    login = pcscd.run(
        [program("pkcs11-tool"), "--module", pkcs11_module(), "--login", "--pin", PIN, "-O"],
        timeout=CLIENT_TIMEOUT,
    )
    assert login.returncode != 0
    assert "CKR_PIN_LOCKED" not in login.stderr and "CKR_PIN_INCORRECT" not in login.stderr
    _, verify = send_apdus(pcscd, SELECT_PIV, bytes.fromhex("0020008008") + PIN.encode())
    assert verify.sw == 0x6283
    serving.stop()
    assert vsc.run("info", "backup", "--json").json()["pin_tries"] == [3, 3]

    shown = vsc.run("unlock", "backup", "--for", "8h").stdout
    vsc.run("unlock", "backup", "--response", helpdesk(vsc, admin_key, shown))
    serving.start()
    assert "Successfully verified PIN" in yubico(pcscd, "-a", "verify-pin", "-P", PIN)

    # Anyone may lock through the card; only the admin key unlocks, for what it says.
    _, lock, verify = send_apdus(
        pcscd, SELECT_PIV, bytes.fromhex("00F1010000"), bytes.fromhex("0020008008") + PIN.encode()
    )
    assert (lock.sw, verify.sw) == (0x9000, 0x6283)
    remote = RemoteTool(pcscd, admin_key)
    # An unlock lasts 8 hours to a week, on the card as in the CLI: 1 h is refused.
    assert remote.run(bytes.fromhex("00F102000400000E10"), bytes.fromhex("00F102000400007080")) == [
        0x6A80,
        0x9000,
    ]
    assert "outside the range" in serving.log_text()
    _, status = send_apdus(pcscd, SELECT_PIV, bytes.fromhex("00F1000000"))
    assert status.data[0] == 0 and 28790 <= int.from_bytes(status.data[1:5], "big") <= 28800
    assert "Successfully verified PIN" in yubico(pcscd, "-a", "verify-pin", "-P", PIN)
    serving.stop()

    events = [(e["event"], e["via"]) for e in vsc.audit.events("backup")]
    assert ("lock", "emulator") in events and ("unlock", "emulator") in events
    assert ("unlock", "cli") in events


def test_an_unblocked_card_signs_again(
    vsc: Vsc, pcscd: PcscdEnv, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    created = vsc.run("create", "alice", "--pin", PIN, "--generate", "--json").json()
    admin_key = created["admin_key"]
    serving = Serving(vsc, pcscd, start_emulator, "alice")
    serving.start()
    sign_with_pkcs11(pcscd, tmp_path, PIN)
    for _ in range(3):
        yubico(pcscd, "-a", "verify-pin", "-P", "00000000", returncode=1)
    assert "blocked" in yubico(pcscd, "-a", "verify-pin", "-P", PIN, returncode=1).lower()
    serving.stop()

    # Offline: the user reads the challenge out, the helpdesk reads the response back.
    shown = vsc.run("unblock", "alice").stdout
    response = helpdesk(vsc, admin_key, shown)
    vsc.run("unblock", "alice", "--response", response, "--pin", NEW_PIN)
    serving.start()
    sign_with_pkcs11(pcscd, tmp_path, NEW_PIN)

    # Through the card: a remote tool authenticates with the admin key, resets the PIN.
    for _ in range(3):
        yubico(pcscd, "-a", "verify-pin", "-P", "00000000", returncode=1)
    third_pin = "97531864"
    reset = bytes.fromhex("002C028008") + third_pin.encode()
    refused = bytes.fromhex("002C028008") + b"1234\xff\xff\xff\xff"
    assert RemoteTool(pcscd, admin_key).run(refused, reset) == [0x6A80, 0x9000]
    sign_with_pkcs11(pcscd, tmp_path, third_pin)
    serving.stop()

    events = [(e["event"], e["via"]) for e in vsc.audit.events("alice")]
    assert ("unblock", "cli") in events and ("unblock", "emulator") in events
    text = vsc.audit_text()
    for secret in (PIN, NEW_PIN, third_pin, admin_key, admin_key.upper(), response):
        assert secret not in text


def test_the_card_refuses_a_pin_its_policy_refuses(
    vsc: Vsc, pcscd: PcscdEnv, start_emulator: StartEmulator
) -> None:
    vsc.run("create", "carol", "--profile", "piv", "--pin", "24681357")
    serving = Serving(vsc, pcscd, start_emulator, "carol")
    serving.start()
    yubico(pcscd, "-a", "change-pin", "-P", "24681357", "-N", "abcdefgh", returncode=1)
    assert "Successfully verified PIN" in yubico(pcscd, "-a", "verify-pin", "-P", "24681357")
    yubico(pcscd, "-a", "change-pin", "-P", "24681357", "-N", "11223344")
    assert "Successfully verified PIN" in yubico(pcscd, "-a", "verify-pin", "-P", "11223344")
    serving.stop()
    log = serving.log_text()
    assert "refused by the PIN policy" in log and "rule lowercase" in log
    assert "abcdefgh" not in log
    (refused,) = [e for e in vsc.audit.events("carol") if e["event"] == "pin-refused"]
    assert refused["rule"] == "lowercase" and refused["via"] == "emulator"


def test_no_client_command_gives_a_managed_card_a_known_pin_or_puk(
    vsc: Vsc, pcscd: PcscdEnv, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """YubiKey's SET PIN RETRIES and RESET put back PIN 123456 and PUK 12345678; on a managed
    card that would let anyone with the card reset the PIN without the helpdesk."""
    admin_key = vsc.run("create", "alice", "--pin", PIN, "--json").json()["admin_key"]
    serving = Serving(vsc, pcscd, start_emulator, "alice")
    serving.start()
    ykman = [program("ykman"), "--reader", pcscd.reader(0), "piv"]

    def run_ykman(*args: str) -> int:
        return pcscd.run([*ykman, *args], timeout=CLIENT_TIMEOUT).returncode

    assert run_ykman("access", "set-retries", "5", "4", "-m", admin_key, "-P", PIN, "-f") == 0
    assert "Successfully verified PIN" in yubico(pcscd, "-a", "verify-pin", "-P", PIN)
    assert run_ykman("access", "unblock-pin", "-p", "12345678", "-n", "87654321") != 0
    serving.stop()
    info = vsc.run("info", "alice", "--json").json()
    assert info["pin_tries"] == [5, 5] and info["puk_tries"] == [4, 0]
    assert info["puk_state"] == "disabled" and info["pin_state"] == "set"
    assert "PUK:           disabled" in vsc.run("info", "alice").stdout

    # Anyone with the card can block the PIN (the PUK is blocked already) and RESET it.
    serving.start()
    for _ in range(5):
        yubico(pcscd, "-a", "verify-pin", "-P", "00000000", returncode=1)
    assert run_ykman("reset", "-f") == 0
    yubico(pcscd, "-a", "verify-pin", "-P", "123456", returncode=1)
    assert run_ykman("access", "unblock-pin", "-p", "12345678", "-n", "87654321") != 0
    serving.stop()
    assert vsc.run("info", "alice", "--json").json()["pin_state"] == "blocked"

    # The helpdesk re-issues it: a new PIN and keys; the PUK stays disabled.
    vsc.run("reprovision", "alice", "--pin-prompt", "--generate", input=f"{NEW_PIN}\n" * 2,
            env={"VSC_ADMIN_KEY": admin_key})  # fmt: skip
    info = vsc.run("info", "alice", "--json").json()
    assert info["puk_state"] == "disabled" and info["pin_state"] == "set"
    serving.start()
    assert run_ykman("access", "unblock-pin", "-p", "12345678", "-n", "87654321") != 0
    sign_with_pkcs11(pcscd, tmp_path, NEW_PIN)
    serving.stop()
    events = [(e["event"], e["via"]) for e in vsc.audit.events("alice")]
    assert ("retries", "emulator") in events and ("reset", "emulator") in events
