"""The Sur-Gard Contact ID codec against shared/protocols.md §1.3 and the simulator's encoder."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers import Decoded
from drivers.contact_id import ACK, MAX_LINE_BYTES, NAK, ContactIdReport, SurGardCodec
from gateway.events import EventKind
from simulators.button_receiver import HEARTBEAT, surgard_report

# The datasheet example: account 1234, duress 121, group 01, zone 001, receiver 01, line 1.
SPEC_REPORT = b"5011 181234E12101001\x14"
SPEC_HEARTBEAT = b"1011           @    \x14"
DURESS = ContactIdReport(receiver=1, line=1, account="1234", qualifier="new", code=121, group=1, zone=1)
EXPECTED = [
    Decoded(DURESS, ACK, raw=SPEC_REPORT[:-1]),
    Decoded(None, ACK, raw=SPEC_HEARTBEAT[:-1]),
]


def feed_all(codec: SurGardCodec, chunks: list[bytes]) -> list[Decoded]:
    return [unit for chunk in chunks for unit in codec.feed(chunk)]


def test_spec_frames_fed_whole() -> None:
    codec = SurGardCodec()
    assert codec.feed(SPEC_REPORT + SPEC_HEARTBEAT) == EXPECTED
    assert (codec.stats.frames_ok, codec.stats.frames_rejected, codec.stats.bytes_rejected) == (2, 0, 0)


def test_spec_frames_fed_byte_by_byte() -> None:
    stream = SPEC_REPORT + SPEC_HEARTBEAT
    assert feed_all(SurGardCodec(), [stream[i : i + 1] for i in range(len(stream))]) == EXPECTED


def test_trailing_garbage_is_rejected_without_losing_the_frames() -> None:
    codec = SurGardCodec()
    units = codec.feed(SPEC_REPORT + SPEC_HEARTBEAT + b"\xff\x00garbage")
    assert units == EXPECTED  # the unterminated tail waits for its terminator
    units = codec.feed(b"\x14")
    assert units == [Decoded(None, NAK, error="not a Sur-Gard Contact ID report or heartbeat", raw=b"\xff\x00garbage")]
    assert codec.stats.frames_rejected == 1


def test_garbage_before_a_frame_is_counted_and_skipped() -> None:
    codec = SurGardCodec()
    assert codec.feed(b"\x17\x99zz" + SPEC_REPORT) == [Decoded(DURESS, ACK, raw=b"\x17\x99zz" + SPEC_REPORT[:-1])]
    assert codec.stats.bytes_rejected == 4


def test_unterminated_babble_is_dropped_and_the_buffer_stays_bounded() -> None:
    codec = SurGardCodec()
    units = codec.feed(b"A" * 1000)
    assert [u.error for u in units] == ["1000 bytes without a terminator"]
    assert units[0].reply == b""  # silence: the receiver resends on its own
    assert codec.feed(SPEC_REPORT) == [EXPECTED[0]]


def test_three_digit_line_and_newer_heartbeat() -> None:
    codec = SurGardCodec()
    units = codec.feed(b"501003 18BCDER10101015\x14" + b"101000           @    \x14")
    assert units == [
        Decoded(
            ContactIdReport(receiver=1, line=3, account="BCDE", qualifier="restore", code=101, group=1, zone=15),
            ACK,
            raw=b"501003 18BCDER10101015",
        ),
        Decoded(None, ACK, raw=b"101000           @    "),
    ]


def test_simulator_encoder_matches_the_datasheet_bytes() -> None:
    assert surgard_report(account="1234", qualifier="E", code=121, group=1, zone=1) == SPEC_REPORT
    assert HEARTBEAT == SPEC_HEARTBEAT


@given(
    qualifier=st.sampled_from(["E", "R", "P"]),
    code=st.integers(0, 999),
    group=st.integers(0, 99),
    zone=st.integers(0, 999),
    account=st.text("0123456789BCDEF", min_size=4, max_size=4),
)
def test_round_trip_through_the_simulator_encoder(
    qualifier: str, code: int, group: int, zone: int, account: str
) -> None:
    frame = surgard_report(account=account, qualifier=qualifier, code=code, group=group, zone=zone)
    [unit] = SurGardCodec().feed(frame)
    names = {"E": "new", "R": "restore", "P": "still_present"}
    assert (
        unit
        == Decoded(
            ContactIdReport(
                receiver=1,
                line=1,
                account=account,
                qualifier=names[qualifier],  # type: ignore[arg-type]
                code=code,
                group=group,
                zone=zone,
            ),
            ACK,
            raw=frame[:-1],
        )
    )


@given(st.lists(st.binary(max_size=200), max_size=30))
def test_fuzz_feed_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    codec = SurGardCodec()
    for chunk in chunks:
        for unit in codec.feed(chunk):
            assert unit.reply in (ACK, NAK, b"")
            assert (unit.reading is None) or (unit.error is None)
        assert len(codec._buffer) <= MAX_LINE_BYTES
    # after any garbage, a terminator resynchronises and a good frame decodes
    codec.feed(b"\x14")
    assert codec.feed(SPEC_REPORT) == [EXPECTED[0]]


@given(st.binary(max_size=100).filter(lambda b: 0x14 not in b))
def test_fuzz_garbage_between_frames_never_hides_the_next_frame(garbage: bytes) -> None:
    codec = SurGardCodec()
    units = codec.feed(SPEC_REPORT + garbage + b"\x14" + SPEC_REPORT)
    readings = [u.reading for u in units if u.reading is not None]
    assert readings[0] == DURESS
    assert readings[-1] == DURESS


def test_code_table_maps_alarms_troubles_and_tests() -> None:
    def kind(code: int) -> EventKind:
        return ContactIdReport(1, 1, "1234", "new", code, 1, 1).kind

    assert {c: kind(c) for c in (100, 101, 120, 121, 150, 199, 384, 399, 602, 609, 406, 570)} == {
        100: EventKind.MEDICAL,
        101: EventKind.SOS,
        120: EventKind.PANIC,
        121: EventKind.DURESS,
        150: EventKind.TROUBLE,
        199: EventKind.TROUBLE,
        384: EventKind.TROUBLE,
        399: EventKind.TROUBLE,
        602: EventKind.TEST,
        609: EventKind.TEST,
        406: EventKind.PANEL_EVENT,
        570: EventKind.PANEL_EVENT,
    }


def test_event_data_names_zone_or_user() -> None:
    duress = ContactIdReport(1, 1, "1234", "new", 121, 1, 7).event_data()
    sos = ContactIdReport(1, 1, "1234", "still_present", 101, 1, 7).event_data()
    assert duress == {
        "protocol": "contact_id",
        "code": 121,
        "code_name": "Duress",
        "qualifier": "new",
        "account": "1234",
        "group": 1,
        "user": 7,
        "receiver": 1,
        "line": 1,
    }
    assert sos == {
        "protocol": "contact_id",
        "code": 101,
        "code_name": "Personal emergency",
        "qualifier": "still_present",
        "account": "1234",
        "group": 1,
        "zone": 7,
        "receiver": 1,
        "line": 1,
    }


def test_ademco_685_reports_heartbeats_and_garbage() -> None:
    from drivers.contact_id import Ademco685Codec
    from simulators.button_receiver import ademco685_report

    frame = ademco685_report(account="1234", qualifier="E", code=101, group=1, zone=15)
    assert frame == b"\n11 1234 18 E101 01 C015\r"  # <LF>RLsAAAAs18sQXYZsGGsUCCC<CR>
    stream = frame + SPEC_HEARTBEAT + b"\nnonsense\r" + ademco685_report(qualifier="R", code=121, zone=3, user=True)
    sos = ContactIdReport(receiver=1, line=1, account="1234", qualifier="new", code=101, group=1, zone=15)
    duress = ContactIdReport(receiver=1, line=1, account="1234", qualifier="restore", code=121, group=1, zone=3)
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        codec = Ademco685Codec()
        units = [u for c in chunks for u in codec.feed(c)]
        assert [(u.reading, u.reply) for u in units] == [(sos, ACK), (None, ACK), (None, NAK), (duress, ACK)]


@given(st.lists(st.binary(max_size=200), max_size=30))
def test_fuzz_ademco_685_never_raises(chunks: list[bytes]) -> None:
    from drivers.contact_id import Ademco685Codec

    codec = Ademco685Codec()
    for chunk in chunks:
        codec.feed(chunk)
        assert len(codec._buffer) <= MAX_LINE_BYTES


# SpanDSP's ademco_codes[] (src/ademco_contactid.c), transcribed: the codes whose CCC names a
# user; every other code of its table names a zone
SPANDSP_USER = {
    *(121, 313, 421, 422, 424, 425, 429, 430, 431, 441, 442, 462, 463, 464, 466, 573, 604, 607, 625, 642, 652),
    *(653, 900, 901, 902, 910, 911, 999, *range(400, 410), *range(411, 416), *range(450, 460)),
}
SPANDSP_ZONE = {
    *(100, 101, 102, 120, 122, 123, 124, 125, 161, 162, 163, 391, 392, 393, 416, 423, 426, 427, 428, 432, 433),
    *(434, 461, 465, 501, 531, 532, 551, 552, 553, 570, 571, 572, 601, 602, 603, 605, 606, 608, 609, 641, 651),
    *(654, *range(110, 119), *range(130, 148), *range(150, 160), *range(200, 207), *range(300, 313)),
    *(*range(320, 328), *range(330, 340), *range(341, 345), *range(350, 358), *range(370, 379), *range(380, 390)),
    *(*range(520, 528), *range(574, 578), *range(611, 617), *range(621, 625), *range(626, 633)),
}


def test_user_or_zone_follows_spandsps_table_for_every_code_it_lists() -> None:
    from drivers.contact_id import names_a_user

    assert not SPANDSP_USER & SPANDSP_ZONE
    assert sorted(c for c in SPANDSP_USER if not names_a_user(c)) == []
    assert sorted(c for c in SPANDSP_ZONE if names_a_user(c)) == []
