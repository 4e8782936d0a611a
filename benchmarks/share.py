"""Group ``share``: the latency a shared reader adds per APDU.

The same echo APDU, timed with pyscard through the local pcscd (direct: the
emulator in a vpcd reader) and through the remote one (relayed: pcscd, vpcd,
the share endpoint, TLS 1.3, the share service, pyscard, the local pcscd),
in both sharing modes. The direct path is the anchor measured in the same run;
the difference is what sharing costs. See :mod:`vsc.share.latency`.
"""

from __future__ import annotations

from vsc.share.latency import LatencyStats, measure_relay_latency
from vsc.share.protocol import ShareMode

from .context import RunContext
from .report import GroupResult, Row
from .timing import Stats


def _stats(latency: LatencyStats) -> Stats:
    ns = 1000.0
    return Stats(
        latency.count,
        latency.p50_us * ns,
        latency.p99_us * ns,
        latency.min_us * ns,
        latency.mean_us * ns,
    )


def run(ctx: RunContext) -> GroupResult:
    group = GroupResult("share", "Reader sharing: latency the relay adds per APDU")
    apdus = 100 if ctx.quick else 1000
    for mode in (ShareMode.EXCLUSIVE, ShareMode.SHARED):
        try:
            result = measure_relay_latency(apdus, mode=mode)
        except RuntimeError as e:
            group.skipped = str(e)
            return group
        direct = _stats(result.direct)
        label = mode.name.lower()
        group.add(Row(f"direct (reader held {label})", direct, anchor=True))
        group.add(
            Row(
                f"relayed, {label} mode",
                _stats(result.relayed),
                comparison=f"+{result.added_p50_us:.0f} us p50 vs direct",
                ratio=result.relayed.p50_us / result.direct.p50_us,
            )
        )
    group.notes.append("p50 difference = the relay's cost: two more pcscd hops, TLS, pyscard")
    return group
