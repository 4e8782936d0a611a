"""Which card application a stored card holds, and the rule that never re-creates one.

A card is made whole: :func:`vsc.store.creating_card` builds it in a staging
directory, its application (PIV or GIDS) is provisioned there, and only then
does it appear under its name. The provisioning transaction records the
application in the card's metadata (``application``). From then on the
application's data is part of the card, and its absence is damage:

* the card says ``piv`` (or holds PIV records) but ``piv/record`` is gone:
  :class:`CorruptStore` naming the card and its path. Nothing is deleted or
  provisioned again: that would wipe its keys and give it a new serial, the
  factory PIN, PUK and management key;
* the card holds another application: :class:`ApplicationMismatch`;
* the card holds nothing at all (*bare*: made by ``create_card`` without an
  application): provisioned only when the caller says so (``provision=True``,
  which :func:`open_piv` and :func:`open_gids` take from the code that
  creates cards); any other opener gets :class:`CorruptStore` saying the
  card's creation never finished.

Cards made before the metadata key existed are recognised by their records.
"""

from __future__ import annotations

from .card import StoredCard
from .errors import CorruptStore, StoreError

__all__ = ["APPLICATION_RECORDS", "ApplicationMismatch", "held_application", "require_application"]

#: Each application's main record, and the prefix of all its records.
APPLICATION_RECORDS = {"piv": ("piv/record", "piv/"), "gids": ("gids/record", "gids/")}


class ApplicationMismatch(StoreError):
    """The card holds another card application than the one asked for."""

    def __init__(self, name: str, held: str, wanted: str) -> None:
        super().__init__(f"card {name!r} is a {held.upper()} card, not {wanted.upper()}")
        self.name = name
        self.held = held
        self.wanted = wanted


def held_application(card: StoredCard) -> str | None:
    """The application ``card`` holds: recorded at provisioning, else found by its records."""
    recorded = card.application
    if recorded is not None:
        return recorded
    for application, (_, prefix) in APPLICATION_RECORDS.items():
        if card.names(prefix):
            return application
    return None


def require_application(card: StoredCard, application: str, *, provision: bool = False) -> bool:
    """Whether ``card`` holds ``application``'s data (True) or may be provisioned (False).

    False only for a bare card and ``provision=True``; everything else that is
    not an intact ``application`` card raises (see the module's rules).
    """
    record, _ = APPLICATION_RECORDS[application]
    held = held_application(card)
    where = f"card {card.name!r} at {card.path}"
    if held is None:
        leftovers = card.names()
        bindings = sorted(card.bindings())
        if leftovers or bindings:
            found = ", ".join(leftovers[:3]) or "the binding " + ", ".join(bindings)
            raise CorruptStore(
                f"{where}: it holds data ({found}...) but no card application:"
                " damaged, refusing to reset it"
            )
        if not provision:
            raise CorruptStore(
                f"{where} has no card application: its creation never finished"
                " (destroy it and create it again)"
            )
        return False
    if held != application:
        raise ApplicationMismatch(card.name, held, application)
    if card.protection_of(record) is None:
        raise CorruptStore(
            f"{where}: its {application.upper()} record {record} is missing: the card is damaged;"
            " refusing to reset it (restore it from a backup, or destroy it)"
        )
    return True
