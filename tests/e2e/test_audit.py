"""Every security event is audited, whichever path it takes, in a log that shows tampering.

``vsc`` (a subprocess) creates a card; ``python -m vsc.emulator --card`` serves
it to a private pcscd; yubico-piv-tool and a pyscard "remote tool" change the
PIN and the PUK, fail them, block the PIN, unblock it with the PUK and change
the admin key through APDUs. Checked:

* each of these is a record with time, card, event, actor (user, uid, pid,
  ``via``: ``emulator``) and outcome (``success`` / ``refused``), and no
  record holds a PIN, PUK or key;
* ``vsc audit --verify`` accepts the log as written, and finds a record
  edited, a record removed from the middle and records cut from the end (the
  card's database anchors its last record);
* a refused ``vsc create`` is audited too;
* a GIDS card's PIN and PUK changes (OpenSC's PKCS#11 module, raw APDUs), a PIN
  blocked by a wrong old PIN and its unblock with the PUK are recorded under
  the same names and outcomes as a PIV card's;
* a TPM card (PIV and GIDS) whose swtpm is in dictionary-attack lockout answers
  the right PIN ``6985``, gives the try back and records ``tpm-lockout``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vsc.testing import PcscdEnv
from vsc.testing.swtpm import Swtpm, swtpm_skip_reason

from ..lifecycle.conftest import NEW_PIN, PIN, Vsc
from .conftest import StartEmulator, unavailable
from .test_lifecycle import RemoteTool, Serving, yubico
from .test_opensc_engine import send_apdus
from .test_piv_tools import CLIENT_TIMEOUT, pkcs11_module, program

pytestmark = pytest.mark.e2e

PUK, NEW_PUK, WRONG = "87654321", "11223344", "99999999"
NEW_ADMIN_KEY = "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a09080"


@pytest.fixture
def vsc(tmp_path: Path) -> Vsc:
    program("yubico-piv-tool")
    return Vsc(tmp_path / "store", ["--insecure-plain"])


def test_security_events_through_the_card_are_audited_and_chained(
    vsc: Vsc, pcscd: PcscdEnv, start_emulator: StartEmulator
) -> None:
    refused = vsc.run("create", "alice", "--pin", "12", status=3)
    created = vsc.run("create", "alice", "--pin", PIN, "--puk", PUK, "--json").json()
    admin_key = created["admin_key"]
    serving = Serving(vsc, pcscd, start_emulator, "alice")
    serving.start()
    yubico(pcscd, "-a", "change-pin", "-P", PIN, "-N", NEW_PIN)
    yubico(pcscd, "-a", "change-pin", "-P", WRONG, "-N", PIN, returncode=1)
    yubico(pcscd, "-a", "change-puk", "-P", PUK, "-N", NEW_PUK)
    for _ in range(2):  # the two tries left
        yubico(pcscd, "-a", "verify-pin", "-P", WRONG, returncode=1)
    yubico(pcscd, "-a", "unblock-pin", "-P", WRONG, "-N", PIN, returncode=1)
    yubico(pcscd, "-a", "unblock-pin", "-P", NEW_PUK, "-N", PIN)
    set_key = bytes.fromhex("00FFFFFF1B039B18") + bytes.fromhex(NEW_ADMIN_KEY)
    assert RemoteTool(pcscd, admin_key).run(set_key) == [0x9000]
    serving.stop()

    records = list(vsc.audit.events("alice"))
    card_side = [(e["event"], e["outcome"]) for e in records if e["via"] == "emulator"]
    assert card_side == [
        ("pin-change", "success"),
        ("pin-change", "refused"),
        ("puk-change", "success"),
        ("pin-blocked", "refused"),
        ("puk-unblock", "refused"),
        ("puk-unblock", "success"),
        ("admin-key-change", "success"),
    ]
    assert [(e["event"], e["outcome"]) for e in records[:1]] == [("create", "refused")]
    for record in records:
        assert {"time", "card", "event", "outcome", "user", "uid", "pid", "via"} <= record.keys()
        assert record["card"] == "alice"
    text = vsc.audit_text()
    for secret in (PIN, NEW_PIN, PUK, NEW_PUK, admin_key, NEW_ADMIN_KEY):
        assert secret.lower() not in text.lower()
    assert "rule min-length" in refused.stderr

    verified = vsc.run("audit", "--verify", "--json").json()
    assert verified["ok"] and verified["records"] == len(records)
    assert verified["anchors_checked"] == 1


def lines_of(vsc: Vsc) -> list[str]:
    return (vsc.store / "audit.log").read_text().splitlines(keepends=True)


def test_audit_verify_finds_edits_removals_and_a_cut_end(vsc: Vsc) -> None:
    vsc.run("create", "alice", "--pin", PIN)
    vsc.run("create", "bob", "--pin", PIN)
    vsc.run("lock", "bob")
    original = lines_of(vsc)
    head = vsc.run("audit", "--verify").stdout
    assert "the chain is intact" in head

    edited = list(original)
    record = json.loads(edited[1])
    record["user"] = "mallory"
    edited[1] = json.dumps(record) + "\n"
    (vsc.store / "audit.log").write_text("".join(edited))
    found = vsc.run("audit", "--verify", status=1)
    assert "line 2: record 2 was changed" in found.stdout

    (vsc.store / "audit.log").write_text("".join(original[:1] + original[2:]))
    found = vsc.run("audit", "--verify", status=1)
    assert "does not follow record 1" in found.stdout

    # Cut from the end: the chain that is left is intact, but bob's database
    # anchors the record of its lock.
    (vsc.store / "audit.log").write_text("".join(original[:-1]))
    found = vsc.run("audit", "--verify", status=1)
    assert "card 'bob'" in found.stdout and "cut" in found.stdout

    (vsc.store / "audit.log").write_text("".join(original))
    vsc.run("audit", "--verify")


# -- GIDS -------------------------------------------------------------------------------------

GIDS_PIN, GIDS_NEW_PIN = "24681357", "13572468"
SELECT_GIDS = bytes.fromhex("00A4040009A0000003974254465900")


def change_reference(p2: int, old: str, new: str) -> bytes:
    """CHANGE REFERENCE DATA (P1 00: old value then new) of the PIN (80) or PUK (81)."""
    data = (old + new).encode()
    return bytes((0x00, 0x24, 0x00, p2, len(data))) + data


def unblock_with_puk(puk: str, new_pin: str) -> bytes:
    """RESET RETRY COUNTER of the PIN with the PUK and a new PIN (P1 00)."""
    data = (puk + new_pin).encode()
    return bytes((0x00, 0x2C, 0x00, 0x80, len(data))) + data


def test_gids_pin_and_puk_changes_through_the_card_are_audited(
    vsc: Vsc, pcscd: PcscdEnv, start_emulator: StartEmulator
) -> None:
    """A GIDS card's PIN changed with OpenSC's PKCS#11 module (its gids driver VERIFYs the
    old PIN, then sends CHANGE REFERENCE DATA with old and new), its PUK (no OpenSC client
    knows it), wrong old PINs (the last blocks it) and the unblock with the PUK with raw
    APDUs: each event under the name and outcome a PIV card's has, no secret in the log."""
    for name in ("pkcs11-tool", "opensc-tool"):
        program(name)
    created = vsc.run(
        "create", "g", "--applet", "gids", "--pin", GIDS_PIN, "--puk", PUK, "--json"
    ).json()
    serving = Serving(vsc, pcscd, start_emulator, "g")
    serving.start()
    pkcs11 = ["pkcs11-tool", "--module", pkcs11_module(), "--change-pin"]
    changed = pcscd.run(
        [*pkcs11, "--pin", GIDS_PIN, "--new-pin", GIDS_NEW_PIN], timeout=CLIENT_TIMEOUT
    )
    assert changed.returncode == 0, changed.stdout + changed.stderr
    # A wrong old PIN fails the driver's VERIFY: no change is even asked for.
    wrong = pcscd.run([*pkcs11, "--pin", WRONG, "--new-pin", GIDS_PIN], timeout=CLIENT_TIMEOUT)
    assert wrong.returncode != 0
    exchanges = send_apdus(
        pcscd,
        SELECT_GIDS,
        change_reference(0x80, WRONG, GIDS_PIN),
        change_reference(0x81, PUK, NEW_PUK),
        change_reference(0x81, WRONG, PUK),
        change_reference(0x80, WRONG, GIDS_PIN),  # the last try: the PIN is blocked
        unblock_with_puk(WRONG, GIDS_PIN),
        unblock_with_puk(NEW_PUK, GIDS_PIN),
    )
    assert [e.sw for e in exchanges] == [0x9000, 0x63C1, 0x9000, 0x63C2, 0x63C0, 0x63C1, 0x9000]
    serving.stop()

    records = [e for e in vsc.audit.events("g") if e["via"] == "emulator"]
    assert [(e["event"], e["outcome"], e.get("tries_left")) for e in records] == [
        ("pin-change", "success", None),
        ("pin-change", "refused", 1),
        ("puk-change", "success", None),
        ("puk-change", "refused", 2),
        ("pin-blocked", "refused", None),  # the same names as a PIV card's
        ("pin-change", "refused", 0),
        ("puk-unblock", "refused", 1),
        ("puk-unblock", "success", None),
    ]
    for record in records:
        assert {"time", "user", "uid", "pid"} <= record.keys() and record["card"] == "g"
    text = vsc.audit_text() + serving.log_text()
    for secret in (GIDS_PIN, GIDS_NEW_PIN, PUK, NEW_PUK, WRONG, created["admin_key"]):
        assert secret.lower() not in text.lower()
    assert vsc.run("audit", "--verify", "--json").json()["ok"]


# -- the TPM's dictionary-attack lockout -----------------------------------------------------

SELECT_PIV = bytes.fromhex("00A4040005A000000308")


def verify_pin(pin: str = "", *, pad: bool = True) -> bytes:
    """VERIFY of the PIN (80), PIV's padded with FF to 8 bytes; without a PIN: its status."""
    if not pin:
        return bytes.fromhex("00200080")
    data = pin.encode().ljust(8, b"\xff") if pad else pin.encode()
    return bytes((0x00, 0x20, 0x00, 0x80, len(data))) + data


@pytest.fixture
def tpm_two_tries() -> Iterator[Swtpm]:
    """A swtpm that locks out after 2 wrong authorisations (set with tpm2-tools), for an
    hour. Requested before ``start_emulator``: the emulator stops before the TPM does."""
    reason = swtpm_skip_reason()
    if reason is not None:
        unavailable(reason)
    with Swtpm() as tpm:
        subprocess.run(
            [program("tpm2_dictionarylockout"), "--setup-parameters", "--max-tries=2",
             "--recovery-time=3600", "--lockout-recovery-time=3600", "--tcti", tpm.tcti],
            check=True, capture_output=True, timeout=CLIENT_TIMEOUT,
        )  # fmt: skip
        yield tpm


@pytest.mark.parametrize("applet", ["piv", "gids"])
def test_a_tpm_lockout_through_the_card_is_audited(
    tmp_path: Path,
    tpm_two_tries: Swtpm,
    pcscd: PcscdEnv,
    start_emulator: StartEmulator,
    applet: str,
) -> None:
    """Two wrong PINs through pcscd put the TPM into dictionary-attack lockout; the right
    PIN is then not even checked: 6985, the card's try given back, and a ``tpm-lockout``
    record of the card (``via``: the emulator)."""
    program("opensc-tool")
    vsc = Vsc(tmp_path / "store", ["--tpm", tpm_two_tries.tcti])
    vsc.run("create", "alice", "--applet", applet, "--pin", PIN)
    serving = Serving(vsc, pcscd, start_emulator, "alice")
    serving.start()
    pad = applet == "piv"
    exchanges = send_apdus(
        pcscd,
        SELECT_PIV if applet == "piv" else SELECT_GIDS,
        verify_pin(WRONG, pad=pad),
        verify_pin(WRONG, pad=pad),
        verify_pin(PIN, pad=pad),
        verify_pin(),
    )
    assert [e.sw for e in exchanges] == [0x9000, 0x63C2, 0x63C1, 0x6985, 0x63C1]
    serving.stop()
    from vsc.store.tpm import Tpm

    da = Tpm(tpm_two_tries.tcti).da_status()
    assert da.locked_out, da

    records = [e for e in vsc.audit.events("alice") if e["via"] == "emulator"]
    assert [(e["event"], e["outcome"], e.get("what")) for e in records] == [
        ("tpm-lockout", "refused", "pin")
    ]
    assert "dictionary-attack lockout" in records[0]["message"]
    text = vsc.audit_text() + serving.log_text()
    for secret in (PIN, WRONG):
        assert secret not in text
