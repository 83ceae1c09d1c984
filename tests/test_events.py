"""The event model: ids, priorities, JSON form and the published schema."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers.gatt import MEASUREMENT_NAMES
from gateway.clock import Clock
from gateway.events import (
    _CROCKFORD as CROCKFORD,
)
from gateway.events import (
    PRIORITY_OF_KIND,
    Event,
    EventKind,
    Priority,
    _UlidFactory,
    check_data,
    new_event,
)
from gateway.outbox import _Rfc3339Ms, created_ms, stored_form
from gateway.payloads import event_json_schema

MEASUREMENT_TYPES = list(MEASUREMENT_NAMES)

wire_ts = _Rfc3339Ms()
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "event.schema.json"


class FixedClock(Clock):
    def __init__(self, at: datetime, trusted: bool) -> None:
        super().__init__()
        self._at, self._trusted = at, trusted

    def now(self) -> datetime:
        return self._at

    def trusted(self) -> bool:
        return self._trusted


def test_new_event_is_stamped_and_round_trips_through_json() -> None:
    clock = FixedClock(datetime(2026, 11, 23, 8, 30, 15, 123456, tzinfo=UTC), trusted=False)
    event = new_event(clock, "st-1", "button-rx-1", EventKind.SOS, {"zone": 3})
    assert event == Event(
        id=event.id,
        station_id="st-1",
        device_id="button-rx-1",
        kind=EventKind.SOS,
        priority=Priority.ALARM,
        ts=datetime(2026, 11, 23, 8, 30, 15, 123000, tzinfo=UTC),
        clock_trusted=False,
        data={"zone": 3},
    )
    assert json.loads(event.to_json())["ts"] == "2026-11-23T08:30:15.123Z"
    assert Event.model_validate_json(event.to_json()) == event


def test_ids_are_unique_and_sort_in_creation_order_even_within_one_millisecond() -> None:
    clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC), trusted=True)
    ids = [new_event(clock, "s", "d", EventKind.TEST).id for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    later = new_event(FixedClock(datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC), True), "s", "d", EventKind.TEST)
    assert later.id > ids[-1]


def test_every_kind_has_a_priority_and_alarms_rank_first() -> None:
    assert set(PRIORITY_OF_KIND) == set(EventKind)
    assert sorted(Priority, key=lambda p: p.rank) == [Priority.ALARM, Priority.STATUS, Priority.TELEMETRY]
    alarms = {k for k, p in PRIORITY_OF_KIND.items() if p is Priority.ALARM}
    assert alarms == {
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
        EventKind.ALARM_REMINDER,
    }


VALID_DATA: list[tuple[EventKind, dict[str, object]]] = [
    (EventKind.ACTIVITY, {"presence": True, "motion": "moving", "room": "卧室", "change": True}),
    (EventKind.SOS, {"source": "ble_pendant", "button": "press", "battery": 80, "resident": "r-1"}),
    (
        EventKind.FALL,
        {
            "qualifier": "new",
            "severity": "high",
            "detector": "mmwave",
            "location": {"lat": 40.1, "lon": 116.3, "source": "gps"},
        },
    ),
    (EventKind.STORAGE_FAULT, {"fault": "bad_row", "seq": 4, "class": "alarm", "reason": "no event id", "bytes": 9}),
    (
        EventKind.VITALS,
        {
            "measurement": "blood_pressure",
            "systolic": 128.0,
            "diastolic": 82,
            "mean_arterial": None,
            "unit": "mmHg",
            "measured_at": "2026-11-23T08:30:00",
            "pulse_bpm": 71.0,
            "user": 1,
            "status": ["irregular_pulse"],
        },
    ),
]


@pytest.mark.parametrize(("kind", "data"), VALID_DATA, ids=[kind.value for kind, _ in VALID_DATA])
def test_a_new_event_is_the_validated_model_and_its_stored_form_what_pydantic_writes(
    kind: EventKind, data: dict[str, object]
) -> None:
    """new_event sets the envelope without pydantic's validation and the outbox writes it with
    orjson: both must give exactly what the validated model and its serialiser give."""
    before = dict(check_data.breaches)
    event = new_event(Clock(), "st-1", "dev-1", kind, data)
    assert check_data.breaches == before, "the test's data must match the published schema"
    validated = Event.model_validate(event.model_dump())
    assert validated == event
    assert validated.model_fields_set == event.model_fields_set
    assert Event.model_validate_json(event.to_json()) == event
    whole = json.loads(event.to_json())
    stored = json.loads(stored_form(event))
    assert stored == {k: v for k, v in whole.items() if k not in ("station_id", "priority", "ts")}
    assert stored_form(event).startswith('{"id":"')  # (the outbox checks a row by its first bytes)
    assert wire_ts(created_ms(event)) == whole["ts"]


def test_data_off_its_schema_is_accepted_all_the_same_named_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    before = check_data.breaches.get("low_battery", 0)
    for _ in range(3):  # "battery" is an int: strict, so "15" is not taken for 15
        event = new_event(Clock(), "s", "pendant-7", EventKind.LOW_BATTERY, {"battery": "15", "limit": 20})
        assert event.data["battery"] == "15"  # kept as given: the event is not lost, nor altered
    assert check_data.breaches["low_battery"] == before + 3
    named = [r.getMessage() for r in caplog.records if "published data schema" in r.getMessage()]
    assert len(named) == 1, named  # once per kind and field, not once per event
    assert named[0].startswith("event low_battery of device 'pendant-7' does not match")
    assert " at battery (" in named[0]
    new_event(Clock(), "s", "pendant-7", EventKind.LOW_BATTERY, {"battery": 15, "limit": 20})
    assert check_data.breaches["low_battery"] == before + 3  # a valid one is not counted


def test_events_are_immutable() -> None:
    event = new_event(Clock(), "s", "d", EventKind.TEST)
    with pytest.raises(ValidationError, match="frozen"):
        event.kind = EventKind.SOS  # type: ignore[misc]


def test_published_schema_is_up_to_date() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == event_json_schema(), (
        "docs/event.schema.json is stale: run `care-gateway schema > docs/event.schema.json`"
    )


def test_millisecond_truncation_is_exact_across_a_day_of_timestamps() -> None:
    """new_event rebuilds ts from integer milliseconds through a float, and the serialiser caches
    the text up to the second: no millisecond may drift, no second may be stale."""
    start = datetime(2026, 11, 23, tzinfo=UTC)
    for offset_ms in range(0, 86_400_000, 86_400_000 // 20_011):  # a prime step: every ms digit is hit
        at = start + timedelta(milliseconds=offset_ms, microseconds=999)
        event = new_event(FixedClock(at, trusted=True), "s", "d", EventKind.TEST)
        assert event.ts == at - timedelta(microseconds=999)
        expected = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
        assert json.loads(event.to_json())["ts"] == expected
        assert wire_ts(created_ms(event)) == expected  # the outbox keeps ts as created_ms, put back on read


def test_ulid_text_is_the_number_it_stands_for_across_a_carry_of_the_cached_half() -> None:
    """The factory caches the text of the time and of the random half; a count that carries
    into that half must still give id = (ms << 80) + (random half << 40) + count, in order."""
    factory = _UlidFactory()
    factory.new(1_795_000_000_000)
    high = factory._high
    factory._count = (1 << 40) - 3  # three ids before the carry
    ids = [factory.new(1_795_000_000_000) for _ in range(6)]
    numbers = [sum(CROCKFORD.index(c) << (5 * i) for i, c in enumerate(reversed(text))) for text in ids]
    assert [n >> 80 for n in numbers] == [1_795_000_000_000] * 6
    assert [n & ((1 << 80) - 1) for n in numbers] == [(high << 40) + (1 << 40) - 2 + k for k in range(6)]
    assert ids == sorted(ids)


def test_ulids_increase_across_milliseconds_and_clock_steps_and_share_the_runs_random_half() -> None:
    factory = _UlidFactory()
    times = [1_795_000_000_000, 1_795_000_000_000, 1_795_000_000_007, 1_794_999_000_000, 1_795_000_000_009]
    ids = [factory.new(ms) for ms in times]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert ids[3][:10] == ids[2][:10]  # a step back keeps the last time
    assert len({i[10:18] for i in ids}) == 1  # one random half for the run: batches compress
    assert _UlidFactory().new(times[0])[10:18] != ids[0][10:18]  # another run, another half


def test_the_kinds_table_of_docs_mqtt_names_every_kind_and_every_field_of_the_schema() -> None:
    import re

    doc = (SCHEMA_FILE.parent / "mqtt.md").read_text()
    table = doc[doc.index("### Kinds") : doc.index("\n\n", doc.index("| kind | priority"))]
    rows = {m[1]: m[0] for m in (re.match(r"\| `(\w+)` \|.*", line) for line in table.splitlines()) if m}
    schema = event_json_schema()
    branches = {kind: ref.rsplit("/", 1)[1] for kind, ref in schema["discriminator"]["mapping"].items()}
    assert set(rows) == set(branches) == {k.value for k in EventKind}
    contact_id = doc[doc.index("Contact ID fields:") : doc.index("\n\n", doc.index("Contact ID fields:"))]
    common = {"resident", "ts_unsynced", "location", "alarm_id"}  # described once, for every kind

    def fields(node: dict[str, object]) -> set[str]:
        """Every `data` property name under a schema node (through $ref, anyOf, oneOf)."""
        out: set[str] = set()
        ref = node.get("$ref")
        if isinstance(ref, str):
            out |= fields(schema["$defs"][ref.rsplit("/", 1)[1]])
        for key in ("anyOf", "oneOf"):
            for option in node.get(key, []):  # type: ignore[attr-defined]
                out |= fields(option)
        out |= set(node.get("properties", {}))  # type: ignore[arg-type]
        return out

    missing = {}
    for kind, branch in branches.items():
        data = schema["$defs"][branch]["properties"]["data"]
        named = set(re.findall(r"`(\w+)`", rows[kind]))
        if "Contact ID fields" in rows[kind]:
            named |= set(re.findall(r"`(\w+)`", contact_id))
        if kind == "vitals":
            named |= {f.name for m in MEASUREMENT_TYPES for f in dataclasses.fields(m)}  # "and its fields"
        undocumented = fields(data) - named - common
        if undocumented:
            missing[kind] = sorted(undocumented)
    assert missing == {}, "\n".join(f"{k}: {v}" for k, v in missing.items())
