"""No secret reaches a trace: the emulator's APDU trace and both relay traces.

Real clients send secrets the ways clients do, through pcscd + vpcd:

* yubikit over pyscard: chained PUT DATA of the PIN-protected data object
  (5FC109, which holds a management key) in 16-byte chunks (the key lands
  in the last chunk, ``00 DB 3F FF 13 <key>``), in 3-byte chunks (the
  object's tag itself is split), and in yubikit's own 255-byte chunks; GET
  DATA reads the object back through GET RESPONSE; SET MANAGEMENT KEY;
* yubico-piv-tool: SET MANAGEMENT KEY, a chained IMPORT KEY of an RSA-2048
  key, a chained write of 5FC109 with a key at its end, VERIFY PIN.

Then each secret's bytes are searched in the logs as hex in any case with
any separators (and as raw text). The emulator runs with ``-vv`` (its APDU
trace); the share service and endpoint with ``-vvv`` (the relay traces).
Before the one masking classification, the chained 5FC109 writes leaked in
all three.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vsc.testing import PcscdEnv
from vsc.testing.traces import leaks

from .conftest import StartEmulator
from .sharebed import ShareBed
from .test_share import bed  # noqa: F401  (the relay testbed's fixture)

pytestmark = pytest.mark.e2e

PIN = "123456"
FACTORY_KEY = bytes.fromhex("0102030405060708" * 3)
CLIENT_TIMEOUT = 60.0
PROTECTED = bytes.fromhex("5C035FC109")  # GET/PUT DATA of the PIN-protected object


@dataclass
class Secrets:
    """The secrets one run sends; none of them may appear in a trace."""

    named: dict[str, bytes] = field(default_factory=dict)

    def new(self, name: str, size: int = 24) -> bytes:
        value = os.urandom(size)
        self.named[name] = value
        return value

    def add(self, name: str, value: bytes) -> None:
        self.named[name] = value

    def leaks(self, text: str) -> list[str]:
        return leaks(text, self.named)


def protected_data(key: bytes, filler: int = 0) -> bytes:
    """Yubico's PIN-protected data: 88 { [8F filler] 89 key }, the key last."""
    inner = (bytes((0x8F,)) + _length(filler) + b"\xa5" * filler if filler else b"") + (
        b"\x89" + _length(len(key)) + key
    )
    return b"\x88" + _length(len(inner)) + inner


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x81, n))
    return bytes((0x82,)) + n.to_bytes(2, "big")


def put_data_command_data(value: bytes) -> bytes:
    return PROTECTED + b"\x53" + _length(len(value)) + value


# --- the clients ---------------------------------------------------------------------------


def yubikit_session(pcscd: PcscdEnv, reader: str, secrets: Secrets) -> None:
    """yubikit over pyscard through ``pcscd``: raw chained writes, then its own API."""
    from smartcard.pcsc.PCSCReader import PCSCReader
    from ykman.pcsc import ScardSmartCardConnection
    from yubikit.piv import MANAGEMENT_KEY_TYPE, OBJECT_ID, PivSession

    pcscd.use_in_process()
    reader_connection = PCSCReader(reader).createConnection()
    connection = ScardSmartCardConnection(reader_connection)  # type: ignore[no-untyped-call]
    try:
        piv = PivSession(connection)
        piv.authenticate(FACTORY_KEY)
        piv.verify_pin(PIN)
        for chunk in (16, 3):
            key = secrets.new(f"5FC109 key in {chunk}-byte chunks")
            data = put_data_command_data(protected_data(key))
            pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
            for i, piece in enumerate(pieces):
                cla = 0x00 if i == len(pieces) - 1 else 0x10
                apdu = bytes((cla, 0xDB, 0x3F, 0xFF, len(piece))) + piece
                _, sw = connection.send_and_receive(apdu)  # type: ignore[no-untyped-call]
                assert sw == 0x9000, f"{apdu.hex()}: {sw:04X}"
        big = protected_data(secrets.new("5FC109 key after 300 bytes (yubikit)"), filler=300)
        piv.put_object(OBJECT_ID.PRINTED, big)
        assert piv.get_object(OBJECT_ID.PRINTED) == big  # 61xx + GET RESPONSE
        piv.set_management_key(MANAGEMENT_KEY_TYPE.TDES, secrets.new("mgm key (yubikit)"))
    finally:
        connection.close()  # type: ignore[no-untyped-call]


def yubico_piv_tool_session(
    run: Callable[..., None], workdir: Path, secrets: Secrets, old_key: bytes
) -> None:
    """yubico-piv-tool: set the management key, import an RSA key, write 5FC109, verify."""
    new_key = secrets.new("mgm key (yubico-piv-tool)")
    run(f"--key={old_key.hex()}", "-a", "set-mgm-key", "-n", new_key.hex())

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = private.private_numbers()
    for name in ("p", "q", "dmp1", "dmq1", "iqmp", "d"):
        value = getattr(numbers, name)
        secrets.add(f"RSA {name}", value.to_bytes((value.bit_length() + 7) // 8, "big"))
    pem = workdir / "rsa.pem"
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    run(f"--key={new_key.hex()}", "-a", "import-key", "-s", "9c", "-i", str(pem))

    blob = workdir / "protected.bin"
    blob.write_bytes(protected_data(secrets.new("5FC109 key (yubico-piv-tool)"), filler=400))
    run(
        f"--key={new_key.hex()}",
        "-a",
        "write-object",
        "--id",
        "0x5fc109",
        "-f",
        "binary",
        "-i",
        blob,
    )
    secrets.add("PIN", PIN.encode())
    run("-a", "verify-pin", "-P", PIN)


def exercise(pcscd: PcscdEnv, reader: str, workdir: Path, secrets: Secrets) -> None:
    yubikit_session(pcscd, reader, secrets)

    def run(*args: str | Path) -> None:
        argv = ["yubico-piv-tool", "-r", reader, *map(str, args)]
        result = pcscd.run(argv, timeout=CLIENT_TIMEOUT)
        assert result.returncode == 0, f"{argv}:\n{result.stdout}{result.stderr}"

    yubico_piv_tool_session(run, workdir, secrets, secrets.named["mgm key (yubikit)"])


def problems(text: str, secrets: Secrets, what: str) -> list[str]:
    """What is wrong with one trace: a chained command it did not see, a secret it shows."""
    found = [
        f"{what}: no {header!r} in the trace (is it on?)"
        for header in ("10 DB 3F FF", "00 DB 3F FF", "10 FE 07 9C", "00 FF FF FF", "00 20 00 80")
        if header not in text
    ]
    leaked = secrets.leaks(text)
    if leaked:
        found.append(f"{what} shows {leaked}")
    return found


# --- the tests -----------------------------------------------------------------------------


@pytest.fixture
def tools(tool: Callable[[str], str]) -> None:
    tool("yubico-piv-tool")


def test_emulator_trace_shows_no_secret(
    tools: None, pcscd: PcscdEnv, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    emulator = start_emulator("-vv")
    secrets = Secrets()

    exercise(pcscd, pcscd.reader(0), tmp_path, secrets)

    assert not problems(emulator.log_text(), secrets, "the emulator's -vv trace")


def test_relay_traces_show_no_secret(bed: ShareBed, tmp_path: Path) -> None:  # noqa: F811
    endpoint = bed.attach(session="secrets")
    bed.remote_card(process=endpoint)
    secrets = Secrets()

    exercise(bed.remote, bed.remote.reader(0), tmp_path, secrets)

    assert bed.service is not None
    found = problems(bed.service.text(), secrets, "share serve -vvv")
    found += problems(endpoint.text(), secrets, "share attach -vvv")
    assert not found
