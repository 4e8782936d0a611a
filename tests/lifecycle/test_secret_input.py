"""Where the CLI takes an admin key: a private file, the environment, a prompt, or (warned) argv.

A key given as ``--admin-key HEX`` is readable by every user of the machine
in ``/proc/PID/cmdline`` for as long as the command runs. Each test runs
``python -m vsc.cli`` as a process, as a script or an administrator would.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from .conftest import NEW_PIN, PIN, Vsc

CHALLENGE_RE = re.compile(r"^  ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})$", re.M)
RESPONSE_RE = re.compile(r"^Response: ([0-9A-Z]{5}-[0-9A-Z]{5})$", re.M)
VISIBLE = "visible to every user"
PINS = f"{PIN}\n{PIN}\n"  # a PIN typed twice


@pytest.fixture
def plain(tmp_path: Path) -> Vsc:
    return Vsc(tmp_path / "store", ["--insecure-plain"])


@pytest.fixture
def key() -> str:
    return secrets.token_hex(24)


def key_file(path: Path, key: str, mode: int = 0o600) -> Path:
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


def challenge(vsc: Vsc, name: str) -> str:
    out = vsc.run("unblock", name).stdout
    match = CHALLENGE_RE.search(out)
    assert match, out
    return match.group(1)


def response_of(out: str) -> str:
    match = RESPONSE_RE.search(out)
    assert match, out
    return match.group(1)


def test_create_and_respond_without_the_key_on_the_command_line(
    plain: Vsc, key: str, tmp_path: Path
) -> None:
    path = key_file(tmp_path / "admin.key", key)
    created = plain.run(
        "create", "alice", "--pin-prompt", "--admin-key-file", str(path), input=PINS
    )
    assert "Admin key: the one given (--admin-key-file)" in created.stdout
    assert VISIBLE not in created.stderr

    # The helpdesk: the key in the environment, or piped in; no option names it.
    shown = challenge(plain, "alice")
    by_env = plain.run("respond", shown, backend=False, env={"VSC_ADMIN_KEY": key})
    piped = plain.run("respond", "--admin-key-file", "-", shown, backend=False, input=key + "\n")
    assert response_of(by_env.stdout) == response_of(piped.stdout)
    assert VISIBLE not in by_env.stderr + piped.stderr
    done = plain.run(
        "unblock", "alice", "--response", response_of(by_env.stdout), "--pin-prompt",
        input=f"{NEW_PIN}\n{NEW_PIN}\n",
    )  # fmt: skip
    assert "PIN reset" in done.stdout

    # The same key through the environment for a command that changes the card.
    erased = plain.run("reprovision", "alice", env={"VSC_ADMIN_KEY": key})
    assert "content erased" in erased.stdout
    wrong = plain.run(
        "reprovision", "alice", status=3, env={"VSC_ADMIN_KEY": secrets.token_hex(24)}
    )
    assert "wrong admin key" in wrong.stderr

    everything = created.output + by_env.output + piped.output + erased.output + wrong.output
    assert key not in everything.lower()
    assert key not in plain.audit_text().lower()


def test_a_key_file_others_can_read_is_refused(plain: Vsc, key: str, tmp_path: Path) -> None:
    shared = key_file(tmp_path / "shared.key", key, 0o644)
    refused = plain.run("create", "bob", "--pin", PIN, "--admin-key-file", str(shared), status=3)
    assert "can be read or written by other users (mode 0644)" in refused.stderr
    assert f"chmod 600 {shared}" in refused.stderr
    assert plain.run("list", "--json").json() == []  # refused before any card was made
    group_writable = key_file(tmp_path / "group.key", key, 0o620)
    plain.run("respond", "--admin-key-file", str(group_writable), "X", backend=False, status=3)
    missing = plain.run(
        "respond", "--admin-key-file", str(tmp_path / "nope"), "X", backend=False, status=1
    )
    assert "cannot read the secret file" in missing.stderr


def test_a_key_on_the_command_line_still_works_with_a_warning(plain: Vsc, key: str) -> None:
    created = plain.run("create", "carol", "--pin-prompt", "--admin-key", key, input=PINS)
    assert VISIBLE in created.stderr and "--admin-key-file" in created.stderr
    shown = challenge(plain, "carol")
    answer = plain.run("respond", "--admin-key", key, shown, backend=False)
    assert VISIBLE in answer.stderr and response_of(answer.stdout)
    # "random" and "default" are not secrets: no warning.
    quiet = plain.run("create", "dave", "--pin-prompt", "--admin-key", "random", input=PINS)
    assert VISIBLE not in quiet.stderr


def test_no_admin_key_without_a_terminal_says_where_to_give_it(plain: Vsc) -> None:
    usage = plain.run("respond", "K7QD-2M9X-0000-0000", backend=False, status=2)
    assert "--admin-key-file PATH, $VSC_ADMIN_KEY or --admin-key-prompt" in usage.stderr
    bad = plain.run(
        "respond", "K7QD-2M9X-0000-0000", backend=False, status=2, env={"VSC_ADMIN_KEY": "zz"}
    )
    assert "hexadecimal (from $VSC_ADMIN_KEY)" in bad.stderr
