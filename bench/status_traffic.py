"""What the status costs the platform's broker, per station and for a fleet.

    python bench/status_traffic.py [--seconds 60] [--alarms 3] [--fleet 10000]

A real gateway (child process) with a receiver and two radars' worth of devices in the
station file runs against mosquitto with `status_interval_s = 1` for `--seconds`, while
`--alarms` SOS presses arrive and are acknowledged and resolved by the platform. Measured at
the platform: every full (retained) status and every heartbeat, their sizes on the wire
(payload + topic + MQTT header), and how many full statuses each alarm caused. Extrapolated
to the default `status_interval_s = 60` and a day with `--alarms-per-day` alarms and
`--reconnects-per-day` reconnections per station, then to `--fleet` stations; the previous
design (the full status every interval) is computed from the same full-status size.
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

from simulators.broker import Mosquitto
from simulators.button_receiver import ButtonReceiverSim, surgard_report
from simulators.harness import GatewayProcess, station_toml
from simulators.platform import PlatformSink

STATION = "bench-status"
DAY_S = 86_400
DEVICES = """
[[residents]]
id = "wang"
name = "王秀英"
lives_alone = true

[[residents]]
id = "li"
name = "李桂兰"
"""


async def run(seconds: float, alarms: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        folder = Path(tmp)
        receiver = ButtonReceiverSim()
        config = folder / "station.toml"
        config.write_text(
            station_toml(
                station_id=STATION,
                broker_port=broker.port,
                db_path=folder / "o.db",
                receiver_ports={"button-rx-1": receiver.path},
                status_interval_s=1.0,
                receiver_extra='residents = { "1" = "wang", "2" = "li" }',
                extra_devices=DEVICES,
            )
        )
        sink = PlatformSink(broker.host, broker.port, STATION)
        async with asyncio.TaskGroup() as tasks:
            sink_task = tasks.create_task(sink.run())
            await asyncio.wait_for(sink.subscribed.wait(), 10)
            gateway = GatewayProcess(config)
            await gateway.start()
            await gateway.wait_for_line("device button-rx-1 online", 15)
            await asyncio.sleep(3)  # (past the start: the connect's full status, the receiver coming online)
            fulls0, beats0, t0 = len(sink.status_bytes), len(sink.heartbeat_bytes), time.monotonic()
            per_alarm = []
            for n in range(alarms):
                before = len(sink.status_bytes)
                await receiver.send(surgard_report(code=101, zone=1 + n % 2))
                while not any(s.get("alarms_open") for s in sink.status_history[before:]):
                    await asyncio.sleep(0.1)
                alarm_id = next(s for s in sink.status_history[before:] if s.get("alarms_open"))["alarms_open"][0][
                    "alarm_id"
                ]
                await asyncio.sleep(2)
                await sink.command("ack", {"id": f"a-{n}", "alarm_id": alarm_id, "by": "duty-nurse"})
                await asyncio.sleep(2)
                await sink.command("resolve", {"id": f"r-{n}", "alarm_id": alarm_id, "by": "duty-nurse"})
                await asyncio.sleep(2)
                await receiver.send(surgard_report(qualifier="R", code=101, zone=1 + n % 2))
                await asyncio.sleep(2)
                per_alarm.append(len(sink.status_bytes) - before)
            while time.monotonic() - t0 < seconds:
                await asyncio.sleep(0.5)
            elapsed = time.monotonic() - t0
            fulls = sink.status_bytes[fulls0:]
            beats = sink.heartbeat_bytes[beats0:]
            await gateway.stop()
            sink_task.cancel()
            receiver.close()
    return {
        "seconds": round(elapsed, 1),
        "full_statuses": len(fulls),
        "full_status_bytes_median": sorted(fulls)[len(fulls) // 2] if fulls else None,
        "full_statuses_per_alarm": per_alarm,
        "heartbeats": len(beats),
        "heartbeat_bytes_max": max(beats) if beats else None,
        "quiet_full_statuses": len(fulls) - sum(per_alarm),
    }


def extrapolate(measured: dict[str, Any], alarms_per_day: float, reconnects_per_day: float, fleet: int,
                interval_s: float) -> dict[str, Any]:  # fmt: skip
    full = measured["full_status_bytes_median"]
    per_alarm = max(measured["full_statuses_per_alarm"] or [0])
    fulls_per_day = alarms_per_day * per_alarm + reconnects_per_day
    beats_per_day = DAY_S / interval_s
    station_bytes = fulls_per_day * full + beats_per_day * measured["heartbeat_bytes_max"]
    before = DAY_S / interval_s * full
    return {
        "assumed": {
            "status_interval_s": interval_s,
            "alarms_per_day": alarms_per_day,
            "reconnects_per_day": reconnects_per_day,
            "stations": fleet,
        },
        "per_station_bytes_per_day": round(station_bytes),
        "per_station_full_statuses_per_day": fulls_per_day,
        "fleet_gb_per_day": round(station_bytes * fleet / 1e9, 2),
        "fleet_retained_writes_per_s": round(fulls_per_day * fleet / DAY_S, 2),
        "fleet_heartbeats_per_s": round(beats_per_day * fleet / DAY_S, 1),
        "before_full_status_every_interval": {
            "per_station_bytes_per_day": round(before),
            "fleet_gb_per_day": round(before * fleet / 1e9, 2),
            "fleet_retained_writes_per_s": round(DAY_S / interval_s * fleet / DAY_S, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--alarms", type=int, default=3)
    parser.add_argument("--alarms-per-day", type=float, default=5.0)
    parser.add_argument("--reconnects-per-day", type=float, default=10.0)
    parser.add_argument("--fleet", type=int, default=10_000)
    args = parser.parse_args()
    measured = asyncio.run(run(args.seconds, args.alarms))
    result = {
        "command": "python bench/status_traffic.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "measured": measured,
        "fleet": extrapolate(measured, args.alarms_per_day, args.reconnects_per_day, args.fleet, 60.0),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
