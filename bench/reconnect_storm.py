"""A fleet's reconnect storm: how many stations hit the broker in the same second after it restarts.

    python bench/reconnect_storm.py [--stations 2000] [--down-s 5] [--reconnect-max-s 60]

Runs one mosquitto and, in this one process, `--stations` uplinks (the gateway's own `Uplink`,
each with its own client id, over its own TCP connection; an empty stand-in for the outbox, so
this measures the reconnect policy, not full gateways). Once all are connected the broker is
stopped for `--down-s` seconds and started again on the same port. Prints one JSON object:
- attempts_busiest_second_share: the most connection attempts the stations scheduled (when the
  backoff's wait ends) within one second after the restart, as a share of the stations: the
  reconnect policy itself, free of this one process's own lag (1.0: all at once);
- busiest_second_share: the same for connections the broker accepted (mosquitto's log), which
  also shows how fast one broker and this one process can take them;
- attempts_per_second, per_second: each second after the restart;
- all_back_s: seconds from the restart until every station was connected again;
- attempts_while_down: connection attempts that failed while the broker was down (per station).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.config import parse_config
from gateway.events import Priority
from gateway.outbox import OutboxSnapshot
from gateway.uplink import Backoff, Uplink
from simulators.broker import Mosquitto


class EmptyOutbox:
    """What an uplink asks of its outbox, for a station with nothing waiting."""

    async def counts(self) -> dict[Priority, int]:
        return dict.fromkeys(Priority, 0)

    async def rows_after(self, priority: Priority, after_seq: int, limit: int) -> list[Any]:
        return []

    async def wait_for_new(self, priority: Priority, timeout: float) -> None:
        await asyncio.sleep(timeout)

    async def ack(self, rows: Any, state: Any = None) -> None:
        return None

    async def snapshot(self) -> OutboxSnapshot:
        zero = dict.fromkeys(Priority, 0)
        return OutboxSnapshot(dict(zero), dict(zero), None, {}, 0, 0)


def accepted_per_second(log_path: Path, since: float) -> dict[int, int]:
    """Connections mosquitto accepted per whole second (its log's epoch timestamps) after `since`."""
    counts: dict[int, int] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        stamp, _, rest = line.partition(": ")
        if not stamp.isdigit() or not rest.startswith("New client connected"):
            continue
        second = int(stamp)
        if second >= int(since):
            counts[second] = counts.get(second, 0) + 1
    return counts


async def bench(stations: int, down_s: float, reconnect_max_s: float) -> dict[str, Any]:
    logging.getLogger("care_gateway").setLevel(logging.CRITICAL)  # thousands of "uplink down" lines
    # aiomqtt runs each TCP connect in the loop's executor: give it room, or the harness itself
    # (a handful of threads for thousands of stations) would queue and bunch the connects up
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=256))
    attempts: list[float] = []  # when each station means to try next: the policy, free of this harness's lag
    real_next_delay = Backoff.next_delay

    def timed_next_delay(self: Backoff, alarm_waiting: bool = False) -> float:
        delay = real_next_delay(self, alarm_waiting)
        attempts.append(time.monotonic() + delay)
        return delay

    Backoff.next_delay = timed_next_delay  # type: ignore[method-assign]
    folder = Path(tempfile.mkdtemp(prefix="care-storm-"))
    broker = Mosquitto(folder / "broker")
    broker.conf.write_text(broker.conf.read_text() + "max_connections -1\n")
    broker.start()
    uplinks = []
    for n in range(stations):
        raw = {
            "station": {"id": f"st-{n:05d}", "name": "bench"},
            "uplink": {
                "host": broker.host,
                "port": broker.port,
                "reconnect_max_s": reconnect_max_s,
                "status_interval_s": 3600,
                "keepalive_s": 120,
            },
            "storage": {"path": str(folder / "unused.db")},
        }
        uplinks.append(Uplink(parse_config(raw), EmptyOutbox()))  # type: ignore[arg-type]
    tasks = [asyncio.create_task(u.run()) for u in uplinks]
    try:
        started = time.monotonic()
        while sum(u.connected for u in uplinks) < stations:
            if time.monotonic() - started > 120:
                raise RuntimeError(f"only {sum(u.connected for u in uplinks)} of {stations} connected")
            await asyncio.sleep(0.1)
        connects_before = sum(u.connects for u in uplinks)
        broker.stop()
        await asyncio.sleep(down_s)
        restart_wall = time.time()
        restarted = time.monotonic()
        broker.start()
        while sum(u.connects for u in uplinks) - connects_before < stations:
            if time.monotonic() - restarted > 10 * reconnect_max_s:
                break
            await asyncio.sleep(0.05)
        all_back_s = time.monotonic() - restarted
        await asyncio.sleep(1.5)  # the last log lines
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        broker.stop()
    Backoff.next_delay = real_next_delay  # type: ignore[method-assign]
    tried = [t - restarted for t in attempts if t >= restarted]
    tried_per_second = [sum(1 for t in tried if k <= t < k + 1) for k in range(int(max(tried, default=0)) + 1)]
    per_second = accepted_per_second(broker.log_path, restart_wall)
    ordered = [per_second.get(s, 0) for s in range(int(restart_wall), max(per_second, default=int(restart_wall)) + 1)]
    busiest = max(ordered, default=0)
    return {
        "stations": stations,
        "broker_down_s": down_s,
        "reconnect_max_s": reconnect_max_s,
        "attempts_busiest_second_share": round(max(tried_per_second, default=0) / stations, 3),
        "attempts_per_second": tried_per_second,
        "busiest_second": busiest,
        "busiest_second_share": round(busiest / stations, 3),
        "per_second": ordered,
        "all_back_s": round(all_back_s, 1),
        "reconnected": sum(u.connects for u in uplinks) - connects_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=2000)
    parser.add_argument("--down-s", type=float, default=5.0)
    parser.add_argument("--reconnect-max-s", type=float, default=60.0)
    args = parser.parse_args()
    result = asyncio.run(bench(args.stations, args.down_s, args.reconnect_max_s))
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    result["machine"] = {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
