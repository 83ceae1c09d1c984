"""How many BLE advertisements can the gateway ingest and decode, and what does a normal load cost?

    python bench/ble_adverts.py [--seconds 10] [--strangers 50000]

A real gateway process scans through bleak with the simulated backend (the same `ble_link.py`
path as with BlueZ; the simulated radio's JSON lines stand in for BlueZ's D-Bus messages).
Two runs:
- flood: 200 configured BTHome wristbands in range, the radio sending as fast as the gateway
  takes them; advertisements decoded per second (from the gateway's own counters in its
  status message) and how many were dropped by the bounded queue;
- realistic: 50 wristbands advertising once a second each; the gateway's CPU share;
- strangers: through bleak's real BlueZ backend and simulators/bluez.py, `--strangers`
  random addresses (a flood of random-address advertisers, or a spoofing neighbour) each
  advertising once with BTHome data; the gateway's resident memory before, during and after,
  while a configured wristband must stay heard.
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
from simulators.bluez import BlueZStandIn, PrivateBus
from simulators.broker import Mosquitto
from simulators.harness import GatewayProcess, process_cpu_seconds, process_rss_mb, station_toml
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


def band_age(sink: PlatformSink, at: float) -> float | None:
    """Seconds between the configured wristband's last sighting (the status) and `at`."""
    from datetime import datetime

    seen = ((sink.status or {}).get("ble_devices") or {}).get("band", {}).get("last_seen")
    return None if seen is None else round(at - datetime.fromisoformat(seen).timestamp(), 1)


async def strangers(count: int, rate: float) -> dict[str, Any]:
    """`count` random addresses through bleak's BlueZ backend; RSS of the gateway as they come."""
    import random

    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        folder = Path(tmp)
        config = folder / "station.toml"
        band = w.WRISTBAND
        config.write_text(
            station_toml(
                station_id=STATION,
                broker_port=broker.port,
                db_path=folder / "o.db",
                receiver_ports={},
                status_interval_s=1.0,
                extra_devices=f'\n[ble]\nadapter = "hci0"\n\n[[devices]]\nid = "band"\nkind = "ble_wristband"\n'
                f'address = "{band}"\n',
            )
        )
        sink = PlatformSink(broker.host, broker.port, STATION)
        async with PrivateBus() as bus, BlueZStandIn(bus.address) as bluez, asyncio.TaskGroup() as tasks:
            sink_task = tasks.create_task(sink.run())
            await asyncio.wait_for(sink.subscribed.wait(), 10)
            gateway = GatewayProcess(config, env=bus.env())
            await gateway.start()
            assert gateway.proc is not None
            while not bluez.discovery:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2)
            rss = {"before": round(process_rss_mb(gateway.proc.pid), 1)}
            before = await ble_stats(sink, time.monotonic())
            t0 = time.monotonic()
            data = w.bthome_service_data(packet_id=1, battery=50, presence=True)
            for n in range(count):
                stranger = ":".join(f"{rng.randrange(256):02X}" for _ in range(6))
                bluez.advertise(stranger, svc={w.BTHOME_UUID: data})
                if n % 50 == 0:  # at `rate`, and never faster than the bus daemon reads them
                    await bluez.flush()
                    await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
                if n % 500 == 0:
                    w.wristband_beat(bluez, (n // 500) % 256, moving=False)
                if n and n % (count // 5) == 0:
                    rss[f"after_{n}"] = round(process_rss_mb(gateway.proc.pid), 1)
            flood_s, flood_end = time.monotonic() - t0, time.time()
            await asyncio.sleep(3)
            rss[f"after_{count}"] = round(process_rss_mb(gateway.proc.pid), 1)
            after = await ble_stats(sink, time.monotonic())
            result = {
                "addresses": count,
                "seconds": round(flood_s, 1),
                "offered_per_s": round(count / flood_s),
                "gateway_rss_mb": rss,
                "rss_growth_mb": round(rss[f"after_{count}"] - rss["before"], 1),
                "advertisements_counted": after.get("advertisements", 0) - before.get("advertisements", 0),
                "configured_band_last_seen_s_before_the_end": band_age(sink, flood_end),
                "bluez_devices_at_end": len(bluez.devices),
            }
            await gateway.stop()
            sink_task.cancel()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--strangers", type=int, default=50_000, help="random addresses for the flood (0: skip)")
    parser.add_argument("--rate", type=float, default=1000.0, help="new random addresses per second in the flood")
    parser.add_argument("--only-strangers", action="store_true", help="only the random-address flood")
    args = parser.parse_args()
    result = {} if args.only_strangers else asyncio.run(run(args.seconds))
    if args.strangers:
        result.setdefault("command", "python bench/ble_adverts.py " + " ".join(sys.argv[1:]))
        result["random_address_flood_bluez"] = asyncio.run(strangers(args.strangers, args.rate))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
