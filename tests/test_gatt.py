"""GATT health characteristics and IEEE-11073 numbers against shared/protocols.md §3."""

from __future__ import annotations

from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from drivers.gatt import (
    CHARACTERISTICS,
    BatteryLevel,
    BloodPressure,
    GattError,
    HeartRate,
    OximeterReading,
    Temperature,
    Weight,
    decode_characteristic,
    float32,
    sfloat,
    uuid16,
)

H = bytes.fromhex


def test_sfloat_and_float_worked_values_and_special_values() -> None:
    assert [sfloat(r) for r in (0x0078, 0xF3A5, 0xF3CF, 0x0FF6)] == [120.0, 93.3, 97.5, -10.0]
    assert [sfloat(r) for r in (0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801)] == [None] * 5
    assert float32(0xFF00016E) == 36.6
    assert [float32(r) for r in (0x007FFFFF, 0x00800000, 0x007FFFFE, 0x00800002, 0x00800001)] == [None] * 5


SPEC = [
    (0x2A37, "16 48 55 03", HeartRate(bpm=72, contact=True, energy_kj=None, rr_s=(0.833,))),
    (0x2A35, "04 78 00 50 00 A5 F3 48 00", BloodPressure(120.0, 80.0, 93.3, "mmHg", None, 72.0, None, ())),
    (
        0x2A35,
        "1E 78 00 50 00 A5 F3 E8 07 05 11 08 1E 00 48 00 01 04 00",
        BloodPressure(120.0, 80.0, 93.3, "mmHg", datetime(2024, 5, 17, 8, 30), 72.0, 1, ("irregular_pulse",)),
    ),
    (0x2A1C, "04 6E 01 00 FF 02", Temperature(36.6, None, "body")),
    (0x2A5E, "00 CF F3 48 00", OximeterReading(97.5, 72.0, None, questionable=False, continuous=False)),
    (0x2A5F, "00 62 00 48 00", OximeterReading(98.0, 72.0, None, questionable=False, continuous=True)),
    (0x2A9D, "00 14 37", Weight(70.5, None, None, None, None)),
    (0x2A19, "57", BatteryLevel(87)),
]


def test_spec_examples() -> None:
    assert [decode_characteristic(uuid16(u), H(v)) for u, v, _ in SPEC] == [m for _, _, m in SPEC]


def test_no_value_never_becomes_a_number() -> None:
    nan_spo2 = decode_characteristic(uuid16(0x2A5E), H("00 FF 07 48 00"))
    assert nan_spo2 == OximeterReading(None, 72.0, None, questionable=False, continuous=False)
    nres_temp = decode_characteristic(uuid16(0x2A1C), H("00 00 00 80 00"))
    assert nres_temp == Temperature(None, None, None)
    assert decode_characteristic(uuid16(0x2A9D), H("00 FF FF")) == Weight(None, None, None, None, None)


def test_questionable_oximeter_status_and_fahrenheit() -> None:
    assert decode_characteristic(uuid16(0x2A5E), H("02 CF F3 48 00 00 04")) == OximeterReading(
        97.5, 72.0, None, questionable=True, continuous=False
    )  # status bit 10: demo data
    assert decode_characteristic(uuid16(0x2A1C), H("01 D4 03 00 FF")) == Temperature(36.67, None, None)  # 98.0 °F


def test_truncated_and_unknown_values_are_errors_not_exceptions() -> None:
    assert decode_characteristic(uuid16(0x2A35), H("04 78")) == GattError(
        "blood_pressure_measurement", "value ends after 2 bytes, a field needs 3"
    )
    assert decode_characteristic(uuid16(0x2A19), H("C8")) == GattError(
        "battery_level", "battery level 200 % is out of range 0-100"
    )
    assert isinstance(decode_characteristic(uuid16(0x1234), b"\x00"), GattError)


@given(uuid=st.sampled_from(sorted(CHARACTERISTICS)), value=st.binary(max_size=40))
def test_fuzz_never_raises(uuid: str, value: bytes) -> None:
    decode_characteristic(uuid, value)


def test_every_configurable_profile_has_a_measurement_this_gateway_decodes() -> None:
    from typing import get_args

    from drivers.gatt import CHARACTERISTICS, HEALTH_SERVICES, PROFILE_CHARACTERISTICS
    from gateway.config import HealthBleDevice

    profiles = set(get_args(HealthBleDevice.model_fields["profile"].annotation))
    assert set(PROFILE_CHARACTERISTICS) == profiles  # the station file's choices and the table agree
    assert set(PROFILE_CHARACTERISTICS.values()) <= set(CHARACTERISTICS)
    assert set(HEALTH_SERVICES.values()) <= profiles


def test_a_time_stamp_with_an_unknown_date_keeps_its_time_of_day() -> None:
    from datetime import time

    # the BP example above with year 0 ("not known"): the reading and the time of day stay
    unknown_year = decode_characteristic(uuid16(0x2A35), H("1E 78 00 50 00 A5 F3 00 00 05 11 08 1E 00 48 00 01 04 00"))
    assert unknown_year == BloodPressure(
        120.0, 80.0, 93.3, "mmHg", None, 72.0, 1, ("irregular_pulse",), measured_time=time(8, 30)
    )
    impossible = decode_characteristic(uuid16(0x2A35), H("02 78 00 50 00 A5 F3 E8 07 05 11 19 1E 00"))  # hour 25
    assert impossible == BloodPressure(120.0, 80.0, 93.3, "mmHg", None, None, None, ())


def test_values_that_break_their_characteristic_are_rejected() -> None:
    rr_flag_without_rr = decode_characteristic(uuid16(0x2A37), H("16 48"))  # flags say RR intervals follow
    assert rr_flag_without_rr == GattError(
        "heart_rate_measurement", "RR-interval flag set but 0 byte(s) follow (pairs of 2 expected)"
    )
    half_an_rr = decode_characteristic(uuid16(0x2A37), H("16 48 55 03 01"))
    assert isinstance(half_an_rr, GattError)
    assert decode_characteristic(uuid16(0x2A19), H("57 00")) == GattError(
        "battery_level", "battery level is one byte, not 2"
    )
