"""The station-wide care logic: every event draft of every device passes through the CareBook.

It decides what the drafts mean for the residents (which resident a button or wearable is,
an alarm opened or a repeat counted into the open one in a storm, inactivity of people living
alone, missed button tests, offline devices, low batteries, vital limits), keeps the life of
each alarm (raised, delivered, acknowledged, resolved; re-announcements; SMS escalation
bookkeeping) and what must survive a restart, as JSON under string keys that the station
writes in the same transaction as the events (`take_changes`). Pure logic: no I/O, and time
comes from the station's clock.
"""

from __future__ import annotations

import dataclasses
import math
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import JsonValue

from gateway.clock import utc_text
from gateway.config import (
    Contact,
    ContactIdReceiverDevice,
    PendantDevice,
    ResidentSection,
    StationConfig,
    WristbandDevice,
    in_hours,
)
from gateway.events import Event, EventKind
from gateway.rules import EventDraft

__all__ = [
    "Alarm",
    "CareBook",
    "CareCheckpoint",
    "Stamp",
    "button_number",
]

OPENS_ALARM = frozenset(
    {
        EventKind.SOS,
        EventKind.MEDICAL,
        EventKind.PANIC,
        EventKind.DURESS,
        EventKind.FIRE,
        EventKind.GAS,
        EventKind.CARBON_MONOXIDE,
        EventKind.FALL,
        EventKind.INACTIVITY,
        EventKind.WEARER_ABSENT,
        EventKind.VITALS_ALERT,
    }
)
STORM_FAMILY = {
    EventKind.SOS: "button",
    EventKind.MEDICAL: "button",
    EventKind.PANIC: "button",
    EventKind.DURESS: "button",
    EventKind.FIRE: "fire",
    EventKind.GAS: "gas",
    EventKind.CARBON_MONOXIDE: "co",
    EventKind.FALL: "fall",
}
BUTTON_PRESSES = frozenset({EventKind.SOS, EventKind.MEDICAL, EventKind.PANIC, EventKind.DURESS})
WEARABLES = (PendantDevice, WristbandDevice)  # the kinds a resident wears
ALARM_DETAIL_KEYS = ("code_name", "zone", "user", "room", "qualifier", "severity", "vital", "value", "last_seen_at")
TEST_OVERDUE_REPEAT_S = 86400.0  # an overdue button is reported again each day until tested
BATTERY_RECOVERED_MARGIN = 10  # percent above the limit before a low battery counts as replaced
CARE_CHECK_S = 15.0  # how often time-based rules (inactivity, absence, tests, faults) look again
SMS_WINDOW_S = 3600.0  # the per-recipient SMS limit counts sends in this window
CLOSED_ALARMS_REMEMBERED = 200  # resolved alarms kept in memory so repeated commands get an answer

# care-state keys whose values are times (epoch seconds on the care clock), and the alarm's times
TIMED_STATE = frozenset({"activity", "seen", "test", "overdue", "offline", "fault", "sms", "vital"})
ALARM_TIMES = ("raised_at", "last_at", "delivered_at", "acked_at", "resolved_at", "announced_at", "update_at")
Stamp = Callable[[str, EventKind, dict[str, JsonValue]], Event]  # (device id, kind, data) -> a new event


@dataclass
class Alarm:
    """One alarm's life, kept in the outbox database so that it survives a restart."""

    id: str  # the id of the event that raised it
    kind: str
    device_id: str
    resident: str | None
    storm_key: str | None
    raised_at: float  # epoch seconds
    last_at: float
    count: int = 1
    state: str = "raised"  # raised -> delivered -> acknowledged -> resolved
    delivered_at: float | None = None
    acked_at: float | None = None
    acked_by: str | None = None
    resolved_at: float | None = None
    resolved_by: str | None = None
    resolution: str | None = None
    announced_at: float | None = None  # delivery, or the last re-announcement
    reannounced: int = 0
    count_reported: int = 1
    update_at: float = 0.0
    sms_rounds: int = 0
    sms_due: bool = False
    detail: dict[str, JsonValue] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.state != "resolved"

    @property
    def acknowledged(self) -> bool:
        return self.state in ("acknowledged", "resolved")


def _noted(note: str | None) -> dict[str, JsonValue]:
    """The platform's note on an ack or resolve, for the alarm_update event."""
    return {} if note is None else {"note": note}


def button_number(data: dict[str, JsonValue]) -> JsonValue:
    """The number a Contact ID report names its button by: the zone, or for a user-coded
    report (panic, duress) the user. The one place this is decided."""
    return data.get("zone", data.get("user"))


@dataclass(frozen=True)
class CareCheckpoint:
    state: dict[str, JsonValue]
    alarms: dict[str, Alarm]
    closed: dict[str, Alarm]
    changes: dict[str, JsonValue | None]
    next_check: float


class CareBook:
    """The care rules of the whole station, fed with every event draft and the wall clock.

    Pure logic: no I/O. Everything it must remember across a restart (open alarms, last
    activity, last button test, ...) is kept as JSON values under string keys; the station
    writes `take_changes()` in the same transaction as the events they go with.
    """

    def __init__(self, config: StationConfig, stamp: Stamp) -> None:
        self.config = config
        self.care = config.care
        self.stamp = stamp
        self.zone = zoneinfo.ZoneInfo(config.care.timezone)
        self.residents = {r.id: r for r in config.residents}
        self.devices = {d.id: d for d in config.devices}
        self.state: dict[str, JsonValue] = {}
        self.alarms: dict[str, Alarm] = {}
        # residents some device reports on: inactivity is only judged where activity can be seen
        self._watched = {getattr(d, "resident", None) for d in config.devices} | {
            rid for d in config.devices for rid in getattr(d, "residents", {}).values()
        }
        self._closed: dict[str, Alarm] = {}
        self._changes: dict[str, JsonValue | None] = {}
        self._next_check = 0.0

    # --- persistence ----------------------------------------------------------------------------

    def load(self, state: dict[str, JsonValue]) -> None:
        """Take over what an earlier run left (the outbox's care_state table)."""
        for key, value in state.items():
            if key.startswith("alarm:") and isinstance(value, dict):
                alarm = Alarm(**value)  # type: ignore[arg-type]
                self.alarms[alarm.id] = alarm
            else:
                self.state[key] = value

    def remember(self, key: str, value: JsonValue | None) -> None:
        """Keep a station fact with the care state (written with the next commit)."""
        self._set(key, value)

    def take_changes(self) -> dict[str, JsonValue | None]:
        changes, self._changes = self._changes, {}
        return changes

    def give_back(self, changes: dict[str, JsonValue | None]) -> None:
        """Changes taken for a commit that failed: written with the next one (newer ones win)."""
        self._changes = {**changes, **self._changes}

    def checkpoint(self) -> CareCheckpoint:
        """The book as it is, to go back to when the events of a triage or tick cannot be
        stored: else the alarm would be open here but never reported, and the device's resend
        of the press taken for a repeat of it."""
        return CareCheckpoint(
            dict(self.state),
            {key: dataclasses.replace(alarm) for key, alarm in self.alarms.items()},
            dict(self._closed),
            dict(self._changes),
            self._next_check,
        )

    def rollback(self, checkpoint: CareCheckpoint) -> None:
        self.state = dict(checkpoint.state)
        self.alarms = {key: dataclasses.replace(alarm) for key, alarm in checkpoint.alarms.items()}
        self._closed = dict(checkpoint.closed)
        self._changes = dict(checkpoint.changes)
        self._next_check = checkpoint.next_check

    def _set(self, key: str, value: JsonValue | None) -> None:
        if value is None:
            self.state.pop(key, None)
        else:
            self.state[key] = value
        self._changes[key] = value

    def _save(self, alarm: Alarm) -> None:
        if alarm.open:
            self.alarms[alarm.id] = alarm
            self._changes[f"alarm:{alarm.id}"] = dataclasses.asdict(alarm)
        else:
            self.alarms.pop(alarm.id, None)
            self._changes[f"alarm:{alarm.id}"] = None
            self._closed[alarm.id] = alarm
            while len(self._closed) > CLOSED_ALARMS_REMEMBERED:
                self._closed.pop(next(iter(self._closed)))

    def shift_times(self, seconds: float, since: float) -> None:
        """The care clock moved by `seconds` (the clock was first synchronised in this run):
        move every time this run recorded (at or after `since`, on the old base) with it, so
        that no timer is cut short or stretched by the correction."""

        def moved(value: JsonValue) -> JsonValue:
            if isinstance(value, float | int) and not isinstance(value, bool) and value >= since:
                return value + seconds
            if isinstance(value, list):
                return [moved(v) for v in value]
            if isinstance(value, dict) and "since" in value:
                return {**value, "since": moved(value["since"])}
            return value

        for key, value in list(self.state.items()):
            if key.split(":", 1)[0] in TIMED_STATE:
                self._set(key, moved(value))
        for alarm in list(self.alarms.values()):
            for name in ALARM_TIMES:
                at = getattr(alarm, name)
                if isinstance(at, float | int) and at >= since:
                    setattr(alarm, name, at + seconds)
            self._save(alarm)
        self._next_check += seconds

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
        for kind, data in drafts:
            resident = self.resident_of(device_id, data)
            derived: list[Event] = []  # what the report means, sent after the report itself
            if resident is not None:
                data = {**data, "resident": resident}
                self._note_activity(resident, kind, data, t, derived, device_id)
            self._note_device(device_id, kind, data, t, derived)
            if kind in STORM_FAMILY or kind in OPENS_ALARM:
                self._alarm_report(device_id, kind, data, resident, t, out)
            else:
                out.append(self.stamp(device_id, kind, data))
            out += derived
            if kind is EventKind.VITALS and resident is not None:
                self._check_vitals(device_id, resident, data, t, out)
        return out

    def _note_activity(
        self, resident: str, kind: EventKind, data: dict[str, JsonValue], t: float, out: list[Event], device_id: str
    ) -> None:
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
            self._set(f"activity:{resident}", t)
            for alarm in self._open_of(resident, EventKind.INACTIVITY):
                out.append(self._close(alarm, t, "gateway", "activity", {"activity_kind": kind.value}))
        device = self.devices.get(device_id)
        if isinstance(device, WEARABLES):
            if kind is EventKind.PRESENCE and data.get("state") == "away":
                unseen = data.get("unseen_s")
                self._set(f"seen:{resident}", t - (unseen if isinstance(unseen, int | float) else 0))
            else:
                self._set(f"seen:{resident}", t)
                rssi = data.get("rssi")
                if isinstance(rssi, int):
                    self._set(f"seen_rssi:{resident}", rssi)
                for alarm in self._open_of(resident, EventKind.WEARER_ABSENT):
                    out.append(self._close(alarm, t, "gateway", "wearer_seen", {"device_id": device_id}))

    def _note_device(
        self, device_id: str, kind: EventKind, data: dict[str, JsonValue], t: float, out: list[Event]
    ) -> None:
        if kind is EventKind.DEVICE_OFFLINE and f"offline:{device_id}" not in self.state:
            self._set(f"offline:{device_id}", t)
        elif kind is EventKind.DEVICE_ONLINE:
            self._set(f"offline:{device_id}", None)
            self._set(f"fault:{device_id}", None)
        button = self._button_key(device_id, data) if (kind is EventKind.TEST or kind in BUTTON_PRESSES) else None
        if button is not None:
            self._set(f"test:{button}", t)
            self._set(f"overdue:{button}", None)
        battery = data.get("battery") if kind is not EventKind.VITALS else data.get("percent")
        if kind is EventKind.VITALS and data.get("measurement") != "battery":
            battery = None
        if isinstance(battery, int) and not isinstance(battery, bool):
            low = f"battery_low:{device_id}"
            if battery <= self.care.low_battery_percent and low not in self.state:
                self._set(low, battery)
                found: dict[str, JsonValue] = {"battery": battery, "limit": self.care.low_battery_percent}
                resident = self.resident_of(device_id, data)
                if resident:
                    found["resident"] = resident
                out.append(self.stamp(device_id, EventKind.LOW_BATTERY, found))
            elif battery > self.care.low_battery_percent + BATTERY_RECOVERED_MARGIN and low in self.state:
                self._set(low, None)

    def _alarm_report(
        self,
        device_id: str,
        kind: EventKind,
        data: dict[str, JsonValue],
        resident: str | None,
        t: float,
        out: list[Event],
    ) -> None:
        family = STORM_FAMILY.get(kind)
        who = resident or f"{device_id}:{data.get('account', '')}:{button_number(data)}"  # one button of one panel
        storm_key = f"{who}/{family}" if family else None
        qualifier = data.get("qualifier")
        matching = [a for a in self.alarms.values() if storm_key and a.storm_key == storm_key]
        current = matching[-1] if matching else None  # the newest open alarm of this resident and kind
        if qualifier == "restore":
            same_button = (device_id, button_number(data))
            if current is not None and (current.device_id, button_number(current.detail)) != same_button:
                current = None  # another of the resident's buttons: it does not end this alarm
            event = self.stamp(device_id, kind, {**data, **({"alarm_id": current.id} if current else {})})
            out.append(event)
            if current is not None:
                out.append(self._close(current, t, device_id, "device_restore", {}))
            return
        if qualifier == "still_present" and current is not None:
            current.detail = {**current.detail, "still_present": True}
            current.last_at = t
            self._save(current)
            out.append(self.stamp(device_id, kind, {**data, "alarm_id": current.id}))
            return
        if current is not None and t - current.last_at <= self.care.storm_window_s:
            current.count += 1
            current.last_at = t
            if t - current.update_at >= self.care.alarm_update_interval_s:
                out.append(self._update(current, t, "repeated"))
            self._save(current)
            return
        event = self.stamp(device_id, kind, data)
        out.append(event)
        detail = {k: v for k, v in data.items() if k in ALARM_DETAIL_KEYS}
        alarm = Alarm(
            id=event.id,
            kind=kind.value,
            device_id=device_id,
            resident=resident,
            storm_key=storm_key,
            raised_at=t,
            last_at=t,
            update_at=t,
            detail=detail,
        )
        self._save(alarm)

    def _update(self, alarm: Alarm, t: float, change: str, extra: dict[str, JsonValue] | None = None) -> Event:
        alarm.update_at = t
        alarm.count_reported = alarm.count
        data: dict[str, JsonValue] = {
            "alarm_id": alarm.id,
            "alarm_kind": alarm.kind,
            "change": change,
            "state": alarm.state,
            "count": alarm.count,
            "first_at": utc_text(alarm.raised_at),
            "last_at": utc_text(alarm.last_at),
        }
        if alarm.resident:
            data["resident"] = alarm.resident
        return self.stamp(alarm.device_id, EventKind.ALARM_UPDATE, {**data, **(extra or {})})

    def _close(self, alarm: Alarm, t: float, by: str, resolution: str, extra: dict[str, JsonValue]) -> Event:
        alarm.state, alarm.resolved_at, alarm.resolved_by, alarm.resolution = "resolved", t, by, resolution
        self._save(alarm)
        return self._update(alarm, t, "resolved", {"by": by, "resolution": resolution, **extra})

    def _open_of(self, resident: str, kind: EventKind) -> list[Alarm]:
        return [a for a in list(self.alarms.values()) if a.resident == resident and a.kind == kind.value]

    # --- vital signs ------------------------------------------------------------------------------

    def _check_vitals(
        self, device_id: str, resident: str, data: dict[str, JsonValue], t: float, out: list[Event]
    ) -> None:
        limits = self.residents[resident].vitals
        measurement = data.get("measurement")
        continuous = measurement == "heart_rate" or data.get("continuous") is True
        checks: list[tuple[str, JsonValue, float | None, float | None, float]] = []  # name, value, low, high, band
        if measurement == "heart_rate" and data.get("contact") is not False:
            checks.append(("heart_rate", data.get("bpm"), limits.heart_rate_min, limits.heart_rate_max, 5.0))
        elif measurement == "spo2" and data.get("questionable") is not True:
            checks.append(("spo2", data.get("spo2_percent"), limits.spo2_min, None, 2.0))
        elif measurement == "temperature":
            checks.append(("temperature", data.get("celsius"), limits.temperature_min, limits.temperature_max, 0.3))
        elif measurement == "blood_pressure" and data.get("unit") == "mmHg":
            checks.append(("systolic", data.get("systolic"), limits.systolic_min, limits.systolic_max, 10.0))
        for name, value, low, high, band in checks:
            if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
                continue  # "no value" or an invalid reading never alarms
            key = f"vital:{resident}:{name}"
            entry = self.state.get(key)
            outside = (low is not None and value < low) or (high is not None and value > high)
            back = (low is None or value >= low + band) and (high is None or value <= high - band)
            if outside:
                since = entry.get("since") if isinstance(entry, dict) else None
                since = since if isinstance(since, float | int) else t
                alarmed = isinstance(entry, dict) and entry.get("alarmed") is True
                due = not continuous or t - since >= limits.min_duration_s
                if due and not alarmed:
                    found: dict[str, JsonValue] = {
                        "vital": name,
                        "value": value,
                        "limit_low": low,
                        "limit_high": high,
                        "measurement": measurement,
                        "out_of_range_s": round(t - since),
                        "resident": resident,
                    }
                    self._alarm_report(device_id, EventKind.VITALS_ALERT, found, resident, t, out)
                self._set(key, {"since": since, "alarmed": alarmed or due})
            elif entry is not None and (back or not (isinstance(entry, dict) and entry.get("alarmed") is True)):
                self._set(key, None)  # within limits: the duration starts again; an alarm clears past the band
                for alarm in self._open_of(resident, EventKind.VITALS_ALERT):
                    if alarm.detail.get("vital") == name:
                        out.append(self._close(alarm, t, "gateway", "back_within_limits", {"value": value}))

    # --- time -------------------------------------------------------------------------------------

    def tick(self, now: datetime) -> list[Event]:
        """What time alone decides: re-announcements every second; inactivity, absence, overdue
        tests and faulty devices every CARE_CHECK_S."""
        t = now.timestamp()
        out: list[Event] = []
        for alarm in list(self.alarms.values()):
            self._maybe_reannounce(alarm, t, out)
            if alarm.count > alarm.count_reported and t - alarm.update_at >= self.care.alarm_update_interval_s:
                out.append(self._update(alarm, t, "repeated"))  # the last presses of a storm are counted too
                self._save(alarm)
        if t >= self._next_check:
            self._next_check = t + CARE_CHECK_S
            for resident in self.config.residents:
                if resident.lives_alone and resident.id in self._watched:
                    self._check_inactivity(resident, t, out)
                if resident.dementia_risk:
                    self._check_absence(resident, t, out)
            self._check_tests(t, out)
            self._check_faults(t, out)
        return out

    def _maybe_reannounce(self, alarm: Alarm, t: float, out: list[Event]) -> None:
        if alarm.state != "delivered" or alarm.announced_at is None:
            return
        if alarm.reannounced >= self.care.max_reannouncements:
            return
        if t - alarm.announced_at < self.care.ack_timeout_s:
            return
        alarm.reannounced += 1
        alarm.announced_at = t
        alarm.sms_due = True
        self._save(alarm)
        data: dict[str, JsonValue] = {
            "alarm_id": alarm.id,
            "alarm_kind": alarm.kind,
            "reannouncement": alarm.reannounced,
            "unacknowledged_s": round(t - (alarm.delivered_at or alarm.raised_at)),
            "count": alarm.count,
            "first_at": utc_text(alarm.raised_at),
            **alarm.detail,
        }
        if alarm.resident:
            data["resident"] = alarm.resident
        out.append(self.stamp(alarm.device_id, EventKind.ALARM_REMINDER, data))

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

    def _check_inactivity(self, resident: ResidentSection, t: float, out: list[Event]) -> None:
        last = self.state.get(f"activity:{resident.id}")
        if not isinstance(last, float | int):
            self._set(f"activity:{resident.id}", t)  # supervision starts now
            return
        if self._open_of(resident.id, EventKind.INACTIVITY):
            return
        watched = self.watched_seconds(resident, float(last), t)
        if watched >= resident.inactivity_s:
            data: dict[str, JsonValue] = {
                "resident": resident.id,
                "last_activity_at": utc_text(float(last)),
                "inactive_waking_s": round(watched),
                "window_s": round(resident.inactivity_s),
            }
            device = next((d.id for d in self.config.devices if getattr(d, "resident", None) == resident.id), "gateway")
            self._alarm_report(device, EventKind.INACTIVITY, data, resident.id, t, out)

    def _check_absence(self, resident: ResidentSection, t: float, out: list[Event]) -> None:
        wearables = [d for d in self.config.devices if isinstance(d, WEARABLES) and d.resident == resident.id]
        if not wearables:
            return
        last = self.state.get(f"seen:{resident.id}")
        if not isinstance(last, float | int):
            self._set(f"seen:{resident.id}", t)
            return
        if self._open_of(resident.id, EventKind.WEARER_ABSENT):
            return
        if not in_hours(resident.absence_watch_hours, self._local_minute(t)):
            return
        if t - last >= resident.absent_after_s:
            data: dict[str, JsonValue] = {
                "resident": resident.id,
                "last_seen_at": utc_text(float(last)),
                "unseen_s": round(t - last),
                "last_place": self.config.station.name + (f", {resident.room}" if resident.room else ""),
                "last_rssi": self.state.get(f"seen_rssi:{resident.id}"),
            }
            self._alarm_report(wearables[0].id, EventKind.WEARER_ABSENT, data, resident.id, t, out)

    def _check_tests(self, t: float, out: list[Event]) -> None:
        limit = self.care.button_test_days * 86400
        for button in self.buttons():
            last = self.state.get(f"test:{button}")
            if not isinstance(last, float | int):
                self._set(f"test:{button}", t)  # a new button: its first week starts now
                continue
            reported = self.state.get(f"overdue:{button}")
            if t - last < limit or (isinstance(reported, float | int) and t - reported < TEST_OVERDUE_REPEAT_S):
                continue
            self._set(f"overdue:{button}", t)
            device_id, _, zone = button.partition(":")
            data: dict[str, JsonValue] = {
                "button": button,
                "last_test_at": utc_text(float(last)),
                "days_since_test": round((t - last) / 86400, 1),
                "required_every_days": self.care.button_test_days,
            }
            if zone:
                data["zone"] = int(zone)
            resident = self.resident_of(device_id, {"zone": int(zone)} if zone else {})
            if resident:
                data["resident"] = resident
            out.append(self.stamp(device_id, EventKind.TEST_OVERDUE, data))

    def _check_faults(self, t: float, out: list[Event]) -> None:
        for key, since in list(self.state.items()):
            if not key.startswith("offline:") or not isinstance(since, float | int):
                continue
            device_id = key.removeprefix("offline:")
            if f"fault:{device_id}" in self.state or t - since < self.care.device_fault_after_s:
                continue
            self._set(f"fault:{device_id}", t)
            data: dict[str, JsonValue] = {
                "offline_s": round(t - since),
                "offline_since": utc_text(float(since)),
                "replace_within_s": round(self.care.device_fault_after_s),
                "advice": "substitute the device or arrange manual checks (JGJ/T 484 §10.3)",
            }
            out.append(self.stamp(device_id, EventKind.DEVICE_FAULT, data))

    # --- the platform's side of an alarm's life ------------------------------------------------

    def delivered(self, event_id: str, now: datetime) -> None:
        alarm = self.alarms.get(event_id)
        if alarm is not None and alarm.state == "raised":
            alarm.state, alarm.delivered_at, alarm.announced_at = "delivered", now.timestamp(), now.timestamp()
            self._save(alarm)

    def find(self, alarm_id: str) -> Alarm | None:
        return self.alarms.get(alarm_id) or self._closed.get(alarm_id)

    def acknowledge(self, alarm_id: str, by: str, now: datetime, note: str | None = None) -> tuple[str, list[Event]]:
        """A person took the alarm: stop re-announcing and escalating it. Returns its state."""
        alarm = self.find(alarm_id)
        if alarm is None:
            raise KeyError(alarm_id)
        if alarm.acknowledged:
            return alarm.state, []
        t = now.timestamp()
        alarm.state, alarm.acked_at, alarm.acked_by = "acknowledged", t, by
        alarm.sms_due = False
        self._save(alarm)
        return alarm.state, [self._update(alarm, t, "acknowledged", {"by": by, **_noted(note)})]

    def resolve(
        self, alarm_id: str, by: str, resolution: str, now: datetime, note: str | None = None
    ) -> tuple[str, list[Event]]:
        alarm = self.find(alarm_id)
        if alarm is None:
            raise KeyError(alarm_id)
        if not alarm.open:
            return alarm.state, []
        return "resolved", [self._close(alarm, now.timestamp(), by, resolution, _noted(note))]

    # --- escalation bookkeeping (gateway/escalation.py sends) ---------------------------------

    def due_escalations(self, now: datetime, undelivered_after_s: float) -> list[Alarm]:
        """Alarms to send by SMS now: undelivered for too long (once), or just re-announced."""
        t = now.timestamp()
        due = []
        for alarm in list(self.alarms.values()):
            if alarm.acknowledged:
                continue
            late = alarm.state == "raised" and alarm.sms_rounds == 0 and t - alarm.raised_at >= undelivered_after_s
            if late or alarm.sms_due:
                alarm.sms_rounds += 1
                alarm.sms_due = False
                self._save(alarm)
                due.append(alarm)
        return due

    def recipients(self, alarm: Alarm, on_duty: Sequence[Contact]) -> list[Contact]:
        """The resident's contacts, then the station's on-duty numbers; each number once."""
        contacts = list(self.residents[alarm.resident].contacts) if alarm.resident in self.residents else []
        out: dict[str, Contact] = {}
        for contact in [*contacts, *on_duty]:
            out.setdefault(contact.international, contact)
        return list(out.values())

    def sms_allowed(self, number: str, now: datetime, per_hour: int) -> bool:
        sent = self.state.get(f"sms:{number}")
        recent = (
            [s for s in sent if isinstance(s, float | int) and now.timestamp() - s < SMS_WINDOW_S]
            if isinstance(sent, list)
            else []
        )
        return len(recent) < per_hour

    def sms_sent(self, number: str, now: datetime) -> None:
        t = now.timestamp()
        sent = self.state.get(f"sms:{number}")
        recent = (
            [s for s in sent if isinstance(s, float | int) and t - s < SMS_WINDOW_S] if isinstance(sent, list) else []
        )
        self._set(f"sms:{number}", [*recent, t])
