"""Every test: the card register (cards counted per TPM across stores) in a temporary
directory, never the machine's (``vsc.lifecycle.capacity``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_card_register(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    before = os.environ.get("VSC_REGISTER")
    os.environ["VSC_REGISTER"] = str(tmp_path_factory.mktemp("register"))
    yield
    if before is None:
        os.environ.pop("VSC_REGISTER", None)
    else:
        os.environ["VSC_REGISTER"] = before
