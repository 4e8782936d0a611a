"""The GIDS applet through raw APDUs (``Card.transmit``), byte for byte.

Expected bytes and status words come from docs/gids.md (what OpenSC's
driver and the Windows minidriver send and expect); cryptographic results
are checked with ``cryptography``, never with the applet's own helpers.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from applets.gids import GIDS_ATR, GidsApplet
from applets.gids.host import (
    CardError,
    admin_key_do,
    answer_challenge,
    authenticate_mutual,
    external_challenge,
    external_response,
    initialize,
    key_file_fcp,
)
from applets.gids.minidriver import INITIAL_FILES, parse_file_table
from applets.piv.pinrules import CharRule, PinRules
from vsc.apdu import CommandApdu
from vsc.tlv import encode_tlv, parse_dict, parse_tlv

from .conftest import ADMIN_KEY, CARDID, PIN, GidsCard, new_card

OK = 0x9000
INCOMPATIBLE = 0x6981
SECURITY = 0x6982
BLOCKED = 0x6983
CONDITIONS = 0x6985
NOT_ALLOWED = 0x6986
INVALID_DATA = 0x6A80
NOT_SUPPORTED = 0x6A81
NOT_FOUND = 0x6A82
NO_SPACE = 0x6A84
BAD_P1P2 = 0x6A86
REF_NOT_FOUND = 0x6A88
EXISTS = 0x6A89

SELECT_GIDS = "00A4040009A0000003974254465900"
FCI = "61124F0BA00000039742544659020173034001C0"
DIGEST_INFO_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")


def apdu(ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> CommandApdu:
    return CommandApdu(0x00, ins, p1, p2, data, le)


def verify(pin: bytes) -> CommandApdu:
    return apdu(0x20, 0x00, 0x80, pin)


def mse(crt: int, algorithm: int, key_ref: int = 0x81) -> CommandApdu:
    return apdu(0x22, 0x41, crt, bytes((0x80, 1, algorithm, 0x84, 1, key_ref)))


def pso_sign(data: bytes) -> CommandApdu:
    return apdu(0x2A, 0x9E, 0x9A, data, 256)


def pso_decipher(data: bytes) -> CommandApdu:
    return apdu(0x2A, 0x80, 0x86, data, 256)


def generate(algorithm: int, key_ref: int = 0x81) -> CommandApdu:
    return apdu(0x47, 0, 0, encode_tlv(0xAC, bytes((0x80, 1, algorithm, 0x83, 1, key_ref))))


def get_object(fid: int, tag: int) -> CommandApdu:
    return apdu(0xCB, fid >> 8, fid & 0xFF, encode_tlv(0x5C, tag.to_bytes(2, "big")), 256)


def put_object(fid: int, tag: int, value: bytes) -> CommandApdu:
    return apdu(0xDB, fid >> 8, fid & 0xFF, encode_tlv(tag, value))


def create_key_file(card: GidsCard, key_ref: int = 0x81, algorithm: int = 0x07) -> None:
    card.send(apdu(0xE0, 0, 0, key_file_fcp(key_ref, algorithm, decipher=True)))
    card.send(apdu(0x44, 0, 0))


def public_key(answer: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    fields = parse_dict(parse_tlv(answer, 0x7F49).value)
    if 0x86 in fields:
        curve = ec.SECP256R1() if len(fields[0x86]) == 65 else ec.SECP384R1()
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, fields[0x86])
    n, e = (int.from_bytes(fields[t], "big") for t in (0x81, 0x82))
    return rsa.RSAPublicNumbers(e, n).public_key()


def rsa_key(card: GidsCard, key_ref: int = 0x81, algorithm: int = 0x07) -> rsa.RSAPublicKey:
    """A key container with a generated RSA key (the PIN verified)."""
    card.send(verify(PIN))
    create_key_file(card, key_ref, algorithm)
    key = public_key(card.send(generate(algorithm, key_ref)))
    assert isinstance(key, rsa.RSAPublicKey)
    return key


# -- identity and selection ---------------------------------------------------------------


def test_atr_is_a_virtual_smart_cards_with_the_gids_aid() -> None:
    assert bytes.fromhex("3B8D0180FBA000000397425446590201C9") == GIDS_ATR
    tck = 0
    for b in GIDS_ATR[1:]:
        tck ^= b
    assert tck == 0


def test_select_by_the_rid_and_btfy_answers_the_fci(factory: GidsCard) -> None:
    answer = factory.transmit(bytes.fromhex(SELECT_GIDS))
    assert answer.hex().upper() == FCI.upper() + "9000"
    fcp = factory.transmit(bytes.fromhex("00A4040409A00000039742544659"))
    assert fcp.hex().upper() == "6208820138 8C03033030 9000".replace(" ", "")


def test_select_by_file_identifier(gids: GidsCard) -> None:
    assert gids.sw("00A4000C023FFF") == OK
    answer = gids.transmit(bytes.fromhex("00A40004 02A010 00".replace(" ", "")))
    fcp = parse_tlv(answer[:-2], 0x62).value
    assert parse_dict(fcp)[0x83] == b"\xa0\x10"
    assert parse_dict(fcp)[0x8A] == b"\x05"  # operational
    assert gids.sw("00A4000C02A0AA") == NOT_FOUND
    assert gids.sw("00A4020C02A010") == BAD_P1P2
    assert gids.sw("00A4080C043F00A010") == OK  # a path from the MF


# -- the factory card and personalisation ------------------------------------------------------


def test_a_factory_card_is_empty_and_refuses_what_needs_a_pin(factory: GidsCard) -> None:
    assert factory.status(get_object(0xA000, 0xDF1F)) == NOT_FOUND  # gids-tool: "a new card"
    assert factory.status(apdu(0xCB, 0x3F, 0xFF, bytes.fromhex("5C027F71"))) == REF_NOT_FOUND
    assert factory.status(apdu(0x44, 0, 0)) == CONDITIONS  # no PIN yet
    assert factory.status(apdu(0x2C, 0x02, 0x80, b"654321")) == NOT_ALLOWED
    assert factory.status(apdu(0x87, 0, 0, bytes.fromhex("7C028100"))) == NOT_ALLOWED
    create_key_file(factory)  # personalisation may create files...
    assert factory.status(generate(0x07)) == CONDITIONS  # ...but keys wait for activation


def test_initialize_writes_the_minidriver_layout(gids: GidsCard) -> None:
    table = parse_tlv(gids.send(get_object(0xA000, 0xDF1F)), 0xDF1F).value
    assert parse_file_table(table) == INITIAL_FILES
    assert gids.send(get_object(0xA012, 0xDF20)) == encode_tlv(0xDF20, CARDID)
    assert gids.send(get_object(0xA010, 0xDF21)) == encode_tlv(0xDF21, b"mscp\0\0\0\0")
    assert gids.send(get_object(0xA010, 0xDF22)) == encode_tlv(0xDF22, bytes(6))
    assert gids.send(get_object(0xA010, 0xDF23)) == bytes.fromhex("DF2300")
    status = gids.send(apdu(0xCB, 0x3F, 0xFF, bytes.fromhex("5C027F71"), 256))
    assert status == bytes.fromhex("7F71 06 970103 930103".replace(" ", ""))


def test_an_activated_card_enforces_the_access_rules(gids: GidsCard) -> None:
    assert gids.status(apdu(0x24, 0x01, 0x80, b"999999")) == SECURITY
    assert gids.status(apdu(0xDB, 0x3F, 0xFF, admin_key_do(bytes(24)))) == SECURITY
    assert gids.status(put_object(0xA010, 0xDF22, bytes(6))) == SECURITY
    assert gids.status(put_object(0xA012, 0xDF20, bytes(16))) == SECURITY
    gids.send(verify(PIN))
    assert gids.status(put_object(0xA010, 0xDF22, bytes(6))) == OK
    assert gids.status(put_object(0xA012, 0xDF20, bytes(16))) == SECURITY  # admin only
    authenticate_mutual(gids.transmit, ADMIN_KEY)
    assert gids.status(put_object(0xA012, 0xDF20, bytes(16))) == OK


def test_the_private_files_keep_their_rules(gids: GidsCard) -> None:
    assert gids.status(put_object(0xA013, 0xDF30, b"user")) == SECURITY
    gids.send(verify(PIN))
    gids.send(put_object(0xA013, 0xDF30, b"user"))
    gids.send(put_object(0xA011, 0xDF31, b"write only"))
    assert gids.send(get_object(0xA013, 0xDF30)) == encode_tlv(0xDF30, b"user")
    authenticate_mutual(gids.transmit, ADMIN_KEY)
    assert gids.status(get_object(0xA011, 0xDF31)) == SECURITY  # FF: nobody reads it
    gids.send(put_object(0xA014, 0xDF32, b"admin"))
    gids.reset()
    gids.send(apdu(0xA4, 0x04, 0x00, bytes.fromhex("A00000039742544659")))
    assert gids.status(get_object(0xA013, 0xDF30)) == SECURITY
    assert gids.status(get_object(0xA014, 0xDF32)) == SECURITY


# -- the PIN ------------------------------------------------------------------------------------


def test_wrong_pins_count_down_and_block(gids: GidsCard) -> None:
    assert [gids.status(verify(b"000000")) for _ in range(3)] == [0x63C2, 0x63C1, 0x63C0]
    assert gids.status(verify(PIN)) == BLOCKED
    assert gids.status(apdu(0x20, 0x00, 0x80)) == BLOCKED
    status = gids.send(apdu(0xCB, 0x3F, 0xFF, bytes.fromhex("5C027F71"), 256))
    assert parse_dict(parse_tlv(status, 0x7F71).value) == {0x97: b"\x00", 0x93: b"\x03"}


def test_a_right_pin_restores_the_counter_and_a_status_query_costs_nothing(
    gids: GidsCard,
) -> None:
    assert gids.status(verify(b"000000")) == 0x63C2
    assert gids.status(apdu(0x20, 0x00, 0x80)) == 0x63C2  # not verified: tries left
    assert gids.status(verify(PIN)) == OK
    assert gids.status(apdu(0x20, 0x00, 0x80)) == OK
    assert gids.status(verify(b"000000")) == 0x63C2  # restored to 3, then one spent
    assert gids.status(apdu(0x20, 0x00, 0x80)) == 0x63C2  # and the status is gone


@pytest.mark.parametrize("length", [0, 3, 128])
def test_a_pin_of_impossible_length_costs_no_try(gids: GidsCard, length: int) -> None:
    if length:
        assert gids.status(verify(b"1" * length)) == INVALID_DATA
    assert gids.status(apdu(0x20, 0x00, 0x80)) == 0x63C3


def test_change_reference_data_splits_at_the_held_length(gids: GidsCard) -> None:
    long_pin = bytes(range(0x21, 0x21 + 127))
    assert gids.status(apdu(0x24, 0x00, 0x80, PIN + long_pin)) == OK
    assert gids.status(verify(PIN)) == 0x63C2
    assert gids.status(verify(long_pin)) == OK
    assert gids.status(apdu(0x24, 0x00, 0x80, b"x" * 127 + b"9999")) == 0x63C2
    assert gids.status(apdu(0x24, 0x00, 0x80, long_pin + b"123")) == INVALID_DATA
    assert gids.status(verify(long_pin)) == OK  # a refused new PIN changes nothing


def test_log_out_with_p2_82(gids: GidsCard) -> None:
    gids.send(verify(PIN))
    assert gids.sw("00200082") == OK
    assert gids.status(apdu(0x20, 0x00, 0x80)) == 0x63C3


def test_a_managed_cards_policy_names_the_rule(gids: GidsCard) -> None:
    events: list[tuple[str, object]] = []
    gids.applet.events = lambda name, details: events.append((name, dict(details)))
    gids.applet.data.set_pin_rules(PinRules(8, 16, digits=CharRule.MANDATORY))
    assert gids.status(apdu(0x24, 0x00, 0x80, PIN + b"abcdefgh")) == INVALID_DATA
    assert events[-1][0] == "pin-refused"
    assert events[-1][1] == {"rule": "digits", "reason": "the PIN must contain a digit"}
    assert gids.status(apdu(0x24, 0x00, 0x80, PIN + b"abcdefg1")) == OK


# -- the administrator key --------------------------------------------------------------------


def test_mutual_authentication_both_ways(gids: GidsCard) -> None:
    assert authenticate_mutual(gids.transmit, ADMIN_KEY).card_proved
    with pytest.raises(CardError) as wrong:
        authenticate_mutual(gids.transmit, bytes(24))
    assert wrong.value.sw == 0x63C9  # ten tries, one spent
    assert gids.status(apdu(0x2C, 0x02, 0x80, b"654321")) == SECURITY  # admin status gone


def test_mutual_authentication_bytes_as_the_minidriver_computes_them(gids: GidsCard) -> None:
    """Step 2 is 3DES-CBC (zero IV) of R2 | R1 | Z1 | 80; the card answers R1 | R2 | Z2 | 80."""
    gids.send("0022C1A403830180")
    r1 = bytes(range(16))
    answer = gids.send(apdu(0x87, 0, 0, bytes.fromhex("7C128110") + r1, 256))
    r2 = parse_tlv(parse_tlv(answer, 0x7C).value, 0x81).value
    cipher = Cipher(TripleDES(ADMIN_KEY), modes.CBC(bytes(8)))
    encryptor = cipher.encryptor()
    proof = encryptor.update(r2 + r1 + b"ZZZZZZZ\x80") + encryptor.finalize()
    answer = gids.send(apdu(0x87, 0, 0, bytes.fromhex("7C2A8228") + proof, 256))
    assert answer[:4] == bytes.fromhex("7C2A8228") and len(answer) == 44
    decryptor = cipher.decryptor()
    plain = decryptor.update(answer[4:]) + decryptor.finalize()
    assert plain[:32] == r1 + r2 and plain[39] == 0x80


def test_external_authentication_is_one_block_once(gids: GidsCard) -> None:
    challenge = external_challenge(gids.transmit)
    assert len(challenge) == 8
    encryptor = Cipher(TripleDES(ADMIN_KEY), modes.ECB()).encryptor()
    response = encryptor.update(challenge) + encryptor.finalize()
    assert external_response(ADMIN_KEY, challenge) == response
    answer_challenge(gids.transmit, response)
    gids.send(apdu(0x2C, 0x02, 0x80, b"654321"))  # the administrator may unblock
    external_challenge(gids.transmit)
    with pytest.raises(CardError) as replay:
        answer_challenge(gids.transmit, response)  # the old answer to a new challenge
    assert replay.value.sw == 0x63C9


def test_a_challenge_lives_for_one_command(gids: GidsCard) -> None:
    challenge = external_challenge(gids.transmit)
    gids.send(get_object(0xA010, 0xDF21))
    with pytest.raises(CardError) as stale:
        answer_challenge(gids.transmit, external_response(ADMIN_KEY, challenge))
    assert stale.value.sw == CONDITIONS


def test_the_admin_counter_blocks_then_heals(gids: GidsCard) -> None:
    now = [1_000_000.0]
    gids.applet.wall_clock = lambda: now[0]
    sws = []
    for _ in range(10):
        external_challenge(gids.transmit)
        try:
            answer_challenge(gids.transmit, bytes(8))
        except CardError as e:
            sws.append(e.sw)
    assert sws == [0x63C0 | n for n in range(9, -1, -1)]
    with pytest.raises(CardError) as blocked:
        external_challenge(gids.transmit)
        answer_challenge(gids.transmit, external_response(ADMIN_KEY, bytes(8)))
    assert blocked.value.sw == BLOCKED  # the right key is not even compared
    now[0] += 3600
    challenge = external_challenge(gids.transmit)
    answer_challenge(gids.transmit, external_response(ADMIN_KEY, challenge))
    assert gids.applet.data.record.admin.remaining == 10


def test_an_aes_admin_key(gids: GidsCard) -> None:
    aes = bytes(range(32))
    authenticate_mutual(gids.transmit, ADMIN_KEY)
    gids.send(apdu(0xDB, 0x3F, 0xFF, admin_key_do(aes)))
    with pytest.raises(CardError):
        authenticate_mutual(gids.transmit, ADMIN_KEY)
    assert authenticate_mutual(gids.transmit, aes).card_proved
    challenge = external_challenge(gids.transmit)
    assert len(challenge) == 16
    encryptor = Cipher(algorithms.AES(aes), modes.ECB()).encryptor()
    answer_challenge(gids.transmit, encryptor.update(challenge) + encryptor.finalize())


def test_unblock_with_the_admin_key(gids: GidsCard) -> None:
    for _ in range(3):
        gids.status(verify(b"000000"))
    assert gids.status(apdu(0x2C, 0x02, 0x80, b"654321")) == SECURITY
    authenticate_mutual(gids.transmit, ADMIN_KEY)
    assert gids.status(apdu(0x2C, 0x02, 0x80, b"12")) == INVALID_DATA
    assert gids.status(apdu(0x2C, 0x02, 0x80, b"654321")) == OK
    assert gids.status(apdu(0x2C, 0x02, 0x80, b"111111")) == SECURITY  # admin logged out
    assert gids.status(verify(b"654321")) == OK


def test_unblock_with_the_puk() -> None:
    card = new_card()
    initialize(card.transmit, pin=PIN, admin_key=ADMIN_KEY, puk=b"87654321")
    status = card.send(apdu(0xCB, 0x3F, 0xFF, bytes.fromhex("5C027F73"), 256))
    assert parse_tlv(status, 0x7F73).value == bytes.fromhex("970103930103")
    for _ in range(3):
        card.status(verify(b"000000"))
    assert card.status(apdu(0x2C, 0x00, 0x80, b"00000000" + b"112233")) == 0x63C2
    assert card.status(apdu(0x2C, 0x00, 0x80, b"87654321" + b"112233")) == OK
    assert card.status(verify(b"112233")) == OK


def test_an_unblock_ends_the_pin_status_of_every_channel(gids: GidsCard) -> None:
    gids.send(verify(PIN))
    channel = gids.send("0070000001")[0]

    def other(command: CommandApdu) -> CommandApdu:
        return command._replace(cla=channel)

    gids.send(other(apdu(0xA4, 0x04, 0x00, bytes.fromhex("A00000039742544659"))))
    authenticate_mutual(lambda a: gids.transmit(bytes((channel,)) + a[1:]), ADMIN_KEY)
    gids.send(other(apdu(0x2C, 0x02, 0x80, b"654321")))
    assert gids.status(apdu(0x20, 0x00, 0x80)) == 0x63C3


# -- keys -----------------------------------------------------------------------------------------


def test_rsa_2048_sign_with_card_padding(gids: GidsCard) -> None:
    key = rsa_key(gids)
    gids.send(mse(0xB6, 0x57))
    digest = hashlib.sha256(b"message").digest()
    signature = gids.send(pso_sign(DIGEST_INFO_SHA256 + digest))
    key.verify(signature, b"message", padding.PKCS1v15(), hashes.SHA256())


def test_rsa_raw_sign_and_every_decipherment(gids: GidsCard) -> None:
    key = rsa_key(gids, algorithm=0x06)  # RSA-1024
    block = b"\x00\x01" + b"\xff" * 74 + b"\x00" + DIGEST_INFO_SHA256 + bytes(32)
    gids.send(mse(0xB6, 0x16))
    signature = gids.send(pso_sign(block))
    key.verify(signature, bytes(32), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
    for algorithm, scheme in ((0x46, padding.PKCS1v15()), (0x86, oaep)):
        gids.send(mse(0xB8, algorithm))
        assert gids.send(pso_decipher(key.encrypt(b"secret", scheme))) == b"secret"
    gids.send(mse(0xB8, 0x06))
    raw = pow(42, key.public_numbers().e, key.public_numbers().n).to_bytes(128, "big")
    assert gids.send(pso_decipher(b"\x00" + raw)) == (42).to_bytes(128, "big")


@pytest.mark.parametrize(
    ("algorithm", "curve", "hash_"),
    [(0x0C, ec.SECP256R1(), hashes.SHA256()), (0x0D, ec.SECP384R1(), hashes.SHA384())],
)
def test_ecc_keys_sign_in_the_plain_format(
    gids: GidsCard, algorithm: int, curve: ec.EllipticCurve, hash_: hashes.HashAlgorithm
) -> None:
    gids.send(verify(PIN))
    template = encode_tlv(0xB6, bytes((0x80, 1, algorithm, 0x83, 1, 0x82, 0x95, 1, 0x40)))
    fcp = encode_tlv(
        0x62,
        bytes.fromhex("820118 8302B082 8C058F10101000".replace(" ", ""))
        + encode_tlv(0xA5, template),
    )
    gids.send(apdu(0xE0, 0, 0, fcp))
    gids.send(apdu(0x44, 0, 0))
    key = public_key(gids.send(generate(algorithm, 0x82)))
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == curve.name
    gids.send(mse(0xB6, algorithm, 0x82))
    digest = hashlib.new(hash_.name, b"message").digest()
    signature = gids.send(pso_sign(digest))
    size = curve.key_size // 8 + (1 if curve.key_size % 8 else 0)
    assert len(signature) == 2 * size
    r, s = (int.from_bytes(signature[i : i + size], "big") for i in (0, size))
    key.verify(utils.encode_dss_signature(r, s), b"message", ec.ECDSA(hash_))
    assert gids.status(mse(0xB8, algorithm, 0x82)) == INVALID_DATA  # not in its template


def test_public_key_reading_and_generation_refusals(gids: GidsCard) -> None:
    read = apdu(0xCB, 0x3F, 0xFF, bytes.fromhex("70088401 81A5037F4980".replace(" ", "")), 256)
    gids.send(verify(PIN))
    create_key_file(gids)
    gids.send("00200082")
    assert gids.status(read) == REF_NOT_FOUND  # no key generated yet
    assert gids.status(generate(0x07)) == SECURITY  # the PIN guards generation
    gids.send(verify(PIN))
    assert gids.status(generate(0x0A)) == NOT_SUPPORTED  # P-192
    assert gids.status(generate(0x42)) == INVALID_DATA
    assert gids.status(generate(0x07, key_ref=0x90)) == REF_NOT_FOUND
    generated = gids.send(generate(0x06))
    gids.send("00200082")
    assert gids.send(read) == generated  # the public key is public


def _import(key_ref: int, der: bytes) -> CommandApdu:
    value = bytes.fromhex("830102 840100") + encode_tlv(0x87, der)
    return apdu(
        0xDB, 0x3F, 0xFF, encode_tlv(0x70, bytes((0x84, 1, key_ref)) + encode_tlv(0xA5, value))
    )


def test_key_import_rsa_as_opensc_sends_it_and_ec(gids: GidsCard) -> None:
    private = rsa.generate_private_key(65537, 1024)
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    gids.send(verify(PIN))
    create_key_file(gids, algorithm=0x06)
    gids.send("00200082")
    assert gids.status(_import(0x81, der)) == SECURITY
    gids.send(verify(PIN))
    gids.send(_import(0x81, der))
    gids.send(mse(0xB6, 0x56))
    signature = gids.send(pso_sign(DIGEST_INFO_SHA256 + bytes(32)))
    private.public_key().verify(
        signature, bytes(32), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
    )
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_der = ec_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    create_key_file(gids, 0x83, 0x0C)
    gids.send(_import(0x83, ec_der))
    read = bytes.fromhex("70088401 83A5037F4980".replace(" ", ""))
    assert public_key(gids.send(apdu(0xCB, 0x3F, 0xFF, read, 256))) == ec_key.public_key()
    assert gids.status(_import(0x83, b"\x30\x03\x02\x01\x00")) == INVALID_DATA


def test_operations_need_an_environment_and_the_pin_at_use(gids: GidsCard) -> None:
    rsa_key(gids)
    assert gids.status(pso_sign(bytes(32))) == CONDITIONS  # no MSE
    assert gids.status(mse(0xB6, 0x58)) == INVALID_DATA  # not in the template
    assert gids.status(mse(0xB6, 0x57, key_ref=0x99)) == REF_NOT_FOUND
    gids.send(mse(0xB6, 0x57))
    gids.send("00200082")  # log out between MSE and PSO
    assert gids.status(pso_sign(DIGEST_INFO_SHA256 + bytes(32))) == SECURITY
    assert gids.status(mse(0xB6, 0x57)) == SECURITY
    gids.send(verify(PIN))
    gids.send(mse(0xB8, 0x47))
    assert gids.status(pso_sign(bytes(32))) == CONDITIONS  # the environment is for deciphering
    assert gids.status(pso_decipher(bytes(100))) == 0x6700


# -- files -------------------------------------------------------------------------------------


def test_deleting_a_file_needs_the_right_to_write_it(gids: GidsCard) -> None:
    rsa_key(gids, algorithm=0x06)
    gids.send("00A4000C02B081")
    gids.send("00E40000")  # the user deletes their own key
    assert gids.status("00A4000C02B081") == NOT_FOUND
    assert gids.applet.keys.get(0x81) is None
    gids.send("00A4000C02B080")
    assert gids.status("00E40000") == SECURITY  # the administrator key is not the user's
    gids.send("00A4000C02A012")
    assert gids.status("00E40000") == SECURITY
    authenticate_mutual(gids.transmit, ADMIN_KEY)
    gids.send("00A4000C02B080")
    gids.send("00E40000")
    gids.send("00200082")
    gids.send(verify(PIN))
    from applets.gids.host import ADMIN_KEY_FCP

    assert gids.status(apdu(0xE0, 0, 0, ADMIN_KEY_FCP)) == SECURITY  # nor may they recreate it


@pytest.mark.parametrize(
    ("fcp", "sw"),
    [
        ("620882013983 02A0208C", INVALID_DATA),  # truncated
        ("6207820139 8302A020", INVALID_DATA),  # no access rules
        ("620C820139 8302A010 8C03033000", EXISTS),
        ("620C820118 8302A020 8C03033000", INVALID_DATA),  # a key file named A020
        ("620C820139 8302B085 8C03033000", INVALID_DATA),  # a data file named B085
        ("620C820138 8302A020 8C03033000", INVALID_DATA),  # a DF
        ("620C820139 83023FFF 8C03033000", INVALID_DATA),  # the application's name
        ("620B820139 8302A020 8C03033000", INVALID_DATA),  # wrong length
        ("620C820139 8302A020 8C03073000", INVALID_DATA),  # three modes, two conditions
    ],
)
def test_create_file_refusals(gids: GidsCard, fcp: str, sw: int) -> None:
    gids.send(verify(PIN))
    assert gids.status(apdu(0xE0, 0, 0, bytes.fromhex(fcp.replace(" ", "")))) == sw


def test_data_objects_empty_then_removed_and_bounded(gids: GidsCard) -> None:
    gids.send(verify(PIN))
    gids.send(put_object(0xA010, 0xDF40, b""))
    assert gids.send(get_object(0xA010, 0xDF40)) == bytes.fromhex("DF4000")
    gids.send(put_object(0xA010, 0xDF40, b""))
    assert gids.status(get_object(0xA010, 0xDF40)) == REF_NOT_FOUND
    assert gids.status(put_object(0xA010, 0xDF41, bytes(65001))) == NO_SPACE
    for tag in range(0xDF41, 0xDF45):
        gids.send(put_object(0xA010, tag, bytes(65000)))
    assert gids.status(put_object(0xA010, 0xDF45, bytes(65000))) == NO_SPACE
    everything = gids.send(apdu(0xCB, 0xA0, 0x10, bytes.fromhex("5C00"), 0x10000))
    assert [t for t in parse_dict(everything)] == [
        0xDF21,
        0xDF22,
        0xDF23,
        0xDF41,
        0xDF42,
        0xDF43,
        0xDF44,
    ]


def test_file_kind_and_state_refusals(gids: GidsCard) -> None:
    gids.send(verify(PIN))
    create_key_file(gids)
    assert gids.status(get_object(0xB081, 0xDF20)) == INCOMPATIBLE
    assert gids.status(get_object(0xA0AA, 0xDF20)) == NOT_FOUND
    gids.send(apdu(0xE0, 0, 0, bytes.fromhex("620C8201398302A0208C03033000")))
    assert gids.status(put_object(0xA020, 0xDF20, b"x")) == CONDITIONS  # not activated
    assert gids.status("00E4000002A020") == 0x6700
    assert gids.status("00E40000") == OK  # the current file: A020


# -- sessions and robustness -----------------------------------------------------------------


def test_reset_and_reselect(gids: GidsCard) -> None:
    gids.send(verify(PIN))
    gids.send(apdu(0xA4, 0x04, 0x00, bytes.fromhex("A00000039742544659")))
    assert gids.status(apdu(0x20, 0x00, 0x80)) == OK  # kept across a re-SELECT, as PIV
    gids.reset()
    assert gids.status(apdu(0x20, 0x00, 0x80)) == 0x63C3


@pytest.mark.parametrize(
    ("ins", "p1", "p2"),
    list(
        itertools.product(
            [0x20, 0x22, 0x24, 0x2A, 0x2C, 0x44, 0x47, 0x87, 0xA4, 0xCB, 0xDB, 0xE0, 0xE4],
            [0x00, 0x3F, 0x41, 0x9E, 0xFF],
            [0x00, 0x80, 0xB6, 0xFF],
        )
    ),
)
def test_every_command_answers_a_status_word(gids: GidsCard, ins: int, p1: int, p2: int) -> None:
    for data in (b"", b"\x00", b"\x7c\x00", b"\xff" * 300):
        answer = gids.transmit(CommandApdu(0, ins, p1, p2, data).encode())
        assert answer[-2:] != b"\x6f\x00", (hex(ins), hex(p1), hex(p2), data[:4])


def test_a_factory_applet_has_its_own_serial() -> None:
    assert GidsApplet(serial=87654321).data.serial == 87654321
    assert 10_000_000 <= GidsApplet().data.serial < 100_000_000


def test_activation_ends_what_personalisation_verified(factory: GidsCard) -> None:
    factory.send(apdu(0x24, 0x01, 0x80, PIN))
    factory.send(verify(PIN))
    assert factory.status(apdu(0x20, 0x00, 0x80)) == OK
    factory.send("00A4000C023FFF")
    factory.send("00440000")
    assert factory.status(apdu(0x20, 0x00, 0x80)) == 0x63C3
