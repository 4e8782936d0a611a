"""Group ``gids``: the GIDS applet's hot APDUs beside PIV's, in-process, same run.

Each GIDS row is paired with the PIV row that does the same job for a client
(select the application, check the PIN, sign a hash), measured in this run on
a PIV card holding the same key; the ratio GIDS/PIV is the comparison. The
GIDS card is personalised as gids-tool does and holds the benchmark's P-256
and RSA-2048 keys (imported through PUT DATA, as OpenSC imports them).
Signing is timed as OpenSC sends it to each card: GIDS MANAGE SECURITY
ENVIRONMENT + PERFORM SECURITY OPERATION (2 APDUs; the card pads RSA), PIV
one GENERAL AUTHENTICATE. Every response is checked once before it is timed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from applets.gids import GIDS_ATR, GidsApplet
from applets.gids.host import initialize, key_file_fcp
from applets.piv.keys import KeyType, PrivateKey
from vsc import Card
from vsc.apdu import CommandApdu
from vsc.tlv import encode_tlv

from . import fixtures as fx
from .context import RunContext
from .engine import BadResponse, _apdu, _check
from .report import GroupResult, Row
from .timing import Stats, measure

PIN = b"12345678"
ADMIN_KEY = bytes(range(1, 9)) * 3
SELECT_GIDS = bytes.fromhex("00A4040009A0000003974254465900")
VERIFY_GIDS = CommandApdu(0, 0x20, 0, 0x80, PIN).encode()
VERIFY_QUERY = bytes.fromhex("00200080")
PIN_STATUS = bytes.fromhex("00CB3FFF045C027F7100")
P256_REF, RSA_REF = 0x81, 0x82
DIGEST_INFO_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")


def _import(transmit: Callable[[bytes], bytes], ref: int, algorithm: int, key: PrivateKey) -> None:
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    value = bytes.fromhex("830102840100") + encode_tlv(0x87, der)
    body = encode_tlv(0x70, bytes((0x84, 1, ref)) + encode_tlv(0xA5, value))
    for apdu in (
        CommandApdu(0, 0xE0, 0, 0, key_file_fcp(ref, algorithm, decipher=algorithm < 0x0A)),
        CommandApdu(0, 0x44, 0, 0),
        CommandApdu(0, 0xDB, 0x3F, 0xFF, body),
    ):
        _check(f"key {ref:02X}", transmit(apdu.encode()))


def gids_card(keys: fx.KeySet) -> Card:
    """A personalised GIDS card with the run's P-256 (81) and RSA-2048 (82) keys."""
    applet = GidsApplet()
    card = Card([applet], atr=GIDS_ATR, default=applet)
    initialize(card.transmit, pin=PIN, admin_key=ADMIN_KEY)
    _check("VERIFY", card.transmit(VERIFY_GIDS))
    _import(card.transmit, P256_REF, 0x0C, keys.p256)
    _import(card.transmit, RSA_REF, 0x07, keys.rsa2048)
    card.power_on()
    return card


def _sign(transmit: Callable[[bytes], bytes], mse: bytes, pso: bytes) -> Callable[[], bytes]:
    def op() -> bytes:
        transmit(mse)
        return transmit(pso)

    return op


def run(ctx: RunContext) -> GroupResult:
    group = GroupResult("gids", "GIDS applet beside PIV, Card.transmit in-process")
    fast, slow = ctx.fast, ctx.slow
    keys = fx.key_set()
    piv, _ = fx.piv_card(keys)
    gids = gids_card(keys)
    p, g = piv.transmit, gids.transmit

    def pair(
        name: str,
        piv_name: str,
        piv_op: Callable[[], bytes],
        gids_op: Callable[[], bytes],
        apdus: int = 1,
        fast_budget: bool = True,
    ) -> None:
        budget = fast if fast_budget else slow
        anchor = measure(piv_op, budget)
        group.add(Row(piv_name, anchor, anchor=True))
        stats: Stats = measure(gids_op, budget)
        ratio = stats.median_ns / anchor.median_ns
        group.add(Row(name, stats, apdus=apdus, comparison=f"{ratio:.2f}x PIV", ratio=ratio))

    pair(
        "SELECT GIDS (FCI)",
        "PIV: SELECT PIV (FCI)",
        _apdu(p, "SELECT PIV", fx.SELECT_PIV),
        _apdu(g, "SELECT GIDS", SELECT_GIDS),
    )
    pair(
        "VERIFY status query, not verified (63C3)",
        "PIV: VERIFY status query (63C3)",
        _apdu(p, "PIV query", fx.VERIFY_QUERY, 0x63C3),
        _apdu(g, "GIDS query", VERIFY_QUERY, 0x63C3),
    )
    pair(
        "VERIFY (8-byte PIN, 2 commits)",
        "PIV: VERIFY (PIN, 2 commits)",
        _apdu(p, "PIV VERIFY", fx.VERIFY_PIN),
        _apdu(g, "GIDS VERIFY", VERIFY_GIDS),
    )
    s = measure(_apdu(g, "PIN status", PIN_STATUS), fast)
    group.add(Row("GET DATA 3FFF PIN status (7F71)", s))

    digest = hashlib.sha256(b"vsc benchmark").digest()
    mse_p256 = CommandApdu(0, 0x22, 0x41, 0xB6, bytes((0x80, 1, 0x0C, 0x84, 1, P256_REF)))
    pso = CommandApdu(0, 0x2A, 0x9E, 0x9A, digest, 256).encode()
    _check("MSE P-256", g(mse_p256.encode()))
    signature = _check("PSO P-256", g(pso))
    r, s_ = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    keys.p256.public_key().verify(
        utils.encode_dss_signature(r, s_), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
    )
    pair(
        "MSE + PSO sign P-256 (2 APDUs)",
        "PIV: GA sign P-256",
        _apdu(p, "GA P-256", fx.ga_sign(KeyType.ECCP256, fx.SLOT_P256, digest)),
        _sign(g, mse_p256.encode(), pso),
        apdus=2,
        fast_budget=False,
    )

    mse_rsa = CommandApdu(0, 0x22, 0x41, 0xB6, bytes((0x80, 1, 0x57, 0x84, 1, RSA_REF)))
    pso_rsa = CommandApdu(0, 0x2A, 0x9E, 0x9A, DIGEST_INFO_SHA256 + digest, 256).encode()
    gids_rsa = _gids_rsa(g, mse_rsa.encode(), pso_rsa)
    signature = _check("PSO RSA", gids_rsa())
    keys.rsa2048.public_key().verify(
        signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
    )
    piv_rsa = fx.extended_apdu(
        0x87, KeyType.RSA2048, fx.SLOT_RSA, fx.ga_template(fx.pkcs1v15_sign_block(digest))
    )
    pair(
        "MSE + PSO sign RSA-2048, card pads PKCS#1 (2 APDUs, GET RESPONSE)",
        "PIV: GA sign RSA-2048 PKCS#1 v1.5 (1 extended APDU)",
        _apdu(p, "GA RSA", piv_rsa),
        gids_rsa,
        apdus=3,
        fast_budget=False,
    )
    return group


def _gids_rsa(transmit: Callable[[bytes], bytes], mse: bytes, pso: bytes) -> Callable[[], bytes]:
    """RSA over short APDUs as OpenSC sends it: MSE, PSO (61xx), GET RESPONSE."""

    def op() -> bytes:
        transmit(mse)
        response = transmit(pso)
        data = response[:-2]
        while response[-2] == 0x61:
            response = transmit(bytes((0, 0xC0, 0, 0, response[-1])))
            data += response[:-2]
        if response[-2:] != b"\x90\x00":
            raise BadResponse(f"GIDS RSA sign: {response.hex()}")
        return data + response[-2:]

    return op
