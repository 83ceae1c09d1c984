"""Seeed mmWave radars on a UART (shared/protocols.md §2.1–2.2), 115200 8N1.

"53 59" frames (MR60FDA1 60 GHz fall, MR24HPC1 24 GHz presence):

    53 59 | ctrl | cmd | len (2, big-endian) | data (len) | sum | 54 43
    sum = low byte of the sum of every byte before it (header included)

MR60FDA2 frames (the newer fall kit, TinyFrame-style, no "53 59"):

    01 | id (2, BE) | len (2, BE) | type (2, BE) | ~XOR(bytes 0..6) | data (len) | ~XOR(data)
    (the data checksum is absent when len = 0)

Both decoders yield the same typed readings, so one set of care rules serves every model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from drivers import BufferedCodec, Decoded

__all__ = [
    "FDA2_GET_PARAMETERS",
    "SY_HEARTBEAT_QUERY",
    "RadarDwell",
    "RadarFall",
    "RadarHeartbeat",
    "RadarInfo",
    "RadarMotion",
    "RadarMovement",
    "RadarPresence",
    "SeeedFda2Codec",
    "SeeedRadarCodec",
    "fda2_checksum",
    "fda2_frame",
    "sy_frame",
]

# --- readings ------------------------------------------------------------------------------

Motion = Literal["none", "stationary", "moving"]


@dataclass(frozen=True)
class RadarPresence:
    present: bool


@dataclass(frozen=True)
class RadarMotion:
    motion: Motion


@dataclass(frozen=True)
class RadarMovement:
    value: int  # body-movement parameter 0-100, about once a second


@dataclass(frozen=True)
class RadarFall:
    fallen: bool


@dataclass(frozen=True)
class RadarDwell:
    """Stationary residence after movement: the person has stayed still (after a fall: not moving)."""

    still: bool


@dataclass(frozen=True)
class RadarHeartbeat:
    """The radar answered a heartbeat or parameter query: it is alive."""


@dataclass(frozen=True)
class RadarInfo:
    field: str
    text: str


RadarReading = RadarPresence | RadarMotion | RadarMovement | RadarFall | RadarDwell | RadarHeartbeat | RadarInfo

# --- "53 59" ---------------------------------------------------------------------------------

SY_HEADER = b"\x53\x59"
SY_TAIL = b"\x54\x43"
SY_MAX_DATA = 64  # ESPHome rejects frames longer than 32 bytes; the longest reply (firmware) is ~15
SY_OVERHEAD = 9  # header 2 + ctrl + cmd + len 2 + sum + tail 2
MOTION_STATES: dict[int, Motion] = {0: "none", 1: "stationary", 2: "moving"}
_PRODUCT_FIELDS = {0xA1: "model", 0xA2: "product_id", 0xA3: "hardware", 0xA4: "firmware"}


def _flag(data: bytes) -> bool:
    return data[:1] == b"\x01"


def _motion(data: bytes) -> RadarReading | None:
    return RadarMotion(MOTION_STATES[data[0]]) if data and data[0] in MOTION_STATES else None


def _info(name: str, data: bytes) -> RadarReading:
    return RadarInfo(name, data.decode("ascii", "replace").strip("\x00"))


# (ctrl, cmd) -> reading; MR24HPC1 answers queries with bit 7 of cmd set (0x81 for 0x01 ...)
# Sources: Seeed wiki "Default Variables" (MR60FDA1), ESPHome seeed_mr24hpc1_constants.h.
SY_TABLE: dict[tuple[int, int], Callable[[bytes], RadarReading | None]] = {
    (0x01, 0x01): lambda data: RadarHeartbeat(),
    (0x80, 0x01): lambda data: RadarPresence(_flag(data)),
    (0x80, 0x02): _motion,
    (0x80, 0x03): lambda data: RadarMovement(min(data[0], 100)) if data else None,
    (0x83, 0x01): lambda data: RadarFall(_flag(data)),
    (0x83, 0x05): lambda data: RadarDwell(_flag(data)),
    **{(0x02, cmd): functools.partial(_info, name) for cmd, name in _PRODUCT_FIELDS.items()},
}


def sy_frame(ctrl: int, cmd: int, data: bytes) -> bytes:
    """Encode a "53 59" frame (the gateway's queries)."""
    body = SY_HEADER + bytes([ctrl, cmd]) + len(data).to_bytes(2, "big") + data
    return body + bytes([sum(body) & 0xFF]) + SY_TAIL


SY_HEARTBEAT_QUERY = sy_frame(0x01, 0x01, b"\x0f")  # 53 59 01 01 00 01 0F BE 54 43


class SeeedRadarCodec(BufferedCodec):
    """Sans-I/O decoder of "53 59" frames: resynchronises on the header, bounds the length,
    checks tail and checksum; unknown but well-formed frames are accepted and ignored."""

    heartbeat_query = SY_HEARTBEAT_QUERY

    def feed(self, data: bytes) -> list[Decoded]:
        self._buffer += data
        out: list[Decoded] = []
        while True:
            start = self._buffer.find(SY_HEADER)
            if start < 0:  # keep a trailing 0x53: it may be half a header
                keep = 1 if self._buffer.endswith(SY_HEADER[:1]) else 0
                self._drop(len(self._buffer) - keep)
                return out
            self._drop(start)
            if len(self._buffer) < 6:
                return out
            length = int.from_bytes(self._buffer[4:6], "big")
            if length > SY_MAX_DATA:
                self._reject_header(out, f"length {length} > {SY_MAX_DATA}")
                continue
            size = length + SY_OVERHEAD
            if len(self._buffer) < size:
                return out
            frame = bytes(self._buffer[:size])
            if frame[-2:] != SY_TAIL:
                self._reject_header(out, "no 54 43 tail")
                continue
            if sum(frame[: 6 + length]) & 0xFF != frame[6 + length]:
                self._reject_header(out, "bad checksum")
                continue
            del self._buffer[:size]
            self.stats.frames_ok += 1
            handler = SY_TABLE.get((frame[2], frame[3] & 0x7F if frame[2] == 0x80 else frame[3]))
            out.append(Decoded(handler(frame[6 : 6 + length]) if handler else None, b"", raw=frame))

    def _reject_header(self, out: list[Decoded], why: str) -> None:
        """A false or damaged header: skip its first byte and look for the next one."""
        self.stats.frames_rejected += 1
        out.append(Decoded(None, b"", error=why, raw=bytes(self._buffer[: SY_OVERHEAD + 8])))
        self._drop(1)


# --- MR60FDA2 ------------------------------------------------------------------------------

FDA2_SOF = 0x01
FDA2_HEADER = 8
FDA2_MAX_DATA = 64  # the longest frame (0E06 parameter dump) carries 12 bytes
FDA2_TYPES: dict[int, Callable[[bytes], RadarReading | None]] = {  # ESPHome seeed_mr60fda2.cpp
    0x0E02: lambda data: RadarFall(data[0] != 0) if data else None,  # any non-zero byte is "yes",
    0x0F09: lambda data: RadarPresence(data[0] != 0) if data else None,  # as Seeed's library reads it
    0x0E06: lambda data: RadarHeartbeat(),  # parameter dump: the answer to our periodic query
}


def fda2_checksum(data: bytes) -> int:
    x = 0
    for byte in data:
        x ^= byte
    return ~x & 0xFF


def fda2_frame(frame_type: int, data: bytes, frame_id: int = 0) -> bytes:
    header = (
        bytes([FDA2_SOF]) + frame_id.to_bytes(2, "big") + len(data).to_bytes(2, "big") + frame_type.to_bytes(2, "big")
    )
    return header + bytes([fda2_checksum(header)]) + (data + bytes([fda2_checksum(data)]) if data else b"")


FDA2_GET_PARAMETERS = fda2_frame(0x0E06, b"")  # 01 00 00 00 00 0E 06 F6


class SeeedFda2Codec(BufferedCodec):
    """Sans-I/O decoder of MR60FDA2 frames: resynchronises on SOF, checks both checksums."""

    heartbeat_query = FDA2_GET_PARAMETERS

    def feed(self, data: bytes) -> list[Decoded]:
        self._buffer += data
        out: list[Decoded] = []
        while True:
            start = self._buffer.find(FDA2_SOF)
            if start < 0:
                self._drop(len(self._buffer))
                return out
            self._drop(start)
            if len(self._buffer) < FDA2_HEADER:
                return out
            header = bytes(self._buffer[:FDA2_HEADER])
            length = int.from_bytes(header[3:5], "big")
            if fda2_checksum(header[:7]) != header[7] or length > FDA2_MAX_DATA:
                self._reject_sof(out, "bad header checksum" if length <= FDA2_MAX_DATA else f"length {length}")
                continue
            size = FDA2_HEADER + (length + 1 if length else 0)
            if len(self._buffer) < size:
                return out
            frame = bytes(self._buffer[:size])
            payload = frame[FDA2_HEADER : FDA2_HEADER + length]
            if length and fda2_checksum(payload) != frame[-1]:
                self._reject_sof(out, "bad data checksum")
                continue
            del self._buffer[:size]
            self.stats.frames_ok += 1
            handler = FDA2_TYPES.get(int.from_bytes(header[5:7], "big"))
            out.append(Decoded(handler(payload) if handler else None, b"", raw=frame))

    def _reject_sof(self, out: list[Decoded], why: str) -> None:
        self.stats.frames_rejected += 1
        out.append(Decoded(None, b"", error=why, raw=bytes(self._buffer[:FDA2_HEADER])))
        self._drop(1)
