"""`make demo` runs `python -m vsc.emulator` in a vpcd reader and real clients use it."""

from __future__ import annotations

import subprocess
import sys


def test_demo_through_pcscd_succeeds() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vsc.demo"], capture_output=True, text=True, timeout=180
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Personal Identity Verification Card" in out  # opensc-tool --name
    assert 'FRIENDLYNAME "Yubico YubiKey CCID"' in out  # the reader configuration shown
    assert "YubiKey 5 NFC (5.4.3) [CCID] Serial: 10000002" in out  # ykman list
    assert "Serial number: 10000001" in out  # ykman --device 10000001 info
    assert "Management key algorithm: TDES" in out  # ykman piv info
    assert "Application version 5.4.3 found." in out  # yubico-piv-tool
    assert "Successfully generated a new private key." in out
    assert "token label        : PIV_II" in out  # pkcs11-tool
    assert "in-process" not in out
