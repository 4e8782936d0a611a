"""The in-process demo that `make demo` falls back to without pcscd."""

from __future__ import annotations

import pytest

from vsc import demo


def test_in_process_demo_signs_and_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.in_process()
    out = capsys.readouterr().out
    assert "PIV version 5.4.3" in out
    assert "verified the signature" in out


def test_main_falls_back_and_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "skip_reason", lambda: "pcscd is not installed")
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "can't be used here (pcscd is not installed)" in out
    assert "Demo finished." in out
