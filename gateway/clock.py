"""The one clock: wall time, monotonic time, boot id, and whether wall time can be trusted.

A station box usually has no clock battery: until NTP (or GPS) has set the time, the wall
clock starts from whatever fake-hwclock saved, which is plausible and wrong. Every event
therefore carries `clock_trusted`, taken from the kernel's own "synchronised" flag.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

__all__ = [
    "Clock",
    "read_boot_id",
    "utc_text",
]

TIME_ERROR = 5  # adjtimex(2) return value: "clock not synchronized"
ADJTIMEX_BUFFER_BYTES = 512  # > sizeof(struct timex) on every Linux ABI (208 on x86_64)
TIMESYNCD_MARKER = Path("/run/systemd/timesync/synchronized")  # touched by systemd-timesyncd
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

ClockTrust = Literal["auto", "always"]

# The platform's `time` is refused before this day (the software cannot be older than its
# release) and more than PLATFORM_TIME_AHEAD_S past the latest time the station has seen.
RELEASED = datetime(2026, 12, 1, tzinfo=UTC)
PLATFORM_TIME_AHEAD_S = 2 * 366 * 86400


RECHECK_INTERVAL_S = 10.0  # how often an untrusted clock asks the kernel again


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """libc, looked up once (find_library runs ldconfig: far too slow for every event)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None


def _kernel_says_synchronised() -> bool:
    """True when the kernel reports an NTP-disciplined clock (adjtimex != TIME_ERROR)."""
    if TIMESYNCD_MARKER.exists():
        return True
    libc = _libc()
    if libc is None:
        return False
    buf = ctypes.create_string_buffer(ADJTIMEX_BUFFER_BYTES)  # modes = 0: read only
    return bool(libc.adjtimex(buf) not in (-1, TIME_ERROR))


def read_boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return str(uuid.uuid4())  # not Linux: a per-process id still separates runs


def utc_text(epoch: object) -> str | None:
    """Epoch seconds as '2026-11-23T08:30:15Z' (status messages, alarm times); None stays None."""
    if not isinstance(epoch, int | float) or isinstance(epoch, bool):
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Clock:
    """Wall + monotonic time. `trust="always"` is for boxes with a GPS or a kept RTC.

    Until the system clock is synchronised (NTP), the platform may give the time (the `time`
    downlink command, once per boot and within bounds): the clock then runs as the system clock
    plus that offset, trusted, until NTP synchronises the system clock and the offset is dropped.

    `steady()` is the care rules' time: wall time as it was when the station started, advanced
    by the monotonic clock only. A step of the wall clock (by hand, by NTP, by a forged command)
    never moves it, so no care timer can be silenced or fired by one; it is moved once, with
    `shift_steady`, when the clock is first synchronised in a run.
    """

    def __init__(self, trust: ClockTrust = "auto") -> None:
        self._trust = trust
        self._trusted_seen = trust == "always"
        self._next_check = 0.0
        self._offset_s = 0.0  # platform time minus system time, while the platform's time is used
        self.source = "configured" if trust == "always" else "none"  # "ntp", "platform"
        self.boot_id = read_boot_id()
        self.run_id = secrets.token_hex(8)  # this daemon run (kept across a SIGHUP reload)
        self.started_mono = time.monotonic()
        self.platform_time_used = False  # taken in this run (the station also remembers the boot)
        self._steady_base = time.time() - self.monotonic()

    def retrust(self, trust: ClockTrust) -> None:
        """A reloaded station file may say otherwise about the clock (trust_clock); the time
        the platform gave, or NTP's, is kept either way."""
        if trust == self._trust:
            return
        self._trust = trust
        if trust == "always":
            self._trusted_seen, self.source = True, "configured"
        elif self.source == "configured":
            self._trusted_seen, self.source, self._next_check = False, "none", 0.0

    def now(self) -> datetime:
        """The time to stamp events with; never raises, whatever offset the platform gave."""
        system = datetime.now(UTC)
        if self._offset_s:
            try:
                return system + timedelta(seconds=self._offset_s)
            except OverflowError:
                return system
        return system

    def monotonic(self) -> float:
        return time.monotonic()

    def steady(self) -> datetime:
        """The care rules' clock (see the class doc): monotonic, in wall-clock units."""
        try:
            return datetime.fromtimestamp(self._steady_base + self.monotonic(), UTC)
        except (OverflowError, OSError, ValueError):
            return datetime.now(UTC)

    def shift_steady(self, seconds: float) -> None:
        self._steady_base += seconds

    def trusted(self) -> bool:
        """Once the clock has been synchronised in this boot it stays trusted."""
        if self.source in ("none", "platform") and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + RECHECK_INTERVAL_S
            if _kernel_says_synchronised():
                self._trusted_seen, self.source, self._offset_s = True, "ntp", 0.0
        return self._trusted_seen

    def set_from_platform(
        self, utc: datetime, latest_seen: datetime | None = None, taken_this_boot: bool = False
    ) -> float:
        """Use the platform's time while the system clock is not synchronised; the offset in s.

        Raises ValueError, saying why, when the clock is already good (NTP, a GPS or a kept RTC),
        when the platform's time was already taken in this boot (by this run, or by an earlier
        run of this boot: `taken_this_boot`), or when `utc` is out of bounds:
        before the release or before `latest_seen` (the newest event the station committed), or
        more than two years past the later of those and the system clock."""
        if self.trusted() and self.source != "platform":
            raise ValueError(f"the station's clock is already trusted ({self.source}); it keeps its own time")
        if self.platform_time_used or taken_this_boot:
            raise ValueError("the platform's time was already taken in this boot; it is taken once per boot")
        utc = utc.astimezone(UTC)
        floor = max(RELEASED, latest_seen or RELEASED)
        if utc < floor:
            raise ValueError(f"{_text(utc)} is before {_text(floor)} (this release, or the newest event committed)")
        ceiling = max(floor, datetime.now(UTC)).timestamp() + PLATFORM_TIME_AHEAD_S
        if utc.timestamp() > ceiling:
            raise ValueError(f"{_text(utc)} is more than two years ahead of what this station has seen")
        self._offset_s = (utc - datetime.now(UTC)).total_seconds()
        self._trusted_seen, self.source, self.platform_time_used = True, "platform", True
        return self._offset_s


def _text(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
