"""Latency of one emergency press through a real station, and draining after an outage.

    python bench/press_to_platform.py [--presses 200] [--outage-presses 300]

Runs mosquitto, the platform sink, the Sur-Gard receiver simulator and the gateway (a child
process) on this machine, then prints one JSON object:
- ack_ms: press written to the pty -> receiver sees the ACK (includes the fsynced commit);
- platform_ms: press written -> the platform sink has the event (link up, idle station);
- outage: presses acknowledged while the uplink was cut, and the time from restoring the link
  to the last of them reaching the platform.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from simulators.broker import Mosquitto
from simulators.button_receiver import ButtonReceiverSim, surgard_report
from simulators.harness import GatewayProcess, station_toml
from simulators.link import LinkProxy
from simulators.platform import PlatformSink

STATION = "bench-station"


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": round(q[49], 2), "p99": round(q[98], 2), "max": round(ordered[-1], 2), "n": len(ordered)}


async def bench(presses: int, outage_presses: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        folder = Path(tmp)
        sink = PlatformSink(broker.host, broker.port, STATION)
        sim = ButtonReceiverSim()
        async with LinkProxy(broker.host, broker.port) as link, asyncio.TaskGroup() as tasks:
            sink_task = tasks.create_task(sink.run())
            await asyncio.wait_for(sink.subscribed.wait(), 10)
            config = folder / "station.toml"
            config.write_text(
                station_toml(
                    station_id=STATION, broker_port=link.port, db_path=folder / "o.db", receiver_ports={"rx": sim.path}
                )
            )
            gateway = GatewayProcess(config)
            await gateway.start()
            assert await gateway.wait_for_line("device rx online")
            assert await gateway.wait_for_line("uplink up")

            sent_at: dict[int, float] = {}
            ack_ms: list[float] = []
            for zone in range(presses):
                sent_at[zone] = time.monotonic()
                delivery = await sim.send(surgard_report(code=101, zone=zone))
                assert delivery.acked
                assert delivery.ack_latency_s is not None
                ack_ms.append(delivery.ack_latency_s * 1000)
                await sink.wait_for(0, 0)  # let the sink run
                await asyncio.sleep(0.005)
            await sink.wait_for(presses + 2, 30)
            platform_ms = [
                (sink.arrived_at[eid] - sent_at[e["data"]["zone"]]) * 1000
                for eid, e in sink.events.items()
                if e["kind"] == "sos"
            ]

            link.cut()
            outage_start = len(sink.events)
            for zone in range(presses, presses + outage_presses):
                assert (await sim.send(surgard_report(code=101, zone=zone))).acked
            restored = time.monotonic()
            link.restore()
            assert await sink.wait_for(outage_start + outage_presses, 60)
            drained_s = max(sink.arrived_at.values()) - restored
            await gateway.stop()
            sink_task.cancel()
        sim.close()
    return {
        "command": "python bench/press_to_platform.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "ack_ms": percentiles(ack_ms),
        "platform_ms": percentiles(platform_ms),
        "outage": {
            "presses_acked_while_cut": outage_presses,
            "drain_s_after_restore": round(drained_s, 3),
            "note": "includes the reconnect wait (0.5-2 s while an alarm waits) and a connect attempt while still cut",
        },
        "duplicates_at_platform": sink.duplicates,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presses", type=int, default=200)
    parser.add_argument("--outage-presses", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args.presses, args.outage_presses)), indent=2))


if __name__ == "__main__":
    main()
