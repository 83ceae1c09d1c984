"""The station configuration: strict pydantic models of the TOML file a technician edits.

Every model forbids unknown keys (a typo must not be silently ignored on a station two
hours' drive away) and every field's description says what is allowed, because that text is
what `care-gateway check-config` prints next to a wrong value.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
import unicodedata
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.errors import GatewayError

__all__ = [
    "BLE_KINDS",
    "LINK_PROFILES",
    "MIB",
    "SERIAL_KINDS",
    "STATUS_FILE_NAME",
    "BadgeDevice",
    "BleDevice",
    "BleSection",
    "BrokerSecrets",
    "CareSection",
    "ConfigError",
    "Contact",
    "ContactIdReceiverDevice",
    "Device",
    "GpsDevice",
    "HealthBleDevice",
    "IBeaconMatch",
    "LinkSettings",
    "LocationSection",
    "PendantDevice",
    "PlainText",
    "RadarDevice",
    "RadarModel",
    "ReceiverFormat",
    "ResidentSection",
    "SerialDevice",
    "SmsSection",
    "StationConfig",
    "StationSection",
    "StatusPageSection",
    "StorageSection",
    "TlsSection",
    "UplinkSection",
    "VitalLimits",
    "WristbandDevice",
    "cross_check",
    "describe_errors",
    "in_hours",
    "is_loopback",
    "key_path",
    "load_config",
    "parse_config",
    "parse_hours",
    "printable",
    "read_secrets",
    "status_file_to_write",
    "status_files",
]

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # safe inside an MQTT topic level and a file name
ID_ALLOWED = "lower-case letters, digits, '-' and '_', 1-64 characters, starting with a letter or digit"
SERIAL_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocationSection(_Section):
    lat: float = Field(ge=-90, le=90, description="latitude in degrees, -90 to 90 (WGS 84)")
    lon: float = Field(ge=-180, le=180, description="longitude in degrees, -180 to 180 (WGS 84)")


class StationSection(_Section):
    id: str = Field(pattern=ID_PATTERN, description=f"station id used in MQTT topics: {ID_ALLOWED}")
    name: PlainText = Field(min_length=1, max_length=200, description="human-readable name, 1-200 characters")
    trust_clock: Literal["auto", "always"] = Field(
        "auto",
        description="'auto' trusts the wall clock once NTP has synchronised it; "
        "'always' for a box with a GPS or a battery-backed clock",
    )
    location: LocationSection | None = Field(
        None, description="fixed location {lat, lon} attached to alarms when no GPS fix is available"
    )


class TlsSection(_Section):
    ca_file: Path = Field(description="path of the CA certificate (PEM) that signed the broker's certificate")
    cert_file: Path | None = Field(None, description="path of this station's client certificate (PEM)")
    key_file: Path | None = Field(None, description="path of this station's private key (PEM)")


def printable(text: str) -> str:
    """Text with control, format and direction characters (newlines, ANSI escapes, bidi
    overrides) replaced by U+FFFD: for what a radio, a broker or a file says, before it is
    printed, logged or sent by SMS."""
    return "".join("\ufffd" if unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" else c for c in text)


def _plain(text: str) -> str:
    if printable(text) != text:
        bad = next(c for c in text if printable(c) != c)
        raise ValueError(
            f"contains the control or direction character U+{ord(bad):04X}: it would garble the SMS, the page "
            "and the journal; retype the text"
        )
    return text


PlainText = Annotated[str, AfterValidator(_plain)]  # names and places a person reads (SMS, page, journal)
LinkProfile = Literal["broadband", "cellular", "narrowband"]
ReceiverFormat = Literal["surgard", "ademco685"]  # Contact ID receivers' output formats (drivers/contact_id.py)
RadarModel = Literal["mr60fda1", "mr60fda2", "mr24hpc1"]  # Seeed radars (drivers/seeed_radar.py)


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
    # GPRS, satellite, long-range radio: compressed batches of at most 1 kB on the wire (one
    # second of the 1 kB/s budget, 8 kbit/s), as many events as fit after compression
    "narrowband": LinkSettings(
        batch_max_events=120, batch_linger_s=2.0, compress=True, byte_budget_per_s=1000, batches_in_flight=2
    ),
}


class UplinkSection(_Section):
    host: str = Field(min_length=1, description="broker host name or IP address")
    port: int = Field(1883, ge=1, le=65535, description="broker TCP port, 1-65535")
    failover: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="more brokers of the same platform, tried in order when the one in use cannot be reached: "
        'up to 8 entries "host" or "host:port" (the port defaults to port)',
    )
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description='MQTT version: "5" (the broker\'s refusal of a publish is seen) or "3.1.1" '
        "(for a broker without MQTT 5; it may acknowledge a publish its ACL denied)",
    )
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
    password: str | None = Field(
        None, description="MQTT password; better kept in secrets_file, readable by the service only"
    )
    secrets_file: Path | None = Field(
        None,
        description="a TOML file with username and password for the broker, not readable by other users "
        "(chmod 640, owner root, group care-gateway)",
    )
    share_personal_data: bool = Field(
        False,
        description="true only where the platform has the legal basis (PIPL Art. 13, 28-29): events and the "
        "status then also carry residents' names and rooms, wearers', caregivers' and SMS recipients' names; "
        "without it they carry ids and roles only (docs/mqtt.md, 'Personal data')",
    )
    allow_plaintext: bool = Field(
        False,
        description="true to allow MQTT without TLS to a host other than this machine (the link then carries "
        "alarms and names in clear); without it such a file is refused",
    )
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
        60.0,
        ge=1,
        le=3600,
        description="seconds between heartbeats while connected (the full status is sent on connect and when "
        "something an operator acts on changes), 1-3600",
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

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_number(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("failover")
    @classmethod
    def _failover_addresses(cls, entries: list[str]) -> list[str]:
        for i, entry in enumerate(entries):
            host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
            if not host or not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", host):
                raise ValueError(f'failover[{i}]: {entry!r} is not "host" or "host:port"')
            if port and not (port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError(f"failover[{i}]: port {port!r} is not 1-65535")
        return entries

    @property
    def brokers(self) -> list[tuple[str, int]]:
        """Every broker address, in the order they are tried: host:port, then the failover list."""
        out = [(self.host, self.port)]
        for entry in self.failover:
            host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
            out.append((host.strip("[]"), int(port) if port else self.port))
        return out

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
    disk_reserve_bytes: int = Field(
        8 * MIB,
        ge=2 * MIB,
        le=1024 * MIB,
        description="bytes of disk held in a reserve file beside the outbox (2 MiB to 1 GiB) and given up "
        "when the disk is full, so that shedding and alarms can still be written",
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


def _silence_field(default: float, why: str) -> Any:
    return Field(
        default,
        ge=0,
        le=86400,
        description=f"seconds without a byte from the device ({why}) before it is reported offline, "
        "0-86400; 0 turns the check off",
    )


class _SerialDevice(_Section):
    id: str = Field(pattern=ID_PATTERN, description=f"device id: {ID_ALLOWED}")
    port: str = Field(
        min_length=1,
        description="serial port path, preferably /dev/serial/by-id/... (stable across replugging)",
    )
    baudrate: Literal[SERIAL_BAUDRATES] = Field(9600, description="serial speed")  # type: ignore[valid-type]
    bytesize: Literal[7, 8] = Field(8, description="data bits")
    parity: Literal["N", "E", "O"] = Field("N", description="parity")
    stopbits: Literal[1, 2] = Field(1, description="stop bits")
    label: PlainText | None = Field(
        None, max_length=100, description="where the device is, e.g. 'bedroom', 1-100 characters"
    )


class ContactIdReceiverDevice(_SerialDevice):
    """An alarm receiver's automation output (emergency buttons, pendants, panels)."""

    kind: Literal["contact_id_receiver"] = Field(description="device kind")
    format: ReceiverFormat = Field(
        "surgard", description="receiver output format: Sur-Gard MLR2 automation or Ademco 685"
    )
    silence_timeout_s: float = _silence_field(100.0, "a receiver sends a heartbeat about every 30 s")
    residents: dict[Annotated[str, Field(pattern=r"^[0-9]{1,3}$")], str] = Field(
        default_factory=dict,
        description='which resident each zone (or user) number belongs to, e.g. { 3 = "wang-xiuying" }; '
        "keys are 1-3 digit numbers, values resident ids from [[residents]]",
    )


class RadarDevice(_SerialDevice):
    """A Seeed mmWave radar on a UART: fall (MR60FDA1, MR60FDA2) or presence (MR24HPC1)."""

    kind: Literal["mmwave_radar"] = Field(description="device kind")
    model: RadarModel = Field(description="radar model")
    baudrate: Literal[SERIAL_BAUDRATES] = Field(115200, description="serial speed")  # type: ignore[valid-type]
    heartbeat_interval_s: float = Field(
        10.0, ge=1, le=3600, description="seconds between the gateway's heartbeat queries, 1-3600"
    )
    silence_timeout_s: float = _silence_field(35.0, "it answers every heartbeat query")
    activity_summary_s: float = Field(
        300.0, ge=10, le=86400, description="seconds between activity summaries, 10-86400"
    )
    resident: str | None = Field(None, description="id of the resident whose room it watches ([[residents]])")


class GpsDevice(_SerialDevice):
    """An NMEA 0183 GPS receiver, for mobile stations (care vans, seasonal camps)."""

    kind: Literal["gps"] = Field(description="device kind")
    fix_lost_after_s: float = Field(
        30.0, ge=1, le=3600, description="seconds without a valid fix before the fix is reported lost, 1-3600"
    )
    silence_timeout_s: float = _silence_field(10.0, "a GPS prints sentences every second")


MAC_PATTERN = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"


class IBeaconMatch(_Section):
    uuid: str = Field(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description="iBeacon proximity UUID, 8-4-4-4-12 hex digits",
    )
    major: int | None = Field(None, ge=0, le=65535, description="iBeacon major, 0-65535 (any if absent)")
    minor: int | None = Field(None, ge=0, le=65535, description="iBeacon minor, 0-65535 (any if absent)")


class _BleDevice(_Section):
    id: str = Field(pattern=ID_PATTERN, description=f"device id: {ID_ALLOWED}")
    address: str | None = Field(
        None,
        pattern=MAC_PATTERN,
        description="Bluetooth address AA:BB:CC:DD:EE:FF (printed on the device or seen in a scan)",
    )
    ibeacon: IBeaconMatch | None = Field(
        None, description="match by iBeacon identity instead of address, for devices whose address rotates"
    )
    wearer: PlainText | None = Field(None, max_length=100, description="who wears or uses it, 1-100 characters")
    resident: str | None = Field(None, description="id of the resident who wears or uses it ([[residents]])")
    supervision_s: float = Field(
        0.0,
        ge=0,
        le=7 * 86400,
        description="seconds without an advertisement before the device is reported offline, 0-604800; "
        "0 turns supervision off (for devices that only advertise when pressed)",
    )

    @model_validator(mode="after")
    def _identified(self) -> _BleDevice:
        if self.address is None and self.ibeacon is None:
            raise ValueError("give the device's address, or an ibeacon = { uuid = ... } to match it by")
        return self


class PendantDevice(_BleDevice):
    """An SOS pendant (BTHome button, plain or encrypted): one press, one alarm."""

    kind: Literal["ble_pendant"] = Field(description="device kind")
    reports_motion: bool = Field(
        False,
        description="true if its advertisements carry a BTHome moving object (then its wearer's stillness counts "
        "towards inactivity); most pendants only send presses",
    )
    bind_key: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{32}$", description="BTHome encryption key, 32 hex digits (encrypted devices)"
    )
    trigger_window_s: float = Field(
        10.0, gt=0, le=120, description="seconds a press keeps advertising; repeats within it are the same press"
    )
    trigger_ibeacon: IBeaconMatch | None = Field(
        None,
        description="for iBeacon-style pendants (KBeacon trigger slots): the identity it advertises while pressed",
    )


class WristbandDevice(_BleDevice):
    """A wristband or tag worn by a resident: presence, movement, battery."""

    kind: Literal["ble_wristband"] = Field(description="device kind")
    reports_motion: bool = Field(
        True,
        description="false for a band without a motion sensor (no BTHome moving object): its wearer's inactivity "
        "cannot be judged from it",
    )
    bind_key: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{32}$", description="BTHome encryption key, 32 hex digits (encrypted devices)"
    )


class HealthBleDevice(_BleDevice):
    """A station health device read over GATT when it advertises (after a measurement)."""

    kind: Literal["ble_health"] = Field(description="device kind")
    profile: Literal["blood_pressure", "thermometer", "oximeter", "oximeter_continuous", "scale", "heart_rate"] = Field(
        description="the GATT health profile it implements (oximeter: PLX spot-check)"
    )
    session_s: float = Field(30.0, gt=0, le=600, description="longest GATT session in seconds, >0 and <=600")
    cooldown_s: float = Field(
        30.0, ge=0, le=3600, description="seconds after a session before connecting again, 0-3600"
    )


class BadgeDevice(_BleDevice):
    """A caregiver's badge: seen long enough at the station, it records a visit."""

    kind: Literal["caregiver_badge"] = Field(description="device kind")
    caregiver: PlainText = Field(min_length=1, max_length=100, description="the caregiver's name or staff number")
    visit_min_s: float = Field(300.0, gt=0, le=86400, description="seconds seen before a visit counts, >0")
    visit_end_s: float = Field(600.0, gt=0, le=86400, description="seconds unseen before a visit is over, >0")


# The device-kind registry, written once: a [[devices]] kind is one of these models (its
# `kind` literal is the tag); the rest is derived.
SerialDevice = ContactIdReceiverDevice | RadarDevice | GpsDevice
BleDevice = PendantDevice | WristbandDevice | HealthBleDevice | BadgeDevice
Device = Annotated[SerialDevice | BleDevice, Field(discriminator="kind")]
SERIAL_KINDS = (ContactIdReceiverDevice, RadarDevice, GpsDevice)  # (for isinstance; a test holds them to the unions)
BLE_KINDS = (PendantDevice, WristbandDevice, HealthBleDevice, BadgeDevice)
DEVICE_MODELS: dict[str, type[BaseModel]] = {
    get_args(model.model_fields["kind"].annotation)[0]: model for model in (*SERIAL_KINDS, *BLE_KINDS)
}


PHONE_PATTERN = r"^(\+[1-9][0-9]{6,14}|1[3-9][0-9]{9})$"
PHONE_ALLOWED = "an international number such as +8613800138000, or an 11-digit mainland mobile number"
HOURS_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]-(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
HOURS_ALLOWED = "'HH:MM-HH:MM' in the station's time zone, e.g. '07:00-21:30'; '22:00-06:00' spans midnight"
MINUTES_PER_DAY = 24 * 60


def parse_hours(text: str) -> tuple[int, int]:
    """'07:00-21:30' -> (420, 1290) minutes after midnight; the end may be before the start."""
    start, end = text.split("-")
    return int(start[:2]) * 60 + int(start[3:]), int(end[:2]) * 60 + int(end[3:])


def in_hours(hours: str, minute_of_day: int) -> bool:
    start, end = parse_hours(hours)
    if start == end:
        return True  # '00:00-24:00' style: all day (00:00-00:00 as well)
    if start < end:
        return start <= minute_of_day < end
    return minute_of_day >= start or minute_of_day < end


def _minutes(hours: str) -> set[int]:
    start, end = parse_hours(hours)
    return {m for m in range(MINUTES_PER_DAY) if in_hours(hours, m)} if start != end else set(range(MINUTES_PER_DAY))


class Contact(_Section):
    name: PlainText = Field(
        min_length=1, max_length=50, description="who to tell, as the SMS will name them, 1-50 characters"
    )
    phone: str = Field(pattern=PHONE_PATTERN, description=PHONE_ALLOWED)
    role: Literal["family", "village_doctor", "on_duty", "neighbour", "volunteer"] = Field(
        description="how the contact relates to the resident"
    )

    @property
    def international(self) -> str:
        """The number with its country code (mainland mobiles get +86)."""
        return self.phone if self.phone.startswith("+") else "+86" + self.phone


class VitalLimits(_Section):
    """Alarm limits. Defaults are the single-parameter 'red' scores (3 points) of NEWS2 (Royal
    College of Physicians, National Early Warning Score 2, 2017): set per resident with the
    village doctor."""

    heart_rate_min: float = Field(41, ge=20, le=100, description="beats per minute below which to alarm")
    heart_rate_max: float = Field(130, ge=60, le=250, description="beats per minute above which to alarm")
    spo2_min: float = Field(92, ge=70, le=100, description="SpO2 percent below which to alarm")
    temperature_min: float = Field(35.1, ge=30, le=37, description="degrees Celsius below which to alarm")
    temperature_max: float = Field(39.0, ge=37, le=43, description="degrees Celsius above which to alarm")
    systolic_min: float = Field(91, ge=50, le=140, description="systolic mmHg below which to alarm")
    systolic_max: float = Field(219, ge=120, le=300, description="systolic mmHg above which to alarm")
    min_duration_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="seconds a continuous reading (heart rate, continuous SpO2) must stay out of range "
        "before it alarms, 0-3600; spot measurements (cuff, thermometer, spot-check) alarm at once",
    )


class ResidentSection(_Section):
    id: str = Field(pattern=ID_PATTERN, description=f"resident id used by devices and events: {ID_ALLOWED}")
    name: PlainText = Field(min_length=1, max_length=50, description="name as carers know the person, 1-50 characters")
    room: PlainText | None = Field(None, max_length=100, description="where the person lives, e.g. '3号楼201室'")
    lives_alone: bool = Field(False, description="true: watch for inactivity during waking hours")
    dementia_risk: bool = Field(False, description="true: alarm when the person's wearable is unseen (wandering)")
    waking_hours: str = Field("07:00-21:00", pattern=HOURS_PATTERN, description=HOURS_ALLOWED)
    quiet_hours: list[Annotated[str, Field(pattern=HOURS_PATTERN)]] = Field(
        default_factory=list,
        description="periods within waking hours without inactivity checks (a nap), each " + HOURS_ALLOWED,
    )
    inactivity_s: float = Field(
        4 * 3600.0,
        ge=60,
        le=86400,
        description="seconds without any activity during waking hours before an inactivity alarm, 60-86400",
    )
    absent_after_s: float = Field(
        1800.0,
        ge=60,
        le=86400,
        description="seconds the wearable of a dementia-risk resident may be unseen before an alarm, 60-86400",
    )
    absence_watch_hours: str = Field(
        "00:00-24:00", pattern=HOURS_PATTERN, description="when to watch for absence, " + HOURS_ALLOWED
    )
    vitals: VitalLimits = Field(default_factory=VitalLimits, description="[residents.vitals] alarm limits")
    contacts: list[Contact] = Field(default_factory=list, description="[[residents.contacts]] who gets an SMS")


class CareSection(_Section):
    timezone: str = Field("Asia/Shanghai", description="IANA time zone of the station, for waking hours")
    storm_window_s: float = Field(
        120.0,
        ge=0,
        le=3600,
        description="seconds in which repeated presses or falls of one resident make one alarm, 0-3600",
    )
    alarm_update_interval_s: float = Field(
        30.0, ge=1, le=3600, description="least seconds between updates of a storming alarm's count, 1-3600"
    )
    ack_timeout_s: float = Field(
        300.0,
        ge=10,
        le=86400,
        description="seconds the platform has to acknowledge a delivered alarm before it is re-announced "
        "and escalated by SMS, 10-86400",
    )
    max_reannouncements: int = Field(3, ge=0, le=100, description="re-announcements of an unacknowledged alarm")
    low_battery_percent: int = Field(20, ge=1, le=90, description="battery percent at or below which to report")
    button_test_days: float = Field(
        7.0, gt=0, le=365, description="days after which an untested emergency button is reported (JGJ/T 484 §10.3)"
    )
    device_fault_after_s: float = Field(
        7200.0,
        ge=60,
        le=7 * 86400,
        description="seconds offline after which a device is reported faulty, to be replaced (JGJ/T 484: 2 h)",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'Asia/Shanghai'") from exc
        return value


class SmsSection(_Section):
    port: str = Field(min_length=1, description="serial port of the cellular modem, preferably /dev/serial/by-id/...")
    baudrate: Literal[SERIAL_BAUDRATES] = Field(115200, description="serial speed")  # type: ignore[valid-type]
    undelivered_after_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="seconds an alarm may wait for the uplink's PUBACK before it goes out by SMS, 1-3600",
    )
    per_recipient_per_hour: int = Field(
        6, ge=1, le=60, description="most SMS to one number in any hour (a flapping link must not flood), 1-60"
    )
    send_timeout_s: float = Field(
        60.0, ge=5, le=300, description="seconds to wait for the network to take one SMS, 5-300"
    )
    on_duty: list[Contact] = Field(
        default_factory=list, description="[[sms.on_duty]] the station's on-duty numbers, told of every alarm"
    )


class BleSection(_Section):
    adapter: str = Field(
        "hci0",
        pattern=r"^(hci[0-9]+|simulated:.+)$",
        description="BlueZ adapter such as 'hci0', or 'simulated:/path/to/socket' for the simulated radio",
    )
    scanning_mode: Literal["active", "passive"] = Field(
        "active", description="'passive' needs bluetoothd --experimental (docs/devices.md)"
    )
    silence_restart_s: float = Field(
        60.0, ge=5, le=3600, description="seconds without any advertisement before the scan is restarted, 5-3600"
    )
    silence_reset_s: float = Field(
        180.0, ge=5, le=86400, description="seconds without any advertisement before the adapter is reset, 5-86400"
    )
    presence_timeout_s: float = Field(
        120.0, ge=5, le=86400, description="seconds unseen before a wearable is reported away, 5-86400"
    )
    presence_confirm_sightings: int = Field(
        3,
        ge=1,
        le=20,
        description="advertisements, at least a second apart, before a wearable without a bind_key counts as "
        "present again, 1-20 (anyone nearby can imitate it: one sighting must not end a wearer_absent alarm)",
    )

    @property
    def simulated_socket(self) -> str | None:
        return self.adapter.removeprefix("simulated:") if self.adapter.startswith("simulated:") else None


class StatusPageSection(_Section):
    bind: str = Field(
        "127.0.0.1",
        description="IP address to listen on: 127.0.0.1 for this machine only (the default); 0.0.0.0 for the "
        "station's LAN, which needs page_token in the secrets file",
    )
    hosts: list[str] = Field(
        default_factory=list,
        description="names the page may be asked for besides IP addresses, localhost and this machine's "
        "host name (a request for any other Host is refused: DNS rebinding)",
    )
    port: int = Field(8080, ge=0, le=65535, description="TCP port, 1-65535 (0: any free port, for tests)")

    @field_validator("bind")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address") from exc
        return value


class StationConfig(_Section):
    station: StationSection = Field(description="[station] section")
    uplink: UplinkSection = Field(description="[uplink] section")
    storage: StorageSection = Field(description="[storage] section")
    devices: list[Device] = Field(default_factory=list, description="[[devices]] entries")
    ble: BleSection = Field(default_factory=BleSection, description="[ble] section: the Bluetooth radio")
    residents: list[ResidentSection] = Field(default_factory=list, description="[[residents]] entries")
    care: CareSection = Field(default_factory=CareSection, description="[care] section: care rules")
    sms: SmsSection | None = Field(None, description="[sms] section: the modem for SMS escalation; absent: no SMS")
    status_page: StatusPageSection | None = Field(
        None, description="[status_page] section: a read-only page on the LAN; absent: off"
    )

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, devices: list[Device]) -> list[Device]:
        for attr in ("id", "port", "address"):
            seen: dict[str, int] = {}
            for index, device in enumerate(devices):
                value = getattr(device, attr, None)
                if value is None:
                    continue
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


STATUS_FILE_NAME = "status.json"
RUNTIME_DIR = Path("/run/care-gateway")  # the unit's RuntimeDirectory: tmpfs, spares the SD card


def status_files(config: StationConfig, runtime_directory: str | None = None) -> list[Path]:
    """Where status.json is, decided here only. The daemon writes the first: the runtime
    directory systemd gives it (`RUNTIME_DIRECTORY`, from RuntimeDirectory=care-gateway; tmpfs,
    spares the SD card), else beside the outbox. `care-gateway status`, outside the unit's
    environment, reads the first of them that exists."""
    beside_outbox = config.storage.path.with_name(STATUS_FILE_NAME)
    if runtime_directory:
        return [Path(runtime_directory) / STATUS_FILE_NAME, beside_outbox]
    return [RUNTIME_DIR / STATUS_FILE_NAME, beside_outbox]


def status_file_to_write(config: StationConfig, runtime_directory: str | None) -> Path:
    """The daemon's status.json (see status_files)."""
    return status_files(config, runtime_directory)[0 if runtime_directory else -1]


class ConfigError(GatewayError):
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
    config = parse_config(raw, source=str(path))
    mode = path.stat().st_mode & 0o777
    if config.uplink.password is not None and mode & SECRET_MODE_FORBIDDEN:
        raise ConfigError(
            [
                f"{path}: uplink.password: the file is readable or writable by other users (mode {mode:04o}), and "
                "would give the broker password away: move it to [uplink] secrets_file (chmod 640), "
                f"or chmod 640 {path}"
            ]
        )
    return config


def parse_config(raw: dict[str, Any], source: str = "<config>") -> StationConfig:
    try:
        config = StationConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([f"{source}: {line}" for line in describe_errors(exc)]) from exc
    problems = cross_check(config)
    if problems:
        raise ConfigError([f"{source}: {line}" for line in problems])
    return config


LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
SECRET_MODE_FORBIDDEN = 0o027  # group write, any access by others


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class BrokerSecrets:
    username: str | None
    password: str | None
    command_key: bytes | None = None  # HMAC-SHA256 key: downlink commands must be signed with it
    page_token: str | None = None  # the status page's password for the LAN (?token=...)


def read_secrets(path: Path) -> BrokerSecrets:
    """The broker's user name and password from `path`; raise ValueError saying what is wrong."""
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    if mode & SECRET_MODE_FORBIDDEN:
        raise ValueError(
            f"{path} is readable or writable by other users (mode {mode:04o}); run: chmod 640 {path} "
            f"(owner root, group care-gateway)"
        )
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: TOML syntax error: {exc}") from exc
    unknown = set(raw) - {"username", "password", "command_key", "page_token"}
    if unknown or not all(isinstance(v, str) for v in raw.values()):
        raise ValueError(
            f'{path}: only username = "...", password = "...", command_key = "<64 hex digits>" and '
            'page_token = "<at least 16 characters>" are allowed'
        )
    token = raw.get("page_token")
    if token is not None and (len(token) < 16 or not token.isascii() or not token.isprintable()):
        raise ValueError(f"{path}: page_token must be at least 16 printable ASCII characters (openssl rand -hex 16)")
    key = raw.get("command_key")
    if key is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", key):
        raise ValueError(
            f"{path}: command_key must be 64 hex digits (32 random bytes, e.g. from: openssl rand -hex 32)"
        )
    return BrokerSecrets(raw.get("username"), raw.get("password"), bytes.fromhex(key) if key else None, token)


def cross_check(config: StationConfig) -> list[str]:
    """What one section says about another: plaintext links, secrets, residents, quiet hours."""
    problems: list[str] = []
    up = config.uplink
    for host, _ in up.brokers:
        if up.tls is None and not up.allow_plaintext and not is_loopback(host):
            problems.append(
                f"uplink: plaintext MQTT to {host} is refused (allowed: an [uplink.tls] section with ca_file, "
                "usually port 8883; or allow_plaintext = true where the link itself is private)"
            )
    secrets = None
    if up.secrets_file is not None:
        try:
            secrets = read_secrets(up.secrets_file)
        except ValueError as exc:
            problems.append(f"uplink.secrets_file: {exc}")
    page = config.status_page
    if page is not None and not is_loopback(page.bind) and (secrets is None or secrets.page_token is None):
        problems.append(
            f"status_page.bind: {page.bind} opens the page to the LAN, which needs a password: put "
            'page_token = "<at least 16 characters>" in the [uplink] secrets_file (or bind = "127.0.0.1")'
        )
    known = [r.id for r in config.residents]
    allowed = f"(allowed: resident ids from [[residents]]: {', '.join(known) or 'none defined'})"
    seen: dict[str, int] = {}
    for i, resident in enumerate(config.residents):
        if resident.id in seen:
            problems.append(f"residents[{i}].id: {resident.id!r} is already residents[{seen[resident.id]}].id")
        seen.setdefault(resident.id, i)
        minutes = [_minutes(h) for h in resident.quiet_hours]
        for k in range(len(minutes)):
            for j in range(k):
                if minutes[k] & minutes[j]:
                    problems.append(
                        f"residents[{i}].quiet_hours[{k}]: {resident.quiet_hours[k]!r} overlaps "
                        f"quiet_hours[{j}] {resident.quiet_hours[j]!r} (allowed: periods that do not overlap)"
                    )
    for i, device in enumerate(config.devices):
        resident_id = getattr(device, "resident", None)
        if resident_id is not None and resident_id not in seen:
            problems.append(f"devices[{i}].resident: {resident_id!r} is not a resident {allowed}")
        for zone, rid in getattr(device, "residents", {}).items():
            if rid not in seen:
                problems.append(f"devices[{i}].residents.{zone}: {rid!r} is not a resident {allowed}")
    return problems


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
        if part in DEVICE_MODELS:  # pydantic names the chosen member of the devices union
            model = DEVICE_MODELS[part]
            continue
        if part == "devices":  # the member's tag follows the index
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


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per problem: 'key.path: what is wrong (allowed: ...)'."""
    return [_describe(err) for err in exc.errors(include_url=False)]


def _describe(err: Any) -> str:
    loc = tuple(part for part in err["loc"] if not (isinstance(part, str) and "[" in part))
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    path = key_path(tuple(part for part in loc if part not in DEVICE_MODELS))  # hide the union member
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = ", ".join(repr(tag) for tag in DEVICE_MODELS)
        problem = "required key is missing" if kind == "union_tag_not_found" else f"{ctx.get('tag')!r} is not allowed"
        return f"{path}.kind: {problem} (allowed: {tags})"
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        return f"{path}: unknown key (allowed keys here: {', '.join(owner.model_fields) if owner else '?'})"
    description = _field_description(loc)
    if kind == "missing":
        return f"{path}: required key is missing" + (f" ({description})" if description else "")
    if kind == "string_pattern_mismatch":
        return f"{path}: {given!r} is not allowed (allowed: {description})"
    if kind == "literal_error":
        return f"{path}: {given!r} is not allowed (allowed: {ctx.get('expected')})"
    message = err["msg"].removeprefix("Value error, ")
    shown = f" (got {given!r})" if not isinstance(given, dict | list) else ""
    allowed = f" (allowed: {description})" if description and kind != "value_error" else ""
    return f"{path}: {message}{shown}{allowed}"
