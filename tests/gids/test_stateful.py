"""The GIDS security state against an independent model (hypothesis stateful).

A :class:`RuleBasedStateMachine` drives a personalised GIDS card (echo
beside it) with raw APDUs through ``Card.transmit`` and predicts every
status word from its own model of docs/gids.md ("Commands", "PIN and PUK",
"The administrator key", "Files"): the PIN, PUK and administrator counters,
the PIN and administrator status and the security environment of each
logical channel, the pending challenge, the files' access rules, the keys.
Nothing of the applet's logic is imported: the rules are written out here,
signatures are verified with ``cryptography`` against public keys the model
holds, the administrator's answers are computed with ``cryptography``.

What a failure means: the card granted something the model says needs an
authentication it does not have (writing or reading a protected file,
generating or using a key, unblocking, replacing the administrator key),
counted a try differently, or kept or dropped state on a power event, a
SELECT, an unblock or another channel differently from the model.

After every step an *observer* (logical channel 19, which never
authenticates) compares the PIN and PUK counters and checks that it can
neither read nor write what needs authentication.

The card is personalised in the set-up with gids-tool's layout plus two
container key files (81, 82: the PIN generates and uses their P-256 keys),
a PUK, and a wall clock that never moves (no administrator try is forgiven
during a run).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from applets.echo import EchoApplet
from applets.gids import GIDS_ATR, GidsApplet
from applets.gids.host import initialize
from applets.gids.security import Session as GidsSession
from vsc import Card, CommandApdu
from vsc.applet import Response

from ..stateful import assert_the_model_catches, cla

GIDS_AID = bytes.fromhex("A000000397425446590201")
ECHO_AID = bytes.fromhex("F07673630001")

OK = 0x9000
WRONG_LENGTH = 0x6700
SECURITY = 0x6982
BLOCKED = 0x6983
CONDITIONS = 0x6985
REF_NOT_FOUND = 0x6A88

PIN = b"11223344"
PUK = b"99887766"
ADMIN_KEY = bytes(range(0x10, 0x28))
PIN_CANDIDATES = (b"00000000", b"55667788", b"1234", b"abcdefghijklmnop")
PUK_CANDIDATES = (b"00000000", b"13572468")
OTHER_KEYS = (bytes(24), bytes(range(0x40, 0x58)))
PIN_TRIES, PUK_TRIES, ADMIN_TRIES = 3, 3, 10
KEY_REFS = (0x81, 0x82)
P256 = 0x0C
OBSERVER = 19
CHANNELS = (0, 1, 2, 3)

# Files and who may read (GET) and write (PUT) them: user, admin, anyone.
FILES = {
    0xA013: ("user-or-admin", "user-or-admin"),
    0xA014: ("admin", "admin"),
    0xA012: ("anyone", "admin"),
    0xA010: ("anyone", "user-or-admin"),
}
TAG = 0xDF30


def tdes_cbc(key: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(TripleDES(key), modes.CBC(bytes(8)))
    op = cipher.decryptor() if decrypt else cipher.encryptor()
    return op.update(data) + op.finalize()


def tlv(tag: int, value: bytes) -> bytes:
    name = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    n = len(value)
    length = (
        bytes((n,))
        if n < 0x80
        else bytes((0x81, n))
        if n < 0x100
        else b"\x82" + n.to_bytes(2, "big")
    )
    return name + length + value


@dataclass
class Session:
    pin: bool = False
    admin: bool = False
    env: tuple[int, int] | None = None  # (template, key reference) MSE set
    # The card's challenge and the key it was issued under; valid for the next command only.
    challenge: tuple[bytes, bytes] | None = None


@dataclass
class Model:
    pin: bytes = PIN
    pin_left: int = PIN_TRIES
    puk_left: int = PUK_TRIES
    admin_key: bytes = ADMIN_KEY
    admin_left: int = ADMIN_TRIES
    objects: dict[int, bytes | None] | None = None
    keys: dict[int, ec.EllipticCurvePublicKey] | None = None
    channels: dict[int, Session | None] | None = None  # None: another applet selected


def make_card(applet: GidsApplet) -> Card:
    applet.wall_clock = lambda: 1_700_000_000.0
    card = Card([applet, EchoApplet()], atr=GIDS_ATR, default=applet)
    initialize(card.transmit, pin=PIN, admin_key=ADMIN_KEY, puk=PUK, cardid=bytes(16))
    for ref in KEY_REFS:
        template = tlv(0xB6, bytes((0x80, 1, P256, 0x83, 1, ref, 0x95, 1, 0x40)))
        fcp = tlv(
            0x62,
            bytes.fromhex("820118 8302B0")
            + bytes((ref,))
            + bytes.fromhex("8C058F10101000")
            + tlv(0xA5, template),
        )
        assert card.transmit(CommandApdu(0, 0x20, 0, 0x80, PIN).encode())[-2:] == b"\x90\x00"
        assert card.transmit(CommandApdu(0, 0xE0, 0, 0, fcp).encode())[-2:] == b"\x90\x00"
        assert card.transmit(bytes.fromhex("00440000"))[-2:] == b"\x90\x00"
    card.power_off()
    return card


class GidsSecurityMachine(RuleBasedStateMachine):
    make_applet: Callable[[], GidsApplet] = staticmethod(lambda: GidsApplet(serial=31415926))

    def __init__(self) -> None:
        super().__init__()
        self.card = make_card(self.make_applet())
        self.model = Model(objects=dict.fromkeys(FILES), keys={}, channels={0: Session()})
        self.observer_open = False

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def channels(self) -> dict[int, Session | None]:
        assert self.model.channels is not None
        return self.model.channels

    def send(
        self, channel: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None
    ) -> tuple[bytes, int]:
        resp = self.card.transmit(CommandApdu(cla(channel), ins, p1, p2, data, le).encode())
        sw = int.from_bytes(resp[-2:], "big")
        while resp[-2] == 0x61:  # fetch the rest (short client)
            more = self.card.transmit(
                bytes((cla(channel) & 0x03 if channel < 4 else cla(channel), 0xC0, 0, 0, resp[-1]))
            )
            resp = resp[:-2] + more
            sw = int.from_bytes(resp[-2:], "big")
        return resp[:-2], sw

    def expect(self, what: str, got: int, want: int) -> None:
        assert got == want, f"{what}: card answered {got:04X}, the model wants {want:04X}"

    def gids(self, channel: int) -> Session:
        session = self.channels[channel]
        assert session is not None
        return session

    def processed(self, channel: int) -> None:
        """A command the GIDS applet processed on ``channel``: a challenge dies."""
        session = self.channels[channel]
        if session is not None:
            session.challenge = None

    def retries_sw(self, left: int) -> int:
        return BLOCKED if left == 0 else 0x63C0 | left

    def allowed(self, rule: str, session: Session) -> bool:
        return {
            "anyone": True,
            "admin": session.admin,
            "user-or-admin": session.pin or session.admin,
        }[rule]

    def gids_channel(self, data: st.DataObject) -> int:
        choices = [c for c, s in self.channels.items() if s is not None]
        return data.draw(st.sampled_from(sorted(choices)), label="channel")

    # -- the PIN, the PUK -------------------------------------------------------------------

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data(), which=st.sampled_from(("right", "right", *PIN_CANDIDATES, "status")))
    def verify(self, data: st.DataObject, which: str | bytes) -> None:
        channel = self.gids_channel(data)
        session, m = self.gids(channel), self.model
        if which == "status":
            _, sw = self.send(channel, 0x20, 0x00, 0x80)
            self.expect("VERIFY status", sw, OK if session.pin else self.retries_sw(m.pin_left))
        else:
            value = m.pin if which == "right" else which
            assert isinstance(value, bytes)
            _, sw = self.send(channel, 0x20, 0x00, 0x80, value)
            if not 4 <= len(value) <= 127:
                self.expect("VERIFY of impossible length", sw, 0x6A80)
            elif m.pin_left == 0:
                self.expect("VERIFY when blocked", sw, BLOCKED)
                session.pin = False
            elif value == m.pin:
                self.expect("VERIFY right PIN", sw, OK)
                m.pin_left, session.pin = PIN_TRIES, True
            else:
                m.pin_left -= 1
                self.expect("VERIFY wrong PIN", sw, 0x63C0 | m.pin_left)
                session.pin = False
        self.processed(channel)

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data())
    def log_out(self, data: st.DataObject) -> None:
        channel = self.gids_channel(data)
        _, sw = self.send(channel, 0x20, 0x00, 0x82)
        self.expect("log out", sw, OK)
        session = self.gids(channel)
        session.pin = session.admin = False
        self.processed(channel)

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(
        data=st.data(),
        right=st.booleans(),
        new=st.sampled_from((b"55667788", b"11223344", b"a1b2c3d4e5")),
    )
    def change_pin(self, data: st.DataObject, right: bool, new: bytes) -> None:
        channel = self.gids_channel(data)
        session, m = self.gids(channel), self.model
        old = m.pin if right else b"x" * len(m.pin)
        _, sw = self.send(channel, 0x24, 0x00, 0x80, old + new)
        if m.pin_left == 0:
            self.expect("CHANGE REFERENCE DATA when blocked", sw, BLOCKED)
            session.pin = False
        elif right:
            self.expect("CHANGE REFERENCE DATA", sw, OK)
            m.pin, m.pin_left, session.pin = new, PIN_TRIES, True
        else:
            m.pin_left -= 1
            self.expect("CHANGE REFERENCE DATA wrong", sw, 0x63C0 | m.pin_left)
            session.pin = False
        self.processed(channel)

    def _unblocked(self, channel: int, new: bytes) -> None:
        m = self.model
        m.pin, m.pin_left = new, PIN_TRIES
        for session in self.channels.values():
            if session is not None:
                session.pin = False
        self.gids(channel).admin = False

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data(), right=st.booleans(), new=st.sampled_from((b"24682468", b"11223344")))
    def unblock_with_the_puk(self, data: st.DataObject, right: bool, new: bytes) -> None:
        channel = self.gids_channel(data)
        m = self.model
        puk = PUK if right else PUK_CANDIDATES[0]
        _, sw = self.send(channel, 0x2C, 0x00, 0x80, puk + new)
        if m.puk_left == 0:
            self.expect("RESET RETRY COUNTER, PUK blocked", sw, BLOCKED)
        elif right:
            self.expect("RESET RETRY COUNTER with the PUK", sw, OK)
            m.puk_left = PUK_TRIES
            self._unblocked(channel, new)
        else:
            m.puk_left -= 1
            self.expect("RESET RETRY COUNTER, wrong PUK", sw, 0x63C0 | m.puk_left)
        self.processed(channel)

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data(), new=st.sampled_from((b"24682468", b"11223344")))
    def unblock_as_administrator(self, data: st.DataObject, new: bytes) -> None:
        channel = self.gids_channel(data)
        _, sw = self.send(channel, 0x2C, 0x02, 0x80, new)
        if self.gids(channel).admin:
            self.expect("RESET RETRY COUNTER as administrator", sw, OK)
            self._unblocked(channel, new)
        else:
            self.expect("RESET RETRY COUNTER without the administrator", sw, SECURITY)
        self.processed(channel)

    # -- the administrator key -------------------------------------------------------------------

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data())
    def request_challenge(self, data: st.DataObject) -> None:
        channel = self.gids_channel(data)
        session = self.gids(channel)
        _, sw = self.send(channel, 0x22, 0xC1, 0xA4, bytes.fromhex("830180"))
        self.expect("MSE the administrator key", sw, OK)
        session.env = (0xA4, 0x80)
        resp, sw = self.send(channel, 0x87, 0, 0, bytes.fromhex("7C028100"), 256)
        self.expect("GA challenge", sw, OK)
        assert resp[:4] == bytes.fromhex("7C0A8108") and len(resp) == 12
        session.challenge = (resp[4:], self.model.admin_key)

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data(), which=st.sampled_from(("current", "current", "wrong")))
    def answer_challenge(self, data: st.DataObject, which: str) -> None:
        channel = self.gids_channel(data)
        session, m = self.gids(channel), self.model
        pending = session.challenge
        challenge = pending[0] if pending is not None else bytes(8)
        # A wrong answer is made with a key other than the current one (which may by now be
        # one of OTHER_KEYS); whether it is right is decided by the cipher, not by the label:
        # 3DES keys that differ only in parity bits, or in a half that cancels, answer alike.
        key = m.admin_key
        if which == "wrong":
            key = next(k for k in (*OTHER_KEYS, ADMIN_KEY) if k != m.admin_key)
        answer = tdes_cbc(key, challenge)
        right = answer == tdes_cbc(m.admin_key, challenge)
        _, sw = self.send(channel, 0x87, 0, 0, tlv(0x7C, tlv(0x82, answer)))
        if session.env != (0xA4, 0x80):
            self.expect("GA answer without the environment", sw, CONDITIONS)
        elif pending is None or pending[1] != m.admin_key:
            # None outstanding, or issued under a key replaced since: worthless, no try spent.
            self.expect("GA answer without a (current) challenge", sw, CONDITIONS)
            session.admin = False
        elif m.admin_left == 0:
            self.expect("GA answer, admin key blocked", sw, BLOCKED)
            session.admin = False
        elif right:
            self.expect("GA right answer", sw, OK)
            m.admin_left, session.admin = ADMIN_TRIES, True
        else:
            m.admin_left -= 1
            self.expect("GA wrong answer", sw, 0x63C0 | min(m.admin_left, 15))
            session.admin = False
        session.challenge = None

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data(), key=st.sampled_from((*OTHER_KEYS, ADMIN_KEY)))
    def replace_admin_key(self, data: st.DataObject, key: bytes) -> None:
        channel = self.gids_channel(data)
        body = tlv(0x70, bytes.fromhex("840180") + tlv(0xA5, tlv(0x87, key)))
        _, sw = self.send(channel, 0xDB, 0x3F, 0xFF, body)
        if self.gids(channel).admin:
            self.expect("PUT KEY as administrator", sw, OK)
            self.model.admin_key = key
        else:
            self.expect("PUT KEY without the administrator", sw, SECURITY)
        self.processed(channel)

    # -- files ------------------------------------------------------------------------------------

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data(), fid=st.sampled_from(sorted(FILES)), value=st.binary(max_size=300))
    def put_data(self, data: st.DataObject, fid: int, value: bytes) -> None:
        channel = self.gids_channel(data)
        session = self.gids(channel)
        _, sw = self.send(channel, 0xDB, fid >> 8, fid & 0xFF, tlv(TAG, value))
        assert self.model.objects is not None
        if self.allowed(FILES[fid][1], session):
            self.expect(f"PUT DATA {fid:04X}", sw, OK)
            old = self.model.objects[fid]
            self.model.objects[fid] = None if not value and old == b"" else value
        else:
            self.expect(f"PUT DATA {fid:04X} refused", sw, SECURITY)
        self.processed(channel)

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data(), fid=st.sampled_from(sorted(FILES)))
    def get_data(self, data: st.DataObject, fid: int) -> None:
        channel = self.gids_channel(data)
        resp, sw = self.send(channel, 0xCB, fid >> 8, fid & 0xFF, bytes.fromhex("5C02DF30"), 256)
        assert self.model.objects is not None
        value = self.model.objects[fid]
        if not self.allowed(FILES[fid][0], self.gids(channel)):
            self.expect(f"GET DATA {fid:04X} refused", sw, SECURITY)
        elif value is None:
            self.expect(f"GET DATA {fid:04X} (no object)", sw, REF_NOT_FOUND)
        else:
            self.expect(f"GET DATA {fid:04X}", sw, OK)
            assert resp == tlv(TAG, value)
        self.processed(channel)

    # -- keys -------------------------------------------------------------------------------------

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data(), ref=st.sampled_from(KEY_REFS))
    def generate(self, data: st.DataObject, ref: int) -> None:
        channel = self.gids_channel(data)
        resp, sw = self.send(
            channel, 0x47, 0, 0, tlv(0xAC, bytes((0x80, 1, P256, 0x83, 1, ref))), 256
        )
        assert self.model.keys is not None
        if self.gids(channel).pin:
            self.expect("GENERATE", sw, OK)
            assert resp[:5] == bytes.fromhex("7F49438641")
            self.model.keys[ref] = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), resp[5:]
            )
        else:
            self.expect("GENERATE without the PIN", sw, SECURITY)
        self.processed(channel)

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data(), ref=st.sampled_from(KEY_REFS))
    def select_key(self, data: st.DataObject, ref: int) -> None:
        channel = self.gids_channel(data)
        session = self.gids(channel)
        _, sw = self.send(channel, 0x22, 0x41, 0xB6, bytes((0x80, 1, P256, 0x84, 1, ref)))
        if session.pin:
            self.expect("MSE a key", sw, OK)
            session.env = (0xB6, ref)
        else:
            self.expect("MSE a key without the PIN", sw, SECURITY)
            session.env = None
        self.processed(channel)

    @precondition(lambda self: any(s is not None for s in self.channels.values()))
    @rule(data=st.data(), message=st.binary(min_size=1, max_size=40))
    def sign(self, data: st.DataObject, message: bytes) -> None:
        channel = self.gids_channel(data)
        session = self.gids(channel)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(message)
        hashed = digest.finalize()
        resp, sw = self.send(channel, 0x2A, 0x9E, 0x9A, hashed, 256)
        assert self.model.keys is not None
        if session.env is None or session.env[0] != 0xB6:
            self.expect("PSO without an environment", sw, CONDITIONS)
        elif not session.pin:
            self.expect("PSO without the PIN", sw, SECURITY)
        elif session.env[1] not in self.model.keys:
            self.expect("PSO with no key", sw, REF_NOT_FOUND)
        else:
            self.expect("PSO sign", sw, OK)
            r, s = int.from_bytes(resp[:32], "big"), int.from_bytes(resp[32:], "big")
            self.model.keys[session.env[1]].verify(
                utils.encode_dss_signature(r, s), hashed, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
            )
        self.processed(channel)

    # -- selection, channels, power ---------------------------------------------------------------

    @rule(channel=st.sampled_from(CHANNELS), which=st.sampled_from(("gids", "gids", "echo")))
    def select(self, channel: int, which: str) -> None:
        if channel not in self.channels:
            return
        aid = GIDS_AID[:9] if which == "gids" else ECHO_AID
        _, sw = self.send(channel, 0xA4, 0x04, 0x00, aid)
        self.expect(f"SELECT {which}", sw, OK)
        session = self.channels[channel]
        if which == "echo":
            self.channels[channel] = None
        elif session is None:
            self.channels[channel] = Session()
        else:  # re-SELECT: PIN and administrator kept, environment and challenge forgotten
            session.env = session.challenge = None

    @precondition(lambda self: len(self.channels) < len(CHANNELS) and 0 in self.channels)
    @rule()
    def open_channel(self) -> None:
        free = next(c for c in CHANNELS if c not in self.channels)
        resp = self.card.transmit(bytes((0, 0x70, 0, free)))
        self.expect("MANAGE CHANNEL open", int.from_bytes(resp[-2:], "big"), OK)
        # Opened from channel 0: the default applet (GIDS), a fresh session.
        self.channels[free] = Session()

    @precondition(lambda self: len(self.channels) > 1)
    @rule(data=st.data())
    def close_channel(self, data: st.DataObject) -> None:
        channel = data.draw(st.sampled_from(sorted(c for c in self.channels if c)))
        resp = self.card.transmit(bytes((0, 0x70, 0x80, channel)))
        self.expect("MANAGE CHANNEL close", int.from_bytes(resp[-2:], "big"), OK)
        del self.channels[channel]

    @rule(event=st.sampled_from(("reset", "cycle")))
    def power(self, event: str) -> None:
        if event == "reset":
            self.card.reset()
        else:
            self.card.power_off()
            self.card.power_on()
        assert self.model.channels is not None
        self.model.channels = {0: Session()}
        self.observer_open = False

    # -- what the observer sees -------------------------------------------------------------------

    def observe(
        self, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None
    ) -> tuple[bytes, int]:
        if not self.observer_open:
            resp = self.card.transmit(bytes((0, 0x70, 0, OBSERVER)))
            self.expect("MANAGE CHANNEL open 19", int.from_bytes(resp[-2:], "big"), OK)
            self.observer_open = True
        return self.send(OBSERVER, ins, p1, p2, data, le)

    @invariant()
    def counters_match(self) -> None:
        m = self.model
        for name, left, tries in (("7F71", m.pin_left, PIN_TRIES), ("7F73", m.puk_left, PUK_TRIES)):
            resp, sw = self.observe(0xCB, 0x3F, 0xFF, bytes.fromhex("5C02" + name), 256)
            self.expect(f"GET DATA {name}", sw, OK)
            assert resp == bytes.fromhex(name) + bytes((6, 0x97, 1, left, 0x93, 1, tries)), (
                resp.hex()
            )
        _, sw = self.observe(0x20, 0x00, 0x80)
        self.expect("VERIFY status on the observer", sw, self.retries_sw(m.pin_left))

    @invariant()
    def the_observer_is_refused(self) -> None:
        for fid in (0xA013, 0xA014):
            self.expect(
                f"GET DATA {fid:04X} on the observer",
                self.observe(0xCB, fid >> 8, fid & 0xFF, bytes.fromhex("5C02DF30"), 256)[1],
                SECURITY,
            )
        self.expect(
            "PUT DATA A012 on the observer",
            self.observe(0xDB, 0xA0, 0x12, tlv(TAG, b"x"))[1],
            SECURITY,
        )
        self.expect(
            "unblock on the observer", self.observe(0x2C, 0x02, 0x80, b"00000000")[1], SECURITY
        )
        self.expect(
            "GENERATE on the observer",
            self.observe(0x47, 0, 0, tlv(0xAC, bytes((0x80, 1, P256, 0x83, 1, 0x81))))[1],
            SECURITY,
        )


TestGidsSecurity = GidsSecurityMachine.TestCase
TestGidsSecurity.settings = settings(
    max_examples=int(os.environ.get("VSC_GIDS_STATEFUL_EXAMPLES", "300")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# -- the machine can fail: broken applets it must catch -------------------------------------------


class GrantsWithoutPin(GidsApplet):
    """Every access condition is met (a file's rules ignored)."""

    def _require(self, condition: int | None, session: GidsSession, what: str) -> None:
        return None


class ForgivingCounter(GidsApplet):
    """A wrong PIN does not count."""

    def _check_secret(self, ref, candidate):  # type: ignore[no-untyped-def]
        before = self.data.secret(ref)
        try:
            super()._check_secret(ref, candidate)
        except Exception:
            if before is not None and before.tries.remaining:
                self.data.restore_tries(ref)
            raise


class OneSessionForAll(GidsApplet):
    """One security state for every channel and across power cycles."""

    def __init__(self, serial: int) -> None:
        super().__init__(serial=serial)
        self.shared = GidsSession()

    def new_session(self) -> GidsSession:
        return self.shared


class StaleChallenge(GidsApplet):
    """A challenge stays good for any later answer."""

    def process(self, apdu: CommandApdu, session: GidsSession) -> bytes | Response:
        kept = session.challenge
        try:
            return super().process(apdu, session)
        finally:
            if session.challenge is None and apdu.ins != 0x87:
                session.challenge = kept


@pytest.mark.parametrize(
    "broken", [GrantsWithoutPin, ForgivingCounter, OneSessionForAll, StaleChallenge]
)
def test_the_model_catches_a_broken_applet(broken: type[GidsApplet]) -> None:
    class Machine(GidsSecurityMachine):
        make_applet = staticmethod(lambda: broken(serial=27182818))

    assert_the_model_catches(Machine, max_examples=300, steps=30)


class _FirstChannel:
    """Stands in for hypothesis' ``data`` when a test replays a sequence of rules by hand."""

    def draw(self, strategy: object, label: str | None = None) -> int:
        return 0


def test_a_wrong_answer_stays_wrong_after_the_key_is_replaced_by_it() -> None:
    # Found in full-suite runs: the administrator key replaced by the all-zeros key,
    # which the model also used to compute its "wrong" answers.
    machine, data = GidsSecurityMachine(), cast(st.DataObject, _FirstChannel())
    machine.request_challenge(data)
    machine.answer_challenge(data, "current")
    machine.replace_admin_key(data, OTHER_KEYS[0])
    machine.request_challenge(data)
    machine.answer_challenge(data, "wrong")
    assert machine.model.admin_left == ADMIN_TRIES - 1
    machine.request_challenge(data)
    machine.answer_challenge(data, "current")
    assert machine.model.admin_left == ADMIN_TRIES
    machine.teardown()
