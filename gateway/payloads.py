"""What `data` holds for each event kind: the data contract a platform codes against.

`care-gateway schema` (docs/event.schema.json) is generated from these models and from the
event model (gateway/events.py): one schema per kind, told apart by `kind`, every field of
`data` named and typed, nothing else allowed. The vitals models are derived from the GATT
measurement types themselves (drivers/gatt.py), so a field added to a measurement is in the
schema at once. The tests validate every event the end-to-end tests deliver against the
published schema; the daemon does not validate `data` on the ingest path (its builders are
pinned by those tests).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from datetime import datetime, time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from drivers.gatt import MEASUREMENT_NAMES
from gateway.events import PRIORITY_OF_KIND, Event, EventKind

__all__ = [
    "DATA_OF_KIND",
    "SCHEMA_ID",
    "ContactIdData",
    "event_json_schema",
    "event_models",
]

SCHEMA_ID = "https://github.com/care-gateway/care-gateway/docs/event.schema.json"

Number = int | float


class _Data(BaseModel):
    """Fields any event may carry: whose it is, and its time before the clock was synchronised."""

    model_config = ConfigDict(extra="forbid")

    resident: str | None = Field(None, description="the resident the device or button belongs to ([[residents]] id)")
    ts_unsynced: str | None = Field(
        None, description="the event's first `ts`, taken before the clock was synchronised (re-based events)"
    )


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lat: float
    lon: float
    source: Literal["gps", "gps_last_known", "configured"]
    fix_age_s: int | None = None


class _AlarmData(_Data):
    location: Location | None = Field(None, description="where the station is, when it knows")
    alarm_id: str | None = Field(None, description="the alarm a restore or a still-present report belongs to")


class ContactIdData(_AlarmData):
    """A Contact ID report of a receiver (docs/mqtt.md, "Contact ID fields")."""

    protocol: Literal["contact_id"]
    code: int = Field(ge=0, le=999)
    code_name: str
    qualifier: Literal["new", "restore", "still_present"]
    account: str
    group: int
    zone: int | None = Field(None, description="the zone (absent when the code names a user)")
    user: int | None = Field(None, description="the user (only for codes that name one)")
    receiver: int
    line: int


class PendantPressData(_AlarmData):
    source: Literal["ble_pendant"]
    button: str = Field(description="the BTHome button event, or 'trigger' for an iBeacon trigger slot")
    wearer: str | None = Field(None, description="a person's name: only with [uplink] share_personal_data = true")
    battery: int | None = None


class FallData(_AlarmData):
    qualifier: Literal["new", "still_present", "restore"]
    severity: Literal["high", "critical"] | None = None
    detector: Literal["mmwave"] | None = None
    presence: bool | None = None
    motion: str | None = None
    room: str | None = None
    not_moved_since_fall: bool | None = None
    seconds_since_fall: int | None = None
    fall_lasted_s: int | None = None


class ReasonData(_Data):
    reason: str


class StartedData(_Data):
    version: str
    boot_id: str
    run_id: str


class StorageFaultData(_Data):
    fault: Literal[
        "corrupt_database",
        "damaged_wal",
        "bad_row",
        "disk_full",
        "disk_reserve_used",
        "disk_space_back",
        "disk_full_at_start",
        "care_state_unreadable",
    ]
    detail: str | list[str] | None = None
    moved_aside: str | None = None
    salvaged_events: int | None = None
    rejected_rows: int | None = None
    bad_frame: int | None = None
    lost_commits: int | None = None
    lost_frames: int | None = None
    kept: str | None = None
    recovered_events: int | None = None
    seq: int | None = None
    class_: str | None = Field(None, alias="class")
    reason: str | None = None
    bytes: int | None = None
    free_bytes: int | None = None
    events: int | None = None
    why: str | None = None
    rows: int | None = None


class ActivitySummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    period_s: int
    present_s: int
    moving_s: int
    movement_mean: float | None
    movement_max: int | None


class ActivityData(_Data):
    """A radar's presence and motion (on change, or a summary), or a wearable's movement."""

    presence: bool | None = None
    motion: str | None = None
    room: str | None = None
    change: Literal[True] | None = None
    summary: ActivitySummary | None = None
    wearer: str | None = Field(None, description="a person's name: only with [uplink] share_personal_data = true")
    moving: bool | None = None
    battery: int | None = None


class PresenceData(_Data):
    state: Literal["present", "away"]
    wearer: str | None = Field(None, description="a person's name: only with [uplink] share_personal_data = true")
    rssi: int | None = None
    unseen_s: int | None = None


class VisitData(_Data):
    caregiver: str | None = Field(None, description="a person's name: only with [uplink] share_personal_data = true")
    visit: Literal["started", "ended"]
    duration_s: int | None = None


class BleRadioData(_Data):
    action: Literal["scan_restarted", "adapter_reset", "scan_fallback_active"]
    silent_s: int | None = None
    ok: bool | None = None


class LocationData(_Data):
    fix: Literal["acquired", "lost"]
    lat: float | None = None
    lon: float | None = None
    satellites: int | None = None
    seconds_without_fix: int | None = None
    last_lat: float | None = None
    last_lon: float | None = None


class InactivityData(_AlarmData):
    last_activity_at: str
    inactive_waking_s: int
    window_s: int


class WearerAbsentData(_AlarmData):
    last_seen_at: str
    unseen_s: int
    last_place: str | None = Field(
        None, description="the station's name and the resident's room: only with [uplink] share_personal_data = true"
    )
    last_rssi: int | None = None


class VitalsAlertData(_AlarmData):
    vital: Literal["heart_rate", "spo2", "temperature", "systolic"]
    value: Number
    limit_low: Number | None
    limit_high: Number | None
    measurement: str
    out_of_range_s: int


class _AlarmDetail(_AlarmData):
    """What an alarm keeps of the report that raised it (gateway/alarms.py ALARM_DETAIL_KEYS)."""

    code_name: str | None = None
    zone: int | None = None
    user: int | None = None
    room: str | None = None
    qualifier: str | None = None
    severity: str | None = None
    vital: str | None = None
    value: Number | None = None
    last_seen_at: str | None = None
    still_present: bool | None = None


class AlarmReminderData(_AlarmDetail):
    alarm_kind: str
    reannouncement: int
    unacknowledged_s: int
    count: int
    first_at: str


class AlarmUpdateData(_Data):
    alarm_id: str
    alarm_kind: str
    change: Literal["repeated", "acknowledged", "resolved"]
    state: Literal["raised", "delivered", "acknowledged", "resolved"]
    count: int
    first_at: str
    last_at: str
    by: str | None = None
    resolution: str | None = None
    note: str | None = None
    activity_kind: str | None = None
    device_id: str | None = None
    value: Number | None = None


class LowBatteryData(_Data):
    battery: int
    limit: int


class TestOverdueData(_Data):
    button: str
    zone: int | None = None
    last_test_at: str
    days_since_test: float
    required_every_days: int


class DeviceFaultData(_Data):
    offline_s: int
    offline_since: str
    replace_within_s: int
    advice: str


class SmsData(_Data):
    alarm_id: str
    alarm_kind: str
    round: int
    to_name: str | None = Field(None, description="a person's name: only with [uplink] share_personal_data = true")
    to_role: str
    to: str = Field(description="the number, masked: +86138****8000")
    result: Literal["sent", "failed", "held_back", "skipped"]
    attempts: int
    message_refs: list[int] | None = None
    parts: int | None = None
    error: str | None = None
    error_code: int | None = None
    reason: str | None = None


class ClockData(_Data):
    change: Literal["synchronised", "jump"]
    boot_id: str
    correction_s: float | None = None
    rebased_events: int | None = None
    jump_s: float | None = None
    clock_trusted: bool | None = None


def _json_type(annotation: Any) -> Any:
    """A measurement field's type as it is on the wire (times as text, tuples as lists)."""
    if annotation in (datetime, time):
        return str
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return typing.Union[tuple(_json_type(a) for a in typing.get_args(annotation))]  # noqa: UP007
    if origin is tuple:
        return list[typing.get_args(annotation)[0]]  # type: ignore[misc]
    return annotation


def _vitals_model(measurement: type, name: str) -> type[BaseModel]:
    """The `vitals` data of one GATT measurement type, from its dataclass fields."""
    hints = typing.get_type_hints(measurement)
    fields: dict[str, Any] = {
        "measurement": (Literal[name], ...),
        "wearer": (
            str | None,
            Field(None, description="a person's name: only with [uplink] share_personal_data = true"),
        ),
    }
    for f in dataclasses.fields(measurement):
        optional = f.default is not dataclasses.MISSING
        fields[f.name] = (_json_type(hints[f.name]) | None, None) if optional else (_json_type(hints[f.name]), ...)
    model: type[BaseModel] = create_model(f"Vitals{measurement.__name__}", __base__=_Data, **fields)
    return model


VITALS_MODELS = [_vitals_model(kind, name) for kind, name in MEASUREMENT_NAMES.items()]
VitalsData: Any = Annotated[Union[tuple(VITALS_MODELS)], Field(discriminator="measurement")]  # noqa: UP007

DATA_OF_KIND: dict[str, Any] = {
    "sos": ContactIdData | PendantPressData,
    "medical": ContactIdData,
    "panic": ContactIdData,
    "duress": ContactIdData,
    "fire": ContactIdData,
    "gas": ContactIdData,
    "carbon_monoxide": ContactIdData,
    "fall": FallData,
    "trouble": ContactIdData,
    "test": ContactIdData,
    "panel_event": ContactIdData,
    "device_offline": ReasonData,
    "device_online": ReasonData,
    "gateway_started": StartedData,
    "config_reloaded": StartedData,
    "storage_fault": StorageFaultData,
    "activity": ActivityData,
    "location": LocationData,
    "presence": PresenceData,
    "visit": VisitData,
    "vitals": VitalsData,
    "ble_radio": BleRadioData,
    "inactivity": InactivityData,
    "wearer_absent": WearerAbsentData,
    "vitals_alert": VitalsAlertData,
    "alarm_reminder": AlarmReminderData,
    "alarm_update": AlarmUpdateData,
    "low_battery": LowBatteryData,
    "test_overdue": TestOverdueData,
    "device_fault": DeviceFaultData,
    "sms": SmsData,
    "clock": ClockData,
}


def event_models() -> list[type[BaseModel]]:
    """One event model per kind: the event's fields, `kind` and `priority` fixed, `data` typed."""
    out: list[type[BaseModel]] = []
    for kind in EventKind:
        fields: dict[str, Any] = {
            "kind": (Literal[kind.value], Field(description="What happened")),
            "priority": (Literal[PRIORITY_OF_KIND[kind].value], Field(description="Delivery class")),
            "data": (DATA_OF_KIND[kind.value], Field(description="Kind-specific details")),
        }
        name = "".join(part.title() for part in kind.value.split("_")) + "Event"
        doc = f"A `{kind.value}` event ({PRIORITY_OF_KIND[kind].value})."
        out.append(create_model(name, __base__=Event, __doc__=doc, **fields))
    return out


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of one event as published (docs/event.schema.json is generated from it):
    one branch per kind, told apart by `kind`."""
    from pydantic import TypeAdapter

    union: Any = Annotated[Union[tuple(event_models())], Field(discriminator="kind")]  # noqa: UP007
    schema = TypeAdapter(union).json_schema(mode="serialization", by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "care-gateway event"
    schema["description"] = (
        "One event as the station publishes it (docs/mqtt.md). `kind` says which branch applies; "
        "`data` is defined per kind, and holds no field not named here."
    )
    for definition in schema.get("$defs", {}).values():
        ts = definition.get("properties", {}).get("ts")
        if ts is not None:
            ts["format"] = "date-time"
    return schema
