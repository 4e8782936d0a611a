"""Compare two benchmark records: ``python -m benchmarks.compare OLD.json NEW.json``.

Prints, for every row present in both runs, the old and new median (or
value) and the change. Medians of separate runs on a shared machine differ
by several percent with no code change; look at the load averages both
records carry before reading much into a small delta.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _figures(record: dict[str, Any]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for group, body in record.get("groups", {}).items():
        for row in body.get("rows", []):
            if "stats" in row:
                out[(group, row["name"])] = float(row["stats"]["median_ns"]) / 1000
            elif "value" in row:
                out[(group, row["name"])] = float(row["value"])
    return out


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    before, after = _figures(old), _figures(new)
    lines = [
        f"old: {old.get('timestamp')} git {old.get('git', {}).get('sha')} "
        f"load {old.get('machine', {}).get('loadavg_at_start', ['?'])[0]}",
        f"new: {new.get('timestamp')} git {new.get('git', {}).get('sha')} "
        f"load {new.get('machine', {}).get('loadavg_at_start', ['?'])[0]}",
        "",
    ]
    width = max((len(f"{g}: {n}") for g, n in after), default=10)
    lines.append(f"{'row'.ljust(width)} | {'old':>10} | {'new':>10} | change")
    for key, value in after.items():
        label = f"{key[0]}: {key[1]}".ljust(width)
        if key not in before:
            lines.append(f"{label} | {'':>10} | {value:>10.2f} | new row")
            continue
        was = before[key]
        change = (value - was) / was if was else 0.0
        lines.append(f"{label} | {was:>10.2f} | {value:>10.2f} | {change:+.1%}")
    gone = [k for k in before if k not in after]
    lines.extend(f"{g}: {n} | only in the old run" for g, n in gone)
    lines.append("(times: median in us; memory rows: bytes)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.compare OLD.json NEW.json", file=sys.stderr)
        return 2
    old, new = (json.loads(Path(p).read_text()) for p in argv)
    print(compare(old, new))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
