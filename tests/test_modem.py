"""SMS PDUs and the AT response codec: spec vectors, the simulator's independent decoder, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modem import (
    ModemCodec,
    ModemLine,
    SmsPdu,
    encode_address,
    parse_cmgs,
    parse_csq,
    parse_registration,
    sms_submit_pdus,
    split_ucs2,
)
from simulators.modem import PduError, decode_submit

# shared/protocols.md §5.2, worked example (recomputed there): 18 characters, one part.
SPEC_TEXT = "紧急呼叫：3号楼201室按下求助按钮"
SPEC_PDU = "0011000D91683108108300F00008A7247D276025547C53EBFF1A003353F7697C0032003000315BA463094E0B6C4252A9630994AE"
# The published SIM900A cross-check (AT+CMGS=39).
SIM900A_PDU = "0011000D91683170471209F20008AA18566872695F528FD86210529FFF0C611F8C224F7F7528FF01"


def test_single_part_matches_the_worked_example_byte_for_byte() -> None:
    assert sms_submit_pdus("+8613800138000", SPEC_TEXT, reference=7) == [SmsPdu(SPEC_PDU, 51)]


def test_simulator_decoder_reads_the_published_vectors() -> None:
    spec = decode_submit(SPEC_PDU)
    assert (spec.number, spec.text, spec.total, spec.tpdu_octets) == ("+8613800138000", SPEC_TEXT, 1, 51)
    other = decode_submit(SIM900A_PDU)
    assert (other.number, other.text, other.tpdu_octets) == ("+8613077421902", "器物归还成功，感谢使用！", 39)


def test_address_is_nibble_swapped_and_padded() -> None:
    assert encode_address("+8613800138000").hex().upper() == "0D91683108108300F0"
    assert encode_address("10086").hex().upper() == "05810180F6"


def test_concatenated_parts_follow_the_spec_header_and_sizes() -> None:
    text = "紧" * 67 + "急" * 10  # 77 characters: two parts, 67 + 10
    first, second = sms_submit_pdus("+8613800138000", text, reference=0x2A)
    # protocols.md §5.2: "0051000D91683108108300F00008A78C0500032A0201 8DCC..." and AT+CMGS=155
    assert first.hex.startswith("0051000D91683108108300F00008A78C0500032A0201" + "7D27")
    assert first.tpdu_octets == 155
    assert second.hex[32:44] == "0500032A0202"
    parts = [decode_submit(p.hex) for p in (first, second)]
    assert [(p.reference, p.total, p.seq) for p in parts] == [(0x2A, 2, 1), (0x2A, 2, 2)]
    assert "".join(p.text for p in parts) == text


def test_seventy_units_fit_one_sms_seventy_one_do_not() -> None:
    assert len(sms_submit_pdus("+86138", "字" * 70, 1)) == 1
    assert len(sms_submit_pdus("+86138", "字" * 71, 1)) == 2


def test_a_surrogate_pair_is_never_split_across_parts() -> None:
    text = "字" * 66 + "😀" + "字" * 10  # the emoji's two units would straddle units 67/68
    parts = split_ucs2(text)
    assert len(parts[0]) == 66 * 2
    assert "".join(p.decode("utf-16-be") for p in parts) == text
    for pdu in sms_submit_pdus("+8613800138000", text, 3):
        decode_submit(pdu.hex)  # the simulator refuses a split pair


@given(st.text(min_size=1, max_size=400), st.integers(0, 255))
@settings(max_examples=200)
def test_any_text_round_trips_through_the_simulator_decoder(text: str, ref: int) -> None:
    pdus = sms_submit_pdus("+8613912345678", text, ref)
    parts = [decode_submit(p.hex) for p in pdus]
    assert all(p.tpdu_octets == pdu.tpdu_octets for p, pdu in zip(parts, pdus, strict=True))
    assert "".join(p.text for p in parts) == text
    assert {p.reference for p in parts} == ({ref} if len(parts) > 1 else {None})


def test_decoder_rejects_a_wrong_udl() -> None:
    bad = SPEC_PDU[:30] + "25" + SPEC_PDU[32:]  # UDL 0x25 instead of 0x24
    with pytest.raises(PduError, match="UDL"):
        decode_submit(bad)


MODEM_BYTES = b"\r\nRDY\r\n\r\n+CPIN: READY\r\n\r\nOK\r\n\r\n+CSQ: 18,99\r\n\r\nOK\r\n\r\n> \r\n+CMGS: 12\r\n\r\nOK\r\n"
EXPECTED = [
    ModemLine("info", "RDY"),
    ModemLine("info", "+CPIN: READY"),
    ModemLine("ok", "OK"),
    ModemLine("info", "+CSQ: 18,99"),
    ModemLine("ok", "OK"),
    ModemLine("prompt", ">"),
    ModemLine("info", "+CMGS: 12"),
    ModemLine("ok", "OK"),
]


def test_codec_whole_byte_by_byte_and_with_garbage() -> None:
    assert ModemCodec().feed(MODEM_BYTES) == EXPECTED
    codec = ModemCodec()
    assert [line for b in MODEM_BYTES for line in codec.feed(bytes([b]))] == EXPECTED
    codec = ModemCodec()
    lines = codec.feed(b"\xff\xfe\x80garbage\r\n" + MODEM_BYTES)
    assert lines == EXPECTED
    assert codec.stats.frames_rejected == 1


def test_error_lines_carry_their_codes() -> None:
    lines = ModemCodec().feed(b"\r\n+CMS ERROR: 331\r\n\r\n+CME ERROR: 10\r\n\r\nERROR\r\n\r\n+CMS ERROR: SIM busy\r\n")
    assert [(line.kind, line.code) for line in lines] == [
        ("cms_error", 331),
        ("cme_error", 10),
        ("error", None),
        ("cms_error", None),
    ]
    assert all(line.final for line in lines)


@given(st.lists(st.binary(max_size=300), max_size=20))
@settings(max_examples=300)
def test_codec_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    codec = ModemCodec()
    for chunk in chunks:
        codec.feed(chunk)
    assert len(codec._buffer) <= 1024 + 300


def test_information_lines() -> None:
    assert parse_csq("+CSQ: 18,99") == (-77, None)
    assert parse_csq("+CSQ: 0,3") == (-113, 3)
    assert parse_csq("+CSQ: 31,0") == (-51, 0)
    assert parse_csq("+CSQ: 99,99") == (None, None)
    assert parse_registration("+CREG: 0,1") == 1
    assert parse_registration('+CEREG: 2,5,"1A2B","01A2B3C4",7') == 5
    assert parse_registration("+CSQ: 1,1") is None
    assert parse_cmgs("+CMGS: 12") == 12
