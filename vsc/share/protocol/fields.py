"""Message bodies: the field kinds, and :class:`Struct`, which reads and writes them in order.

A body is a sequence of fields: fixed-size integers (:class:`U8`,
:class:`U16`, :class:`Code` for an enum), byte strings with a 2- or 4-byte
length (:class:`Blob`) or of a fixed size (:class:`Fixed`), UTF-8 strings
with a 2-byte length (:class:`Text`), and lists of structures
(:class:`Items`). A :class:`Struct` declares its fields once, in wire order
(``FIELDS``); the same declaration validates a value built locally
(``ValueError``), writes it, and reads it back, where a body that is short,
long, or holds a value the field refuses is the peer's fault
(:class:`~.wire.RemoteProtocolError`).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar, Final, Self

from .wire import RemoteProtocolError

__all__ = [
    "U8",
    "U16",
    "Blob",
    "BodyReader",
    "BodyWriter",
    "Code",
    "Field",
    "Fixed",
    "Items",
    "Struct",
    "Text",
]

_U16_MAX: Final = 0xFFFF


class BodyWriter:
    """Collects the parts of a body."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def add(self, data: bytes) -> None:
        self.parts.append(data)


class BodyReader:
    """Reads a body front to back; running short is the peer's fault."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int) -> bytes:
        end = self.offset + count
        if end > len(self.data):
            raise RemoteProtocolError("message body too short")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise RemoteProtocolError(f"{len(self.data) - self.offset} trailing bytes in message")


class Field:
    """One field kind: checks a value, writes it, reads it."""

    __slots__ = ()

    def check(self, value: Any, name: str) -> None:
        """Raise ValueError if ``value`` cannot be sent in this field."""

    def write(self, out: BodyWriter, value: Any) -> None:
        raise NotImplementedError

    def read(self, body: BodyReader) -> Any:
        raise NotImplementedError


class _Int(Field):
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def check(self, value: Any, name: str) -> None:
        if not 0 <= value < 1 << (8 * self.size):
            raise ValueError(f"{name} out of range")

    def write(self, out: BodyWriter, value: Any) -> None:
        out.add(int(value).to_bytes(self.size, "big"))

    def read(self, body: BodyReader) -> Any:
        return int.from_bytes(body.take(self.size), "big")


class U8(_Int):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(1)


class U16(_Int):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(2)


class Code(Field):
    """An enum in one byte; a value the enum refuses is the peer's fault."""

    __slots__ = ("enum",)

    def __init__(self, enum: type[IntEnum]) -> None:
        self.enum = enum

    def check(self, value: Any, name: str) -> None:
        if not 0 <= int(value) <= 0xFF:
            raise ValueError(f"{name} out of range")
        self.enum(value)  # ValueError if not a member

    def write(self, out: BodyWriter, value: Any) -> None:
        out.add(int(value).to_bytes(1, "big"))

    def read(self, body: BodyReader) -> Any:
        return self.enum(body.take(1)[0])  # ValueError: decode() blames the peer


class Blob(Field):
    """Bytes with a ``prefix``-byte length (2 or 4), ``low``..``high`` bytes long."""

    __slots__ = ("high", "low", "prefix")

    def __init__(self, prefix: int, low: int = 0, high: int = _U16_MAX) -> None:
        self.prefix, self.low, self.high = prefix, low, high

    def check(self, value: Any, name: str) -> None:
        if not self.low <= len(value) <= self.high:
            raise ValueError(f"{name} must be {self.low}..{self.high} bytes, not {len(value)}")

    def write(self, out: BodyWriter, value: Any) -> None:
        out.add(len(value).to_bytes(self.prefix, "big"))
        out.add(value)

    def read(self, body: BodyReader) -> Any:
        return body.take(int.from_bytes(body.take(self.prefix), "big"))


class Fixed(Field):
    """Exactly ``size`` bytes, no length on the wire."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def check(self, value: Any, name: str) -> None:
        if len(value) != self.size:
            raise ValueError(f"{name} must be {self.size} bytes, not {len(value)}")

    def write(self, out: BodyWriter, value: Any) -> None:
        out.add(value)

    def read(self, body: BodyReader) -> Any:
        return body.take(self.size)


class Text(Field):
    """A UTF-8 string with a 2-byte length."""

    __slots__ = ()

    def check(self, value: Any, name: str) -> None:
        if len(value.encode()) > _U16_MAX:
            raise ValueError(f"{name} too long")

    def write(self, out: BodyWriter, value: Any) -> None:
        data = value.encode()
        out.add(len(data).to_bytes(2, "big"))
        out.add(data)

    def read(self, body: BodyReader) -> Any:
        data = body.take(int.from_bytes(body.take(2), "big"))
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError("string is not UTF-8") from exc


class Items(Field):
    """A list of structures (a tuple in Python), with a 2-byte count."""

    __slots__ = ("kind",)

    def __init__(self, kind: type[Struct]) -> None:
        self.kind = kind

    def check(self, value: Any, name: str) -> None:
        if len(value) > _U16_MAX:
            raise ValueError(f"too many {name}")

    def write(self, out: BodyWriter, value: Any) -> None:
        out.add(len(value).to_bytes(2, "big"))
        for item in value:
            item.write_fields(out)

    def read(self, body: BodyReader) -> Any:
        count = int.from_bytes(body.take(2), "big")
        return tuple(self.kind.read_fields(body) for _ in range(count))


class Struct:
    """Base of the frozen dataclasses that go on the wire; ``FIELDS`` in wire order.

    Subclasses are dataclasses whose attribute names match ``FIELDS``; the
    constructor is called with keywords, so the wire order need not be the
    order of the constructor's arguments.
    """

    __slots__ = ()
    FIELDS: ClassVar[tuple[tuple[str, Field], ...]] = ()

    def __post_init__(self) -> None:
        for name, kind in self.FIELDS:
            kind.check(getattr(self, name), name)

    def write_fields(self, out: BodyWriter) -> None:
        for name, kind in self.FIELDS:
            kind.write(out, getattr(self, name))

    @classmethod
    def read_fields(cls, body: BodyReader) -> Self:
        values = {name: kind.read(body) for name, kind in cls.FIELDS}
        return cls(**values)
