"""What a card fixes when it is created, sealed together with its card key.

Theory of operation
-------------------
The backend seals one thing per card with no authorisation: the card key.
Settings that an attacker who can edit the card's files must not be able to
change (turn rollback protection off, allow software keys on a TPM card) are
sealed in the same blob: the TPM (or AES-GCM, for the software backend)
authenticates them as it does the key. A blob of exactly 32 bytes is a card
made before settings existed; it opens with :meth:`CardSettings.legacy`.

Sealed payload, version 1::

    01 | card key (32) | JSON settings (UTF-8, sorted keys)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .crypto import KEY_SIZE
from .errors import CorruptStore

_VERSION = 1


@dataclass(frozen=True, slots=True)
class CardSettings:
    """A card's fixed settings (see the module docstring)."""

    #: On a TPM card, keys of algorithms the TPM lacks may live in software (marked so).
    software_keys: bool = False
    #: The TPM NV counter (its handle) that tells this card's files from older copies.
    rollback_counter: int | None = None
    #: The PCRs (SHA-256 bank) the card key is sealed to; empty: not bound to boot state.
    pcrs: tuple[int, ...] = ()
    #: A card made before settings were sealed with its key (nothing recorded).
    legacy: bool = False

    @classmethod
    def legacy_card(cls) -> CardSettings:
        """An older card: keys it could hold then it still can (software ones included)."""
        return cls(software_keys=True, legacy=True)

    def seal_payload(self, card_key: bytes) -> bytes:
        """What the backend seals: the card key and these settings."""
        if len(card_key) != KEY_SIZE:
            raise ValueError("a card key has 32 bytes")
        if self.legacy:
            return card_key
        document: dict[str, object] = {"software_keys": self.software_keys}
        if self.rollback_counter is not None:
            document["rollback_counter"] = self.rollback_counter
        if self.pcrs:
            document["pcrs"] = list(self.pcrs)
        return bytes([_VERSION]) + card_key + json.dumps(document, sort_keys=True).encode()

    @classmethod
    def open_payload(cls, payload: bytes, card: str) -> tuple[bytes, CardSettings]:
        """The card key and settings of an unsealed payload; :class:`CorruptStore` if malformed."""
        if len(payload) == KEY_SIZE:
            return payload, cls.legacy_card()
        if len(payload) < 1 + KEY_SIZE or payload[0] != _VERSION:
            raise CorruptStore(f"card {card!r}: its sealed key has an unknown format")
        try:
            document = json.loads(payload[1 + KEY_SIZE :])
            counter = document.get("rollback_counter")
            settings = cls(
                software_keys=bool(document["software_keys"]),
                rollback_counter=None if counter is None else int(counter),
                pcrs=tuple(int(p) for p in document.get("pcrs", ())),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CorruptStore(f"card {card!r}: its sealed settings are malformed ({e})") from None
        return payload[1 : 1 + KEY_SIZE], settings
