"""How much latency the share relay adds per APDU: :func:`measure_relay_latency`.

Builds the same two-machine testbed as the end-to-end tests, on loopback:
the emulator in a vpcd slot of a private pcscd (the *local* reader), ``vsc
share serve`` on it, a second private pcscd (the *remote* one) fed by ``vsc
share attach``. Then it times the same APDU through both pcscd instances
with pyscard in this process: *direct* is client -> pcscd -> vpcd ->
emulator; *relayed* adds pcscd -> vpcd -> endpoint -> TLS -> service ->
pcscd on the way. The difference is what sharing costs.

Needs what the end-to-end tests need (Linux, root or user namespaces, pcscd,
vsmartcard-vpcd, pyscard); raises :class:`RuntimeError` saying what is
missing. Every process it starts is stopped by its PID before it returns.
For ``benchmarks/`` -- never assert on these numbers in tests.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .home import ShareHome
from .protocol import ShareMode
from .trust import PeerRole

__all__ = ["LatencyStats", "RelayLatency", "measure_relay_latency"]

_ECHO_AID: Final = bytes.fromhex("F07673630001")
_SELECT_ECHO: Final = bytes.fromhex("00A4040006") + _ECHO_AID
#: The timed command: the echo applet's INS 01 with 4 bytes of data.
DEFAULT_COMMAND: Final = bytes.fromhex("0001000004DEADBEEF")
_START_TIMEOUT: Final = 20.0


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Round-trip times of one path, in microseconds."""

    count: int
    mean_us: float
    p50_us: float
    p90_us: float
    p99_us: float
    min_us: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencyStats:
        if not seconds:
            raise ValueError("no samples")
        micros = sorted(s * 1e6 for s in seconds)

        def at(q: float) -> float:
            return micros[min(len(micros) - 1, round(q * (len(micros) - 1)))]

        return cls(len(micros), statistics.fmean(micros), at(0.5), at(0.9), at(0.99), micros[0])


@dataclass(frozen=True, slots=True)
class RelayLatency:
    """Direct and relayed round trips of the same APDU, and the difference."""

    mode: ShareMode
    command: bytes
    direct: LatencyStats
    relayed: LatencyStats

    @property
    def added_p50_us(self) -> float:
        return self.relayed.p50_us - self.direct.p50_us

    @property
    def added_mean_us(self) -> float:
        return self.relayed.mean_us - self.direct.mean_us


def measure_relay_latency(
    apdus: int = 500,
    *,
    mode: ShareMode = ShareMode.EXCLUSIVE,
    command: bytes = DEFAULT_COMMAND,
    warmup: int = 20,
) -> RelayLatency:
    """Time ``apdus`` round trips of ``command`` (to the echo applet) direct and relayed."""
    if apdus < 1 or warmup < 0:
        raise ValueError("need apdus >= 1 and warmup >= 0")
    from ..testing.emulator_proc import EmulatorProcess
    from ..testing.pcscd import PcscdEnv, skip_reason
    from ..testing.process import Program

    reason = skip_reason()
    if reason is not None:
        raise RuntimeError(f"cannot measure the relay here: {reason}")
    workdir = Path(tempfile.mkdtemp(prefix="vsc-share-latency-"))
    try:
        with ExitStack() as stack:  # every process stopped by its PID, the last started first
            local = stack.enter_context(PcscdEnv())
            remote = stack.enter_context(PcscdEnv(friendly_name="Remote PCD"))
            stack.enter_context(EmulatorProcess(local.vpcd_port(0)))
            local.wait_for_card(local.reader(0), timeout=_START_TIMEOUT)
            service_home, endpoint_home = _paired_homes(workdir)
            cli = [sys.executable, "-m", "vsc.cli", "share"]
            stack.enter_context(
                Program(
                    [*cli, "serve", "--home", str(service_home.path), "--listen", "127.0.0.1:0"],
                    workdir / "service.log",
                    local.env,
                )
            )
            address = _wait_for_service(service_home, workdir / "service.log")
            # Direct first: an exclusive share keeps every other client off the local card.
            direct = _time_apdus(local, local.reader(0), command, apdus, warmup)
            attach = [
                *cli, "attach", "Reader 1", "--home", str(endpoint_home.path),
                "--from", f"{address[0]}:{address[1]}", "--mode", mode.name.lower(),
                "--session", "latency", "--vpcd", f"127.0.0.1:{remote.vpcd_port(0)}",
            ]  # fmt: skip
            stack.enter_context(Program(attach, workdir / "endpoint.log"))
            remote.wait_for_card(remote.reader(0), timeout=_START_TIMEOUT)
            relayed = _time_apdus(remote, remote.reader(0), command, apdus, warmup)
        return RelayLatency(mode, command, direct, relayed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _paired_homes(workdir: Path) -> tuple[ShareHome, ShareHome]:
    service_home, endpoint_home = ShareHome(workdir / "service"), ShareHome(workdir / "endpoint")
    endpoint_certificate = endpoint_home.identity().certificate
    service_home.trust.pin(endpoint_certificate, "latency endpoint", PeerRole.ENDPOINT)
    endpoint_home.trust.pin(service_home.identity().certificate, "latency", PeerRole.SERVICE)
    return service_home, endpoint_home


def _wait_for_service(home: ShareHome, log: Path) -> tuple[str, int]:
    deadline = time.monotonic() + _START_TIMEOUT
    while (address := home.service_address()) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the share service did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.02)
    return address


@contextmanager
def _connected(env: Any, reader: str) -> Iterator[tuple[Any, Any, Any]]:
    from smartcard import scard

    with env.pcsc_context() as context:
        protocols = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        hresult, card, protocol = scard.SCardConnect(
            context, reader, scard.SCARD_SHARE_SHARED, protocols
        )
        if hresult != scard.SCARD_S_SUCCESS:
            raise RuntimeError(f"SCardConnect({reader}): {scard.SCardGetErrorMessage(hresult)}")
        pci = scard.SCARD_PCI_T0 if protocol == scard.SCARD_PROTOCOL_T0 else scard.SCARD_PCI_T1
        try:
            yield scard, card, pci
        finally:
            scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)


def _time_apdus(env: Any, reader: str, command: bytes, count: int, warmup: int) -> LatencyStats:
    with _connected(env, reader) as (scard, card, pci):
        _transmit(scard, card, pci, _SELECT_ECHO)
        apdu = list(command)
        for _ in range(warmup):
            _transmit(scard, card, pci, apdu)
        samples = []
        clock = time.perf_counter
        for _ in range(count):
            start = clock()
            _transmit(scard, card, pci, apdu)
            samples.append(clock() - start)
    return LatencyStats.of(samples)


def _transmit(scard: Any, card: Any, pci: Any, apdu: bytes | list[int]) -> list[int]:
    hresult, response = scard.SCardTransmit(card, pci, list(apdu))
    if hresult != scard.SCARD_S_SUCCESS:
        raise RuntimeError(f"SCardTransmit: {scard.SCardGetErrorMessage(hresult)}")
    if len(response) < 2 or response[-2] != 0x90:
        raise RuntimeError(f"unexpected response {bytes(response).hex()}")
    return list(response)
