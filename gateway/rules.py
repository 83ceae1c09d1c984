"""Care rules at the edge: what a device's readings mean for the person, as events.

Each configured device gets one rules object. The serial (or BLE) shell hands it every typed
reading with the monotonic time and calls `on_tick` about once a second; the rules return
event drafts (kind + data) that the station stamps and commits. Rules hold state (is a fall
in progress? what was the last presence?) but do no I/O, so they are tested with plain values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import NamedTuple, Protocol

from pydantic import JsonValue

from drivers.adverts import BTHomePacket, IBeacon
from drivers.contact_id import ContactIdReport
from drivers.gatt import MEASUREMENT_NAMES, Measurement
from drivers.nmea import GpsFix
from drivers.seeed_radar import (
    RadarDwell,
    RadarFall,
    RadarMotion,
    RadarMovement,
    RadarPresence,
)
from gateway.config import (
    BadgeDevice,
    BleSection,
    ContactIdReceiverDevice,
    Device,
    GpsDevice,
    IBeaconMatch,
    LocationSection,
    PendantDevice,
    RadarDevice,
    WristbandDevice,
)
from gateway.events import EventKind

__all__ = [
    "BadgeRules",
    "ContactIdRules",
    "DeviceRules",
    "EventDraft",
    "GpsRules",
    "HealthRules",
    "RadarRules",
    "Seen",
    "StationLocation",
    "Supervised",
    "WearableRules",
    "ibeacon_matches",
    "rules_for",
]


class EventDraft(NamedTuple):
    """What a device's rules made of a reading: an event to be, before the care rules and the
    stamp. A measurement keeps its typed reading for the care rules that hold it to limits."""

    kind: EventKind
    data: dict[str, JsonValue]
    reading: Measurement | None = None


ACTIVITY_CHANGE_MIN_GAP_S = 5.0  # at most one presence/motion change event per device per 5 s
GPS_FIX_STALE_S = 300.0  # an older fix is sent with alarms as "last known", not as current


class DeviceRules(Protocol):
    def on_reading(self, reading: object, now: float) -> list[EventDraft]: ...

    def on_tick(self, now: float) -> list[EventDraft]: ...


class ContactIdRules:
    """A receiver's report is already an event: one report, one event."""

    def on_reading(self, reading: object, now: float) -> list[EventDraft]:
        if isinstance(reading, ContactIdReport):
            return [EventDraft(reading.kind, reading.event_data())]
        return []

    def on_tick(self, now: float) -> list[EventDraft]:
        return []


@dataclass
class _ActivityWindow:
    """Movement and presence over one summary period."""

    started: float
    samples: int = 0
    total: int = 0
    peak: int = 0
    present_s: float = 0.0
    moving_s: float = 0.0

    def summary(self, now: float) -> dict[str, JsonValue]:
        return {
            "period_s": round(now - self.started),
            "present_s": round(self.present_s),
            "moving_s": round(self.moving_s),
            "movement_mean": round(self.total / self.samples, 1) if self.samples else None,
            "movement_max": self.peak if self.samples else None,
        }


@dataclass
class RadarRules:
    """Fall radars and presence radars.

    - fall 1 -> a `fall` alarm ("new"); fall 0 after it -> "restore";
    - stationary dwell while a fall is active -> another `fall` alarm, "still_present", saying
      the person has not moved since the fall (severity critical);
    - presence and motion -> `activity` telemetry on change (at most one per 5 s, the latest
      state wins) and a summary every `summary_s`, never once a second.
    """

    summary_s: float
    label: str | None = None
    present: bool | None = None
    motion: str | None = None
    fall_at: float | None = None
    still_reported: bool = False
    _last_change_event: float = -1e9
    _change_pending: bool = False
    _state_since: float = 0.0
    _window: _ActivityWindow = field(kw_only=True)  # rules_for opens the first at the clock's time

    def on_reading(self, reading: object, now: float) -> list[EventDraft]:
        if isinstance(reading, RadarFall):
            return self._fall(reading.fallen, now)
        if isinstance(reading, RadarDwell):
            return self._dwell(reading.still, now)
        if isinstance(reading, RadarMovement):
            self._window.samples += 1
            self._window.total += reading.value
            self._window.peak = max(self._window.peak, reading.value)
            return []
        if isinstance(reading, RadarPresence) and reading.present != self.present:
            self._accumulate(now)
            self.present = reading.present
            return self._changed(now)
        if isinstance(reading, RadarMotion) and reading.motion != self.motion:
            self._accumulate(now)
            self.motion = reading.motion
            return self._changed(now)
        return []

    def on_tick(self, now: float) -> list[EventDraft]:
        out = self._changed(now) if self._change_pending else []
        if now - self._window.started >= self.summary_s:
            self._accumulate(now)
            out.append(EventDraft(EventKind.ACTIVITY, {**self._state(), "summary": self._window.summary(now)}))
            self._window = _ActivityWindow(started=now)
        return out

    def _state(self) -> dict[str, JsonValue]:
        state: dict[str, JsonValue] = {"presence": self.present, "motion": self.motion}
        if self.label:
            state["room"] = self.label
        return state

    def _fall(self, fallen: bool, now: float) -> list[EventDraft]:
        if fallen and self.fall_at is None:
            self.fall_at, self.still_reported = now, False
            return [
                EventDraft(
                    EventKind.FALL, {**self._state(), "qualifier": "new", "severity": "high", "detector": "mmwave"}
                )
            ]
        if not fallen and self.fall_at is not None:
            lasted = round(now - self.fall_at)
            self.fall_at = None
            return [EventDraft(EventKind.FALL, {**self._state(), "qualifier": "restore", "fall_lasted_s": lasted})]
        return []

    def _dwell(self, still: bool, now: float) -> list[EventDraft]:
        if still and self.fall_at is not None and not self.still_reported:
            self.still_reported = True
            return [
                EventDraft(
                    EventKind.FALL,
                    {
                        **self._state(),
                        "qualifier": "still_present",
                        "severity": "critical",
                        "not_moved_since_fall": True,
                        "seconds_since_fall": round(now - self.fall_at),
                    },
                )
            ]
        return []

    def _changed(self, now: float) -> list[EventDraft]:
        if now - self._last_change_event < ACTIVITY_CHANGE_MIN_GAP_S:
            self._change_pending = True  # folded into the next change event or summary
            return []
        self._last_change_event, self._change_pending = now, False
        return [EventDraft(EventKind.ACTIVITY, {**self._state(), "change": True})]

    def _accumulate(self, now: float) -> None:
        span = max(0.0, now - max(self._state_since, self._window.started))
        if self.present:
            self._window.present_s += span
        if self.motion == "moving":
            self._window.moving_s += span
        self._state_since = now


class StationLocation:
    """Where the station is: its GPS fix when it has one, else the configured location."""

    def __init__(self, configured: LocationSection | None) -> None:
        self.configured = configured
        self.lat: float | None = None
        self.lon: float | None = None
        self.fix_at: float | None = None  # monotonic time of the last valid fix

    def update(self, lat: float, lon: float, now: float) -> None:
        self.lat, self.lon, self.fix_at = lat, lon, now

    def for_alarm(self, now: float) -> dict[str, JsonValue] | None:
        """What to attach to an alarm: the freshest position known, and where it came from."""
        if self.fix_at is not None and self.lat is not None and self.lon is not None:
            age = now - self.fix_at
            source = "gps" if age <= GPS_FIX_STALE_S else "gps_last_known"
            return {"lat": self.lat, "lon": self.lon, "source": source, "fix_age_s": round(age)}
        if self.configured is not None:
            return {"lat": self.configured.lat, "lon": self.configured.lon, "source": "configured"}
        return None


@dataclass
class GpsRules:
    """Keeps the station's position; reports when the fix is acquired and when it is lost."""

    location: StationLocation
    lost_after_s: float
    started: float = field(kw_only=True)  # the clock's monotonic time when the rules were made
    state: str = "starting"  # "starting", "acquired", "lost"

    def on_reading(self, reading: object, now: float) -> list[EventDraft]:
        if not (isinstance(reading, GpsFix) and reading.valid and reading.lat is not None and reading.lon is not None):
            return []
        self.location.update(reading.lat, reading.lon, now)
        if self.state == "acquired":
            return []
        self.state = "acquired"
        data: dict[str, JsonValue] = {"fix": "acquired", "lat": reading.lat, "lon": reading.lon}
        if reading.satellites is not None:
            data["satellites"] = reading.satellites
        return [EventDraft(EventKind.LOCATION, data)]

    def on_tick(self, now: float) -> list[EventDraft]:
        last = self.location.fix_at if self.location.fix_at is not None else self.started
        if self.state != "lost" and now - last > self.lost_after_s:
            self.state = "lost"
            data: dict[str, JsonValue] = {"fix": "lost", "seconds_without_fix": round(now - last)}
            if self.location.lat is not None:
                data.update(last_lat=self.location.lat, last_lon=self.location.lon)
            return [EventDraft(EventKind.LOCATION, data)]
        return []


def ibeacon_matches(beacon: IBeacon, match: IBeaconMatch) -> bool:
    return (
        beacon.uuid == match.uuid.lower()
        and (match.major is None or beacon.major == match.major)
        and (match.minor is None or beacon.minor == match.minor)
    )


@dataclass(frozen=True)
class Seen:
    """The BLE shell saw the device advertise (whatever the advertisement carried)."""

    rssi: int


@dataclass
class WearableRules:
    """Pendants and wristbands: presence of the wearer, and for pendants one alarm per press.

    A press makes the pendant repeat the same BTHome packet (same packet id) for its trigger
    window, 20 or more times, and BlueZ may or may not deliver every copy: the first copy of a
    packet id raises the alarm, later copies within the window are ignored; a press without
    packet id is de-bounced over the window alone.
    """

    presence_timeout_s: float
    wearer: str | None = None
    trigger_window_s: float | None = None  # None: not a pendant
    trigger_ibeacon: IBeaconMatch | None = None  # the identity an iBeacon-style pendant shows while pressed
    confirm_sightings: int = 1  # sightings, a second apart, before it is present again (unkeyed: several)
    last_seen: float | None = None
    away: bool = True
    _sightings: list[float] = field(default_factory=list)
    battery: int | None = None
    moving: bool | None = None
    _last_press: tuple[int | None, float] | None = None

    def on_reading(self, reading: object, now: float) -> list[EventDraft]:
        out: list[EventDraft] = []
        if isinstance(reading, Seen):
            self.last_seen = now
            if self.away:
                if not self._sightings or now - self._sightings[-1] >= 1.0:
                    self._sightings.append(now)
                if len(self._sightings) >= self.confirm_sightings:
                    self.away, self._sightings = False, []
                    out.append(
                        EventDraft(EventKind.PRESENCE, {**self._who(), "state": "present", "rssi": reading.rssi})
                    )
            return out
        if isinstance(reading, IBeacon) and self.trigger_ibeacon and ibeacon_matches(reading, self.trigger_ibeacon):
            if self.trigger_window_s is not None and self._new_press(None, now):
                out.append(EventDraft(EventKind.SOS, {**self._who(), "source": "ble_pendant", "button": "trigger"}))
            return out
        if isinstance(reading, BTHomePacket):
            if isinstance(reading.values.get("battery"), int):
                self.battery = int(reading.values["battery"])
            presses = [e for e in reading.events if e != "none"]
            if presses and self.trigger_window_s is not None and self._new_press(reading.packet_id, now):
                out.append(
                    EventDraft(
                        EventKind.SOS,
                        {**self._who(), "source": "ble_pendant", "button": presses[0], "battery": self.battery},
                    )
                )
            moving = reading.values.get("moving")
            if isinstance(moving, bool) and moving != self.moving:
                self.moving = moving
                out.append(EventDraft(EventKind.ACTIVITY, {**self._who(), "moving": moving, "battery": self.battery}))
        return out

    def _new_press(self, packet_id: int | None, now: float) -> bool:
        assert self.trigger_window_s is not None
        last = self._last_press
        repeat = (
            last is not None and now - last[1] < self.trigger_window_s and (packet_id is None or packet_id == last[0])
        )
        self._last_press = (packet_id, now)  # the window slides with every copy: a long burst stays one press
        return not repeat

    def on_tick(self, now: float) -> list[EventDraft]:
        if self.away and self._sightings and now - self._sightings[-1] > self.presence_timeout_s:
            self._sightings = []  # the sightings so far were too far apart to confirm anything
        if not self.away and self.last_seen is not None and now - self.last_seen > self.presence_timeout_s:
            self.away = True
            return [
                EventDraft(
                    EventKind.PRESENCE, {**self._who(), "state": "away", "unseen_s": round(now - self.last_seen)}
                )
            ]
        return []

    def _who(self) -> dict[str, JsonValue]:
        return {"wearer": self.wearer} if self.wearer else {}


@dataclass
class BadgeRules:
    """A caregiver's visit: the badge seen for visit_min_s (gaps shorter than visit_end_s
    allowed) opens it; unseen for visit_end_s closes it, with its duration."""

    caregiver: str
    visit_min_s: float
    visit_end_s: float
    first_seen: float | None = None
    last_seen: float | None = None
    visit_started: float | None = None

    def on_reading(self, reading: object, now: float) -> list[EventDraft]:
        if not isinstance(reading, Seen):
            return []
        if self.last_seen is None or now - self.last_seen > self.visit_end_s:
            self.first_seen = now  # a new stretch of presence
        self.last_seen = now
        assert self.first_seen is not None
        if self.visit_started is None and now - self.first_seen >= self.visit_min_s:
            self.visit_started = self.first_seen
            return [EventDraft(EventKind.VISIT, {"caregiver": self.caregiver, "visit": "started"})]
        return []

    def on_tick(self, now: float) -> list[EventDraft]:
        if self.visit_started is not None and self.last_seen is not None and now - self.last_seen > self.visit_end_s:
            duration = round(self.last_seen - self.visit_started)
            self.visit_started = self.first_seen = None
            return [
                EventDraft(EventKind.VISIT, {"caregiver": self.caregiver, "visit": "ended", "duration_s": duration})
            ]
        return []


class HealthRules:
    """A health device's measurements become `vitals` events ("no value" fields stay null)."""

    def __init__(self, wearer: str | None) -> None:
        self.wearer = wearer

    def on_reading(self, reading: object, now: float) -> list[EventDraft]:
        if not isinstance(reading, Measurement):
            return []
        data: dict[str, JsonValue] = {"measurement": MEASUREMENT_NAMES[type(reading)]}
        if self.wearer:
            data["wearer"] = self.wearer
        for name, value in dataclasses.asdict(reading).items():
            if name == "measured_time" and value is None:
                continue  # (only sent when the device knew the time of day but not the date)
            data[name] = (
                value.isoformat()
                if isinstance(value, datetime | time)
                else (list(value) if isinstance(value, tuple) else value)
            )
        return [EventDraft(EventKind.VITALS, data, reading)]

    def on_tick(self, now: float) -> list[EventDraft]:
        return []


def rules_for(device: Device, location: StationLocation, now: float, ble: BleSection | None = None) -> DeviceRules:
    """The care rules of one configured device, started at `now` (the clock's monotonic time)."""
    if isinstance(device, ContactIdReceiverDevice):
        return ContactIdRules()
    if isinstance(device, RadarDevice):
        return RadarRules(summary_s=device.activity_summary_s, label=device.label, _window=_ActivityWindow(started=now))
    if isinstance(device, GpsDevice):
        return GpsRules(location, device.fix_lost_after_s, started=now)
    presence_timeout = ble.presence_timeout_s if ble else 120.0
    confirm = 1 if getattr(device, "bind_key", None) else (ble.presence_confirm_sightings if ble else 3)
    rules: DeviceRules
    if isinstance(device, PendantDevice):
        rules = WearableRules(
            presence_timeout, device.wearer, device.trigger_window_s, device.trigger_ibeacon, confirm_sightings=confirm
        )
    elif isinstance(device, WristbandDevice):
        rules = WearableRules(presence_timeout, device.wearer, confirm_sightings=confirm)
    elif isinstance(device, BadgeDevice):
        rules = BadgeRules(device.caregiver, device.visit_min_s, device.visit_end_s)
    else:
        rules = HealthRules(device.wearer)
    return Supervised(rules, device.supervision_s, started=now) if device.supervision_s else rules


@dataclass
class Supervised:
    """A BLE device that must advertise within `window_s`: offline after silence, online again
    with the next advertisement (the device's own rules still see every reading)."""

    inner: DeviceRules
    window_s: float
    started: float = field(kw_only=True)  # the clock's monotonic time when the rules were made
    last_seen: float | None = None
    online: bool | None = None

    def on_reading(self, reading: object, now: float) -> list[EventDraft]:
        out: list[EventDraft] = []
        if isinstance(reading, Seen):
            if self.online is False and self.last_seen is not None:
                reason = f"advertising again after {round(now - self.last_seen)} s"
                out.append(EventDraft(EventKind.DEVICE_ONLINE, {"reason": reason}))
            self.last_seen, self.online = now, True
        return out + self.inner.on_reading(reading, now)

    def on_tick(self, now: float) -> list[EventDraft]:
        out = self.inner.on_tick(now)
        last = self.last_seen if self.last_seen is not None else self.started
        if self.online is not False and now - last > self.window_s:
            self.online = False
            reason = f"no advertisement for {round(now - last)} s (supervision window {self.window_s:.0f} s)"
            out.append(EventDraft(EventKind.DEVICE_OFFLINE, {"reason": reason}))
        return out
