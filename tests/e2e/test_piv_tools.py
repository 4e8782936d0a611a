"""The PIV card through the real path: pcscd + vpcd + ``python -m vsc.emulator`` + real tools.

opensc-tool, piv-tool, yubico-piv-tool, pkcs11-tool (opensc-pkcs11.so) and
ykman drive a factory card the way a user would; every result is checked
independently: signatures verified and ECDH secrets derived with ``openssl``,
decryptions compared with the plaintext, keys the card holds compared through
GET METADATA or attestation, attestations verified against the card's F9
certificate.

Every class runs per card profile it names in ``PROFILES`` (docs/piv.md,
"Profiles"; conftest.py parametrizes the class's card with them, and a test
marked ``yubikey_only`` with the YubiKeys among them only): the YubiKey 5.4
and 5.7 and the plain PIV card, where OpenSC takes its generic PIV path and
the Yubico-only commands of the tools fail as they do on a government card.
yubico-piv-tool 2.2.0 knows only 3DES management keys: against a YubiKey 5.7
(AES-192 from the factory) the fixture first sets a 3DES key with ykman, as a
user with Debian's tool has to.

Each test class shares, per profile, one private pcscd and one emulator
process (``-vv``, so the APDU trace is in its log, attached to a failure
report). Tests run in
the order written, but each provisions what it needs and puts back what it
changes (PIN, PUK, management key), so each can run and fail alone; the
yubico-piv-tool class ends with RESET. Every client call is bounded by
``CLIENT_TIMEOUT``. Client quirks (docs/piv.md, per tool) steer the choice of
commands: yubico-piv-tool 2.2.0 cannot self-sign under OpenSSL 3, so
certificates for OpenSC's view are made by ``openssl`` and imported.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from applets.piv import PIV, YUBIKEY_5_4, YUBIKEY_5_7, PivProfile
from applets.piv.mgmt import ManagementKeyType
from vsc.testing import EmulatorProcess, PcscdEnv
from vsc.testing.tools import find_pkcs11_module
from vsc.tlv import encode_tlv, parse_dict

from .conftest import CARD_TIMEOUT, _remember, unavailable
from .test_opensc_engine import Exchange, send_apdus

pytestmark = pytest.mark.e2e

CLIENT_TIMEOUT = 30.0
PIN = "123456"
PUK = "12345678"
FACTORY_KEY = "0102030405060708" * 3
OTHER_KEY = "00112233445566778899AABBCCDDEEFF0123456789ABCDEF"
SELECT_PIV = bytes.fromhex("00A4040005A000000308")
GET_SERIAL = bytes.fromhex("00F8000000")
#: Yubico attestation extension carrying the serial (docs/piv.md, "Attestation").
OID_SERIAL = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.7")
META_ORIGIN_GENERATED = b"\x01"
META_ORIGIN_IMPORTED = b"\x02"
#: OpenSC's card types (its cards.h): the generic PIV driver path, and a YubiKey 4/5.
OPENSC_PIV_GENERIC = 14001
OPENSC_PIV_YUBIKEY = 14004
#: piv-tool -A's algorithm byte for each management key type.
_PIV_TOOL_ALGORITHM = {ManagementKeyType.TDES: "03", ManagementKeyType.AES192: "0A"}
#: The profiles a class runs on (its ``PROFILES``, conftest.py parametrizes ``piv_card``
#: with them): every profile, or the YubiKeys only (ykman's world).
ALL_PROFILES: tuple[PivProfile, ...] = (YUBIKEY_5_4, YUBIKEY_5_7, PIV)
YUBIKEYS: tuple[PivProfile, ...] = (YUBIKEY_5_4, YUBIKEY_5_7)


# -- running things ---------------------------------------------------------------------


def program(name: str) -> str:
    """A client program's path (ykman from this interpreter's venv first); skip if missing."""
    if name == "ykman":
        beside = Path(sys.executable).parent / "ykman"
        if beside.exists():
            return str(beside)
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed")
    return path


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``openssl`` (no card involved); it must succeed."""
    argv = [program("openssl"), *map(str, args)]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout}{result.stderr}"
    return result


class _PublicKey(Protocol):
    def public_bytes(
        self, encoding: serialization.Encoding, format: serialization.PublicFormat
    ) -> bytes: ...


def spki(key: _PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def der_public_key(pem_file: Path) -> bytes:
    """The SubjectPublicKeyInfo DER of a PEM public key, certificate or private key."""
    data = pem_file.read_bytes()
    if b"CERTIFICATE" in data:
        return spki(x509.load_pem_x509_certificate(data).public_key())
    if b"PRIVATE KEY" in data:
        return spki(serialization.load_pem_private_key(data, None).public_key())
    return spki(serialization.load_pem_public_key(data))


def metadata_public_key(value: bytes) -> bytes:
    """GET METADATA tag 04 (``81 n 82 e`` or ``86 point``) as SubjectPublicKeyInfo DER."""
    fields = parse_dict(value)
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if 0x86 in fields:
        curve = {65: ec.SECP256R1(), 97: ec.SECP384R1()}[len(fields[0x86])]
        key = ec.EllipticCurvePublicKey.from_encoded_point(curve, fields[0x86])
    else:
        n, e = (int.from_bytes(fields[tag], "big") for tag in (0x81, 0x82))
        key = rsa.RSAPublicNumbers(e, n).public_key()
    return spki(key)


def make_certificate(card: PivCard, public: Path, cert: Path, subject: str) -> None:
    """An openssl-made certificate for a card's public key, signed by a throwaway CA key."""
    ca_key = card.path("ca.key")
    if not ca_key.exists():
        openssl(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ca_key
        )
    openssl(
        "x509", "-new", "-force_pubkey", public, "-key", ca_key, "-subj", subject, "-days", "2",
        "-out", cert,
    )  # fmt: skip


def public_pem(private_key: Path) -> Path:
    """The public key of an openssl private key file, as a PEM file beside it."""
    public = private_key.with_suffix(".pub")
    openssl("pkey", "-in", private_key, "-pubout", "-out", public)
    return public


def pkcs11_module() -> str:
    path = find_pkcs11_module()
    if path is None:
        unavailable("opensc-pkcs11.so not found (Debian: opensc-pkcs11)")
    return path


@dataclass(frozen=True, slots=True)
class Pkcs11Object:
    """One object of ``pkcs11-tool --list-objects``: its header line and fields."""

    kind: str
    fields: dict[str, str]

    @property
    def id(self) -> str:
        return self.fields.get("ID", "")


def pkcs11_objects(output: str) -> list[Pkcs11Object]:
    objects: list[Pkcs11Object] = []
    for line in output.splitlines():
        if line and not line[0].isspace():
            objects.append(Pkcs11Object(line.strip(), {}))
        elif objects and line.startswith("  ") and ":" in line:
            name, _, value = line.strip().partition(":")
            objects[-1].fields[name] = value.strip()
    return objects


@dataclass
class PivCard:
    """One emulator process with a factory card in slot 0 of a private pcscd."""

    pcscd: PcscdEnv
    emulator: EmulatorProcess
    workdir: Path
    profile: PivProfile

    @property
    def yubikey(self) -> bool:
        return self.profile.is_yubikey

    @property
    def reader(self) -> str:
        return self.pcscd.reader(0)

    def run(
        self, *argv: str | Path, returncode: int | None = 0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a client of this card; ``returncode`` None accepts any exit status."""
        command = [program(str(argv[0])), *map(str, argv[1:])]
        result = self.pcscd.run(command, timeout=CLIENT_TIMEOUT, extra_env=env)
        if returncode is not None:
            assert result.returncode == returncode, (
                f"{command} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def yubico(self, *args: str | Path, returncode: int | None = 0) -> str:
        """yubico-piv-tool on this card; its stdout and stderr."""
        result = self.run("yubico-piv-tool", "-r", self.reader, *args, returncode=returncode)
        return result.stdout + result.stderr

    def ykman(self, *args: str | Path, returncode: int | None = 0) -> str:
        result = self.run("ykman", "--reader", self.reader, "piv", *args, returncode=returncode)
        return result.stdout + result.stderr

    def apdus(self, *apdus: bytes) -> list[Exchange]:
        """Raw APDUs in one opensc-tool session (no driver in between)."""
        return send_apdus(self.pcscd, *apdus)

    def pin_tries(self) -> int:
        """The PIN tries left, by SP 800-73-4's VERIFY without data (every profile), after
        VERIFY P1=FF has ended a PIN status an earlier client left."""
        _, _, verify = self.apdus(
            SELECT_PIV, bytes.fromhex("0020FF80"), bytes.fromhex("0020008000")
        )
        if verify.sw == 0x6983:  # blocked
            return 0
        assert verify.sw & 0xFFF0 == 0x63C0, hex(verify.sw)
        return verify.sw & 0x0F

    def serial(self) -> int:
        select, serial = self.apdus(SELECT_PIV, GET_SERIAL)
        assert (select.sw, serial.sw) == (0x9000, 0x9000)
        return int.from_bytes(serial.data, "big")

    def check_signs(self, slot: int, public: Path) -> None:
        """The key in ``slot`` signs (GENERAL AUTHENTICATE after VERIFY, raw APDUs in one
        session), and ``cryptography`` verifies the signature with ``public``."""
        key = serialization.load_pem_public_key(public.read_bytes())
        message = f"signed by the key in {slot:02X}".encode()
        if isinstance(key, ec.EllipticCurvePublicKey):
            algorithm: hashes.HashAlgorithm = (
                hashes.SHA256() if key.curve.key_size == 256 else hashes.SHA384()
            )
            digest = hashes.Hash(algorithm)
            digest.update(message)
            challenge = digest.finalize()
            key_type = 0x11 if key.curve.key_size == 256 else 0x14
        else:
            assert isinstance(key, rsa.RSAPublicKey)
            # A PKCS#1 v1.5 block for SHA-256 (the card does the raw RSA operation).
            digest_info = bytes.fromhex("3031300d060960864801650304020105000420")
            digest = hashes.Hash(hashes.SHA256())
            digest.update(message)
            info = digest_info + digest.finalize()
            size = key.key_size // 8
            challenge = b"\x00\x01" + b"\xff" * (size - 3 - len(info)) + b"\x00" + info
            key_type = 0x07
        template = encode_tlv(0x7C, encode_tlv(0x82, b"") + encode_tlv(0x81, challenge))
        chunks = [template[i : i + 255] for i in range(0, len(template), 255)]
        commands = [
            bytes((0x10 if i < len(chunks) - 1 else 0x00, 0x87, key_type, slot, len(chunk)))
            + chunk
            + (b"" if i < len(chunks) - 1 else b"\x00")
            for i, chunk in enumerate(chunks)
        ]
        verify = bytes.fromhex("0020008008") + PIN.encode() + b"\xff\xff"
        exchanges = self.apdus(SELECT_PIV, verify, *commands)
        assert exchanges[1].sw == 0x9000
        # (opensc-tool fetches a long answer's rest with GET RESPONSE itself.)
        answer, sw = exchanges[-1].data, exchanges[-1].sw
        assert sw == 0x9000, hex(sw)
        signature = parse_dict(parse_dict(answer)[0x7C])[0x82]
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, challenge, ec.ECDSA(utils.Prehashed(algorithm)))
        else:
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())

    def metadata(self, slot: int) -> tuple[int, dict[int, bytes]]:
        """GET METADATA of ``slot``: (SW, tags)."""
        _, meta = self.apdus(SELECT_PIV, bytes((0x00, 0xF7, 0x00, slot, 0x00)))
        return meta.sw, parse_dict(meta.data) if meta.sw == 0x9000 else {}

    def trace_mark(self) -> int:
        return len(self.emulator.log_text().splitlines())

    def trace_since(self, mark: int) -> list[tuple[str, str]]:
        """(command, response) hex texts the emulator traced since ``mark``."""
        lines = self.emulator.log_text().splitlines()[mark:]
        traced = [m.groups() for m in map(_TRACE_LINE.search, lines) if m]
        commands = [text for arrow, text in traced if arrow == ">"]
        responses = [text for arrow, text in traced if arrow == "<"]
        return list(zip(commands, responses, strict=True))

    def path(self, name: str) -> Path:
        return self.workdir / name

    def piv_tool_admin(
        self, key_file: Path, *, algorithm: str | None = None, returncode: int | None = 0
    ) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, str]]]:
        """``piv-tool -A M:9B:<algorithm>`` (default: the card's key's) with the key in
        ``key_file``; its result and the GENERAL AUTHENTICATE exchanges the card traced."""
        algorithm = algorithm or _PIV_TOOL_ALGORITHM[self.profile.management_key_type]
        mark = self.trace_mark()
        result = self.run(
            "piv-tool", "-r", self.reader, "-A", f"M:9B:{algorithm}",
            env={"PIV_EXT_AUTH_KEY": str(key_file)}, returncode=returncode,
        )  # fmt: skip
        auth = [(c, r) for c, r in self.trace_since(mark) if c.startswith(f"00 87 {algorithm} 9B")]
        return result, auth

    def tdes_factory_key(self) -> None:
        """The factory key's 24 bytes as a 3DES key: what yubico-piv-tool 2.2.0 can use."""
        self.ykman(
            "access", "change-management-key", "-m", FACTORY_KEY, "-a", "TDES",
            "-n", FACTORY_KEY, "-f",
        )  # fmt: skip


_TRACE_LINE = re.compile(r"vsc\.apdu: \[\d+\] ([<>]) (.*)$")


@pytest.fixture(scope="class")
def card_args() -> list[str]:
    """Extra emulator arguments for the class's card (none: a factory card in memory).

    tests/e2e/test_tpm_tools.py overrides it to run these classes on a TPM card.
    """
    return []


@pytest.fixture(scope="class")
def piv_card(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    e2e_available: None,
    card_args: list[str],
) -> Iterator[PivCard]:
    """A private pcscd with ``python -m vsc.emulator -vv`` serving a factory card of the
    profile the class is parametrized with.

    For a class that administers the card with yubico-piv-tool (``TDES_KEY``), which
    knows only 3DES, a YubiKey 5.7 first gets the factory key as a 3DES key (through
    ykman, which reads the key's type from the card).
    """
    tools = getattr(request.cls, "TOOLS", ())
    for name in tools:
        program(name)
    profile: PivProfile = request.param
    with (
        PcscdEnv() as pcscd,
        EmulatorProcess(
            pcscd.vpcd_port(0), "-vv", "--profile", profile.name, *card_args
        ) as emulator,
    ):
        pcscd.wait_for_card(
            pcscd.reader(0), present=True, timeout=CARD_TIMEOUT, check=emulator.check_running
        )
        card = PivCard(pcscd, emulator, tmp_path_factory.mktemp("piv"), profile)
        tdes = getattr(request.cls, "TDES_KEY", False)
        if tdes and profile.management_key_type != ManagementKeyType.TDES:
            card.tdes_factory_key()
        yield card


@pytest.fixture
def card(request: pytest.FixtureRequest, piv_card: PivCard) -> PivCard:
    """The class's card, with its pcscd and emulator logs attached to a failure."""
    _remember(request, piv_card.pcscd)
    _remember(request, piv_card.emulator)
    return piv_card


# -- OpenSC: opensc-tool and piv-tool ----------------------------------------------------------


class TestOpenSC:
    PROFILES = ALL_PROFILES
    TOOLS = ("opensc-tool", "piv-tool")

    def test_opensc_tool_names_a_piv_card(self, card: PivCard) -> None:
        result = card.run("opensc-tool", "-r", card.reader, "-n", env={"OPENSC_DEBUG": "3"})
        assert result.stdout.strip() == "Personal Identity Verification Card"
        # Which driver path OpenSC took: the YubiKey's (by the ATR) or the generic PIV one.
        (kind,) = re.findall(r"card info name:.*, type:(\d+),", result.stderr)
        assert int(kind) == (OPENSC_PIV_YUBIKEY if card.yubikey else OPENSC_PIV_GENERIC)
        result = card.run("piv-tool", "-r", card.reader, "-n")
        assert "Personal Identity Verification Card" in result.stdout

    @pytest.mark.parametrize("form", ["text", "binary"])
    def test_piv_tool_admin_mutual_authentication(self, card: PivCard, form: str) -> None:
        # PIV_EXT_AUTH_KEY names a file: the key as XX:XX:... text or as raw bytes.
        key = bytes.fromhex(FACTORY_KEY)
        key_file = card.path(f"admin-key-{form}")
        if form == "text":
            key_file.write_text(key.hex(":"))
        else:
            key_file.write_bytes(key)

        result, auth = card.piv_tool_admin(key_file)

        assert "failed" not in result.stderr, result.stderr
        assert len(auth) == 2, auth  # witness request, then witness + challenge
        assert auth[1][1].endswith("90 00")

    def test_piv_tool_wrong_admin_key_is_refused(self, card: PivCard) -> None:
        key_file = card.path("wrong-admin-key")
        key_file.write_text(bytes.fromhex(OTHER_KEY).hex(":"))

        result, auth = card.piv_tool_admin(key_file, returncode=None)

        assert result.returncode != 0
        assert "admin_mode failed" in result.stderr
        assert [r for _, r in auth][-1] == "69 82"

    def test_piv_tool_admin_with_another_algorithm_is_refused(self, card: PivCard) -> None:
        """A key of another algorithm than the card's: P1 names it, the card answers 6A86."""
        other = "0A" if card.profile.management_key_type == ManagementKeyType.TDES else "03"
        key_file = card.path("admin-key-other-algorithm")
        key_file.write_text(bytes.fromhex(FACTORY_KEY).hex(":"))

        result, auth = card.piv_tool_admin(key_file, algorithm=other, returncode=None)

        assert result.returncode != 0
        assert [r for _, r in auth][-1] == "6A 86"


# -- yubico-piv-tool ------------------------------------------------------------------------


def version_text(profile: PivProfile) -> str:
    return ".".join(map(str, profile.version or ()))


class TestYubicoPivTool:
    PROFILES = ALL_PROFILES
    TOOLS = ("yubico-piv-tool", "openssl", "opensc-tool", "ykman")
    TDES_KEY = True

    def test_version(self, card: PivCard) -> None:
        out = card.yubico("-a", "version").strip()
        if card.yubikey:
            assert out == f"Application version {version_text(card.profile)} found."
        else:
            assert out == "Failed to retrieve application version."

    def test_status(self, card: PivCard) -> None:
        out = card.yubico("-a", "status")
        assert "PIN tries left:\t3" in out
        if card.yubikey:
            assert f"Version:\t{version_text(card.profile)}\n" in out
            assert f"Serial Number:\t{card.serial()}\n" in out
            assert "CHUID:\tNo data available" in out
        else:
            # No Yubico identity; an issued card's CHUID and CCC instead.
            assert "Version:\tNo data available" in out
            assert "Serial Number:\tNo data available" in out
            assert re.search(r"CHUID:\t3019d4e739da739ced39ce739d83685821084210842", out)
            assert re.search(r"CCC:\tf015a000000116ff02", out)

    @pytest.mark.parametrize(
        ("algorithm", "slot", "description"),
        [
            ("RSA2048", "9a", "Public-Key: (2048 bit)"),
            ("ECCP256", "9c", "NIST CURVE: P-256"),
            ("ECCP384", "9d", "NIST CURVE: P-384"),
        ],
        ids=["RSA2048", "ECCP256", "ECCP384"],
    )
    def test_generate(self, card: PivCard, algorithm: str, slot: str, description: str) -> None:
        public = card.path(f"generated-{slot}.pem")
        out = card.yubico("-a", "generate", "-s", slot, "-A", algorithm, "-o", public)
        assert "Successfully generated a new private key." in out

        assert description in openssl("pkey", "-pubin", "-in", public, "-noout", "-text").stdout
        # The card holds that very key: it signs with it (every profile) and, on a
        # YubiKey, GET METADATA shows it as generated (OpenSC's raw APDUs both).
        card.check_signs(int(slot, 16), public)
        sw, meta = card.metadata(int(slot, 16))
        if not card.yubikey:
            assert sw == 0x6D00
            return
        assert sw == 0x9000
        assert meta[0x03] == META_ORIGIN_GENERATED
        assert metadata_public_key(meta[0x04]) == der_public_key(public)

    @pytest.mark.parametrize(
        ("algorithm", "genpkey"),
        [
            ("ECCP256", ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")),
            ("ECCP384", ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384")),
            ("RSA2048", ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")),
        ],
    )
    def test_import_key(self, card: PivCard, algorithm: str, genpkey: Sequence[str]) -> None:
        key = card.path(f"import-{algorithm}.key")
        openssl("genpkey", *genpkey, "-out", key)

        if not card.yubikey:  # IMPORT ASYMMETRIC KEY is Yubico's: 6D00
            out = card.yubico("-a", "import-key", "-s", "9e", "-i", key, returncode=1)
            assert "Unable to import private key" in out
            return
        out = card.yubico("-a", "import-key", "-s", "9e", "-i", key)
        assert "Successfully imported a new private key." in out

        sw, meta = card.metadata(0x9E)
        assert sw == 0x9000
        assert meta[0x03] == META_ORIGIN_IMPORTED
        assert metadata_public_key(meta[0x04]) == der_public_key(key)

    @pytest.mark.yubikey_only  # import-key is Yubico's; test_import_key has the PIV refusal
    def test_imported_key_signs(self, card: PivCard) -> None:
        # The card uses the imported key: a raw ECDSA GENERAL AUTHENTICATE in 9E
        # (PIN policy never) verifies with openssl against the openssl-made key.
        key = card.path("import-sign.key")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
        card.yubico("-a", "import-key", "-s", "9e", "-i", key)
        message = card.path("message")
        message.write_bytes(b"signed by an imported key")
        digest = bytes.fromhex(openssl("dgst", "-sha256", "-r", message).stdout.split()[0])

        template = b"\x7c\x24\x82\x00\x81\x20" + digest
        _, signed = card.apdus(SELECT_PIV, bytes.fromhex("0087119E26") + template + b"\x00")

        assert signed.sw == 0x9000
        fields = parse_dict(parse_dict(signed.data)[0x7C])
        signature = card.path("imported.sig")
        signature.write_bytes(fields[0x82])
        openssl("dgst", "-sha256", "-verify", public_pem(key), "-signature", signature, message)

    def test_import_and_read_certificate(self, card: PivCard) -> None:
        # An RSA-2048 certificate is ~800 bytes: chained on the way in, 61xx on the way out.
        key, cert = card.path("cert.key"), card.path("cert.pem")
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
            "-subj", "/CN=vsc certificate test", "-days", "2",
        )  # fmt: skip

        out = card.yubico("-a", "import-certificate", "-s", "9c", "-i", cert)
        assert "Successfully imported a new certificate." in out

        pem_out, der_out = card.path("read.pem"), card.path("read.der")
        card.yubico("-a", "read-certificate", "-s", "9c", "-o", pem_out)
        card.yubico("-a", "read-certificate", "-s", "9c", "-K", "DER", "-o", der_out)
        assert pem_out.read_text() == cert.read_text()
        assert der_out.read_bytes() == x509.load_pem_x509_certificate(
            cert.read_bytes()
        ).public_bytes(serialization.Encoding.DER)

    def test_verify_pin(self, card: PivCard) -> None:
        assert "Successfully verified PIN." in card.yubico("-a", "verify-pin", "-P", PIN)
        out = card.yubico("-a", "verify-pin", "-P", "000000", returncode=1)
        assert "Pin verification failed, 2 tries left" in out
        assert "PIN tries left:\t2" in card.yubico("-a", "status")
        # The right PIN restores the counter.
        assert "Successfully verified PIN." in card.yubico("-a", "verify-pin", "-P", PIN)
        assert "PIN tries left:\t3" in card.yubico("-a", "status")

    def test_change_pin(self, card: PivCard) -> None:
        new = "87654321"
        assert "Successfully changed the pin code." in card.yubico(
            "-a", "change-pin", "-P", PIN, "-N", new
        )
        assert "2 tries left" in card.yubico("-a", "verify-pin", "-P", PIN, returncode=1)
        assert "Successfully verified PIN." in card.yubico("-a", "verify-pin", "-P", new)
        card.yubico("-a", "change-pin", "-P", new, "-N", PIN)
        assert "Successfully verified PIN." in card.yubico("-a", "verify-pin", "-P", PIN)

    def test_change_puk(self, card: PivCard) -> None:
        new = "11223344"
        assert "Successfully changed the puk code." in card.yubico(
            "-a", "change-puk", "-P", PUK, "-N", new
        )
        out = card.yubico("-a", "change-puk", "-P", PUK, "-N", "55667788", returncode=1)
        assert "2 tries left" in out
        if card.yubikey:  # only GET METADATA tells the PUK's counter
            assert card.metadata(0x81)[1][0x06] == b"\x03\x02"  # (maximum, remaining)
        card.yubico("-a", "change-puk", "-P", new, "-N", PUK)
        if card.yubikey:
            assert card.metadata(0x81)[1][0x06] == b"\x03\x03"

    def test_unblock_pin(self, card: PivCard) -> None:
        for left in ("2 tries left", "1 tries left", "blocked"):
            assert left in card.yubico("-a", "verify-pin", "-P", "000000", returncode=1)
        assert "blocked" in card.yubico("-a", "verify-pin", "-P", PIN, returncode=1)
        assert "PIN tries left:\t0" in card.yubico("-a", "status")

        out = card.yubico("-a", "unblock-pin", "-P", PUK, "-N", PIN)

        assert "Successfully unblocked the pin code." in out
        assert "Successfully verified PIN." in card.yubico("-a", "verify-pin", "-P", PIN)

    def test_set_management_key(self, card: PivCard) -> None:
        blob = card.path("mgm-object")
        blob.write_bytes(b"written with the new key")
        write = ("-a", "write-object", "--id", "0x5fc10e", "-f", "binary", "-i", blob)
        if not card.yubikey:  # SET MANAGEMENT KEY is Yubico's: 6D00
            out = card.yubico("-a", "set-mgm-key", "-n", OTHER_KEY, returncode=1)
            assert "Failed setting the new key" in out
            card.yubico(*write)  # still the factory key
            return
        assert "Successfully set new management key." in card.yubico(
            "-a", "set-mgm-key", "-n", OTHER_KEY
        )
        try:
            out = card.yubico(*write, returncode=1)  # with the default key
            assert "Failed authentication with the application." in out
            card.yubico(f"--key={OTHER_KEY}", *write)
        finally:
            card.yubico(f"--key={OTHER_KEY}", "-a", "set-mgm-key", "-n", FACTORY_KEY)
        card.yubico(*write)  # the factory key works again
        read = card.path("mgm-object.out")
        card.yubico("-a", "read-object", "--id", "0x5fc10e", "-f", "binary", "-o", read)
        assert read.read_bytes() == blob.read_bytes()

    @pytest.mark.parametrize("size", [40, 3000])
    def test_write_and_read_object(self, card: PivCard, size: int) -> None:
        data = bytes((i * 7 + size) & 0xFF for i in range(size))
        blob, out = card.path(f"object-{size}"), card.path(f"object-{size}.out")
        blob.write_bytes(data)

        card.yubico("-a", "write-object", "--id", "0x5fc10d", "-f", "binary", "-i", blob)
        card.yubico("-a", "read-object", "--id", "0x5fc10d", "-f", "binary", "-o", out)

        assert out.read_bytes() == data

    def test_attest(self, card: PivCard) -> None:
        public, attestation, f9 = (card.path(n) for n in ("att.pub", "att.pem", "f9.pem"))
        card.yubico("-a", "generate", "-s", "9a", "-A", "ECCP256", "-o", public)
        if not card.yubikey:  # no attestation key, no ATTEST (6D00)
            assert "Failed to attest data." in card.yubico("-a", "attest", "-s", "9a", returncode=1)
            return

        card.yubico("-a", "attest", "-s", "9a", "-o", attestation)
        card.yubico("-a", "read-certificate", "-s", "f9", "-o", f9)

        assert openssl("verify", "-CAfile", f9, attestation).stdout.strip().endswith(": OK")
        assert der_public_key(attestation) == der_public_key(public)
        cert = x509.load_pem_x509_certificate(attestation.read_bytes())
        serial = cert.extensions.get_extension_for_oid(OID_SERIAL).value
        assert isinstance(serial, x509.UnrecognizedExtension)
        tag, length, value = serial.value[0], serial.value[1], serial.value[2:]
        assert (tag, length) == (0x02, len(value))  # a DER INTEGER
        assert int.from_bytes(value, "big") == card.serial()
        # An imported key cannot be attested.
        key = card.path("attest-import.key")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
        card.yubico("-a", "import-key", "-s", "9e", "-i", key)
        assert "Failed to attest data." in card.yubico("-a", "attest", "-s", "9e", returncode=1)

    @pytest.mark.parametrize(
        ("action", "slot", "algorithm", "success"),
        [
            ("test-signature", "9a", "RSA2048", "Successful RSA verification."),
            ("test-signature", "9c", "ECCP256", "Successful ECDSA verification."),
            ("test-decipher", "9d", "RSA2048", "Successfully performed RSA decryption!"),
            ("test-decipher", "9d", "ECCP384", "Successfully performed ECDH exchange with card."),
        ],
    )
    def test_tool_self_checks(
        self, card: PivCard, action: str, slot: str, algorithm: str, success: str
    ) -> None:
        # yubico-piv-tool signs / decrypts / derives on the card and checks the result
        # against the slot's certificate with OpenSSL itself.
        public, cert = card.path(f"self-{slot}.pub"), card.path(f"self-{slot}.crt")
        card.yubico("-a", "generate", "-s", slot, "-A", algorithm, "-o", public)
        make_certificate(card, public, cert, f"/CN=vsc {action} {slot}")
        card.yubico("-a", "import-certificate", "-s", slot, "-i", cert)

        out = card.yubico("-a", "verify-pin", "-P", PIN, "-a", action, "-s", slot, "-i", cert)

        assert success in out

    def test_pin_retries(self, card: PivCard) -> None:
        if not card.yubikey:  # SET PIN RETRIES is Yubico's: 6D00
            out = card.yubico(
                "-a", "verify-pin", "-a", "pin-retries", "--pin-retries", "5",
                "--puk-retries", "4", "-P", PIN, returncode=1,
            )  # fmt: skip
            assert "Failed changing pin retries." in out
            assert card.pin_tries() == 3
            return
        out = card.yubico(
            "-a", "verify-pin", "-a", "pin-retries", "--pin-retries", "5", "--puk-retries", "4",
            "-P", PIN,
        )  # fmt: skip
        assert "Successfully changed pin retries to 5 and puk retries to 4" in out
        assert "PIN tries left:\t5" in card.yubico("-a", "status")
        card.yubico(
            "-a", "verify-pin", "-a", "pin-retries", "--pin-retries", "3", "--puk-retries", "3",
            "-P", PIN,
        )  # fmt: skip
        assert "PIN tries left:\t3" in card.yubico("-a", "status")

    def test_reset(self, card: PivCard) -> None:
        public, f9_before, f9_after = (card.path(n) for n in ("r.pub", "f9-1.pem", "f9-2.pem"))
        card.yubico("-a", "generate", "-s", "9a", "-A", "ECCP256", "-o", public)
        card.yubico("-a", "set-chuid")
        if card.yubikey:
            card.yubico("-a", "read-certificate", "-s", "f9", "-o", f9_before)
        assert "Reset failed, are pincodes blocked?" in card.yubico("-a", "reset", returncode=1)
        for _ in range(3):
            card.yubico("-a", "verify-pin", "-P", "000000", returncode=1)
        for _ in range(3):
            card.yubico("-a", "unblock-pin", "-P", "00000000", "-N", "000000", returncode=1)
        if not card.yubikey:  # a plain PIV card has no RESET (6D00): blocked for good
            assert "Reset failed, are pincodes blocked?" in card.yubico("-a", "reset", returncode=1)
            assert card.pin_tries() == 0
            return

        assert "Successfully reset the application." in card.yubico("-a", "reset")

        status = card.yubico("-a", "status")
        assert "CHUID:\tNo data available" in status
        assert "PIN tries left:\t3" in status
        assert card.metadata(0x9A)[0] == 0x6A88  # the key is gone
        assert "Successfully verified PIN." in card.yubico("-a", "verify-pin", "-P", PIN)
        card.yubico("-a", "change-puk", "-P", PUK, "-N", PUK)  # the factory PUK
        if card.profile.management_key_type != ManagementKeyType.TDES:
            # The factory key is the profile's own again (AES-192): Debian's tool can't use it.
            out = card.yubico("-a", "generate", "-s", "9a", "-A", "ECCP256", returncode=1)
            assert "Failed authentication with the application." in out
            card.tdes_factory_key()
        card.yubico("-a", "generate", "-s", "9a", "-A", "ECCP256")  # the factory management key
        card.yubico("-a", "read-certificate", "-s", "f9", "-o", f9_after)
        assert f9_after.read_text() == f9_before.read_text()  # attestation survives


# -- pkcs11-tool with opensc-pkcs11.so -------------------------------------------------------------

#: Slot, algorithm, PKCS#11 ID OpenSC gives the slot's objects.
PKCS11_KEYS = (
    ("9a", "RSA2048", "01"),
    ("9c", "ECCP256", "02"),
    ("9d", "ECCP256", "03"),
    ("9e", "ECCP384", "04"),
)


@pytest.fixture(scope="class")
def provisioned(piv_card: PivCard) -> dict[str, Path]:
    """Keys generated on the card, each with an openssl-made certificate (OpenSC needs them).

    Returns the public key file of each slot.
    """
    public_keys: dict[str, Path] = {}
    for slot, algorithm, _ in PKCS11_KEYS:
        public, cert = piv_card.path(f"{slot}.pub"), piv_card.path(f"{slot}.crt")
        piv_card.yubico("-a", "generate", "-s", slot, "-A", algorithm, "-o", public)
        make_certificate(piv_card, public, cert, f"/CN=vsc {slot}")
        piv_card.yubico("-a", "import-certificate", "-s", slot, "-i", cert)
        public_keys[slot] = public
    return public_keys


class TestPkcs11Tool:
    PROFILES = ALL_PROFILES
    TOOLS: tuple[str, ...] = ("pkcs11-tool", "yubico-piv-tool", "openssl", "ykman")
    TDES_KEY = True

    @staticmethod
    def p11(card: PivCard, *args: str | Path, returncode: int | None = 0) -> str:
        result = card.run("pkcs11-tool", "--module", pkcs11_module(), *args, returncode=returncode)
        return result.stdout + result.stderr

    def test_list_slots(self, card: PivCard, provisioned: dict[str, Path]) -> None:
        out = self.p11(card, "--list-slots")
        assert f"Slot 0 (0x0): {card.reader}" in out
        assert "token manufacturer : piv_II" in out
        assert "PIN initialized" in out

    def test_list_objects(self, card: PivCard, provisioned: dict[str, Path]) -> None:
        public = pkcs11_objects(self.p11(card, "--list-objects"))
        private = pkcs11_objects(self.p11(card, "--login", "--pin", PIN, "--list-objects"))

        for slot, algorithm, key_id in PKCS11_KEYS:
            kind = "RSA" if algorithm.startswith("RSA") else "EC"
            (cert,) = [o for o in public if o.kind.startswith("Certificate") and o.id == key_id]
            assert cert.fields["subject"] == f"DN: CN=vsc {slot}"
            assert any(
                o.kind.startswith(f"Public Key Object; {kind}") and o.id == key_id for o in public
            )
            (key,) = [o for o in private if o.kind.startswith("Private Key") and o.id == key_id]
            assert key.kind.startswith(f"Private Key Object; {kind}")
        # Without login only the card authentication key (9E, PIN policy never) is visible.
        assert [o.id for o in public if o.kind.startswith("Private Key")] == ["04"]
        (sign_key,) = [o for o in private if o.kind.startswith("Private Key") and o.id == "02"]
        assert "always authenticate" in sign_key.fields["Access"]

    def test_login(self, card: PivCard, provisioned: dict[str, Path]) -> None:
        out = self.p11(card, "--login", "--pin", "999999", "--list-objects", returncode=None)
        assert "CKR_PIN_INCORRECT" in out
        assert card.pin_tries() == 2
        self.p11(card, "--login", "--pin", PIN, "--list-objects")
        assert card.pin_tries() == 3  # a good login resets the counter

    @pytest.mark.parametrize(
        ("mechanism", "sigopts"),
        [
            ("SHA256-RSA-PKCS", ()),
            (
                "SHA256-RSA-PKCS-PSS",
                ("-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-1"),
            ),
        ],
    )
    def test_rsa_signature(
        self, card: PivCard, provisioned: dict[str, Path], mechanism: str, sigopts: Sequence[str]
    ) -> None:
        data, sig = card.path("rsa-data"), card.path(f"{mechanism}.sig")
        data.write_bytes(b"an RSA signature through PKCS#11")
        self.p11(
            card,
            "--login",
            "--pin",
            PIN,
            "--sign",
            "--id",
            "01",
            "-m",
            mechanism,
            "-i",
            data,
            "-o",
            sig,
        )
        openssl("dgst", "-sha256", *sigopts, "-verify", provisioned["9a"], "-signature", sig, data)

    @pytest.mark.parametrize(
        ("slot", "key_id", "mechanism", "digest"),
        [("9c", "02", "ECDSA-SHA256", "-sha256"), ("9e", "04", "ECDSA-SHA384", "-sha384")],
    )
    def test_ecdsa_signature(
        self,
        card: PivCard,
        provisioned: dict[str, Path],
        slot: str,
        key_id: str,
        mechanism: str,
        digest: str,
    ) -> None:
        # 9C is PIN-always: pkcs11-tool logs in again right before the signature.
        data, sig = card.path("ec-data"), card.path(f"{slot}.sig")
        data.write_bytes(b"an ECDSA signature through PKCS#11")
        self.p11(
            card, "--login", "--pin", PIN, "--sign", "--id", key_id, "-m", mechanism,
            "--signature-format", "openssl", "-i", data, "-o", sig,
        )  # fmt: skip
        openssl("dgst", digest, "-verify", provisioned[slot], "-signature", sig, data)

    @pytest.mark.parametrize(
        ("mechanism", "pkeyopts", "p11opts"),
        [
            ("RSA-PKCS", (), ()),
            (
                "RSA-PKCS-OAEP",
                ("-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
                 "-pkeyopt", "rsa_mgf1_md:sha256"),
                ("--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256"),
            ),
        ],
    )  # fmt: skip
    def test_rsa_decryption(
        self,
        card: PivCard,
        provisioned: dict[str, Path],
        mechanism: str,
        pkeyopts: Sequence[str],
        p11opts: Sequence[str],
    ) -> None:
        plain, secret, out = (card.path(f"{mechanism}.{n}") for n in ("txt", "enc", "dec"))
        plain.write_bytes(b"a session key, say 0123456789abcdef")
        openssl(
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            provisioned["9a"],
            *pkeyopts,
            "-in",
            plain,
            "-out",
            secret,
        )

        self.p11(
            card, "--login", "--pin", PIN, "--decrypt", "--id", "01", "-m", mechanism, *p11opts,
            "-i", secret, "-o", out,
        )  # fmt: skip

        assert out.read_bytes() == plain.read_bytes()

    def test_ecdh_derivation(self, card: PivCard, provisioned: dict[str, Path]) -> None:
        peer, peer_der = card.path("peer.key"), card.path("peer.der")
        ours, theirs = card.path("ecdh.card"), card.path("ecdh.openssl")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", peer)
        openssl("pkey", "-in", peer, "-pubout", "-outform", "DER", "-out", peer_der)

        self.p11(
            card, "--login", "--pin", PIN, "--derive", "--id", "03", "-m", "ECDH1-DERIVE",
            "-i", peer_der, "-o", ours,
        )  # fmt: skip
        openssl("pkeyutl", "-derive", "-inkey", peer, "-peerkey", provisioned["9d"], "-out", theirs)

        assert len(ours.read_bytes()) == 32
        assert ours.read_bytes() == theirs.read_bytes()

    def test_pkcs11_tool_self_test(self, card: PivCard, provisioned: dict[str, Path]) -> None:
        # pkcs11-tool's own battery: digests, RSA signatures (raw, PKCS#1, hashed), decryption.
        out = self.p11(card, "--login", "--pin", PIN, "--test")
        assert "No errors" in out


# -- ykman ----------------------------------------------------------------------------------


class TestYkman:
    PROFILES = YUBIKEYS
    TOOLS = ("ykman", "openssl", "yubico-piv-tool")

    def test_piv_info(self, card: PivCard) -> None:
        out = card.ykman("info")
        assert re.search(rf"PIV version:\s+{re.escape(version_text(card.profile))}\n", out)
        assert re.search(r"PIN tries remaining:\s+3/3\n", out)
        algorithm = card.profile.management_key_type.name
        assert re.search(rf"Management key algorithm:\s+{algorithm}\n", out)
        assert "Using default Management key" in out

    @pytest.mark.parametrize(("algorithm", "slot"), [("ECCP256", "9a"), ("RSA2048", "82")])
    def test_generate_self_sign_and_attest(self, card: PivCard, algorithm: str, slot: str) -> None:
        public, cert, attestation, f9 = (
            card.path(f"yk-{slot}.{n}") for n in ("pub", "crt", "att", "f9")
        )
        card.ykman("keys", "generate", "-m", FACTORY_KEY, "-a", algorithm, slot, public)
        # ykman signs the certificate with the new key on the card (GENERAL AUTHENTICATE).
        card.ykman(
            "certificates", "generate", "-m", FACTORY_KEY, "-P", PIN, "-s", f"CN=ykman {slot}",
            slot, public,
        )  # fmt: skip
        card.ykman("certificates", "export", slot, cert)

        assert openssl("verify", "-CAfile", cert, cert).stdout.strip().endswith(": OK")
        assert der_public_key(cert) == der_public_key(public)
        card.ykman("keys", "attest", slot, attestation)
        card.ykman("certificates", "export", "f9", f9)
        assert openssl("verify", "-CAfile", f9, attestation).stdout.strip().endswith(": OK")
        assert der_public_key(attestation) == der_public_key(public)
        info = card.ykman("keys", "info", slot)
        assert re.search(rf"Algorithm:\s+{algorithm}\n", info)
        assert re.search(r"Origin:\s+GENERATED\n", info)
        assert re.search(r"PIN required for use:\s+ONCE\n", info)

    def test_protected_aes_management_key_then_reset(self, card: PivCard) -> None:
        # An AES-256 key stored on the card under the PIN (PUT/GET DATA 5FC109 and
        # 5FFF00); ykman then authenticates with it using only the PIN.
        card.ykman(
            "access", "change-management-key", "-m", FACTORY_KEY, "-a", "AES256", "--protect",
            "-P", PIN, "-f",
        )  # fmt: skip
        info = card.ykman("info")
        assert re.search(r"Management key algorithm:\s+AES256\n", info)
        assert "Management key is stored on the YubiKey, protected by PIN." in info
        card.ykman("keys", "generate", "-P", PIN, "-a", "ECCP384", "9e", card.path("aes.pub"))
        assert re.search(r"Algorithm:\s+ECCP384\n", card.ykman("keys", "info", "9e"))

        out = card.ykman("reset", "-f")

        assert "Reset complete." in out
        info = card.ykman("info")
        algorithm = card.profile.management_key_type.name
        assert re.search(rf"Management key algorithm:\s+{algorithm}\n", info)
        assert "Using default Management key" in info
        assert "Slot 9E" not in info

    def test_yubico_piv_tool_and_the_factory_key(self, card: PivCard) -> None:
        """yubico-piv-tool 2.2.0 authenticates with 3DES only: a YubiKey 5.7's AES-192
        factory key refuses it (6A86) until ykman makes the key a 3DES one."""
        public = card.path("tdes.pub")
        generate = ("-a", "generate", "-s", "9a", "-A", "ECCP256", "-o", public)
        if card.profile.management_key_type == ManagementKeyType.TDES:
            card.yubico(*generate)
            return
        out = card.yubico(*generate, returncode=1)
        assert "Failed authentication with the application." in out
        card.tdes_factory_key()
        try:
            assert "Successfully generated" in card.yubico(*generate)
            assert re.search(r"Management key algorithm:\s+TDES\n", card.ykman("info"))
        finally:
            card.ykman("access", "change-management-key", "-m", FACTORY_KEY, "-a", "AES192",
                       "-n", FACTORY_KEY, "-f")  # fmt: skip


def test_ykman_does_not_take_a_plain_piv_card_for_a_yubikey(
    tmp_path_factory: pytest.TempPathFactory, e2e_available: None
) -> None:
    """No Management application, no GET VERSION (6D00): ykman's PIV commands refuse the
    card as they would a government PIV card."""
    program("ykman")
    with (
        PcscdEnv() as pcscd,
        EmulatorProcess(pcscd.vpcd_port(0), "--profile", PIV.name) as emulator,
    ):
        pcscd.wait_for_card(
            pcscd.reader(0), present=True, timeout=CARD_TIMEOUT, check=emulator.check_running
        )
        card = PivCard(pcscd, emulator, tmp_path_factory.mktemp("piv"), PIV)
        out = card.run("ykman", "--reader", card.reader, "info", returncode=None)
        assert "Serial number" not in out.stdout
        result = card.run("ykman", "--reader", card.reader, "piv", "info", returncode=None)
        assert result.returncode != 0
