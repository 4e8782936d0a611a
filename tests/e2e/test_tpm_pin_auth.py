"""The PIN is the TPM key's authorisation, through pcscd + vpcd + swtpm with real clients.

A stored card on its own swtpm served by ``python -m vsc.emulator``:
yubico-piv-tool generates a key with the management key only (its authValue
is then random, pending), OpenSC's pkcs11-tool signs after a VERIFY (which
makes it PIN-derived), yubico-piv-tool changes the PIN and unblocks it with
the PUK, and the key keeps signing with each new PIN; every signature is
checked with ``cryptography``. Between the steps the emulator is stopped and
``vsc info`` says how the key is authorised, and the key's blob is loaded in
the TPM (tpm2-pytss' ESAPI) to check that it takes exactly the authValue
derived from the current PIN. GIDS: gids-tool personalises, pkcs11-tool
generates and signs, the PIN is changed through PKCS#11, the key signs with
the new one and its blob takes the new PIN's value.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from applets.piv.profile import DEFAULT_PROFILE
from vsc.store import BackendSpec, CardStore, DaParameters
from vsc.testing import PcscdEnv
from vsc.testing.swtpm import Swtpm, swtpm_skip_reason

from .conftest import CARD_TIMEOUT, StartEmulator, unavailable
from .test_gids_tools import ADMIN_KEY, SERIAL
from .test_piv_tools import CLIENT_TIMEOUT, PIN, PUK, PivCard, make_certificate, pkcs11_module

pytestmark = pytest.mark.e2e

NEW_PIN, UNBLOCKED_PIN = "24681357", "97531864"


@dataclass
class TpmCard:
    """A stored card on its own swtpm: its emulator arguments, and what opens it in-process."""

    tcti: str
    store: Path
    name: str

    @property
    def args(self) -> list[str]:
        return ["--card", self.name, "--store", str(self.store), "--tpm", self.tcti]

    def info(self) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "vsc.cli", "info", self.name, "--store", str(self.store),
             "--tpm", self.tcti],
            capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def takes(self, binding: str, record: str, pin: bytes, *others: bytes) -> list[bool]:
        """Whether the key of ``record`` takes the authValue derived from ``pin`` (the PIN
        now), from each of ``others``, and a random value: the blob from the card's record
        (opened with ``pin``), used in the TPM through ESAPI directly."""
        from vsc.store.tpmkeys import decode_record

        from ..store.tpm_esapi import key_use, pin_derived_auth

        stored = CardStore(self.store).open(self.name, BackendSpec.tpm(self.tcti))
        try:
            stored.unlock(binding, "pin", pin)
            raw = stored.get(record)
            assert raw is not None
            blob = decode_record(0x81, raw).blob
            auths = [pin_derived_auth(stored, binding, p) for p in (pin, *others)]
            return [key_use(self.tcti, blob, auth) == 0 for auth in (*auths, bytes(32))]
        finally:
            stored.lock()
            stored.close()


@pytest.fixture
def tpm_card(tmp_path: Path) -> Iterator[TpmCard]:
    """A card on its own swtpm (requested before the emulator, so it outlives it)."""
    reason = swtpm_skip_reason()
    if reason is not None:
        unavailable(reason)
    from vsc.store.tpm import Tpm

    with Swtpm() as tpm:
        Tpm(tpm.tcti).set_da_parameters(DaParameters(32, 7200, 86400), lockout_auth=b"")
        yield TpmCard(tpm.tcti, tmp_path / "store", "c")


def block(pin: str) -> bytes:
    return pin.encode().ljust(8, b"\xff")


def p11_sign(card: PivCard, pin: str, public: Path) -> None:
    """pkcs11-tool logs in with ``pin`` and signs with 9A; ``cryptography`` checks it."""
    data, signature = card.path("data"), card.path("data.sig")
    data.write_bytes(f"signed with PIN {pin}".encode())
    card.run(
        "pkcs11-tool", "--module", pkcs11_module(), "--login", "--pin", pin, "--sign",
        "--id", "01", "-m", "ECDSA-SHA256", "--signature-format", "openssl",
        "-i", data, "-o", signature,
    )  # fmt: skip
    key = serialization.load_pem_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature.read_bytes(), data.read_bytes(), ec.ECDSA(hashes.SHA256()))


def stop(emulator: object, pcscd: PcscdEnv) -> None:
    assert emulator.stop() == 0  # type: ignore[attr-defined]
    pcscd.wait_for_card(pcscd.reader(0), present=False, timeout=CARD_TIMEOUT)


def test_piv_key_follows_the_pin_through_change_and_unblock(
    tpm_card: TpmCard, start_emulator: StartEmulator, pcscd: PcscdEnv, tmp_path: Path
) -> None:
    emulator = start_emulator(*tpm_card.args)
    card = PivCard(pcscd, emulator, tmp_path, DEFAULT_PROFILE)
    public, cert = card.path("9a.pub"), card.path("9a.crt")
    card.yubico("-a", "generate", "-s", "9a", "-A", "ECCP256", "-o", public)  # management key
    make_certificate(card, public, cert, "/CN=pin-derived")
    card.yubico("-a", "import-certificate", "-s", "9a", "-i", cert)
    stop(emulator, pcscd)
    assert "9A authentication: ECCP256, PIN once" in tpm_card.info()
    assert "in tpm (pending PIN" in tpm_card.info()

    emulator = start_emulator(*tpm_card.args)
    card.emulator = emulator
    p11_sign(card, PIN, public)  # its VERIFY made the key's authValue PIN-derived
    stop(emulator, pcscd)
    assert "in tpm (PIN)" in tpm_card.info()
    assert tpm_card.takes("piv", "piv/slot/9a/key", block(PIN)) == [True, False]

    emulator = start_emulator(*tpm_card.args)
    card.emulator = emulator
    card.yubico("-a", "change-pin", "-P", PIN, "-N", NEW_PIN)
    p11_sign(card, NEW_PIN, public)
    for _ in range(3):
        card.yubico("-a", "verify-pin", "-P", "00000000", returncode=1)
    card.yubico("-a", "unblock-pin", "-P", PUK, "-N", UNBLOCKED_PIN)
    p11_sign(card, UNBLOCKED_PIN, public)
    stop(emulator, pcscd)
    taken = tpm_card.takes("piv", "piv/slot/9a/key", block(UNBLOCKED_PIN), block(NEW_PIN))
    assert taken == [True, False, False]


def test_gids_key_follows_a_pin_change(
    tpm_card: TpmCard, start_emulator: StartEmulator, pcscd: PcscdEnv, tmp_path: Path
) -> None:
    from .test_gids_tools import Gids

    emulator = start_emulator(*tpm_card.args, "--applet", "gids")
    gids = Gids(pcscd, emulator, tmp_path)
    gids.gids_tool("-X", "--serial-number", SERIAL, "--admin-key", ADMIN_KEY, "--pin", PIN)
    gids.pkcs11("--login", "--pin", PIN, "--keypairgen", "--key-type", "rsa:2048",
                "--label", "k", "--usage-sign")  # fmt: skip
    pub_der = gids.path("pub.der")
    gids.pkcs11("--read-object", "--type", "pubkey", "--id", "00", "-o", pub_der)
    gids.pkcs11("--login", "--pin", PIN, "--change-pin", "--new-pin", NEW_PIN)
    data, signature = gids.path("data"), gids.path("sig")
    data.write_bytes(b"signed with the GIDS card's new PIN")
    gids.pkcs11("--login", "--pin", NEW_PIN, "--sign", "--mechanism", "SHA256-RSA-PKCS",
                "--id", "00", "-i", data, "-o", signature)  # fmt: skip
    key = serialization.load_der_public_key(pub_der.read_bytes())
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(signature.read_bytes(), data.read_bytes(), padding.PKCS1v15(), hashes.SHA256())
    stop(emulator, pcscd)
    assert "in tpm (PIN)" in tpm_card.info()
    taken = tpm_card.takes("gids", "gids/key/81/key", NEW_PIN.encode(), PIN.encode())
    assert taken == [True, False, False]
