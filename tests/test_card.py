"""The card engine: power, SELECT, channels, chaining, response sizing, errors, trace."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from applets.echo import ECHO_AID, EchoApplet
from vsc import Applet, Card, CommandApdu, Response, command
from vsc.card import DEFAULT_ATR
from vsc.sw import SW, ApduError
from vsc.trace import TRACE

LOGIN_AID = bytes.fromhex("F0000000010203")


@dataclass
class LoginSession:
    logged_in: bool = False


class LoginApplet(Applet[LoginSession]):
    """A toy applet with volatile security state and a secret INS."""

    aid = LOGIN_AID
    min_aid_prefix = 5
    secret_ins = frozenset({0x20, 0x60})

    def __init__(self) -> None:
        self.deselected = 0

    def new_session(self) -> LoginSession:
        return LoginSession()

    def select(self, session: LoginSession, apdu: CommandApdu) -> bytes:
        return b"\x6f\x00"

    def deselect(self, session: LoginSession) -> None:
        self.deselected += 1

    @command(0x20)
    def verify(self, apdu: CommandApdu, session: LoginSession) -> bytes:
        if apdu.data != b"secret":
            raise ApduError(SW.SECURITY_CONDITION_NOT_SATISFIED)
        session.logged_in = True
        return b""

    @command(0x30)
    def status(self, apdu: CommandApdu, session: LoginSession) -> bytes:
        return b"\x01" if session.logged_in else b"\x00"

    @command(0x40)
    def warn(self, apdu: CommandApdu, session: LoginSession) -> Response:
        return Response(b"\xaa" * 300, 0x6282)

    @command(0x60)
    def secret_blob(self, apdu: CommandApdu, session: LoginSession) -> bytes:
        return b"\x5a" * 300

    @command(0x50)
    def boom(self, apdu: CommandApdu, session: LoginSession) -> bytes:
        raise RuntimeError("a bug in an applet")


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def select(aid: bytes, cla: int = 0) -> bytes:
    return bytes((cla, 0xA4, 0x04, 0x00, len(aid))) + aid


def sw(resp: bytes) -> int:
    return int.from_bytes(resp[-2:], "big")


@pytest.fixture
def login() -> LoginApplet:
    return LoginApplet()


@pytest.fixture
def card(login: LoginApplet) -> Card:
    c = Card([EchoApplet()], default=login)
    c.power_on()
    return c


def test_empty_card_answers_select_with_6a82() -> None:
    card = Card()
    assert card.power_on() == DEFAULT_ATR
    assert card.transmit(select(bytes.fromhex("A000000308"))) == h("6A82")
    assert card.transmit(h("00CB3FFF035C017E")) == h("6D00")


def test_default_atr_offers_t1_and_is_not_usb_classified() -> None:
    assert DEFAULT_ATR[1] & 0xF0 != 0xF0  # ykman: NFC path
    # T0 = 8D: only TD1 follows; TD1 = 80: only TD2 follows; TD2 = 01: T=1.
    assert DEFAULT_ATR[1:4] == h("8D 80 01")
    tck = 0
    for b in DEFAULT_ATR[1:]:
        tck ^= b
    assert tck == 0


def test_transmit_powers_on_implicitly() -> None:
    card = Card([EchoApplet()])
    assert not card.powered
    assert card.transmit(select(ECHO_AID)) == h("9000")
    assert card.powered


def test_select_full_prefix_and_unknown(card: Card) -> None:
    assert card.transmit(select(LOGIN_AID)) == h("6F00 9000")
    assert card.transmit(select(LOGIN_AID[:5])) == h("6F00 9000")
    assert card.transmit(select(LOGIN_AID[:4])) == h("6A82")
    assert card.transmit(select(ECHO_AID[:5])) == h("6A82")  # echo needs its full AID
    # P2 0C: no response data
    assert card.transmit(h("00A4040C07") + LOGIN_AID) == h("9000")


def test_unknown_aid_keeps_selection_and_state(card: Card) -> None:
    assert card.transmit(h("0020000006") + b"secret") == h("9000")
    assert card.transmit(select(b"\xa0\x00\x00\x00\x99")) == h("6A82")
    assert card.transmit(h("0030000000")) == h("01 9000")


def test_selecting_another_applet_drops_state(card: Card, login: LoginApplet) -> None:
    card.transmit(h("0020000006") + b"secret")
    assert card.transmit(select(ECHO_AID)) == h("9000")
    assert login.deselected == 1
    card.transmit(select(LOGIN_AID))
    assert card.transmit(h("0030000000")) == h("00 9000")


@pytest.mark.parametrize("event", ["reset", "power_cycle"])
def test_power_events_clear_state(card: Card, event: str) -> None:
    card.transmit(h("0020000006") + b"secret")
    card.transmit(h("0002030000"))  # leaves response bytes pending
    if event == "reset":
        assert card.reset() == DEFAULT_ATR
    else:
        card.power_off()
        card.power_on()
    assert card.transmit(h("0030000000")) == h("00 9000")  # default applet, fresh state
    assert card.transmit(h("00C0000000")) == h("6985")


def test_command_chaining(card: Card) -> None:
    card.transmit(select(ECHO_AID))
    part1, part2, part3 = bytes(range(255)), bytes(255), b"\x42" * 10
    assert card.transmit(h("10010000FF") + part1) == h("9000")
    assert card.transmit(h("10010000FF") + part2) == h("9000")
    resp = card.transmit(h("000100000A") + part3 + b"\x00")
    assert sw(resp) == 0x6100  # 520 bytes > 256: the rest through GET RESPONSE
    whole = resp[:-2]
    while sw(resp) >> 8 == 0x61:
        resp = card.transmit(h("00C0000000"))
        whole += resp[:-2]
    assert sw(resp) == 0x9000
    assert whole == part1 + part2 + part3


def test_chain_aborted_by_other_command(card: Card) -> None:
    card.transmit(select(ECHO_AID))
    assert card.transmit(h("1001000003AABBCC")) == h("9000")
    # a different INS discards the partial chain and runs on its own
    assert card.transmit(h("0002000400")) == h("00010203 9000")
    assert card.transmit(h("0001000002DDEE")) == h("DDEE 9000")


def test_chain_too_long_is_6a84() -> None:
    card = Card([EchoApplet()], max_command=600)
    card.transmit(select(ECHO_AID))
    assert card.transmit(h("10010000FF") + bytes(255)) == h("9000")
    assert card.transmit(h("10010000FF") + bytes(255)) == h("9000")
    assert card.transmit(h("10010000FF") + bytes(255)) == h("6A84")
    assert card.transmit(h("0001000001AA")) == h("AA 9000")  # the card still works


@pytest.mark.parametrize(
    ("total", "le_seq"),
    [(768, [0, 0, 0]), (264, [0, 8]), (300, [0x10, 0, 0])],
)
def test_get_response(card: Card, total: int, le_seq: list[int]) -> None:
    card.transmit(select(ECHO_AID))
    first = le_seq[0]
    resp = card.transmit(h("0002") + total.to_bytes(2, "big") + bytes((first,)))
    got = resp[:-2]
    assert len(got) == (first or 256)
    for le in le_seq[1:]:
        left = total - len(got)
        assert sw(resp) == 0x6100 | (left if left < 256 else 0)
        resp = card.transmit(h("00C00000") + bytes((le,)))
        assert len(resp[:-2]) == min(le or 256, left)
        got += resp[:-2]
    assert sw(resp) == 0x9000
    assert got == bytes(i & 0xFF for i in range(total))
    assert card.transmit(h("00C0000000")) == h("6985")


def test_extended_le_gets_whole_response(card: Card) -> None:
    card.transmit(select(ECHO_AID))
    resp = card.transmit(h("00021000 000000"))  # case 2E, Le 65536
    assert sw(resp) == 0x9000
    assert resp[:-2] == bytes(i & 0xFF for i in range(0x1000))
    resp = card.transmit(h("00020300 000100"))  # Le 256 extended: chunked
    assert sw(resp) == 0x6100 and len(resp) == 258


def test_largest_response_fits_a_vpcd_frame(card: Card) -> None:
    card.transmit(select(ECHO_AID))
    resp = card.transmit(h("0002FFFF 000000"))
    assert len(resp) == 0xFFFF and sw(resp) == 0x6102  # 65533 bytes, 2 left
    assert card.transmit(h("00C0000000")) == h("FDFE 9000")


def test_other_command_discards_pending(card: Card) -> None:
    card.transmit(select(ECHO_AID))
    assert sw(card.transmit(h("0002030000"))) == 0x6100
    assert card.transmit(h("0001000001AA")) == h("AA 9000")
    assert card.transmit(h("00C0000000")) == h("6985")


def test_warning_sw_with_long_data_survives_get_response(card: Card) -> None:
    resp = card.transmit(h("0040000000"))
    assert sw(resp) == 0x612C
    resp = card.transmit(h("00C0000000"))
    assert resp == b"\xaa" * 44 + h("6282")


def test_unexpected_exception_is_6f00_and_card_keeps_working(
    card: Card, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        assert card.transmit(h("0050000000")) == h("6F00")
    assert "a bug in an applet" in caplog.text
    assert card.transmit(h("0030000000")) == h("00 9000")


@pytest.mark.parametrize(
    ("apdu", "expected"),
    [
        ("00", "6700"),
        ("00A4040003AABB", "6700"),
        ("FF000000", "6E00"),
        ("20000000", "6E00"),
        ("80300000", "6E00"),  # proprietary class, applet does not take it
        ("0C300000", "6882"),  # secure messaging
        ("01300000", "6881"),  # channel 1 not open
        ("4F300000", "6881"),  # channel 19 not open
        ("00EE0000", "6D00"),  # unknown INS
        ("00C0010000", "6A86"),
        ("10C0000000", "6884"),
    ],
)
def test_malformed_commands(card: Card, apdu: str, expected: str) -> None:
    assert card.transmit(h(apdu)) == h(expected)


def test_logical_channels_have_own_state(card: Card) -> None:
    assert card.transmit(h("0070000001")) == h("01 9000")  # open: default applet on 1
    assert card.transmit(h("0020000006") + b"secret") == h("9000")
    assert card.transmit(h("0130000000")) == h("00 9000")  # channel 1 not logged in
    assert card.transmit(h("0030000000")) == h("01 9000")
    assert card.transmit(h("0170000001")) == h("02 9000")  # opened from 1
    assert card.transmit(h("00700005")) == h("9000")  # a chosen channel
    assert card.transmit(h("00700005")) == h("6A86")  # already open
    assert card.transmit(select(ECHO_AID, cla=0x41)) == h("9000")  # channel 5 → echo
    assert card.transmit(h("4101000001AA")) == h("AA 9000")
    assert card.transmit(h("0001000001AA")) == h("6D00")  # channel 0 still on login
    assert card.transmit(h("00708005")) == h("9000")  # close 5
    assert card.transmit(h("4101000001AA")) == h("6881")
    assert card.transmit(h("02708000")) == h("9000")  # close own channel
    assert card.transmit(h("0230000000")) == h("6881")
    assert card.transmit(h("00708000")) == h("6A86")  # the basic channel stays
    assert card.transmit(h("00700014")) == h("6881")  # channel 20 does not exist


def test_all_channels_in_use() -> None:
    card = Card(max_channels=3)
    assert card.transmit(h("0070000001")) == h("01 9000")
    assert card.transmit(h("0070000001")) == h("02 9000")
    assert card.transmit(h("0070000001")) == h("6881")


def test_further_interindustry_channels(card: Card) -> None:
    for n in range(1, 20):
        assert card.transmit(h("0070000001")) == bytes((n,)) + h("9000")
    assert card.transmit(h("4F30000000")) == h("00 9000")  # channel 19
    assert card.transmit(h("5F010000")) == h("9000")  # chained bit on channel 19


def test_trace_masks_secret_data(card: Card, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(TRACE, logger="vsc.apdu"):
        card.transmit(h("0020000006") + b"secret")
        card.transmit(h("0030000000"))
    text = caplog.text
    assert "73 65 63 72 65 74" not in text  # "secret"
    assert "00 20 00 00 <2 secret bytes>" not in text
    assert "<7 secret bytes>" in text  # Lc + 6 data bytes
    assert "00 30 00 00 00" in text


def test_trace_masks_the_rest_of_a_secret_response(
    card: Card, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(TRACE, logger="vsc.apdu"):
        assert sw(card.transmit(h("0060000000"))) == 0x612C
        assert card.transmit(h("00C0000000"))[-2:] == h("9000")
    assert "5A 5A" not in caplog.text
    assert "<44 secret bytes> 90 00" in caplog.text


def test_trace_turned_on_mid_response_masks_the_rest(
    card: Card, caplog: pytest.LogCaptureFixture
) -> None:
    assert sw(card.transmit(h("0060000000"))) == 0x612C  # the trace is off here
    with caplog.at_level(TRACE, logger="vsc.apdu"):
        card.transmit(h("00C0000000"))
    assert "5A 5A" not in caplog.text
    assert "<44 secret bytes>" in caplog.text


def test_trace_is_silent_when_off(card: Card, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="vsc.apdu"):
        card.transmit(h("0030000000"))
    assert caplog.records == []


def test_register_rejects_duplicates_and_bad_aids() -> None:
    card = Card([EchoApplet()])
    with pytest.raises(ValueError):
        card.register(EchoApplet())

    class NoAid(EchoApplet):
        aid = b""

    with pytest.raises(ValueError):
        card.register(NoAid())


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_any_bytes_give_a_valid_response(apdus: list[bytes]) -> None:
    card = Card([EchoApplet()], default=LoginApplet())
    for apdu in apdus:
        resp = card.transmit(apdu)
        assert len(resp) >= 2
        assert resp[-2] in range(0x61, 0x70) or resp[-2] in range(0x90, 0xA0)
    # and the card still works afterwards
    card.reset()
    assert card.transmit(select(ECHO_AID)) == h("9000")
    assert card.transmit(h("0001000001AA")) == h("AA 9000")


_HEADERS = st.sampled_from(
    [
        bytes((c, i, p1, p2))
        for c in (0, 0x10, 0x01, 0x41)
        for i in (0x01, 0x02, 0x20, 0x30, 0x70, 0xA4, 0xC0)
        for p1 in (0, 4, 0x80)
        for p2 in (0, 1, 0x0C)
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_HEADERS, st.binary(max_size=20)), max_size=30))
def test_structured_sequences_give_valid_responses(cmds: list[tuple[bytes, bytes]]) -> None:
    card = Card([EchoApplet()], default=LoginApplet())
    for header, body in cmds:
        resp = card.transmit(header + body)
        assert len(resp) >= 2
        assert resp[-2] in range(0x61, 0x70) or resp[-2] in range(0x90, 0xA0)


class _Counting(Applet[None]):
    """A mixin with no handlers of its own, placed before an applet class."""

    def process(self, apdu: CommandApdu, session: None) -> bytes | Response:
        self.processed = getattr(self, "processed", 0) + 1
        return super().process(apdu, session)


class _CountingEcho(_Counting, EchoApplet):
    pass


def test_a_mixin_before_the_applet_keeps_its_handlers() -> None:
    applet = _CountingEcho()
    card = Card()
    card.register(applet)
    assert (
        card.transmit(b"\x00\xa4\x04\x00" + bytes([len(ECHO_AID)]) + ECHO_AID)[-2:] == b"\x90\x00"
    )
    assert card.transmit(bytes.fromhex("0001000002ABCD00")) == bytes.fromhex("ABCD9000")
    assert applet.processed == 1
    assert _CountingEcho.commands == EchoApplet.commands
