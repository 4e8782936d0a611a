"""APDU transcripts: record what a client did to a card, replay it on a fresh one.

Theory of operation
-------------------
A :class:`Transcript` is one client scenario as the card saw it: the power
events (pcscd powers the card on, resets it, powers it off) and every command
APDU with the response the card gave, in order. :class:`RecordingCard` is a
:class:`~vsc.card.Card` that keeps that list while real clients use it
through pcscd and vpcd. :func:`replay` applies the same events to a fresh
card built the same way and checks that every response is byte for byte the
recorded one, so a change in what the card answers to a real client's
conversation fails a test that needs no pcscd and no client.

Replay is exact only for conversations that do not depend on randomness the
card draws (challenges, generated keys, ECDSA nonces) and for cards built
with the same parameters (``Transcript.card``, e.g. a fixed serial). For a
byte the card draws at random, a response in a file may hold ``??``: it
matches any byte. A client whose next command depends on such a byte (a
management-key witness) cannot be replayed this way.

File format (JSON, one file per scenario; fixtures/transcripts/README.md)::

    {
      "format": "vsc-transcript/1",
      "name": "...", "description": "...",
      "card": {"serial": 12345678},          # what the card factory needs
      "clients": {"yubico-piv-tool": "2.2.0"},
      "commands": ["yubico-piv-tool -r {reader} -a status"],
      "atr": "3B 8D 80 ...",
      "events": ["power on", "> 00 A4 04 00 05 A0 00 00 03 08", "< 61 11 ... 90 00", ...]
    }

Events are ``power on``, ``power off``, ``reset``, and pairs of lines
``> COMMAND`` then ``< RESPONSE`` in spaced hex.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final, TypeVar

from ..card import Card

__all__ = [
    "FORMAT",
    "Exchange",
    "Power",
    "RecordingCard",
    "ReplayMismatch",
    "Transcript",
    "TranscriptError",
    "replay",
]

FORMAT: Final = "vsc-transcript/1"
WILDCARD: Final = "??"
_COMMAND = "> "
_RESPONSE = "< "
_CONTEXT = 6  # events shown before a mismatch

T = TypeVar("T")


class TranscriptError(ValueError):
    """A transcript file or value that does not follow the format."""


class Power(Enum):
    """A power event, named as it is written in a transcript."""

    ON = "power on"
    OFF = "power off"
    RESET = "reset"


def _hex(data: bytes) -> str:
    return data.hex(" ").upper()


@dataclass(frozen=True, slots=True)
class Exchange:
    """A command APDU and the response expected for it.

    ``wildcards`` are positions in ``response`` whose byte may be anything
    (written ``??``; the byte stored there is 00).
    """

    command: bytes
    response: bytes
    wildcards: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if len(self.response) < 2:
            raise TranscriptError("a response has at least its two status bytes")
        if any(not 0 <= i < len(self.response) - 2 for i in self.wildcards):
            raise TranscriptError("only data bytes, never the status word, may be ??")

    def matches(self, actual: bytes) -> bool:
        if len(actual) != len(self.response):
            return False
        return all(
            a == e or i in self.wildcards
            for i, (a, e) in enumerate(zip(actual, self.response, strict=True))
        )

    def response_text(self) -> str:
        return " ".join(
            WILDCARD if i in self.wildcards else f"{b:02X}" for i, b in enumerate(self.response)
        )

    @classmethod
    def parse_response(cls, command: bytes, text: str) -> Exchange:
        tokens = text.split()
        wildcards = frozenset(i for i, t in enumerate(tokens) if t == WILDCARD)
        raw = "".join("00" if t == WILDCARD else t for t in tokens)
        return cls(command, _from_hex(raw), wildcards)


Event = Power | Exchange


def _from_hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise TranscriptError(f"not hex: {text!r}") from None


def _event_lines(events: Iterable[Event]) -> list[str]:
    lines: list[str] = []
    for event in events:
        if isinstance(event, Power):
            lines.append(event.value)
        else:
            lines += [_COMMAND + _hex(event.command), _RESPONSE + event.response_text()]
    return lines


def _parse_events(lines: Sequence[object]) -> tuple[Event, ...]:
    events: list[Event] = []
    powers = {p.value: p for p in Power}
    i = 0
    while i < len(lines):
        line = lines[i]
        if not isinstance(line, str):
            raise TranscriptError(f"event {i} is not a string")
        if line in powers:
            events.append(powers[line])
            i += 1
            continue
        answer = lines[i + 1] if i + 1 < len(lines) else None
        if not line.startswith(_COMMAND) or not isinstance(answer, str):
            raise TranscriptError(f"event {i}: expected a command and its response: {line!r}")
        if not answer.startswith(_RESPONSE):
            raise TranscriptError(f"event {i + 1}: expected '< RESPONSE', got {answer!r}")
        command = _from_hex(line[len(_COMMAND) :])
        events.append(Exchange.parse_response(command, answer[len(_RESPONSE) :]))
        i += 2
    return tuple(events)


@dataclass(frozen=True, slots=True)
class Transcript:
    """One recorded scenario. See the module docstring for the file format."""

    name: str
    atr: bytes
    events: tuple[Event, ...]
    description: str = ""
    #: Parameters the card factory needs to rebuild the recorded card (e.g. its serial).
    card: Mapping[str, int | str] = field(default_factory=dict)
    #: Client programs and their versions, for the reader of the file.
    clients: Mapping[str, str] = field(default_factory=dict)
    #: The client command lines that produced the events (``{reader}`` for the reader name).
    commands: tuple[str, ...] = ()

    @property
    def exchanges(self) -> tuple[Exchange, ...]:
        return tuple(e for e in self.events if isinstance(e, Exchange))

    def to_json(self) -> str:
        document = {
            "format": FORMAT,
            "name": self.name,
            "description": self.description,
            "card": dict(self.card),
            "clients": dict(self.clients),
            "commands": list(self.commands),
            "atr": _hex(self.atr),
            "events": _event_lines(self.events),
        }
        return json.dumps(document, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Transcript:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TranscriptError(f"not JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise TranscriptError(f"not a {FORMAT} document")
        try:
            return cls(
                name=_typed(document["name"], str),
                description=_typed(document.get("description", ""), str),
                card=_mapping(document.get("card", {}), (int, str)),
                clients=_mapping(document.get("clients", {}), (str,)),
                commands=tuple(
                    _typed(line, str) for line in _typed(document.get("commands", []), list)
                ),
                atr=_from_hex(_typed(document["atr"], str)),
                events=_parse_events(_typed(document["events"], list)),
            )
        except KeyError as exc:
            raise TranscriptError(f"missing field {exc}") from None

    @classmethod
    def load(cls, path: Path) -> Transcript:
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except TranscriptError as exc:
            raise TranscriptError(f"{path}: {exc}") from None

    def save(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")


def _typed(value: object, kind: type[T]) -> T:
    if not isinstance(value, kind):
        raise TranscriptError(f"expected {kind.__name__}, got {value!r}")
    return value


def _mapping(value: object, kinds: tuple[type, ...]) -> dict[str, Any]:
    items = _typed(value, dict)
    for key, item in items.items():
        if not isinstance(key, str) or not isinstance(item, kinds) or isinstance(item, bool):
            raise TranscriptError(f"bad entry {key!r}: {item!r}")
    return items


class RecordingCard(Card):
    """A :class:`~vsc.card.Card` that records every power event and exchange.

    Same constructor as :class:`~vsc.card.Card`. Like the card it is used by
    one thread; read :attr:`events` once that thread is done with it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._events: list[Event] = []
        self._in_reset = False

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)

    def power_on(self) -> bytes:
        if not self._in_reset:  # Card.reset powers on through here
            self._events.append(Power.ON)
        return super().power_on()

    def power_off(self) -> None:
        self._events.append(Power.OFF)
        super().power_off()

    def reset(self) -> bytes:
        self._events.append(Power.RESET)
        self._in_reset = True
        try:
            return super().reset()
        finally:
            self._in_reset = False

    def transmit(self, apdu: bytes) -> bytes:
        response = super().transmit(apdu)
        self._events.append(Exchange(bytes(apdu), response))
        return response

    def transcript(self, name: str, **details: Any) -> Transcript:
        """What was recorded so far; ``details`` fill the other :class:`Transcript` fields."""
        return Transcript(name=name, atr=self.atr, events=self.events, **details)


class ReplayMismatch(Exception):
    """A replayed card answered differently from the recording."""

    def __init__(self, transcript: Transcript, index: int, actual: bytes) -> None:
        self.transcript = transcript
        self.index = index
        self.actual = actual
        event = transcript.events[index]
        assert isinstance(event, Exchange)
        self.exchange = event
        start = max(0, index - _CONTEXT)
        context = "\n".join("  " + line for line in _event_lines(transcript.events[start:index]))
        super().__init__(
            f"{transcript.name}: event {index} answered differently\n"
            f"{context}\n"
            f"  > {_hex(event.command)}\n"
            f"  expected < {event.response_text()}\n"
            f"  actual   < {_hex(actual)}"
        )


def replay(transcript: Transcript, card: Card) -> int:
    """Apply the transcript's events to ``card``; returns the number of exchanges checked.

    ``card`` must be fresh and built like the recorded one. Raises
    :class:`ReplayMismatch` at the first response that differs (later ones
    would only show the consequences), :class:`TranscriptError` if the ATRs
    differ.
    """
    if card.atr != transcript.atr:
        raise TranscriptError(
            f"{transcript.name}: card ATR {_hex(card.atr)} is not the recorded "
            f"{_hex(transcript.atr)}"
        )
    checked = 0
    for index, event in enumerate(transcript.events):
        if event is Power.ON:
            card.power_on()
        elif event is Power.OFF:
            card.power_off()
        elif event is Power.RESET:
            card.reset()
        elif isinstance(event, Exchange):
            actual = card.transmit(event.command)
            if not event.matches(actual):
                raise ReplayMismatch(transcript, index, actual)
            checked += 1
    return checked
