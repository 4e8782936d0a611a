"""Reading inputs from files: seed files, and recorded client transcripts.

:func:`load_corpus` reads seed files (the text form, ``.fuzz``) and,
leniently, recorded client transcripts: ``> 00 A4 ...`` lines as the APDU
trace writes them, or JSON with ``command``/``apdu`` fields. Masked secrets
(``<8 secret bytes>``) are replaced by the factory PIN/PUK so VERIFY-like
commands stay meaningful. A long transcript becomes several inputs of at
most ``MAX_STEPS`` steps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .inputs import (
    CORPUS_SUFFIX,
    DEFAULT_PIN,
    DEFAULT_PUK,
    KEYWORD_KINDS,
    MAX_STEPS,
    FuzzInput,
    Step,
    StepKind,
    parse_input,
)

__all__ = ["load_corpus", "load_file", "parse_transcript"]

_COMMAND_LINE = re.compile(
    r"^\s*(?:\[\d+\]\s*)?(?:>>?|->|=>|C:|command:?|cmd:?|send:?)\s*"
    r"(?P<hex>[0-9A-Fa-f][0-9A-Fa-f <>a-z]*)$",
    re.IGNORECASE,
)
_SECRET = re.compile(r"<(\d+) secret bytes>")
_POWER_WORDS = (
    ("power-off", StepKind.POWER_OFF),
    ("power off", StepKind.POWER_OFF),
    ("power-on", StepKind.POWER_ON),
    ("power on", StepKind.POWER_ON),
    ("reset", StepKind.RESET),
)
_JSON_COMMAND_KEYS = ("command", "apdu", "capdu", "cmd", "c", "request")


def _unmask(header: bytes, length: int) -> bytes:
    """Stand-in for data the trace masked: the factory secrets where they fit."""
    ins = header[1] if len(header) > 1 else 0
    if ins == 0x20 and length == 9:  # Lc + PIN
        return b"\x08" + DEFAULT_PIN
    if ins in (0x24, 0x2C) and length == 17:
        first = DEFAULT_PUK if header[3:4] == b"\x81" or ins == 0x2C else DEFAULT_PIN
        return b"\x10" + first + DEFAULT_PIN
    return bytes((min(length - 1, 255),)) + bytes(length - 1) if length else b""


def _command_from_trace(text: str) -> bytes | None:
    secret = _SECRET.search(text)
    hexpart = _SECRET.sub(" ", text)
    try:
        data = bytes.fromhex(hexpart.replace(" ", ""))
    except ValueError:
        return None
    if secret is not None:
        data += _unmask(data, int(secret.group(1)))
    return data


def parse_transcript(text: str) -> FuzzInput:
    """Commands and power events from a recorded transcript (format-lenient)."""
    steps: list[Step] = []
    for line in text.splitlines():
        if m := _COMMAND_LINE.match(line):
            data = _command_from_trace(m.group("hex"))
            if data is not None and len(data) >= 4:
                steps.append(Step(StepKind.APDU, data))
            continue
        lowered = line.strip().lower().lstrip("#!*- ")
        for word, kind in _POWER_WORDS:
            if lowered.startswith(word) and len(lowered) < 40:
                steps.append(Step(kind))
                break
    return tuple(steps)


def _json_commands(node: Any) -> Iterator[Step]:
    if isinstance(node, dict):
        for key in _JSON_COMMAND_KEYS:
            value = node.get(key)
            if isinstance(value, str):
                data = _command_from_trace(value)
                if data is not None and len(data) >= 4:
                    yield Step(StepKind.APDU, data)
                return
        event = node.get("event") or node.get("type")
        if isinstance(event, str) and event.lower().replace("_", "-") in KEYWORD_KINDS:
            yield Step(KEYWORD_KINDS[event.lower().replace("_", "-")])
            return
        for value in node.values():
            yield from _json_commands(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str):  # "> 00 A4 ...", "< 90 00", "power on" (vsc-transcript/1)
                yield from parse_transcript(item)
            else:
                yield from _json_commands(item)


def _chunks(steps: FuzzInput) -> Iterator[FuzzInput]:
    """Long transcripts become several inputs of at most MAX_STEPS steps."""
    for start in range(0, len(steps), MAX_STEPS):
        yield steps[start : start + MAX_STEPS]


def load_file(path: Path) -> list[FuzzInput]:
    """The inputs in one corpus file: our text form, a transcript, or JSON."""
    text = path.read_text(errors="replace")
    if path.suffix == CORPUS_SUFFIX:
        return list(_chunks(parse_input(text)))
    if path.suffix == ".json":
        try:
            steps = tuple(_json_commands(json.loads(text)))
        except ValueError:
            steps = ()
    else:
        steps = parse_transcript(text)
    return [chunk for chunk in _chunks(steps) if chunk]


def load_corpus(paths: Iterable[Path]) -> list[FuzzInput]:
    """Every input in the given files and directories (recursively, sorted)."""
    inputs: list[FuzzInput] = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.suffix in (CORPUS_SUFFIX, ".json", ".txt", ".log", ".trace", ".apdu"):
                inputs.extend(load_file(file))
    return inputs
