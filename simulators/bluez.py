"""A BlueZ stand-in on a private D-Bus: what bluetoothd 5.66 shows bleak, without a kernel.

The gateway runs unchanged on bleak's real BlueZ backend (dbus-fast), with `adapter = "hci0"`
and `DBUS_SYSTEM_BUS_ADDRESS` pointing at `PrivateBus`; this service owns `org.bluez` there.
It does what bleak relies on, as read in BlueZ 5.66 (Debian 12, Raspberry Pi OS bookworm) and
noted in ../shared/bluez-notes.md:

- `src/adapter.c` (`btd_adapter_device_found`, `discovery_filter`, `set_discovery_filter`,
  `temporary_timeout`): a device object on its first advertisement (InterfacesAdded), then one
  PropertiesChanged per advertisement carrying only what changed; RSSI re-emitted on every
  advertisement while a discovery filter is set, otherwise on a change of 8 dB or more;
  manufacturer and service data only when their bytes change, unless a client's filter has
  `DuplicateData: true`; discovery sessions per D-Bus client, ended when it leaves the bus;
  temporary devices removed after `TemporaryTimeout` (30 s); powering off stops discovery,
  disconnects and removes temporary devices.
- `src/eir.c`, `src/shared/ad.c`: advertisements are raw AD structures (length, type, data),
  a scan response only heard in active discovery; `bt_ad_pattern_match` for passive monitors.
- `src/adv_monitor.c`: `AdvertisementMonitorManager1` only with `--experimental`; BlueZ reads
  the client's monitor object, calls `Activate`, `DeviceFound`, and forwards only advertisements
  matching an or-pattern.
- `src/device.c`, `src/gatt-client.c`: Connect → Connected, GATT objects (kept after a
  disconnect), ServicesResolved; `le-connection-abort-by-local` reports Connected true then false
  before the error; a notify session belongs to the D-Bus client that started it and lasts until
  StopNotify or until that client leaves the bus; it is re-armed on the next connection, and each
  registered session emits its own PropertiesChanged on `Value` per notification.

Not modelled (see bluez-notes.md): the kernel, the controller and the air (controller duplicate
filtering, scan windows, loss, extended advertising, the kernel's 10 s LE scan end and the
StopDiscovery `InProgress` race), MTU exchange, ATT errors, pairing, AcquireNotify.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from simulators.wearables import BATTERY_LEVEL, BATTERY_SERVICE, HEALTH_PROFILES, uuid16

BLUEZ = "org.bluez"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
MONITOR_MANAGER = "org.bluez.AdvertisementMonitorManager1"
MONITOR = "org.bluez.AdvertisementMonitor1"
SERVICE = "org.bluez.GattService1"
CHARACTERISTIC = "org.bluez.GattCharacteristic1"
DESCRIPTOR = "org.bluez.GattDescriptor1"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
FAILED = "org.bluez.Error.Failed"
NOT_READY = "org.bluez.Error.NotReady"
INVALID_ARGUMENTS = "org.bluez.Error.InvalidArguments"
DOES_NOT_EXIST = "org.bluez.Error.DoesNotExist"
RSSI_DELTA_DB = 8  # src/adapter.c: without a discovery filter, RSSI is re-emitted on this change
TEMPORARY_TIMEOUT_S = 30.0  # main.conf TemporaryTimeout default
CCCD = uuid16(0x2902)
FILTER_TYPES = {"UUIDs": "as", "RSSI": "n", "Pathloss": "q", "Transport": "s", "DuplicateData": "b",
                "Discoverable": "b", "Pattern": "s"}  # fmt: skip
ConnectOutcome = Literal["ok", "refused", "abort-then-ok", "hang"]

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """A `dbus-daemon` of type system on a unix socket of its own: set `address` as
    DBUS_SYSTEM_BUS_ADDRESS for bleak (dbus-fast) and bluetoothctl (libdbus)."""

    def __init__(self) -> None:
        # (a unix socket path is at most 108 bytes: a short folder, not the test's tmp_path)
        self.folder = Path(tempfile.mkdtemp(prefix="bz-", dir="/tmp"))
        self.address = f"unix:path={self.folder / 'bus'}"
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> PrivateBus:
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            raise RuntimeError("dbus-daemon is missing: bash .ci/setup installs it (apt-get install dbus)")
        config = self.folder / "bus.conf"
        config.write_text(BUS_CONFIG.format(socket=self.folder / "bus"))
        self._proc = await asyncio.create_subprocess_exec(
            daemon, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 10)
        if not line:
            stderr = await self._proc.stderr.read() if self._proc.stderr else b""
            raise RuntimeError(f"dbus-daemon did not start: {stderr.decode(errors='replace')}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._proc and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def env(self) -> dict[str, str]:
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.address}


# --- advertisements as the air carries them -------------------------------------------------


def ad_structure(ad_type: int, data: bytes) -> bytes:
    return bytes([len(data) + 1, ad_type]) + data


def advertisement(
    *,
    flags: int | None = 0x06,
    uuids16: Iterable[int] = (),
    service_data: dict[int, bytes] | None = None,
    manufacturer: dict[int, bytes] | None = None,
    name: str | None = None,
) -> bytes:
    """AD structures (Core Spec Supplement part A): flags, complete 16-bit UUID list, service
    data (16-bit UUID, little-endian, then the data), manufacturer data (company id LE), name."""
    ad = ad_structure(0x01, bytes([flags])) if flags is not None else b""
    short = b"".join(u.to_bytes(2, "little") for u in uuids16)
    ad += ad_structure(0x03, short) if short else b""
    for uuid, data in (service_data or {}).items():
        ad += ad_structure(0x16, uuid.to_bytes(2, "little") + data)
    for company, data in (manufacturer or {}).items():
        ad += ad_structure(0xFF, company.to_bytes(2, "little") + data)
    ad += ad_structure(0x09, name.encode()) if name else b""
    return ad


def ad_structures(raw: bytes) -> list[tuple[int, bytes]]:
    """(type, data) of each AD structure; like src/eir.c, parsing stops at a zero length or a
    structure that runs past the end."""
    out, i = [], 0
    while i < len(raw):
        length = raw[i]
        if length == 0 or i + 1 + length > len(raw):
            break
        out.append((raw[i + 1], raw[i + 2 : i + 1 + length]))
        i += 1 + length
    return out


@dataclass
class Heard:
    """What BlueZ makes of one advertisement (and its scan response, if heard)."""

    name: str | None = None
    uuids: list[str] = field(default_factory=list)
    manufacturer: dict[int, bytes] = field(default_factory=dict)
    service_data: dict[str, bytes] = field(default_factory=dict)
    tx_power: int | None = None


def parse_ad(raw: bytes) -> Heard:
    heard = Heard()
    for ad_type, data in ad_structures(raw):
        if ad_type in (0x02, 0x03):
            heard.uuids += [uuid16(int.from_bytes(data[i : i + 2], "little")) for i in range(0, len(data) - 1, 2)]
        elif ad_type in (0x06, 0x07):
            for i in range(0, len(data) - 15, 16):
                h = data[i : i + 16][::-1].hex()
                heard.uuids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
        elif ad_type in (0x08, 0x09):
            if ad_type == 0x09 or heard.name is None:
                heard.name = data.decode(errors="replace")
        elif ad_type == 0x0A and data:
            heard.tx_power = int.from_bytes(data[:1], "little", signed=True)
        elif ad_type == 0x16 and len(data) >= 2:
            heard.service_data[uuid16(int.from_bytes(data[:2], "little"))] = bytes(data[2:])
        elif ad_type == 0xFF and len(data) >= 2:
            heard.manufacturer[int.from_bytes(data[:2], "little")] = bytes(data[2:])
    return heard


def pattern_matches(patterns: list[tuple[int, int, bytes]], raw: bytes) -> bool:
    """src/shared/ad.c bt_ad_pattern_match: a pattern (offset, AD type, content) matches inside
    one AD structure of that type; a monitor matches when any of its or-patterns does."""
    for ad_type, data in ad_structures(raw):
        for offset, wanted_type, content in patterns:
            if ad_type == wanted_type and data[offset : offset + len(content)] == content:
                return True
    return False


# --- the stand-in ------------------------------------------------------------------------------


@dataclass
class Peripheral:
    """A GATT health device: on each connection it indicates one session's measurements once
    subscribed, then disconnects (as a blood-pressure monitor does when it has sent its record)."""

    address: str
    profile: str
    sessions: deque[list[bytes]]
    battery: int = 80
    outcomes: deque[ConnectOutcome] = field(default_factory=deque)  # (then "ok")
    drop_after: int | None = None  # disconnect after this many values, on every session
    hangs_up: bool = True  # False: stays connected after its values until the client disconnects
    connections: int = 0
    values_sent: int = 0


@dataclass
class _Device:
    path: str
    address: str
    props: dict[str, Variant]
    last_seen: float
    rssi: int | None = None
    found_by: set[str] = field(default_factory=set)  # monitors that reported it (DeviceFound)
    notify: dict[str, list[str]] = field(default_factory=dict)  # characteristic path -> clients
    gatt_made: bool = False
    session: asyncio.Task[None] | None = None
    pending_connect: Message | None = None
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)  # a notify session started


@dataclass
class _Monitor:
    client: str
    path: str
    patterns: list[tuple[int, int, bytes]]


def _object_path(adapter: str, address: str) -> str:
    return f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"


class BlueZStandIn:
    """`org.bluez` on a `PrivateBus`: an adapter, the devices the test makes advertise, and
    scripted GATT peripherals. `experimental` says whether bluetoothd runs with --experimental
    (the passive-scanning monitor manager)."""

    def __init__(
        self, bus_address: str, adapter: str = "hci0", experimental: bool = True,
        temporary_timeout_s: float = TEMPORARY_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self.bus_address = bus_address
        self.adapter = adapter
        self.adapter_path = f"/org/bluez/{adapter}"
        self.experimental = experimental
        self.temporary_timeout_s = temporary_timeout_s
        self.powered = True
        self.silent_until_power_cycle = False  # a hung controller: only a power cycle brings it back
        self.discovery: dict[str, dict[str, Any]] = {}  # client -> its discovery filter, while discovering
        self.filters: dict[str, dict[str, Any]] = {}  # client -> the filter it set
        self.monitors: dict[tuple[str, str], _Monitor] = {}
        self.devices: dict[str, _Device] = {}  # address -> object
        self.peripherals: dict[str, Peripheral] = {}
        self.power_cycles = 0
        self.starts = 0  # StartDiscovery calls
        self.signals = 0
        self.adverts_delivered = 0  # advertisements that reached the bus as a Device1 signal
        self._bus: MessageBus | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._expiry: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BlueZStandIn:
        self._bus = MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM)
        await self._bus.connect()
        self._bus.add_message_handler(self._on_message)
        await self._add_match("type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'")
        await self._bus.request_name(BLUEZ)
        # bluetoothd announces its adapter when it has it (a client may have been waiting)
        self._signal(
            "/",
            OBJECT_MANAGER,
            "InterfacesAdded",
            "oa{sa{sv}}",
            [self.adapter_path, self._objects()[self.adapter_path]],
        )
        self._expiry = asyncio.create_task(self._expire_forever(), name="bluez-expiry")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """bluetoothd stops: its name leaves the bus (bleak sees no InterfacesRemoved)."""
        for task in [*self._tasks, *(d.session for d in self.devices.values() if d.session)]:
            task.cancel()
        if self._expiry:
            self._expiry.cancel()
        if self._bus:
            self._bus.disconnect()
            with contextlib.suppress(Exception):
                await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    # --- what the test does to the air --------------------------------------------------------

    def advertise(
        self,
        address: str,
        *,
        name: str | None = None,
        mfr: dict[int, bytes] | None = None,
        svc: dict[str, bytes] | None = None,
        rssi: int = -60,
        uuids16: Iterable[int] = (),
    ) -> bool:
        """The scripted devices' call (simulators.wearables.Air): the fields as one advertising
        PDU, the name in the scan response (as pendants and health devices do)."""
        service_data = {int(uuid[4:8], 16): data for uuid, data in (svc or {}).items()}
        ad = advertisement(uuids16=uuids16, service_data=service_data, manufacturer=mfr)
        return self.transmit(address, ad, advertisement(flags=None, name=name), rssi)

    def transmit(self, address: str, ad: bytes, scan_response: bytes = b"", rssi: int = -60) -> bool:
        """One advertising event of `address`; True if a client heard it (discovery or a monitor)."""
        if not self.powered or self.silent_until_power_cycle:
            return False
        active = bool(self.discovery)
        matching = [m for m in self.monitors.values() if m.patterns and pattern_matches(m.patterns, ad)]
        if not active and not matching:
            return False
        heard = parse_ad(ad + scan_response if active else ad)
        device = self.devices.get(address.upper())
        now = time.monotonic()
        if device is None:
            device = self._create(address.upper(), heard, rssi, now)
        else:
            device.last_seen = now
            self._update(device, heard, rssi)
        for monitor in matching:
            if monitor.path not in device.found_by:
                device.found_by.add(monitor.path)
                self._spawn(self._call(monitor.client, monitor.path, MONITOR, "DeviceFound", "o", [device.path]))
        return True

    async def flush(self) -> None:
        """Wait until the bus daemon has read every signal sent so far (a round trip to it):
        back-pressure for floods, as dbus-fast takes a full socket buffer for a lost bus."""
        await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId")

    def add_peripheral(self, peripheral: Peripheral) -> Peripheral:
        self.peripherals[peripheral.address.upper()] = peripheral
        return peripheral

    def notify_sessions(self, address: str) -> int:
        """Notify sessions BlueZ holds for the device (stale ones included)."""
        device = self.devices.get(address.upper())
        return sum(len(clients) for clients in device.notify.values()) if device else 0

    # --- D-Bus plumbing -------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, destination: str, path: str, interface: str, member: str, signature: str = "",
                    body: list[Any] | None = None) -> Message | None:  # fmt: skip
        if self._bus is None or not self._bus.connected:
            return None
        with contextlib.suppress(Exception):
            return await self._bus.call(Message(destination=destination, path=path, interface=interface,
                                                member=member, signature=signature, body=body or []))  # fmt: skip
        return None

    async def _add_match(self, rule: str) -> None:
        bus_daemon = "org.freedesktop.DBus"
        await self._call(bus_daemon, "/org/freedesktop/DBus", bus_daemon, "AddMatch", "s", [rule])

    def _signal(self, path: str, interface: str, member: str, signature: str, body: list[Any]) -> None:
        if self._bus is not None and self._bus.connected:
            self.signals += 1
            self._bus.send(Message.new_signal(path, interface, member, signature, body))

    def _changed(self, path: str, interface: str, changed: dict[str, Variant]) -> None:
        if changed:
            self._signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, changed, []])

    def _objects(self) -> dict[str, dict[str, dict[str, Variant]]]:
        adapter: dict[str, dict[str, Variant]] = {ADAPTER: self._adapter_props()}
        if self.experimental:
            adapter[MONITOR_MANAGER] = {
                "SupportedMonitorTypes": Variant("as", ["or_patterns"]),
                "SupportedFeatures": Variant("as", []),
            }
        objects: dict[str, dict[str, dict[str, Variant]]] = {self.adapter_path: adapter}
        for device in self.devices.values():
            objects[device.path] = {DEVICE: device.props}
            objects.update(self._gatt_objects(device) if device.gatt_made else {})
        return objects

    def _adapter_props(self) -> dict[str, Variant]:
        return {
            "Address": Variant("s", "00:1A:7D:DA:71:13"),
            "AddressType": Variant("s", "public"),
            "Name": Variant("s", "care-station"),
            "Alias": Variant("s", "care-station"),
            "Class": Variant("u", 0),
            "Powered": Variant("b", self.powered),
            "Discoverable": Variant("b", False),
            "DiscoverableTimeout": Variant("u", 180),
            "Pairable": Variant("b", False),
            "PairableTimeout": Variant("u", 0),
            "Discovering": Variant("b", bool(self.discovery)),
            "UUIDs": Variant("as", []),
            "Modalias": Variant("s", "usb:v1D6Bp0246d0542"),
            "Roles": Variant("as", ["central", "peripheral"]),
            "ExperimentalFeatures": Variant("as", []),
        }

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type == MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.body[2] == "":
                self._client_left(msg.body[0])
            elif msg.member == "InterfacesAdded" and msg.sender is not None:
                self._monitor_appeared(msg.sender, msg.body[0], msg.body[1])
            return None
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        handler = getattr(self, f"_m_{(msg.interface or '').rsplit('.', 1)[-1]}_{msg.member}", None)
        if handler is None:
            return Message.new_error(msg, UNKNOWN_METHOD, f"{msg.interface}.{msg.member} is not known here")
        result: Message | bool | None = handler(msg)
        return result

    # --- org.freedesktop.DBus.* ------------------------------------------------------------------

    def _m_ObjectManager_GetManagedObjects(self, msg: Message) -> Message:
        if msg.path != "/":
            return Message.new_method_return(msg, "a{oa{sa{sv}}}", [{}])
        return Message.new_method_return(msg, "a{oa{sa{sv}}}", [self._objects()])

    def _m_Introspectable_Introspect(self, msg: Message) -> Message:
        nodes = sorted({p[len(msg.path or "/") :].strip("/").split("/")[0] for p in self._objects()
                        if (msg.path or "/") == "/" or p.startswith(f"{msg.path}/")} - {""})  # fmt: skip
        xml = "<node>" + "".join(f'<node name="{n}"/>' for n in nodes) + "</node>"
        return Message.new_method_return(msg, "s", [xml])

    def _props_of(self, path: str, interface: str) -> dict[str, Variant] | None:
        return self._objects().get(path, {}).get(interface)

    def _m_Properties_GetAll(self, msg: Message) -> Message:
        props = self._props_of(msg.path or "", msg.body[0])
        if props is None:
            return Message.new_error(msg, UNKNOWN_OBJECT, f"no {msg.body[0]} at {msg.path}")
        return Message.new_method_return(msg, "a{sv}", [props])

    def _m_Properties_Get(self, msg: Message) -> Message:
        props = self._props_of(msg.path or "", msg.body[0])
        if props is None or msg.body[1] not in props:
            return Message.new_error(msg, INVALID_ARGUMENTS, f"no property {msg.body[1]}")
        return Message.new_method_return(msg, "v", [props[msg.body[1]]])

    def _m_Properties_Set(self, msg: Message) -> Message:
        interface, name, value = msg.body
        if (msg.path, interface, name) != (self.adapter_path, ADAPTER, "Powered"):
            return Message.new_error(msg, INVALID_ARGUMENTS, f"{name} cannot be set here")
        self._set_powered(bool(value.value))
        return Message.new_method_return(msg)

    def _set_powered(self, on: bool) -> None:
        if on == self.powered:
            return
        self.powered = on
        if not on:
            self.power_cycles += 1
            self.silent_until_power_cycle = False
            was_discovering = bool(self.discovery)
            self.discovery.clear()
            for device in list(self.devices.values()):
                self._link_lost(device)
                self._remove(device)
            changed = {"Powered": Variant("b", False)}
            if was_discovering:
                changed["Discovering"] = Variant("b", False)
            self._changed(self.adapter_path, ADAPTER, changed)
        else:
            self._changed(self.adapter_path, ADAPTER, {"Powered": Variant("b", True)})

    # --- org.bluez.Adapter1 and the monitor manager ---------------------------------------------

    def _m_Adapter1_SetDiscoveryFilter(self, msg: Message) -> Message:
        wanted: dict[str, Variant] = msg.body[0]
        for key, value in wanted.items():
            if FILTER_TYPES.get(key) != value.signature:
                return Message.new_error(msg, INVALID_ARGUMENTS, f"discovery filter {key}: wrong type or key")
        client = msg.sender or ""
        if wanted:
            self.filters[client] = {k: v.value for k, v in wanted.items()}
        else:
            self.filters.pop(client, None)
        if client in self.discovery:
            self.discovery[client] = self.filters.get(client, {})
        return Message.new_method_return(msg)

    def _m_Adapter1_StartDiscovery(self, msg: Message) -> Message:
        if not self.powered:
            return Message.new_error(msg, NOT_READY, "Resource Not Ready")
        client = msg.sender or ""
        first = not self.discovery
        self.discovery[client] = self.filters.get(client, {})
        self.starts += 1
        if first:
            self._changed(self.adapter_path, ADAPTER, {"Discovering": Variant("b", True)})
        return Message.new_method_return(msg)

    def _m_Adapter1_StopDiscovery(self, msg: Message) -> Message:
        if not self.powered:
            return Message.new_error(msg, NOT_READY, "Resource Not Ready")
        if self.discovery.pop(msg.sender or "", None) is None:
            return Message.new_error(msg, FAILED, "No discovery started")
        if not self.discovery:
            self._changed(self.adapter_path, ADAPTER, {"Discovering": Variant("b", False)})
        return Message.new_method_return(msg)

    def _m_Adapter1_RemoveDevice(self, msg: Message) -> Message:
        device = next((d for d in self.devices.values() if d.path == msg.body[0]), None)
        if device is None:
            return Message.new_error(msg, DOES_NOT_EXIST, "Does Not Exist")
        self._link_lost(device)
        self._remove(device)
        return Message.new_method_return(msg)

    def _m_Adapter1_GetDiscoveryFilters(self, msg: Message) -> Message:
        return Message.new_method_return(msg, "as", [list(FILTER_TYPES)])

    def _m_AdvertisementMonitorManager1_RegisterMonitor(self, msg: Message) -> Message:
        if not self.experimental:  # (bluetoothd without --experimental has no such interface)
            return Message.new_error(msg, UNKNOWN_METHOD, "No such interface 'org.bluez.AdvertisementMonitorManager1'")
        client, root = msg.sender or "", msg.body[0]
        self.monitors[(client, root)] = _Monitor(client, root, [])
        self._spawn(self._read_monitors(client, root))
        return Message.new_method_return(msg)

    def _m_AdvertisementMonitorManager1_UnregisterMonitor(self, msg: Message) -> Message:
        self.monitors.pop((msg.sender or "", msg.body[0]), None)
        return Message.new_method_return(msg)

    async def _read_monitors(self, client: str, root: str) -> None:
        """BlueZ asks the application for its monitors (they may be exported only after
        RegisterMonitor returns: InterfacesAdded then brings them, see _monitor_appeared)."""
        rule = f"type='signal',sender='{client}',interface='{OBJECT_MANAGER}',member='InterfacesAdded'"
        await self._add_match(rule)
        reply = await self._call(client, root, OBJECT_MANAGER, "GetManagedObjects")
        if reply is not None and reply.message_type == MessageType.METHOD_RETURN:
            for path, interfaces in reply.body[0].items():
                self._monitor_appeared(client, path, interfaces)

    def _monitor_appeared(self, client: str, path: str, interfaces: dict[str, dict[str, Variant]]) -> None:
        monitor = next((m for (c, root), m in self.monitors.items()
                        if c == client and (path == root or path.startswith(f"{root}/"))), None)  # fmt: skip
        props = interfaces.get(MONITOR)
        if monitor is None or props is None or "Patterns" not in props:
            return
        if props.get("Type", Variant("s", "")).value != "or_patterns":
            return
        monitor.path = path
        monitor.patterns = [(int(o), int(t), bytes(c)) for o, t, c in props["Patterns"].value]
        self._spawn(self._call(client, path, MONITOR, "Activate"))

    def _client_left(self, client: str) -> None:
        """A D-Bus client left the bus: its discovery session, filter, monitors and notify sessions end."""
        self.filters.pop(client, None)
        if self.discovery.pop(client, None) is not None and not self.discovery:
            self._changed(self.adapter_path, ADAPTER, {"Discovering": Variant("b", False)})
        for key in [k for k in self.monitors if k[0] == client]:
            del self.monitors[key]
        for device in self.devices.values():
            for clients in device.notify.values():
                while client in clients:
                    clients.remove(client)

    # --- devices ------------------------------------------------------------------------------

    def _any_filter(self) -> bool:
        return any(self.discovery.values())

    def _duplicate_data(self) -> bool:
        return any(f.get("DuplicateData") for f in self.discovery.values())

    def _create(self, address: str, heard: Heard, rssi: int, now: float) -> _Device:
        path = _object_path(self.adapter, address)
        props: dict[str, Variant] = {
            "Address": Variant("s", address),
            "AddressType": Variant("s", "public"),
            "Alias": Variant("s", heard.name or address.replace(":", "-")),
            "Paired": Variant("b", False),
            "Bonded": Variant("b", False),
            "Trusted": Variant("b", False),
            "Blocked": Variant("b", False),
            "LegacyPairing": Variant("b", False),
            "Connected": Variant("b", False),
            "ServicesResolved": Variant("b", False),
            "Adapter": Variant("o", self.adapter_path),
            "UUIDs": Variant("as", list(dict.fromkeys(heard.uuids + list(heard.service_data)))),
            "RSSI": Variant("n", rssi),
        }
        if heard.name:
            props["Name"] = Variant("s", heard.name)
        if heard.manufacturer:
            props["ManufacturerData"] = Variant("a{qv}", {k: Variant("ay", v) for k, v in heard.manufacturer.items()})
        if heard.service_data:
            props["ServiceData"] = Variant("a{sv}", {k: Variant("ay", v) for k, v in heard.service_data.items()})
        if heard.tx_power is not None:
            props["TxPower"] = Variant("n", heard.tx_power)
        device = _Device(path, address, props, now, rssi)
        self.devices[address] = device
        self.adverts_delivered += 1
        self._signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, {DEVICE: props}])
        return device

    def _update(self, device: _Device, heard: Heard, rssi: int) -> None:
        changed: dict[str, Variant] = {}
        if self._any_filter() or device.rssi is None or abs(rssi - device.rssi) >= RSSI_DELTA_DB:
            device.rssi = rssi
            changed["RSSI"] = Variant("n", rssi)
        duplicates = self._duplicate_data()
        old_mfr = device.props.get("ManufacturerData", Variant("a{qv}", {})).value
        mfr = {**{k: bytes(v.value) for k, v in old_mfr.items()}, **heard.manufacturer}
        if heard.manufacturer and (duplicates or mfr != {k: bytes(v.value) for k, v in old_mfr.items()}):
            changed["ManufacturerData"] = Variant("a{qv}", {k: Variant("ay", v) for k, v in mfr.items()})
        old_svc = device.props.get("ServiceData", Variant("a{sv}", {})).value
        svc = {**{k: bytes(v.value) for k, v in old_svc.items()}, **heard.service_data}
        if heard.service_data and (duplicates or svc != {k: bytes(v.value) for k, v in old_svc.items()}):
            changed["ServiceData"] = Variant("a{sv}", {k: Variant("ay", v) for k, v in svc.items()})
        uuids = list(device.props["UUIDs"].value)
        new = [u for u in heard.uuids + list(heard.service_data) if u not in uuids]
        if new:
            changed["UUIDs"] = Variant("as", uuids + new)
        if heard.name and device.props.get("Name", Variant("s", "")).value != heard.name:
            changed["Name"] = Variant("s", heard.name)
            changed["Alias"] = Variant("s", heard.name)
        if heard.tx_power is not None and device.props.get("TxPower", Variant("n", 999)).value != heard.tx_power:
            changed["TxPower"] = Variant("n", heard.tx_power)
        device.props.update(changed)
        self._changed(device.path, DEVICE, changed)
        self.adverts_delivered += bool(changed)

    def _remove(self, device: _Device) -> None:
        self.devices.pop(device.address, None)
        interfaces = [DEVICE]
        for path, ifaces in self._gatt_objects(device).items() if device.gatt_made else ():
            self._signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, list(ifaces)])
        self._signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [device.path, interfaces])

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.temporary_timeout_s / 4))
            deadline = time.monotonic() - self.temporary_timeout_s
            for device in list(self.devices.values()):
                if device.last_seen < deadline and not device.props["Connected"].value:
                    self._remove(device)

    # --- GATT -----------------------------------------------------------------------------------

    def _gatt_paths(self, device: _Device) -> dict[str, tuple[str, str, int]]:
        """characteristic path -> (service uuid, characteristic uuid, handle)."""
        peripheral = self.peripherals.get(device.address)
        if peripheral is None:
            return {}
        service, measurement, handle = HEALTH_PROFILES[peripheral.profile]
        return {
            f"{device.path}/service0020/char{handle:04x}": (service, measurement, handle),
            f"{device.path}/service002f/char0030": (BATTERY_SERVICE, BATTERY_LEVEL, 0x30),
        }

    def _gatt_objects(self, device: _Device) -> dict[str, dict[str, dict[str, Variant]]]:
        objects: dict[str, dict[str, dict[str, Variant]]] = {}
        for char_path, (service_uuid, char_uuid, _handle) in self._gatt_paths(device).items():
            service_path = char_path.rsplit("/", 1)[0]
            objects[service_path] = {SERVICE: {
                "UUID": Variant("s", service_uuid), "Device": Variant("o", device.path),
                "Primary": Variant("b", True), "Includes": Variant("ao", []),
            }}  # fmt: skip
            indicating = char_uuid != BATTERY_LEVEL
            objects[char_path] = {CHARACTERISTIC: {
                "UUID": Variant("s", char_uuid), "Service": Variant("o", service_path),
                "Value": Variant("ay", b""), "Notifying": Variant("b", bool(device.notify.get(char_path))),
                "Flags": Variant("as", ["indicate"] if indicating else ["read"]), "MTU": Variant("q", 23),
            }}  # fmt: skip
            if indicating:
                objects[f"{char_path}/desc{int(char_path[-4:], 16) + 1:04x}"] = {DESCRIPTOR: {
                    "UUID": Variant("s", CCCD), "Characteristic": Variant("o", char_path),
                    "Value": Variant("ay", b""), "Flags": Variant("as", ["read", "write"]),
                }}  # fmt: skip
        return objects

    def _device_at(self, path: str | None) -> _Device | None:
        return next(
            (d for d in self.devices.values() if path and (path == d.path or path.startswith(f"{d.path}/"))), None
        )

    def _m_Device1_Connect(self, msg: Message) -> Message | bool:
        device = self._device_at(msg.path)
        if device is None:
            return Message.new_error(msg, UNKNOWN_OBJECT, f"no object {msg.path}")
        peripheral = self.peripherals.get(device.address)
        if peripheral is None or not self.powered:
            return Message.new_error(msg, FAILED, "le-connection-abort-by-remote")
        if device.props["Connected"].value:
            return Message.new_error(msg, "org.bluez.Error.AlreadyConnected", "Already Connected")
        peripheral.connections += 1
        outcome = peripheral.outcomes.popleft() if peripheral.outcomes else "ok"
        if outcome == "refused":
            return Message.new_error(msg, FAILED, "le-connection-abort-by-remote")
        if outcome == "abort-then-ok":  # the controller connected, then the host aborted
            self._set_link(device, connected=True)
            self._set_link(device, connected=False)
            return Message.new_error(msg, FAILED, "le-connection-abort-by-local")
        if outcome == "hang":
            device.pending_connect = msg  # answered by Disconnect (bleak's timeout cancels the connect)
            return True
        self._set_link(device, connected=True)
        device.subscribed.clear()
        if not device.gatt_made:
            device.gatt_made = True
            for path, interfaces in self._gatt_objects(device).items():
                self._signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, interfaces])
        resolved = {"ServicesResolved": Variant("b", True)}
        device.props.update(resolved)
        self._changed(device.path, DEVICE, resolved)
        device.session = asyncio.create_task(self._run_session(device, peripheral), name=f"bluez-{device.address}")
        return Message.new_method_return(msg)

    def _set_link(self, device: _Device, connected: bool) -> None:
        changed = {"Connected": Variant("b", connected)}
        if not connected and device.props["ServicesResolved"].value:
            changed["ServicesResolved"] = Variant("b", False)
        device.props.update(changed)
        self._changed(device.path, DEVICE, changed)

    def _link_lost(self, device: _Device) -> None:
        if device.pending_connect is not None:
            assert self._bus is not None
            self._bus.send(Message.new_error(device.pending_connect, FAILED, "Operation cancelled"))
            device.pending_connect = None
        if device.session is not None:
            device.session.cancel()
            device.session = None
        if device.props["Connected"].value:
            self._set_link(device, connected=False)

    def _m_Device1_Disconnect(self, msg: Message) -> Message:
        device = self._device_at(msg.path)
        if device is None:
            return Message.new_error(msg, UNKNOWN_OBJECT, f"no object {msg.path}")
        self._link_lost(device)
        return Message.new_method_return(msg)

    async def _run_session(self, device: _Device, peripheral: Peripheral) -> None:
        """Once a client subscribes to the measurement, send this session's values, then hang up."""
        measurement_path = next(p for p, (_, uuid, _) in self._gatt_paths(device).items() if uuid != BATTERY_LEVEL)
        await device.subscribed.wait()
        values = peripheral.sessions.popleft() if peripheral.sessions else []
        for sent, value in enumerate(values):
            if peripheral.drop_after is not None and sent >= peripheral.drop_after:
                break
            await asyncio.sleep(0.05)
            peripheral.values_sent += 1
            for _client in list(device.notify.get(measurement_path, [])):  # one signal per registered session
                self._changed(measurement_path, CHARACTERISTIC, {"Value": Variant("ay", value)})
        else:
            await asyncio.sleep(0.2)
            if not peripheral.hangs_up:
                await asyncio.Event().wait()  # (until Disconnect cancels the session)
        device.session = None
        self._set_link(device, connected=False)  # the device ends the connection

    def _m_GattCharacteristic1_ReadValue(self, msg: Message) -> Message:
        device = self._device_at(msg.path)
        if device is None or not device.props["Connected"].value:
            return Message.new_error(msg, "org.bluez.Error.NotConnected", "Not Connected")
        peripheral = self.peripherals[device.address]
        if (msg.path or "").endswith("char0030"):
            return Message.new_method_return(msg, "ay", [bytes([peripheral.battery])])
        return Message.new_error(msg, "org.bluez.Error.NotPermitted", "Read not permitted")

    def _m_GattCharacteristic1_StartNotify(self, msg: Message) -> Message:
        device = self._device_at(msg.path)
        if device is None or not device.props["Connected"].value:
            return Message.new_error(msg, "org.bluez.Error.NotConnected", "Not Connected")
        clients = device.notify.setdefault(msg.path or "", [])
        if (msg.sender or "") in clients:
            return Message.new_error(msg, "org.bluez.Error.InProgress", "In Progress")
        clients.append(msg.sender or "")
        device.subscribed.set()
        if len(clients) == 1:
            self._changed(msg.path or "", CHARACTERISTIC, {"Notifying": Variant("b", True)})
        return Message.new_method_return(msg)

    def _m_GattCharacteristic1_StopNotify(self, msg: Message) -> Message:
        device = self._device_at(msg.path)
        clients = device.notify.get(msg.path or "", []) if device else []
        if (msg.sender or "") not in clients:
            return Message.new_error(msg, FAILED, "No notify session started")
        clients.remove(msg.sender or "")
        if not clients:
            self._changed(msg.path or "", CHARACTERISTIC, {"Notifying": Variant("b", False)})
        return Message.new_method_return(msg)


async def main(bus_address: str | None = None) -> None:  # pragma: no cover - a manual aid
    """`python -m simulators.bluez`: a private bus with the stand-in, its address printed,
    until Ctrl-C or SIGTERM (the bus and its folder are removed then)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with PrivateBus() as bus, BlueZStandIn(bus_address or bus.address):
        print(f"export DBUS_SYSTEM_BUS_ADDRESS={bus.address}", flush=True)
        await stop.wait()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
