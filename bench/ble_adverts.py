"""How many BLE advertisements can the gateway ingest and decode, and what does a normal load cost?

    python bench/ble_adverts.py [--seconds 10]

A real gateway process scans through bleak with the simulated backend (the same `ble_link.py`
path as with BlueZ; the simulated radio's JSON lines stand in for BlueZ's D-Bus messages).
Two runs:
- flood: 200 configured BTHome wristbands in range, the radio sending as fast as the gateway
  takes them; advertisements decoded per second (from the gateway's own counters in its
  status message) and how many were dropped by the bounded queue;
- realistic: 50 wristbands advertising once a second each; the gateway's CPU share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulators import wearables as w
from simulators.broker import Mosquitto
from simulators.harness import GatewayProcess, process_cpu_seconds, station_toml
from simulators.platform import PlatformSink

STATION = "bench-ble"


def address(n: int) -> str:
    return f"C0:FF:EE:00:{n >> 8:02X}:{n & 0xFF:02X}"


async def ble_stats(sink: PlatformSink, after: float) -> dict[str, Any]:
    """The gateway's BLE counters from a status message published after `after`."""
    sink.status = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sink.status and "ble" in sink.status:
            return dict(sink.status["ble"])
        await asyncio.sleep(0.05)
    return {}


async def run(seconds: float) -> dict[str, Any]:
    result: dict[str, Any] = {
        "command": "python bench/ble_adverts.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        folder = Path(tmp)
        socket = folder / "ble.sock"
        devices = "".join(
            f'\n[[devices]]\nid = "band-{n}"\nkind = "ble_wristband"\naddress = "{address(n)}"\n' for n in range(200)
        )
        config = folder / "station.toml"
        config.write_text(
            station_toml(
                station_id=STATION,
                broker_port=broker.port,
                db_path=folder / "o.db",
                receiver_ports={},
                status_interval_s=1.0,
                extra_devices=f'\n[ble]\nadapter = "simulated:{socket}"\n' + devices,
            )
        )
        sink = PlatformSink(broker.host, broker.port, STATION)
        async with w.SimulatedRadio(socket) as radio, asyncio.TaskGroup() as tasks:
            sink_task = tasks.create_task(sink.run())
            await asyncio.wait_for(sink.subscribed.wait(), 10)
            gateway = GatewayProcess(config)
            await gateway.start()
            assert gateway.proc is not None
            while radio.scans < 1:
                await asyncio.sleep(0.05)
            payloads = [w.bthome_service_data(packet_id=p, battery=70, moving=p % 2 == 0) for p in range(256)]

            # flood: 200 devices, as fast as the socket takes them
            before = await ble_stats(sink, time.monotonic())
            cpu0, t0, sent = process_cpu_seconds(gateway.proc.pid), time.monotonic(), 0
            while time.monotonic() - t0 < seconds:
                for n in range(200):
                    radio.advertise(address(n), svc={w.BTHOME_UUID: payloads[sent % 256]})
                    sent += 1
                await asyncio.sleep(0)  # let the socket drain
                await asyncio.sleep(0.001)
            flood_s = time.monotonic() - t0
            flood_cpu = process_cpu_seconds(gateway.proc.pid) - cpu0
            await asyncio.sleep(2)
            after = await ble_stats(sink, time.monotonic())
            decoded = after.get("decoded", 0) - before.get("decoded", 0)
            result["flood_200_devices"] = {
                "advertisements_sent": sent,
                "seconds": round(flood_s, 1),
                "offered_per_s": round(sent / flood_s),
                "decoded": decoded,
                "decoded_per_s": round(decoded / (flood_s + 2)),
                "dropped_by_queue": after.get("dropped", 0) - before.get("dropped", 0),
                "gateway_cpu_percent": round(flood_cpu / flood_s * 100),
            }

            # realistic: 50 wristbands, one advertisement per second each
            await asyncio.sleep(1)
            cpu0, t0, sent = process_cpu_seconds(gateway.proc.pid), time.monotonic(), 0
            while time.monotonic() - t0 < seconds:
                for n in range(50):
                    radio.advertise(address(n), svc={w.BTHOME_UUID: payloads[sent % 256]})
                    sent += 1
                    await asyncio.sleep(1 / 50)
            elapsed = time.monotonic() - t0
            result["realistic_50_devices_1hz"] = {
                "advertisements_per_s": round(sent / elapsed),
                "gateway_cpu_percent": round((process_cpu_seconds(gateway.proc.pid) - cpu0) / elapsed * 100, 1),
                "note": "includes the gateway's idle work (status, uplink, rules ticks)",
            }
            await gateway.stop()
            sink_task.cancel()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds)), indent=2))


if __name__ == "__main__":
    main()
