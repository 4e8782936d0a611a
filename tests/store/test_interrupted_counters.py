"""The TPM NV counter of a card whose creation or destruction was killed is freed, not leaked.

A TPM has room for a few dozen NV indices, so a counter must not outlive its
card. ``vsc`` is killed (SIGKILL, in a real process) at a TPM command of the
counter's life; what it leaves is found by the next command given the TPM,
which frees the counter (proved by the counter's own auth: never another
card's) and wipes the leftover, or keeps the leftover and says so when it
cannot free the counter now.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import require_swtpm

require_swtpm()  # before importing the tpm backend, which needs tpm2-pytss

from vsc.store import BackendError, BackendSpec, CardStore  # noqa: E402
from vsc.store.protect import CounterRef  # noqa: E402
from vsc.store.tpm import Tpm  # noqa: E402
from vsc.testing.swtpm import Swtpm  # noqa: E402

from ..lifecycle.conftest import CLI_TIMEOUT, PIN, Vsc  # noqa: E402
from .test_rollback import nv_indices  # noqa: E402

#: ``python -m vsc.cli ARGS`` that dies (SIGKILL) at its first ESAPI call ``COMMAND``: just
#: ``before`` it reaches the TPM, or right ``after`` the TPM answered it.
KILLED_AT = """
import os, signal, sys
import tpm2_pytss
from vsc.cli import main
command, when = sys.argv[1:3]
real = getattr(tpm2_pytss.ESAPI, command)
def die(*args, **kwargs):
    if when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(tpm2_pytss.ESAPI, command, die)
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture
def vsc(tmp_path: Path, swtpm: Swtpm) -> Vsc:
    return Vsc(tmp_path / "store", ["--tpm", swtpm.tcti])


def killed(vsc: Vsc, command: str, when: str, *argv: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KILLED_AT, command, when, *argv, *vsc.backend],
        env=vsc.env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr


def leftovers(vsc: Vsc, name: str) -> list[Path]:
    return [p for p in (vsc.store / "cards").iterdir() if p.name.startswith(f".{name}.")]


def make_stale(paths: list[Path]) -> None:
    """As if the sweep's grace period (a minute) had passed."""
    old = time.time() - 3600
    for path in paths:
        os.utime(path, (old, old))


@pytest.mark.parametrize(
    "command", ["nv_define_space", "nv_increment"], ids=["defined", "incremented"]
)
def test_a_creation_killed_after_its_counter_is_defined_frees_it_later(
    vsc: Vsc, swtpm: Swtpm, command: str
) -> None:
    before = nv_indices(swtpm.tcti)
    killed(vsc, command, "after", "create", "alice", "--pin", PIN)
    leaked = nv_indices(swtpm.tcti) - before
    assert len(leaked) == 1  # the TPM defined it; the process never learnt so
    left = leftovers(vsc, "alice")
    assert len(left) == 1
    make_stale(left)
    created = vsc.run("create", "bob", "--pin", PIN)
    assert not nv_indices(swtpm.tcti) & leaked
    assert f"freed the TPM counter {next(iter(leaked)):#010x}" in created.stderr
    assert leftovers(vsc, "alice") == []
    assert len(nv_indices(swtpm.tcti) - before) == 1  # bob's own
    vsc.run("info", "bob")


def test_a_leftover_is_kept_while_its_counter_cannot_be_freed(vsc: Vsc, swtpm: Swtpm) -> None:
    before = nv_indices(swtpm.tcti)
    killed(vsc, "nv_increment", "after", "create", "alice", "--pin", PIN)
    leaked = nv_indices(swtpm.tcti) - before
    make_stale(leftovers(vsc, "alice"))
    # A command without the TPM cannot free it: it keeps the record, and says so.
    plain = vsc.run("create", "plain", "--pin", PIN, "--insecure-plain", backend=False)
    assert "keeping" in plain.stderr and "cannot be freed now" in plain.stderr
    assert len(leftovers(vsc, "alice")) == 1
    assert nv_indices(swtpm.tcti) >= leaked
    # One given the TPM does (once the grace period has passed again: reading the files
    # for the first try touched the directory).
    make_stale(leftovers(vsc, "alice"))
    vsc.run("destroy", "plain")
    assert not nv_indices(swtpm.tcti) & leaked
    assert leftovers(vsc, "alice") == []


def test_a_destruction_killed_before_it_frees_the_counter_frees_it_later(
    vsc: Vsc, swtpm: Swtpm
) -> None:
    before = nv_indices(swtpm.tcti)
    vsc.run("create", "alice", "--pin", PIN)
    counter = nv_indices(swtpm.tcti) - before
    assert len(counter) == 1
    killed(vsc, "nv_undefine_space", "before", "destroy", "alice")
    assert vsc.run("list", "--json").json() == []  # destroyed, as far as the user sees
    left = leftovers(vsc, "alice")
    assert len(left) == 1
    make_stale(left)
    vsc.run("create", "bob", "--pin", PIN)
    assert not nv_indices(swtpm.tcti) & counter
    assert leftovers(vsc, "alice") == []


def test_a_recorded_handle_that_is_another_cards_counter_is_left_alone(
    store: CardStore, swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handle a creation recorded may be another card's counter by the time it is freed
    (taken meanwhile): only the counter's own auth proves it is the creation's."""
    spec = BackendSpec.tpm(swtpm.tcti)
    with store.creating("alice", spec) as card:
        assert card.rollback is not None
        alice = card.rollback.state.handle
    monkeypatch.setattr(Tpm, "free_counter_handle", lambda self: CounterRef(alice))
    with pytest.raises(BackendError, match="taken meanwhile"), store.creating("bob", spec):
        pass
    assert alice in nv_indices(swtpm.tcti)
    assert list(store.cards_dir.iterdir()) == [store.path_of("alice")]
    with store.open("alice", spec) as card:
        assert card.rollback is not None
