"""The yubikit suite and ykman's CLI through pcscd + vpcd, per YubiKey profile.

The suite of tests/yubikit_suite.py runs against ``python -m vsc.emulator``
through a private pcscd, with ykman's own PC/SC connection (pyscard): a
YubiKey 5.4 on USB (the vpcd reader named "Yubico YubiKey CCID", the USB ATR:
ykman sends extended APDUs) and a YubiKey 5.7 on NFC (vpcd's stock reader
name, the NFC ATR: short APDUs, chaining, GET RESPONSE). Each profile's
emulator serves the whole class; every test starts from a factory PIV
application (a Yubico RESET: PIN and PUK blocked, then FB).

Then ykman's CLI finds the key as a YubiKey: ``ykman list``, ``--device
SERIAL`` and ``--reader`` with ``info`` and ``piv info``, objects exported
and imported. (ykman runs ``pkill -9 scdaemon`` when a connection fails; on
this machine there is none to kill.)
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from yubikit.core import TRANSPORT
from yubikit.core.smartcard import SmartCardConnection
from yubikit.piv import PivSession

from applets.cards import YUBIKEY_READER_NAME
from applets.piv import YUBIKEY_5_4, YUBIKEY_5_7, PivProfile
from vsc.testing import EmulatorProcess, PcscdEnv
from vsc.testing.pcscd import FRIENDLY_NAME

from ..yubikit_suite import YubiKeyPivSuite
from .conftest import CARD_TIMEOUT, _remember
from .test_piv_tools import program

pytestmark = pytest.mark.e2e

CLIENT_TIMEOUT = 60.0
SERIALS = {YUBIKEY_5_4.name: 20240543, YUBIKEY_5_7.name: 20240571}


class RecordingConnection(SmartCardConnection):
    """ykman's PC/SC connection to a reader, remembering the APDUs yubikit sends."""

    def __init__(self, reader_name: str) -> None:
        from smartcard.System import readers
        from ykman.pcsc import ScardSmartCardConnection

        (reader,) = [r for r in readers() if str(r) == reader_name]
        self._pcsc = ScardSmartCardConnection(reader.createConnection())  # type: ignore[no-untyped-call]
        self.sent: list[bytes] = []

    @property
    def transport(self) -> TRANSPORT:
        transport: TRANSPORT = self._pcsc.transport
        return transport

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(bytes(apdu))
        response: tuple[bytes, int] = self._pcsc.send_and_receive(apdu)  # type: ignore[no-untyped-call]
        return response

    def close(self) -> None:
        self._pcsc.close()  # type: ignore[no-untyped-call]


@dataclass
class PcscdDevice:
    """A YubiKey profile served by the emulator in slot 0 of a private pcscd."""

    profile: PivProfile
    transport: TRANSPORT
    pcscd: PcscdEnv
    emulator: EmulatorProcess
    serial: int
    connection: RecordingConnection | None = None

    @property
    def reader(self) -> str:
        return self.pcscd.reader(0)

    def session(self) -> PivSession:
        """A new connection (closing the last one powers the card down: a reset)."""
        self.close()
        self.pcscd.use_in_process()
        self.connection = RecordingConnection(self.reader)
        assert self.connection.transport == self.transport  # from the ATR, as ykman has it
        return PivSession(self.connection)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def set_touch(self, approve: Callable[[int], bool]) -> None:
        pytest.skip("the touch hook is the emulator process's")

    def sent(self) -> list[bytes]:
        assert self.connection is not None
        return self.connection.sent

    def factory_reset(self) -> None:
        """Block PIN and PUK, then RESET: the PIV application as it left the factory."""
        self.session().reset()

    def run_bytes(
        self, argv: list[str], data: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """A client with binary input and output."""
        return subprocess.run(
            argv,
            input=data,
            capture_output=True,
            timeout=CLIENT_TIMEOUT,
            env=self.pcscd.env,
            check=False,
        )

    def ykman(self, *args: str, returncode: int | None = 0) -> str:
        result = self.pcscd.run([program("ykman"), *args], timeout=CLIENT_TIMEOUT)
        output = result.stdout + result.stderr
        if returncode is not None:
            assert result.returncode == returncode, f"ykman {args}: {output}"
        return output


@pytest.fixture(
    scope="class",
    params=[(YUBIKEY_5_4, TRANSPORT.USB), (YUBIKEY_5_7, TRANSPORT.NFC)],
    ids=["5.4-usb", "5.7-nfc"],
)
def served(request: pytest.FixtureRequest, e2e_available: None) -> Iterator[PcscdDevice]:
    profile, transport = request.param
    program("ykman")
    usb = transport == TRANSPORT.USB
    serial = SERIALS[profile.name]
    with (
        PcscdEnv(friendly_name=YUBIKEY_READER_NAME if usb else FRIENDLY_NAME) as pcscd,
        EmulatorProcess(
            pcscd.vpcd_port(0),
            *("--profile", profile.name, "--transport", transport.value, f"--serial={serial}"),
            # Over USB both readers have a key: ykman counts every "YubiKey" reader.
            *(("--slots", "2", f"--serial={serial + 1}") if usb else ()),
        ) as emulator,
    ):
        pcscd.wait_for_card(
            pcscd.reader(0), present=True, timeout=CARD_TIMEOUT, check=emulator.check_running
        )
        device = PcscdDevice(profile, transport, pcscd, emulator, serial)
        try:
            yield device
        finally:
            device.close()


@pytest.fixture
def device(request: pytest.FixtureRequest, served: PcscdDevice) -> PcscdDevice:
    _remember(request, served.pcscd)
    _remember(request, served.emulator)
    served.factory_reset()
    return served


class TestThroughPcscd(YubiKeyPivSuite):
    """The yubikit suite, through pcscd."""

    def test_ykman_finds_the_key_by_reader(self, device: PcscdDevice) -> None:
        device.close()
        out = device.ykman("--reader", device.reader, "info")
        assert "Device type: YubiKey 5 NFC" in out
        assert f"Serial number: {device.serial}" in out
        assert f"Firmware version: {'.'.join(map(str, device.profile.version or ()))}" in out
        assert re.search(r"PIV\s+Enabled\s+Enabled", out)
        assert re.search(r"Yubico OTP\s+Disabled\s+Disabled", out)
        assert re.search(r"FIDO2\s+Disabled\s+Disabled", out)
        out = device.ykman("--reader", device.reader, "piv", "info")
        version = ".".join(map(str, device.profile.version or ()))
        assert f"PIV version:              {version}" in out
        assert "WARNING: Using default Management key!" in out

    def test_ykman_objects_import_and_export(self, device: PcscdDevice) -> None:
        """The issue's example: ``ykman piv objects import 0x5f0001`` (and back)."""
        device.close()
        key = "010203040506070801020304050607080102030405060708"
        data = b"Hello, \x00\x1b[31mred\x00\x1b[0m world!\xff"
        ykman = [program("ykman"), "--reader", device.reader, "piv", "objects"]
        imported = device.run_bytes([*ykman, "import", "-m", key, "0x5f0001", "-"], data)
        assert imported.returncode == 0, imported.stderr
        exported = device.run_bytes([*ykman, "export", "0x5f0001", "-"])
        assert exported.returncode == 0, exported.stderr
        assert exported.stdout == data

    # ykman lists only readers named as a YubiKey's USB reader: generated for USB only.
    @pytest.mark.parametrize(
        "served", [(YUBIKEY_5_4, TRANSPORT.USB)], ids=["5.4-usb"], indirect=True, scope="class"
    )
    def test_ykman_device_serial(self, device: PcscdDevice) -> None:
        """With the readers named as a YubiKey's, ykman lists the keys, `--device` finds one."""
        assert device.transport == TRANSPORT.USB
        device.close()
        out = device.ykman("list")
        for serial in (device.serial, device.serial + 1):
            assert f"YubiKey 5 NFC (5.4.3) [CCID] Serial: {serial}" in out
        out = device.ykman("--device", str(device.serial), "info")
        assert f"Serial number: {device.serial}" in out
        out = device.ykman("--device", str(device.serial), "piv", "info")
        assert "PIV version:              5.4.3" in out
        assert "Management key algorithm: TDES" in out
        out = device.ykman("info", returncode=None)
        assert "Use --device SERIAL to specify which one to use." in out
        out = device.ykman("--device", "99999999", "info", returncode=None)
        assert "Failed connecting to a YubiKey with serial: 99999999" in out
