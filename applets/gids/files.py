"""The GIDS file system: BER-TLV data files and key files under one application.

Theory of operation
-------------------
GIDS keeps everything in elementary files of the application DF (GIDS §8),
created by CREATE FILE with an FCP (``62``) the host writes:

* ``82`` file descriptor: ``39`` a BER-TLV data file (its content is data
  objects, read and written by tag with GET DATA / PUT DATA), ``18`` a key
  file (one key, used through MANAGE SECURITY ENVIRONMENT);
* ``83`` the file identifier (two bytes);
* ``8C`` the access rules (:mod:`applets.gids.acl`); vsc requires them;
* ``A5`` (key files) the control reference templates the key may be used
  with: ``B6`` signature, ``B8`` decipherment, ``A4`` authentication; each
  names an algorithm reference in ``80`` (what MANAGE SECURITY ENVIRONMENT
  must name) and usually the key reference (``83``) and a usage (``95``).

Key files are named ``B0 kk``: ``kk`` is the key reference (``80`` the
administrator key, ``81`` .. ``FF`` the containers' private keys). A key
file whose templates are ``A4`` holds a symmetric key (the administrator
key); ``B6``/``B8`` an asymmetric one, whose private part lives in the key
store, never here.

Files are immutable records; :class:`~applets.gids.state.GidsData` replaces
them whole. A file is created in the creation state and made operational by
ACTIVATE FILE; until then only ACTIVATE may touch it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from types import MappingProxyType

from vsc.sw import InvalidData
from vsc.tlv import encode_tlv, parse_tlvs

from .acl import AccessRules

__all__ = [
    "ADMIN_KEY_REF",
    "FileKind",
    "GidsFile",
    "KeyUsage",
    "LifeCycle",
    "is_key_fid",
    "key_fid",
    "parse_fcp",
]

TAG_FCP = 0x62
TAG_DESCRIPTOR = 0x82
TAG_FID = 0x83
TAG_SECURITY = 0x8C
TAG_KEY_TEMPLATE = 0xA5
TAG_ALGORITHM = 0x80
TAG_LIFE_CYCLE = 0x8A

CRT_AUTHENTICATION = 0xA4
CRT_SIGNATURE = 0xB6
CRT_CONFIDENTIALITY = 0xB8
_CRT_TAGS = frozenset({CRT_AUTHENTICATION, CRT_SIGNATURE, CRT_CONFIDENTIALITY})

#: The administrator key's reference (its file is B080).
ADMIN_KEY_REF = 0x80
_KEY_FID_HIGH = 0xB0
#: Identifiers no elementary file may take: the MF, the application, "current EF", RFU.
_RESERVED_FIDS = frozenset({0x0000, 0x2F01, 0x3F00, 0x3FFF, 0xFFFF})


class FileKind(IntEnum):
    """The file descriptor byte (``82``) of the files GIDS creates."""

    DATA = 0x39  # BER-TLV structure
    KEY = 0x18  # internal key file


class LifeCycle(IntEnum):
    """ISO 7816-4 life cycle status bytes (``8A``)."""

    CREATION = 0x01
    OPERATIONAL = 0x05


def key_fid(key_ref: int) -> int:
    return (_KEY_FID_HIGH << 8) | key_ref


def is_key_fid(fid: int) -> bool:
    return fid >> 8 == _KEY_FID_HIGH and fid & 0xFF >= ADMIN_KEY_REF


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """One control reference template of a key file: ``(crt tag, algorithm reference)``."""

    crt: int
    algorithm: int | None


@dataclass(frozen=True, slots=True)
class GidsFile:
    """One elementary file. ``objects`` for data files, ``secret`` for symmetric key files."""

    fid: int
    kind: FileKind
    fcp: bytes
    rules: AccessRules
    usages: tuple[KeyUsage, ...] = ()
    state: LifeCycle = LifeCycle.CREATION
    objects: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))
    secret: bytes | None = field(default=None, repr=False)

    @property
    def key_ref(self) -> int:
        return self.fid & 0xFF

    @property
    def symmetric(self) -> bool:
        """A key file for the authentication templates only: the administrator key."""
        return self.kind is FileKind.KEY and all(
            usage.crt == CRT_AUTHENTICATION for usage in self.usages
        )

    def allows(self, crt: int, algorithm: int | None) -> bool:
        """Whether MANAGE SECURITY ENVIRONMENT may select this key for ``crt``/``algorithm``."""
        return any(
            usage.crt == crt and (algorithm is None or usage.algorithm == algorithm)
            for usage in self.usages
        )

    def activated(self) -> GidsFile:
        return replace(self, state=LifeCycle.OPERATIONAL)

    def with_object(self, tag: int, value: bytes | None) -> GidsFile:
        """A copy with data object ``tag`` set (None: removed)."""
        objects = dict(self.objects)
        if value is None:
            objects.pop(tag, None)
        else:
            objects[tag] = bytes(value)
        return replace(self, objects=MappingProxyType(objects))

    def with_secret(self, secret: bytes | None) -> GidsFile:
        return replace(self, secret=secret)

    def fcp_with_state(self) -> bytes:
        """The FCP as SELECT returns it: the host's, with the life cycle status."""
        inner = parse_tlvs(self.fcp)[0].value
        body = b"".join(
            encode_tlv(t.tag, t.value) for t in parse_tlvs(inner) if t.tag != TAG_LIFE_CYCLE
        )
        return encode_tlv(TAG_FCP, body + encode_tlv(TAG_LIFE_CYCLE, bytes((self.state,))))


def _one(found: dict[int, bytes], tag: int, what: str) -> bytes:
    value = found.get(tag)
    if value is None:
        raise InvalidData(f"FCP without {what} ({tag:02X})")
    return value


def parse_fcp(fcp: bytes) -> GidsFile:
    """The file CREATE FILE describes; ``6A80`` for anything vsc cannot hold."""
    tlvs = parse_tlvs(fcp)
    if len(tlvs) != 1 or tlvs[0].tag != TAG_FCP:
        raise InvalidData("CREATE FILE needs one FCP template (62)")
    found: dict[int, bytes] = {}
    for tlv in parse_tlvs(tlvs[0].value):
        if tlv.tag in found:
            raise InvalidData(f"FCP tag {tlv.tag:02X} repeated")
        found[tlv.tag] = tlv.value
    descriptor = _one(found, TAG_DESCRIPTOR, "a file descriptor")
    fid_bytes = _one(found, TAG_FID, "a file identifier")
    rules = AccessRules.parse(_one(found, TAG_SECURITY, "security attributes"))
    if not 1 <= len(descriptor) <= 6 or len(fid_bytes) != 2:
        raise InvalidData("bad file descriptor or identifier length")
    try:
        kind = FileKind(descriptor[0])
    except ValueError:
        raise InvalidData(f"file descriptor {descriptor[0]:02X} is not supported") from None
    fid = int.from_bytes(fid_bytes, "big")
    if fid in _RESERVED_FIDS:
        raise InvalidData(f"file identifier {fid:04X} is reserved")
    if kind is FileKind.DATA:
        if fid >> 8 == _KEY_FID_HIGH or TAG_KEY_TEMPLATE in found:
            raise InvalidData(f"{fid:04X}: data files take no key template and no B0xx name")
        return GidsFile(fid, kind, bytes(fcp), rules)
    if not is_key_fid(fid):
        raise InvalidData(f"key files are named B080-B0FF, not {fid:04X}")
    usages = _usages(_one(found, TAG_KEY_TEMPLATE, "a key template"))
    file = GidsFile(fid, kind, bytes(fcp), rules, usages)
    crts = {usage.crt for usage in usages}
    if CRT_AUTHENTICATION in crts and len(crts) > 1:
        raise InvalidData("a key file is either for authentication or for signing/deciphering")
    if file.symmetric != (file.key_ref == ADMIN_KEY_REF):
        raise InvalidData("key reference 80 is the administrator key and only it")
    return file


def _usages(template: bytes) -> tuple[KeyUsage, ...]:
    usages = []
    for crt in parse_tlvs(template):
        if crt.tag not in _CRT_TAGS:
            raise InvalidData(f"unknown control reference template {crt.tag:02X}")
        algorithm = None
        for item in parse_tlvs(crt.value):
            if item.tag == TAG_ALGORITHM:
                if len(item.value) != 1:
                    raise InvalidData("an algorithm reference is one byte")
                algorithm = item.value[0]
        usages.append(KeyUsage(crt.tag, algorithm))
    if not usages:
        raise InvalidData("a key file needs at least one control reference template")
    return tuple(usages)
