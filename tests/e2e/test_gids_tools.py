"""The GIDS card through the real path: pcscd + vpcd + ``python -m vsc.emulator --applet gids``.

OpenSC's tools drive a factory GIDS card as a user would: ``opensc-tool``
names it, ``gids-tool`` personalises it, unblocks its PIN with the
administrator key and changes that key, ``pkcs11-tool`` (opensc-pkcs11.so)
generates an RSA-2048 key, signs, deciphers, writes and reads a
certificate, ``pkcs15-tool`` dumps it. Results are checked independently
(``openssl`` verifies signatures, decryptions are compared with the
plaintext, the certificate read back with the one written).

OpenSC's ``gids`` driver offers RSA only (it registers no EC algorithm), so
P-256 and P-384 keys are driven with raw APDUs through the same pcscd
(``opensc-tool -s``); a test pins the driver's refusal so the day it learns
EC the test says so.

Each test starts its own pcscd and emulator (``-vv``: the APDU trace is in
its log, attached to a failure) and personalises the card it needs.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from applets.gids import GIDS_ATR, GidsApplet
from applets.gids.host import initialize, key_file_fcp
from applets.gids.minidriver import (
    CARDAPPS,
    INITIAL_FILES,
    CardCache,
    parse_containers,
    parse_file_table,
)
from vsc import Card
from vsc.apdu import CommandApdu
from vsc.testing import EmulatorProcess, PcscdEnv
from vsc.tlv import encode_tlv, parse_dict, parse_tlv

from .conftest import CARD_TIMEOUT, StartEmulator
from .test_opensc_engine import send_apdus
from .test_persistence import backend_flags, restart  # noqa: F401  (a fixture)
from .test_piv_tools import CLIENT_TIMEOUT, openssl, pkcs11_module, program

pytestmark = pytest.mark.e2e

PIN = "123456"
NEW_PIN = "7777aaaa"
ADMIN_KEY = "0102030405060708" * 3
NEW_ADMIN_KEY = "112233445566778899AABBCCDDEEFF001122334455667788"
SERIAL = "00112233445566778899AABBCCDDEEFF"
SELECT_GIDS = bytes.fromhex("00A4040009A0000003974254465900")
_TRACE_LINE = re.compile(r"vsc\.apdu: \[\d+\] ([<>]) (.*)$")


class Gids:
    """One emulator serving a factory GIDS card in slot 0 of a private pcscd."""

    def __init__(self, pcscd: PcscdEnv, emulator: EmulatorProcess, workdir: Path) -> None:
        self.pcscd = pcscd
        self.emulator = emulator
        self.workdir = workdir

    @property
    def reader(self) -> str:
        return self.pcscd.reader(0)

    def run(self, *argv: str | Path, returncode: int | None = 0) -> str:
        """A client of this card; its stdout and stderr. ``returncode`` None: any status."""
        command = [program(str(argv[0])), *map(str, argv[1:])]
        result = self.pcscd.run(command, timeout=CLIENT_TIMEOUT)
        output = result.stdout + result.stderr
        if returncode is not None:
            assert result.returncode == returncode, (
                f"{command} exited {result.returncode}:\n{output}"
            )
        return output

    def gids_tool(self, *args: str, returncode: int | None = 0) -> str:
        return self.run("gids-tool", "-r", self.reader, *args, returncode=returncode)

    def pkcs11(self, *args: str | Path, returncode: int | None = 0) -> str:
        return self.run("pkcs11-tool", "--module", pkcs11_module(), *args, returncode=returncode)

    def initialize(self, pin: str = PIN, admin_key: str = ADMIN_KEY) -> None:
        self.gids_tool("-X", "--serial-number", SERIAL, "--admin-key", admin_key, "--pin", pin)

    def path(self, name: str) -> Path:
        return self.workdir / name

    def traced_commands(self) -> list[str]:
        lines = self.emulator.log_text().splitlines()
        return [m.group(2) for m in map(_TRACE_LINE.search, lines) if m and m.group(1) == ">"]


@pytest.fixture
def gids(start_emulator: StartEmulator, pcscd: PcscdEnv, tmp_path: Path) -> Gids:
    for name in ("opensc-tool", "gids-tool", "pkcs11-tool", "pkcs15-tool", "openssl"):
        program(name)
    return Gids(pcscd, start_emulator("-vv", "--applet", "gids"), tmp_path)


def _object(gids: Gids, fid: int, tag: int) -> bytes:
    """A data object read with a raw GET DATA (no driver in between)."""
    name = encode_tlv(0x5C, tag.to_bytes(2, "big"))
    read = CommandApdu(0x00, 0xCB, fid >> 8, fid & 0xFF, name, 256).encode()
    select, answer = send_apdus(gids.pcscd, SELECT_GIDS, read)
    assert (select.sw, answer.sw) == (0x9000, 0x9000)
    return parse_tlv(answer.data, tag).value


def test_opensc_tool_names_a_gids_card(gids: Gids) -> None:
    assert gids.run("opensc-tool", "-r", gids.reader, "-n").strip() == "GIDS Smart Card"
    atr = gids.run("opensc-tool", "-r", gids.reader, "-a").strip()
    assert bytes.fromhex(atr.replace(":", "")) == GIDS_ATR


def test_gids_tool_initializes_a_factory_card_as_vsc_does(gids: Gids) -> None:
    gids.initialize()
    dump = gids.gids_tool()
    assert "Found 5 entries in the masterfile" in dump
    assert "File: mscp\\cmapfile" in dump and "no container found" in dump
    assert "Serial number  : " + SERIAL.lower() in gids.run("pkcs15-tool", "-r", gids.reader, "-D")
    # Byte for byte what vsc's own personalisation writes.
    reference = Card([applet := GidsApplet()], default=applet)
    initialize(reference.transmit, pin=PIN.encode(), admin_key=bytes.fromhex(ADMIN_KEY))
    table = _object(gids, 0xA000, 0xDF1F)
    assert parse_file_table(table) == INITIAL_FILES
    assert table == applet.data.files[0xA000].objects[0xDF1F]
    assert _object(gids, 0xA010, 0xDF21) == CARDAPPS
    assert _object(gids, 0xA010, 0xDF22) == CardCache().encode()
    assert _object(gids, 0xA012, 0xDF20) == bytes.fromhex(SERIAL)
    # A second initialisation is refused: the card is no longer new.
    assert gids.gids_tool(
        "-X", "--serial-number", SERIAL, "--admin-key", ADMIN_KEY, "--pin", PIN, returncode=None
    ).count("failed")


def test_pkcs11_tool_rsa_2048_sign_decrypt_and_certificates(gids: Gids) -> None:
    gids.initialize()
    login = ("--login", "--pin", PIN)
    gids.pkcs11(*login, "--keypairgen", "--key-type", "rsa:2048", "--label", "vsc",
                "--usage-sign", "--usage-decrypt")  # fmt: skip
    containers = parse_containers(_object(gids, 0xA010, 0xDF23))
    assert [(c.name, c.valid, c.key_exchange_bits) for c in containers] == [("vsc", True, 2048)]
    pub_der, pub = gids.path("pub.der"), gids.path("pub.pem")
    gids.pkcs11("--read-object", "--type", "pubkey", "--id", "00", "-o", pub_der)
    openssl("pkey", "-pubin", "-inform", "DER", "-in", pub_der, "-out", pub)

    data, signature = gids.path("data"), gids.path("signature")
    data.write_bytes(b"signed by a GIDS card")
    gids.pkcs11(*login, "--sign", "--mechanism", "SHA256-RSA-PKCS", "--id", "00",
                "-i", data, "-o", signature)  # fmt: skip
    assert (
        "Verified OK"
        in openssl("dgst", "-sha256", "-verify", pub, "-signature", signature, data).stdout
    )

    secret, cryptogram, plain = gids.path("secret"), gids.path("enc"), gids.path("dec")
    secret.write_bytes(b"for the card's eyes only")
    openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", pub, "-in", secret, "-out", cryptogram)
    gids.pkcs11(*login, "--decrypt", "--mechanism", "RSA-PKCS", "--id", "00",
                "-i", cryptogram, "-o", plain)  # fmt: skip
    assert plain.read_bytes() == secret.read_bytes()

    ca_key, cert, back = gids.path("ca.key"), gids.path("cert.der"), gids.path("back.der")
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ca_key)
    openssl("x509", "-new", "-force_pubkey", pub, "-key", ca_key, "-subj", "/CN=gids user",
            "-days", "2", "-outform", "DER", "-out", cert)  # fmt: skip
    gids.pkcs11(*login, "--write-object", cert, "--type", "cert", "--id", "00", "--label", "vsc")
    gids.pkcs11("--read-object", "--type", "cert", "--id", "00", "-o", back)
    assert back.read_bytes() == cert.read_bytes()

    dump = gids.run("pkcs15-tool", "-r", gids.reader, "-D")
    assert "Private RSA Key [vsc]" in dump and "ModLength      : 2048" in dump
    assert "X.509 Certificate [vsc]" in dump and "Path           : a010df24" in dump
    pem = gids.run("pkcs15-tool", "-r", gids.reader, "--read-certificate", "00")
    read = x509.load_pem_x509_certificate(pem[pem.index("-----BEGIN") :].encode())
    assert read.public_bytes(serialization.Encoding.DER) == cert.read_bytes()


def test_wrong_pins_count_down_block_and_gids_tool_unblocks(gids: Gids) -> None:
    gids.initialize()
    for left in (2, 1):
        assert "CKR_PIN_INCORRECT" in gids.pkcs11("--login", "--pin", "000000", "-O",
                                                  returncode=1)  # fmt: skip
        assert f"Tries left     : {left}" in gids.run("pkcs15-tool", "-r", gids.reader, "-D")
    gids.pkcs11("--login", "--pin", "000000", "-O", returncode=1)
    assert "CKR_PIN_LOCKED" in gids.pkcs11("--login", "--pin", PIN, "-O", returncode=1)
    assert "user PIN locked" in gids.pkcs11("-T")

    wrong = gids.gids_tool("-U", "--admin-key", "00" * 24, "--pin", NEW_PIN, returncode=1)
    assert "PIN code or key incorrect" in wrong
    assert "Unblock PIN done successfully" in gids.gids_tool(
        "-U", "--admin-key", ADMIN_KEY, "--pin", NEW_PIN
    )
    gids.pkcs11("--login", "--pin", NEW_PIN, "-O")
    # The wrong answer cost the administrator key one try (63C9), the right one gave it back.
    assert "63 C9" in "\n".join(gids.emulator.log_text().splitlines())


def test_gids_tool_changes_the_admin_key(gids: Gids) -> None:
    gids.initialize()
    gids.gids_tool("-C", "--admin-key", ADMIN_KEY, "--new-admin-key", NEW_ADMIN_KEY)
    gids.gids_tool("-U", "--admin-key", ADMIN_KEY, "--pin", NEW_PIN, returncode=1)
    gids.gids_tool("-U", "--admin-key", NEW_ADMIN_KEY, "--pin", NEW_PIN)
    gids.pkcs11("--login", "--pin", NEW_PIN, "--change-pin", "--new-pin", PIN)
    gids.pkcs11("--login", "--pin", PIN, "-O")


def test_opensc_offers_no_ec_keys_for_gids(gids: Gids) -> None:
    gids.initialize()
    out = gids.pkcs11("--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:prime256v1",
                      returncode=None)  # fmt: skip
    assert "CKR_MECHANISM_INVALID" in out or "not supported" in out.lower(), out
    assert not any(command.startswith("00 47") for command in gids.traced_commands())


@pytest.mark.parametrize(
    ("algorithm", "curve", "hash_"),
    [(0x0C, ec.SECP256R1(), hashes.SHA256()), (0x0D, ec.SECP384R1(), hashes.SHA384())],
)
def test_ecc_keys_through_raw_apdus(
    gids: Gids, algorithm: int, curve: ec.EllipticCurve, hash_: hashes.HashAlgorithm
) -> None:
    gids.initialize()
    ref = 0x81
    template = encode_tlv(0xB6, bytes((0x80, 1, algorithm, 0x83, 1, ref, 0x95, 1, 0x40)))
    fcp = encode_tlv(
        0x62,
        bytes.fromhex("820118 8302B081 8C058F10101000".replace(" ", ""))
        + encode_tlv(0xA5, template),
    )
    digest = hashlib.new(hash_.name, b"raw but real").digest()
    generate_template = bytes((0x80, 1, algorithm, 0x83, 1, ref))
    apdus = [
        SELECT_GIDS,
        CommandApdu(0, 0x20, 0, 0x80, PIN.encode()).encode(),
        CommandApdu(0, 0xE0, 0, 0, fcp).encode(),
        bytes.fromhex("00440000"),
        CommandApdu(0, 0x47, 0, 0, encode_tlv(0xAC, generate_template), 256).encode(),
        CommandApdu(0, 0x22, 0x41, 0xB6, bytes((0x80, 1, algorithm, 0x84, 1, ref))).encode(),
        CommandApdu(0, 0x2A, 0x9E, 0x9A, digest, 256).encode(),
    ]
    exchanges = send_apdus(gids.pcscd, *apdus)
    assert [e.sw for e in exchanges] == [0x9000] * len(apdus)
    point = parse_dict(parse_tlv(exchanges[4].data, 0x7F49).value)[0x86]
    key = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    size = (curve.key_size + 7) // 8
    signature = exchanges[6].data
    r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
    key.verify(utils.encode_dss_signature(r, s), b"raw but real", ec.ECDSA(hash_))


def test_the_key_file_template_opensc_writes_is_what_vsc_writes(gids: Gids) -> None:
    """OpenSC creates key files itself; vsc's helper writes the same FCP for a key exchange key."""
    gids.initialize()
    gids.pkcs11("--login", "--pin", PIN, "--keypairgen", "--key-type", "rsa:1024",
                "--usage-sign", "--usage-decrypt")  # fmt: skip
    created = [c for c in gids.traced_commands() if c.startswith("00 E0") and "83 02 B0 81" in c]
    assert len(created) == 1
    fcp = bytes.fromhex(created[0].replace(" ", ""))[5:]
    assert fcp == key_file_fcp(0x81, 0x06, decipher=True)
    # Deleting the key deletes its file (DELETE FILE with the PIN) and empties the container.
    gids.pkcs11("--login", "--pin", PIN, "--delete-object", "--type", "privkey", "--id", "00")
    assert "00 E4 00 00" in gids.traced_commands()
    (container,) = parse_containers(_object(gids, 0xA010, 0xDF23))
    assert not container.valid
    _, read = send_apdus(gids.pcscd, SELECT_GIDS, bytes.fromhex("00CB3FFF0A7008840181A5037F498000"))
    assert read.sw == 0x6A88  # the key is gone with its file


# -- a stored GIDS card -------------------------------------------------------------------------


def test_a_stored_gids_card_survives_sigkill(
    backend_flags: list[str],  # noqa: F811  (the fixture imported above)
    start_emulator: StartEmulator,
    pcscd: PcscdEnv,
    tmp_path: Path,
) -> None:
    """Personalised, a key generated and a wrong PIN given; killed; restarted on the same store."""
    args = ["-vv", "--card", "gids", "--store", str(tmp_path / "store"), *backend_flags]
    emulator = start_emulator(*args, "--applet", "gids")
    gids = Gids(pcscd, emulator, tmp_path)
    gids.initialize()
    gids.pkcs11("--login", "--pin", PIN, "--keypairgen", "--key-type", "rsa:2048",
                "--label", "kept", "--usage-sign", "--usage-decrypt")  # fmt: skip
    pub_der, pub = gids.path("pub.der"), gids.path("pub.pem")
    gids.pkcs11("--read-object", "--type", "pubkey", "--id", "00", "-o", pub_der)
    openssl("pkey", "-pubin", "-inform", "DER", "-in", pub_der, "-out", pub)
    gids.pkcs11("--login", "--pin", "000000", "-O", returncode=1)

    emulator = restart("sigkill", emulator, pcscd, start_emulator, args)  # no --applet: kept
    gids.emulator = emulator

    assert gids.run("opensc-tool", "-r", gids.reader, "-n").strip() == "GIDS Smart Card"
    dump = gids.run("pkcs15-tool", "-r", gids.reader, "-D")
    assert "Tries left     : 2" in dump and "Private RSA Key [kept]" in dump
    data, signature = gids.path("data"), gids.path("signature")
    data.write_bytes(b"signed after SIGKILL")
    gids.pkcs11("--login", "--pin", PIN, "--sign", "--mechanism", "SHA256-RSA-PKCS",
                "--id", "00", "-i", data, "-o", signature)  # fmt: skip
    openssl("dgst", "-sha256", "-verify", pub, "-signature", signature, data)
    assert "Tries left     : 3" in gids.run("pkcs15-tool", "-r", gids.reader, "-D")
    assert emulator.stop() == 0
    pcscd.wait_for_card(pcscd.reader(0), present=False, timeout=CARD_TIMEOUT)

    # The card keeps its application: asking for PIV on it is refused, with the reason.
    wrong = EmulatorProcess(pcscd.vpcd_port(0), *args, "--applet", "piv")
    wrong.start()
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while wrong.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wrong.stop() == 2
    assert "is a GIDS card, not PIV" in wrong.log_text()


def test_a_card_made_by_vsc_create_serves_opensc(
    start_emulator: StartEmulator, pcscd: PcscdEnv, tmp_path: Path
) -> None:
    """tpmvscmgr's workflow: vsc create --applet gids, then the card in a reader."""
    store = tmp_path / "store"
    created = subprocess.run(
        [sys.executable, "-m", "vsc.cli", "create", "vsc-made", "--applet", "gids",
         "--pin", NEW_PIN, "--admin-key", NEW_ADMIN_KEY, "--puk", "default", "--json",
         "--store", str(store), "--insecure-plain"],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    cardid = json.loads(created.stdout)["cardid"]
    emulator = start_emulator(
        "-vv", "--card", "vsc-made", "--store", str(store), "--insecure-plain"
    )
    gids = Gids(pcscd, emulator, tmp_path)
    dump = gids.run("pkcs15-tool", "-r", gids.reader, "-D")
    assert f"Serial number  : {cardid}" in dump and "PIN [PUK]" in dump
    gids.pkcs11("--login", "--pin", NEW_PIN, "--keypairgen", "--key-type", "rsa:2048",
                "--usage-sign")  # fmt: skip
    for _ in range(3):
        gids.pkcs11("--login", "--pin", "00000000", "-O", returncode=1)
    gids.gids_tool("-U", "--admin-key", NEW_ADMIN_KEY, "--pin", PIN + "78")
    gids.pkcs11("--login", "--pin", PIN + "78", "-O")
