"""An alarm and its life: raised, delivered, acknowledged, resolved.

A report that opens an alarm (a press, a fall, an inactivity the care rules found) becomes an
`Alarm`; repeats of it within the storm window are counted into it (one `alarm_update` per
`alarm_update_interval_s`, not one alarm per press); the broker's PUBACK makes it delivered,
the platform's `ack` acknowledged and its `resolve`, the device's restore or the care rules'
"back to normal" resolved. Until acknowledged it is re-announced every `ack_timeout_s` and
each re-announcement is due by SMS (gateway/escalation.py sends, rate-limited per number here).
Everything lives in the typed care state (gateway/care_state.py) and is written with the
commit it goes with. Pure logic: no I/O, time comes from the station's clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import JsonValue

from gateway.clock import utc_text
from gateway.config import CareSection, Contact, ResidentSection
from gateway.events import Event, EventKind

if TYPE_CHECKING:
    from gateway.care_state import CareState

__all__ = [
    "OPENS_ALARM",
    "STORM_FAMILY",
    "Alarm",
    "AlarmBook",
    "AlarmState",
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
STORM_FAMILY = {  # repeats of one family from one resident (or one button) within the window fold
    EventKind.SOS: "button",
    EventKind.MEDICAL: "button",
    EventKind.PANIC: "button",
    EventKind.DURESS: "button",
    EventKind.FIRE: "fire",
    EventKind.GAS: "gas",
    EventKind.CARBON_MONOXIDE: "co",
    EventKind.FALL: "fall",
}
ALARM_DETAIL_KEYS = ("code_name", "zone", "user", "room", "qualifier", "severity", "vital", "value", "last_seen_at")
SMS_WINDOW_S = 3600.0  # the per-recipient SMS limit counts sends in this window
CLOSED_ALARMS_REMEMBERED = 200  # resolved alarms kept in memory so repeated commands get an answer

AlarmState = Literal["raised", "delivered", "acknowledged", "resolved"]
Stamp = Callable[[str, EventKind, dict[str, JsonValue]], Event]  # (device id, kind, data) -> a new event


def button_number(data: Mapping[str, JsonValue]) -> JsonValue:
    """The number a Contact ID report names its button by: the zone, or for a user-coded
    report (panic, duress) the user. The one place this is decided."""
    return data.get("zone", data.get("user"))


@dataclass
class Alarm:
    """One alarm's life, kept with the care state so that it survives a restart."""

    id: str  # the id of the event that raised it
    kind: str
    device_id: str
    resident: str | None
    storm_key: str | None
    raised_at: float  # epoch seconds on the care clock
    last_at: float
    count: int = 1
    state: AlarmState = "raised"
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
    buttons: list[str] = field(default_factory=list)  # "<device>:<number>" of every press it counts

    TIMES = ("raised_at", "last_at", "delivered_at", "acked_at", "resolved_at", "announced_at", "update_at")

    @property
    def open(self) -> bool:
        return self.state != "resolved"

    @property
    def acknowledged(self) -> bool:
        return self.state in ("acknowledged", "resolved")


def _button(device_id: str, data: Mapping[str, JsonValue]) -> str:
    """One button: a receiver's zone (or user), a pendant, a radar (its number is None)."""
    return f"{device_id}:{button_number(data)}"


def _buttons_of(alarm: Alarm) -> list[str]:
    """The buttons an alarm counts, the one that raised it first (an alarm stored before
    `buttons` was kept knows only that one)."""
    return alarm.buttons or [_button(alarm.device_id, alarm.detail)]


def _noted(note: str | None) -> dict[str, JsonValue]:
    """The platform's note on an ack or resolve, for the alarm_update event."""
    return {} if note is None else {"note": note}


class AlarmBook:
    """The open alarms of the station (in the care state) and the recently closed ones."""

    def __init__(
        self, care: CareSection, residents: Mapping[str, ResidentSection], state: CareState, stamp: Stamp
    ) -> None:
        self.care = care
        self.residents = residents
        self.state = state
        self.stamp = stamp
        self.closed: dict[str, Alarm] = {}

    # --- raised ---------------------------------------------------------------------------------

    def report(
        self, device_id: str, kind: EventKind, data: dict[str, JsonValue], resident: str | None, t: float
    ) -> list[Event]:
        """What a report of an alarm kind commits: a new alarm, a repeat counted into the open
        one, a "still present" noted on it, or the device's restore that ends it."""
        family = STORM_FAMILY.get(kind)
        who = resident or f"{device_id}:{data.get('account', '')}:{button_number(data)}"  # one button of one panel
        storm_key = f"{who}/{family}" if family else None
        matching = [a for a in self.state.alarms.values() if storm_key and a.storm_key == storm_key]
        current = matching[-1] if matching else None  # the newest open alarm of this resident and kind
        qualifier = data.get("qualifier")
        if qualifier == "restore":
            return self._restore(device_id, kind, data, storm_key, current, t)
        if qualifier == "still_present" and current is not None:
            alarm = self.state.alarm(current.id)
            alarm.detail = {**alarm.detail, "still_present": True}
            alarm.last_at = t
            return [self.stamp(device_id, kind, {**data, "alarm_id": alarm.id})]
        if current is not None and t - current.last_at <= self.care.storm_window_s:
            alarm = self.state.alarm(current.id)
            alarm.count += 1
            alarm.last_at = t
            if _button(device_id, data) not in alarm.buttons:
                alarm.buttons = [*alarm.buttons, _button(device_id, data)]
            if t - alarm.update_at >= self.care.alarm_update_interval_s:
                return [self._update(alarm, t, "repeated")]
            return []
        event = self.stamp(device_id, kind, data)
        self.state.add_alarm(
            Alarm(
                id=event.id,
                kind=kind.value,
                device_id=device_id,
                resident=resident,
                storm_key=storm_key,
                raised_at=t,
                last_at=t,
                update_at=t,
                detail={k: v for k, v in data.items() if k in ALARM_DETAIL_KEYS},
                buttons=[_button(device_id, data)],
            )
        )
        return [event]

    def _restore(
        self,
        device_id: str,
        kind: EventKind,
        data: dict[str, JsonValue],
        storm_key: str | None,
        current: Alarm | None,
        t: float,
    ) -> list[Event]:
        """A device's restore names the alarm its press raised or was counted into (`alarm_id`),
        open or resolved in the meantime; it ends the alarm only when it is the restore of the
        button that raised it (another button of the resident, whose press was counted into the
        alarm, does not end it). A restore of a press the station never saw (made while it was
        down, or before its port was open) carries no alarm_id."""
        button = _button(device_id, data)
        candidates = [current] if current is not None else []
        if storm_key is not None:
            candidates += reversed([a for a in self.closed.values() if a.storm_key == storm_key])
        belongs = next((a for a in candidates if button in _buttons_of(a)), None)
        out = [self.stamp(device_id, kind, {**data, **({"alarm_id": belongs.id} if belongs else {})})]
        if current is not None and _buttons_of(current)[:1] == [button]:
            out.append(self.close(current, t, device_id, "device_restore", {}))
        return out

    def open_of(self, resident: str, kind: EventKind) -> list[Alarm]:
        return [a for a in self.state.alarms.values() if a.resident == resident and a.kind == kind.value]

    def close(self, alarm: Alarm, t: float, by: str, resolution: str, extra: dict[str, JsonValue]) -> Event:
        alarm = self.state.alarm(alarm.id)
        alarm.state, alarm.resolved_at, alarm.resolved_by, alarm.resolution = "resolved", t, by, resolution
        event = self._update(alarm, t, "resolved", {"by": by, "resolution": resolution, **extra})
        self.state.drop_alarm(alarm.id)
        self.closed[alarm.id] = alarm
        while len(self.closed) > CLOSED_ALARMS_REMEMBERED:
            self.closed.pop(next(iter(self.closed)))
        return event

    def _update(self, alarm: Alarm, t: float, change: str, extra: dict[str, JsonValue] | None = None) -> Event:
        """The alarm_update event of a change (the alarm is one taken for change)."""
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

    # --- time -------------------------------------------------------------------------------------

    def tick(self, t: float) -> list[Event]:
        """Re-announcements of delivered, unacknowledged alarms, and the last presses of a storm
        counted."""
        out: list[Event] = []
        for alarm in list(self.state.alarms.values()):
            out += self._maybe_reannounce(alarm, t)
            if alarm.count > alarm.count_reported and t - alarm.update_at >= self.care.alarm_update_interval_s:
                out.append(self._update(self.state.alarm(alarm.id), t, "repeated"))
        return out

    def _maybe_reannounce(self, alarm: Alarm, t: float) -> list[Event]:
        if alarm.state != "delivered" or alarm.announced_at is None:
            return []
        if alarm.reannounced >= self.care.max_reannouncements or t - alarm.announced_at < self.care.ack_timeout_s:
            return []
        alarm = self.state.alarm(alarm.id)
        alarm.reannounced += 1
        alarm.announced_at = t
        alarm.sms_due = True
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
        return [self.stamp(alarm.device_id, EventKind.ALARM_REMINDER, data)]

    # --- the platform's side ----------------------------------------------------------------------

    def delivered(self, alarm_id: str, now: datetime) -> None:
        """The broker has it (PUBACK): the platform now has to acknowledge it."""
        t = now.timestamp()
        found = self.state.alarms.get(alarm_id)
        if found is not None and found.state == "raised":
            alarm = self.state.alarm(alarm_id)
            alarm.state, alarm.delivered_at, alarm.announced_at = "delivered", t, t

    def find(self, alarm_id: str) -> Alarm | None:
        return self.state.alarms.get(alarm_id) or self.closed.get(alarm_id)

    def acknowledge(self, alarm_id: str, by: str, now: datetime, note: str | None = None) -> tuple[str, list[Event]]:
        """A person took the alarm: stop re-announcing and escalating it. Returns its state."""
        found = self.find(alarm_id)
        if found is None:
            raise KeyError(alarm_id)
        if found.acknowledged:
            return found.state, []
        t = now.timestamp()
        alarm = self.state.alarm(alarm_id)
        alarm.state, alarm.acked_at, alarm.acked_by = "acknowledged", t, by
        alarm.sms_due = False
        return alarm.state, [self._update(alarm, t, "acknowledged", {"by": by, **_noted(note)})]

    def resolve(
        self, alarm_id: str, by: str, resolution: str, now: datetime, note: str | None = None
    ) -> tuple[str, list[Event]]:
        found = self.find(alarm_id)
        if found is None:
            raise KeyError(alarm_id)
        if not found.open:
            return found.state, []
        return "resolved", [self.close(found, now.timestamp(), by, resolution, _noted(note))]

    # --- escalation (gateway/escalation.py sends) -------------------------------------------------

    def due_escalations(self, now: datetime, undelivered_after_s: float) -> list[Alarm]:
        """Alarms to send by SMS now: undelivered for too long (once), or just re-announced."""
        t = now.timestamp()
        due = []
        for found in list(self.state.alarms.values()):
            if found.acknowledged:
                continue
            late = found.state == "raised" and found.sms_rounds == 0 and t - found.raised_at >= undelivered_after_s
            if late or found.sms_due:
                alarm = self.state.alarm(found.id)
                alarm.sms_rounds += 1
                alarm.sms_due = False
                due.append(alarm)
        return due

    def recipients(self, alarm: Alarm, on_duty: Sequence[Contact]) -> list[Contact]:
        """The resident's contacts, then the station's on-duty numbers; each number once."""
        resident = self.residents.get(alarm.resident or "")
        contacts = list(resident.contacts) if resident else []
        out: dict[str, Contact] = {}
        for contact in [*contacts, *on_duty]:
            out.setdefault(contact.international, contact)
        return list(out.values())

    def sms_allowed(self, number: str, now: datetime, per_hour: int) -> bool:
        t = now.timestamp()
        recent = [s for s in self.state.sms_sent.get(number, ()) if t - s < SMS_WINDOW_S]
        return len(recent) < per_hour

    def sms_sent(self, number: str, now: datetime) -> None:
        t = now.timestamp()
        recent = [s for s in self.state.sms_sent.get(number, ()) if t - s < SMS_WINDOW_S]
        self.state.note_sms(number, (*recent, t))
