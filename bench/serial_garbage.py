"""How much garbage can one serial device throw before the other devices' alarms suffer?

    python bench/serial_garbage.py [--presses 30]

A real gateway process serves a Sur-Gard button receiver and a "53 59" radar, each on a pty.
A thread pours random bytes into the radar's port at increasing rates while the receiver
simulator sends SOS reports; for each rate we measure press -> ACK latency (parse, commit,
ACK: the gateway's own work) and press -> platform. The answer is the highest rate at which
the alarm's p99 ACK latency stays within 50 ms of the quiet baseline.

Also: CPU seconds per 1,000 valid frames, for each codec in-process (decode only) and for the
gateway process end to end (radar movement frames through the pty, codec and rules), from
/proc/PID/stat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from drivers.contact_id import SurGardCodec
from drivers.nmea import NmeaCodec
from drivers.seeed_radar import SeeedFda2Codec, SeeedRadarCodec
from simulators import radar as radar_sim
from simulators.broker import Mosquitto
from simulators.button_receiver import ButtonReceiverSim, surgard_report
from simulators.gps import gga, rmc
from simulators.harness import GatewayProcess, process_cpu_seconds, station_toml
from simulators.platform import PlatformSink

STATION = "bench-serial"
RATES = [0, 100_000, 1_000_000, 4_000_000, 16_000_000, 64_000_000]  # bytes/s of garbage
ALLOWED_DELAY_MS = 50.0
CHUNK = 65536


def pct(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": round(q[49], 2), "p99": round(q[98], 2), "max": round(ordered[-1], 2)}


class Babbler(threading.Thread):
    """Writes random bytes into a pty master at `rate` bytes/s (0 = quiet); records what it managed."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.rate = 0
        self.sent = 0
        self.stop = threading.Event()
        self._noise = random.Random(5).randbytes(CHUNK)

    def run(self) -> None:
        os.set_blocking(self.fd, False)
        started, sent, pacing = time.monotonic(), 0, self.rate
        while not self.stop.is_set():
            if self.rate != pacing:  # a new rate: pace from now on
                started, sent, pacing = time.monotonic(), 0, self.rate
            if self.rate == 0:
                started, sent = time.monotonic(), 0
                time.sleep(0.01)
                continue
            due = (time.monotonic() - started) * self.rate - sent
            if due < CHUNK:
                time.sleep(min(0.01, (CHUNK - due) / self.rate))
                continue
            try:
                n = os.write(self.fd, self._noise)
            except BlockingIOError:
                time.sleep(0.001)  # the gateway is not reading as fast as we write
                continue
            except OSError:
                return
            sent += n
            self.sent += n


def codec_cpu_per_1000() -> dict[str, float]:
    samples = {
        "contact_id_surgard": (SurGardCodec, surgard_report(code=101, zone=1)),
        "seeed_53_59": (SeeedRadarCodec, radar_sim.sy_movement(30)),
        "seeed_mr60fda2": (SeeedFda2Codec, radar_sim.fda2_presence(True)),
        "nmea": (NmeaCodec, rmc(43.9, 116.1) + gga(43.9, 116.1)),
    }
    out = {}
    for name, (codec_class, frame) in samples.items():
        codec = codec_class()
        stream = frame * 1000
        start = time.process_time()
        for _ in range(20):
            codec.feed(stream)
        per_frame = (time.process_time() - start) / 20_000
        frames = 2 if name == "nmea" else 1
        out[name] = round(per_frame * 1000 / frames * 1000, 3)  # ms of CPU per 1000 frames
    return out


async def measure(
    sim: ButtonReceiverSim, sink: PlatformSink, presses: int, first: int
) -> tuple[list[float], list[float]]:
    acks, platform_ms = [], []
    for key in range(first, first + presses):
        sent = time.perf_counter()
        delivery = await sim.send(surgard_report(account=str(1000 + key // 1000), code=101, zone=key % 1000))
        if delivery.acked and delivery.ack_latency_s is not None:
            acks.append(delivery.ack_latency_s * 1000)
        await asyncio.sleep(0.02)
        wanted = (str(1000 + key // 1000), key % 1000)
        for _ in range(200):
            hit = [
                e
                for e in sink.events.values()
                if e["kind"] == "sos" and (e["data"]["account"], e["data"]["zone"]) == wanted
            ]
            if hit:
                platform_ms.append((sink.arrived_at[hit[0]["id"]] - sent) * 1000)
                break
            await asyncio.sleep(0.005)
    return acks, platform_ms


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presses", type=int, default=30)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "command": "python bench/serial_garbage.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "codec_cpu_ms_per_1000_frames": codec_cpu_per_1000(),
    }
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        folder = Path(tmp)
        button = ButtonReceiverSim()
        noisy = radar_sim.RadarSim("mr60fda1")
        quiet = radar_sim.RadarSim("mr60fda1")
        quiet.start()
        devices = "".join(
            f'\n[[devices]]\nid = "{name}"\nkind = "mmwave_radar"\nmodel = "mr60fda1"\nport = "{sim.path}"\n'
            for name, sim in (("noisy", noisy), ("quiet", quiet))
        )
        config = folder / "station.toml"
        config.write_text(
            station_toml(
                station_id=STATION,
                broker_port=broker.port,
                db_path=folder / "o.db",
                receiver_ports={"rx": button.path},
                extra_devices=devices,
            )
        )
        sink = PlatformSink(broker.host, broker.port, STATION)
        async with asyncio.TaskGroup() as tasks:
            sink_task = tasks.create_task(sink.run())
            await asyncio.wait_for(sink.subscribed.wait(), 10)
            gateway = GatewayProcess(config)
            await gateway.start()
            assert gateway.proc is not None
            await gateway.wait_for_line("device rx online")
            await asyncio.sleep(1)

            # end-to-end CPU per 1000 valid radar frames (movement: decoded, folded into summaries)
            frames = 20_000
            before = process_cpu_seconds(gateway.proc.pid)
            for _ in range(frames // 500):
                quiet.write(radar_sim.sy_movement(30) * 500)
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)
            idle_cpu = process_cpu_seconds(gateway.proc.pid)
            await asyncio.sleep(1.0)
            idle_per_s = process_cpu_seconds(gateway.proc.pid) - idle_cpu
            result["gateway_cpu_ms_per_1000_radar_frames"] = round(
                (idle_cpu - before - idle_per_s) / frames * 1000 * 1000, 3
            )

            babbler = Babbler(noisy._master)
            babbler.start()
            rows, baseline_p99, tolerated = [], None, 0
            for n, rate in enumerate(RATES):
                babbler.rate = rate
                await asyncio.sleep(1.0)  # let the flood settle
                sent_before, cpu_before, t0 = babbler.sent, process_cpu_seconds(gateway.proc.pid), time.monotonic()
                acks, plat = await measure(button, sink, args.presses, 1000 * (n + 1))
                elapsed = time.monotonic() - t0
                achieved = (babbler.sent - sent_before) / elapsed
                row = {
                    "garbage_bytes_per_s_offered": rate,
                    "garbage_bytes_per_s_achieved": round(achieved),
                    "gateway_cpu_percent": round((process_cpu_seconds(gateway.proc.pid) - cpu_before) / elapsed * 100),
                    "sos_ack_ms": pct(acks),
                    "sos_to_platform_ms": pct(plat),
                    "acked": f"{len(acks)}/{args.presses}",
                }
                rows.append(row)
                p99 = row["sos_ack_ms"]["p99"]
                if baseline_p99 is None:
                    baseline_p99 = p99
                elif p99 - baseline_p99 <= ALLOWED_DELAY_MS and len(acks) == args.presses:
                    tolerated = max(tolerated, round(achieved))
            babbler.stop.set()
            result["by_rate"] = rows
            result["highest_garbage_rate_with_alarm_delay_within_50ms"] = tolerated
            stats = await gateway_status(sink)
            result["noisy_device_bytes_rejected"] = stats.get("noisy", {}).get("bytes_rejected")
            await gateway.stop()
            sink_task.cancel()
        button.close()
        noisy.close()
        quiet.close()
    print(json.dumps(result, indent=2))


async def gateway_status(sink: PlatformSink) -> dict[str, Any]:
    for _ in range(100):
        if sink.status:
            return dict(sink.status.get("devices", {}))
        await asyncio.sleep(0.1)
    return {}


if __name__ == "__main__":
    asyncio.run(main())
