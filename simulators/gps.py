"""A GPS receiver on a pseudo-terminal: NMEA 0183 RMC and GGA sentences once a second.

Encoded here from the standard (independently of drivers/nmea.py): fields separated by
commas, "*" and the XOR of every character between "$" and "*" as two upper-case hex digits.
Scenarios: a care van driving a loop; a fix that is lost (tunnel, valley) and regained.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from datetime import UTC, datetime


def sentence(body: str) -> bytes:
    checksum = 0
    for ch in body.encode("ascii"):
        checksum ^= ch
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def _ddmm(value: float, degree_digits: int) -> str:
    degrees = int(abs(value))
    minutes = (abs(value) - degrees) * 60
    return f"{degrees:0{degree_digits}d}{minutes:07.4f}"


def rmc(
    lat: float, lon: float, valid: bool = True, knots: float = 0.0, talker: str = "GN", at: datetime | None = None
) -> bytes:
    at = at or datetime.now(UTC)
    if not valid:
        return sentence(f"{talker}RMC,{at:%H%M%S}.00,V,,,,,,,{at:%d%m%y},,,N")
    return sentence(
        f"{talker}RMC,{at:%H%M%S}.00,A,{_ddmm(lat, 2)},{'N' if lat >= 0 else 'S'},"
        f"{_ddmm(lon, 3)},{'E' if lon >= 0 else 'W'},{knots:.1f},0.0,{at:%d%m%y},,,A"
    )


def gga(
    lat: float,
    lon: float,
    valid: bool = True,
    satellites: int = 9,
    altitude: float = 1005.0,
    talker: str = "GN",
    at: datetime | None = None,
) -> bytes:
    at = at or datetime.now(UTC)
    if not valid:
        return sentence(f"{talker}GGA,{at:%H%M%S}.00,,,,,0,00,99.99,,,,,,")
    return sentence(
        f"{talker}GGA,{at:%H%M%S}.00,{_ddmm(lat, 2)},{'N' if lat >= 0 else 'S'},"
        f"{_ddmm(lon, 3)},{'E' if lon >= 0 else 'W'},1,{satellites:02d},0.9,{altitude:.1f},M,-8.0,M,,"
    )


class GpsSim:
    """A GPS on a pty, printing RMC + GGA every `interval_s` while `run()` is awaited."""

    def __init__(self, lat: float = 43.9333, lon: float = 116.0667, interval_s: float = 1.0) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self.lat, self.lon = lat, lon
        self.interval_s = interval_s
        self.has_fix = True
        self.speed_knots = 0.0

    async def run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                os.write(
                    self._master,
                    rmc(self.lat, self.lon, self.has_fix, self.speed_knots) + gga(self.lat, self.lon, self.has_fix),
                )
            await asyncio.sleep(self.interval_s)

    def close(self) -> None:
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


async def play(scenario: str) -> None:
    sim = GpsSim()
    print(f'GPS on {sim.path}  (configure: kind = "gps", port = "{sim.path}"); scenario {scenario}', flush=True)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(sim.run())
            step = 0
            while True:
                await asyncio.sleep(1)
                step += 1
                if scenario == "drive":  # a care van on a loop between yurt settlements
                    sim.speed_knots = 25.0
                    sim.lat += 0.0005
                    sim.lon += 0.0003 if step % 120 < 60 else -0.0003
                elif scenario == "lose-fix":  # 40 s without a fix every 2 minutes
                    sim.has_fix = step % 120 < 80
    finally:
        sim.close()
