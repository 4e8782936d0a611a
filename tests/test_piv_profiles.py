"""What differs between the card profiles, byte for byte (docs/piv.md, "Profiles").

The YubiKey 5.4 and 5.7 cards and the plain SP 800-73-4 card through raw
APDUs: instructions, algorithms, factory management key, object namespace
and access rules, status words, the Management application of the YubiKeys,
ATRs; and the profile kept in the card's record.
"""

from __future__ import annotations

import json

import pytest
from yubikit.core import TRANSPORT
from yubikit.core.smartcard import ApduError
from yubikit.management import CAPABILITY, FORM_FACTOR, ManagementSession
from yubikit.piv import PivSession

from applets.cards import (
    PIV_ATR,
    YUBIKEY_NFC_ATR,
    YUBIKEY_USB_ATR,
    Transport,
    atr_of,
    build_card,
)
from applets.piv import PIV, YUBIKEY_5_4, YUBIKEY_5_7, PivApplet, PivData, PivProfile, PivRecord
from applets.piv.objects import PIV_CONTAINERS
from vsc.card import Card
from vsc.emulator import SERIAL_BASE
from vsc.emulator import main as emulator_main
from vsc.emulator.cli import _build_cards, _check, _parser
from vsc.inproc import CardConnection, YubikitConnection
from vsc.tlv import encode_tlv, parse_dict, parse_tlv

from .test_piv_applet import (
    BAD_INS,
    BAD_P1P2,
    CONDITIONS,
    DEFAULT_KEY,
    DISCOVERY,
    INVALID_DATA,
    NO_SPACE,
    NOT_FOUND,
    NOT_SUPPORTED,
    OK,
    PIN,
    PUK,
    SECURITY,
    Piv,
    pin_block,
)

SERIAL = 24681012
YUBICO_INS = (0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFD, 0xFE, 0xFF)
MANAGEMENT_SELECT = "00A4040008A000000527471117"
#: ykman's probes of a YubiKey's other applications: OTP, FIDO (U2F/CTAP), OpenPGP, OATH.
OTHER_APPLICATIONS = ("A0000005272001", "A0000006472F0001", "D27600012401", "A0000005272101")
PROFILES = [YUBIKEY_5_4, YUBIKEY_5_7, PIV]


def card(profile: PivProfile) -> Piv:
    """A factory card of ``profile`` (its own management key) with raw-APDU helpers."""
    return Piv(PivApplet(serial=SERIAL, profile=profile))


def admin(profile: PivProfile) -> Piv:
    piv = card(profile)
    piv.authenticate(alg=profile.management_key_type)
    return piv


# -- the plain PIV card -----------------------------------------------------------------


def test_plain_piv_answers_no_yubico_instruction() -> None:
    piv = admin(PIV)
    for ins in YUBICO_INS:
        assert piv.sw(ins, 0x00, 0x9A) == BAD_INS, f"INS {ins:02X}"
    assert piv.sw(0xF7, 0x00, 0x9B) == BAD_INS
    assert piv.raw("00FD000000")[1] == BAD_INS


def test_plain_piv_select_lists_its_algorithms() -> None:
    """SP 800-73-4's APT: PIX, authority, label, algorithms (AC 80.. 06 00)."""
    out, sw = card(PIV).raw("00A4040009A00000030800001000")
    assert sw == OK
    apt = parse_dict(parse_tlv(out, 0x61).value)
    assert apt[0x4F] == bytes.fromhex("000010000100")
    assert apt[0x50] == b"vsc PIV"
    algorithms = parse_tlv(encode_tlv(0xAC, apt[0xAC]), 0xAC).value
    assert algorithms.endswith(b"\x06\x00")
    listed = {algorithms[i + 2] for i in range(0, len(algorithms) - 2, 3)}
    assert listed == {0x03, 0x08, 0x0A, 0x0C, 0x06, 0x07, 0x11, 0x14}


def test_plain_piv_comes_with_a_chuid_and_a_ccc() -> None:
    """An issued card has both; the CHUID's GUID follows the serial, the CCC is 51 bytes."""
    piv = card(PIV)
    chuid, sw = piv.get_object(0x5FC102)
    assert sw == OK
    items = parse_dict(parse_tlv(chuid, 0x53).value)
    assert set(items) == {0x30, 0x34, 0x35, 0x3E, 0xFE} and len(items[0x34]) == 16
    assert items[0x30][:3] == bytes.fromhex("D4E739")  # FASC-N of the test agency 9999
    other = Piv(PivApplet(serial=SERIAL + 1, profile=PIV)).get_object(0x5FC102)[0]
    assert parse_dict(parse_tlv(other, 0x53).value)[0x34] != items[0x34]
    ccc, sw = piv.get_object(0x5FC107)
    assert sw == OK and len(parse_tlv(ccc, 0x53).value) == 51
    assert not parse_dict(parse_tlv(ccc, 0x53).value)[0xF0].startswith(bytes.fromhex("A000000079"))


def test_plain_piv_objects_are_the_sp800_73_containers() -> None:
    piv = admin(PIV)
    assert piv.put_object(0x5FC105, b"cert") == OK
    assert piv.get_object(0x5FC105) == (encode_tlv(0x53, b"cert"), OK)
    for tag in (0x5FC104, 0x5FFF00, 0x5F0001, 0x123456):
        assert tag not in PIV_CONTAINERS
        assert piv.put_object(tag, b"x") == NOT_SUPPORTED, hex(tag)
        assert piv.get_object(tag)[1] == NOT_FOUND, hex(tag)
    # SP 800-73-4's biometric containers hold more than a certificate.
    for tag, size in ((0x5FC103, 4006), (0x5FC108, 12704), (0x5FC121, 7106)):
        assert piv.put_object(tag, b"\xfa" * size) == OK, hex(tag)
        assert piv.put_object(tag, b"\xfa" * (size + 1)) == NO_SPACE, hex(tag)
    assert piv.put_object(0x5FC105, b"\xfa" * 3063) == OK
    assert piv.put_object(0x5FC105, b"\xfa" * 3064) == NO_SPACE


def test_plain_piv_guards_its_pin_objects_even_when_absent() -> None:
    """6982 before 6A82, and the pairing code too: OpenSC's generic driver learns the
    login state from it (a YubiKey answers 6A82 first and leaves 5FC123 open)."""
    piv = card(PIV)
    for tag in (0x5FC103, 0x5FC108, 0x5FC109, 0x5FC121, 0x5FC123):
        assert piv.get_object(tag)[1] == SECURITY, hex(tag)
    assert piv.verify() == OK
    for tag in (0x5FC103, 0x5FC108, 0x5FC109, 0x5FC121, 0x5FC123):
        assert piv.get_object(tag)[1] == NOT_FOUND, hex(tag)
    yubikey = admin(YUBIKEY_5_4)
    assert yubikey.get_object(0x5FC108)[1] == NOT_FOUND
    assert yubikey.put_object(0x5FC123, b"12345678") == OK
    assert yubikey.get_object(0x5FC123) == (encode_tlv(0x53, b"12345678"), OK)


def test_plain_piv_discovery_object_may_be_replaced() -> None:
    """SP 800-73-4 defines PUT DATA of 7E in its own template; a YubiKey refuses it."""
    piv = admin(PIV)
    assert piv.raw("00CB3FFF035C017E") == (DISCOVERY, OK)
    global_pin = DISCOVERY[:-2] + b"\x60\x20"
    assert piv.sw(0xDB, 0x3F, 0xFF, global_pin) == OK
    assert piv.raw("00CB3FFF035C017E") == (global_pin, OK)
    assert piv.put_object(0x7E, b"") == OK  # 53 00: back to the generated one
    assert piv.raw("00CB3FFF035C017E") == (DISCOVERY, OK)
    assert admin(YUBIKEY_5_7).sw(0xDB, 0x3F, 0xFF, global_pin) == NOT_SUPPORTED


def test_plain_piv_generate() -> None:
    """SP 800-73-4 GENERATE: the four key slots, its algorithms, no Yubico policy tags."""
    piv = admin(PIV)
    template = parse_tlv(piv.generate(0x9A, 0x11), 0x7F49).value
    assert parse_dict(template)[0x86][0] == 0x04
    assert piv.sw(0x47, 0x00, 0x9A, bytes.fromhex("AC06800111AA0101")) == INVALID_DATA
    assert piv.sw(0x47, 0x00, 0x9A, bytes.fromhex("AC038001E0")) == INVALID_DATA  # Ed25519
    for slot in (0x82, 0x95, 0xF9):
        assert piv.sw(0x47, 0x00, slot, bytes.fromhex("AC03800111")) == BAD_P1P2
    assert piv.sw(0x20, 0x00, 0x80, PIN) == OK
    _, sw = piv.ga(0x11, 0x9A, 0x81, bytes(32))
    assert sw == OK


def test_plain_piv_has_no_attestation_key() -> None:
    piv = card(PIV)
    assert piv.get_object(0x5FFF01)[1] == NOT_FOUND
    assert piv.applet.keys.get(0xF9) is None


def test_new_secret_refused_per_profile() -> None:
    """A YubiKey answers 6985 to a new PIN it refuses, SP 800-73-4 6A80."""
    short = pin_block("123")
    assert card(PIV).sw(0x24, 0x00, 0x80, PIN + short) == INVALID_DATA
    assert card(PIV).sw(0x2C, 0x00, 0x80, PUK + short) == INVALID_DATA
    for profile in (YUBIKEY_5_4, YUBIKEY_5_7):
        assert card(profile).sw(0x24, 0x00, 0x80, PIN + short) == CONDITIONS
        assert card(profile).sw(0x2C, 0x00, 0x80, PUK + short) == CONDITIONS


def test_puk_bytes_per_profile() -> None:
    high = bytes.fromhex("8081829091A0").ljust(8, b"\xff")
    assert card(YUBIKEY_5_4).sw(0x24, 0x00, 0x81, PUK + high) == OK
    assert card(PIV).sw(0x24, 0x00, 0x81, PUK + high) == OK
    assert card(YUBIKEY_5_7).sw(0x24, 0x00, 0x81, PUK + high) == CONDITIONS


def test_yubikit_refuses_a_plain_piv_card() -> None:
    """ykman and yubikit open a PIV session with GET VERSION, which a plain card lacks."""
    connection = YubikitConnection(build_card(PivApplet(serial=SERIAL, profile=PIV)))
    with pytest.raises(ApduError) as error:
        PivSession(connection)
    assert error.value.sw == BAD_INS


# -- every profile ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_other_applications_are_absent(profile: PivProfile) -> None:
    """ykman's OTP, FIDO, OpenPGP and OATH probes: 6A82, as on a key with them disabled."""
    conn = CardConnection(build_card(PivApplet(serial=SERIAL, profile=profile)))
    for aid in OTHER_APPLICATIONS:
        select = f"00A40400{len(aid) // 2:02X}{aid}"
        assert conn.transmit(bytes.fromhex(select))[1] == NOT_FOUND, aid
    assert conn.transmit(bytes.fromhex("00A4040005A000000308"))[1] == OK


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_bit_group_template_and_discovery(profile: PivProfile) -> None:
    piv = admin(profile)
    assert piv.raw("00CB3FFF035C017E") == (DISCOVERY, OK)
    assert piv.get_object(0x7F61)[1] == NOT_FOUND
    assert piv.put_object(0x7F61, bytes.fromhex("020100")) == OK
    assert piv.get_object(0x7F61) == (bytes.fromhex("7F6103020100"), OK)


# -- YubiKey 5.4 and 5.7 -----------------------------------------------------------------


@pytest.mark.parametrize("profile", [YUBIKEY_5_4, YUBIKEY_5_7], ids=lambda p: p.name)
def test_yubikey_pin_objects_answer_absent_before_the_pin(profile: PivProfile) -> None:
    """A YubiKey says 6A82 for an absent PIN-protected object without the PIN, and 6982
    for a present one; it comes without a CHUID or CCC."""
    piv = admin(profile)
    for tag in (0x5FC103, 0x5FC108, 0x5FC109, 0x5FC121):
        assert piv.get_object(tag)[1] == NOT_FOUND, hex(tag)
        assert piv.put_object(tag, b"secret") == OK
        assert piv.get_object(tag)[1] == SECURITY, hex(tag)
    for tag in (0x5FC102, 0x5FC107):
        assert piv.get_object(tag)[1] == NOT_FOUND, hex(tag)
    assert piv.verify() == OK
    for tag in (0x5FC103, 0x5FC108, 0x5FC109, 0x5FC121):
        assert piv.get_object(tag) == (encode_tlv(0x53, b"secret"), OK)


@pytest.mark.parametrize(
    ("profile", "version", "key"), [(YUBIKEY_5_4, "050403", 0x03), (YUBIKEY_5_7, "050701", 0x0A)]
)
def test_yubikey_version_and_factory_management_key(
    profile: PivProfile, version: str, key: int
) -> None:
    piv = card(profile)
    assert piv.raw("00FD000000") == (bytes.fromhex(version), OK)
    assert piv.metadata(0x9B) == {0x01: bytes((key,)), 0x02: b"\x00\x01", 0x05: b"\x01"}
    piv.authenticate(alg=key)  # 01 02 .. 08 three times, as 3DES or AES-192
    assert piv.sw(0x87, 0x03 if key == 0x0A else 0x0A, 0x9B, bytes.fromhex("7C028000")) == BAD_P1P2


def test_5_4_has_no_move_delete_and_no_new_algorithms() -> None:
    piv = admin(YUBIKEY_5_4)
    piv.generate(0x9A, 0x11)
    assert piv.sw(0xF6, 0x85, 0x9A) == BAD_INS
    assert piv.sw(0xF6, 0xFF, 0x9A) == BAD_INS
    for alg in (0x05, 0x16, 0xE0, 0xE1):
        template = encode_tlv(0xAC, encode_tlv(0x80, bytes((alg,))))
        assert piv.sw(0x47, 0x00, 0x9C, template) == INVALID_DATA, hex(alg)
        assert piv.sw(0xFE, alg, 0x9C, bytes.fromhex("0720") + bytes(32)) == BAD_P1P2
    assert piv.sw(0xF7, 0x00, 0x9A) == OK


def test_5_7_moves_and_deletes() -> None:
    piv = admin(YUBIKEY_5_7)
    piv.generate(0x9A, 0xE0)
    assert piv.sw(0xF6, 0x85, 0x9A) == OK
    assert piv.sw(0xF6, 0xFF, 0x85) == OK


def test_yubikey_storage_is_limited_in_total() -> None:
    """About 51 200 bytes for all objects (Yubico), each at most 3063."""
    piv = admin(YUBIKEY_5_4)
    used = sum(len(v) for v in piv.applet.data.record.objects.values())  # 5FFF01
    tags = iter(range(0x5F0100, 0x5F0200))
    while used + 3063 <= 51200:
        assert piv.put_object(next(tags), bytes(3063)) == OK
        used += 3063
    assert piv.put_object(next(tags), bytes(51200 - used + 1)) == NO_SPACE
    assert piv.put_object(0x5F0100, bytes(3063)) == OK  # replacing takes no more room


def test_yubikey_reset_restores_the_profiles_factory_key() -> None:
    for profile in (YUBIKEY_5_4, YUBIKEY_5_7):
        piv = admin(profile)
        assert piv.sw(0xFF, 0xFF, 0xFF, b"\x0c\x9b\x20" + bytes(range(32))) == OK
        for _ in range(3):
            piv.verify(pin_block("000000"))
            piv.sw(0x2C, 0x00, 0x80, b"\xff" * 16)
        assert piv.raw("00FB0000")[1] == OK
        assert piv.metadata(0x9B)[0x01] == bytes((profile.management_key_type,))
        piv.authenticate(DEFAULT_KEY, alg=profile.management_key_type)


# -- the YubiKey's Management application -------------------------------------------------


def test_management_application_answers_the_device_information() -> None:
    yubikey = build_card(PivApplet(serial=SERIAL, profile=YUBIKEY_5_7))
    conn = CardConnection(yubikey)
    out, sw = conn.transmit(bytes.fromhex(MANAGEMENT_SELECT))
    assert (out, sw) == (b"Virtual mgr - FW version 5.7.1", OK)
    first, sw = conn.transmit(bytes.fromhex("001D000000"))
    assert sw == OK and first[0] == len(first) - 1
    assert parse_dict(first[1:])[0x10] == b"\x01"  # one more page
    second, sw = conn.transmit(bytes.fromhex("001D010000"))
    assert sw == OK and 0x10 not in parse_dict(second[1:])
    assert conn.transmit(bytes.fromhex("001D020000"))[1] == BAD_P1P2
    assert conn.transmit(bytes.fromhex("001C000000"))[1] == BAD_INS  # configuration is fixed
    assert conn.transmit(bytes.fromhex("0016110000"))[1] == BAD_INS


@pytest.mark.parametrize("profile", [YUBIKEY_5_4, YUBIKEY_5_7], ids=lambda p: p.name)
@pytest.mark.parametrize("transport", [TRANSPORT.NFC, TRANSPORT.USB])
def test_yubikit_reads_the_device_information(profile: PivProfile, transport: TRANSPORT) -> None:
    yubikey = build_card(PivApplet(serial=SERIAL, profile=profile))
    info = ManagementSession(YubikitConnection(yubikey, transport)).read_device_info()
    assert info.serial == SERIAL
    assert tuple(info.version) == profile.version
    assert info.form_factor == FORM_FACTOR.USB_A_KEYCHAIN
    assert not info.is_locked and not info.is_fips
    for supported in info.supported_capabilities.values():
        assert CAPABILITY.PIV in supported and CAPABILITY.OTP in supported
    for enabled in info.config.enabled_capabilities.values():
        assert enabled & ~0x04 == CAPABILITY.PIV  # everything else disabled


def test_selecting_management_ends_the_piv_session() -> None:
    yubikey = build_card(PivApplet(serial=SERIAL, profile=YUBIKEY_5_4))
    conn = CardConnection(yubikey)
    assert conn.transmit(bytes.fromhex("0020008008") + PIN)[1] == OK
    assert conn.transmit(bytes.fromhex(MANAGEMENT_SELECT))[1] == OK
    assert conn.transmit(bytes.fromhex("00A4040005A000000308"))[1] == OK
    assert conn.transmit(bytes.fromhex("00200080"))[1] == 0x63C3


def test_5_4_device_information_is_one_page() -> None:
    conn = CardConnection(build_card(PivApplet(serial=SERIAL, profile=YUBIKEY_5_4)))
    assert conn.transmit(bytes.fromhex(MANAGEMENT_SELECT)) == (
        b"Virtual mgr - FW version 5.4.3",
        OK,
    )
    page, sw = conn.transmit(bytes.fromhex("001D000000"))
    assert sw == OK and page[0] == len(page) - 1
    info = parse_dict(page[1:])
    assert 0x10 not in info and info[0x05] == bytes((5, 4, 3))
    assert info[0x02] == SERIAL.to_bytes(4, "big")
    assert conn.transmit(bytes.fromhex("001D010000"))[1] == BAD_P1P2


def test_plain_piv_card_has_no_management_application() -> None:
    conn = CardConnection(build_card(PivApplet(serial=SERIAL, profile=PIV)))
    assert conn.transmit(bytes.fromhex(MANAGEMENT_SELECT))[1] == NOT_FOUND


def test_atrs() -> None:
    assert atr_of(YUBIKEY_5_4) == atr_of(YUBIKEY_5_7) == YUBIKEY_NFC_ATR
    assert atr_of(YUBIKEY_5_7, Transport.USB) == YUBIKEY_USB_ATR
    assert atr_of(PIV, Transport.USB) == atr_of(PIV) == PIV_ATR
    for atr in (YUBIKEY_NFC_ATR, YUBIKEY_USB_ATR, PIV_ATR):
        tck = 0
        for byte in atr[1:]:
            tck ^= byte
        assert tck == 0, atr.hex()  # T=1 offered: the check byte is right
    # ykman: USB when TA1..TD1 are all present; a plain PIV card reads as NFC.
    assert YUBIKEY_USB_ATR[1] & 0xF0 == 0xF0
    assert YUBIKEY_NFC_ATR[1] & 0xF0 != 0xF0 and PIV_ATR[1] & 0xF0 != 0xF0
    assert b"YubiKey" not in PIV_ATR and b"YubiKey" in YUBIKEY_USB_ATR


# -- the profile is the card's -----------------------------------------------------------


def test_the_record_keeps_the_profile() -> None:
    record = PivRecord.factory(SERIAL, PIV)
    again = PivRecord.from_json(record.to_json())
    assert again.profile == "piv" and again == record
    assert PivApplet(data=PivData(again)).profile is PIV
    legacy = json.loads(record.to_json())
    del legacy["profile"]
    assert PivRecord.from_json(json.dumps(legacy)).profile == "yubikey-5.7"  # before profiles
    legacy["profile"] = "yubikey-9"
    with pytest.raises(ValueError, match="unknown card profile 'yubikey-9'"):
        PivRecord.from_json(json.dumps(legacy))


def test_data_and_profile_must_agree() -> None:
    data = PivData(PivRecord.factory(SERIAL, YUBIKEY_5_7))
    with pytest.raises(ValueError, match="differs"):
        PivApplet(data=data, profile=YUBIKEY_5_4)
    assert PivApplet(data=data).profile is YUBIKEY_5_7
    assert PivApplet().profile is YUBIKEY_5_4  # the default


# -- the emulator's command line ------------------------------------------------------------


def emulator_cards(*argv: str) -> list[Card]:
    """The cards ``python -m vsc.emulator ARGV`` would serve (in memory, nothing started)."""
    parser = _parser()
    args = parser.parse_args(argv)
    return _build_cards(args, _check(parser, args), [])


def serial_of(card: Card) -> int:
    assert card.transmit(bytes.fromhex("00A4040005A000000308"))[-2:] == b"\x90\x00"
    answer = card.transmit(bytes.fromhex("00F8000000"))
    assert answer[-2:] == b"\x90\x00"
    return int.from_bytes(answer[:-2], "big")


def test_emulator_serials_are_stable_and_settable() -> None:
    """Without --serial a card's serial follows its vpcd port: the same at every start."""
    first = [serial_of(c) for c in emulator_cards("-P", "40000", "--slots", "2")]
    again = [serial_of(c) for c in emulator_cards("-P", "40000", "--slots", "2")]
    assert first == again == [SERIAL_BASE + 40000, SERIAL_BASE + 40001]
    chosen = emulator_cards("-P", "40000", "--slots", "2", "--serial", "31415926")
    assert [serial_of(c) for c in chosen] == [31415926, SERIAL_BASE + 40001]


@pytest.mark.parametrize(
    ("argv", "atr", "version"),
    [
        ((), YUBIKEY_NFC_ATR, "050403"),
        (("--profile", "yubikey-5.7", "--transport", "usb"), YUBIKEY_USB_ATR, "050701"),
        (("--profile", "piv", "--transport", "usb"), PIV_ATR, None),
    ],
)
def test_emulator_profile_and_transport(
    argv: tuple[str, ...], atr: bytes, version: str | None
) -> None:
    (card,) = emulator_cards(*argv)
    assert card.atr == atr
    card.transmit(bytes.fromhex("00A4040005A000000308"))
    answer = card.transmit(bytes.fromhex("00FD000000"))
    assert answer == (b"\x6d\x00" if version is None else bytes.fromhex(version + "9000"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--serial", "1", "--serial", "2"], "2 serials for 1 slots"),
        (["--serial", "0"], "a serial is a number from 1 to 4294967295"),
        (["--serial", str(2**32)], "a serial is a number from 1 to 4294967295"),
        (["--slots", "2", "--serial", "5", "--serial", "5"], "the same --serial twice"),
        (["--applet", "gids", "--profile", "piv"], "--profile is for PIV cards"),
        (["--profile", "yubikey-9"], "invalid choice: 'yubikey-9'"),
    ],
)
def test_emulator_refuses_bad_profile_and_serial_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        emulator_main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
