"""The BLE shell: the only bleak user. Scans for the configured wearables and health devices,
decodes their advertisements, reads health devices over GATT when they advertise, and keeps
the radio alive (restart the scan, then reset the adapter, when nothing is heard).

The radio is bleak's: `[ble] adapter = "hci0"` uses BlueZ; other backend classes come in as a
`Radio` (the CLI injects the simulated one for `"simulated:/path.sock"`), passed to bleak as
`backend=` — the code path here is the same.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bleak import BleakClient, BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from drivers.adverts import AdvertError, AdvertReading, BTHomePacket, IBeacon, decode_advertisement
from drivers.gatt import BATTERY_LEVEL, HEALTH_SERVICES, PROFILE_CHARACTERISTICS, GattError, decode_characteristic
from gateway.care_state import CareState
from gateway.clock import utc_text
from gateway.config import BleDevice, BleSection, HealthBleDevice, PendantDevice, WristbandDevice
from gateway.events import EventKind
from gateway.i18n import _
from gateway.outbox import OutboxFull
from gateway.rules import DeviceRules, EventDraft, Seen, ibeacon_matches
from gateway.status import BleDeviceStatus

__all__ = [
    "BLE_COUNTERS",
    "BLUEZ",
    "REJECT_LOG_INTERVAL_S",
    "BleLink",
    "EventSink",
    "Radio",
    "SeenDevice",
    "bind_keys",
    "describe",
    "make_scanner",
    "scan",
]

log = logging.getLogger("care_gateway.ble")

QUEUE_LIMIT = 10_000  # advertisements waiting to be decoded; beyond it the oldest are dropped
WATCH_S = 1.0  # how often the silence watch and the rules' clock tick
REJECT_LOG_INTERVAL_S = 10.0
COUNTER_RESTART_BELOW = 100  # a keyed device's counter below this after a higher one: it started again
CONNECT_ATTEMPTS = 3
CONNECT_GIVE_UP_S = 30.0
ADAPTER_RESET_TIMEOUT_S = 15.0
BLE_ERRORS = (BleakError, TimeoutError, OSError, EOFError)
HEALTH_UUID_PLACES = 3  # a health service UUID is matched among the first three of the advertised list


def passive_patterns() -> list[OrPattern]:
    """What BlueZ forwards in passive mode (a pattern matches at a fixed offset inside one AD
    structure): BTHome service data (D2 FC), Apple manufacturer data (iBeacons), and the health
    services' 16-bit UUIDs among the first HEALTH_UUID_PLACES of a complete or incomplete list."""
    patterns = [
        OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc"),
        OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00"),
    ]
    for uuid in HEALTH_SERVICES:
        short = int(uuid[4:8], 16).to_bytes(2, "little")
        for ad_type in (AdvertisementDataType.COMPLETE_LIST_SERVICE_UUID16,
                        AdvertisementDataType.INCOMPLETE_LIST_SERVICE_UUID16):  # fmt: skip
            patterns += [OrPattern(2 * place, ad_type, short) for place in range(HEALTH_UUID_PLACES)]
    return patterns


PASSIVE_UNAVAILABLE = "passive scanning on Linux requires"  # bleak's error when bluetoothd lacks --experimental

# Device1 properties that change with the link, not with an advertisement: bleak's BlueZ
# scanner calls back on every PropertiesChanged, so a GATT session looks like ~4 adverts
LINK_STATE = frozenset({"Connected", "ServicesResolved", "Paired", "Bonded", "Trusted", "Blocked", "WakeAllowed",
                        "LegacyPairing", "Modalias"})  # fmt: skip
LEARNT_WHILE_CONNECTED = frozenset({"UUIDs", "Alias", "Name", "Appearance", "Icon", "Class"})  # (GATT reads)
LAST_PROPERTIES_KEPT = 1024  # configured devices' last properties (badges may rotate their address)
# Devices not in the station file that BlueZ may keep: bleak mirrors every device BlueZ knows
# (~3.7 KB each in this process), and BlueZ forgets one only after 30 s of silence, so a crowd
# or a random-address flood would grow the daemon towards MemoryMax; beyond this many, the
# oldest strangers are removed from BlueZ (RemoveDevice), which frees bleak's copy too. A
# stranger that advertises again is simply created again.
STRANGERS_KEPT = 500
STRANGERS_PENDING = 10_000  # removals waiting; beyond, the oldest are not removed (they expire in BlueZ)
LINK_KEPT = ("Paired", "Bonded", "Trusted", "Connected")  # a device with any of these is never removed

KEYED = (PendantDevice, WristbandDevice)  # the kinds that may send encrypted BTHome
EventSink = Callable[[str, list[EventDraft]], Awaitable[None]]


def _bluez_object(adv: AdvertisementData) -> tuple[str, dict[str, Any]] | None:
    """(object path, Device1 properties) as bleak's BlueZ backend gives them in platform_data;
    None from other backends (the simulated radio gives none)."""
    details = adv.platform_data
    if len(details) == 2 and isinstance(details[0], str) and isinstance(details[1], dict):
        return details[0], details[1]
    return None


def bind_keys(devices: Sequence[BleDevice]) -> dict[str, bytes]:
    """device id -> BTHome key, for the encrypted pendants and wristbands."""
    return {d.id: bytes.fromhex(d.bind_key) for d in devices if isinstance(d, KEYED) and d.bind_key}


@dataclass(frozen=True)
class Radio:
    """The radio bleak drives: BlueZ on `[ble] adapter` (the default), or other bleak backend
    classes with their options (the demo's simulated radio, which the CLI resolves from
    `adapter = "simulated:..."` and injects: no module here knows the simulators); `reset`
    power-cycles it (default: `bluetoothctl power off/on`)."""

    scanner_backend: type[BaseBleakScanner] | None = None
    client_backend: type[BaseBleakClient] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    reset: Callable[[], Awaitable[None]] | None = None


BLUEZ = Radio()
BLE_COUNTERS = ("advertisements", "decoded", "rejected", "dropped")  # the status's "ble" object


def make_scanner(
    ble: BleSection,
    callback: Callable[[BLEDevice, AdvertisementData], None],
    radio: Radio = BLUEZ,
    mode: Literal["active", "passive"] | None = None,
) -> BleakScanner:
    """A scanner on the configured adapter (BlueZ, or the injected radio), duplicates kept;
    `mode` overrides the configured scanning mode (the fall-back to active)."""
    mode = mode or ble.scanning_mode
    if radio.scanner_backend is not None:
        return BleakScanner(callback, scanning_mode=mode, backend=radio.scanner_backend, **radio.options)
    bluez: dict[str, Any] = {"adapter": ble.adapter, "filters": {"DuplicateData": True}}
    if mode == "passive":
        bluez["or_patterns"] = passive_patterns()
    return BleakScanner(callback, scanning_mode=mode, bluez=bluez)  # type: ignore[arg-type]


@dataclass
class SeenDevice:
    """One device heard by `care-gateway scan`, and what the gateway can make of it."""

    address: str
    name: str | None
    rssi: int
    adverts: int = 0
    decoded: set[str] = field(default_factory=set)
    configured_as: str | None = None


def describe(reading: object) -> str:
    if isinstance(reading, BTHomePacket):
        values = ", ".join(f"{k} {v}" for k, v in sorted(reading.values.items()))
        kind = "trigger-based " if reading.trigger_based else ""
        return f"BTHome v2 {kind}{'(encrypted) ' if reading.encrypted else ''}[{values}]".replace(" []", "")
    if isinstance(reading, IBeacon):
        return f"iBeacon uuid {reading.uuid} major {reading.major} minor {reading.minor}"
    if isinstance(reading, AdvertError):
        return f"undecodable: {reading.reason}"
    return type(reading).__name__


async def scan(ble: BleSection, devices: Sequence[BleDevice], seconds: float, radio: Radio = BLUEZ) -> list[SeenDevice]:
    """Listen for `seconds`; every device heard, strongest first, with its decodable content."""
    by_address = {d.address.upper(): d for d in devices if d.address}
    keys = bind_keys(devices)
    seen: dict[str, SeenDevice] = {}

    def heard(device: BLEDevice, adv: AdvertisementData) -> None:
        entry = seen.setdefault(device.address.upper(), SeenDevice(device.address.upper(), adv.local_name, adv.rssi))
        entry.adverts += 1
        entry.rssi = max(entry.rssi, adv.rssi)
        entry.name = entry.name or adv.local_name
        readings = decode_advertisement(
            device.address,
            adv.manufacturer_data,
            adv.service_data,
            keys.get(by_address[entry.address].id) if entry.address in by_address else None,
        )
        entry.decoded.update(describe(r) for r in readings)
        entry.decoded.update(
            f'GATT health service: profile = "{HEALTH_SERVICES[u]}"' for u in adv.service_uuids if u in HEALTH_SERVICES
        )
        configured = by_address.get(entry.address)
        if configured is None:
            beacons = [r for r in readings if isinstance(r, IBeacon)]
            configured = next(
                (d for d in devices for b in beacons if d.ibeacon and ibeacon_matches(b, d.ibeacon)), None
            )
        if configured is not None:
            entry.configured_as = configured.id

    async with make_scanner(ble, heard, radio):
        await asyncio.sleep(seconds)
    return sorted(seen.values(), key=lambda d: -d.rssi)


class BleLink:
    """Every configured BLE device, through one scanner, for as long as the daemon runs."""

    def __init__(
        self,
        ble: BleSection,
        devices: list[BleDevice],
        rules: dict[str, DeviceRules],
        on_events: EventSink,
        radio: Radio = BLUEZ,
        state: CareState | None = None,
    ) -> None:
        self.ble = ble
        self._state = state or CareState()  # where the keyed devices' last counters are kept
        self.radio = radio
        self.devices = devices
        self.rules = rules
        self._on_events = on_events
        self._by_address = {d.address.upper(): d for d in devices if d.address}
        self._by_beacon = [d for d in devices if d.ibeacon]
        self._keys = bind_keys(devices)
        self.seen: dict[str, tuple[float, int]] = {}  # device id -> (wall time, RSSI) of its last advertisement
        self.battery: dict[str, int] = {}  # device id -> the battery level its advertisements last gave
        self._queue: collections.deque[tuple[BleDevice, BLEDevice, AdvertisementData, float]] = collections.deque(
            maxlen=QUEUE_LIMIT
        )
        self._arrived = asyncio.Event()
        self._sessions: dict[str, asyncio.Task[None]] = {}
        self._cooldown_until: dict[str, float] = {}
        self.last_advert = time.monotonic()
        self.stats: dict[str, int] = collections.Counter(dict.fromkeys(BLE_COUNTERS, 0))  # (zeros reported too)
        self._last_reject_log: dict[tuple[str, str], float] = {}
        self._last_properties: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._mode: Literal["active", "passive"] = ble.scanning_mode
        self._strangers: collections.OrderedDict[str, None] = collections.OrderedDict()  # BlueZ object paths
        self._forget: collections.deque[str] = collections.deque(maxlen=STRANGERS_PENDING)
        self._forget_wanted = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._scan_forever(), name="ble-scan")
            tasks.create_task(self._decode_forever(tasks), name="ble-decode")
            tasks.create_task(self._tick_forever(), name="ble-rules")
            if self.radio.scanner_backend is None:
                tasks.create_task(self._forget_strangers_forever(), name="ble-strangers")

    # --- scanning and its self-healing ---------------------------------------------------------

    def _scanner(self) -> BleakScanner:
        return make_scanner(self.ble, self._on_advertisement, self.radio, self._mode)

    async def _scan_forever(self) -> None:
        failures = 0
        while True:
            try:
                async with self._scanner():
                    if failures:
                        log.info(_("BLE scanner running again on %s"), self.ble.adapter)
                    failures = 0
                    await self._until_silent()
            except (*BLE_ERRORS, FileNotFoundError) as exc:
                if self._mode == "passive" and PASSIVE_UNAVAILABLE in str(exc):
                    self._mode = "active"  # alarms first: scan actively rather than hear nothing
                    log.error(
                        _(
                            'BLE: scanning_mode = "passive" needs bluetoothd started with --experimental '
                            "(docs/devices.md); scanning actively on %s instead"
                        ),
                        self.ble.adapter,
                    )
                    await self._emit("gateway", [EventDraft(EventKind.BLE_RADIO, {"action": "scan_fallback_active"})])
                    continue
                failures += 1
                if failures == 1:
                    log.error(
                        _(
                            "BLE scanner on %s failed: %r; check that bluetoothd runs and the adapter is up "
                            "(bluetoothctl show); retrying"
                        ),
                        self.ble.adapter,
                        exc,
                    )
                await asyncio.sleep(min(30.0, 2.0**failures))
                continue
            silent = time.monotonic() - self.last_advert
            if silent >= self.ble.silence_reset_s:
                await self._reset_adapter(silent)
            else:
                log.warning(
                    _("BLE: no advertisement for %.0f s although devices are expected; restarting the scan"), silent
                )
                await self._emit(
                    "gateway",
                    [EventDraft(EventKind.BLE_RADIO, {"action": "scan_restarted", "silent_s": round(silent)})],
                )

    async def _until_silent(self) -> None:
        """Return when nothing has been heard for silence_restart_s since the later of the last
        advertisement and this scan's start (so a restarted scan gets a full period)."""
        started = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_S)
            quiet_since = max(self.last_advert, started)
            if self.devices and time.monotonic() - quiet_since >= self.ble.silence_restart_s:
                return

    async def _reset_adapter(self, silent: float) -> None:
        log.warning(
            _("BLE: no advertisement for %.0f s even after restarting the scan; resetting adapter %s"),
            silent,
            self.ble.adapter,
        )
        ok, detail = True, ""
        try:
            if self.radio.reset is not None:
                await self.radio.reset()
            else:
                for step in ("off", "on"):
                    proc = await asyncio.create_subprocess_exec(
                        "bluetoothctl", "power", step, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
                    )
                    output, _stderr = await asyncio.wait_for(proc.communicate(), ADAPTER_RESET_TIMEOUT_S)
                    detail = output.decode(errors="replace").strip()[-200:]
                    ok = ok and proc.returncode == 0
        except (*BLE_ERRORS, FileNotFoundError) as exc:
            ok, detail = False, repr(exc)
        if not ok:
            log.error(_("BLE adapter reset failed: %s; check the adapter (rfkill list, dmesg)"), detail)
        self.last_advert = time.monotonic()  # give the reset adapter a full period
        await self._emit(
            "gateway",
            [EventDraft(EventKind.BLE_RADIO, {"action": "adapter_reset", "silent_s": round(silent), "ok": ok})],
        )

    def _on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        """bleak's callback: only look the device up and queue it; decoding happens in a task."""
        configured = self._by_address.get(device.address.upper())
        if configured is None and self._by_beacon:
            configured = self._match_beacon(adv)
        if configured is not None and self._link_change_only(device.address.upper(), adv):
            return  # a connection-state change: neither a sighting nor a reason for a new session
        self.last_advert = time.monotonic()
        self.stats["advertisements"] += 1
        if configured is None:
            self._note_stranger(adv)
            return
        if len(self._queue) == self._queue.maxlen:
            self.stats["dropped"] += 1
        self._queue.append((configured, device, adv, self.last_advert))
        self._arrived.set()

    def _note_stranger(self, adv: AdvertisementData) -> None:
        """Keep at most STRANGERS_KEPT unconfigured devices in BlueZ (and so in bleak)."""
        known = _bluez_object(adv)
        if self.radio.scanner_backend is not None or known is None:
            return
        path, props = known
        if any(props.get(k) for k in LINK_KEPT):
            return  # (a paired keyboard, a connected phone: not ours to forget)
        if path in self._strangers:
            self._strangers.move_to_end(path)
            return
        self._strangers[path] = None
        if len(self._strangers) > STRANGERS_KEPT:
            self._forget.append(self._strangers.popitem(last=False)[0])
            self._forget_wanted.set()

    async def _forget_strangers_forever(self) -> None:
        """Remove the oldest strangers from BlueZ, one call at a time (back-pressure: a flood
        waits for bluetoothd instead of filling the bus), on a D-Bus connection of our own."""
        from dbus_fast import BusType, Message
        from dbus_fast.aio import MessageBus

        bus: MessageBus | None = None
        adapter = f"/org/bluez/{self.ble.adapter}"
        failures = 0
        while True:
            await self._forget_wanted.wait()
            self._forget_wanted.clear()
            try:
                if bus is None or not bus.connected:
                    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
                while self._forget:
                    path = self._forget.popleft()
                    remove = Message(destination="org.bluez", path=adapter, interface="org.bluez.Adapter1",
                                     member="RemoveDevice", signature="o", body=[path])  # fmt: skip
                    await bus.call(remove)  # (an error reply: the device went already, or is not ours to remove)
                failures = 0
            except (OSError, EOFError, ConnectionError, ValueError) as exc:
                failures += 1
                if failures == 1:
                    log.warning(_("BLE: cannot ask bluetoothd to forget unknown devices (%r); retrying"), exc)
                bus = None
                await asyncio.sleep(min(30.0, 2.0**failures))
                self._forget_wanted.set()

    def _link_change_only(self, address: str, adv: AdvertisementData) -> bool:
        """True when bleak called back for a change of the link (Connected, ServicesResolved,
        what a GATT session taught BlueZ) with no new advertisement in it. bleak's BlueZ
        backend gives (object path, Device1 properties) as platform_data; other backends give
        no properties, and every callback is an advertisement."""
        known = _bluez_object(adv)
        if known is None:
            return False
        props = known[1]
        last = self._last_properties.pop(address, None)
        self._last_properties[address] = dict(props)
        if len(self._last_properties) > LAST_PROPERTIES_KEPT:
            self._last_properties.popitem(last=False)
        if last is None:
            return False
        changed = {k for k in props.keys() | last.keys() if props.get(k) != last.get(k)}
        if not changed:
            return False  # the same advertisement again (a discovery filter re-emits RSSI)
        connected = bool(props.get("Connected") or last.get("Connected"))
        return changed <= (LINK_STATE | LEARNT_WHILE_CONNECTED if connected else LINK_STATE)

    def _match_beacon(self, adv: AdvertisementData) -> BleDevice | None:
        readings = decode_advertisement("", adv.manufacturer_data, {})
        for reading in readings:
            if isinstance(reading, IBeacon):
                for candidate in self._by_beacon:
                    if candidate.ibeacon and ibeacon_matches(reading, candidate.ibeacon):
                        return candidate
        return None

    # --- decoding --------------------------------------------------------------------------------

    async def _decode_forever(self, tasks: asyncio.TaskGroup) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._queue:
                configured, device, adv, seen_at = self._queue.popleft()
                await self._handle(configured, device, adv, seen_at, tasks)

    async def _handle(
        self, configured: BleDevice, device: BLEDevice, adv: AdvertisementData, seen_at: float, tasks: asyncio.TaskGroup
    ) -> None:
        rules = self.rules[configured.id]
        key = self._keys.get(configured.id)
        readings = []
        for reading in decode_advertisement(device.address, adv.manufacturer_data, adv.service_data, key):
            if isinstance(reading, AdvertError):
                self._reject(configured.id, reading.reason)
            elif key is None or self._authentic(configured.id, reading):
                readings.append(reading)
        drafts: list[EventDraft] = []
        if key is None or readings:  # a keyed device is seen only in what it signed
            self.seen[configured.id] = (time.time(), adv.rssi)
            drafts = rules.on_reading(Seen(adv.rssi), seen_at)
        for reading in readings:
            self.stats["decoded"] += 1
            battery = reading.values.get("battery") if isinstance(reading, BTHomePacket) else None
            if isinstance(battery, int) and not isinstance(battery, bool):
                self.battery[configured.id] = battery
            drafts += rules.on_reading(reading, seen_at)
        await self._emit(configured.id, drafts)
        if isinstance(configured, HealthBleDevice):
            self._maybe_start_session(configured, device, tasks)

    def device_reports(self) -> dict[str, BleDeviceStatus]:
        """The Bluetooth devices' part of the station status."""
        out = {}
        for device in self.devices:
            seen = self.seen.get(device.id)
            out[device.id] = BleDeviceStatus(
                kind=device.kind,
                resident=device.resident,
                last_seen=utc_text(seen[0] if seen else None),
                rssi=seen[1] if seen else None,
                battery=self.battery.get(device.id),
            )
        return out

    def _authentic(self, device_id: str, reading: AdvertReading) -> bool:
        """For a device with a bind_key: only an encrypted BTHome packet whose counter is above
        the last one accepted (a copy of the last packet is dropped quietly; a lower counter is
        a replay, unless the device restarted its count, as after a new battery)."""
        if not (isinstance(reading, BTHomePacket) and reading.encrypted and reading.counter is not None):
            self._reject(device_id, "not encrypted, but the device has a bind_key: refused (imitated?)")
            return False
        last = self._state.ble_counters.get(device_id)
        counter = reading.counter
        if last is not None and counter == last:
            return False  # the device repeating its last packet
        ahead = last is None or 0 < (counter - last) % 2**32 < 2**31  # (wraps round after 2^32)
        restarted = last is not None and counter < COUNTER_RESTART_BELOW <= last
        if not (ahead or restarted):
            self._reject(device_id, f"replayed: encryption counter {counter} is not above {last}")
            return False
        if restarted:
            log.warning(
                _("BLE device %s: its encryption counter started again (%d after %d)"), device_id, counter, last
            )
        self._state.note_ble_counter(device_id, counter)  # (written with the events it brings)
        return True

    def _reject(self, device_id: str, reason: str) -> None:
        """Counted always; logged at most every REJECT_LOG_INTERVAL_S per device and kind of
        rejection (a flood of imitations cannot fill the journal, nor hide a replay)."""
        self.stats["rejected"] += 1
        now = time.monotonic()
        which = (device_id, reason.split(":", 1)[0])  # configured devices only: a bounded table
        if now - self._last_reject_log.get(which, -REJECT_LOG_INTERVAL_S) >= REJECT_LOG_INTERVAL_S:
            self._last_reject_log[which] = now
            log.warning(
                _("BLE device %s: advertisement rejected: %s (%d rejected in all)"),
                device_id,
                reason,
                self.stats["rejected"],
            )

    async def _emit(self, device_id: str, drafts: list[EventDraft]) -> None:
        if drafts:
            await self._on_events(device_id, drafts)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            now = time.monotonic()
            for device in self.devices:
                try:
                    await self._emit(device.id, self.rules[device.id].on_tick(now))
                except OutboxFull as exc:  # the scanner stays up; the journal says what was not kept
                    log.error(_("device %s: a time-driven event was not stored: %s"), device.id, exc)

    # --- GATT sessions with health devices -----------------------------------------------------

    def _maybe_start_session(self, configured: HealthBleDevice, device: BLEDevice, tasks: asyncio.TaskGroup) -> None:
        running = self._sessions.get(configured.id)
        if (running and not running.done()) or time.monotonic() < self._cooldown_until.get(configured.id, 0.0):
            return
        self._sessions[configured.id] = tasks.create_task(
            self._session(configured, device), name=f"ble-gatt-{configured.id}"
        )

    async def _session(self, configured: HealthBleDevice, device: BLEDevice) -> None:
        """Connect (with retries), subscribe to the profile's measurement, collect, disconnect.
        A failure is logged and ends the session; it never reaches the scanner."""
        try:
            await self._measure(configured, device)
        except BLE_ERRORS as exc:
            log.warning(
                _("BLE device %s: GATT session failed: %r; will try at its next advertisement"), configured.id, exc
            )
        finally:
            self._cooldown_until[configured.id] = time.monotonic() + configured.cooldown_s

    def _client(self, device: BLEDevice, on_disconnect: Callable[[BleakClient], None]) -> BleakClient:
        if self.radio.client_backend is not None:
            return BleakClient(
                device, on_disconnect, backend=self.radio.client_backend, timeout=10.0, **self.radio.options
            )
        return BleakClient(device, on_disconnect, timeout=10.0, bluez={"adapter": self.ble.adapter})

    @staticmethod
    async def _hang_up(client: BleakClient) -> None:
        """Always, even when the device hung up first: bleak's BlueZ client keeps its own D-Bus
        connection until disconnect(), and BlueZ keeps that connection's notify session and
        re-arms it on the next connection, so every later session would get each value twice."""
        with contextlib.suppress(*BLE_ERRORS):
            await client.disconnect()

    async def _measure(self, configured: HealthBleDevice, device: BLEDevice) -> None:
        gone = asyncio.Event()
        client = self._client(device, lambda _: gone.set())
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(BLE_ERRORS),
            stop=stop_after_attempt(CONNECT_ATTEMPTS) | stop_after_delay(CONNECT_GIVE_UP_S),
            wait=wait_exponential_jitter(multiplier=0.5, max=5, jitter=0.5),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await client.connect()
        except BaseException:
            await self._hang_up(client)
            raise
        # bleak's BlueZ backend calls the disconnected callback on its way through an
        # le-connection-abort-by-local it retried: only a disconnection after connect() counts
        gone.clear()
        values: list[tuple[str, bytes]] = []
        try:
            log.info(_("BLE device %s: connected for a %s measurement"), configured.id, configured.profile)
            with contextlib.suppress(*BLE_ERRORS):
                values.append((BATTERY_LEVEL, bytes(await client.read_gatt_char(BATTERY_LEVEL))))
            measurement = PROFILE_CHARACTERISTICS[configured.profile]

            def on_value(_: object, data: bytearray) -> None:
                values.append((measurement, bytes(data)))

            await client.start_notify(measurement, on_value)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(configured.session_s):
                    await gone.wait()
            ended_by = "the device disconnected" if gone.is_set() else "time limit"  # (before we hang up)
        finally:
            await self._hang_up(client)
        got = sum(1 for uuid, _ in values if uuid != BATTERY_LEVEL)
        log.info(_("BLE device %s: session ended (%s) with %d measurement value(s)"), configured.id, ended_by, got)
        drafts: list[EventDraft] = []
        rules = self.rules[configured.id]
        for uuid, value in values:
            decoded = decode_characteristic(uuid, value)
            if isinstance(decoded, GattError):
                self._reject(configured.id, f"{decoded.characteristic}: {decoded.reason}")
                continue
            drafts += rules.on_reading(decoded, time.monotonic())
        await self._emit(configured.id, drafts)
