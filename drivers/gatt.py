"""Standard GATT health characteristics and IEEE-11073 numbers (shared/protocols.md §3).

All multi-byte fields are little-endian. SFLOAT (16-bit) and FLOAT (32-bit) carry reserved
values (NaN, NRes, +INF, -INF, reserved) that mean "no value": they decode to None, never to a
number. A decoder is given one characteristic value (a notification or a read) and returns a
typed measurement, or a `GattError` that says what was wrong; it never raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time

__all__ = [
    "BATTERY_LEVEL",
    "CHARACTERISTICS",
    "HEALTH_SERVICES",
    "MEASUREMENT_NAMES",
    "PROFILE_CHARACTERISTICS",
    "BatteryLevel",
    "BloodPressure",
    "GattError",
    "HeartRate",
    "Measurement",
    "OximeterReading",
    "Temperature",
    "Weight",
    "decode_characteristic",
    "float32",
    "sfloat",
    "uuid16",
]

# --- IEEE-11073 ----------------------------------------------------------------------------

SFLOAT_SPECIAL = {0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801}  # NaN, NRes, +INF, -INF, reserved
FLOAT_SPECIAL = {0x7FFFFF, 0x800000, 0x7FFFFE, 0x800002, 0x800001}


def sfloat(raw: int) -> float | None:
    """16-bit SFLOAT: 4-bit signed exponent, 12-bit signed mantissa; specials -> None."""
    if raw in SFLOAT_SPECIAL:  # the reserved raw values (exponent 0), before sign extension (§7.3)
        return None
    mantissa = raw & 0x0FFF
    exponent = raw >> 12
    exponent = exponent - 16 if exponent >= 8 else exponent
    mantissa = mantissa - 4096 if mantissa >= 2048 else mantissa
    return _scaled(mantissa, exponent)


def float32(raw: int) -> float | None:
    """32-bit FLOAT: 8-bit signed exponent, 24-bit signed mantissa; specials -> None."""
    if raw in FLOAT_SPECIAL:  # reserved mantissas with exponent 0
        return None
    mantissa = raw & 0xFFFFFF
    exponent = raw >> 24
    exponent = exponent - 256 if exponent >= 128 else exponent
    mantissa = mantissa - (1 << 24) if mantissa >= (1 << 23) else mantissa
    return _scaled(mantissa, exponent)


def _scaled(mantissa: int, exponent: int) -> float:
    return round(mantissa * 10.0**exponent, max(0, -exponent))


# --- measurements ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HeartRate:
    bpm: int
    contact: bool | None  # None: the sensor cannot tell
    energy_kj: int | None
    rr_s: tuple[float, ...]


@dataclass(frozen=True)
class BloodPressure:
    systolic: float | None
    diastolic: float | None
    mean_arterial: float | None
    unit: str  # "mmHg" or "kPa"
    measured_at: datetime | None
    pulse_bpm: float | None
    user: int | None
    status: tuple[str, ...]
    measured_time: time | None = None  # the time of day, when the device did not know the date


@dataclass(frozen=True)
class Temperature:
    celsius: float | None
    measured_at: datetime | None
    site: str | None
    measured_time: time | None = None


@dataclass(frozen=True)
class OximeterReading:
    spo2_percent: float | None
    pulse_bpm: float | None
    measured_at: datetime | None
    questionable: bool  # measurement status says demo, test, calibrating, unavailable or invalid
    continuous: bool
    measured_time: time | None = None


@dataclass(frozen=True)
class Weight:
    kg: float | None
    measured_at: datetime | None
    user: int | None
    bmi: float | None
    height_m: float | None
    measured_time: time | None = None


@dataclass(frozen=True)
class BatteryLevel:
    percent: int


@dataclass(frozen=True)
class GattError:
    characteristic: str
    reason: str


Measurement = HeartRate | BloodPressure | Temperature | OximeterReading | Weight | BatteryLevel


class _Reader:
    """Reads little-endian fields off a value; running short raises IndexError (caught below)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise IndexError(f"value ends after {len(self.data)} bytes, a field needs {self.at + n}")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "little")

    def sfloat(self) -> float | None:
        return sfloat(self.u16())

    def float32(self) -> float | None:
        return float32(int.from_bytes(self.take(4), "little"))

    def date_time(self) -> tuple[datetime | None, time | None]:
        """Date Time (0x2A08): year u16, month, day, hour, minute, second. A year, month or day
        of 0 means unknown: then the date is unknown but the time of day is kept (as
        Nordic's parser keeps it); an impossible time is no time at all."""
        year, month, day, hour, minute, second = self.u16(), self.u8(), self.u8(), self.u8(), self.u8(), self.u8()
        try:
            clock = time(hour, minute, second)
        except ValueError:
            return None, None
        try:
            return datetime(year, month, day, hour, minute, second), None
        except ValueError:
            return None, clock

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.at)


def _heart_rate(r: _Reader) -> HeartRate:
    flags = r.u8()
    bpm = r.u16() if flags & 0x01 else r.u8()
    contact = bool(flags & 0x02) if flags & 0x04 else None
    energy = r.u16() if flags & 0x08 else None
    rr: tuple[float, ...] = ()
    if flags & 0x10:
        rest = r.rest()
        if not rest or len(rest) % 2:
            raise ValueError(f"RR-interval flag set but {len(rest)} byte(s) follow (pairs of 2 expected)")
        rr = tuple(round(int.from_bytes(rest[i : i + 2], "little") / 1024, 3) for i in range(0, len(rest), 2))
    return HeartRate(bpm, contact, energy, rr)


_BP_STATUS = {0: "body_movement", 1: "cuff_loose", 2: "irregular_pulse", 5: "improper_position"}
_PULSE_RANGE = {1: "pulse_above_range", 2: "pulse_below_range"}


def _blood_pressure(r: _Reader) -> BloodPressure:
    flags = r.u8()
    systolic, diastolic, mean = r.sfloat(), r.sfloat(), r.sfloat()
    at, clock = r.date_time() if flags & 0x02 else (None, None)
    pulse = r.sfloat() if flags & 0x04 else None
    user = r.u8() if flags & 0x08 else None
    status: tuple[str, ...] = ()
    if flags & 0x10:
        bits = r.u16()
        status = tuple(name for bit, name in _BP_STATUS.items() if bits >> bit & 1)
        if (bits >> 3) & 0x3 in _PULSE_RANGE:
            status += (_PULSE_RANGE[(bits >> 3) & 0x3],)
    unit = "kPa" if flags & 0x01 else "mmHg"
    return BloodPressure(systolic, diastolic, mean, unit, at, pulse, None if user == 255 else user, status, clock)


TEMPERATURE_SITES = {
    1: "armpit",
    2: "body",
    3: "ear",
    4: "finger",
    5: "gi_tract",
    6: "mouth",
    7: "rectum",
    8: "toe",
    9: "tympanum",
}


def _temperature(r: _Reader) -> Temperature:
    flags = r.u8()
    value = r.float32()
    at, clock = r.date_time() if flags & 0x02 else (None, None)
    site = TEMPERATURE_SITES.get(r.u8()) if flags & 0x04 else None
    if value is not None and flags & 0x01:  # Fahrenheit on the wire; events carry Celsius
        value = round((value - 32) * 5 / 9, 2)
    return Temperature(value, at, site, clock)


QUESTIONABLE_PLX_STATUS = 0xFC00  # bits 10-15: demo, test, calibrating, unavailable, questionable, invalid


def _plx_spot(r: _Reader) -> OximeterReading:
    flags = r.u8()
    spo2, pulse = r.sfloat(), r.sfloat()
    at, clock = r.date_time() if flags & 0x01 else (None, None)
    status = r.u16() if flags & 0x02 else 0
    if flags & 0x04:
        r.u24()  # device and sensor status
    return OximeterReading(
        spo2, pulse, at, bool(status & QUESTIONABLE_PLX_STATUS), continuous=False, measured_time=clock
    )


def _plx_continuous(r: _Reader) -> OximeterReading:
    flags = r.u8()
    spo2, pulse = r.sfloat(), r.sfloat()
    for bit in (0x01, 0x02):  # Fast and Slow pairs, not reported
        if flags & bit:
            r.sfloat()
            r.sfloat()
    status = r.u16() if flags & 0x04 else 0
    return OximeterReading(spo2, pulse, None, bool(status & QUESTIONABLE_PLX_STATUS), continuous=True)


WEIGHT_UNSUCCESSFUL = 0xFFFF


def _weight(r: _Reader) -> Weight:
    flags = r.u8()
    imperial = bool(flags & 0x01)
    raw = r.u16()
    kg = (
        None if raw == WEIGHT_UNSUCCESSFUL else round(raw * 0.01 * 0.45359237, 2) if imperial else round(raw * 0.005, 3)
    )
    at, clock = r.date_time() if flags & 0x02 else (None, None)
    user = r.u8() if flags & 0x04 else None
    bmi = height = None
    if flags & 0x08:
        bmi = round(r.u16() * 0.1, 1)
        height_raw = r.u16()
        height = round(height_raw * 0.1 * 0.0254, 3) if imperial else round(height_raw * 0.001, 3)
    return Weight(kg, at, None if user == 255 else user, bmi, height, clock)


def _battery(r: _Reader) -> BatteryLevel:
    if len(r.data) != 1:
        raise ValueError(f"battery level is one byte, not {len(r.data)}")
    value = r.u8()
    if value > 100:
        raise ValueError(f"battery level {value} % is out of range 0-100")
    return BatteryLevel(value)


def uuid16(short: int) -> str:
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


# characteristic UUID -> (name, decoder). Bluetooth SIG GATT specifications via oesmith/gatt-xml.
CHARACTERISTICS: dict[str, tuple[str, Callable[[_Reader], Measurement]]] = {
    uuid16(0x2A37): ("heart_rate_measurement", _heart_rate),
    uuid16(0x2A35): ("blood_pressure_measurement", _blood_pressure),
    uuid16(0x2A1C): ("temperature_measurement", _temperature),
    uuid16(0x2A5E): ("plx_spot_check", _plx_spot),
    uuid16(0x2A5F): ("plx_continuous", _plx_continuous),
    uuid16(0x2A9D): ("weight_measurement", _weight),
    uuid16(0x2A19): ("battery_level", _battery),
}


# the GATT health profiles a [devices] entry may name: the measurement characteristic each one
# indicates or notifies (Bluetooth SIG: BLP, HTP, PLXP, WSP, HRP; assigned numbers 16-bit UUIDs)
PROFILE_CHARACTERISTICS = {
    "blood_pressure": uuid16(0x2A35),
    "thermometer": uuid16(0x2A1C),
    "oximeter": uuid16(0x2A5E),
    "oximeter_continuous": uuid16(0x2A5F),
    "scale": uuid16(0x2A9D),
    "heart_rate": uuid16(0x2A37),
}
BATTERY_LEVEL = uuid16(0x2A19)  # Battery Service's Battery Level, read before the measurement
# advertised service UUID -> the profile to configure (care-gateway scan suggests it)
HEALTH_SERVICES = {
    uuid16(0x1810): "blood_pressure",
    uuid16(0x1809): "thermometer",
    uuid16(0x1822): "oximeter",
    uuid16(0x181D): "scale",
    uuid16(0x180D): "heart_rate",
}


# the name a measurement goes by in a `vitals` event ("measurement") and in the care rules
MEASUREMENT_NAMES: dict[type[Measurement], str] = {
    HeartRate: "heart_rate",
    BloodPressure: "blood_pressure",
    Temperature: "temperature",
    OximeterReading: "spo2",
    Weight: "weight",
    BatteryLevel: "battery",
}


def decode_characteristic(uuid: str, value: bytes) -> Measurement | GattError:
    """Decode one value of a known characteristic; never raises."""
    known = CHARACTERISTICS.get(uuid.lower())
    if known is None:
        return GattError(uuid, "not a characteristic this gateway decodes")
    name, decoder = known
    try:
        return decoder(_Reader(bytes(value)))
    except (IndexError, ValueError) as exc:
        return GattError(name, str(exc))
