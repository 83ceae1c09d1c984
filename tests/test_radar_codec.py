"""Seeed radar codecs against shared/protocols.md §2.1-2.2 and the simulator's encoders."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers import Decoded
from drivers.seeed_radar import (
    FDA2_GET_PARAMETERS,
    SY_HEARTBEAT_QUERY,
    RadarDwell,
    RadarFall,
    RadarHeartbeat,
    RadarInfo,
    RadarMotion,
    RadarMovement,
    RadarPresence,
    SeeedFda2Codec,
    SeeedRadarCodec,
)
from simulators import radar as sim

H = bytes.fromhex
# protocols.md §2.1, MR60FDA1 table (recomputed example frames) and the wiki erratum
SY_VECTORS = [
    (H("53 59 01 01 00 01 0F BE 54 43"), RadarHeartbeat()),
    (H("53 59 80 01 00 01 01 2F 54 43"), RadarPresence(True)),
    (H("53 59 80 01 00 01 00 2E 54 43"), RadarPresence(False)),
    (H("53 59 80 02 00 01 02 31 54 43"), RadarMotion("moving")),
    (H("53 59 80 03 00 01 1E 4E 54 43"), RadarMovement(30)),
    (H("53 59 83 01 00 01 01 32 54 43"), RadarFall(True)),
    (H("53 59 83 01 00 01 00 31 54 43"), RadarFall(False)),
    (H("53 59 83 05 00 01 01 36 54 43"), RadarDwell(True)),
    (H("53 59 02 A1 00 01 0F 5F 54 43"), RadarInfo("model", "\x0f")),
]
# protocols.md §2.2 (recomputed, frame id 0)
FDA2_FALL = H("01 00 00 00 01 0E 02 F3 01 FE")


def decoded(frame: bytes, reading: object) -> Decoded:
    return Decoded(reading, b"", raw=frame)


def readings(units: list[Decoded]) -> list[object]:
    return [u.reading for u in units if u.reading is not None]


def test_spec_frames_whole_and_byte_by_byte() -> None:
    stream = b"".join(frame for frame, _ in SY_VECTORS)
    expected = [decoded(frame, reading) for frame, reading in SY_VECTORS]
    assert SeeedRadarCodec().feed(stream) == expected
    codec = SeeedRadarCodec()
    assert [u for i in range(len(stream)) for u in codec.feed(stream[i : i + 1])] == expected
    assert (codec.stats.frames_ok, codec.stats.frames_rejected, codec.stats.bytes_rejected) == (len(SY_VECTORS), 0, 0)


def test_garbage_around_frames_is_skipped_and_counted() -> None:
    codec = SeeedRadarCodec()
    fall = SY_VECTORS[5][0]
    units = codec.feed(b"\x00\xff\x53garbage" + fall + b"\x53\x59\x83\x01\x00\x01\x01\x00\x54\x43" + fall + b"\x11")
    assert readings(units) == [RadarFall(True), RadarFall(True)]
    assert [u.error for u in units if u.error] == ["bad checksum"]
    assert codec.stats.frames_rejected == 1
    assert codec.stats.bytes_rejected >= 11


def test_mr24hpc1_query_answers_and_unknown_frames() -> None:
    codec = SeeedRadarCodec()
    answer = sim.sy(0x80, 0x81, b"\x01")  # query answers set bit 7 of the command
    unknown = sim.sy(0x05, 0x07, b"\x02")
    assert codec.feed(answer + unknown) == [decoded(answer, RadarPresence(True)), decoded(unknown, None)]


def test_oversized_length_is_rejected_without_waiting_for_it() -> None:
    codec = SeeedRadarCodec()
    units = codec.feed(H("53 59 80 01 FF FF") + SY_VECTORS[1][0])
    assert readings(units) == [RadarPresence(True)]
    assert units[0].error == "length 65535 > 64"


def test_queries_match_the_spec_and_the_simulator() -> None:
    assert SY_HEARTBEAT_QUERY == H("53 59 01 01 00 01 0F BE 54 43") == sim.SY_HEARTBEAT_QUERY
    assert FDA2_GET_PARAMETERS == H("01 00 00 00 00 0E 06 F6") == sim.FDA2_PARAMETER_QUERY


def test_simulator_encoder_matches_the_spec_frames() -> None:
    assert [
        sim.sy_heartbeat(),
        sim.sy_presence(True),
        sim.sy_presence(False),
        sim.sy_motion(2),
        sim.sy_movement(30),
        sim.sy_fall(True),
        sim.sy_fall(False),
        sim.sy_dwell(True),
    ] == [frame for frame, _ in SY_VECTORS[:8]]
    assert sim.fda2_fall(True) == FDA2_FALL


def test_fda2_spec_frames_and_garbage() -> None:
    presence = sim.fda2_presence(True)
    params = sim.fda2_parameters()
    stream = b"\x00\xee" + FDA2_FALL + presence + params + b"\x01\x02"
    codec = SeeedFda2Codec()
    units = [u for i in range(len(stream)) for u in codec.feed(stream[i : i + 1])]
    assert units == [
        decoded(FDA2_FALL, RadarFall(True)),
        decoded(presence, RadarPresence(True)),
        decoded(params, RadarHeartbeat()),
    ]
    bad = bytearray(FDA2_FALL)
    bad[-1] ^= 0xFF
    codec = SeeedFda2Codec()
    units = codec.feed(bytes(bad) + FDA2_FALL)
    assert readings(units) == [RadarFall(True)]
    assert codec.stats.frames_rejected >= 1


@given(ctrl=st.integers(0, 255), cmd=st.integers(0, 255), data=st.binary(max_size=64))
def test_round_trip_of_any_53_59_frame(ctrl: int, cmd: int, data: bytes) -> None:
    frame = sim.sy(ctrl, cmd, data)
    [unit] = SeeedRadarCodec().feed(frame)
    assert (unit.error, unit.raw) == (None, frame)


@given(frame_type=st.integers(0, 0xFFFF), data=st.binary(max_size=64), frame_id=st.integers(0, 0xFFFF))
def test_round_trip_of_any_fda2_frame(frame_type: int, data: bytes, frame_id: int) -> None:
    frame = sim.fda2(frame_type, data, frame_id)
    units = SeeedFda2Codec().feed(frame)
    assert [(u.error, u.raw) for u in units if u.error is None] == [(None, frame)]


@given(st.lists(st.binary(max_size=300), max_size=30))
def test_fuzz_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    for codec in (SeeedRadarCodec(), SeeedFda2Codec()):
        for chunk in chunks:
            codec.feed(chunk)
            assert len(codec._buffer) <= 64 + 9
        # after any garbage, a good frame still decodes once the stream resynchronises
        tail = SY_VECTORS[5][0] * 3 if isinstance(codec, SeeedRadarCodec) else FDA2_FALL * 3
        assert RadarFall(True) in readings(codec.feed(tail))


def test_fda2_takes_any_non_zero_byte_for_yes_as_seeeds_library_does() -> None:
    from drivers.seeed_radar import fda2_frame

    stream = fda2_frame(0x0E02, b"\x02") + fda2_frame(0x0F09, b"\xff") + fda2_frame(0x0E02, b"\x00")
    expected = [RadarFall(True), RadarPresence(True), RadarFall(False)]
    assert [u.reading for u in SeeedFda2Codec().feed(stream)] == expected  # whole
    codec = SeeedFda2Codec()
    assert [u.reading for i in range(len(stream)) for u in codec.feed(stream[i : i + 1])] == expected  # byte by byte
    noisy = SeeedFda2Codec().feed(b"\xee\x00" + stream + b"\x01\x02")  # with garbage around it
    assert [u.reading for u in noisy if u.reading is not None] == expected
