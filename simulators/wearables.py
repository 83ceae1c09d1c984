"""Wearables and health devices, encoded from the specifications (independently of drivers/).

This module holds the byte encoders: BTHome v2 service data (plain and AES-CCM encrypted, as
bthome.io describes), iBeacon manufacturer data, and GATT characteristic values with
IEEE-11073 SFLOAT/FLOAT. The simulated radio that carries them to the gateway's real
`ble_link.py` through bleak's `backend=` API builds on these.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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


def bthome_encrypt(
    objects: bytes, key: bytes, mac: str, counter: int, trigger: bool = False, mac_included: bool = False
) -> bytes:
    """Encrypted service data: info | [MAC, reversed] | AES-CCM(objects) | counter (4, LE) | MIC (4).
    With `mac_included` (info bit 1) the device's MAC travels in the packet (it may advertise
    from a random address) and is what the nonce is made of."""
    info = BTHOME_INFO_V2 | BTHOME_ENCRYPTED | (BTHOME_TRIGGER if trigger else 0) | (0x02 if mac_included else 0)
    counter_bytes = counter.to_bytes(4, "little")
    mac_bytes = bytes.fromhex(mac.replace(":", ""))
    nonce = mac_bytes + b"\xd2\xfc" + bytes([info]) + counter_bytes
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, objects, None)
    return bytes([info]) + (mac_bytes[::-1] if mac_included else b"") + sealed[:-4] + counter_bytes + sealed[-4:]


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


# --- the simulated radio ---------------------------------------------------------------------


APPLE = 0x004C
BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"


def uuid16(short: int) -> str:
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


# profile -> (service, measurement characteristic, handle); battery 0x2A19 at handle 0x30 for all
HEALTH_PROFILES = {
    "blood_pressure": (uuid16(0x1810), uuid16(0x2A35), 0x21),
    "thermometer": (uuid16(0x1809), uuid16(0x2A1C), 0x22),
    "oximeter": (uuid16(0x1822), uuid16(0x2A5E), 0x23),
    "oximeter_continuous": (uuid16(0x1822), uuid16(0x2A5F), 0x26),
    "scale": (uuid16(0x181D), uuid16(0x2A9D), 0x24),
    "heart_rate": (uuid16(0x180D), uuid16(0x2A37), 0x25),
}
BATTERY_SERVICE, BATTERY_LEVEL, BATTERY_HANDLE = uuid16(0x180F), uuid16(0x2A19), 0x30


@dataclass
class HealthDevice:
    """A GATT health device: it indicates `measurements` once subscribed, then disconnects."""

    address: str
    profile: str
    measurements: list[bytes]
    battery: int = 80
    drop_after: int | None = None  # disconnect after this many values (mid-measurement)
    refuse_connections: int = 0  # the first N connection attempts fail (out of range, busy)
    connections: int = 0


@dataclass
class SimulatedRadio:
    """The air around the station: advertisements to every scanner, GATT sessions to clients."""

    socket_path: Path
    silent: bool = False  # nothing is heard (a hung controller)
    silent_until_reset: bool = False  # ... and only an adapter reset brings it back
    scans: int = 0  # scanner connections (a restarted scan opens a new one)
    resets: int = 0
    advertisements: int = 0
    devices: dict[str, HealthDevice] = field(default_factory=dict)
    _scanners: set[asyncio.StreamWriter] = field(default_factory=set)
    _server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> SimulatedRadio:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, str(self.socket_path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server:
            self._server.close()
        for writer in list(self._scanners):
            writer.close()

    def advertise(
        self,
        address: str,
        *,
        name: str | None = None,
        mfr: dict[int, bytes] | None = None,
        svc: dict[str, bytes] | None = None,
        rssi: int = -60,
    ) -> None:
        if self.silent or self.silent_until_reset:
            return
        line = (
            json.dumps(
                {
                    "ev": "adv",
                    "address": address,
                    "name": name,
                    "rssi": rssi,
                    "mfr": {str(k): v.hex() for k, v in (mfr or {}).items()},
                    "svc": {k: v.hex() for k, v in (svc or {}).items()},
                }
            ).encode()
            + b"\n"
        )
        for writer in list(self._scanners):
            writer.write(line)
        self.advertisements += 1

    def add(self, device: HealthDevice) -> HealthDevice:
        self.devices[device.address.upper()] = device
        return device

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = json.loads(await reader.readline() or b"{}")
            if first.get("op") == "scan":
                self.scans += 1
                self._scanners.add(writer)
                await reader.read()  # until the scanner goes away
            elif first.get("op") == "reset":
                self.resets += 1
                self.silent_until_reset = False
                writer.write(b'{"ev": "reset_done"}\n')
            elif first.get("op") == "connect":
                await self._gatt_session(first["address"].upper(), reader, writer)
        except (ConnectionError, ValueError):
            pass
        finally:
            self._scanners.discard(writer)
            writer.close()

    async def _gatt_session(self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        device = self.devices.get(address)
        if device is None or self.silent or self.silent_until_reset:
            writer.write(b'{"ev": "error", "reason": "device not found"}\n')
            return
        device.connections += 1
        if device.connections <= device.refuse_connections:
            writer.write(b'{"ev": "error", "reason": "connection attempt failed (out of range?)"}\n')
            return
        service, characteristic, handle = HEALTH_PROFILES[device.profile]
        services = [
            {"uuid": service, "chars": [{"uuid": characteristic, "handle": handle, "props": ["indicate"]}]},
            {"uuid": BATTERY_SERVICE, "chars": [{"uuid": BATTERY_LEVEL, "handle": BATTERY_HANDLE, "props": ["read"]}]},
        ]
        writer.write(json.dumps({"ev": "connected", "services": services}).encode() + b"\n")
        while line := await reader.readline():
            request = json.loads(line)
            if request.get("op") == "read" and request.get("handle") == BATTERY_HANDLE:
                writer.write(
                    json.dumps(
                        {"ev": "value", "handle": BATTERY_HANDLE, "value": bytes([device.battery]).hex()}
                    ).encode()
                    + b"\n"
                )
            elif request.get("op") == "notify" and request.get("handle") == handle:
                for sent, value in enumerate(device.measurements):
                    if device.drop_after is not None and sent >= device.drop_after:
                        writer.write(b'{"ev": "disconnected"}\n')
                        return
                    await asyncio.sleep(0.05)
                    writer.write(json.dumps({"ev": "notify", "handle": handle, "value": value.hex()}).encode() + b"\n")
                await asyncio.sleep(0.2)
                writer.write(b'{"ev": "disconnected"}\n')  # the device ends the session when done
                return
            elif request.get("op") == "disconnect":
                return


# --- scripted people and devices ---------------------------------------------------------------


class Air(Protocol):
    """Where the scripted devices advertise: the simulated radio, or the BlueZ stand-in."""

    def advertise(
        self,
        address: str,
        *,
        name: str | None = None,
        mfr: dict[int, bytes] | None = None,
        svc: dict[str, bytes] | None = None,
        rssi: int = -60,
    ) -> object: ...


PENDANT = "C0:FF:EE:00:00:01"
WRISTBAND = "C0:FF:EE:00:00:02"
BADGE = "C0:FF:EE:00:00:03"
BP_MONITOR = "C0:FF:EE:00:00:04"
OXIMETER = "C0:FF:EE:00:00:05"
BADGE_UUID = "fda50693-a4e2-4fb1-afcf-c6eb07647825"


async def press(
    radio: Air,
    address: str,
    packet_id: int,
    adverts: int = 20,
    interval_s: float = 0.05,
    key: bytes | None = None,
    counter: int = 1,
) -> None:
    """One press of a trigger pendant: the same BTHome packet carried by many advertisements."""
    for _ in range(adverts):
        if key is None:
            data = bthome_service_data(packet_id=packet_id, battery=88, button=0x01, trigger=True)
        else:
            data = bthome_encrypt(bytes([0x00, packet_id, 0x01, 88, 0x3A, 0x01]), key, address, counter, trigger=True)
        radio.advertise(address, name="SOS-pendant", svc={BTHOME_UUID: data})
        await asyncio.sleep(interval_s)


def wristband_beat(radio: Air, packet_id: int, moving: bool) -> None:
    radio.advertise(
        WRISTBAND,
        name="band",
        svc={BTHOME_UUID: bthome_service_data(packet_id=packet_id, battery=64, moving=moving, presence=True)},
    )


def badge_beat(radio: Air) -> None:
    radio.advertise(BADGE, mfr={APPLE: ibeacon(BADGE_UUID, 1, 7, -59)})


def health_devices(radio: SimulatedRadio) -> None:
    radio.add(
        HealthDevice(
            BP_MONITOR,
            "blood_pressure",
            [blood_pressure(128, 84, 98.7, pulse=71, when=date_time(2026, 11, 23, 8, 30, 0), user=1, status=0x0004)],
        )
    )
    radio.add(HealthDevice(OXIMETER, "oximeter", [plx_spot_check(None, 75), plx_spot_check(97.5, 72)]))


async def day(radio: SimulatedRadio) -> None:
    """A station's day, compressed: wristband, a caregiver visit, measurements, a press, a silence."""
    health_devices(radio)
    packet = 0
    for second in range(600):
        packet = (packet + 1) % 256
        wristband_beat(radio, packet, moving=second % 30 < 10)
        if 20 <= second < 140:
            badge_beat(radio)  # the caregiver is here
        if second in (30, 90):
            radio.advertise(BP_MONITOR, name="BP-monitor")
            radio.advertise(OXIMETER, name="Oximeter")
        if second == 60:
            await press(radio, PENDANT, packet_id=42)
        if second == 200:
            radio.silent_until_reset = True
            print("radio silent until the gateway resets the adapter", flush=True)
        await asyncio.sleep(1)


async def play(socket_path: str, scenario: str) -> None:
    async with SimulatedRadio(Path(socket_path)) as radio:
        print(f'simulated radio on {socket_path}  (configure: [ble] adapter = "simulated:{socket_path}")', flush=True)
        if scenario == "day":
            await day(radio)
        await asyncio.Event().wait()
