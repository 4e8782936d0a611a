"""Smoke test of the ``gids`` benchmark group: every row measured, each beside its PIV anchor.

No timing assertions (speed is the benchmarks' business); the group checks every
response before timing it, so a run that completes proves the rows time what they say.
"""

from __future__ import annotations

from benchmarks import gids
from benchmarks.context import RunContext


def test_the_gids_group_runs_beside_piv() -> None:
    group = gids.run(RunContext(quick=True, pin=False))
    assert group.skipped is None
    names = [row.name for row in group.rows]
    assert "SELECT GIDS (FCI)" in names and "PIV: SELECT PIV (FCI)" in names
    assert "VERIFY (8-byte PIN, 2 commits)" in names
    assert any(name.startswith("MSE + PSO sign RSA-2048") for name in names)
    compared = [row for row in group.rows if not row.anchor and row.ratio is not None]
    assert len(compared) == 5 and all((row.ratio or 0) > 0 for row in compared)
