"""Smoke test of the benchmark harness: ``python -m benchmarks --quick --only engine``.

Checks that the run completes, prints the engine table and the targets, and
writes a JSON record with every row's statistics. No timing assertions:
speed is the benchmarks' business, not the tests'.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 100  # seconds (under pytest-timeout's 120); a quick engine run takes ~3 s


def test_quick_engine_run_prints_table_and_writes_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--only",
            "engine",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "== engine: " in out
    assert "SELECT PIV" in out and "GA sign P-256" in out and "echo card" in out
    assert "median us" in out
    assert "== targets (issues 7 and 17" in out
    assert "the group raised" not in out, out

    records = list(tmp_path.glob("*.json"))
    assert len(records) == 1, records
    assert records[0].name in out  # the path is printed
    record = json.loads(records[0].read_text())
    assert record["format"] == 1
    assert record["command"][-4:] == ["--only", "engine", "--results-dir", str(tmp_path)]
    assert set(record["groups"]) == {"engine"}
    engine = record["groups"]["engine"]
    assert engine["skipped"] is None
    names = [row["name"] for row in engine["rows"]]
    assert "SELECT PIV (FCI)" in names
    for row in engine["rows"]:
        stats = row["stats"]
        assert stats["n"] > 0
        assert 0 < stats["min_ns"] <= stats["median_ns"] <= stats["p99_ns"]
    judged = [row["target"] for row in engine["rows"] if "target" in row]
    assert judged and all(isinstance(t["met"], bool) for t in judged)
