"""A simulated Bluetooth radio for bleak: `backend=` classes that talk to a simulator process.

The gateway's real `ble_link.py` runs unchanged: the station file's
`[ble] adapter = "simulated:/run/care-gateway/ble.sock"` makes it pass these classes as
bleak's `backend=` (bleak 3.x, `BaseBleakScanner` / `BaseBleakClient`), and bleak's own
`BleakScanner` and `BleakClient` then drive them. The other end of the socket is
`python -m simulators wearables`, which plays the devices.

Wire protocol, one JSON object per line:
  scanner -> radio  {"op": "scan"} then {"op": "reset"} to power-cycle the radio
  radio -> scanner  {"ev": "adv", "address", "name", "rssi", "mfr": {id: hex}, "svc": {uuid: hex}}
  client  -> radio  {"op": "connect", "address"} / {"op": "read", "handle"} / {"op": "notify", "handle"}
                    / {"op": "disconnect"}
  radio -> client   {"ev": "connected", "services": [{"uuid", "chars": [{"uuid", "handle", "props"}]}]}
                    / {"ev": "value", "handle", "value"} / {"ev": "notify", "handle", "value"}
                    / {"ev": "disconnected"} / {"ev": "error", "reason"}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError

CONNECT_TIMEOUT_S = 5.0
LINE_LIMIT = 1 << 20


async def _open(socket_path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(socket_path, limit=LINE_LIMIT)
    except OSError as exc:
        raise BleakError(f"simulated radio at {socket_path} is not reachable: {exc}") from exc


def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")


class SimulatedScanner(BaseBleakScanner):
    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        *,
        socket_path: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self.socket_path = socket_path
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        self.seen_devices = {}
        reader, self._writer = await _open(self.socket_path)
        _send(self._writer, {"op": "scan"})
        self._task = asyncio.create_task(self._pump(reader), name="simulated-scan")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer:
            self._writer.close()

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            message = json.loads(line)
            if message.get("ev") != "adv":
                continue
            adv = AdvertisementData(
                local_name=message.get("name"),
                manufacturer_data={int(k): bytes.fromhex(v) for k, v in message.get("mfr", {}).items()},
                service_data={k: bytes.fromhex(v) for k, v in message.get("svc", {}).items()},
                service_uuids=list(message.get("uuids", [])),
                tx_power=None,
                rssi=int(message.get("rssi", -60)),
                platform_data=(),
            )
            if self.is_allowed_uuid(adv.service_uuids):
                address = message["address"]
                device = self.create_or_update_device(address, address, adv.local_name, None, adv)
                self.call_detection_callbacks(device, adv)


async def reset_radio(socket_path: str) -> None:
    """Power-cycle the simulated radio (what `bluetoothctl power off/on` does to a real one)."""
    reader, writer = await _open(socket_path)
    try:
        _send(writer, {"op": "reset"})
        await writer.drain()
        await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT_S)
    finally:
        writer.close()


class SimulatedClient(BaseBleakClient):
    def __init__(self, address_or_ble_device: BLEDevice | str, *, socket_path: str, **kwargs: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.get("disconnected_callback"),
            timeout=float(kwargs.get("timeout", CONNECT_TIMEOUT_S)),
        )
        self.socket_path = socket_path
        self._connected = False
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._notify: dict[int, NotifyCallback] = {}

    @property
    def mtu_size(self) -> int:
        return 247

    @property
    def name(self) -> str:
        return self.address

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        reader, self._writer = await _open(self.socket_path)
        _send(self._writer, {"op": "connect", "address": self.address})
        try:
            reply = json.loads(await asyncio.wait_for(reader.readline(), self._timeout) or b"{}")
        except TimeoutError as exc:
            self._writer.close()
            raise BleakError(f"{self.address}: connection timed out") from exc
        if reply.get("ev") != "connected":
            self._writer.close()
            raise BleakError(f"{self.address}: {reply.get('reason', 'connection refused')}")
        self.services = self._services(reply["services"])
        self._connected = True
        self._task = asyncio.create_task(self._pump(reader), name=f"simulated-gatt-{self.address}")

    def _services(self, described: list[dict[str, Any]]) -> BleakGATTServiceCollection:
        collection = BleakGATTServiceCollection()
        for index, service_desc in enumerate(described):
            service = BleakGATTService(None, 0x1000 * (index + 1), service_desc["uuid"])
            collection.add_service(service)
            for char in service_desc["chars"]:
                collection.add_characteristic(
                    BleakGATTCharacteristic(None, char["handle"], char["uuid"], char["props"], lambda: 20, service)
                )
        return collection

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                event, handle = message.get("ev"), message.get("handle", -1)
                if event == "value" and handle in self._pending:
                    self._pending.pop(handle).set_result(bytes.fromhex(message["value"]))
                elif event == "notify" and handle in self._notify:
                    self._notify[handle](bytearray.fromhex(message["value"]))
                elif event == "disconnected":
                    break
        finally:
            self._lost()

    def _lost(self) -> None:
        if not self._connected:
            return
        self._connected = False
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BleakError(f"{self.address}: disconnected"))
        if self._disconnected_callback:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        if self._writer and self._connected:
            with contextlib.suppress(OSError):
                _send(self._writer, {"op": "disconnect"})
                await self._writer.drain()
        self._connected = False
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer:
            self._writer.close()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def unpair(self) -> None:
        return None

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        if not self._connected or self._writer is None:
            raise BleakError("not connected")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[characteristic.handle] = future
        _send(self._writer, {"op": "read", "handle": characteristic.handle})
        return bytearray(await asyncio.wait_for(future, self._timeout))

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, **kwargs: Any) -> bytearray:
        raise BleakError("descriptors are not simulated")

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: Any, response: bool) -> None:
        raise BleakError("writes are not simulated")

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        raise BleakError("descriptors are not simulated")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        if not self._connected or self._writer is None:
            raise BleakError("not connected")
        self._notify[characteristic.handle] = callback
        _send(self._writer, {"op": "notify", "handle": characteristic.handle})

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        self._notify.pop(characteristic.handle, None)
