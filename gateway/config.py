"""The station configuration: strict pydantic models of the TOML file a technician edits.

Every model forbids unknown keys (a typo must not be silently ignored on a station two
hours' drive away) and every field's description says what is allowed, because that text is
what `care-gateway check-config` prints next to a wrong value.
"""

from __future__ import annotations

import ipaddress
import json
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
from gateway.i18n import LANGUAGES, N_, _, use_language

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
ID_ALLOWED = N_("lower-case letters, digits, '-' and '_', 1-64 characters, starting with a letter or digit")
SERIAL_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocationSection(_Section):
    lat: float = Field(ge=-90, le=90, description=N_("latitude in degrees, -90 to 90 (WGS 84)"))
    lon: float = Field(ge=-180, le=180, description=N_("longitude in degrees, -180 to 180 (WGS 84)"))


class StationSection(_Section):
    id: str = Field(
        pattern=ID_PATTERN,
        description=N_(
            "station id used in MQTT topics: lower-case letters, digits, '-' and '_', 1-64 characters, starting "
            "with a letter or digit"
        ),
    )
    name: PlainText = Field(min_length=1, max_length=200, description=N_("human-readable name, 1-200 characters"))
    trust_clock: Literal["auto", "always"] = Field(
        "auto",
        description=N_(
            "'auto' trusts the wall clock once NTP has synchronised it; "
            "'always' for a box with a GPS or a battery-backed clock"
        ),
    )
    location: LocationSection | None = Field(
        None, description=N_("fixed location {lat, lon} attached to alarms when no GPS fix is available")
    )
    language: Literal["zh_CN", "en"] | None = Field(
        None,
        description=N_(
            "language of what the station tells its technician (check-config, doctor, status, the page, the "
            'journal): "zh_CN" or "en"; absent: the environment\'s (LANG), else English'
        ),
    )


class TlsSection(_Section):
    ca_file: Path = Field(description=N_("path of the CA certificate (PEM) that signed the broker's certificate"))
    cert_file: Path | None = Field(None, description=N_("path of this station's client certificate (PEM)"))
    key_file: Path | None = Field(None, description=N_("path of this station's private key (PEM)"))


def printable(text: str) -> str:
    """Text with control, format and direction characters (newlines, ANSI escapes, bidi
    overrides) replaced by U+FFFD: for what a radio, a broker or a file says, before it is
    printed, logged or sent by SMS."""
    return "".join("\ufffd" if unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" else c for c in text)


def _plain(text: str) -> str:
    if printable(text) != text:
        bad = next(c for c in text if printable(c) != c)
        raise ValueError(
            _(
                "contains the control or direction character U+{code}: it would garble the SMS, the page and the "
                "journal; retype the text"
            ).format(code=f"{ord(bad):04X}")
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
    host: str = Field(min_length=1, description=N_("broker host name or IP address"))
    port: int = Field(1883, ge=1, le=65535, description=N_("broker TCP port, 1-65535"))
    failover: list[str] = Field(
        default_factory=list,
        max_length=8,
        description=N_(
            "more brokers of the same platform, tried in order when the one in use cannot be reached: "
            'up to 8 entries "host" or "host:port" (the port defaults to port)'
        ),
    )
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description=N_(
            'MQTT version: "5" (the broker\'s refusal of a publish is seen) or "3.1.1" '
            "(for a broker without MQTT 5; it may acknowledge a publish its ACL denied)"
        ),
    )
    topic_prefix: str = Field(
        "care/v1",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description=N_(
            "topic levels of letters, digits, '-' or '_' joined by '/', no wildcards, no leading or trailing '/'"
        ),
    )
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description=N_("MQTT client id, 1-128 characters; default 'care-gw-<station id>'"),
    )
    username: str | None = Field(None, description=N_("MQTT user name, if the broker requires one"))
    password: str | None = Field(
        None, description=N_("MQTT password; better kept in secrets_file, readable by the service only")
    )
    secrets_file: Path | None = Field(
        None,
        description=N_(
            "a TOML file with username and password for the broker, not readable by other users "
            "(chmod 640, owner root, group care-gateway)"
        ),
    )
    share_personal_data: bool = Field(
        False,
        description=N_(
            "true only where the platform has the legal basis (PIPL Art. 13, 28-29): events and the "
            "status then also carry residents' names and rooms, wearers', caregivers' and SMS recipients' names; "
            "without it they carry ids and roles only (docs/mqtt.md, 'Personal data')"
        ),
    )
    allow_plaintext: bool = Field(
        False,
        description=N_(
            "true to allow MQTT without TLS to a host other than this machine (the link then carries "
            "alarms and names in clear); without it such a file is refused"
        ),
    )
    keepalive_s: int = Field(
        30,
        ge=2,
        le=1200,
        description=N_(
            "a dead or silent link is noticed within this many seconds, 2-1200 "
            "(the MQTT keepalive sent to the broker is half of it)"
        ),
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, le=120, description=N_("seconds to wait for the broker's CONNACK, >0 and <=120")
    )
    publish_timeout_s: float = Field(
        10.0, gt=0, le=120, description=N_("seconds to wait for a PUBACK before reconnecting, >0 and <=120")
    )
    reconnect_max_s: float = Field(
        60.0, ge=1, le=3600, description=N_("longest wait between reconnect attempts in seconds, 1-3600")
    )
    status_interval_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        description=N_(
            "seconds between heartbeats while connected (the full status is sent on connect and when "
            "something an operator acts on changes), 1-3600"
        ),
    )
    tls: TlsSection | None = Field(None, description=N_("[uplink.tls] section; absent means plain TCP"))
    link_profile: LinkProfile = Field(
        "broadband", description=N_("the kind of link, which sets batching, compression and the byte budget")
    )
    batch_max_events: int | None = Field(
        None, ge=1, le=5000, description=N_("events per status/telemetry message, 1-5000 (overrides the profile)")
    )
    batch_linger_ms: int | None = Field(
        None, ge=0, le=60000, description=N_("ms a short batch waits for more events, 0-60000 (overrides the profile)")
    )
    compress: bool | None = Field(None, description=N_("true or false: zlib-compress batches (overrides the profile)"))
    byte_budget_per_s: int | None = Field(
        None,
        ge=0,
        le=100_000_000,
        description=N_(
            "most bytes per second of status and telemetry, 0 for no limit (overrides the profile); "
            "alarms are never held back"
        ),
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_number(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("failover")
    @classmethod
    def _failover_addresses(cls, entries: list[str]) -> list[str]:
        for i, entry in enumerate(entries):
            host, _colon, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
            if not host or not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", host):
                raise ValueError(
                    _('failover[{i}]: {entry} is not "host" or "host:port"').format(i=i, entry=_toml(entry))
                )
            if port and not (port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError(_("failover[{i}]: port {port} is not 1-65535").format(i=i, port=_toml(port)))
        return entries

    @property
    def brokers(self) -> list[tuple[str, int]]:
        """Every broker address, in the order they are tried: host:port, then the failover list."""
        out = [(self.host, self.port)]
        for entry in self.failover:
            host, _colon, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
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
    path: Path = Field(description=N_("path of the outbox database file; its folder must be writable"))
    max_bytes: int = Field(
        256 * MIB,
        ge=64 * 1024,
        description=N_(
            "most bytes of events the outbox keeps (at least 65536); when full, the oldest "
            "telemetry is shed first, then status, never alarms"
        ),
    )
    alarm_reserve_bytes: int | None = Field(
        None,
        ge=0,
        description=N_(
            "part of max_bytes kept for alarms only, in bytes, less than half of max_bytes; "
            "default 5 percent of max_bytes"
        ),
    )
    disk_reserve_bytes: int = Field(
        8 * MIB,
        ge=2 * MIB,
        le=1024 * MIB,
        description=N_(
            "bytes of disk held in a reserve file beside the outbox (2 MiB to 1 GiB) and given up "
            "when the disk is full, so that shedding and alarms can still be written"
        ),
    )
    max_age_days: float | None = Field(
        None,
        gt=0,
        le=3650,
        description=N_(
            "status and telemetry older than this many days are shed, >0 and <=3650; alarms are "
            "always kept; default: no age limit"
        ),
    )

    @model_validator(mode="after")
    def _reserve_fits(self) -> StorageSection:
        if self.alarm_reserve_bytes is not None and self.alarm_reserve_bytes * 2 >= self.max_bytes:
            raise ValueError(
                _("alarm_reserve_bytes ({reserve}) must be less than half of max_bytes ({most})").format(
                    reserve=self.alarm_reserve_bytes, most=self.max_bytes
                )
            )
        return self

    @property
    def reserve_bytes(self) -> int:
        return self.max_bytes // 20 if self.alarm_reserve_bytes is None else self.alarm_reserve_bytes


def _silence_field(default: float, description: str) -> Any:
    return Field(default, ge=0, le=86400, description=description)


class _SerialDevice(_Section):
    id: str = Field(pattern=ID_PATTERN, description=ID_ALLOWED)
    port: str = Field(
        min_length=1,
        description=N_("serial port path, preferably /dev/serial/by-id/... (stable across replugging)"),
    )
    baudrate: Literal[SERIAL_BAUDRATES] = Field(9600, description=N_("serial speed"))  # type: ignore[valid-type]
    bytesize: Literal[7, 8] = Field(8, description=N_("data bits"))
    parity: Literal["N", "E", "O"] = Field("N", description=N_("parity"))
    stopbits: Literal[1, 2] = Field(1, description=N_("stop bits"))
    label: PlainText | None = Field(
        None, max_length=100, description=N_("where the device is, e.g. 'bedroom', 1-100 characters")
    )


class ContactIdReceiverDevice(_SerialDevice):
    """An alarm receiver's automation output (emergency buttons, pendants, panels)."""

    kind: Literal["contact_id_receiver"] = Field(description=N_("device kind"))
    format: ReceiverFormat = Field(
        "surgard", description=N_("receiver output format: Sur-Gard MLR2 automation or Ademco 685")
    )
    silence_timeout_s: float = _silence_field(
        100.0,
        N_(
            "seconds without a byte from the receiver (it sends a heartbeat about every 30 s) before it is "
            "reported offline, 0-86400; 0 turns the check off"
        ),
    )
    residents: dict[Annotated[str, Field(pattern=r"^[0-9]{1,3}$")], str] = Field(
        default_factory=dict,
        description=N_(
            'which resident each zone (or user) number belongs to, e.g. { 3 = "wang-xiuying" }; '
            "keys are 1-3 digit numbers, values resident ids from [[residents]]"
        ),
    )


class RadarDevice(_SerialDevice):
    """A Seeed mmWave radar on a UART: fall (MR60FDA1, MR60FDA2) or presence (MR24HPC1)."""

    kind: Literal["mmwave_radar"] = Field(description=N_("device kind"))
    model: RadarModel = Field(description=N_("radar model"))
    baudrate: Literal[SERIAL_BAUDRATES] = Field(115200, description=N_("serial speed"))  # type: ignore[valid-type]
    heartbeat_interval_s: float = Field(
        10.0, ge=1, le=3600, description=N_("seconds between the gateway's heartbeat queries, 1-3600")
    )
    silence_timeout_s: float = _silence_field(
        35.0,
        N_(
            "seconds without a byte from the radar (it answers every heartbeat query) before it is reported "
            "offline, 0-86400; 0 turns the check off"
        ),
    )
    activity_summary_s: float = Field(
        300.0, ge=10, le=86400, description=N_("seconds between activity summaries, 10-86400")
    )
    resident: str | None = Field(None, description=N_("id of the resident whose room it watches ([[residents]])"))


class GpsDevice(_SerialDevice):
    """An NMEA 0183 GPS receiver, for mobile stations (care vans, seasonal camps)."""

    kind: Literal["gps"] = Field(description=N_("device kind"))
    fix_lost_after_s: float = Field(
        30.0, ge=1, le=3600, description=N_("seconds without a valid fix before the fix is reported lost, 1-3600")
    )
    silence_timeout_s: float = _silence_field(
        10.0,
        N_(
            "seconds without a byte from the GPS (it prints sentences every second) before it is reported "
            "offline, 0-86400; 0 turns the check off"
        ),
    )


MAC_PATTERN = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"


class IBeaconMatch(_Section):
    uuid: str = Field(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description=N_("iBeacon proximity UUID, 8-4-4-4-12 hex digits"),
    )
    major: int | None = Field(None, ge=0, le=65535, description=N_("iBeacon major, 0-65535 (any if absent)"))
    minor: int | None = Field(None, ge=0, le=65535, description=N_("iBeacon minor, 0-65535 (any if absent)"))


class _BleDevice(_Section):
    id: str = Field(pattern=ID_PATTERN, description=ID_ALLOWED)
    address: str | None = Field(
        None,
        pattern=MAC_PATTERN,
        description=N_("Bluetooth address AA:BB:CC:DD:EE:FF (printed on the device or seen in a scan)"),
    )
    ibeacon: IBeaconMatch | None = Field(
        None, description=N_("match by iBeacon identity instead of address, for devices whose address rotates")
    )
    wearer: PlainText | None = Field(None, max_length=100, description=N_("who wears or uses it, 1-100 characters"))
    resident: str | None = Field(None, description=N_("id of the resident who wears or uses it ([[residents]])"))
    supervision_s: float = Field(
        0.0,
        ge=0,
        le=7 * 86400,
        description=N_(
            "seconds without an advertisement before the device is reported offline, 0-604800; "
            "0 turns supervision off (for devices that only advertise when pressed)"
        ),
    )

    @model_validator(mode="after")
    def _identified(self) -> _BleDevice:
        if self.address is None and self.ibeacon is None:
            raise ValueError(_("give the device's address, or an ibeacon = { uuid = ... } to match it by"))
        return self


class PendantDevice(_BleDevice):
    """An SOS pendant (BTHome button, plain or encrypted): one press, one alarm."""

    kind: Literal["ble_pendant"] = Field(description=N_("device kind"))
    reports_motion: bool = Field(
        False,
        description=N_(
            "true if its advertisements carry a BTHome moving object (then its wearer's stillness counts "
            "towards inactivity); most pendants only send presses"
        ),
    )
    bind_key: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{32}$", description=N_("BTHome encryption key, 32 hex digits (encrypted devices)")
    )
    trigger_window_s: float = Field(
        10.0, gt=0, le=120, description=N_("seconds a press keeps advertising; repeats within it are the same press")
    )
    trigger_ibeacon: IBeaconMatch | None = Field(
        None,
        description=N_("for iBeacon-style pendants (KBeacon trigger slots): the identity it advertises while pressed"),
    )


class WristbandDevice(_BleDevice):
    """A wristband or tag worn by a resident: presence, movement, battery."""

    kind: Literal["ble_wristband"] = Field(description=N_("device kind"))
    reports_motion: bool = Field(
        True,
        description=N_(
            "false for a band without a motion sensor (no BTHome moving object): its wearer's inactivity "
            "cannot be judged from it"
        ),
    )
    bind_key: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{32}$", description=N_("BTHome encryption key, 32 hex digits (encrypted devices)")
    )


class HealthBleDevice(_BleDevice):
    """A station health device read over GATT when it advertises (after a measurement)."""

    kind: Literal["ble_health"] = Field(description=N_("device kind"))
    profile: Literal["blood_pressure", "thermometer", "oximeter", "oximeter_continuous", "scale", "heart_rate"] = Field(
        description=N_("the GATT health profile it implements (oximeter: PLX spot-check)")
    )
    session_s: float = Field(30.0, gt=0, le=600, description=N_("longest GATT session in seconds, >0 and <=600"))
    cooldown_s: float = Field(
        30.0, ge=0, le=3600, description=N_("seconds after a session before connecting again, 0-3600")
    )


class BadgeDevice(_BleDevice):
    """A caregiver's badge: seen long enough at the station, it records a visit."""

    kind: Literal["caregiver_badge"] = Field(description=N_("device kind"))
    caregiver: PlainText = Field(min_length=1, max_length=100, description=N_("the caregiver's name or staff number"))
    visit_min_s: float = Field(300.0, gt=0, le=86400, description=N_("seconds seen before a visit counts, >0"))
    visit_end_s: float = Field(600.0, gt=0, le=86400, description=N_("seconds unseen before a visit is over, >0"))


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
PHONE_ALLOWED = N_("an international number such as +8613800138000, or an 11-digit mainland mobile number")
HOURS_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]-(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
HOURS_ALLOWED = N_("'HH:MM-HH:MM' in the station's time zone, e.g. '07:00-21:30'; '22:00-06:00' spans midnight")
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
        min_length=1, max_length=50, description=N_("who to tell, as the SMS will name them, 1-50 characters")
    )
    phone: str = Field(pattern=PHONE_PATTERN, description=PHONE_ALLOWED)
    role: Literal["family", "village_doctor", "on_duty", "neighbour", "volunteer"] = Field(
        description=N_("how the contact relates to the resident")
    )

    @property
    def international(self) -> str:
        """The number with its country code (mainland mobiles get +86)."""
        return self.phone if self.phone.startswith("+") else "+86" + self.phone


class VitalLimits(_Section):
    """Alarm limits. Defaults are the single-parameter 'red' scores (3 points) of NEWS2 (Royal
    College of Physicians, National Early Warning Score 2, 2017): set per resident with the
    village doctor."""

    heart_rate_min: float = Field(41, ge=20, le=100, description=N_("beats per minute below which to alarm"))
    heart_rate_max: float = Field(130, ge=60, le=250, description=N_("beats per minute above which to alarm"))
    spo2_min: float = Field(92, ge=70, le=100, description=N_("SpO2 percent below which to alarm"))
    temperature_min: float = Field(35.1, ge=30, le=37, description=N_("degrees Celsius below which to alarm"))
    temperature_max: float = Field(39.0, ge=37, le=43, description=N_("degrees Celsius above which to alarm"))
    systolic_min: float = Field(91, ge=50, le=140, description=N_("systolic mmHg below which to alarm"))
    systolic_max: float = Field(219, ge=120, le=300, description=N_("systolic mmHg above which to alarm"))
    min_duration_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description=N_(
            "seconds a continuous reading (heart rate, continuous SpO2) must stay out of range "
            "before it alarms, 0-3600; spot measurements (cuff, thermometer, spot-check) alarm at once"
        ),
    )


class ResidentSection(_Section):
    id: str = Field(
        pattern=ID_PATTERN,
        description=N_(
            "resident id used by devices and events: lower-case letters, digits, '-' and '_', 1-64 characters, "
            "starting with a letter or digit"
        ),
    )
    name: PlainText = Field(
        min_length=1, max_length=50, description=N_("name as carers know the person, 1-50 characters")
    )
    room: PlainText | None = Field(None, max_length=100, description=N_("where the person lives, e.g. '3号楼201室'"))
    lives_alone: bool = Field(False, description=N_("true: watch for inactivity during waking hours"))
    dementia_risk: bool = Field(False, description=N_("true: alarm when the person's wearable is unseen (wandering)"))
    waking_hours: str = Field("07:00-21:00", pattern=HOURS_PATTERN, description=HOURS_ALLOWED)
    quiet_hours: list[Annotated[str, Field(pattern=HOURS_PATTERN)]] = Field(
        default_factory=list,
        description=N_(
            "periods within waking hours without inactivity checks (a nap), each 'HH:MM-HH:MM' in the station's "
            "time zone, e.g. '12:30-14:00'"
        ),
    )
    inactivity_s: float = Field(
        4 * 3600.0,
        ge=60,
        le=86400,
        description=N_("seconds without any activity during waking hours before an inactivity alarm, 60-86400"),
    )
    absent_after_s: float = Field(
        1800.0,
        ge=60,
        le=86400,
        description=N_("seconds the wearable of a dementia-risk resident may be unseen before an alarm, 60-86400"),
    )
    absence_watch_hours: str = Field(
        "00:00-24:00",
        pattern=HOURS_PATTERN,
        description=N_("when to watch for absence, 'HH:MM-HH:MM' in the station's time zone, e.g. '20:00-07:00'"),
    )
    vitals: VitalLimits = Field(default_factory=VitalLimits, description=N_("[residents.vitals] alarm limits"))
    contacts: list[Contact] = Field(default_factory=list, description=N_("[[residents.contacts]] who gets an SMS"))


class CareSection(_Section):
    timezone: str = Field("Asia/Shanghai", description=N_("IANA time zone of the station, for waking hours"))
    storm_window_s: float = Field(
        120.0,
        ge=0,
        le=3600,
        description=N_("seconds in which repeated presses or falls of one resident make one alarm, 0-3600"),
    )
    alarm_update_interval_s: float = Field(
        30.0, ge=1, le=3600, description=N_("least seconds between updates of a storming alarm's count, 1-3600")
    )
    ack_timeout_s: float = Field(
        300.0,
        ge=10,
        le=86400,
        description=N_(
            "seconds the platform has to acknowledge a delivered alarm before it is re-announced "
            "and escalated by SMS, 10-86400"
        ),
    )
    max_reannouncements: int = Field(3, ge=0, le=100, description=N_("re-announcements of an unacknowledged alarm"))
    low_battery_percent: int = Field(20, ge=1, le=90, description=N_("battery percent at or below which to report"))
    button_test_days: float = Field(
        7.0, gt=0, le=365, description=N_("days after which an untested emergency button is reported (JGJ/T 484 §10.3)")
    )
    device_fault_after_s: float = Field(
        7200.0,
        ge=60,
        le=7 * 86400,
        description=N_("seconds offline after which a device is reported faulty, to be replaced (JGJ/T 484: 2 h)"),
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                _("unknown time zone {value}; use an IANA name such as 'Asia/Shanghai'").format(value=_toml(value))
            ) from exc
        return value


class SmsSection(_Section):
    port: str = Field(
        min_length=1, description=N_("serial port of the cellular modem, preferably /dev/serial/by-id/...")
    )
    baudrate: Literal[SERIAL_BAUDRATES] = Field(115200, description=N_("serial speed"))  # type: ignore[valid-type]
    undelivered_after_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        description=N_("seconds an alarm may wait for the uplink's PUBACK before it goes out by SMS, 1-3600"),
    )
    per_recipient_per_hour: int = Field(
        6, ge=1, le=60, description=N_("most SMS to one number in any hour (a flapping link must not flood), 1-60")
    )
    send_timeout_s: float = Field(
        60.0, ge=5, le=300, description=N_("seconds to wait for the network to take one SMS, 5-300")
    )
    on_duty: list[Contact] = Field(
        default_factory=list, description=N_("[[sms.on_duty]] the station's on-duty numbers, told of every alarm")
    )


class BleSection(_Section):
    adapter: str = Field(
        "hci0",
        pattern=r"^(hci[0-9]+|simulated:.+)$",
        description=N_("BlueZ adapter such as 'hci0', or 'simulated:/path/to/socket' for the simulated radio"),
    )
    scanning_mode: Literal["active", "passive"] = Field(
        "active", description=N_("'passive' needs bluetoothd --experimental (docs/devices.md)")
    )
    silence_restart_s: float = Field(
        60.0, ge=5, le=3600, description=N_("seconds without any advertisement before the scan is restarted, 5-3600")
    )
    silence_reset_s: float = Field(
        180.0, ge=5, le=86400, description=N_("seconds without any advertisement before the adapter is reset, 5-86400")
    )
    presence_timeout_s: float = Field(
        120.0, ge=5, le=86400, description=N_("seconds unseen before a wearable is reported away, 5-86400")
    )
    presence_confirm_sightings: int = Field(
        3,
        ge=1,
        le=20,
        description=N_(
            "advertisements, at least a second apart, before a wearable without a bind_key counts as "
            "present again, 1-20 (anyone nearby can imitate it: one sighting must not end a wearer_absent alarm)"
        ),
    )

    @property
    def simulated_socket(self) -> str | None:
        return self.adapter.removeprefix("simulated:") if self.adapter.startswith("simulated:") else None


class StatusPageSection(_Section):
    bind: str = Field(
        "127.0.0.1",
        description=N_(
            "IP address to listen on: 127.0.0.1 for this machine only (the default); 0.0.0.0 for the "
            "station's LAN, which needs page_token in the secrets file"
        ),
    )
    hosts: list[str] = Field(
        default_factory=list,
        description=N_(
            "names the page may be asked for besides IP addresses, localhost and this machine's "
            "host name (a request for any other Host is refused: DNS rebinding)"
        ),
    )
    port: int = Field(8080, ge=0, le=65535, description=N_("TCP port, 1-65535 (0: any free port, for tests)"))

    @field_validator("bind")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(_("{value} is not an IP address").format(value=_toml(value))) from exc
        return value


class StationConfig(_Section):
    station: StationSection = Field(description=N_("[station] section"))
    uplink: UplinkSection = Field(description=N_("[uplink] section"))
    storage: StorageSection = Field(description=N_("[storage] section"))
    devices: list[Device] = Field(default_factory=list, description=N_("[[devices]] entries"))
    ble: BleSection = Field(default_factory=BleSection, description=N_("[ble] section: the Bluetooth radio"))
    residents: list[ResidentSection] = Field(default_factory=list, description=N_("[[residents]] entries"))
    care: CareSection = Field(default_factory=CareSection, description=N_("[care] section: care rules"))
    sms: SmsSection | None = Field(None, description=N_("[sms] section: the modem for SMS escalation; absent: no SMS"))
    status_page: StatusPageSection | None = Field(
        None, description=N_("[status_page] section: a read-only page on the LAN; absent: off")
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
                        _(
                            "devices[{first}] and devices[{second}] have the same {key} {value}; each device needs "
                            "its own {key}"
                        ).format(first=seen[value], second=index, key=attr, value=_toml(value))
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
    """The configuration cannot be used; `problems` holds one technician-readable line each:
    'file:line:column: key path: what is wrong (allowed: ...)', in the station's language."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


Loc = tuple[int | str, ...]  # a key path in the station file: ('devices', 11, 'baudrate')


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a station file: where (a key path; () for the file) and what."""

    loc: Loc
    message: str


_TOML_POSITION = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")
# tomllib's words (by their start) -> the technician's
TOML_MESSAGES = {
    "Invalid value": N_(
        'this value is not valid: text needs ASCII double quotes (name = "..."), numbers and true/false none'
    ),
    "Expected '=' after a key": N_("expected '=' after the key (key = value)"),
    "Invalid statement": N_("this line is neither key = value nor a [section] heading"),
    "Unterminated string": N_('a text value is not closed: its closing ASCII double quote " is missing'),
    "Unclosed array": N_("a list [ ... ] is not closed with ]"),
    "Unclosed inline table": N_("an inline table { ... } is not closed with }"),
    "Cannot overwrite a value": N_("this key is given twice"),
    "Cannot declare": N_("this key or section is given twice"),
    "Invalid initial character for a key part": N_("a key must start with a letter, a digit, '-' or '_'"),
    "Illegal character": N_("a character that is not allowed here (a control character?)"),
    "Expected newline or end of document": N_("something follows the value on the same line; one key = value a line"),
    "Expected ']' at the end of a table declaration": N_("the [section] heading is not closed with ]"),
    "Expected ']]' at the end of an array declaration": N_("the [[section]] heading is not closed with ]]"),
    "Invalid date or datetime": N_("not a valid date or time"),
    "Unescaped '\\' in a string": N_(
        "a backslash \\ in a text value: write it twice (\\\\) or use single quotes ('C:\\path')"
    ),
}
# what a Chinese keyboard types instead of TOML's ASCII punctuation
FULL_WIDTH = {
    "\u201c": '"',  # “
    "\u201d": '"',  # ”
    "\u2018": "'",  # ‘
    "\u2019": "'",  # ’
    "\uff02": '"',  # ＂
    "\uff07": "'",  # ＇
    "\uff1d": "=",  # ＝
    "\uff1a": "=",  # ： (a colon where TOML wants =)
    "\uff0c": ",",  # ，
    "\u3001": ",",  # 、
    "\uff3b": "[",  # ［
    "\uff3d": "]",  # ］
    "\u3010": "[",  # 【
    "\u3011": "]",  # 】
    "\uff5b": "{",  # ｛
    "\uff5d": "}",  # ｝
    "\uff03": "#",  # ＃
    "\u3000": " ",  # the ideographic space
    "\uff0e": ".",  # ．
    "\u3002": ".",  # 。
}


def full_width_hints(line_text: str) -> list[tuple[int, str]]:
    """(column, hint) for full-width punctuation outside ASCII-quoted text on a line (inside
    "...", 王（大） is a name like any other)."""
    hints: list[tuple[int, str]] = []
    quote = ""
    for column, char in enumerate(line_text, 1):
        if quote:
            if char == quote:
                quote = ""
            continue
        if char in "\"'":
            quote = char
        elif char == "#":
            break
        elif char in FULL_WIDTH:
            hints.append(
                (
                    column,
                    _(
                        "'{char}' is full-width punctuation (a Chinese keyboard): type the ASCII '{ascii}' instead"
                    ).format(char=char, ascii=FULL_WIDTH[char]),
                )
            )
    return hints


_UNQUOTED = re.compile(r"^\s*[\w.\"'-]+\s*=\s*[^\s\"'\[{0-9+\-]")  # key = 王桂花: text without quotes


def _toml_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    match = _TOML_POSITION.match(str(exc))
    said = match["msg"] if match else str(exc)
    meaning = next((_(ours) for theirs, ours in TOML_MESSAGES.items() if said.startswith(theirs)), said)
    if not match:
        return ConfigError([_("{file}: TOML syntax error: {problem}").format(file=path, problem=meaning)])
    line, column = int(match["line"]), int(match["col"])
    lines = text.splitlines()
    here = lines[line - 1] if 0 < line <= len(lines) else ""
    out = [
        _("{file}:{line}:{column}: TOML syntax error: {problem}").format(
            file=path, line=line, column=column, problem=meaning
        )
    ]
    hints = full_width_hints(here)
    if not hints and said.startswith("Invalid value") and _UNQUOTED.match(here):
        hints.append((column, _('put text in ASCII double quotes: name = "王桂花"')))
    out += [f"{path}:{line}:{at}: {hint}" for at, hint in hints]
    return ConfigError(out)


def load_config(path: Path | str) -> StationConfig:
    """Read and validate a station file; raise ConfigError naming file, line, key path and what
    is allowed. The station's `language` applies from here on (see gateway.i18n)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([_("{file}: cannot read the file: {reason}").format(file=path, reason=exc)]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(path, text, exc) from exc
    config = parse_config(raw, source=str(path), text=text)
    mode = path.stat().st_mode & 0o777
    if config.uplink.password is not None and mode & SECRET_MODE_FORBIDDEN:
        problem = Problem(
            ("uplink", "password"),
            _(
                "the file is readable or writable by other users (mode {mode}), and would give the broker password "
                "away: move it to [uplink] secrets_file (chmod 640), or run: chmod 640 {file}"
            ).format(mode=f"{mode:04o}", file=path),
        )
        raise ConfigError([render_problem(str(path), text, raw, problem)])
    return config


def parse_config(raw: dict[str, Any], source: str = "<config>", text: str = "") -> StationConfig:
    """Validate a parsed station file (`text`, its source, gives the lines of the problems)."""
    station = raw.get("station")
    language = station.get("language") if isinstance(station, dict) else None
    use_language(language if language in LANGUAGES else None)  # (before the first message)
    try:
        config = StationConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([render_problem(source, text, raw, p) for p in describe_errors(exc)]) from exc
    problems = cross_check(config)
    if problems:
        raise ConfigError([render_problem(source, text, raw, p) for p in problems])
    return config


def render_problem(source: str, text: str, raw: dict[str, Any], problem: Problem) -> str:
    """'file:line:column: devices[11] (id = "radar-3").baudrate: what is wrong'."""
    where = locate(text, problem.loc) if text else None
    place = f"{source}:{where[0]}:{where[1]}" if where else source
    if not problem.loc:
        return f"{place}: {problem.message}"
    return f"{place}: {named_key_path(raw, problem.loc)}: {problem.message}"


def named_key_path(raw: dict[str, Any], loc: Loc) -> str:
    """key_path with the id (or name) of each list entry it passes: devices[11] (id = "radar-3")."""
    out = ""
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            if isinstance(node, dict):
                for name in ("id", "name"):
                    if isinstance(node.get(name), str):
                        out += f" ({name} = {json.dumps(printable(node[name]), ensure_ascii=False)})"
                        break
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or _("(top level)")


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]#]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def _key_parts(dotted: str) -> list[str]:
    return [part.strip().strip("\"'") for part in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", dotted)]


def locate(text: str, loc: Loc) -> tuple[int, int] | None:
    """(line, column) in a station file of the key at `loc` or, failing that, of the nearest
    key or [section] that holds it. A line scanner, not a TOML parser: headings, key = value
    lines and the keys of one-line inline tables, which is what station files hold."""
    places: dict[Loc, tuple[int, int]] = {}
    arrays: dict[Loc, int] = {}  # an array of tables -> its last index
    table: Loc = ()

    def resolve(names: list[str]) -> Loc:
        path: Loc = ()
        for name in names:
            path = (*path, name)
            if path in arrays:
                path = (*path, arrays[path])
        return path

    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            names = _key_parts(header[2])
            if header[1] == "[[":
                parent = resolve(names[:-1])
                key = (*parent, names[-1])
                arrays[key] = arrays.get(key, -1) + 1
                table = (*key, arrays[key])
            else:
                table = resolve(names)
            places.setdefault(table, (number, line.index("[") + 1))
            continue
        key_match = _KEY.match(line)
        if not key_match:
            continue
        key = (*table, *_key_parts(key_match[1]))
        places.setdefault(key, (number, len(line) - len(line.lstrip()) + 1))
        rest = line[key_match.end() :]
        if rest.lstrip().startswith("{"):  # an inline table's keys, one level deep
            for inner in re.finditer(r"([A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')\s*=", rest):
                column = key_match.end() + inner.start() + 1
                places.setdefault((*key, inner[1].strip("\"'")), (number, column))
    for end in range(len(loc), -1, -1):
        if loc[:end] in places:
            return places[loc[:end]]
    return None


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
        raise ValueError(_("cannot read {file}: {reason}").format(file=path, reason=exc.strerror)) from exc
    if mode & SECRET_MODE_FORBIDDEN:
        raise ValueError(
            _(
                "{file} is readable or writable by other users (mode {mode}); run: chmod 640 {file} "
                "(owner root, group care-gateway)"
            ).format(file=path, mode=f"{mode:04o}")
        )
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(_("{file}: TOML syntax error: {problem}").format(file=path, problem=exc)) from exc
    unknown = set(raw) - {"username", "password", "command_key", "page_token"}
    if unknown or not all(isinstance(v, str) for v in raw.values()):
        raise ValueError(
            _(
                '{file}: only username = "...", password = "...", command_key = "<64 hex digits>" and '
                'page_token = "<at least 16 characters>" are allowed'
            ).format(file=path)
        )
    token = raw.get("page_token")
    if token is not None and (len(token) < 16 or not token.isascii() or not token.isprintable()):
        raise ValueError(
            _("{file}: page_token must be at least 16 printable ASCII characters (openssl rand -hex 16)").format(
                file=path
            )
        )
    key = raw.get("command_key")
    if key is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", key):
        raise ValueError(
            _("{file}: command_key must be 64 hex digits (32 random bytes, e.g. from: openssl rand -hex 32)").format(
                file=path
            )
        )
    return BrokerSecrets(raw.get("username"), raw.get("password"), bytes.fromhex(key) if key else None, token)


def cross_check(config: StationConfig) -> list[Problem]:
    """What one section says about another: plaintext links, secrets, residents, quiet hours."""
    problems: list[Problem] = []
    up = config.uplink
    for host, _port in up.brokers:
        if up.tls is None and not up.allow_plaintext and not is_loopback(host):
            problems.append(
                Problem(
                    ("uplink",),
                    _(
                        "plaintext MQTT to {host} is refused (allowed: an [uplink.tls] section with ca_file, usually "
                        "port 8883; or allow_plaintext = true where the link itself is private)"
                    ).format(host=host),
                )
            )
    secrets = None
    if up.secrets_file is not None:
        try:
            secrets = read_secrets(up.secrets_file)
        except ValueError as exc:
            problems.append(Problem(("uplink", "secrets_file"), str(exc)))
    page = config.status_page
    if page is not None and not is_loopback(page.bind) and (secrets is None or secrets.page_token is None):
        problems.append(
            Problem(
                ("status_page", "bind"),
                _(
                    '{address} opens the page to the LAN, which needs a password: put page_token = "<at least 16 '
                    'characters>" in the [uplink] secrets_file (or bind = "127.0.0.1")'
                ).format(address=page.bind),
            )
        )
    known = ", ".join(r.id for r in config.residents) or _("none defined")
    not_a_resident = _("{value} is not a resident (allowed: resident ids from [[residents]]: {known})")
    seen: dict[str, int] = {}
    for i, resident in enumerate(config.residents):
        if resident.id in seen:
            problems.append(
                Problem(
                    ("residents", i, "id"),
                    _("{value} is already residents[{other}].id; each resident needs an id of their own").format(
                        value=_toml(resident.id), other=seen[resident.id]
                    ),
                )
            )
        seen.setdefault(resident.id, i)
        minutes = [_minutes(h) for h in resident.quiet_hours]
        for k in range(len(minutes)):
            for j in range(k):
                if minutes[k] & minutes[j]:
                    problems.append(
                        Problem(
                            ("residents", i, "quiet_hours", k),
                            _(
                                "{value} overlaps quiet_hours[{other}] {other_value} (allowed: periods that do not "
                                "overlap)"
                            ).format(
                                value=_toml(resident.quiet_hours[k]),
                                other=j,
                                other_value=_toml(resident.quiet_hours[j]),
                            ),
                        )
                    )
    for i, device in enumerate(config.devices):
        resident_id = getattr(device, "resident", None)
        if resident_id is not None and resident_id not in seen:
            problems.append(
                Problem(("devices", i, "resident"), not_a_resident.format(value=_toml(resident_id), known=known))
            )
        for zone, rid in getattr(device, "residents", {}).items():
            if rid not in seen:
                problems.append(
                    Problem(("devices", i, "residents", zone), not_a_resident.format(value=_toml(rid), known=known))
                )
    return problems


def _toml(value: object) -> str:
    """A value as the station file writes it: "N", 9600, true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(printable(value), ensure_ascii=False)
    return printable(repr(value)) if not isinstance(value, int | float) else str(value)


def _choices(values: Sequence[object]) -> str:
    return ", ".join(_toml(v) for v in values)


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


def _field_at(loc: Sequence[int | str]) -> Any:
    """The pydantic FieldInfo of the key at `loc`, or None."""
    names = [i for i, part in enumerate(loc) if isinstance(part, str)]
    if not names:
        return None
    owner = _model_at(loc[: names[-1]])
    return owner.model_fields.get(str(loc[names[-1]])) if owner else None


def _field_description(loc: Sequence[int | str]) -> str | None:
    field = _field_at(loc)
    return _(field.description) if field is not None and field.description else None


def describe_errors(exc: ValidationError) -> list[Problem]:
    """One problem per error: its key path and what is wrong (allowed: ...)."""
    return [_describe(err) for err in exc.errors(include_url=False)]


# pydantic's error types -> the technician's words ({...} from the error's context)
PYDANTIC_MESSAGES = {
    "greater_than_equal": N_("must be at least {ge}"),
    "greater_than": N_("must be more than {gt}"),
    "less_than_equal": N_("must be at most {le}"),
    "less_than": N_("must be less than {lt}"),
    "string_too_short": N_("is too short: at least {min_length} characters"),
    "string_too_long": N_("is too long: at most {max_length} characters"),
    "too_short": N_("has too few entries: at least {min_length}"),
    "too_long": N_("has too many entries: at most {max_length}"),
    "int_parsing": N_("must be a whole number, without quotes"),
    "int_type": N_("must be a whole number, without quotes"),
    "int_from_float": N_("must be a whole number (no decimal point)"),
    "float_parsing": N_("must be a number, without quotes"),
    "float_type": N_("must be a number, without quotes"),
    "bool_parsing": N_("must be true or false, without quotes"),
    "bool_type": N_("must be true or false, without quotes"),
    "string_type": N_('must be text in ASCII double quotes ("...")'),
    "dict_type": N_("must be a table: a [section] or { key = value, ... }"),
    "model_type": N_("must be a table: a [section] or { key = value, ... }"),
    "model_attributes_type": N_("must be a table: a [section] or { key = value, ... }"),
    "list_type": N_("must be a list: [ ..., ... ]"),
    "path_type": N_('must be a file path in double quotes ("/etc/care-gateway/...")'),
    "finite_number": N_("must be a finite number"),
}


def _describe(err: Any) -> Problem:
    raw_loc = tuple(err["loc"])
    dict_key = "[key]" in raw_loc  # a table's key (not its value) is wrong
    loc = tuple(part for part in raw_loc if not (isinstance(part, str) and "[" in part))
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    where = tuple(part for part in loc if part not in DEVICE_MODELS)  # hide the union member
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = _choices(list(DEVICE_MODELS))
        if kind == "union_tag_not_found":
            return Problem((*where, "kind"), _("required key is missing (allowed: {allowed})").format(allowed=tags))
        return Problem(
            (*where, "kind"),
            _("{value} is not allowed (allowed: {allowed})").format(value=_toml(ctx.get("tag")), allowed=tags),
        )
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        return Problem(
            where,
            _("unknown key (allowed keys here: {keys})").format(keys=", ".join(owner.model_fields) if owner else "?"),
        )
    description = _field_description(loc[:-1] if dict_key else loc)
    if kind == "missing":
        text = _("required key is missing")
        return Problem(where, f"{text} ({description})" if description else text)
    if dict_key:
        return Problem(
            where,
            _("the key {value} is not allowed (allowed: {allowed})").format(value=_toml(given), allowed=description),
        )
    if kind == "string_pattern_mismatch":
        return Problem(
            where, _("{value} is not allowed (allowed: {allowed})").format(value=_toml(given), allowed=description)
        )
    if kind == "literal_error":
        field = _field_at(loc)
        values = get_args(field.annotation) if field is not None else ()
        allowed = _choices(values) if values and all(isinstance(v, str | int) for v in values) else ctx.get("expected")
        return Problem(
            where, _("{value} is not allowed (allowed: {allowed})").format(value=_toml(given), allowed=allowed)
        )
    if kind == "value_error":
        return Problem(where, str(ctx.get("error", err["msg"])))
    ours = PYDANTIC_MESSAGES.get(kind)
    shown_ctx = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
    message = _(ours).format(**shown_ctx) if ours else err["msg"]
    shown = _(" (got {value})").format(value=_toml(given)) if not isinstance(given, dict | list) else ""
    allowed = _(" (allowed: {allowed})").format(allowed=description) if description else ""
    return Problem(where, f"{message}{shown}{allowed}")
