"""Group ``engine``: ``Card.transmit`` in-process, per APDU kind, with its anchors.

Anchors measured in the same run: the echo card (the engine's own floor:
parse, dispatch, respond, with an applet that does nothing), the raw
``cryptography`` operation behind each crypto APDU, and vsmartcard's vicc
engine (``Iso7816OS.execute``, run by Debian's Python in a subprocess) on
comparable non-crypto APDUs. Every APDU's response is checked once before it
is timed, so a row can never time an error path by accident.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from applets.piv.keys import KeyType
from applets.piv.objects import certificate_value
from vsc.tlv import encode_tlv

from . import fixtures as fx
from .context import RunContext
from .report import GroupResult, Row, Target
from .timing import Budget, Stats, clock, measure, measure_pair, measure_parts

VICC_PYTHON = "/usr/bin/python3"
VICC_RUNNER = Path(__file__).with_name("vicc_run.py")

#: Issue 7: a non-crypto APDU, engine only.
NON_CRYPTO_US = 5.0
P256_EXTRA_US = 15.0
RSA_SIGN_RATIO = 1.10
RAW_RSA_RATIO = 1.5

Transmit = Callable[[bytes], bytes]


class BadResponse(RuntimeError):
    """An APDU did not answer what the benchmark expects: its row would be meaningless."""


def _check(name: str, response: bytes, sw: int = 0x9000) -> bytes:
    if len(response) < 2 or int.from_bytes(response[-2:], "big") != sw:
        raise BadResponse(f"{name}: expected SW {sw:04X}, card answered {response.hex()}")
    return response[:-2]


def _apdu(transmit: Transmit, name: str, apdu: bytes, sw: int = 0x9000) -> Callable[[], bytes]:
    _check(name, transmit(apdu), sw)
    return lambda: transmit(apdu)


def _chain(transmit: Transmit, apdus: list[bytes]) -> Callable[[], bytes]:
    """A client's whole exchange: chained commands, then GET RESPONSE while 61xx."""

    def op() -> bytes:
        response = b""
        for apdu in apdus:
            response = transmit(apdu)
        data = response[:-2]
        while response[-2] == 0x61:
            response = transmit(bytes((0, 0xC0, 0, 0, response[-1])))
            data += response[:-2]
        return data + response[-2:]

    return op


def _ratio_text(ratio: float, what: str) -> str:
    return f"{ratio:.3f}x {what}" if ratio < 10 else f"{ratio:.0f}x {what}"


def _delta_text(delta_ns: float, what: str) -> str:
    return f"{delta_ns / 1000:+.1f} us vs {what}"


def vicc_engine(budget: Budget) -> tuple[dict[str, Any] | None, str]:
    """vicc's ``execute`` timings from a Debian-Python subprocess, or (None, why not)."""
    if not Path(VICC_PYTHON).exists() or shutil.which("vicc") is None:
        return None, "vicc not installed (Debian: vsmartcard-vpicc)"
    argv = [
        VICC_PYTHON,
        str(VICC_RUNNER),
        "engine",
        f"--warmup={budget.warmup}",
        f"--samples={budget.samples}",
        f"--seconds={budget.seconds}",
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return None, "vicc engine run timed out"
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return None, f"vicc engine failed ({tail[0]}); needs python3-pycryptodome"
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        return None, "vicc engine printed no JSON"
    return result, ""


def _vicc_stats(entry: dict[str, Any]) -> Stats:
    return Stats(
        n=int(entry["n"]),
        median_ns=float(entry["median_ns"]),
        p99_ns=float(entry["p99_ns"]),
        min_ns=float(entry["min_ns"]),
        mean_ns=float(entry["mean_ns"]),
    )


def run(ctx: RunContext) -> GroupResult:
    group = GroupResult("engine", "Card.transmit in-process, per APDU kind (PIV applet)")
    fast, slow = ctx.fast, ctx.slow
    keys = fx.key_set()

    # -- anchors: the engine floor and vicc ------------------------------------------------
    echo = fx.echo_card()
    floor = group.add(
        Row(
            "echo card, INS 01 (engine floor)",
            measure(_apdu(echo.transmit, "echo", fx.ECHO_4), fast),
            anchor=True,
        )
    )
    floor_ns = floor.stats.median_ns if floor.stats else 1.0

    vicc, why = vicc_engine(fast)
    vicc_rows: dict[str, Row] = {}
    if vicc is None:
        group.notes.append(f"vicc anchor not measured: {why}")
    else:
        labels = {
            "select_mf": "vicc SELECT MF by FID (no FCI)",
            "select_aid": "vicc SELECT DF by AID (no FCI)",
            "select_aid_missing": "vicc SELECT unknown AID (6A82)",
            "verify": "vicc VERIFY (PIN)",
        }
        for key, label in labels.items():
            entry = vicc[key]
            row = Row(label, _vicc_stats(entry), anchor=True, note="")
            vicc_rows[key] = group.add(row)
        group.notes.append(
            f"vicc: Debian's vsmartcard-vpicc engine (Iso7816OS.execute) under Python "
            f"{vicc.get('python', '?')}, default iso7816 card plus one DF named with the PIV AID"
        )

    def versus_vicc(key: str, stats: Stats) -> tuple[str, float | None]:
        row = vicc_rows.get(key)
        if row is None or row.stats is None:
            return "", None
        ratio = stats.median_ns / row.stats.median_ns
        return _ratio_text(ratio, "vicc"), ratio

    def non_crypto_target(stats: Stats) -> Target:
        return Target(f"<= {NON_CRYPTO_US:g} us", stats.median_us <= NON_CRYPTO_US)

    # -- PIV, non-crypto -------------------------------------------------------------------
    card, _applet = fx.piv_card(keys)
    t = card.transmit

    s = measure(_apdu(t, "SELECT PIV", fx.SELECT_PIV), fast)
    text, ratio = versus_vicc("select_aid", s)
    group.add(Row("SELECT PIV (FCI)", s, comparison=text, ratio=ratio, target=non_crypto_target(s)))

    missing = bytes.fromhex("00A4040005A000000999")
    s = measure(_apdu(t, "SELECT unknown", missing, 0x6A82), fast)
    text, ratio = versus_vicc("select_aid_missing", s)
    group.add(Row("SELECT unknown AID (6A82)", s, comparison=text, ratio=ratio))

    s = measure(_apdu(t, "VERIFY query", fx.VERIFY_QUERY, 0x63C3), fast)
    group.add(
        Row(
            "VERIFY status query, not verified (63C3)",
            s,
            comparison=_ratio_text(s.median_ns / floor_ns, "floor"),
            ratio=s.median_ns / floor_ns,
            target=non_crypto_target(s),
        )
    )

    s = measure(_apdu(t, "VERIFY", fx.VERIFY_PIN), fast)
    text, ratio = versus_vicc("verify", s)
    group.add(
        Row(
            "VERIFY (PIN, 2 commits)",
            s,
            comparison=text,
            ratio=ratio,
            target=non_crypto_target(s),
            note="decrements the retry counter (one record commit) before comparing, "
            "restores it after (a second commit)",
        )
    )

    s = measure(_apdu(t, "VERIFY query", fx.VERIFY_QUERY), fast)
    group.add(
        Row(
            "VERIFY status query, verified (9000)",
            s,
            comparison=_ratio_text(s.median_ns / floor_ns, "floor"),
            ratio=s.median_ns / floor_ns,
            target=non_crypto_target(s),
        )
    )

    s = measure(_apdu(t, "GET DATA CHUID", fx.GET_DATA_CHUID), fast)
    group.add(
        Row(
            "GET DATA CHUID (61 B)",
            s,
            comparison=_ratio_text(s.median_ns / floor_ns, "floor"),
            ratio=s.median_ns / floor_ns,
            target=non_crypto_target(s),
        )
    )

    cert_op = _chain(t, [fx.GET_DATA_CERT])
    expected = encode_tlv(0x53, certificate_value(keys.certificate))
    if _check("GET DATA cert", cert_op()) != expected:
        raise BadResponse("GET DATA cert: wrong object bytes")
    apdus = 1 + (len(expected) - 1) // 256
    s = measure(cert_op, slow)
    group.add(
        Row(
            f"GET DATA 2 KB cert + GET RESPONSE ({apdus} APDUs)",
            s,
            apdus=apdus,
            comparison=f"{s.median_us / apdus:.2f} us/APDU",
            note=f"short Le: {len(expected)} bytes in 256-byte pieces, 61xx / GET RESPONSE",
        )
    )

    # -- PIV, crypto: each APDU next to the raw operation ----------------------------------
    digest256 = hashlib.sha256(b"vsc benchmark").digest()
    digest384 = hashlib.sha384(b"vsc benchmark").digest()
    message = bytes(range(64))

    def sign_row(
        name: str,
        raw_name: str,
        raw: Callable[[], object],
        apdu_op: Callable[[], bytes],
        *,
        extra_us: float | None = None,
        apdus: int = 1,
    ) -> None:
        raw_stats, stats = measure_pair(raw, apdu_op, slow)
        group.add(Row(raw_name, raw_stats, anchor=True))
        delta = stats.median_ns - raw_stats.median_ns
        target = None
        if extra_us is not None:
            target = Target(f"<= raw + {extra_us:g} us", delta <= extra_us * 1000)
        group.add(
            Row(
                name,
                stats,
                apdus=apdus,
                comparison=_delta_text(delta, "raw"),
                ratio=stats.median_ns / raw_stats.median_ns,
                target=target,
            )
        )

    _check("VERIFY", t(fx.VERIFY_PIN))  # PIN policy ONCE: one VERIFY unlocks every slot

    ga = fx.ga_sign(KeyType.ECCP256, fx.SLOT_P256, digest256)
    signature = _check("GA P-256", t(ga))[4:]
    keys.p256.public_key().verify(signature, digest256, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    sign_row(
        "GA sign P-256",
        "raw ECDSA P-256 sign (cryptography)",
        lambda: keys.p256.sign(digest256, ec.ECDSA(utils.Prehashed(hashes.SHA256()))),
        _apdu(t, "GA P-256", ga),
        extra_us=P256_EXTRA_US,
    )

    ga = fx.ga_sign(KeyType.ECCP384, fx.SLOT_P384, digest384)
    sign_row(
        "GA sign P-384",
        "raw ECDSA P-384 sign (cryptography)",
        lambda: keys.p384.sign(digest384, ec.ECDSA(utils.Prehashed(hashes.SHA384()))),
        _apdu(t, "GA P-384", ga),
    )

    ga = fx.ga_sign(KeyType.ED25519, fx.SLOT_ED25519, message)
    sign_row(
        "GA sign Ed25519 (64 B message)",
        "raw Ed25519 sign (cryptography)",
        lambda: keys.ed25519.sign(message),
        _apdu(t, "GA Ed25519", ga),
    )

    # RSA-2048 PKCS#1 v1.5 signature: one extended APDU (ykman over USB) ...
    block = fx.pkcs1v15_sign_block(digest256)
    template = fx.ga_template(block)
    ga_ext = fx.extended_apdu(0x87, KeyType.RSA2048, fx.SLOT_RSA, template)
    signature = _check("GA RSA ext", t(ga_ext))[8:]
    keys.rsa2048.public_key().verify(
        signature, digest256, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
    )
    raw_rsa_sign, s = measure_pair(
        lambda: keys.rsa2048.sign(digest256, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())),
        _apdu(t, "GA RSA ext", ga_ext),
        slow,
    )
    group.add(Row("raw RSA-2048 PKCS#1 v1.5 sign (OpenSSL)", raw_rsa_sign, anchor=True))
    ratio = s.median_ns / raw_rsa_sign.median_ns
    group.add(
        Row(
            "GA sign RSA-2048 PKCS#1 v1.5 (1 extended APDU)",
            s,
            comparison=_ratio_text(ratio, "raw"),
            ratio=ratio,
            target=Target(f"<= {RSA_SIGN_RATIO:.2f}x raw", ratio <= RSA_SIGN_RATIO),
        )
    )
    # ... and as OpenSC / yubico-piv-tool send it: 2 chained short APDUs + GET RESPONSE.
    chained = _chain(t, fx.chained_apdus(0x87, KeyType.RSA2048, fx.SLOT_RSA, template))
    if _check("GA RSA chained", chained())[8:] != signature:
        raise BadResponse("GA RSA chained: signature differs from the extended APDU's")
    s = measure(chained, slow)
    ratio = s.median_ns / raw_rsa_sign.median_ns
    group.add(
        Row(
            "GA sign RSA-2048 PKCS#1 v1.5 (chained + GET RESPONSE, 4 APDUs)",
            s,
            apdus=4,
            comparison=_ratio_text(ratio, "raw"),
            ratio=ratio,
        )
    )

    # RSA-2048 decryption: a type-2 block, the raw private operation.
    plaintext_block = fx.pkcs1v15_encrypt_block(b"\x42" * 32)
    ciphertext = fx.rsa_encrypt_raw(keys.rsa2048.public_key(), plaintext_block)
    ga_dec = fx.extended_apdu(0x87, KeyType.RSA2048, fx.SLOT_RSA, fx.ga_template(ciphertext))
    if _check("GA RSA decrypt", t(ga_dec))[8:] != plaintext_block:
        raise BadResponse("GA RSA decrypt: wrong plaintext block")
    raw_decrypt, s = measure_pair(
        lambda: keys.rsa2048.decrypt(ciphertext, padding.PKCS1v15()),
        _apdu(t, "GA RSA decrypt", ga_dec),
        slow.scaled(0.5),
    )
    group.add(Row("raw RSA-2048 PKCS#1 v1.5 decrypt (OpenSSL)", raw_decrypt, anchor=True))
    ratio = s.median_ns / raw_rsa_sign.median_ns
    group.add(
        Row(
            "GA RSA-2048 decrypt, raw private op (1 extended APDU)",
            s,
            comparison=_ratio_text(ratio, "OpenSSL sign")
            + f", {s.median_ns / raw_decrypt.median_ns:.2f}x OpenSSL decrypt",
            ratio=ratio,
            target=Target(f"<= {RAW_RSA_RATIO:.1f}x OpenSSL padded sign", ratio <= RAW_RSA_RATIO),
            note="blinded CRT exponentiation (gmpy2 powmod_sec) plus the e-th power self-check",
        )
    )

    # Management key mutual authentication: two APDUs, the host's work between them untimed.
    challenge = bytes(range(8))

    def mutual() -> int:
        start = clock()
        witness = t(fx.MGMT_WITNESS)
        mid = clock()
        step2 = fx.mgmt_response(witness, challenge)
        resume = clock()
        answer = t(step2)
        end = clock()
        if answer[-2:] != b"\x90\x00":
            raise BadResponse(f"mutual authentication failed: {answer.hex()}")
        return (mid - start) + (end - resume)

    raw_3des = measure(
        lambda: (
            fx.tdes_ecb(fx.MANAGEMENT_KEY, challenge),
            fx.tdes_ecb(fx.MANAGEMENT_KEY, challenge),
        ),
        fast.scaled(0.3),
    )
    group.add(Row("raw 2x 3DES-ECB block, new Cipher each (cryptography)", raw_3des, anchor=True))
    s = measure_parts(mutual, slow)
    group.add(
        Row(
            "GA 9B mutual auth, 3DES (2 APDUs, card's share)",
            s,
            apdus=2,
            comparison=_delta_text(s.median_ns - raw_3des.median_ns, "raw"),
            ratio=s.median_ns / raw_3des.median_ns,
        )
    )
    return group
