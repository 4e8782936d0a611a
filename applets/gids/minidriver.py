"""The Windows smart card minidriver's files, as GIDS cards store them.

The card does not interpret these: they are data objects the host (the
Windows GIDS minidriver, OpenSC's ``gids`` driver, vsc's own
personalisation) writes and reads. This module builds and reads them for
personalisation and tests. Layouts (little-endian, packed as the Windows
structures they copy; docs/gids.md has the byte tables):

* the *file table* (``A000``/``DF1F``): a ``01`` byte, then 28-byte records
  ``directory[9] filename[9] 00 00 DO(u32) FID(u32)`` mapping minidriver
  paths (``mscp\\cmapfile``) to a data object in a data file; a record with
  an empty file name is a directory;
* the *key map* (``A000``/``DF20``): a ``01`` byte, then 12-byte records
  ``state(u32) algorithm key-spec key-reference(u16) FFFF 0000``, one per
  container, key reference ``B0kk`` or ``FFFF`` for a deleted one;
* ``cardid`` (16 random bytes), ``cardapps`` (``mscp`` and four zeros),
  ``cardcf`` (version, PIN freshness, container freshness (u16), file
  freshness (u16)) and ``mscp\\cmapfile`` (86-byte ``CONTAINER_MAP_RECORD``:
  UTF-16 name of 40 characters, flags, reserved, signature and key exchange
  key sizes in bits) from the minidriver specification;
* certificates ``mscp\\kxcNN`` / ``mscp\\kscNN``: ``01 00``, the DER length (u16),
  then the DER compressed with zlib (the minidriver's compression; OpenSC
  reads no other).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "CARDAPPS",
    "CardCache",
    "Container",
    "FileEntry",
    "KeyMapEntry",
    "compress_certificate",
    "decompress_certificate",
    "parse_containers",
    "parse_file_table",
    "parse_key_map",
]

#: The one application the minidriver knows: "mscp".
CARDAPPS = b"mscp\x00\x00\x00\x00"

#: Where the minidriver layout puts its files: (data file, data object).
FILE_TABLE = (0xA000, 0xDF1F)
KEY_MAP = (0xA000, 0xDF20)
CARDID = (0xA012, 0xDF20)
CARDAPPS_LOCATION = (0xA010, 0xDF21)
CARDCF = (0xA010, 0xDF22)
CMAPFILE = (0xA010, 0xDF23)

_FILE_RECORD = struct.Struct("<9s9s2xII")
_KEY_RECORD = struct.Struct("<IBBHHH")
_CONTAINER = struct.Struct("<80sBBHH")
_CARDCF = struct.Struct("<BBHH")
_TABLE_VERSION = 0x01

#: CONTAINER_MAP_RECORD flags.
CONTAINER_VALID = 0x01
CONTAINER_DEFAULT = 0x02
#: Key map key specs (the PIV-like slot numbers GIDS reuses).
KEY_EXCHANGE = 0x9A
SIGNATURE = 0x9C


def _cstring(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One record of the file table."""

    directory: str
    name: str
    data_object: int
    fid: int

    def encode(self) -> bytes:
        return _FILE_RECORD.pack(
            self.directory.encode("ascii"), self.name.encode("ascii"), self.data_object, self.fid
        )


def encode_file_table(entries: list[FileEntry]) -> bytes:
    return bytes((_TABLE_VERSION,)) + b"".join(e.encode() for e in entries)


def parse_file_table(data: bytes) -> list[FileEntry]:
    """``ValueError`` for a table that is not version 1 or has a partial record."""
    if not data or data[0] != _TABLE_VERSION or (len(data) - 1) % _FILE_RECORD.size:
        raise ValueError("not a GIDS file table")
    return [
        FileEntry(_cstring(d), _cstring(n), do, fid)
        for d, n, do, fid in _FILE_RECORD.iter_unpack(data[1:])
    ]


#: The file table gids-tool and vsc write at personalisation.
INITIAL_FILES = [
    FileEntry("mscp", "", 0, 0xA000),
    FileEntry("", "cardid", CARDID[1], CARDID[0]),
    FileEntry("", "cardapps", CARDAPPS_LOCATION[1], CARDAPPS_LOCATION[0]),
    FileEntry("", "cardcf", CARDCF[1], CARDCF[0]),
    FileEntry("mscp", "cmapfile", CMAPFILE[1], CMAPFILE[0]),
]


@dataclass(frozen=True, slots=True)
class KeyMapEntry:
    state: int
    algorithm: int
    key_spec: int
    key_reference: int

    def encode(self) -> bytes:
        return _KEY_RECORD.pack(
            self.state, self.algorithm, self.key_spec, self.key_reference, 0xFFFF, 0
        )


def encode_key_map(entries: list[KeyMapEntry]) -> bytes:
    return bytes((_TABLE_VERSION,)) + b"".join(e.encode() for e in entries)


def parse_key_map(data: bytes) -> list[KeyMapEntry]:
    if not data or data[0] != _TABLE_VERSION or (len(data) - 1) % _KEY_RECORD.size:
        raise ValueError("not a GIDS key map")
    return [KeyMapEntry(s, a, k, r) for s, a, k, r, _, _ in _KEY_RECORD.iter_unpack(data[1:])]


@dataclass(frozen=True, slots=True)
class Container:
    """A ``CONTAINER_MAP_RECORD``."""

    name: str
    flags: int
    signature_bits: int = 0
    key_exchange_bits: int = 0

    @property
    def valid(self) -> bool:
        return bool(self.flags & CONTAINER_VALID)

    def encode(self) -> bytes:
        name = self.name.encode("utf-16-le")[:78].ljust(80, b"\x00")
        return _CONTAINER.pack(name, self.flags, 0, self.signature_bits, self.key_exchange_bits)


def encode_containers(containers: list[Container]) -> bytes:
    return b"".join(c.encode() for c in containers)


def parse_containers(data: bytes) -> list[Container]:
    if len(data) % _CONTAINER.size:
        raise ValueError("the cmapfile is not whole container records")
    out = []
    for name, flags, _, sig, kx in _CONTAINER.iter_unpack(data):
        text = name.decode("utf-16-le", "replace").split("\x00", 1)[0]
        out.append(Container(text, flags, sig, kx))
    return out


@dataclass(frozen=True, slots=True)
class CardCache:
    """``cardcf``: freshness counters the minidriver bumps to invalidate host caches."""

    version: int = 0
    pins: int = 0
    containers: int = 0
    files: int = 0

    def encode(self) -> bytes:
        return _CARDCF.pack(self.version, self.pins, self.containers, self.files)

    @classmethod
    def parse(cls, data: bytes) -> CardCache:
        if len(data) != _CARDCF.size:
            raise ValueError("cardcf has 6 bytes")
        return cls(*_CARDCF.unpack(data))


_COMPRESSED = b"\x01\x00"


def compress_certificate(der: bytes) -> bytes:
    if len(der) > 0xFFFF:
        raise ValueError("certificate too long for the minidriver's 16-bit length")
    return _COMPRESSED + len(der).to_bytes(2, "little") + zlib.compress(der)


def decompress_certificate(data: bytes) -> bytes:
    """``ValueError`` for another format, a corrupt stream or a wrong length."""
    if data[:2] != _COMPRESSED or len(data) < 4:
        raise ValueError("not a zlib-compressed minidriver certificate")
    length = int.from_bytes(data[2:4], "little")
    try:
        der = zlib.decompress(data[4:])
    except zlib.error as e:
        raise ValueError(f"corrupt certificate: {e}") from e
    if len(der) != length:
        raise ValueError(f"certificate of {len(der)} bytes, header says {length}")
    return der
