"""NMEA 0183 codec: the classic RMC/GGA examples, garbage, fuzzing and the simulator's encoder."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers import Decoded
from drivers.nmea import MAX_SENTENCE_BYTES, GpsFix, NmeaCodec
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
        assert len(codec._buffer) <= MAX_SENTENCE_BYTES
    assert [u.reading for u in codec.feed(b"\n" + GGA)][-1] == GGA_FIX
