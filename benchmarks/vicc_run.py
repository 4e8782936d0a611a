"""Run vsmartcard's ``vicc`` (Debian package vsmartcard-vpicc) as a benchmark anchor.

This file is a standalone script (standard library only) because vicc runs
in Debian's ``/usr/bin/python3``, not in the project's venv:

* ``vicc_run.py engine`` times vicc's card engine, ``Iso7816OS.execute``, on
  APDUs comparable to ours and prints JSON statistics;
* ``vicc_run.py serve -H HOST -P PORT`` runs ``/usr/bin/vicc`` unchanged (the
  vpcd client as shipped, including its 44 ms stall).

Two packaging defects of Debian 12 are bridged here, without touching vicc's
code: the package installs its modules under
``/usr/lib/python3/site-packages/virtualsmartcard`` (not on ``sys.path``),
and vicc imports PyCrypto's ``Crypto`` namespace while Debian's
``python3-pycryptodome`` provides the same modules as ``Cryptodome``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import runpy
import statistics
import sys
import time
from typing import Any

VICC_SCRIPT = "/usr/bin/vicc"
VICC_PACKAGE_ROOT = "/usr/lib/python3/site-packages/virtualsmartcard"
_CRYPTO_SUBPACKAGES = ("Cipher", "Hash", "Util", "PublicKey", "Random", "Signature", "Protocol")

#: A DF added to vicc's default MF so SELECT by AID finds something (the PIV AID).
PIV_AID = bytes.fromhex("A000000308000010000100")

#: The APDUs timed by ``engine``: name -> (hex, what it is).
ENGINE_APDUS: dict[str, str] = {
    "select_mf": "00A4000C023F00",  # SELECT MF by FID, no FCI
    "select_aid": "00A4040C0B" + PIV_AID.hex().upper(),  # SELECT DF by name, no FCI
    "select_aid_missing": "00A4040C05A000000999",  # 6A82
    "verify": "002000000431323334",  # the iso7816 card's PIN
}


def make_importable() -> None:
    """Put vicc's package on ``sys.path`` and alias ``Crypto`` to ``Cryptodome``."""
    if VICC_PACKAGE_ROOT not in sys.path:
        sys.path.insert(0, VICC_PACKAGE_ROOT)
    try:
        importlib.import_module("Crypto.Cipher")
    except ImportError:
        sys.modules["Crypto"] = importlib.import_module("Cryptodome")
        for sub in _CRYPTO_SUBPACKAGES:
            try:
                sys.modules[f"Crypto.{sub}"] = importlib.import_module(f"Cryptodome.{sub}")
            except ImportError:
                continue


def _vicc_os() -> Any:
    """vicc's default ``iso7816`` card, as ``vicc -t iso7816`` builds it, plus one DF."""
    make_importable()
    logging.basicConfig(level=logging.CRITICAL)  # what vicc does without -v
    generator_module = importlib.import_module("virtualsmartcard.CardGenerator")
    vs_module = importlib.import_module("virtualsmartcard.VirtualSmartcard")
    fs_module = importlib.import_module("virtualsmartcard.SmartcardFilesystem")
    mf, sam = generator_module.CardGenerator("iso7816").getCard()
    mf.append(fs_module.DF(parent=mf, fid=0x4F00, dfname=PIV_AID))
    return vs_module.Iso7816OS(mf, sam)


def _stats(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "n": n,
        "median_ns": statistics.median(ordered),
        "p99_ns": ordered[min(n - 1, int(n * 0.99))],
        "min_ns": ordered[0],
        "mean_ns": statistics.fmean(ordered),
    }


def engine(warmup: int, samples: int, seconds: float) -> dict[str, Any]:
    card = _vicc_os()
    clock = time.perf_counter_ns
    results: dict[str, Any] = {"python": sys.version.split()[0]}
    for name, hex_apdu in ENGINE_APDUS.items():
        apdu = bytes.fromhex(hex_apdu)
        execute = card.execute
        for _ in range(warmup):
            execute(apdu)
        times: list[int] = []
        deadline = clock() + int(seconds * 1e9)
        while len(times) < samples:
            start = clock()
            execute(apdu)
            times.append(clock() - start)
            if len(times) >= 20 and clock() > deadline:
                break
        response = bytes(execute(apdu))
        results[name] = {**_stats(times), "apdu": hex_apdu, "response": response.hex()}
    return results


def serve(argv: list[str]) -> None:
    """``/usr/bin/vicc ARGS`` as shipped, with only the import fixes above."""
    make_importable()
    sys.argv = [VICC_SCRIPT, *argv]
    runpy.run_path(VICC_SCRIPT, run_name="__main__")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["engine"])
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(engine(args.warmup, args.samples, args.seconds)))


if __name__ == "__main__":
    main()
