"""GPS receivers: NMEA 0183 sentences (RMC and GGA, any talker: GP, GN, GL, GA, BD ...).

    $GNRMC,hhmmss.ss,A,ddmm.mmmm,N,dddmm.mmmm,E,knots,course,ddmmyy,,,A*hh<CR><LF>
    $GNGGA,hhmmss.ss,ddmm.mmmm,N,dddmm.mmmm,E,quality,sats,hdop,alt,M,geoid,M,,*hh<CR><LF>

The checksum is the XOR of every character between "$" and "*", as two hex digits. RMC's
status "A" (or GGA's quality > 0) means a valid fix; "V" (or quality 0) means none.
Sentences are at most 82 characters (NMEA 0183 §5.3); other sentence types are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers import BufferedCodec, Decoded

__all__ = [
    "MAX_SENTENCE_BYTES",
    "GpsFix",
    "NmeaCodec",
    "nmea_checksum",
]

MAX_SENTENCE_BYTES = 82  # NMEA 0183: "$" to <LF> inclusive
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
    valid = fields[1] == "A" and lat is not None and lon is not None
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
    valid = quality > 0 and lat is not None and lon is not None
    sats = int(fields[6]) if fields[6].isdigit() else None
    return GpsFix(
        "GGA",
        valid,
        lat if valid else None,
        lon if valid else None,
        satellites=sats,
        altitude_m=_number(fields[8]) if valid else None,
    )


PARSERS = {b"RMC": _rmc, b"GGA": _gga}


def nmea_checksum(body: bytes) -> int:
    x = 0
    for byte in body:
        x ^= byte
    return x


class NmeaCodec(BufferedCodec):
    """Sans-I/O decoder of NMEA lines: checks the checksum, bounds the line, ignores the rest."""

    heartbeat_query = b""  # a GPS talks by itself, every second

    def feed(self, data: bytes) -> list[Decoded]:
        self._buffer += data
        out: list[Decoded] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_SENTENCE_BYTES:
                    out.append(self._reject(bytes(self._buffer), "line too long"))
                    self._buffer.clear()
                return out
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            if line:
                out.append(self._sentence(line))

    def _sentence(self, line: bytes) -> Decoded:
        start = line.rfind(b"$")
        match = _SENTENCE.match(line, start) if start >= 0 and len(line) - start <= MAX_SENTENCE_BYTES else None
        if match is None:
            return self._reject(line, "not an NMEA sentence")
        if nmea_checksum(match["body"]) != int(match["sum"], 16):
            return self._reject(line, "bad checksum")
        self.stats.frames_ok += 1
        self.stats.bytes_rejected += start
        parser = PARSERS.get(match["type"])
        fix = parser(match["body"].decode("ascii").split(",")[1:]) if parser else None
        return Decoded(fix, b"", raw=line)
