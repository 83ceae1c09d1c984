"""BLE advertisements: AD structures, iBeacon and BTHome v2 (shared/protocols.md §4).

bleak hands the gateway an advertisement already split into manufacturer data (by company
id) and service data (by 128-bit UUID); `parse_ad` does the same from raw AD bytes, for spec
vectors and simulators. `decode_advertisement` turns those fields into typed readings, and
never raises: a broken or undecryptable advertisement becomes an `AdvertError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

__all__ = [
    "APPLE",
    "BTHOME_OBJECTS",
    "BTHOME_UUID",
    "AdFields",
    "AdvertError",
    "AdvertReading",
    "BTHomePacket",
    "BTHomeValue",
    "IBeacon",
    "decode_advertisement",
    "decode_bthome",
    "decode_ibeacon",
    "parse_ad",
    "uuid16",
]

APPLE = 0x004C
IBEACON_PREFIX = b"\x02\x15"  # iBeacon type and length after Apple's company id
BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
BTHOME_UUID_LE = b"\xd2\xfc"
MIC_BYTES = 4
COUNTER_BYTES = 4


def uuid16(short: int) -> str:
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


@dataclass(frozen=True)
class AdFields:
    """An advertisement as bleak's AdvertisementData presents it."""

    local_name: str | None = None
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_data: dict[str, bytes] = field(default_factory=dict)
    service_uuids: tuple[str, ...] = ()
    tx_power: int | None = None


def parse_ad(raw: bytes) -> AdFields | None:
    """Split raw AD structures ([len][type][data]...); None when the lengths do not add up."""
    name, manufacturer, service, uuids, tx = None, {}, {}, [], None
    at = 0
    while at < len(raw):
        length = raw[at]
        if length == 0:
            break  # padding
        if at + 1 + length > len(raw):
            return None
        ad_type, data = raw[at + 1], raw[at + 2 : at + 1 + length]
        at += 1 + length
        if ad_type in (0x08, 0x09):
            name = data.decode("utf-8", "replace")
        elif ad_type == 0xFF and len(data) >= 2:
            manufacturer[int.from_bytes(data[:2], "little")] = data[2:]
        elif ad_type == 0x16 and len(data) >= 2:
            service[uuid16(int.from_bytes(data[:2], "little"))] = data[2:]
        elif ad_type in (0x02, 0x03):
            uuids += [uuid16(int.from_bytes(data[i : i + 2], "little")) for i in range(0, len(data) - 1, 2)]
        elif ad_type == 0x0A and len(data) == 1:
            tx = int.from_bytes(data, "little", signed=True)
    return AdFields(name, manufacturer, service, tuple(uuids), tx)


@dataclass(frozen=True)
class IBeacon:
    uuid: str
    major: int
    minor: int
    measured_power: int


@dataclass(frozen=True)
class BTHomePacket:
    """One BTHome v2 advertisement, decoded (and decrypted)."""

    packet_id: int | None  # object 0x00: repeats of the same packet carry the same id
    trigger_based: bool  # bit 2: sends only on events (a press), silent in between
    encrypted: bool
    values: dict[str, BTHomeValue]  # a property seen twice: "temperature", "temperature_2", ...
    events: tuple[str, ...]  # button and dimmer events in the packet's order, "none" left out
    counter: int | None = None  # the encryption counter (encrypted packets)


@dataclass(frozen=True)
class AdvertError:
    reason: str


BTHomeValue = float | int | bool | str
AdvertReading = IBeacon | BTHomePacket | AdvertError

# BTHome v2 objects (bthome.io/format): id -> (property, bytes, signed, factor). factor None:
# a binary sensor (bool); "text" and "raw" objects carry their own length in their first byte.
# The whole table, not only what a wearable sends: the id alone fixes an object's length, so
# one id the table lacked would lose every object after it (a Shelly BLU H&T advertises an
# illuminance object before its humidity and temperature).
#
# Why not the bthome-ble library: it is the reference decoder, but it comes with Home
# Assistant's Bluetooth stack (habluetooth, bluetooth-data-tools, sensor-state-data,
# bluetooth-sensor-state-data) on a station that already has bleak; what the gateway needs of
# it is this table and ~60 lines of parsing, tested against the format's own examples.
BTHOME_OBJECTS: dict[int, tuple[str, int, bool, float | None]] = {
    0x01: ("battery", 1, False, 1),
    0x02: ("temperature", 2, True, 0.01),
    0x03: ("humidity", 2, False, 0.01),
    0x04: ("pressure_hpa", 3, False, 0.01),
    0x05: ("illuminance", 3, False, 0.01),
    0x06: ("mass_kg", 2, False, 0.01),
    0x07: ("mass_lb", 2, False, 0.01),
    0x08: ("dew_point", 2, True, 0.01),
    0x09: ("count", 1, False, 1),
    0x0A: ("energy_kwh", 3, False, 0.001),
    0x0B: ("power_w", 3, False, 0.01),
    0x0C: ("voltage", 2, False, 0.001),
    0x0D: ("pm2_5", 2, False, 1),
    0x0E: ("pm10", 2, False, 1),
    0x0F: ("generic", 1, False, None),
    0x10: ("power_on", 1, False, None),
    0x11: ("opening", 1, False, None),
    0x12: ("co2_ppm", 2, False, 1),
    0x13: ("tvoc", 2, False, 1),
    0x14: ("moisture", 2, False, 0.01),
    0x15: ("battery_low", 1, False, None),
    0x16: ("battery_charging", 1, False, None),
    0x17: ("carbon_monoxide", 1, False, None),
    0x18: ("cold", 1, False, None),
    0x19: ("connectivity", 1, False, None),
    0x1A: ("door", 1, False, None),
    0x1B: ("garage_door", 1, False, None),
    0x1C: ("gas", 1, False, None),
    0x1D: ("heat", 1, False, None),
    0x1E: ("light", 1, False, None),
    0x1F: ("lock", 1, False, None),
    0x20: ("wet", 1, False, None),  # (the binary "moisture" sensor)
    0x21: ("motion", 1, False, None),
    0x22: ("moving", 1, False, None),
    0x23: ("occupancy", 1, False, None),
    0x24: ("plug", 1, False, None),
    0x25: ("presence", 1, False, None),
    0x26: ("problem", 1, False, None),
    0x27: ("running", 1, False, None),
    0x28: ("safety", 1, False, None),
    0x29: ("smoke", 1, False, None),
    0x2A: ("sound", 1, False, None),
    0x2B: ("tamper", 1, False, None),
    0x2C: ("vibration", 1, False, None),
    0x2D: ("window", 1, False, None),
    0x2E: ("humidity", 1, False, 1),
    0x2F: ("moisture", 1, False, 1),
    0x3D: ("count", 2, False, 1),
    0x3E: ("count", 4, False, 1),
    0x3F: ("rotation", 2, True, 0.1),
    0x40: ("distance_mm", 2, False, 1),
    0x41: ("distance_m", 2, False, 0.1),
    0x42: ("duration_s", 3, False, 0.001),
    0x43: ("current_a", 2, False, 0.001),
    0x44: ("speed", 2, False, 0.01),
    0x45: ("temperature", 2, True, 0.1),
    0x46: ("uv_index", 1, False, 0.1),
    0x47: ("volume_l", 2, False, 0.1),
    0x48: ("volume_ml", 2, False, 1),
    0x49: ("volume_flow_m3h", 2, False, 0.001),
    0x4A: ("voltage", 2, False, 0.1),
    0x4B: ("gas_m3", 3, False, 0.001),
    0x4C: ("gas_m3", 4, False, 0.001),
    0x4D: ("energy_kwh", 4, False, 0.001),
    0x4E: ("volume_l", 4, False, 0.001),
    0x4F: ("water_l", 4, False, 0.001),
    0x50: ("timestamp", 4, False, 1),
    0x51: ("acceleration", 2, False, 0.001),
    0x52: ("gyroscope", 2, False, 0.001),
    0x55: ("volume_storage_l", 4, False, 0.001),
    0x56: ("conductivity", 2, False, 1),
    0x57: ("temperature", 1, True, 1),
    0x58: ("temperature", 1, True, 0.35),
    0x59: ("count", 1, True, 1),
    0x5A: ("count", 2, True, 1),
    0x5B: ("count", 4, True, 1),
    0x5C: ("power_w", 4, True, 0.01),
    0x5D: ("current_a", 2, True, 0.001),
    0x5E: ("direction", 2, False, 0.01),
    0x5F: ("precipitation_mm", 2, False, 0.1),
    0x60: ("channel", 1, False, 1),
    0x61: ("rotational_speed", 2, False, 1),
    0x62: ("speed", 4, True, 0.000001),
    0x63: ("acceleration", 4, True, 0.000001),
    0x64: ("light_level", 1, False, 1),
}
TEXT_OBJECT, RAW_OBJECT = 0x53, 0x54  # [length][bytes]: UTF-8 text, raw bytes (as hex)
BUTTON_OBJECT, DIMMER_OBJECT, PACKET_ID_OBJECT = 0x3A, 0x3C, 0x00
BUTTON_EVENTS = {
    0x00: "none",  # this button was not pressed (a packet names every button of a device)
    0x01: "press",
    0x02: "double_press",
    0x03: "triple_press",
    0x04: "long_press",
    0x05: "long_double_press",
    0x06: "long_triple_press",
    0x80: "hold_press",
}
DIMMER_EVENTS = {0x00: "none", 0x01: "rotate_left", 0x02: "rotate_right"}
MAC_INCLUDED = 0x02  # device information bit 1: the device's MAC (6 bytes, reversed) follows


def _bthome_objects(data: bytes) -> tuple[int | None, dict[str, BTHomeValue], tuple[str, ...]] | AdvertError:
    packet_id: int | None = None
    values: dict[str, BTHomeValue] = {}
    events: list[str] = []

    def put(name: str, value: BTHomeValue) -> None:
        key, n = name, 1
        while key in values:  # the same property again (a second sensor): numbered, not overwritten
            n += 1
            key = f"{name}_{n}"
        values[key] = value

    at = 0
    while at < len(data):
        object_id = data[at]
        at += 1
        if object_id == PACKET_ID_OBJECT:
            if at >= len(data):
                return AdvertError("BTHome packet id cut short")
            packet_id, at = data[at], at + 1
        elif object_id == BUTTON_OBJECT:
            if at >= len(data):
                return AdvertError("BTHome button event cut short")
            event = BUTTON_EVENTS.get(data[at], f"unknown_0x{data[at]:02x}")
            at += 1
            if event != "none":
                events.append(event)
        elif object_id == DIMMER_OBJECT:
            if at + 2 > len(data):
                return AdvertError("BTHome dimmer event cut short")
            event = DIMMER_EVENTS.get(data[at], f"unknown_0x{data[at]:02x}")
            if event != "none":
                events.append(f"{event}_{data[at + 1]}")
            at += 2
        elif object_id in (TEXT_OBJECT, RAW_OBJECT):
            size = data[at] if at < len(data) else None
            if size is None or at + 1 + size > len(data):
                return AdvertError(f"BTHome object 0x{object_id:02x} (text/raw) cut short")
            chunk = data[at + 1 : at + 1 + size]
            at += 1 + size
            put(
                "text" if object_id == TEXT_OBJECT else "raw",
                chunk.decode("utf-8", "replace") if object_id == TEXT_OBJECT else chunk.hex(),
            )
        elif object_id in BTHOME_OBJECTS:
            name, size, signed, factor = BTHOME_OBJECTS[object_id]
            if at + size > len(data):
                return AdvertError(f"BTHome object 0x{object_id:02x} ({name}) cut short")
            raw = int.from_bytes(data[at : at + size], "little", signed=signed)
            at += size
            put(name, bool(raw) if factor is None else round(raw * factor, 6) if factor != 1 else raw)
        else:  # the id fixes the length: an id the format does not define cannot be skipped
            return AdvertError(f"unknown BTHome object id 0x{object_id:02x}")
    return packet_id, values, tuple(events)


def decode_bthome(payload: bytes, address: str, bind_key: bytes | None) -> BTHomePacket | AdvertError:
    if not payload:
        return AdvertError("empty BTHome service data")
    info = payload[0]
    if info >> 5 != 2:
        return AdvertError(f"BTHome version {info >> 5} (only v2 is supported)")
    encrypted, trigger = bool(info & 0x01), bool(info & 0x04)
    body = payload[1:]
    mac_text = address
    if info & MAC_INCLUDED:
        if len(body) < 6:
            return AdvertError("BTHome advertisement cut short in its MAC address")
        mac_text = body[:6][::-1].hex(":")
        body = body[6:]
    counter = None
    if encrypted:
        if bind_key is None:
            return AdvertError("encrypted BTHome advertisement but no bind_key configured for this device")
        if len(body) < COUNTER_BYTES + MIC_BYTES:
            return AdvertError("encrypted BTHome advertisement too short")
        ciphertext, counter_bytes, mic = body[:-8], body[-8:-4], body[-4:]
        try:
            mac = bytes.fromhex(mac_text.replace(":", ""))
        except ValueError:
            return AdvertError(f"address {address!r} is not a MAC address (needed for decryption)")
        nonce = mac + BTHOME_UUID_LE + bytes([info]) + counter_bytes
        try:
            body = AESCCM(bind_key, tag_length=MIC_BYTES).decrypt(nonce, ciphertext + mic, None)
        except InvalidTag:
            return AdvertError("BTHome decryption failed: wrong bind_key, or the advertisement was tampered with")
        counter = int.from_bytes(counter_bytes, "little")
    decoded = _bthome_objects(body)
    if isinstance(decoded, AdvertError):
        return decoded
    packet_id, values, events = decoded
    return BTHomePacket(packet_id, trigger, encrypted, values, events, counter)


def decode_ibeacon(data: bytes) -> IBeacon | None:
    if len(data) != 23 or not data.startswith(IBEACON_PREFIX):
        return None
    u = data[2:18].hex()
    return IBeacon(
        uuid=f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}",
        major=int.from_bytes(data[18:20], "big"),  # iBeacon integers are big-endian
        minor=int.from_bytes(data[20:22], "big"),
        measured_power=int.from_bytes(data[22:23], "big", signed=True),
    )


def decode_advertisement(
    address: str,
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    bind_key: bytes | None = None,
) -> list[AdvertReading]:
    """Every reading an advertisement carries (BTHome, iBeacon); [] when none is known."""
    out: list[AdvertReading] = []
    if BTHOME_UUID in service_data:
        out.append(decode_bthome(bytes(service_data[BTHOME_UUID]), address, bind_key))
    if APPLE in manufacturer_data and (beacon := decode_ibeacon(bytes(manufacturer_data[APPLE]))):
        out.append(beacon)
    return out
