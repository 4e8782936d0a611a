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
    assert "Application version 5.7.1 found." in out  # yubico-piv-tool
    assert "Successfully generated a new private key." in out
    assert "token label        : PIV_II" in out  # pkcs11-tool
    assert "in-process" not in out
