"""Store-and-forward benchmark: ingest, drain of a big backlog, alarm latency, bytes, baseline.

    python bench/store_and_forward.py [--rows 1000000] [--rounds 1] [--out result.json]

Prints one JSON object (and writes it to --out if given). Everything runs on this machine:
a real mosquitto on loopback, the gateway as a child process (its peak RSS read from
/proc/PID/status VmHWM), the Sur-Gard receiver simulator on a pty for alarm latencies, and a
light platform subscriber that counts distinct event ids.

Sections:
- ingest: events/s committed by the outbox while the uplink is down, from 256 concurrent
  producers appending one event at a time, and from producers appending 10 decoded events
  per call (as a serial read or a BLE scan burst delivers them), the median of 5 runs each;
  p50/p99 of an alarm's commit latency, idle and during that ingest;
- disk: bytes on disk per buffered telemetry event (database + WAL after a checkpoint);
- drain: events/s from a backlog of --rows telemetry events to the platform (broadband
  profile), and the gateway's peak RSS meanwhile;
- alarm latency: SOS written by the receiver simulator -> event at the platform, p50/p99,
  while the backlog drains and when idle;
- wire: bytes on the wire (MQTT payload + topic + fixed overhead) per telemetry event for
  each link profile;
- baseline: the naive design (one transaction per event; one QoS 1 publish awaited per
  event), measured on fewer rows, and our figures as a ratio of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.clock import Clock
from gateway.config import LINK_PROFILES, StorageSection
from gateway.events import Event, EventKind, Priority, new_event
from gateway.outbox import Outbox
from gateway.uplink import MQTT_OVERHEAD_BYTES, Topics, batch_limit, encode_batch, fit_batch
from simulators.broker import Mosquitto
from simulators.button_receiver import ButtonReceiverSim, surgard_report
from simulators.harness import GatewayProcess, station_toml

STATION = "bench-station"
SEED_CHUNK = 1000
INGEST_EVENTS = 200_000
INGEST_RUNS = 5
PRODUCERS = 256
BURST = 10
BASELINE_ROWS = 5000
ALARM_PROBES = 50
ALARM_PROBE_INTERVAL_S = 0.1  # 10 alarms/s during ingest: far above a real station, enough samples
ID_RE = re.compile(rb'"id":"([0-9A-HJKMNP-TV-Z]{26})"')


def pct(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"p50": round(q[49], 2), "p99": round(q[98], 2), "max": round(ordered[-1], 2), "n": len(ordered)}


def reading(clock: Clock, n: int) -> Event:
    """A typical telemetry event: a radar's presence/movement reading."""
    return new_event(
        clock,
        STATION,
        f"radar-{n % 8}",
        EventKind.ACTIVITY,
        {"presence": True, "motion": ("moving", "stationary")[n % 2], "room": "bedroom", "change": True},
    )


async def bench_ingest(folder: Path) -> dict[str, Any]:
    clock = Clock()
    out: dict[str, Any] = {}
    async with Outbox(StorageSection(path=folder / "ingest.db", max_bytes=4 << 30), STATION) as outbox:
        idle = []
        for zone in range(ALARM_PROBES):
            start = time.perf_counter()
            await outbox.append(new_event(clock, STATION, "rx", EventKind.SOS, {"zone": zone}))
            idle.append((time.perf_counter() - start) * 1000)
        out["alarm_commit_ms_idle"] = pct(idle)

        for label, burst in (("single", 1), ("burst_of_10", BURST)):
            rates: list[int] = []
            during: list[float] = []
            commits = outbox.commits
            for _ in range(INGEST_RUNS):  # this machine is noisy: report the median of a few runs
                done = asyncio.Event()

                async def producer(k: int, burst: int = burst) -> None:
                    for n in range(k * burst, INGEST_EVENTS, PRODUCERS * burst):
                        await outbox.append(*(reading(clock, m) for m in range(n, min(n + burst, INGEST_EVENTS))))

                async def alarm_prober(during: list[float] = during, done: asyncio.Event = done) -> None:
                    while not done.is_set():
                        start = time.perf_counter()
                        await outbox.append(new_event(clock, STATION, "rx", EventKind.SOS, {"zone": 1}))
                        during.append((time.perf_counter() - start) * 1000)
                        await asyncio.sleep(ALARM_PROBE_INTERVAL_S)

                prober = asyncio.create_task(alarm_prober())
                start = time.perf_counter()
                await asyncio.gather(*(producer(k) for k in range(PRODUCERS)))
                rates.append(round(INGEST_EVENTS / (time.perf_counter() - start)))
                done.set()
                await prober
            out[f"ingest_{label}"] = {
                "events_per_s": round(statistics.median(rates)),
                "runs_events_per_s": rates,
                "events_per_run": INGEST_EVENTS,
                "group_commits": outbox.commits - commits,
                "alarm_commit_ms_during": pct(during),
            }
        prebuilt = [reading(clock, n) for n in range(INGEST_EVENTS)]

        async def prebuilt_producer(k: int) -> None:
            for n in range(k * BURST, INGEST_EVENTS, PRODUCERS * BURST):
                await outbox.append(*prebuilt[n : n + BURST])

        start = time.perf_counter()
        await asyncio.gather(*(prebuilt_producer(k) for k in range(PRODUCERS)))
        out["outbox_only_burst_of_10"] = {
            "events_per_s": round(INGEST_EVENTS / (time.perf_counter() - start)),
            "note": "events built before timing: the outbox's own ceiling",
        }

    return out


async def seed(db: Path, rows: int) -> None:
    clock = Clock()
    async with Outbox(StorageSection(path=db, max_bytes=4 << 30), STATION) as outbox:
        for start in range(0, rows, SEED_CHUNK):
            await outbox.append(*(reading(clock, n) for n in range(start, min(rows, start + SEED_CHUNK))))


def disk_bytes(db: Path) -> int:
    """The database, its WAL and WAL index (not the fixed-size disk reserve beside them)."""
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if not p.name.endswith(".reserve"))


class CountingSink:
    """A platform that only counts distinct ids (so that it keeps up with the drain)."""

    def __init__(self, host: str, port: int, station: str = STATION, lane: str = "#") -> None:
        self.host, self.port, self.station, self.lane = host, port, station, lane
        self.ids: set[bytes] = set()
        self.alarm_at: dict[int, float] = {}
        self.duplicates = 0
        self.subscribed = asyncio.Event()
        self.first_at: float | None = None  # the first and the latest telemetry message
        self.last_at = 0.0

    async def run(self) -> None:
        async with aiomqtt.Client(
            self.host, self.port, identifier=f"bench-sink-{self.station}-{self.lane.strip('#') or 'all'}",
            clean_session=False, max_queued_incoming_messages=0,
        ) as client:  # fmt: skip
            await client.subscribe(f"care/v1/{self.station}/events/{self.lane}", qos=1)
            self.subscribed.set()
            async for message in client.messages:
                payload = bytes(message.payload)  # type: ignore[arg-type]
                if payload[:1] != b"{":
                    payload = zlib.decompress(payload)
                now = time.perf_counter()
                if str(message.topic).endswith("/telemetry"):
                    self.first_at = self.first_at or now
                    self.last_at = now
                for event_id in ID_RE.findall(payload):
                    if event_id in self.ids:
                        self.duplicates += 1
                    self.ids.add(event_id)
                if str(message.topic).endswith("/alarm"):
                    data = json.loads(payload)["data"]
                    if "zone" in data:
                        self.alarm_at.setdefault(int(data["account"]) * 1000 + data["zone"], now)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


async def press_alarms(
    sim: ButtonReceiverSim,
    sink: CountingSink,
    count: int,
    first_zone: int,
    interval_s: float,
    stop: asyncio.Event | None = None,
) -> list[float]:
    sent: dict[int, float] = {}
    for key in range(first_zone, first_zone + count):  # key = account * 1000 + zone (3 digits)
        if stop is not None and stop.is_set():
            break
        sent[key] = time.perf_counter()
        await sim.send(surgard_report(account=str(key // 1000), code=101, zone=key % 1000))
        await asyncio.sleep(interval_s)
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline and not set(sent) <= set(sink.alarm_at):
        await asyncio.sleep(0.01)
    return [(sink.alarm_at[z] - t) * 1000 for z, t in sent.items() if z in sink.alarm_at]


async def bench_drain(folder: Path, rows: int, rounds: int = 1) -> dict[str, Any]:
    """Seed the backlog once; each round drains a copy of it through the gateway, and sends the
    same batches with mosquitto_pub to the same broker, in alternating order; the figures are
    the rounds' medians with their range, the ratio taken within each round."""
    seeded = folder / "seeded.db"
    start = time.perf_counter()
    await seed(seeded, rows)
    seeded_s = time.perf_counter() - start
    with sqlite3.connect(seeded) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    per_event_disk = disk_bytes(seeded) / rows
    out: dict[str, Any] = {"disk_bytes_per_event": round(per_event_disk, 1), "seed_s": round(seeded_s, 1)}
    batches = folder / "batches.jsonl"  # the same batches, for mosquitto_pub (one message a line)
    await write_batches(seeded, batches, LINK_PROFILES["broadband"].batch_max_events)
    results = []
    for n in range(rounds):
        here = folder / f"round-{n}"
        here.mkdir()
        shutil.copyfile(seeded, here / "outbox.db")
        results.append(await drain_round(here, batches, rows, reference_first=n % 2 == 1))
        shutil.rmtree(here)

    def summary(key: str) -> Any:
        values = [r[key] for r in results if key in r]
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return {"median": statistics.median(values), "range": [min(values), max(values)], "rounds": values}

    for key in results[0]:
        if not key.startswith("_"):  # (the alarms' latencies, pooled below)
            out[key] = summary(key)
    for key in ("alarm_latency_ms_while_draining", "alarm_latency_ms_idle"):  # all rounds' samples together
        out[key] = pct([ms for r in results for ms in r["_" + key]])
    out["rounds"] = rounds
    return out


async def drain_round(folder: Path, batches: Path, rows: int, reference_first: bool) -> dict[str, Any]:
    db = folder / "outbox.db"
    out: dict[str, Any] = {}
    with Mosquitto(folder / "broker") as broker:
        reference = await mosquitto_pub_drain(broker, batches, rows) if reference_first else None
        sink = CountingSink(broker.host, broker.port)
        # the alarms on a connection of their own, as a platform's alarm desk would take them:
        # on the counting sink's they would queue behind its backlog of telemetry to parse
        alarm_desk = CountingSink(broker.host, broker.port, lane="alarm")
        sim = ButtonReceiverSim()
        config = folder / "station.toml"
        config.write_text(
            station_toml(
                station_id=STATION,
                broker_port=broker.port,
                db_path=db,
                receiver_ports={"rx": sim.path},
                storage_extra=f"max_bytes = {4 << 30}",
            )
        )
        async with asyncio.TaskGroup() as tasks:
            sink_task = tasks.create_task(sink.run())
            desk_task = tasks.create_task(alarm_desk.run())
            await asyncio.wait_for(sink.subscribed.wait(), 10)
            await asyncio.wait_for(alarm_desk.subscribed.wait(), 10)
            gateway = GatewayProcess(config)
            t0 = time.perf_counter()
            await gateway.start()
            assert gateway.proc is not None
            await gateway.wait_for_line("device rx online")
            drained = asyncio.Event()
            probes = tasks.create_task(press_alarms(sim, alarm_desk, 100_000, 1_000_000, 0.2, stop=drained))
            while len(sink.ids) < rows + 2:  # + gateway_started, device_online
                await asyncio.sleep(0.05)
            drain_s = time.perf_counter() - t0
            drained.set()
            during = await probes
            idle = await press_alarms(sim, alarm_desk, ALARM_PROBES, 2_000_000, 0.05)
            rss = peak_rss_mb(gateway.proc.pid)
            await gateway.stop()
            sink_task.cancel()
            desk_task.cancel()
        if not reference_first:
            reference = await mosquitto_pub_drain(broker, batches, rows)
        sim.close()
    out.update(
        drain_events_per_s=round(rows / drain_s),  # (from the gateway's start: its start-up included)
        drain_events_per_s_first_to_last=round(rows / (sink.last_at - (sink.first_at or sink.last_at) or 1)),
        drain_s=round(drain_s, 1),
        gateway_peak_rss_mb=rss,
        _alarm_latency_ms_while_draining=during,
        _alarm_latency_ms_idle=idle,
        duplicates_at_platform=sink.duplicates,
    )
    if reference:
        # the same measure on both sides: first to last message at the platform (the gateway's
        # start-up, about a second, is in drain_events_per_s, and in the second ratio)
        total_s, first_to_last_s = reference
        ours_s = sink.last_at - (sink.first_at or sink.last_at) or 1
        out["mosquitto_pub_same_batches_events_per_s"] = round(rows / (first_to_last_s or total_s))
        out["ratio_to_mosquitto_pub"] = round((first_to_last_s or total_s) / ours_s, 3)
        out["ratio_to_mosquitto_pub_with_startup"] = round(total_s / drain_s, 3)
    return out


async def write_batches(db: Path, out: Path, per_batch: int) -> None:
    """The backlog as the uplink would send it on broadband: `{"events": [...]}` per line."""
    from gateway.outbox import Outbox

    async with Outbox(StorageSection(path=db, max_bytes=4 << 30), STATION) as outbox:
        after = 0
        with out.open("wb") as lines:
            while rows := await outbox.rows_after(Priority.TELEMETRY, after, per_batch):
                lines.write(encode_batch(rows, False).replace(STATION.encode(), b"ref-station") + b"\n")
                after = rows[-1].seq


async def mosquitto_pub_drain(broker: Mosquitto, batches: Path, rows: int) -> tuple[float, float] | None:
    """Seconds for mosquitto_pub (QoS 1, the same batches, to the same broker) until a counting
    platform has every event, and from its first message to its last at the platform: the
    reference a drain is measured against in the same run."""
    tool = shutil.which("mosquitto_pub")
    if tool is None:
        print("bench: mosquitto_pub not found (apt-get install mosquitto-clients): no reference", file=sys.stderr)
        return None
    sink = CountingSink(broker.host, broker.port, "ref-station")
    task = asyncio.create_task(sink.run())
    await asyncio.wait_for(sink.subscribed.wait(), 10)
    start = time.perf_counter()
    with batches.open("rb") as stdin:
        proc = await asyncio.create_subprocess_exec(
            tool, "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", "care/v1/ref-station/events/telemetry",
            "-l", stdin=stdin,
        )  # fmt: skip
        await proc.wait()
    while len(sink.ids) < rows:
        await asyncio.sleep(0.02)
    took = time.perf_counter() - start
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await task
    return took, sink.last_at - (sink.first_at or sink.last_at)


class SteppingClock(Clock):
    """Readings spread over time as on a station (one every 0.7 s), so ids are not consecutive."""

    def __init__(self) -> None:
        super().__init__()
        self._at = datetime(2026, 11, 23, tzinfo=UTC)

    def now(self) -> datetime:
        self._at += timedelta(milliseconds=700)
        return self._at


def varied_reading(clock: Clock, rng: random.Random, n: int) -> Event:
    return new_event(
        clock,
        STATION,
        f"radar-{n % 8}",
        EventKind.ACTIVITY,
        {
            "presence": rng.random() < 0.8,
            "motion": rng.choice(["none", "stationary", "moving"]),
            "room": rng.choice(["bedroom", "living room", "bathroom"]),
            "change": True,
        },
    )


def bench_wire() -> dict[str, Any]:
    clock = SteppingClock()
    rng = random.Random(1)
    topics = Topics("care/v1", "nm-xilin-0012")
    topic = topics.events(Priority.TELEMETRY)
    out = {}
    import jsonschema

    from gateway.outbox import OutboxRow

    schema = json.loads((Path(__file__).resolve().parent.parent / "docs" / "event.schema.json").read_text())
    for name, link in LINK_PROFILES.items():
        events = [varied_reading(clock, rng, i) for i in range(link.batch_max_events)]
        for event in events[:20]:  # (what is measured is what a station sends: the published schema)
            jsonschema.validate(json.loads(event.to_json()), schema)
        rows = [OutboxRow(i, Priority.TELEMETRY, 0, e.to_json(), e.id) for i, e in enumerate(events)]
        sent, payload = fit_batch(rows, link.compress, batch_limit(link, topic))  # (as the uplink sizes it)
        out[name] = {
            "batch_events": len(sent),
            "compressed": link.compress,
            "message_bytes": len(payload) + len(topic) + MQTT_OVERHEAD_BYTES,
            "bytes_per_event": round((len(payload) + len(topic) + MQTT_OVERHEAD_BYTES) / len(sent), 1),
            "events_per_s_at_budget": round(link.byte_budget_per_s * len(sent) / (len(payload) + len(topic)
                                            + MQTT_OVERHEAD_BYTES)) if link.byte_budget_per_s else None,
        }  # fmt: skip
    single = reading(clock, 0).to_json()
    out["single_event_json_bytes"] = len(single)
    return out


async def bench_baseline(folder: Path) -> dict[str, Any]:
    clock = Clock()
    events = [reading(clock, n) for n in range(BASELINE_ROWS)]
    conn = sqlite3.connect(folder / "naive.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, payload TEXT)")
    start = time.perf_counter()
    for event in events:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO q (payload) VALUES (?)", (event.to_json(),))
        conn.execute("COMMIT")
    ingest = BASELINE_ROWS / (time.perf_counter() - start)
    with Mosquitto(folder / "naive-broker") as broker:
        async with aiomqtt.Client(broker.host, broker.port, identifier="naive") as client:
            start = time.perf_counter()
            while row := conn.execute("SELECT seq, payload FROM q ORDER BY seq LIMIT 1").fetchone():
                await client.publish(f"care/v1/{STATION}/events/telemetry", row[1], qos=1)
                conn.execute("DELETE FROM q WHERE seq = ?", (row[0],))
            drain = BASELINE_ROWS / (time.perf_counter() - start)
    conn.close()
    return {"rows": BASELINE_ROWS, "ingest_events_per_s": round(ingest), "drain_events_per_s": round(drain)}


def _median(figure: Any) -> float:
    return float(figure["median"] if isinstance(figure, dict) else figure)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000, help="telemetry backlog to drain")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sections", default="ingest,drain,wire,baseline", help="comma-separated subset to run")
    parser.add_argument("--rounds", type=int, default=1, help="drain rounds (each against mosquitto_pub)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="care-gateway-bench-") as tmp:
        folder = Path(tmp)
        result: dict[str, Any] = {
            "command": "python bench/store_and_forward.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}",
            "date": time.strftime("%Y-%m-%d"),
        }
        sections = set(args.sections.split(","))
        if "ingest" in sections:
            result["ingest"] = await bench_ingest(folder)
        if "drain" in sections:
            result["drain"] = await bench_drain(folder, args.rows, args.rounds)
        if "wire" in sections:
            result["wire"] = bench_wire()
        if "baseline" in sections:
            result["baseline"] = base = await bench_baseline(folder)
            if "ingest" in result and "drain" in result:
                result["ratio_to_baseline"] = {
                    "ingest_single": round(
                        result["ingest"]["ingest_single"]["events_per_s"] / base["ingest_events_per_s"], 1
                    ),
                    "drain": round(_median(result["drain"]["drain_events_per_s"]) / base["drain_events_per_s"], 1),
                }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
