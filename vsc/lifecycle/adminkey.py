"""The admin (management) key of a managed card: parsed from hex, chosen at random, or the default.

Never logged, never written to the audit log; a random key is returned once
to whoever created the card.
"""

from __future__ import annotations

import secrets

from applets.piv.mgmt import DEFAULT_MANAGEMENT_KEY, ManagementKey, ManagementKeyType

__all__ = ["choose_admin_key", "parse_admin_key", "random_admin_key"]


def parse_admin_key(text: str, key_type: ManagementKeyType | None = None) -> ManagementKey:
    """An admin key in hex (white space and colons allowed); the algorithm from ``key_type`` or
    the length (24 bytes: 3DES, 16 or 32: AES)."""
    try:
        raw = bytes.fromhex("".join(text.split()).replace(":", ""))
    except ValueError:
        raise ValueError("the admin key must be hexadecimal") from None
    if key_type is None:
        by_length = {24: ManagementKeyType.TDES, 16: ManagementKeyType.AES128}
        key_type = by_length.get(len(raw), ManagementKeyType.AES256)
    if len(raw) != key_type.key_length:
        raise ValueError(
            f"the admin key has {len(raw)} bytes: a {key_type.name} key has {key_type.key_length}"
            " (3DES: 24, AES: 16, 24 or 32)"
        )
    return ManagementKey(key_type, raw)


def random_admin_key(key_type: ManagementKeyType) -> ManagementKey:
    """A random key of ``key_type`` (never the factory default)."""
    while True:
        key = ManagementKey(key_type, secrets.token_bytes(key_type.key_length))
        if not key.is_default:
            return key


def choose_admin_key(
    choice: str | ManagementKey, key_type: ManagementKeyType
) -> tuple[ManagementKey, str]:
    """``"random"``, ``"default"``, hex or a key: the key and how it was chosen."""
    if isinstance(choice, ManagementKey):
        return choice, "chosen"
    if choice == "random":
        return random_admin_key(key_type), "random"
    if choice == "default":
        if key_type is not ManagementKeyType.TDES:
            return ManagementKey(key_type, DEFAULT_MANAGEMENT_KEY[: key_type.key_length]), "default"
        return ManagementKey(key_type, DEFAULT_MANAGEMENT_KEY), "default"
    return parse_admin_key(choice, key_type), "chosen"
