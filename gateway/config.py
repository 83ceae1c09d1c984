"""The station configuration: strict pydantic models of the TOML file a technician edits.

Every model forbids unknown keys (a typo must not be silently ignored on a station two
hours' drive away) and every field's description says what is allowed, because that text is
what `care-gateway check-config` prints next to a wrong value.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # safe inside an MQTT topic level and a file name
ID_ALLOWED = "lower-case letters, digits, '-' and '_', 1-64 characters, starting with a letter or digit"
SERIAL_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationSection(_Section):
    id: str = Field(pattern=ID_PATTERN, description=f"station id used in MQTT topics: {ID_ALLOWED}")
    name: str = Field(min_length=1, max_length=200, description="human-readable name, 1-200 characters")
    trust_clock: Literal["auto", "always"] = Field(
        "auto",
        description="'auto' trusts the wall clock once NTP has synchronised it; "
        "'always' for a box with a GPS or a battery-backed clock",
    )


class TlsSection(_Section):
    ca_file: Path = Field(description="path of the CA certificate (PEM) that signed the broker's certificate")
    cert_file: Path | None = Field(None, description="path of this station's client certificate (PEM)")
    key_file: Path | None = Field(None, description="path of this station's private key (PEM)")


LinkProfile = Literal["broadband", "cellular", "narrowband"]


@dataclass(frozen=True)
class LinkSettings:
    """How the uplink shapes status and telemetry for the station's kind of link (alarms are exempt)."""

    batch_max_events: int  # events in one {"events": [...]} message
    batch_linger_s: float  # how long a short batch may wait for more events
    compress: bool  # zlib-compress batches (the platform tells by the first byte, docs/mqtt.md)
    byte_budget_per_s: int | None  # most payload bytes per second for status and telemetry; None = no limit
    batches_in_flight: int  # batches awaiting their PUBACK at once


LINK_PROFILES: dict[str, LinkSettings] = {
    # fibre, DSL, good 4G: big batches, no compression, no budget
    "broadband": LinkSettings(
        batch_max_events=500, batch_linger_s=0.05, compress=False, byte_budget_per_s=None, batches_in_flight=8
    ),
    # ordinary cellular data: compression saves the data plan, some linger fills batches
    "cellular": LinkSettings(
        batch_max_events=200, batch_linger_s=0.5, compress=True, byte_budget_per_s=None, batches_in_flight=4
    ),
    # GPRS, satellite, long-range radio: small compressed batches within 1 kB/s (8 kbit/s)
    "narrowband": LinkSettings(
        batch_max_events=50, batch_linger_s=2.0, compress=True, byte_budget_per_s=1000, batches_in_flight=2
    ),
}


class UplinkSection(_Section):
    host: str = Field(min_length=1, description="broker host name or IP address")
    port: int = Field(1883, ge=1, le=65535, description="broker TCP port, 1-65535")
    topic_prefix: str = Field(
        "care/v1",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="topic levels of letters, digits, '-' or '_' joined by '/', no wildcards, "
        "no leading or trailing '/'",
    )
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="MQTT client id, 1-128 characters; default 'care-gw-<station id>'",
    )
    username: str | None = Field(None, description="MQTT user name, if the broker requires one")
    password: str | None = Field(None, description="MQTT password, if the broker requires one")
    keepalive_s: int = Field(
        30,
        ge=2,
        le=1200,
        description="a dead or silent link is noticed within this many seconds, 2-1200 "
        "(the MQTT keepalive sent to the broker is half of it)",
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, le=120, description="seconds to wait for the broker's CONNACK, >0 and <=120"
    )
    publish_timeout_s: float = Field(
        10.0, gt=0, le=120, description="seconds to wait for a PUBACK before reconnecting, >0 and <=120"
    )
    reconnect_max_s: float = Field(
        60.0, ge=1, le=3600, description="longest wait between reconnect attempts in seconds, 1-3600"
    )
    status_interval_s: float = Field(
        60.0, ge=1, le=3600, description="seconds between status messages while connected, 1-3600"
    )
    tls: TlsSection | None = Field(None, description="[uplink.tls] section; absent means plain TCP")
    link_profile: LinkProfile = Field(
        "broadband", description="the kind of link, which sets batching, compression and the byte budget"
    )
    batch_max_events: int | None = Field(
        None, ge=1, le=5000, description="events per status/telemetry message, 1-5000 (overrides the profile)"
    )
    batch_linger_ms: int | None = Field(
        None, ge=0, le=60000, description="ms a short batch waits for more events, 0-60000 (overrides the profile)"
    )
    compress: bool | None = Field(None, description="true or false: zlib-compress batches (overrides the profile)")
    byte_budget_per_s: int | None = Field(
        None,
        ge=0,
        le=100_000_000,
        description="most bytes per second of status and telemetry, 0 for no limit (overrides the profile); "
        "alarms are never held back",
    )

    @property
    def link(self) -> LinkSettings:
        """The profile with this file's overrides applied."""
        base = LINK_PROFILES[self.link_profile]
        return replace(
            base,
            batch_max_events=self.batch_max_events or base.batch_max_events,
            batch_linger_s=base.batch_linger_s if self.batch_linger_ms is None else self.batch_linger_ms / 1000,
            compress=base.compress if self.compress is None else self.compress,
            byte_budget_per_s=(
                base.byte_budget_per_s if self.byte_budget_per_s is None else (self.byte_budget_per_s or None)
            ),
        )


MIB = 1024 * 1024


class StorageSection(_Section):
    path: Path = Field(description="path of the outbox database file; its folder must be writable")
    max_bytes: int = Field(
        256 * MIB,
        ge=64 * 1024,
        description="most bytes of events the outbox keeps (at least 65536); when full, the oldest "
        "telemetry is shed first, then status, never alarms",
    )
    alarm_reserve_bytes: int | None = Field(
        None,
        ge=0,
        description="part of max_bytes kept for alarms only, in bytes, less than half of max_bytes; "
        "default 5 % of max_bytes",
    )
    max_age_days: float | None = Field(
        None,
        gt=0,
        le=3650,
        description="status and telemetry older than this many days are shed, >0 and <=3650; alarms are "
        "always kept; default: no age limit",
    )

    @model_validator(mode="after")
    def _reserve_fits(self) -> StorageSection:
        if self.alarm_reserve_bytes is not None and self.alarm_reserve_bytes * 2 >= self.max_bytes:
            raise ValueError(
                f"alarm_reserve_bytes ({self.alarm_reserve_bytes}) must be less than half of max_bytes "
                f"({self.max_bytes})"
            )
        return self

    @property
    def reserve_bytes(self) -> int:
        return self.max_bytes // 20 if self.alarm_reserve_bytes is None else self.alarm_reserve_bytes


class ContactIdReceiverDevice(_Section):
    id: str = Field(pattern=ID_PATTERN, description=f"device id: {ID_ALLOWED}")
    kind: Literal["contact_id_receiver"] = Field(description="device kind")
    port: str = Field(
        min_length=1,
        description="serial port path, preferably /dev/serial/by-id/... (stable across replugging)",
    )
    baudrate: Literal[SERIAL_BAUDRATES] = Field(9600, description="serial speed")  # type: ignore[valid-type]
    bytesize: Literal[7, 8] = Field(8, description="data bits")
    parity: Literal["N", "E", "O"] = Field("N", description="parity")
    stopbits: Literal[1, 2] = Field(1, description="stop bits")
    format: Literal["surgard"] = Field("surgard", description="receiver output format")
    silence_timeout_s: float = Field(
        100.0,
        ge=0,
        le=86400,
        description="seconds without a byte from the receiver (it sends a heartbeat about every 30 s) "
        "before it is reported offline, 0-86400; 0 turns the check off",
    )


Device = ContactIdReceiverDevice


class StationConfig(_Section):
    station: StationSection = Field(description="[station] section")
    uplink: UplinkSection = Field(description="[uplink] section")
    storage: StorageSection = Field(description="[storage] section")
    devices: list[Device] = Field(default_factory=list, description="[[devices]] entries")

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, devices: list[Device]) -> list[Device]:
        for attr in ("id", "port"):
            seen: dict[str, int] = {}
            for index, device in enumerate(devices):
                value = getattr(device, attr)
                if value in seen:
                    raise ValueError(
                        f"devices[{seen[value]}] and devices[{index}] have the same {attr} {value!r}; "
                        f"each device needs its own {attr}"
                    )
                seen[value] = index
        return devices

    @property
    def client_id(self) -> str:
        return self.uplink.client_id or f"care-gw-{self.station.id}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one technician-readable line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


_TOML_POSITION = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def load_config(path: Path | str) -> StationConfig:
    """Read and validate a station file; raise ConfigError naming file, key path and what is allowed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read the file: {exc}"]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION.match(str(exc))
        where = f"line {match['line']}, column {match['col']}" if match else "?"
        msg = match["msg"] if match else str(exc)
        raise ConfigError([f"{path}: {where}: TOML syntax error: {msg}"]) from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "<config>") -> StationConfig:
    try:
        return StationConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([f"{source}: {line}" for line in describe_errors(exc, raw)]) from exc


def key_path(loc: Sequence[int | str]) -> str:
    """('devices', 0, 'baudrate') -> 'devices[0].baudrate'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that owns the key at `loc` (None when loc leaves the models)."""
    model: type[BaseModel] = StationConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        for candidate in candidates:
            for inner in [candidate, *getattr(candidate, "__args__", ())]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
                    break
            else:
                continue
            break
        else:
            return None
    return model


def _field_description(loc: Sequence[int | str]) -> str | None:
    names = [part for part in loc if isinstance(part, str)]
    if not names:
        return None
    owner = _model_at(loc[: max(i for i, p in enumerate(loc) if isinstance(p, str))])
    field = owner.model_fields.get(names[-1]) if owner else None
    return field.description if field else None


def describe_errors(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """One line per problem: 'key.path: what is wrong (allowed: ...)'."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(part for part in err["loc"] if not (isinstance(part, str) and "[" in part))
        kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
        if kind == "extra_forbidden":
            owner = _model_at(loc[:-1])
            allowed = ", ".join(owner.model_fields) if owner else "?"
            lines.append(f"{key_path(loc)}: unknown key (allowed keys here: {allowed})")
            continue
        if kind == "missing":
            description = _field_description(loc)
            lines.append(f"{key_path(loc)}: required key is missing" + (f" ({description})" if description else ""))
            continue
        if kind == "string_pattern_mismatch":
            lines.append(f"{key_path(loc)}: {given!r} is not allowed (allowed: {_field_description(loc)})")
            continue
        if kind == "literal_error":
            lines.append(f"{key_path(loc)}: {given!r} is not allowed (allowed: {ctx.get('expected')})")
            continue
        message = err["msg"].removeprefix("Value error, ")
        description = _field_description(loc)
        shown = f" (got {given!r})" if not isinstance(given, dict | list) else ""
        allowed = f" (allowed: {description})" if description and kind != "value_error" else ""
        lines.append(f"{key_path(loc)}: {message}{shown}{allowed}")
    return lines
