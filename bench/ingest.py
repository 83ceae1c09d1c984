"""Durable ingest against a bare loop, interleaved in one run.

    python bench/ingest.py [--events 50000] [--rounds 5]

Each round runs, one after the other on the same machine and disk:
- bare: a bare Python loop, the floor any design pays: a dict per event -> json.dumps -> SQLite
  (WAL, synchronous=FULL) in group commits of 1,000 rows;
- ours-1 / ours-10: the gateway's own path: `new_event` (id, clock, strict validation of `data`
  against the kind's published schema) -> `Outbox.append` from 256 concurrent producers, one
  event per call, then ten per call (as a serial read or a BLE scan burst hands them over),
  after the daemon's start-up `settle_heap()` (gc.freeze).
Reported: events/s of each, per round, the median and spread, and the ratios ours/bare taken
within each round (this machine is shared and noisy: a ratio within a round is what counts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.app import settle_heap
from gateway.clock import Clock
from gateway.config import StorageSection
from gateway.events import EventKind, new_event
from gateway.outbox import Outbox

STATION = "bench-station"
PRODUCERS = 256
GROUP = 1000


def data(n: int) -> dict[str, Any]:
    return {"presence": True, "motion": ("moving", "stationary")[n % 2], "room": "bedroom", "change": True}


def bare(folder: Path, events: int) -> float:
    db = folder / f"bare-{time.monotonic_ns()}.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, priority INTEGER, created_ms INTEGER, payload TEXT)")
    start = time.perf_counter()
    rows: list[tuple[int, int, str]] = []
    for n in range(events):
        now = time.time()
        event = {
            "id": f"{int(now * 1000):013d}{n:013d}",
            "station_id": STATION,
            "device_id": f"radar-{n % 8}",
            "kind": "activity",
            "priority": "telemetry",
            "ts": datetime.fromtimestamp(now, UTC).isoformat(),
            "clock_trusted": True,
            "data": data(n),
        }
        rows.append((2, int(now * 1000), json.dumps(event)))
        if len(rows) == GROUP:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO q (priority, created_ms, payload) VALUES (?, ?, ?)", rows)
            conn.execute("COMMIT")
            rows = []
    if rows:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO q (priority, created_ms, payload) VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")
    rate = events / (time.perf_counter() - start)
    conn.close()
    return rate


async def ours(folder: Path, events: int, per_call: int) -> float:
    clock = Clock()
    path = folder / f"ours-{per_call}-{time.monotonic_ns()}.db"
    async with Outbox(StorageSection(path=path, max_bytes=4 << 30), STATION) as outbox:

        async def producer(k: int) -> None:
            for n in range(k * per_call, events, PRODUCERS * per_call):
                batch = [
                    new_event(clock, STATION, f"radar-{m % 8}", EventKind.ACTIVITY, data(m))
                    for m in range(n, min(n + per_call, events))
                ]
                await outbox.append(*batch)

        start = time.perf_counter()
        await asyncio.gather(*(producer(k) for k in range(PRODUCERS)))
        return events / (time.perf_counter() - start)


def clear(folder: Path) -> None:
    for leftover in folder.iterdir():
        leftover.unlink()


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "runs": [round(v, 2) for v in values],
    }


async def run(events: int, rounds: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"bare": [], "ours_1": [], "ours_10": []}
    ratios: dict[str, list[float]] = {"ours_1": [], "ours_10": []}
    settle_heap()  # as the daemon does once it has started (gateway/app.py run_station)
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # (the project's disk, not a tmpfs)
        folder = Path(tmp)
        for _ in range(rounds):
            base = bare(folder, events)
            one = await ours(folder, events, 1)
            ten = await ours(folder, events, 10)
            rates["bare"].append(base)
            rates["ours_1"].append(one)
            rates["ours_10"].append(ten)
            ratios["ours_1"].append(one / base)
            ratios["ours_10"].append(ten / base)
            clear(folder)
    return {
        "command": "python bench/ingest.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}",
        "date": time.strftime("%Y-%m-%d"),
        "events_per_round": events,
        "events_per_s": {name: summary([round(v) for v in values]) for name, values in rates.items()},
        "ratio_to_bare": {name: summary(values) for name, values in ratios.items()},
        "goal": "ratio >= 0.5 at 1 and at 10 events per call",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.events, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
