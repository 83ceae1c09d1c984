"""GPS receivers: NMEA 0183 sentences (RMC and GGA, any talker: GP, GN, GL, GA, BD ...).

    $GNRMC,hhmmss.ss,A,ddmm.mmmm,N,dddmm.mmmm,E,knots,course,ddmmyy,,,A*hh<CR><LF>
    $GNGGA,hhmmss.ss,ddmm.mmmm,N,dddmm.mmmm,E,quality,sats,hdop,alt,M,geoid,M,,*hh<CR><LF>

The checksum is the XOR of every character between "$" and "*", as two hex digits. A fix is
valid when RMC's status is "A" and its mode indicator (NMEA 2.3+, field 12) is not "N" (not
valid), "M" (manual input) or "S" (simulator), or when GGA's quality is 1-6 (GPS, DGPS, PPS,
RTK fixed, RTK float, dead reckoning); GGA quality 0 (none), 7 (manual) and 8 (simulator) are no
fix. Other sentence types are ignored.

NMEA 0183 §5.3 caps a sentence at 82 characters, but high-precision receivers (u-blox F9P,
Trimble, Unicore) send longer GGA/RMC sentences and gpsd reads them: a line is accepted up to
MAX_LINE_BYTES. The verdict on a stream never depends on how its bytes were cut into reads: a
line over the limit is rejected once, whole, and the rest of it up to its newline is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers import BufferedCodec, Decoded

__all__ = [
    "MAX_LINE_BYTES",
    "GpsFix",
    "NmeaCodec",
    "nmea_checksum",
]

MAX_LINE_BYTES = 256  # a line between newlines, without its <CR><LF>: longer ones are rejected
_SENTENCE = re.compile(rb"\$(?P<body>(?P<talker>[A-Z]{2})(?P<type>[A-Z]{3}),[ -~]*?)\*(?P<sum>[0-9A-Fa-f]{2})$")


@dataclass(frozen=True)
class GpsFix:
    """A position report. `valid` False means the receiver has no fix (lat/lon then None)."""

    sentence: str  # "RMC" or "GGA"
    valid: bool
    lat: float | None
    lon: float | None
    satellites: int | None = None
    altitude_m: float | None = None
    speed_kmh: float | None = None


def _degrees(value: str, hemisphere: str, degree_digits: int) -> float | None:
    """ddmm.mmmm (or dddmm.mmmm) plus N/S/E/W -> signed decimal degrees."""
    if len(value) < degree_digits + 2 or hemisphere not in ("N", "S", "E", "W"):
        return None
    try:
        degrees = int(value[:degree_digits]) + float(value[degree_digits:]) / 60
    except ValueError:
        return None
    limit = 90 if degree_digits == 2 else 180
    if degrees > limit:
        return None
    return round(-degrees if hemisphere in ("S", "W") else degrees, 7)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _rmc(fields: list[str]) -> GpsFix | None:
    if len(fields) < 9:
        return None
    lat, lon = _degrees(fields[2], fields[3], 2), _degrees(fields[4], fields[5], 3)
    mode = fields[11] if len(fields) > 11 else ""  # absent before NMEA 2.3
    valid = fields[1] == "A" and mode not in RMC_NO_FIX_MODES and lat is not None and lon is not None
    knots = _number(fields[6])
    return GpsFix(
        "RMC",
        valid,
        lat if valid else None,
        lon if valid else None,
        speed_kmh=round(knots * 1.852, 1) if valid and knots is not None else None,
    )


def _gga(fields: list[str]) -> GpsFix | None:
    if len(fields) < 9:
        return None
    lat, lon = _degrees(fields[1], fields[2], 2), _degrees(fields[3], fields[4], 3)
    quality = int(fields[5]) if fields[5].isdigit() else 0
    valid = quality in GGA_FIX_QUALITIES and lat is not None and lon is not None
    sats = int(fields[6]) if fields[6].isdigit() else None
    return GpsFix(
        "GGA",
        valid,
        lat if valid else None,
        lon if valid else None,
        satellites=sats,
        altitude_m=_number(fields[8]) if valid else None,
    )


RMC_NO_FIX_MODES = frozenset({"N", "M", "S"})  # not valid, manual input, simulator
GGA_FIX_QUALITIES = frozenset(range(1, 7))  # 0 none, 7 manual input, 8 simulator: no fix
PARSERS = {b"RMC": _rmc, b"GGA": _gga}


def nmea_checksum(body: bytes) -> int:
    x = 0
    for byte in body:
        x ^= byte
    return x


class NmeaCodec(BufferedCodec):
    """Sans-I/O decoder of NMEA lines: checks the checksum, bounds the line, ignores the rest."""

    heartbeat_query = b""  # a GPS talks by itself, every second

    def __init__(self) -> None:
        super().__init__()
        self._overlong = False  # the line being read is over the limit: drop it up to its newline

    def feed(self, data: bytes) -> list[Decoded]:
        self._buffer += data
        out: list[Decoded] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE_BYTES + 1:  # (+1: the <CR> may come before the <LF>)
                    if not self._overlong:
                        out.append(self._too_long(bytes(self._buffer)))
                        self._overlong = True
                    else:
                        self.stats.bytes_rejected += len(self._buffer)
                    self._buffer.clear()
                return out
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._overlong:  # the end of a line already rejected
                self._overlong = False
                self.stats.bytes_rejected += len(line) + 1
                continue
            line = line[:-1] if line.endswith(b"\r") else line
            if len(line) > MAX_LINE_BYTES:
                out.append(self._too_long(line))
            elif line:
                out.append(self._sentence(line))

    def _too_long(self, start: bytes) -> Decoded:
        return self._reject(start[:MAX_LINE_BYTES], f"line too long (more than {MAX_LINE_BYTES} characters)")

    def _sentence(self, line: bytes) -> Decoded:
        start = line.rfind(b"$")
        match = _SENTENCE.match(line, start) if start >= 0 else None
        if match is None:
            return self._reject(line, "not an NMEA sentence")
        if nmea_checksum(match["body"]) != int(match["sum"], 16):
            return self._reject(line, "bad checksum")
        self.stats.frames_ok += 1
        self.stats.bytes_rejected += start
        parser = PARSERS.get(match["type"])
        fix = parser(match["body"].decode("ascii").split(",")[1:]) if parser else None
        return Decoded(fix, b"", raw=line)
