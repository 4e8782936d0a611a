"""Benchmark results: rows, targets, the printed tables and the JSON record.

A :class:`Row` is one measured figure (time statistics, or a plain value
such as bytes per card) with an optional anchor comparison and an optional
target from issue 7. Targets are judged (``pass``/``miss``) and shown, never
enforced: benchmarks do not fail the build.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .timing import Stats


@dataclass(frozen=True, slots=True)
class Target:
    """An issue-7 target and whether this run met it (None: not judged)."""

    text: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "MISS", None: "n/a"}[self.met]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a table."""

    name: str
    stats: Stats | None = None
    #: A plain figure instead of (or besides) times, e.g. bytes per card.
    value: float | None = None
    unit: str = ""
    #: "0.97x bare card", "+4.1 us vs raw", ...
    comparison: str = ""
    ratio: float | None = None
    target: Target | None = None
    note: str = ""
    #: APDUs per operation, when one operation is several exchanges.
    apdus: int = 1
    anchor: bool = False
    #: Show the rate column as APDUs/s measured end to end.
    rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "anchor": self.anchor, "apdus": self.apdus}
        if self.stats is not None:
            s = self.stats
            out["stats"] = {
                "n": s.n,
                "median_ns": s.median_ns,
                "p99_ns": s.p99_ns,
                "min_ns": s.min_ns,
                "mean_ns": s.mean_ns,
            }
        if self.value is not None:
            out["value"] = self.value
            out["unit"] = self.unit
        if self.rate is not None:
            out["rate_per_s"] = self.rate
        if self.comparison:
            out["comparison"] = self.comparison
        if self.ratio is not None:
            out["ratio"] = self.ratio
        if self.target is not None:
            out["target"] = {"text": self.target.text, "met": self.target.met}
        if self.note:
            out["note"] = self.note
        return out


@dataclass(slots=True)
class GroupResult:
    """A benchmark group's table."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0
    #: The group raised (a bug, not a missing tool): the run exits 1.
    failed: bool = False

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 2),
            "rows": [r.to_json() for r in self.rows],
            "notes": self.notes,
        }


# --- formatting ---------------------------------------------------------------------------


def _us(ns: float) -> str:
    us = ns / 1000
    if us >= 10_000:
        return f"{us / 1000:,.1f} ms"
    if us >= 100:
        return f"{us:,.0f}"
    return f"{us:.2f}"


def _rate(per_s: float) -> str:
    return f"{per_s:,.0f}" if per_s >= 10 else f"{per_s:.1f}"


def _value(row: Row) -> str:
    if row.value is None:
        return ""
    if row.unit == "bytes":
        v = row.value
        return f"{v / 1e6:.2f} MB" if v >= 1e6 else f"{v / 1e3:.1f} kB"
    return f"{row.value:,.3g} {row.unit}".strip()


def format_group(group: GroupResult) -> str:
    lines = [f"== {group.name}: {group.title} =="]
    if group.skipped is not None:
        lines.append(f"   not measured: {group.skipped}")
        lines.extend(f"   {note}" for note in group.notes)
        return "\n".join(lines)
    header = ["", "median us", "p99 us", "per s", "value", "vs anchor", "target", ""]
    table: list[list[str]] = [header]
    for row in group.rows:
        s = row.stats
        rate = row.rate if row.rate is not None else (s.rate * row.apdus if s else None)
        name = ("  " if row.anchor else "") + row.name
        table.append(
            [
                name,
                _us(s.median_ns) if s else "",
                _us(s.p99_ns) if s else "",
                _rate(rate) if rate else "",
                _value(row),
                row.comparison,
                row.target.text if row.target else "",
                row.target.verdict if row.target else "",
            ]
        )
    # Drop the columns no row of this group fills.
    keep = [0] + [i for i in range(1, len(header)) if any(r[i] for r in table[1:])]
    table = [[r[i] for i in keep] for r in table]
    header = table[0]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append(("   " + " | ".join(cells)).rstrip())
        if i == 0:
            lines.append("   " + "-+-".join("-" * w for w in widths))
    notes = [f"{r.name}: {r.note}" for r in group.rows if r.note] + group.notes
    lines.extend(f"   * {note}" for note in notes)
    lines.append(
        f"   ({group.seconds:.1f} s; indented rows are anchors; "
        "'per s' = APDUs or operations per second)"
    )
    return "\n".join(lines)


def format_targets(groups: Sequence[GroupResult]) -> str:
    lines = ["== targets (issues 7 and 17; benchmarks never fail the build) =="]
    for group in groups:
        for row in group.rows:
            if row.target is not None:
                lines.append(
                    f"   {row.target.verdict:>4}  {group.name}: {row.name}: {row.target.text}"
                )
    return "\n".join(lines)


# --- the JSON record ----------------------------------------------------------------------


def _run(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def git_revision(repo: Path) -> tuple[str, bool]:
    """(short SHA or "nogit", whether the work tree has changes)."""
    sha = _run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]) or "nogit"
    dirty = bool(_run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"]))
    return sha, dirty


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, interpreter, crypto library versions."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        openssl = str(backend.openssl_version_text())
    except Exception:  # an informational field only
        openssl = ""
    debs = _run(
        [
            "dpkg-query",
            "-W",
            "-f=${Package} ${Version}\\n",
            "pcscd",
            "vsmartcard-vpcd",
            "vsmartcard-vpicc",
            "swtpm",
        ]
    )
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cryptography": _version("cryptography"),
        "openssl": openssl,
        "gmpy2": _version("gmpy2"),
        "pyscard": _version("pyscard"),
        "debian_packages": debs.splitlines(),
        "loadavg_at_end": list(os.getloadavg()),
    }


def write_json(
    directory: Path,
    *,
    timestamp: str,
    sha: str,
    dirty: bool,
    argv: Sequence[str],
    groups: Sequence[GroupResult],
    loadavg_at_start: Sequence[float] = (),
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{timestamp}-{sha}.json"
    record = {
        "format": 1,
        "timestamp": timestamp,
        "git": {"sha": sha, "dirty": dirty},
        "command": ["python", "-m", "benchmarks", *argv],
        "machine": {**machine_facts(), "loadavg_at_start": list(loadavg_at_start)},
        "groups": {g.name: g.to_json() for g in groups},
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
