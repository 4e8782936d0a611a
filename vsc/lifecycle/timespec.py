"""Durations (``--for 8h``) and times (``--at 18:00``) as the CLI accepts them."""

from __future__ import annotations

import datetime
import re

from .offline import UNRESTRICTED

__all__ = ["format_local", "parse_duration", "parse_time"]

_UNITS = {"m": 1, "h": 60, "d": 1440, "w": 10080}
_DURATION_RE = re.compile(r"(?:(\d+)([mhdw]))+")
_PART_RE = re.compile(r"(\d+)([mhdw])")


def parse_duration(text: str) -> int:
    """Minutes: ``30m``, ``8h``, ``1d``, ``1w``, ``1d12h``; ``unrestricted`` → UNRESTRICTED."""
    word = text.strip().lower()
    if word in ("unrestricted", "unlimited", "forever"):
        return UNRESTRICTED
    if not _DURATION_RE.fullmatch(word):
        raise ValueError(
            f"{text!r} is not a duration: use e.g. 30m, 8h, 1d, 1w, 1d12h or unrestricted"
        )
    minutes = sum(int(n) * _UNITS[unit] for n, unit in _PART_RE.findall(word))
    if not 1 <= minutes < UNRESTRICTED:
        raise ValueError(f"{text!r}: a duration is 1 minute to 31 years")
    return minutes


def parse_time(text: str, now: float) -> float:
    """Unix seconds: ``now``, ``+2h`` (from now), ``18:00`` (next one), or ISO 8601.

    An ISO time without a zone is local time.
    """
    word = text.strip()
    if word.lower() == "now":
        return now
    if word.startswith("+"):
        return now + 60 * parse_duration(word[1:])
    if re.fullmatch(r"\d{1,2}:\d{2}", word):
        hour, minute = map(int, word.split(":"))
        base = datetime.datetime.fromtimestamp(now).astimezone()
        try:
            moment = base.replace(hour=hour, minute=minute, second=0, microsecond=0)
        except ValueError:
            raise ValueError(f"{text!r} is not a time of day") from None
        if moment.timestamp() <= now:
            moment += datetime.timedelta(days=1)
        return moment.timestamp()
    try:
        moment = datetime.datetime.fromisoformat(word)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use now, +2h, 18:00 or 2026-12-24T18:00[+01:00]"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return moment.timestamp()


def format_local(when: float) -> str:
    """Unix seconds as local time, to the second, with the zone offset."""
    return datetime.datetime.fromtimestamp(when).astimezone().isoformat(timespec="seconds")
