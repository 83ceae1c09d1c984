"""The station's status: one typed value, rendered for the retained MQTT status message, the
status file that `care-gateway status` reads, and the local status page.

The station part (devices, residents, open alarms, storage use, SMS) is reported by the station
(gateway/app.py), each piece by the module that owns it; the uplink adds its own (link,
backlog, TLS) and the state. `to_json()` is the layout documented in docs/mqtt.md ("Status"):
one flat object, the same for every reader. Where the file lives is decided in
gateway/config.py (`status_files`, `status_file_to_write`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "HEARTBEAT_FIELDS",
    "AlarmStatus",
    "BacklogStatus",
    "BleDeviceStatus",
    "LinkStatus",
    "ResidentStatus",
    "SerialDeviceStatus",
    "StationPart",
    "StationStatus",
    "heartbeat",
    "operator_view",
    "own_start",
    "process_started",
]

DeviceState = Literal["starting", "online", "offline"]


def process_started(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat), or None if it is
    gone or a zombie. The status file carries the daemon's, so that `care-gateway status`,
    whoever runs it, tells a killed daemon (or a pid since reused) at once, where a signal 0
    to another user's process could only say "not permitted"."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # (the name in parentheses may hold spaces)
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def own_start() -> int | None:
    """This process's start (see process_started)."""
    return process_started(os.getpid())


@dataclass(frozen=True)
class SerialDeviceStatus:
    kind: str
    state: DeviceState
    last_seen: str | None  # UTC, ISO 8601 (the last good frame)
    frames_ok: int
    frames_rejected: int
    bytes_rejected: int


@dataclass(frozen=True)
class BleDeviceStatus:
    kind: str
    resident: str | None
    last_seen: str | None
    rssi: int | None
    battery: int | None


@dataclass(frozen=True)
class ResidentStatus:
    name: str
    room: str | None
    last_activity: str | None
    open_alarms: int


@dataclass(frozen=True)
class AlarmStatus:
    alarm_id: str
    kind: str
    state: str
    resident: str | None
    device_id: str
    count: int
    raised_at: str | None


@dataclass(frozen=True)
class StationPart:
    """What the station reports of itself."""

    station_id: str
    name: str
    version: str
    ts: str | None
    clock_trusted: bool
    clock_source: str | None
    boot_id: str
    uptime_s: int
    run_id: str
    devices: dict[str, SerialDeviceStatus]
    residents: dict[str, ResidentStatus]
    alarms_open: list[AlarmStatus]
    storage_use: dict[str, int]
    ble: dict[str, int] | None = None  # only with Bluetooth devices configured
    ble_devices: dict[str, BleDeviceStatus] | None = None
    sms: dict[str, Any] | None = None  # only with an [sms] modem
    off_contract: dict[str, int] | None = None  # kind -> events whose data missed its schema (a bug)


@dataclass(frozen=True)
class BacklogStatus:
    backlog: dict[str, int]  # priority -> events waiting
    backlog_bytes: int
    oldest_unsent_s: float | None
    estimated_drain_s: float | None
    shed: dict[str, Any]  # per priority: events shed to stay within the limits
    storage: dict[str, Any]
    published_since_start: dict[str, int]


@dataclass(frozen=True)
class LinkStatus:
    state: Literal["up", "down"]
    since: str | None
    broker: str
    protocol: str
    connects_since_start: int
    history: list[dict[str, str | None]]
    refused: dict[str, int]
    no_subscribers: int
    commands: dict[str, Any]


@dataclass(frozen=True)
class StationStatus:
    state: Literal["online", "offline"]
    link_profile: str
    backlog: BacklogStatus
    link: LinkStatus
    tls: dict[str, dict[str, Any]] | None
    station: StationPart | None = None  # (an uplink run on its own, in a benchmark, has none)

    def to_json(self, personal: bool = True) -> dict[str, Any]:
        """The flat JSON object every reader gets (docs/mqtt.md): the station's fields, the
        link profile, the backlog's fields, `link`, `tls`; optional parts only when present.
        Without `personal` (the MQTT status, unless the platform may have them) residents'
        names and rooms are left out: their ids remain."""
        body: dict[str, Any] = {"state": self.state}
        if self.station is not None:
            station = dataclasses.asdict(self.station)
            if not personal:
                for resident in station["residents"].values():
                    del resident["name"], resident["room"]
            body.update({k: v for k, v in station.items() if v is not None or k not in _OPTIONAL_PARTS})
        body["link_profile"] = self.link_profile
        body.update(dataclasses.asdict(self.backlog))
        body["link"] = dataclasses.asdict(self.link)
        body["tls"] = self.tls
        return body


_OPTIONAL_PARTS = frozenset({"ble", "ble_devices", "sms", "off_contract"})


# What changes all the time and is not acted on: leaving it out of the comparison is what lets
# the retained status be sent only when something an operator acts on changed (docs/mqtt.md).
_VOLATILE = frozenset({"ts", "uptime_s", "backlog", "backlog_bytes", "oldest_unsent_s", "estimated_drain_s",
                       "published_since_start", "storage_use", "ble"})  # fmt: skip
_VOLATILE_PER_DEVICE = frozenset({"last_seen", "frames_ok", "frames_rejected", "bytes_rejected", "rssi", "battery"})
HEARTBEAT_FIELDS = ("ts", "uptime_s", "oldest_unsent_s", "estimated_drain_s")


def operator_view(body: dict[str, Any]) -> dict[str, Any]:
    """The part of a status message whose change makes the station publish it in full: the
    state, devices online or offline, open alarms and their counts, residents' open alarms,
    storage faults and disk-full mode, shed events, the clock, TLS expiry, the SMS modem, the
    broker's refusals, version and run. Counters, times, signal strength and backlog are left
    out: the heartbeat carries the backlog."""
    view = {k: v for k, v in body.items() if k not in _VOLATILE}
    for part in ("devices", "ble_devices"):
        if isinstance(view.get(part), dict):
            view[part] = {
                name: {k: v for k, v in device.items() if k not in _VOLATILE_PER_DEVICE}
                for name, device in view[part].items()
            }
    if isinstance(view.get("residents"), dict):
        view["residents"] = {
            name: {k: v for k, v in resident.items() if k != "last_activity"}
            for name, resident in view["residents"].items()
        }
    if isinstance(view.get("storage"), dict):
        view["storage"] = {k: v for k, v in view["storage"].items() if k in ("disk_full", "disk_full_errors", "fault")}
    if isinstance(view.get("link"), dict):
        view["link"] = {k: view["link"].get(k) for k in ("refused", "commands")}
    if isinstance(view.get("sms"), dict):
        view["sms"] = {"modem": view["sms"].get("modem")}
    return view


def heartbeat(body: dict[str, Any]) -> dict[str, Any]:
    """The small message sent between full statuses: alive, the backlog, its age (~150 bytes)."""
    out: dict[str, Any] = {"state": body.get("state")}
    out.update({k: body.get(k) for k in HEARTBEAT_FIELDS})
    backlog = body.get("backlog")
    out["backlog"] = sum(backlog.values()) if isinstance(backlog, dict) else None
    alarms = body.get("alarms_open")
    out["alarms_open"] = len(alarms) if isinstance(alarms, list) else None
    return out
