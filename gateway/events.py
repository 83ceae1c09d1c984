"""The one event vocabulary: what the station reports, how urgent it is, and its JSON form.

An event is an immutable value. Its `id` is a ULID: unique, sortable by creation time, and
stable across re-sends, so the platform drops duplicates by id and the gateway can deliver
at-least-once without the platform ever counting an alarm twice.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, TypeAdapter, ValidationError
from pydantic_core import SchemaValidator
from typing_extensions import TypeAliasType

from gateway.clock import Clock
from gateway.i18n import N_, _

log = logging.getLogger(__name__)

__all__ = [
    "PRIORITY_OF_KIND",
    "PRIORITY_WORDS",
    "ULID_PATTERN",
    "Event",
    "EventKind",
    "Priority",
    "check_data",
    "counts_said",
    "new_event",
]

# JSON values, validated by a plain union: pydantic's JsonValue picks its member with a Python
# callback per value, which costs about a microsecond per event on the ingest path.
Json = TypeAliasType("Json", "str | bool | int | float | list[Json] | dict[str, Json] | None")


class Priority(StrEnum):
    """Delivery class. Alarms overtake everything; status overtakes telemetry."""

    ALARM = "alarm"
    STATUS = "status"
    TELEMETRY = "telemetry"

    @property
    def rank(self) -> int:
        """0 is sent first; the outbox orders its lanes by this number."""
        return _RANK[self]


PRIORITY_WORDS = {Priority.ALARM: N_("alarm"), Priority.STATUS: N_("status"), Priority.TELEMETRY: N_("telemetry")}


def counts_said(counts: Mapping[Priority, int], skip_zero: bool = False) -> str:
    """'3 alarm, 0 status, 120 telemetry' in the station's language, for the journal and the CLI."""
    return ", ".join(f"{n} {_(PRIORITY_WORDS[p])}" for p, n in counts.items() if n or not skip_zero)


_RANK = {Priority.ALARM: 0, Priority.STATUS: 1, Priority.TELEMETRY: 2}


class EventKind(StrEnum):
    """What happened. Each kind has one default priority, decided in PRIORITY_OF_KIND."""

    SOS = "sos"  # personal emergency button (Contact ID 101)
    MEDICAL = "medical"  # Contact ID 100
    PANIC = "panic"  # Contact ID 120
    DURESS = "duress"  # Contact ID 121, 124, 125
    FIRE = "fire"  # Contact ID 110-118 (fire, smoke, combustion, heat, ...) and 158 high temperature
    GAS = "gas"  # Contact ID 151 gas detected
    CARBON_MONOXIDE = "carbon_monoxide"  # Contact ID 162
    FALL = "fall"  # fall sensors (radar issue)
    TROUBLE = "trouble"  # device or panel trouble (Contact ID 1xx non-alarm, 3xx)
    TEST = "test"  # periodic / manual test reports (Contact ID 60x)
    PANEL_EVENT = "panel_event"  # any other Contact ID report, passed on verbatim
    DEVICE_OFFLINE = "device_offline"  # the gateway lost a device (port vanished, no answer)
    DEVICE_ONLINE = "device_online"  # the gateway has (re)gained a device
    GATEWAY_STARTED = "gateway_started"  # the daemon started (boot id, run id, version)
    CONFIG_RELOADED = "config_reloaded"  # SIGHUP: the station runs on, with a new station file
    STORAGE_FAULT = "storage_fault"  # the outbox was corrupt (moved aside, salvaged) or the disk is full
    ACTIVITY = "activity"  # presence / movement readings of a room or a wearer (telemetry)
    LOCATION = "location"  # a mobile station's GPS fix was acquired or lost
    PRESENCE = "presence"  # a wearer's wearable was seen again, or has not been seen for a while
    VISIT = "visit"  # a caregiver's visit started or ended (with its duration)
    VITALS = "vitals"  # a health measurement: blood pressure, temperature, SpO2, weight, heart rate
    BLE_RADIO = "ble_radio"  # the Bluetooth scanner was restarted or the adapter reset after silence
    INACTIVITY = "inactivity"  # a resident living alone showed no activity in waking hours
    WEARER_ABSENT = "wearer_absent"  # the wearable of a resident at risk of wandering is unseen
    VITALS_ALERT = "vitals_alert"  # a vital sign beyond the resident's limits
    ALARM_REMINDER = "alarm_reminder"  # an alarm not acknowledged in time, announced again
    ALARM_UPDATE = "alarm_update"  # an alarm's life: repeats counted, acknowledged, resolved
    LOW_BATTERY = "low_battery"  # a device's battery at or below the configured percent
    TEST_OVERDUE = "test_overdue"  # an emergency button not tested within the configured days
    DEVICE_FAULT = "device_fault"  # a device offline longer than the replacement deadline
    SMS = "sms"  # one SMS escalation attempt: sent, failed (modem error code) or held back
    CLOCK = "clock"  # the wall clock was synchronised (waiting events re-based) or jumped


PRIORITY_OF_KIND: dict[EventKind, Priority] = {
    EventKind.SOS: Priority.ALARM,
    EventKind.MEDICAL: Priority.ALARM,
    EventKind.PANIC: Priority.ALARM,
    EventKind.DURESS: Priority.ALARM,
    EventKind.FIRE: Priority.ALARM,
    EventKind.GAS: Priority.ALARM,
    EventKind.CARBON_MONOXIDE: Priority.ALARM,
    EventKind.FALL: Priority.ALARM,
    EventKind.TROUBLE: Priority.STATUS,
    EventKind.TEST: Priority.STATUS,
    EventKind.PANEL_EVENT: Priority.STATUS,
    EventKind.DEVICE_OFFLINE: Priority.STATUS,
    EventKind.DEVICE_ONLINE: Priority.STATUS,
    EventKind.GATEWAY_STARTED: Priority.STATUS,
    EventKind.CONFIG_RELOADED: Priority.STATUS,
    EventKind.STORAGE_FAULT: Priority.STATUS,
    EventKind.ACTIVITY: Priority.TELEMETRY,
    EventKind.LOCATION: Priority.STATUS,
    EventKind.PRESENCE: Priority.TELEMETRY,
    EventKind.VISIT: Priority.STATUS,
    EventKind.VITALS: Priority.TELEMETRY,
    EventKind.BLE_RADIO: Priority.STATUS,
    EventKind.INACTIVITY: Priority.ALARM,
    EventKind.WEARER_ABSENT: Priority.ALARM,
    EventKind.VITALS_ALERT: Priority.ALARM,
    EventKind.ALARM_REMINDER: Priority.ALARM,
    EventKind.ALARM_UPDATE: Priority.STATUS,
    EventKind.LOW_BATTERY: Priority.STATUS,
    EventKind.TEST_OVERDUE: Priority.STATUS,
    EventKind.DEVICE_FAULT: Priority.STATUS,
    EventKind.SMS: Priority.STATUS,
    EventKind.CLOCK: Priority.STATUS,
}

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"


_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> 2 characters


def _encode_random_half(value: int) -> str:
    """The low 40 bits of value as 8 Crockford characters (unrolled: this runs for every event)."""
    p = _PAIRS
    return p[value >> 30 & 0x3FF] + p[value >> 20 & 0x3FF] + p[value >> 10 & 0x3FF] + p[value & 0x3FF]


def _encode_time(ms: int) -> str:
    """The 48-bit millisecond time as 10 Crockford characters."""
    return "".join([_PAIRS[(ms >> (10 * i)) & 0x3FF] for i in range(4, -1, -1)])


class _UlidFactory:
    """ULIDs (48-bit ms time + 80 bits), strictly increasing within one process.

    The 80 bits are 40 random bits drawn once per process (seeded from os.urandom) and a
    40-bit counter that starts at a random value and counts every id: unique within the
    process (the counter), between restarts and stations (the random half), sortable (time
    first, then the counter; if the clock steps back the last time is kept). Ids must be
    unique, not secret: and since consecutive ids share their random half, a batch of events
    compresses to about half the bytes it would with 80 fresh random bits each (narrow links:
    docs/mqtt.md, "Batches").
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        source = random.Random(os.urandom(16))
        self._high = source.getrandbits(40)
        self._count = source.getrandbits(39)  # (headroom before the counter carries into the half)
        self._ms = -1
        self._prefix = ""  # time + the random half, as text

    def new(self, ms: int) -> str:
        with self._lock:
            if ms > self._ms or not self._prefix:
                self._ms = ms
                self._prefix = _encode_time(ms) + _encode_random_half(self._high)
            self._count += 1
            if self._count >> 40:  # (after 2^39 ids at the least: a new random half)
                self._count &= (1 << 40) - 1
                self._high = (self._high + 1) & ((1 << 40) - 1)
                self._prefix = _encode_time(self._ms) + _encode_random_half(self._high)
            return self._prefix + _encode_random_half(self._count)


_ulids = _UlidFactory()


class _Rfc3339:
    """2026-11-23T08:30:15.123Z (UTC, milliseconds).

    Runs for every event serialised; strftime is slow, so the text up to the second is
    remembered and only the milliseconds are formatted.
    """

    def __init__(self) -> None:
        self._last: tuple[tuple[int, ...], str] = ((), "")  # one tuple: swapped atomically

    def __call__(self, ts: datetime) -> str:
        if ts.tzinfo is not UTC:
            ts = ts.astimezone(UTC)
        second = (ts.second, ts.minute, ts.hour, ts.day, ts.month, ts.year)
        last_second, prefix = self._last
        if second != last_second:
            prefix = f"{ts:%Y-%m-%dT%H:%M:%S}."
            self._last = (second, prefix)
        return f"{prefix}{ts.microsecond // 1000:03d}Z"


_rfc3339 = _Rfc3339()


Timestamp = Annotated[datetime, PlainSerializer(_rfc3339, return_type=str, when_used="json")]


class Event(BaseModel):
    """One thing the station reports to the platform. Immutable; compare whole values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=ULID_PATTERN, description="ULID: unique, time-sortable, same on every re-send")
    station_id: str = Field(description="The station that accepted the event ([station] id)")
    device_id: str = Field(description="The configured device it came from, or 'gateway'")
    kind: EventKind = Field(description="What happened")
    priority: Priority = Field(description="Delivery class: alarm, status or telemetry")
    ts: Timestamp = Field(description="When the gateway accepted it, RFC 3339 UTC")
    clock_trusted: bool = Field(
        description="False while the gateway's clock was not yet synchronised (no RTC, no NTP yet)"
    )
    data: dict[str, Json] = Field(default_factory=dict, description="Kind-specific details")

    def to_json(self) -> str:
        return self.model_dump_json()


class _DataCheck:
    """Checks each event's `data` against its kind's model (gateway/payloads.py, the published
    schema) before the event is accepted.

    A breach is a builder's mistake, never the sender's: the event is still accepted and sent
    (an alarm is not dropped for a field name), the journal names the kind, the device and the
    field, once per kind and field, and `breaches` counts it for the status (`off_contract`).
    The validators are pydantic's compiled ones, in strict mode so that what is checked is the
    value that is stored (no "3" taken for 3): about a microsecond an event (docs/performance.md).
    """

    def __init__(self) -> None:
        self._validators: dict[EventKind, SchemaValidator] = {}
        self._named: set[tuple[str, str]] = set()
        self.breaches: dict[str, int] = {}

    def __call__(self, kind: EventKind, device_id: str, data: dict[str, Any]) -> None:
        validator = self._validators.get(kind)
        if validator is None:
            from gateway.payloads import DATA_OF_KIND  # (payloads imports this module)

            validator = self._validators[kind] = SchemaValidator(TypeAdapter(DATA_OF_KIND[kind.value]).core_schema)
        try:
            validator.validate_python(data, strict=True)
        except ValidationError as exc:
            self.breaches[kind.value] = self.breaches.get(kind.value, 0) + 1
            where = ", ".join(".".join(str(p) for p in error["loc"]) or "data" for error in exc.errors()[:3])
            if (kind.value, where) not in self._named:
                self._named.add((kind.value, where))
                log.error(
                    _(
                        "event %s of device %r does not match its published data schema at %s (%s); it is sent "
                        "all the same, and counted in the status (off_contract): please report this as a bug"
                    ),
                    kind.value,
                    device_id,
                    where,
                    exc.errors()[0]["msg"],
                )


check_data = _DataCheck()
_FIELDS_SET = frozenset(Event.model_fields)  # every field is given
_new_model = object.__new__
_set = object.__setattr__


def new_event(
    clock: Clock,
    station_id: str,
    device_id: str,
    kind: EventKind,
    data: dict[str, Any] | None = None,
    priority: Priority | None = None,
) -> Event:
    """Stamp a new event with an id, the time and the clock's trust; priority from the kind.

    `data` is checked against its kind's schema (check_data). The envelope is built here from
    values this function made or typed itself, so it is set without pydantic's validation of
    it (2 µs an event on the ingest path); tests pin that the result equals the validated model.
    """
    data = data or {}
    check_data(kind, device_id, data)
    ms = int(clock.now().timestamp() * 1000)
    event = _new_model(Event)
    _set(
        event,
        "__dict__",
        {
            "id": _ulids.new(ms),
            "station_id": station_id,
            "device_id": device_id,
            "kind": kind,
            "priority": priority or PRIORITY_OF_KIND[kind],
            "ts": datetime.fromtimestamp(ms / 1000, UTC),  # the wire carries milliseconds (exact: see tests)
            "clock_trusted": clock.trusted(),
            "data": data,
        },
    )
    _set(event, "__pydantic_fields_set__", _FIELDS_SET)  # (read-only: a frozen model is never assigned to)
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event
