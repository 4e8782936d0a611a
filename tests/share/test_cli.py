"""``vsc share ...`` in-process: the verbs against a service with in-memory readers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from vsc.cli import main
from vsc.share import cli as share_cli
from vsc.share.client import parse_address
from vsc.share.home import ShareHome
from vsc.share.service import DEFAULT_PORT, ShareService
from vsc.share.trust import PeerRole

from .fakes import FakeVpcd, MemoryReaders, echo_card


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ShareService]:
    readers = MemoryReaders("Virtual PCD 00 00", "Virtual PCD 00 01")
    readers.insert("Virtual PCD 00 00", echo_card())
    home = ShareHome(tmp_path / "service")
    service = ShareService(home, host="127.0.0.1", port=0, backend=readers, name="laptop")
    service.start()
    home.record_service(*service.address)
    try:
        yield service
    finally:
        service.stop()
        assert service.join(10.0)


@pytest.fixture(autouse=True)
def quiet_events(monkeypatch: pytest.MonkeyPatch) -> None:
    # serve/attach route event lines to stderr; keep the logging setup of the test run intact.
    monkeypatch.setattr(share_cli, "_show_events", lambda: None)


def share(*args: str) -> int:
    return main(["share", *args])


def spec(service: ShareService) -> str:
    return f"{service.address[0]}:{service.address[1]}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("laptop", ("laptop", DEFAULT_PORT)),
        ("laptop:4000", ("laptop", 4000)),
        ("198.18.0.1:1", ("198.18.0.1", 1)),
        ("[::1]:4000", ("::1", 4000)),
        ("::1", ("::1", DEFAULT_PORT)),
    ],
)
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", ":4000", "host:x", "host:0", "host:65536"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)
    if text.endswith(":0"):
        assert parse_address(text, listen=True) == ("host", 0)


def test_without_a_verb_it_shows_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert share() == 2
    assert "attach" in capsys.readouterr().err


def test_pair_then_list_and_detach(
    tmp_path: Path, service: ShareService, capsys: pytest.CaptureFixture[str]
) -> None:
    service_home, endpoint_home = str(service.home.path), str(tmp_path / "endpoint")
    assert share("pair", "--home", service_home) == 0
    offer = capsys.readouterr().out
    code = re.search(r"Pairing code: (\S+)", offer)
    assert code is not None and "vsc share pair --with" in offer

    assert share("pair", "--home", endpoint_home, "--with", spec(service), code.group(1)) == 0
    assert "Paired with laptop" in capsys.readouterr().out
    assert share("peers", "--home", endpoint_home) == 0
    assert "laptop at 127.0.0.1" in capsys.readouterr().out

    assert share("list", "--home", endpoint_home, "--from", spec(service), "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing == {
        "service": "laptop",
        "readers": [
            {"name": "Reader 1", "pcsc_name": "Virtual PCD 00 00", "state": "card-present",
             "session": ""},
            {"name": "Reader 2", "pcsc_name": "Virtual PCD 00 01", "state": "no-card",
             "session": ""},
        ],
    }  # fmt: skip
    assert share("list", "--home", service_home) == 0  # local: the service's own identity
    out = capsys.readouterr().out
    assert re.search(r"Reader 1\s+card present\s+Virtual PCD 00 00", out), out

    assert share("detach", "--home", endpoint_home, "--from", spec(service)) == 1
    assert "nothing to detach" in capsys.readouterr().err


def test_attach_refusals_exit_3(
    tmp_path: Path, service: ShareService, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint_home = ShareHome(tmp_path / "endpoint")
    service.home.trust.pin(endpoint_home.identity().certificate, "endpoint", PeerRole.ENDPOINT)
    endpoint_home.trust.pin(service.home.identity().certificate, "laptop", PeerRole.SERVICE)
    vpcd = FakeVpcd()
    try:
        status = share(
            "attach", "Reader 9", "--home", str(endpoint_home.path), "--from", spec(service),
            "--vpcd", f"127.0.0.1:{vpcd.port}",
        )  # fmt: skip
    finally:
        vpcd.close()
    assert status == 3
    assert "no reader named 'Reader 9'" in capsys.readouterr().err


def test_unpaired_and_unreachable_exit_1(
    tmp_path: Path, service: ShareService, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = str(tmp_path / "stranger")
    assert share("list", "--home", stranger, "--from", spec(service)) == 1
    assert "no service is paired" in capsys.readouterr().err
    assert share("list", "--home", stranger) == 1
    assert "no share service runs here" in capsys.readouterr().err
    assert share("pair", "--home", stranger, "--with", "127.0.0.1:1", "A" * 20) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "home")
    assert share("pair", "--home", home, "ABCD") == 2
    assert share("pair", "--home", home, "--with", "laptop") == 2
    assert share("serve", "--home", home, "--listen", "host:99999") == 2
    assert share("serve", "--home", home, "--transaction-idle", "0") == 2
    assert share("unpair", "--home", home, ":") == 2
    capsys.readouterr()


def test_unpair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ShareHome(tmp_path / "home")
    peer = home.trust.pin(
        ShareHome(tmp_path / "other").identity().certificate, "other", PeerRole.ENDPOINT
    )
    absent = "FFFF" if peer.fingerprint[0] != 0xFF else "00"
    assert share("unpair", "--home", str(home.path), absent) == 1
    assert share("unpair", "--home", str(home.path), peer.fingerprint.hex()[:6]) == 0
    assert "other (" in (out := capsys.readouterr().out) and "forgotten" in out
    assert home.trust.peers() == []
