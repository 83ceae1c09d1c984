"""NMEA 0183 codec: the classic RMC/GGA examples, garbage, fuzzing and the simulator's encoder."""

from __future__ import annotations

import functools
import itertools
import operator

from hypothesis import given
from hypothesis import strategies as st

from drivers import Decoded
from drivers.nmea import MAX_LINE_BYTES, GpsFix, NmeaCodec
from simulators.gps import gga, rmc

RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
GSV = b"$GPGSV,2,1,08,01,40,083,46,02,17,308,41,12,07,344,39,14,22,228,45*75\r\n"
RMC_FIX = GpsFix("RMC", True, 48.1173, 11.5166667, speed_kmh=41.5)
GGA_FIX = GpsFix("GGA", True, 48.1173, 11.5166667, satellites=8, altitude_m=545.4)


def test_classic_examples_whole_byte_by_byte_and_with_garbage() -> None:
    stream = RMC + GSV + GGA
    expected = [
        Decoded(RMC_FIX, b"", raw=RMC.strip()),
        Decoded(None, b"", raw=GSV.strip()),
        Decoded(GGA_FIX, b"", raw=GGA.strip()),
    ]
    assert NmeaCodec().feed(stream) == expected
    codec = NmeaCodec()
    assert [u for i in range(len(stream)) for u in codec.feed(stream[i : i + 1])] == expected
    codec = NmeaCodec()
    units = codec.feed(b"\xff\xfe junk\r\n" + RMC + b"$GPRMC,broken*00\r\n" + GGA + b"\x00\x01")
    assert [u.reading for u in units if u.reading] == [RMC_FIX, GGA_FIX]
    assert [u.error for u in units if u.error] == ["not an NMEA sentence", "bad checksum"]


def test_no_fix_and_southern_western_hemispheres() -> None:
    units = NmeaCodec().feed(rmc(0, 0, valid=False) + gga(0, 0, valid=False) + gga(-33.5, -70.25))
    assert [u.reading for u in units] == [
        GpsFix("RMC", False, None, None),
        GpsFix("GGA", False, None, None, satellites=0),
        GpsFix("GGA", True, -33.5, -70.25, satellites=9, altitude_m=1005.0),
    ]


@given(lat=st.floats(-89.9, 89.9), lon=st.floats(-179.9, 179.9), knots=st.floats(0, 300))
def test_round_trip_through_the_simulator(lat: float, lon: float, knots: float) -> None:
    units = NmeaCodec().feed(rmc(lat, lon, knots=knots) + gga(lat, lon))
    fixes = [u.reading for u in units]
    assert all(isinstance(f, GpsFix) and f.valid for f in fixes)
    for fix in fixes:
        assert isinstance(fix, GpsFix)
        assert abs((fix.lat or 0) - lat) < 1e-5
        assert abs((fix.lon or 0) - lon) < 1e-5


@given(st.lists(st.binary(max_size=200), max_size=30))
def test_fuzz_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    codec = NmeaCodec()
    for chunk in chunks:
        codec.feed(chunk)
        assert len(codec._buffer) <= MAX_LINE_BYTES + 1
    assert [u.reading for u in codec.feed(b"\n" + GGA)][-1] == GGA_FIX


def sentence(body: str) -> bytes:
    """A sentence with its checksum (computed here, independently of the codec)."""
    checksum = functools.reduce(operator.xor, body.encode(), 0)
    return f"${body}*{checksum:02X}\r\n".encode()


# a u-blox F9P in high-precision mode (7 decimals of minutes, RTK fixed): 93 characters
F9P_GGA = sentence("GNGGA,123519.00,4807.0380123,N,01131.0001234,E,4,32,0.50,545.4123,M,46.9456,M,1.2,0123")
F9P_FIX = GpsFix("GGA", True, 48.1173002, 11.5166687, satellites=32, altitude_m=545.4123)
# exactly 82 characters, <CR><LF> included: the longest sentence NMEA 0183 allows
LONGEST_0183 = sentence("GPGGA,123519.000,4807.038000,N,01131.000000,E,1,08,0.9,545.4,M,46.9,M,0,0000")


def test_a_high_precision_sentence_longer_than_82_characters_is_a_fix() -> None:
    assert len(F9P_GGA) > 82
    assert [u.reading for u in NmeaCodec().feed(F9P_GGA)] == [F9P_FIX]


def test_the_longest_sentence_is_read_the_same_whichever_way_its_line_end_arrives() -> None:
    assert len(LONGEST_0183) == 82
    whole = NmeaCodec().feed(LONGEST_0183)
    codec = NmeaCodec()
    split = codec.feed(LONGEST_0183[:-1]) + codec.feed(LONGEST_0183[-1:])  # <CR> in one read, <LF> in the next
    assert whole == split
    assert [u.error for u in whole] == [None]


def test_a_line_over_the_limit_is_rejected_once_and_the_next_sentence_is_read() -> None:
    overlong = b"$GPGGA," + b"9" * (MAX_LINE_BYTES + 50) + b"*00\r\n"
    for pieces in ([overlong + GGA], [overlong[:100], overlong[100:200], overlong[200:] + GGA]):
        codec = NmeaCodec()
        units = [u for piece in pieces for u in codec.feed(piece)]
        assert [u.error for u in units] == [f"line too long (more than {MAX_LINE_BYTES} characters)", None]
        assert units[-1].reading == GGA_FIX


def test_rmc_mode_and_gga_quality_that_are_not_a_fix() -> None:
    rmc_n = sentence("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W,N")  # mode N: not valid
    rmc_a = sentence("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W,A")
    rmc_s = sentence("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W,S")  # simulator
    units = NmeaCodec().feed(rmc_n + rmc_a + rmc_s)
    assert [u.reading.valid for u in units if isinstance(u.reading, GpsFix)] == [False, True, False]
    for quality, fix in ((4, True), (5, True), (6, True), (7, False), (8, False), (9, False)):
        gga = sentence(f"GPGGA,123519,4807.038,N,01131.000,E,{quality},08,0.9,545.4,M,46.9,M,,")
        [unit] = NmeaCodec().feed(gga)
        assert isinstance(unit.reading, GpsFix)
        assert unit.reading.valid is fix, quality


STREAM_PARTS = [RMC, GGA, GSV, F9P_GGA, LONGEST_0183, b"\xff\xfejunk\r\n", b"$GPRMC,broken*00\r\n", b"\r\n",
                b"$GPGGA," + b"7" * 300 + b"*00\r\n", b"\n", b"x" * 400, b"\r"]  # fmt: skip


@given(
    st.lists(st.sampled_from(STREAM_PARTS), max_size=25),
    st.lists(st.integers(min_value=0, max_value=20_000), max_size=40),
)
def test_the_verdict_never_depends_on_how_the_stream_was_cut(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    whole_codec = NmeaCodec()
    whole = whole_codec.feed(stream)
    at = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    cut_codec = NmeaCodec()
    pieces = [u for a, b in itertools.pairwise(at) for u in cut_codec.feed(stream[a:b])]
    assert [(u.reading, u.error) for u in pieces] == [(u.reading, u.error) for u in whole]
    assert (cut_codec.stats.frames_ok, cut_codec.stats.frames_rejected) == (
        whole_codec.stats.frames_ok,
        whole_codec.stats.frames_rejected,
    )
