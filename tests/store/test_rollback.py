"""Rollback protection: a card's files against its TPM NV counter, on a real swtpm.

Each security-relevant change advances the card's counter, so a copy of the
files taken before it is refused ("rolled back") even though it would still
open on this TPM (its blobs are valid: the old PIN's seal would open with the
old PIN). Files edited or put together from copies of different ages fail the
MAC; a change whose counter increment was interrupted is finished at the next
open; reading, and giving tries back, write nothing to the TPM.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import require_swtpm

require_swtpm()  # before importing the tpm backend, which needs tpm2-pytss

from tpm2_pytss import TPM2_CAP, TPM2_HT  # noqa: E402

from vsc.cliutil import EXIT_FAILURE  # noqa: E402
from vsc.store import (  # noqa: E402
    AuthFailed,
    BackendSpec,
    BackendUnavailable,
    CardSettings,
    CardStore,
    CorruptStore,
    StoredCard,
    bound,
)
from vsc.store.errors import RolledBack  # noqa: E402
from vsc.store.protect import CounterRef  # noqa: E402
from vsc.store.tpm import Tpm, TpmCounterBank  # noqa: E402
from vsc.testing.swtpm import Swtpm  # noqa: E402

from ..lifecycle.conftest import Vsc  # noqa: E402

PIN, NEW_PIN, PUK = b"123456\xff\xff", b"24681357", b"12345678"


def personalise(store: CardStore, spec: BackendSpec) -> None:
    with store.create("alice", spec) as card:
        card.set_counter("pin", 3)
        card.create_binding("piv", {"pin": PIN, "puk": PUK})
        card.put("key/9a", b"old key", protection=bound("piv"))
        card.put("cert/9a", b"certificate")


def snapshot(store: CardStore, into: Path) -> Path:
    shutil.copytree(store.path_of("alice"), into)
    return into


def put_back(store: CardStore, copy: Path) -> None:
    shutil.rmtree(store.path_of("alice"))
    shutil.copytree(copy, store.path_of("alice"))


def counter_value(card: StoredCard) -> int:
    assert card.rollback is not None
    return card.rollback.state.counter


def nv_indices(tcti: str) -> set[int]:
    def work(op: object) -> set[int]:
        ctx = op.ctx  # type: ignore[attr-defined]
        _, data = ctx.get_capability(TPM2_CAP.HANDLES, int(TPM2_HT.NV_INDEX) << 24, 64)
        return {int(h) for h in data.data.handles}

    return Tpm(tcti).run(work)


def wrong_pin(card: StoredCard) -> None:
    with pytest.raises(AuthFailed):
        card.unlock("piv", "pin", b"999999\xff\xff", counter="pin")


def change_pin(card: StoredCard) -> None:
    card.unlock("piv", "pin", PIN, counter="pin")
    card.rebind("piv", "pin", NEW_PIN)


def replace_key(card: StoredCard) -> None:
    card.put("key/9a", b"new key", protection=bound("piv"))


def destroy_key(card: StoredCard) -> None:
    card.delete("key/9a")


def block_pin(card: StoredCard) -> None:
    card.set_counter("pin", 3, 0)


@pytest.mark.parametrize("change", [wrong_pin, change_pin, replace_key, destroy_key, block_pin])
def test_an_older_copy_is_refused_after_each_security_change(
    tmp_path: Path, store: CardStore, swtpm: Swtpm, change: Callable[[StoredCard], None]
) -> None:
    spec = BackendSpec.tpm(swtpm.tcti)
    personalise(store, spec)
    old = snapshot(store, tmp_path / "old")
    with store.open("alice", spec) as card:
        before = counter_value(card)
        change(card)
        assert counter_value(card) > before
    put_back(store, old)
    with pytest.raises(RolledBack, match="rolled back") as refused:
        store.open("alice", spec)
    assert f"at state {before}" in str(refused.value)
    assert not store.info("alice").in_use  # the refusal released the card


def test_the_newest_copy_still_opens(tmp_path: Path, store: CardStore, swtpm: Swtpm) -> None:
    spec = BackendSpec.tpm(swtpm.tcti)
    personalise(store, spec)
    with store.open("alice", spec) as card:
        change_pin(card)
    newest = snapshot(store, tmp_path / "newest")
    put_back(store, newest)
    with store.open("alice", spec) as card:
        card.unlock("piv", "pin", NEW_PIN, counter="pin")
        assert card.get("key/9a") == b"old key"


def test_counter_writes_only_when_it_matters(store: CardStore, swtpm: Swtpm) -> None:
    """One increment per PIN attempt (before the comparison); none for reads or a restore."""
    spec = BackendSpec.tpm(swtpm.tcti)
    personalise(store, spec)
    with store.open("alice", spec) as card:
        start = counter_value(card)
        card.unlock("piv", "pin", PIN, counter="pin")  # decrement (+1), restore (waived)
        assert counter_value(card) == start + 1
        assert card.get("key/9a") == b"old key" and card.counter("pin").remaining == 3
        card.succeed("pin")  # the counter was full: nothing changes, nothing is written
        assert counter_value(card) == start + 1
        wrong_pin(card)
        assert counter_value(card) == start + 2
        # The decrement was in the TPM before the comparison, the restore never is:
        assert card.rollback is not None and card.rollback.state.files == start + 2


def test_edited_or_mixed_files_fail_the_check(
    tmp_path: Path, store: CardStore, swtpm: Swtpm
) -> None:
    spec = BackendSpec.tpm(swtpm.tcti)
    personalise(store, spec)
    with store.open("alice", spec) as card:
        wrong_pin(card)
    database = store.path_of("alice") / "card.db"
    with sqlite3.connect(database) as db:  # give the tries back by hand
        db.execute("UPDATE counters SET remaining = maximum")
    with pytest.raises(CorruptStore, match="fail their rollback check"):
        store.open("alice", spec)


def test_an_interrupted_increment_is_finished_at_open(
    tmp_path: Path, store: CardStore, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = BackendSpec.tpm(swtpm.tcti)
    personalise(store, spec)
    old = snapshot(store, tmp_path / "old")

    def lost(self: TpmCounterBank, *args: object) -> None:
        raise BackendUnavailable("the TPM went away")

    with store.open("alice", spec) as card:
        before = counter_value(card)
        monkeypatch.setattr(TpmCounterBank, "increment", lost)
        # The decrement is on disk, the counter not advanced: nothing is compared, and the
        # try is given back (a change that only gives back needs no counter).
        with pytest.raises(BackendUnavailable):
            card.unlock("piv", "pin", PIN, counter="pin")
        assert card.counter("pin").remaining == 3
        with pytest.raises(BackendUnavailable):  # no other change goes in meanwhile
            card.put("cert/9a", b"another certificate")
        monkeypatch.undo()
    with store.open("alice", spec) as card:  # one ahead: the open finishes the increment
        assert counter_value(card) == before + 1
    put_back(store, old)
    with pytest.raises(RolledBack):
        store.open("alice", spec)


def test_an_increment_whose_answer_was_lost_is_not_counted_twice(
    tmp_path: Path, store: CardStore, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TPM advanced the counter but the answer was lost (the TPM died mid-reply): the
    change is saved and reported done, and the counter is not advanced a second time (the
    card would then look rolled back)."""
    spec = BackendSpec.tpm(swtpm.tcti)
    personalise(store, spec)
    real = TpmCounterBank.increment

    def answer_lost(self: TpmCounterBank, ref: CounterRef, auth: bytes) -> None:
        real(self, ref, auth)
        monkeypatch.undo()
        raise BackendUnavailable("lost the TPM mid-reply")

    with store.open("alice", spec) as card:
        monkeypatch.setattr(TpmCounterBank, "increment", answer_lost)
        change_pin(card)  # its PIN try is counted before the comparison, then the change
        card.unlock("piv", "pin", NEW_PIN, counter="pin")
    with store.open("alice", spec) as card:
        assert card.rollback is not None and card.rollback.state.files == counter_value(card)
        card.unlock("piv", "pin", NEW_PIN, counter="pin")


def test_destroy_frees_the_counter_even_of_a_rolled_back_card(
    tmp_path: Path, store: CardStore, swtpm: Swtpm
) -> None:
    spec = BackendSpec.tpm(swtpm.tcti)
    before = nv_indices(swtpm.tcti)
    personalise(store, spec)
    old = snapshot(store, tmp_path / "old")
    with store.open("alice", spec) as card:
        assert card.rollback is not None
        handle = card.rollback.state.handle
        wrong_pin(card)
    assert nv_indices(swtpm.tcti) == before | {handle}
    put_back(store, old)
    store.destroy("alice", spec)
    assert nv_indices(swtpm.tcti) == before
    assert not store.exists("alice")


def test_other_backends_and_older_cards_have_no_counter(
    tmp_path: Path, store: CardStore, swtpm: Swtpm
) -> None:
    with store.create("plain", BackendSpec.plain()) as card:
        assert card.rollback is None
        assert card.rollback_summary == "none: the plain backend has no hardware counter"
    legacy = CardSettings.legacy_card()
    with store.create("older", BackendSpec.tpm(swtpm.tcti), settings=legacy) as card:
        assert card.rollback is None
        assert card.rollback_summary == "none: the card was made before rollback protection"
    with store.create("alice", BackendSpec.tpm(swtpm.tcti)) as card:
        assert card.rollback_summary.startswith("TPM NV counter 0x01")
        assert card.rollback_summary.endswith("the files in step")


def test_vsc_info_shows_the_counter_and_refuses_a_rolled_back_card(
    tmp_path: Path, swtpm: Swtpm
) -> None:
    vsc = Vsc(tmp_path / "store", ["--tpm", swtpm.tcti])
    vsc.run("create", "alice", "--pin", "24681357")
    shown = vsc.run("info", "alice").stdout
    assert "rollback:      TPM NV counter 0x01" in shown and "the files in step" in shown
    store = CardStore(tmp_path / "store")
    old = snapshot(store, tmp_path / "old")
    with store.open("alice", BackendSpec.tpm(swtpm.tcti)) as card:
        card.set_counter("piv/pin", 3, 1)  # as two wrong PINs would
    put_back(store, old)
    # The CLI's status for a card it cannot open (the emulator's is 2: see the e2e test).
    refused = vsc.run("info", "alice", status=EXIT_FAILURE)
    assert "rolled back" in refused.stderr


def test_an_owned_tpm_needs_its_owner_authorisation_for_the_counter(
    store: CardStore, swtpm: Swtpm, caplog: pytest.LogCaptureFixture
) -> None:
    """A managed machine's TPM (owner authorisation set): a card made without it still works
    but has no counter, loudly; given the owner authorisation, the card gets one."""
    subprocess.run(
        ["tpm2_changeauth", "-c", "owner", "owner-secret", "-T", swtpm.tcti],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    owned = BackendSpec.tpm(swtpm.tcti, owner_auth=b"owner-secret")
    Tpm(swtpm.tcti, owner_auth=b"owner-secret").persist_srk()
    with store.create("without", BackendSpec.tpm(swtpm.tcti)) as card:
        assert card.rollback is None
        assert card.rollback_summary.startswith("NONE: no TPM counter could be defined")
    assert "created WITHOUT rollback protection" in caplog.text
    assert "owner authorisation is set" in caplog.text
    with store.create("with", owned) as card:
        assert card.rollback is not None
    store.destroy("with", owned)


def test_audit_anchors_keep_a_protected_card_openable(tmp_path: Path, swtpm: Swtpm) -> None:
    """Each ``vsc`` command's audit record is anchored in its card's database, by a connection
    of its own when no card is open (so also while the emulator has it): the anchor is kept
    out of the state the rollback MAC covers, so a TPM card still opens after create, lock,
    unlock, destroy of another card, and its anchor is the newest record about it."""
    vsc = Vsc(tmp_path / "store", ["--tpm", swtpm.tcti])
    vsc.run("create", "alice", "--pin", "24681357")
    vsc.run("create", "bob", "--pin", "24681357")
    vsc.run("lock", "alice")
    assert "rollback:      TPM NV counter 0x01" in vsc.run("info", "alice").stdout
    vsc.run("destroy", "bob")
    vsc.run("lock", "alice", "--at", "+2h")
    assert "the files in step" in vsc.run("info", "alice").stdout
    store = CardStore(tmp_path / "store")
    with store.open("alice", BackendSpec.tpm(swtpm.tcti)) as card:
        assert card.rollback is not None
    last = [e for e in vsc.audit.events("alice") if "hash" in e][-1]
    assert store.audit_anchors() == {"alice": (last["seq"], last["hash"])}
    assert "anchors" in vsc.run("audit", "--verify").stdout


def test_a_staged_creation_that_fails_frees_its_counter(store: CardStore, swtpm: Swtpm) -> None:
    """A card made whole in its staging directory gets its counter there; a failure inside
    the block leaves no card, no staging directory and no counter in the TPM."""
    spec = BackendSpec.tpm(swtpm.tcti)
    before = nv_indices(swtpm.tcti)
    with (
        pytest.raises(RuntimeError, match="personalisation"),
        store.creating("alice", spec) as card,
    ):
        assert card.rollback is not None
        card.put("cert/9a", b"certificate")  # a change counted while staged
        raise RuntimeError("personalisation failed")
    assert nv_indices(swtpm.tcti) == before
    assert list(store.cards_dir.iterdir()) == []
    with store.creating("alice", spec, settings=CardSettings(pcrs=(7,))) as card:
        assert card.rollback is not None and card.settings.pcrs == (7,)
        card.put("cert/9a", b"certificate")
    with store.open("alice", spec) as card:  # staged changes are in step with the counter
        assert card.get("cert/9a") == b"certificate"
        assert card.settings.pcrs == (7,)
        assert card.rollback is not None and card.rollback.state.files == counter_value(card)
