"""The station-wide care logic: every event draft of every device passes through the CareBook.

It decides what the drafts mean for the residents: which resident a button or wearable is,
whether a report opens an alarm (gateway/alarms.py keeps its life), inactivity of people living
alone, absence of wearers at risk of wandering, missed button tests, offline devices, low
batteries and vital signs outside the resident's limits. What it must remember across a
restart is the typed care state (gateway/care_state.py), which the station writes in the same
transaction as the events (`take_changes`). Pure logic: no I/O, and time comes from the
station's clock.
"""

from __future__ import annotations

import math
import zoneinfo
from dataclasses import dataclass
from datetime import datetime

from pydantic import JsonValue

from drivers.gatt import (
    MEASUREMENT_NAMES,
    BatteryLevel,
    BloodPressure,
    HeartRate,
    Measurement,
    OximeterReading,
    Temperature,
)
from gateway.alarms import OPENS_ALARM, STORM_FAMILY, Alarm, AlarmBook, Stamp, button_number
from gateway.care_state import CareState, CareStateCheckpoint, StateRows, VitalWatch
from gateway.clock import utc_text
from gateway.config import (
    ContactIdReceiverDevice,
    PendantDevice,
    RadarDevice,
    ResidentSection,
    StationConfig,
    WristbandDevice,
    in_hours,
)
from gateway.events import Event, EventKind
from gateway.rules import EventDraft
from gateway.status import AlarmStatus, ResidentStatus

__all__ = [
    "CareBook",
    "CareCheckpoint",
    "activity_sources",
    "coverage_warnings",
    "periodic_wearables",
]

BUTTON_PRESSES = frozenset({EventKind.SOS, EventKind.MEDICAL, EventKind.PANIC, EventKind.DURESS})
WEARABLES = (PendantDevice, WristbandDevice)  # the kinds a resident wears
TEST_OVERDUE_REPEAT_S = 86400.0  # an overdue button is reported again each day until tested
BATTERY_RECOVERED_MARGIN = 10  # percent above the limit before a low battery counts as replaced
CARE_CHECK_S = 15.0  # how often time-based rules (inactivity, absence, tests, faults) look again


def activity_sources(config: StationConfig) -> dict[str, list[str]]:
    """Resident -> the devices whose reports show the person moving: a radar, or a wearable
    with a motion sensor. A button (a receiver zone, a press-only pendant) shows activity when
    pressed, but its silence says nothing: inactivity is judged only where activity can be seen."""
    out: dict[str, list[str]] = {}
    for device in config.devices:
        moving = isinstance(device, RadarDevice) or (isinstance(device, WEARABLES) and device.reports_motion)
        resident = getattr(device, "resident", None)
        if moving and resident:
            out.setdefault(resident, []).append(device.id)
    return out


def periodic_wearables(config: StationConfig) -> dict[str, list[PendantDevice | WristbandDevice]]:
    """Resident -> the wearables that advertise periodically (supervision_s > 0): only their
    silence means the wearer is out of range."""
    out: dict[str, list[PendantDevice | WristbandDevice]] = {}
    for device in config.devices:
        if isinstance(device, WEARABLES) and device.resident and device.supervision_s > 0:
            out.setdefault(device.resident, []).append(device)
    return out


def coverage_warnings(config: StationConfig) -> list[str]:
    """What the station is asked to watch but cannot: residents without the device a care rule
    needs, badges a passive scan cannot see (check-config and the daemon's start say so: else a
    rule would stay silent, or raise false alarms, without anyone knowing)."""
    moving, periodic = activity_sources(config), periodic_wearables(config)
    out = []
    for resident in config.residents:
        if resident.lives_alone and resident.id not in moving:
            out.append(
                f"resident {resident.id!r} lives alone, but no device of theirs shows activity (a radar, or a "
                f"wristband or pendant with reports_motion = true): inactivity is not watched for them; give them "
                f'one (resident = "{resident.id}")'
            )
        if resident.dementia_risk and resident.id not in periodic:
            out.append(
                f"resident {resident.id!r} has dementia_risk = true, but no wearable of theirs advertises "
                f"periodically (supervision_s > 0): wandering away is not watched for them; give them a wristband "
                f"or a periodic pendant with supervision_s set"
            )
    if config.ble.scanning_mode == "passive":
        for device in config.devices:
            if device.kind == "caregiver_badge":
                out.append(
                    f'device {device.id!r} is a caregiver badge, but [ble] scanning_mode = "passive": without a '
                    f"discovery session BlueZ reports an iBeacon whose bytes never change only once (and its signal "
                    f'only on an 8 dB change), so visits are not seen; use scanning_mode = "active" (docs/devices.md)'
                )
    return out


@dataclass(frozen=True)
class CareCheckpoint:
    state: CareStateCheckpoint
    closed: dict[str, Alarm]
    next_check: float


@dataclass(frozen=True)
class _VitalCheck:
    name: str
    value: float | None
    low: float | None
    high: float | None
    band: float  # how far back inside the limits before the alarm clears


class CareBook:
    """The care rules of the whole station, fed with every event draft and the care clock.

    Pure logic: no I/O. What it must remember across a restart is `state` (typed); the
    station writes `take_changes()` in the same transaction as the events they go with.
    """

    def __init__(self, config: StationConfig, stamp: Stamp) -> None:
        self.config = config
        self.care = config.care
        self.stamp = stamp
        self.zone = zoneinfo.ZoneInfo(config.care.timezone)
        self.residents = {r.id: r for r in config.residents}
        self.devices = {d.id: d for d in config.devices}
        self.state = CareState()
        self.alarm_book = AlarmBook(config.care, self.residents, self.state, stamp)
        self._activity_watched = set(activity_sources(config))  # inactivity only where activity can be seen
        self._next_check = 0.0

    @property
    def alarms(self) -> dict[str, Alarm]:
        """The open alarms."""
        return self.state.alarms

    # --- persistence ----------------------------------------------------------------------------

    def load(self, rows: StateRows) -> list[str]:
        """Take over what an earlier run left (the outbox's care_state rows). Returns what of
        it could not be read, one line each, for the journal."""
        self.state, problems = CareState.from_rows({k: v for k, v in rows.items() if v is not None})
        self.alarm_book.state = self.state
        return problems

    def take_changes(self) -> dict[str, JsonValue | None]:
        return self.state.take_changes()

    def give_back(self, changes: StateRows) -> None:
        """Changes taken for a commit that failed: written with the next one."""
        self.state.give_back(changes)

    def checkpoint(self) -> CareCheckpoint:
        """The book as it is, to go back to when the events of a triage or tick cannot be
        stored: else the alarm would be open here but never reported, and the device's resend
        of the press taken for a repeat of it."""
        return CareCheckpoint(self.state.checkpoint(), dict(self.alarm_book.closed), self._next_check)

    def rollback(self, checkpoint: CareCheckpoint) -> None:
        self.state.rollback(checkpoint.state)
        self.alarm_book.closed = dict(checkpoint.closed)
        self._next_check = checkpoint.next_check

    def shift_times(self, seconds: float, since: float) -> None:
        """The care clock moved by `seconds` (the clock was first synchronised in this run):
        move every time this run recorded (at or after `since`, on the old base) with it, so
        that no timer is cut short or stretched by the correction."""
        self.state.shift_times(seconds, since)
        self._next_check += seconds

    # --- what the status says of the residents and alarms -------------------------------------

    def resident_reports(self) -> dict[str, ResidentStatus]:
        out = {}
        for resident in self.config.residents:
            watch = self.state.residents.get(resident.id)
            out[resident.id] = ResidentStatus(
                name=resident.name,
                room=resident.room,
                last_activity=utc_text(watch.active_at if watch else None),
                open_alarms=sum(1 for a in self.alarms.values() if a.resident == resident.id),
            )
        return out

    def alarm_reports(self) -> list[AlarmStatus]:
        return [
            AlarmStatus(
                alarm_id=a.id,
                kind=a.kind,
                state=a.state,
                resident=a.resident,
                device_id=a.device_id,
                count=a.count,
                raised_at=utc_text(a.raised_at),
            )
            for a in self.alarms.values()
        ]

    # --- who is concerned ---------------------------------------------------------------------

    def resident_of(self, device_id: str, data: dict[str, JsonValue]) -> str | None:
        device = self.devices.get(device_id)
        if device is None:
            return None
        if isinstance(device, ContactIdReceiverDevice):
            number = button_number(data)
            return device.residents.get(str(number)) if isinstance(number, int) else None
        return getattr(device, "resident", None)

    def _button_key(self, device_id: str, data: dict[str, JsonValue]) -> str | None:
        device = self.devices.get(device_id)
        if isinstance(device, ContactIdReceiverDevice):
            number = button_number(data)
            return f"{device_id}:{number}" if str(number) in device.residents else None
        return device_id if isinstance(device, PendantDevice) else None

    def buttons(self) -> list[str]:
        """Every emergency button the station knows: pendants and the mapped zones of receivers."""
        out = []
        for device in self.config.devices:
            if isinstance(device, PendantDevice):
                out.append(device.id)
            elif isinstance(device, ContactIdReceiverDevice):
                out.extend(f"{device.id}:{zone}" for zone in device.residents)
        return out

    # --- events in ------------------------------------------------------------------------------

    def triage(self, device_id: str, drafts: list[EventDraft], now: datetime) -> list[Event]:
        """The events to commit for what a device reported: residents named, alarms opened or
        folded into an open one, and what the readings mean for activity, battery and tests."""
        t = now.timestamp()
        out: list[Event] = []
        for kind, data, reading in drafts:
            resident = self.resident_of(device_id, data)
            derived: list[Event] = []  # what the report means, sent after the report itself
            if resident is not None:
                data = {**data, "resident": resident}
                derived += self._note_activity(resident, kind, data, t, device_id)
            derived += self._note_device(device_id, kind, data, reading, t)
            if kind in STORM_FAMILY or kind in OPENS_ALARM:
                out += self.alarm_book.report(device_id, kind, data, resident, t)
            else:
                out.append(self.stamp(device_id, kind, data))
            out += derived
            if resident is not None and reading is not None:
                out += self._check_vitals(device_id, resident, reading, t)
        return out

    def _note_activity(
        self, resident: str, kind: EventKind, data: dict[str, JsonValue], t: float, device_id: str
    ) -> list[Event]:
        out: list[Event] = []
        summary = data.get("summary")
        moving_s = summary.get("moving_s") if isinstance(summary, dict) else None
        active = (
            kind in (EventKind.TEST, EventKind.VITALS, EventKind.PANEL_EVENT)
            or kind in BUTTON_PRESSES
            or data.get("motion") == "moving"
            or data.get("moving") is True
            or (isinstance(moving_s, int) and moving_s > 0)
        )
        if active:
            self.state.resident(resident).active_at = t
            for alarm in self.alarm_book.open_of(resident, EventKind.INACTIVITY):
                out.append(self.alarm_book.close(alarm, t, "gateway", "activity", {"activity_kind": kind.value}))
        device = self.devices.get(device_id)
        if isinstance(device, WEARABLES):
            watch = self.state.resident(resident)
            if kind is EventKind.PRESENCE and data.get("state") == "away":
                unseen = data.get("unseen_s")
                watch.seen_at = t - (unseen if isinstance(unseen, int | float) else 0)
                watch.present = False
                return out
            watch.seen_at = t
            rssi = data.get("rssi")
            if isinstance(rssi, int):
                watch.seen_rssi = rssi
            # the wearer is back: only from the wearable's confirmed presence, or anything a keyed
            # (authenticated) wearable sends: a neighbour imitating an unkeyed one must not end it
            if kind is EventKind.PRESENCE or device.bind_key:
                watch.present = True
                for alarm in self.alarm_book.open_of(resident, EventKind.WEARER_ABSENT):
                    out.append(self.alarm_book.close(alarm, t, "gateway", "wearer_seen", {"device_id": device_id}))
        return out

    def _note_device(
        self, device_id: str, kind: EventKind, data: dict[str, JsonValue], reading: Measurement | None, t: float
    ) -> list[Event]:
        known = self.state.devices.get(device_id)
        if kind is EventKind.DEVICE_OFFLINE and (known is None or known.offline_since is None):
            self.state.device(device_id).offline_since = t
        elif kind is EventKind.DEVICE_ONLINE and known is not None:
            device = self.state.device(device_id)
            device.offline_since = device.fault_reported_at = None
        button = self._button_key(device_id, data) if (kind is EventKind.TEST or kind in BUTTON_PRESSES) else None
        if button is not None:
            entry = self.state.button(button)
            entry.tested_at, entry.overdue_reported_at = t, None
        if reading is not None or kind is EventKind.VITALS:
            battery = reading.percent if isinstance(reading, BatteryLevel) else None
        else:
            found = data.get("battery")
            battery = found if isinstance(found, int) and not isinstance(found, bool) else None
        return [] if battery is None else self._note_battery(device_id, battery, data)

    def _note_battery(self, device_id: str, battery: int, data: dict[str, JsonValue]) -> list[Event]:
        known = self.state.devices.get(device_id)
        reported = known is not None and known.battery_low is not None
        limit = self.care.low_battery_percent
        if battery <= limit and not reported:
            self.state.device(device_id).battery_low = battery
            found: dict[str, JsonValue] = {"battery": battery, "limit": limit}
            resident = self.resident_of(device_id, data)
            if resident:
                found["resident"] = resident
            return [self.stamp(device_id, EventKind.LOW_BATTERY, found)]
        if battery > limit + BATTERY_RECOVERED_MARGIN and reported:
            self.state.device(device_id).battery_low = None
        return []

    # --- vital signs ------------------------------------------------------------------------------

    def _vital_checks(self, resident: str, reading: Measurement) -> tuple[list[_VitalCheck], bool]:
        """What of a measurement is held to the resident's limits, and whether the device
        measures continuously (then an alarm waits for min_duration_s outside the limits)."""
        limits = self.residents[resident].vitals
        if isinstance(reading, HeartRate):
            if reading.contact is False:  # the strap is off the skin: no reading of the person
                return [], True
            return [_VitalCheck("heart_rate", reading.bpm, limits.heart_rate_min, limits.heart_rate_max, 5.0)], True
        if isinstance(reading, OximeterReading):
            if reading.questionable:
                return [], reading.continuous
            return [_VitalCheck("spo2", reading.spo2_percent, limits.spo2_min, None, 2.0)], reading.continuous
        if isinstance(reading, Temperature):
            checks = [_VitalCheck("temperature", reading.celsius, limits.temperature_min, limits.temperature_max, 0.3)]
            return checks, False
        if isinstance(reading, BloodPressure) and reading.unit == "mmHg":
            return [_VitalCheck("systolic", reading.systolic, limits.systolic_min, limits.systolic_max, 10.0)], False
        return [], False

    def _check_vitals(self, device_id: str, resident: str, reading: Measurement, t: float) -> list[Event]:
        out: list[Event] = []
        limits = self.residents[resident].vitals
        checks, continuous = self._vital_checks(resident, reading)
        for check in checks:
            value, low, high = check.value, check.low, check.high
            if value is None or math.isnan(value):
                continue  # "no value" or an invalid reading never alarms
            known = self.state.residents.get(resident)
            entry = known.vitals.get(check.name) if known else None
            outside = (low is not None and value < low) or (high is not None and value > high)
            back = (low is None or value >= low + check.band) and (high is None or value <= high - check.band)
            if outside:
                since = entry.since if entry else t
                alarmed = entry is not None and entry.alarmed
                due = not continuous or t - since >= limits.min_duration_s
                if due and not alarmed:
                    found: dict[str, JsonValue] = {
                        "vital": check.name,
                        "value": value,
                        "limit_low": low,
                        "limit_high": high,
                        "measurement": MEASUREMENT_NAMES[type(reading)],
                        "out_of_range_s": round(t - since),
                        "resident": resident,
                    }
                    out += self.alarm_book.report(device_id, EventKind.VITALS_ALERT, found, resident, t)
                watch = self.state.resident(resident)
                watch.vitals = {**watch.vitals, check.name: VitalWatch(since, alarmed or due)}
            elif entry is not None and (back or not entry.alarmed):
                watch = self.state.resident(resident)  # within limits: the duration starts again
                watch.vitals = {k: v for k, v in watch.vitals.items() if k != check.name}
                for alarm in self.alarm_book.open_of(resident, EventKind.VITALS_ALERT):
                    if alarm.detail.get("vital") == check.name:  # an alarm clears past the band
                        out.append(self.alarm_book.close(alarm, t, "gateway", "back_within_limits", {"value": value}))
        return out

    # --- time -------------------------------------------------------------------------------------

    def tick(self, now: datetime) -> list[Event]:
        """What time alone decides: re-announcements every second; inactivity, absence, overdue
        tests and faulty devices every CARE_CHECK_S."""
        t = now.timestamp()
        out = self.alarm_book.tick(t)
        if t >= self._next_check:
            self._next_check = t + CARE_CHECK_S
            for resident in self.config.residents:
                if resident.lives_alone and resident.id in self._activity_watched:
                    out += self._check_inactivity(resident, t)
                if resident.dementia_risk:
                    out += self._check_absence(resident, t)
            out += self._check_tests(t)
            out += self._check_faults(t)
        return out

    def _local_minute(self, t: float) -> int:
        local = datetime.fromtimestamp(t, self.zone)
        return local.hour * 60 + local.minute

    def watched_seconds(self, resident: ResidentSection, start: float, end: float) -> float:
        """Seconds between start and end that fall in the resident's waking hours outside quiet
        hours (minute resolution): sleep and naps do not count towards inactivity."""
        total = 0.0
        step = 60.0
        at = start
        limit = 3 * 86400 / step  # beyond 3 days the answer is "long enough" for any window
        n = 0
        while at < end and n < limit:
            minute = self._local_minute(at)
            if in_hours(resident.waking_hours, minute) and not any(in_hours(q, minute) for q in resident.quiet_hours):
                total += min(step, end - at)
            at += step
            n += 1
        return total

    def _check_inactivity(self, resident: ResidentSection, t: float) -> list[Event]:
        known = self.state.residents.get(resident.id)
        last = known.active_at if known else None
        if last is None:
            self.state.resident(resident.id).active_at = t  # supervision starts now
            return []
        if self.alarm_book.open_of(resident.id, EventKind.INACTIVITY):
            return []
        watched = self.watched_seconds(resident, last, t)
        if watched < resident.inactivity_s:
            return []
        data: dict[str, JsonValue] = {
            "resident": resident.id,
            "last_activity_at": utc_text(last),
            "inactive_waking_s": round(watched),
            "window_s": round(resident.inactivity_s),
        }
        device = next((d.id for d in self.config.devices if getattr(d, "resident", None) == resident.id), "gateway")
        return self.alarm_book.report(device, EventKind.INACTIVITY, data, resident.id, t)

    def _check_absence(self, resident: ResidentSection, t: float) -> list[Event]:
        wearables = periodic_wearables(self.config).get(resident.id)
        if not wearables:  # a press-only pendant is silent between presses: its silence says nothing
            return []
        known = self.state.residents.get(resident.id)
        last = known.seen_at if known else None
        if last is None:
            self.state.resident(resident.id).seen_at = t
            return []
        if self.alarm_book.open_of(resident.id, EventKind.WEARER_ABSENT) or (known and known.present):
            return []  # (present: its wearable is heard; it says "away" after presence_timeout_s)
        if not in_hours(resident.absence_watch_hours, self._local_minute(t)) or t - last < resident.absent_after_s:
            return []
        data: dict[str, JsonValue] = {
            "resident": resident.id,
            "last_seen_at": utc_text(last),
            "unseen_s": round(t - last),
            "last_place": self.config.station.name + (f", {resident.room}" if resident.room else ""),
            "last_rssi": known.seen_rssi if known else None,
        }
        return self.alarm_book.report(wearables[0].id, EventKind.WEARER_ABSENT, data, resident.id, t)

    def _check_tests(self, t: float) -> list[Event]:
        out: list[Event] = []
        limit = self.care.button_test_days * 86400
        for button in self.buttons():
            known = self.state.buttons.get(button)
            last = known.tested_at if known else None
            if last is None:
                self.state.button(button).tested_at = t  # a new button: its first week starts now
                continue
            reported = known.overdue_reported_at if known else None
            if t - last < limit or (reported is not None and t - reported < TEST_OVERDUE_REPEAT_S):
                continue
            self.state.button(button).overdue_reported_at = t
            device_id, _, zone = button.partition(":")
            data: dict[str, JsonValue] = {
                "button": button,
                "last_test_at": utc_text(last),
                "days_since_test": round((t - last) / 86400, 1),
                "required_every_days": self.care.button_test_days,
            }
            if zone:
                data["zone"] = int(zone)
            resident = self.resident_of(device_id, {"zone": int(zone)} if zone else {})
            if resident:
                data["resident"] = resident
            out.append(self.stamp(device_id, EventKind.TEST_OVERDUE, data))
        return out

    def _check_faults(self, t: float) -> list[Event]:
        out: list[Event] = []
        for device_id, known in list(self.state.devices.items()):
            since = known.offline_since
            if since is None or known.fault_reported_at is not None or t - since < self.care.device_fault_after_s:
                continue
            self.state.device(device_id).fault_reported_at = t
            data: dict[str, JsonValue] = {
                "offline_s": round(t - since),
                "offline_since": utc_text(since),
                "replace_within_s": round(self.care.device_fault_after_s),
                "advice": "substitute the device or arrange manual checks (JGJ/T 484 §10.3)",
            }
            out.append(self.stamp(device_id, EventKind.DEVICE_FAULT, data))
        return out
