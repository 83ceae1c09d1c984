"""Wearables and health devices, encoded from the specifications (independently of drivers/).

This module holds the byte encoders: BTHome v2 service data (plain and AES-CCM encrypted, as
bthome.io describes), iBeacon manufacturer data, and GATT characteristic values with
IEEE-11073 SFLOAT/FLOAT. The simulated radio that carries them to the gateway's real
`ble_link.py` through bleak's `backend=` API builds on these.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

BTHOME_INFO_V2 = 0x40  # bits 5-7 = 2
BTHOME_ENCRYPTED = 0x01
BTHOME_TRIGGER = 0x04
APPLE_IBEACON = b"\x02\x15"


def bthome_service_data(
    packet_id: int | None = None,
    battery: int | None = None,
    button: int | None = None,
    temperature_c: float | None = None,
    humidity: float | None = None,
    presence: bool | None = None,
    moving: bool | None = None,
    trigger: bool = False,
) -> bytes:
    """Service data under UUID 0xFCD2: device info byte, then objects in ascending id order."""
    objects = b""
    if packet_id is not None:
        objects += bytes([0x00, packet_id])
    if battery is not None:
        objects += bytes([0x01, battery])
    if temperature_c is not None:
        objects += bytes([0x02]) + round(temperature_c * 100).to_bytes(2, "little", signed=True)
    if humidity is not None:
        objects += bytes([0x03]) + round(humidity * 100).to_bytes(2, "little")
    if moving is not None:
        objects += bytes([0x22, int(moving)])
    if presence is not None:
        objects += bytes([0x25, int(presence)])
    if button is not None:
        objects += bytes([0x3A, button])
    return bytes([BTHOME_INFO_V2 | (BTHOME_TRIGGER if trigger else 0)]) + objects


def bthome_encrypt(objects: bytes, key: bytes, mac: str, counter: int, trigger: bool = False) -> bytes:
    """Encrypted service data: info | AES-CCM(objects) | counter (4, LE) | MIC (4)."""
    info = BTHOME_INFO_V2 | BTHOME_ENCRYPTED | (BTHOME_TRIGGER if trigger else 0)
    counter_bytes = counter.to_bytes(4, "little")
    nonce = bytes.fromhex(mac.replace(":", "")) + b"\xd2\xfc" + bytes([info]) + counter_bytes
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, objects, None)
    return bytes([info]) + sealed[:-4] + counter_bytes + sealed[-4:]


def ibeacon(uuid: str, major: int, minor: int, measured_power: int) -> bytes:
    """Apple manufacturer data (after the company id 4C 00): 02 15, UUID, major/minor BE, power."""
    return (
        APPLE_IBEACON
        + bytes.fromhex(uuid.replace("-", ""))
        + major.to_bytes(2, "big")
        + minor.to_bytes(2, "big")
        + measured_power.to_bytes(1, "big", signed=True)
    )


def sfloat(value: float | None, exponent: int = 0) -> bytes:
    """IEEE-11073 SFLOAT, little-endian; None is NaN (0x07FF)."""
    if value is None:
        return (0x07FF).to_bytes(2, "little")
    mantissa = round(value / 10.0**exponent)
    return (((exponent & 0xF) << 12) | (mantissa & 0x0FFF)).to_bytes(2, "little")


def float32(value: float | None, exponent: int = 0) -> bytes:
    """IEEE-11073 FLOAT, little-endian; None is NaN (0x007FFFFF)."""
    if value is None:
        return (0x007FFFFF).to_bytes(4, "little")
    mantissa = round(value / 10.0**exponent)
    return (((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF)).to_bytes(4, "little")


def date_time(year: int, month: int, day: int, hour: int, minute: int, second: int) -> bytes:
    return year.to_bytes(2, "little") + bytes([month, day, hour, minute, second])


def blood_pressure(
    systolic: float,
    diastolic: float,
    mean: float,
    pulse: float | None = None,
    when: bytes | None = None,
    user: int | None = None,
    status: int | None = None,
) -> bytes:
    """0x2A35 in mmHg with the optional fields present when given."""
    flags = (
        (0x02 if when else 0)
        | (0x04 if pulse is not None else 0)
        | (0x08 if user is not None else 0)
        | (0x10 if status is not None else 0)
    )
    value = bytes([flags]) + sfloat(systolic) + sfloat(diastolic) + sfloat(mean, -1)
    value += when or b""
    value += sfloat(pulse) if pulse is not None else b""
    value += bytes([user]) if user is not None else b""
    value += status.to_bytes(2, "little") if status is not None else b""
    return value


def plx_spot_check(spo2: float | None, pulse: float | None) -> bytes:
    """0x2A5E without optional fields; None sends NaN (an oximeter that lost the finger)."""
    return b"\x00" + sfloat(spo2, -1 if spo2 is not None and spo2 != int(spo2) else 0) + sfloat(pulse)


def heart_rate(bpm: int, rr_s: tuple[float, ...] = ()) -> bytes:
    flags = 0x06 | (0x10 if rr_s else 0)  # contact supported and detected
    return bytes([flags, bpm]) + b"".join(round(rr * 1024).to_bytes(2, "little") for rr in rr_s)


def temperature(celsius: float, site: int | None = None) -> bytes:
    return bytes([0x04 if site is not None else 0]) + float32(celsius, -1) + (bytes([site]) if site else b"")
