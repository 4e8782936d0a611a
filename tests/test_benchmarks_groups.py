"""Every benchmark group runs: ``python -m benchmarks --quick --only GROUP`` for each.

The engine group has its own, closer test (test_benchmarks_smoke.py). Here
each other group must finish without raising: a group that raises is
reported as "not measured" and the run exits 1. A group whose tools are
missing here (pcscd, swtpm, vicc) says so and is skipped, except under
``CI``, which has them all and must measure everything. No timing
assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import GROUPS
from vsc.testing.plugin import running_in_ci

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 100  # seconds (under pytest-timeout's 120); each quick group takes 1-10 s here


@pytest.mark.parametrize("group", sorted(set(GROUPS) - {"engine"}))
def test_quick_group_runs_to_the_end(group: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", group,
         "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert "the group raised" not in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    (record,) = tmp_path.glob("*.json")
    result = json.loads(record.read_text())["groups"][group]
    if result["skipped"] is not None:
        if running_in_ci():
            pytest.fail(f"{group} not measured under CI: {result['skipped']}")
        pytest.skip(f"{group} not measured here: {result['skipped']}")
    assert result["rows"], f"{group} measured nothing"
    for row in result["rows"]:
        if "stats" in row:
            assert row["stats"]["n"] > 0, row


def test_a_group_that_raises_fails_the_run(tmp_path: Path) -> None:
    """The run goes on to the other groups, prints the error, and exits 1."""
    # A group whose module cannot even be imported: the simplest group that raises.
    script = (
        "import sys, benchmarks.__main__ as m\n"
        "m.GROUPS = {'broken': 'no_such_benchmark_module', **m.GROUPS}\n"
        "sys.exit(m.main(['--quick', '--only', 'broken', '--only', 'gids',"
        " '--results-dir', sys.argv[1]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the group raised" in done.stdout
    assert "== gids: " in done.stdout  # the other group was still measured
