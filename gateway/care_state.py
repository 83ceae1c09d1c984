"""What the care rules remember across a restart, typed, and how it is written.

The outbox keeps it in its care_state table as rows (key -> JSON), written in the same
transaction as the events they go with. Each entry is one row:

    version                   CARE_STATE_VERSION (the layout of the rows)
    resident:<id>             ResidentWatch: last activity, last seen (and how strong), vital watches
    button:<id>               ButtonWatch: last test, last "test overdue" (a receiver's button is <receiver>:<zone>)
    device:<id>               DeviceWatch: offline since, fault reported, battery reported low
    sms:<number>              times of the SMS sent to that number in the last hour
    alarm:<id>                an open Alarm (gateway/alarms.py)
    ble_counter:<device>      the last BTHome encryption counter accepted from a keyed device
    nonce:<nonce>             a signed downlink command carried out (its issued_at), against replays
    clock:platform_time_boot  the boot in which the platform's time was taken

Every change goes through an accessor that marks its row for the next commit (`take_changes`)
and, after a `checkpoint`, works on a copy, so that `rollback` restores what was there when
the events of a triage could not be stored. A row that does not read as its type is left out
and reported, never a reason not to start; rows of an older layout are migrated when read and
rewritten with the next commit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from pydantic import JsonValue, TypeAdapter, ValidationError

from gateway.alarms import Alarm

__all__ = [
    "CARE_STATE_VERSION",
    "ButtonWatch",
    "CareState",
    "CareStateCheckpoint",
    "DeviceWatch",
    "ResidentWatch",
    "StateRows",
    "VitalWatch",
]

CARE_STATE_VERSION = 2  # 1: one row per fact ("activity:<resident>", "test:<button>", ...), no version row
PLATFORM_TIME_ROW = "clock:platform_time_boot"
StateRows = Mapping[str, JsonValue | None]  # row key -> JSON value; None deletes the row


@dataclass(frozen=True)
class VitalWatch:
    """A vital sign outside its limits: since when, and whether it has raised its alarm."""

    since: float
    alarmed: bool


@dataclass
class ResidentWatch:
    active_at: float | None = None  # the last sign of activity (press, movement, measurement)
    seen_at: float | None = None  # a wearable of the resident last heard
    seen_rssi: int | None = None
    present: bool | None = None  # the wearable is being heard (after "present", until "away")
    vitals: dict[str, VitalWatch] = field(default_factory=dict)  # vital name -> watch


@dataclass
class ButtonWatch:
    tested_at: float | None = None  # last press or test (the weekly test duty)
    overdue_reported_at: float | None = None


@dataclass
class DeviceWatch:
    offline_since: float | None = None
    fault_reported_at: float | None = None
    battery_low: int | None = None  # the level reported low, until the battery is replaced


_Entry = TypeVar("_Entry", ResidentWatch, ButtonWatch, DeviceWatch)


@dataclass(frozen=True)
class CareStateCheckpoint:
    residents: dict[str, ResidentWatch]
    buttons: dict[str, ButtonWatch]
    devices: dict[str, DeviceWatch]
    sms_sent: dict[str, tuple[float, ...]]
    alarms: dict[str, Alarm]
    platform_time_boot: str | None
    ble_counters: dict[str, int]
    command_nonces: dict[str, float]
    dirty: frozenset[str]


@dataclass
class CareState:
    """The care state. Read it freely; change it only through the accessors below."""

    residents: dict[str, ResidentWatch] = field(default_factory=dict)
    buttons: dict[str, ButtonWatch] = field(default_factory=dict)
    devices: dict[str, DeviceWatch] = field(default_factory=dict)
    sms_sent: dict[str, tuple[float, ...]] = field(default_factory=dict)
    alarms: dict[str, Alarm] = field(default_factory=dict)  # the open ones
    platform_time_boot: str | None = None
    ble_counters: dict[str, int] = field(default_factory=dict)  # keyed BLE device -> last counter accepted
    command_nonces: dict[str, float] = field(default_factory=dict)  # nonce -> issued_at of a signed command
    _dirty: set[str] = field(default_factory=set, repr=False, compare=False)  # rows to write
    _copied: set[str] = field(default_factory=set, repr=False, compare=False)  # changed since the checkpoint

    # --- changes --------------------------------------------------------------------------------

    def resident(self, resident_id: str) -> ResidentWatch:
        """The resident's watch, to change (made if there is none)."""
        return self._for_change(self.residents, "resident", resident_id, ResidentWatch)

    def button(self, button: str) -> ButtonWatch:
        return self._for_change(self.buttons, "button", button, ButtonWatch)

    def device(self, device_id: str) -> DeviceWatch:
        return self._for_change(self.devices, "device", device_id, DeviceWatch)

    def alarm(self, alarm_id: str) -> Alarm:
        """An open alarm, to change (KeyError if it is not open)."""
        row = f"alarm:{alarm_id}"
        if row not in self._copied:
            self.alarms[alarm_id] = copy.copy(self.alarms[alarm_id])
        self._mark(row)
        return self.alarms[alarm_id]

    def add_alarm(self, alarm: Alarm) -> None:
        self.alarms[alarm.id] = alarm
        self._mark(f"alarm:{alarm.id}")

    def drop_alarm(self, alarm_id: str) -> None:
        self.alarms.pop(alarm_id, None)
        self._mark(f"alarm:{alarm_id}")

    def note_sms(self, number: str, sent: tuple[float, ...]) -> None:
        self.sms_sent[number] = sent
        self._mark(f"sms:{number}")

    def note_ble_counter(self, device_id: str, counter: int) -> None:
        self.ble_counters[device_id] = counter
        self._mark(f"ble_counter:{device_id}")

    def note_nonce(self, nonce: str, issued_at: float, forget_before: float, keep_at_most: int) -> None:
        """A signed command's nonce, kept while a replay of it could still look fresh."""
        self.command_nonces[nonce] = issued_at
        self._mark(f"nonce:{nonce}")
        stale = [n for n, at in self.command_nonces.items() if at < forget_before]
        stale += sorted(set(self.command_nonces) - set(stale), key=self.command_nonces.__getitem__)[
            : max(0, len(self.command_nonces) - len(stale) - keep_at_most)
        ]
        for old in stale:
            del self.command_nonces[old]
            self._mark(f"nonce:{old}")

    def note_platform_time(self, boot_id: str) -> None:
        self.platform_time_boot = boot_id
        self._mark(PLATFORM_TIME_ROW)

    def _for_change(self, table: dict[str, _Entry], family: str, key: str, make: Callable[[], _Entry]) -> _Entry:
        row = f"{family}:{key}"
        entry = table.get(key)
        if entry is None:
            entry = make()
        elif row not in self._copied:
            entry = copy.copy(entry)  # the checkpoint keeps the one it saw
            if isinstance(entry, ResidentWatch):
                entry.vitals = dict(entry.vitals)
        table[key] = entry
        self._mark(row)
        return entry

    def _mark(self, row: str) -> None:
        self._dirty.add(row)
        self._copied.add(row)

    def shift_times(self, seconds: float, since: float) -> None:
        """The care clock moved by `seconds`: move every time at or after `since` with it."""

        def moved(at: float) -> float:
            return at + seconds if at >= since else at

        def maybe(at: float | None) -> float | None:
            return None if at is None else moved(at)

        for resident_id in list(self.residents):
            watch = self.resident(resident_id)
            watch.active_at, watch.seen_at = maybe(watch.active_at), maybe(watch.seen_at)
            watch.vitals = {name: VitalWatch(moved(v.since), v.alarmed) for name, v in watch.vitals.items()}
        for button in list(self.buttons):
            entry = self.button(button)
            entry.tested_at, entry.overdue_reported_at = maybe(entry.tested_at), maybe(entry.overdue_reported_at)
        for device_id in list(self.devices):
            device = self.device(device_id)
            device.offline_since, device.fault_reported_at = (
                maybe(device.offline_since),
                maybe(device.fault_reported_at),
            )
        for number, sent in list(self.sms_sent.items()):
            self.note_sms(number, tuple(moved(at) for at in sent))
        for alarm_id in list(self.alarms):
            alarm = self.alarm(alarm_id)
            for name in Alarm.TIMES:
                setattr(alarm, name, maybe(getattr(alarm, name)))

    # --- commit and rollback ------------------------------------------------------------------

    def take_changes(self) -> dict[str, JsonValue | None]:
        """The rows changed since the last call, for the commit they go with."""
        rows = {row: self._row(row) for row in sorted(self._dirty)}
        self._dirty = set()
        return rows

    def give_back(self, changes: StateRows) -> None:
        """Changes taken for a commit that failed: written with the next one (as they are then)."""
        self._dirty |= set(changes)

    def checkpoint(self) -> CareStateCheckpoint:
        self._copied = set()
        return CareStateCheckpoint(
            dict(self.residents),
            dict(self.buttons),
            dict(self.devices),
            dict(self.sms_sent),
            dict(self.alarms),
            self.platform_time_boot,
            dict(self.ble_counters),
            dict(self.command_nonces),
            frozenset(self._dirty),
        )

    def rollback(self, checkpoint: CareStateCheckpoint) -> None:
        self.residents = dict(checkpoint.residents)
        self.buttons = dict(checkpoint.buttons)
        self.devices = dict(checkpoint.devices)
        self.sms_sent = dict(checkpoint.sms_sent)
        self.alarms = dict(checkpoint.alarms)
        self.platform_time_boot = checkpoint.platform_time_boot
        self.ble_counters = dict(checkpoint.ble_counters)
        self.command_nonces = dict(checkpoint.command_nonces)
        self._dirty = set(checkpoint.dirty)
        self._copied = set()

    # --- rows -----------------------------------------------------------------------------------

    def _row(self, row: str) -> JsonValue | None:
        """The JSON of one row as the state is now (None: the row goes)."""
        if row == "version":
            return CARE_STATE_VERSION
        if row == PLATFORM_TIME_ROW:
            return self.platform_time_boot
        family, _, key = row.partition(":")
        tables: dict[str, Mapping[str, object]] = {
            "resident": self.residents,
            "button": self.buttons,
            "device": self.devices,
            "sms": self.sms_sent,
            "alarm": self.alarms,
            "ble_counter": self.ble_counters,
            "nonce": self.command_nonces,
        }
        table = tables.get(family)  # (none: a row of an older layout, which goes)
        entry = table.get(key) if table is not None else None
        if entry is None:
            return None
        if isinstance(entry, tuple):
            return list(entry) or None
        if isinstance(entry, int | float):
            return entry
        assert isinstance(entry, ResidentWatch | ButtonWatch | DeviceWatch | Alarm)
        value: dict[str, JsonValue] = asdict(entry)
        if isinstance(entry, Alarm):
            return value
        kept: dict[str, JsonValue] = {k: v for k, v in value.items() if v is not None and v != {}}
        return kept or None

    @classmethod
    def from_rows(cls, rows: Mapping[str, JsonValue]) -> tuple[CareState, list[str]]:
        """The state the rows describe, and what could not be read of them (one line each).
        Rows of version 1 are migrated; the next commit rewrites them."""
        problems: list[str] = []
        state = cls()
        version = rows.get("version")
        if version is None and rows:
            migrated = _from_version_1(rows, problems)
            state._dirty |= set(rows) | set(migrated) | {"version"}  # the old rows go, the new are written
            rows = migrated
        elif version is None:
            state._dirty.add("version")
        elif not isinstance(version, int) or version > CARE_STATE_VERSION:
            problems.append(f"care state written by a newer gateway (layout {version!r}): read as far as it is known")
        for row, value in rows.items():
            if row == "version":
                continue
            family, _, key = row.partition(":")
            reader = _READERS.get(family)
            if row == PLATFORM_TIME_ROW:
                if isinstance(value, str):
                    state.platform_time_boot = value
                else:
                    problems.append(f"{row}: not a boot id: {value!r:.80}")
            elif reader is None or not key:
                problems.append(f"{row}: not a care-state row this gateway knows; left out")
            else:
                try:
                    reader[1](state)[key] = reader[0].validate_python(value)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"]) or "value"
                    problems.append(f"{row}: {where}: {first['msg']}; left out")
        state._copied = set()
        return state, problems


_READERS: dict[str, tuple[TypeAdapter[Any], Callable[[CareState], dict[str, Any]]]] = {
    "resident": (TypeAdapter(ResidentWatch), lambda s: s.residents),
    "button": (TypeAdapter(ButtonWatch), lambda s: s.buttons),
    "device": (TypeAdapter(DeviceWatch), lambda s: s.devices),
    "sms": (TypeAdapter(tuple[float, ...]), lambda s: s.sms_sent),
    "alarm": (TypeAdapter(Alarm), lambda s: s.alarms),
    "ble_counter": (TypeAdapter(int), lambda s: s.ble_counters),
    "nonce": (TypeAdapter(float), lambda s: s.command_nonces),
}

_VERSION_1_FIELDS = {  # v1 row prefix -> (v2 family, field)
    "activity": ("resident", "active_at"),
    "seen": ("resident", "seen_at"),
    "seen_rssi": ("resident", "seen_rssi"),
    "test": ("button", "tested_at"),
    "overdue": ("button", "overdue_reported_at"),
    "offline": ("device", "offline_since"),
    "fault": ("device", "fault_reported_at"),
    "battery_low": ("device", "battery_low"),
}


def _from_version_1(rows: Mapping[str, JsonValue], problems: list[str]) -> dict[str, JsonValue]:
    """Version 1 kept one row per fact; version 2 one row per resident, button and device."""
    out: dict[str, Any] = {}
    for row, value in rows.items():
        prefix, _, key = row.partition(":")
        if prefix in _VERSION_1_FIELDS:
            family, name = _VERSION_1_FIELDS[prefix]
            out.setdefault(f"{family}:{key}", {})[name] = value
        elif prefix == "vital":
            resident, _, vital = key.rpartition(":")
            out.setdefault(f"resident:{resident}", {}).setdefault("vitals", {})[vital] = value
        elif prefix in ("sms", "alarm") or row == PLATFORM_TIME_ROW:
            out[row] = value
        else:
            problems.append(f"{row}: not a care-state row of layout 1; left out")
    return out
