"""vsc's pytest plugin: virtual cards as fixtures (installed with vsc, entry point ``pytest11``).

Fixtures (all function-scoped, so every test starts from a factory card):

* ``vsc_card`` -- a :class:`vsc.Card` in this process: a factory PIV card
  (with the echo applet), in memory by default. Choose what card with the
  ``vsc_card`` marker or indirect parametrization (a :class:`CardSpec`, a
  dict of its fields, or a backend name)::

      @pytest.mark.vsc_card(backend="tpm")            # stored, sealed by a private swtpm
      def test_x(vsc_card): ...

      @pytest.mark.parametrize("vsc_card", ["memory", "software", "tpm"], indirect=True)
      def test_y(vsc_card): ...

* ``vsc_connection`` -- the card behind yubikit's ``SmartCardConnection``:
  ``PivSession(vsc_connection)`` works with no pcscd at all;
* ``vsc_reader`` -- the card in a private pcscd's reader through vpcd
  (:class:`VscReader`: ``name``, ``env`` for a subprocess client, ``run``);
  pcscd runs in its own mount namespace on random ports, so parallel runs
  (pytest-xdist) do not collide. ``transport="usb"`` in the card's spec
  makes it a YubiKey on USB to ykman and yubikit (a reader named like a
  YubiKey's CCID interface, the USB ATR); by default it is one on NFC (the
  reader "Virtual PCD");
* ``vsc_tpm`` -- a private swtpm (:class:`vsc.testing.swtpm.Swtpm`; ``tcti``);
* ``vsc_store`` -- a temporary card store (:class:`vsc.store.CardStore`).

Every process a fixture starts (pcscd, swtpm) is stopped by its PID at
teardown, which pytest also runs when the test fails or the run is
interrupted (Ctrl-C); the processes get SIGTERM from the kernel if the test
process dies without tearing down (``setpriv --pdeathsig``). Where a
prerequisite is missing (pcscd, vpcd, mount namespaces, swtpm, tpm2-pytss)
the fixture skips the test with the reason, and fails it instead when the
environment variable ``CI`` is set, so a CI run cannot pass by skipping.

See docs/testing.md for examples.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, NoReturn

import pytest

from . import pcscd as _pcscd
from . import swtpm as _swtpm

if TYPE_CHECKING:
    from yubikit.core.smartcard import SmartCardConnection

    from vsc.card import Card
    from vsc.store import CardStore

__all__ = [
    "BACKENDS",
    "TRANSPORTS",
    "CardSpec",
    "VscReader",
    "reader_friendly_name",
    "running_in_ci",
    "unavailable",
]

#: Where ``vsc_card`` keeps the card: in memory, or in ``vsc_store`` under a protection backend.
BACKENDS = ("memory", "plain", "software", "tpm")
#: How the card is attached, as yubikit's TRANSPORT says it (applets.cards.Transport's values).
TRANSPORTS = ("nfc", "usb")
#: Seconds to wait for pcscd to see the card (it polls about every 400 ms).
CARD_TIMEOUT = 10.0


def running_in_ci() -> bool:
    """Whether ``CI`` is set (to anything but empty, 0, false or no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip for a missing prerequisite; fail instead under CI, which must run the test."""
    if running_in_ci():
        pytest.fail(f"prerequisite missing (CI is set): {reason}", pytrace=False)
    pytest.skip(reason)


def pcscd_problem() -> str | None:
    """Why a private pcscd with vpcd cannot run here, or None."""
    reason = _pcscd.skip_reason()
    if reason is None and not _pcscd.VPCD_DRIVER.exists():
        reason = f"the vpcd driver is missing ({_pcscd.VPCD_DRIVER}; Debian: vsmartcard-vpcd)"
    if reason is None and importlib.util.find_spec("smartcard") is None:
        reason = "pyscard is not installed (pip install 'vsc[testing]')"
    return reason


def swtpm_problem() -> str | None:
    """Why a private swtpm cannot run here, or None."""
    return _swtpm.swtpm_skip_reason()


# -- what card -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardSpec:
    """What ``vsc_card`` builds.

    ``backend``: ``memory`` (no store), or a stored card protected by
    ``plain`` (nothing; tests only), ``software`` (a key file) or ``tpm``
    (``vsc_tpm``). ``profile``: a card profile name, None for the default
    card. ``serial``: fixed, or None for a random one. ``transport``: how a
    YubiKey is attached, ``nfc`` or ``usb``: its ATR, the transport
    ``vsc_connection`` reports, and the name of ``vsc_reader``'s reader
    (ykman and yubikit take the USB path only for a reader named like a
    YubiKey's).
    """

    backend: str = "memory"
    profile: str | None = None
    serial: int | None = None
    name: str = "card"
    transport: str = "nfc"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise pytest.UsageError(f"vsc_card backend {self.backend!r}: one of {BACKENDS}")
        if self.transport not in TRANSPORTS:
            raise pytest.UsageError(f"vsc_card transport {self.transport!r}: one of {TRANSPORTS}")

    @property
    def stored(self) -> bool:
        return self.backend != "memory"

    @classmethod
    def of(cls, value: object) -> CardSpec:
        """A spec from a parameter or marker value: a CardSpec, a mapping, or a backend name."""
        if isinstance(value, CardSpec):
            return value
        if isinstance(value, str):
            return cls(backend=value)
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = set(value) - known
            if unknown:
                raise pytest.UsageError(f"vsc_card: unknown options {sorted(unknown)}")
            return cls(**value)
        raise pytest.UsageError(f"vsc_card: cannot make a card of {value!r}")


#: The spec ``vsc_card`` built its card from, for the fixtures that serve that card.
_SPEC = pytest.StashKey[CardSpec]()


def _spec(request: pytest.FixtureRequest) -> CardSpec:
    param = getattr(request, "param", None)
    if param is not None:
        return CardSpec.of(param)
    marker = request.node.get_closest_marker("vsc_card")
    if marker is None:
        return CardSpec()
    options = dict(marker.kwargs)
    if marker.args:
        options["backend"] = marker.args[0]
    return CardSpec.of(options)


def card_profiles() -> Sequence[str]:
    """The profile names ``CardSpec.profile`` accepts: yubikey-5.4, yubikey-5.7, piv."""
    from applets.piv import PROFILES

    return tuple(PROFILES)


def _check_profile(spec: CardSpec) -> None:
    if spec.profile is not None and spec.profile not in card_profiles():
        raise pytest.UsageError(
            f"vsc_card profile {spec.profile!r}: known profiles {list(card_profiles())}"
        )


def _memory_card(spec: CardSpec) -> Card:
    from applets.cards import Transport
    from vsc import emulator

    _check_profile(spec)
    transport = Transport(spec.transport)
    if spec.profile is None:
        return emulator.default_card(spec.serial, transport=transport)
    return emulator.default_card(spec.serial, profile=spec.profile, transport=transport)


# -- fixtures ---------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "vsc_card(backend='memory', profile=None, serial=None, transport='nfc'): the card "
        f"vsc_card builds (backends: {', '.join(BACKENDS)}; transports: {', '.join(TRANSPORTS)})",
    )


@pytest.fixture
def vsc_store(tmp_path_factory: pytest.TempPathFactory) -> CardStore:
    """A card store in a fresh private (0700) temporary directory."""
    from vsc.store import CardStore

    root = tmp_path_factory.mktemp("vsc-store") / "store"
    root.mkdir(mode=0o700)
    return CardStore(root)


@pytest.fixture
def vsc_tpm() -> Iterator[_swtpm.Swtpm]:
    """A private swtpm on its own Unix socket; ``vsc_tpm.tcti`` is what ``--tpm`` takes.

    Shut down (TPM2_Shutdown) and stopped by its PID afterwards.
    """
    problem = swtpm_problem()
    if problem is not None:
        unavailable(problem)
    with _swtpm.Swtpm() as tpm:
        yield tpm


@pytest.fixture
def vsc_card(request: pytest.FixtureRequest) -> Iterator[Card]:
    """A factory PIV card in this process (see the module docstring for choosing one)."""
    spec = _spec(request)
    request.node.stash[_SPEC] = spec
    if not spec.stored:
        yield _memory_card(spec)
        return
    _check_profile(spec)
    from applets.cards import Transport
    from applets.piv import PROFILES
    from vsc.emulator import open_card
    from vsc.store import BackendSpec, create_key_file

    store: CardStore = request.getfixturevalue("vsc_store")
    if spec.backend == "tpm":
        backend = BackendSpec.tpm(request.getfixturevalue("vsc_tpm").tcti)
    elif spec.backend == "software":
        key_file = store.root.parent / "card.key"
        create_key_file(key_file)
        backend = BackendSpec.software(key_file=str(key_file))
    else:
        backend = BackendSpec.plain()
    profile = None if spec.profile is None else PROFILES[spec.profile]
    card, stored = open_card(
        spec.name,
        backend,
        store=store.root,
        profile=profile,
        serial=spec.serial,
        transport=Transport(spec.transport),
    )
    try:
        yield card
    finally:
        stored.close()


def _card_spec(request: pytest.FixtureRequest) -> CardSpec:
    """The spec of the test's ``vsc_card`` (requested first, by the fixture's signature)."""
    spec: CardSpec = request.node.stash.get(_SPEC, CardSpec())
    return spec


@pytest.fixture
def vsc_connection(request: pytest.FixtureRequest, vsc_card: Card) -> Iterator[SmartCardConnection]:
    """``vsc_card`` as yubikit's SmartCardConnection (``PivSession(vsc_connection)``), on the
    card's transport (NFC: short APDUs and chaining; USB: extended APDUs)."""
    from vsc.inproc import TRANSPORT, YubikitConnection

    connection = YubikitConnection(vsc_card, TRANSPORT(_card_spec(request).transport))
    try:
        yield connection
    finally:
        connection.close()


@dataclass
class VscReader:
    """``vsc_card`` in a private pcscd's reader.

    ``name`` is the PC/SC reader name, ``env`` the environment a subprocess
    client needs (it points libpcsclite at this pcscd), ``card`` the card
    being served (touch it only through the reader while the test runs: the
    emulator's thread serves it), ``pcscd`` the harness object
    (:class:`vsc.testing.PcscdEnv`).
    """

    name: str
    env: dict[str, str]
    card: Card
    pcscd: _pcscd.PcscdEnv

    def run(
        self, argv: Sequence[str], *, timeout: float = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a client of this reader (output captured; killed and reported after ``timeout``)."""
        return self.pcscd.run(argv, timeout=timeout, input=input)

    def use_in_process(self) -> None:
        """Point this process's pyscard at this reader's pcscd (before its first use)."""
        self.pcscd.use_in_process()


def reader_friendly_name(transport: str) -> str:
    """The reader's name for a card on ``transport``: a YubiKey's USB CCID interface, or vpcd's.

    ykman and yubikit decide USB or NFC by the reader's name (and the card's ATR).
    """
    from applets.cards import YUBIKEY_READER_NAME

    return YUBIKEY_READER_NAME if transport == "usb" else _pcscd.FRIENDLY_NAME


@pytest.fixture
def vsc_reader(request: pytest.FixtureRequest, vsc_card: Card) -> Iterator[VscReader]:
    """``vsc_card`` served through vpcd into a private pcscd (see :class:`VscReader`); the
    reader is named for the card's transport (:func:`reader_friendly_name`)."""
    problem = pcscd_problem()
    if problem is not None:
        unavailable(problem)
    from vsc.emulator import Emulator

    friendly_name = reader_friendly_name(_card_spec(request).transport)
    with (
        _pcscd.PcscdEnv(friendly_name=friendly_name) as pcscd,
        contextlib.ExitStack() as stack,
    ):
        emulator = Emulator([vsc_card], host="127.0.0.1", port=pcscd.vpcd_port(0))
        stack.enter_context(emulator)
        name = pcscd.reader(0)
        pcscd.wait_for_card(name, timeout=CARD_TIMEOUT)
        yield VscReader(name, pcscd.env, vsc_card, pcscd)
