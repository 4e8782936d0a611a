"""``python -m benchmarks [--quick] [--only GROUP ...]``: run, print, record as JSON."""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from .context import REPO, RunContext
from .report import GroupResult, format_group, format_targets, git_revision, write_json

#: Group name -> module; each module has ``run(ctx) -> GroupResult``.
GROUPS: dict[str, str] = {
    "engine": "benchmarks.engine",
    "gids": "benchmarks.gids",
    "e2e": "benchmarks.e2e",
    "cards": "benchmarks.cards",
    "tpm": "benchmarks.tpm",
    "share": "benchmarks.share",
}
DEFAULT_RESULTS = REPO / "benchmarks" / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure vsc's APDU hot path against anchors measured in the same run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run (~1/10 of the samples)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(GROUPS),
        metavar="GROUP",
        help=f"run only this group (repeatable): {', '.join(GROUPS)}",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="e2e: leave client, pcscd and cards to the scheduler (default: one CPU)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS,
        help="where the JSON record goes (default: benchmarks/results)",
    )
    return parser


def _failed(name: str, error: BaseException) -> GroupResult:
    detail = "".join(traceback.format_exception_only(type(error), error)).strip()
    return GroupResult(name, "failed", skipped=f"the group raised: {detail}", failed=True)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(args_list)
    ctx = RunContext(quick=args.quick, pin=not args.no_pin)
    # Card processes run `python -m benchmarks.vpcd_card` from anywhere.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    names = [n for n in GROUPS if args.only is None or n in args.only]
    timestamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    sha, dirty = git_revision(REPO)
    load = os.getloadavg()
    print(
        f"vsc benchmarks {timestamp} git {sha}{'+dirty' if dirty else ''}; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} (other work skews the figures)",
        flush=True,
    )
    results: list[GroupResult] = []
    for name in names:
        started = time.monotonic()
        try:
            run: Callable[[RunContext], GroupResult] = importlib.import_module(GROUPS[name]).run
            group = run(ctx)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # a broken group must not hide the others' figures
            traceback.print_exc()
            group = _failed(name, error)
        group.seconds = time.monotonic() - started
        results.append(group)
        print(f"\n{format_group(group)}", flush=True)
    print(f"\n{format_targets(results)}")
    path = write_json(
        args.results_dir,
        timestamp=timestamp,
        sha=sha,
        dirty=dirty,
        argv=args_list,
        groups=results,
        loadavg_at_start=load,
    )
    print(f"\nresults: {path}")
    # Targets never fail the run (speed is judged, not asserted); a group that raised does.
    return 1 if any(g.failed for g in results) else 0


if __name__ == "__main__":
    sys.exit(main())
