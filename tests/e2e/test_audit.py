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
* a refused ``vsc create`` is audited too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vsc.testing import PcscdEnv

from ..lifecycle.conftest import NEW_PIN, PIN, Vsc
from .conftest import StartEmulator
from .test_lifecycle import RemoteTool, Serving, yubico
from .test_piv_tools import program

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
