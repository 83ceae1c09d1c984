"""Disk-full soak: the outbox on a small real filesystem that fills up and empties, again and again.

    sudo .venv/bin/python bench/disk_full_soak.py [--fs tmpfs|ext4] [--cycles 10] [--disk-mib 8] [--out result.json]

Needs root (it mounts an 8 MiB tmpfs, or an ext4 image on a loop device). Each cycle: the link
goes down; alarms, status reports and telemetry keep arriving (the mix of a busy station:
1 alarm, 2 status, 40 telemetry per round) while a runaway file fills the disk to the last
block; after a while the file is deleted and the link comes back, and the drain (rows read,
"PUBACKed", acked in batches as the uplink does) empties the outbox while events keep coming.

Prints one JSON object: per class, what was accepted, delivered, shed (counted by the outbox)
and refused (append raised OutboxFull: not accepted, so a device would resend), and what was
lost: accepted, neither delivered nor counted as shed (must be 0; for alarms, shed must be 0
too), and duplicates (delivered twice: must be 0 when no acknowledged delete is lost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.clock import Clock
from gateway.config import StorageSection
from gateway.events import EventKind, Priority, new_event
from gateway.outbox import Outbox, OutboxFull
from simulators.harness import SmallDiskUnavailable, fill_disk, mount_small_disk

MIB = 1024 * 1024
KINDS = {Priority.ALARM: EventKind.SOS, Priority.STATUS: EventKind.TEST, Priority.TELEMETRY: EventKind.ACTIVITY}
ROUND = [Priority.ALARM] + [Priority.STATUS] * 2 + [Priority.TELEMETRY] * 40


class Soak:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.clock = Clock()
        self.accepted: dict[Priority, set[str]] = {p: set() for p in Priority}
        self.refused = dict.fromkeys(Priority, 0)
        self.delivered: dict[Priority, set[str]] = {p: set() for p in Priority}
        self.duplicates = 0
        self.n = 0

    async def produce(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for priority in ROUND:
                self.n += 1
                event = new_event(
                    self.clock, "soak", f"dev-{self.n % 7}", KINDS[priority], {"n": self.n, "pad": "p" * 120}
                )
                try:
                    await self.outbox.append(event)
                except OutboxFull:
                    self.refused[priority] += 1
                else:
                    self.accepted[priority].add(event.id)
            await asyncio.sleep(0.005)

    async def drain(self, until_empty: bool) -> None:
        while True:
            moved = 0
            for priority in Priority:
                rows = await self.outbox.rows_after(priority, 0, 200)
                for row in rows:
                    event_id = json.loads(row.payload)["id"]
                    if event_id in self.delivered[priority]:
                        self.duplicates += 1
                    self.delivered[priority].add(event_id)
                await self.outbox.ack(rows)
                moved += len(rows)
            if not moved:
                if until_empty:
                    return
                await asyncio.sleep(0.05)


async def cycle(soak: Soak, disk: Path, fill_after_s: float, full_s: float) -> dict[str, float]:
    """One outage in which the disk fills; then the space and the link come back."""
    producing = asyncio.create_task(soak.produce(fill_after_s + full_s))
    await asyncio.sleep(fill_after_s)
    filler = fill_disk(disk)
    await producing
    filler.unlink()
    back = time.monotonic()
    draining = asyncio.create_task(soak.drain(until_empty=False))
    await soak.produce(1.0)  # events keep coming while the backlog drains
    draining.cancel()
    await soak.drain(until_empty=True)
    return {"drain_after_space_back_s": round(time.monotonic() - back, 2)}


async def run(args: argparse.Namespace, disk: Path) -> dict[str, object]:
    storage = StorageSection(path=disk / "outbox.db", disk_reserve_bytes=args.reserve_mib * MIB)
    cycles = []
    async with Outbox(storage, "soak") as outbox:
        soak = Soak(outbox)
        for _ in range(args.cycles):
            cycles.append(await cycle(soak, disk, args.fill_after_s, args.full_s))
        snap = await outbox.snapshot()
    shed = {p: sum(per.get(p.value, 0) for per in snap.shed.values()) for p in Priority}
    classes = {}
    for p in Priority:
        undelivered = len(soak.accepted[p] - soak.delivered[p])
        classes[p.value] = {
            "accepted": len(soak.accepted[p]),
            "delivered": len(soak.accepted[p] & soak.delivered[p]),
            "shed": shed[p],
            "refused": soak.refused[p],
            "lost": undelivered - shed[p],
        }
    return {
        "classes": classes,
        "duplicates": soak.duplicates,
        "disk_full_errors": snap.disk_full_errors,
        "reserve_held_at_end": bool(snap.disk.get("reserve_bytes")),
        "drain_after_space_back_s": [c["drain_after_space_back_s"] for c in cycles],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fs", choices=("tmpfs", "ext4"), default="tmpfs")
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--disk-mib", type=int, default=8)
    parser.add_argument("--reserve-mib", type=int, default=2)
    parser.add_argument("--fill-after-s", type=float, default=1.0)
    parser.add_argument("--full-s", type=float, default=2.0)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="disk-full-soak-") as folder:
        disk = Path(folder) / "disk"
        try:
            mount_small_disk(args.fs, disk, Path(folder) / "disk.img", args.disk_mib * MIB)
        except SmallDiskUnavailable as exc:
            sys.exit(f"this benchmark mounts a small filesystem: {exc}")
        try:
            started = time.monotonic()
            result = asyncio.run(run(args, disk))
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    body = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "fs": args.fs},
        "disk_mib": args.disk_mib,
        "reserve_mib": args.reserve_mib,
        "cycles": args.cycles,
        "seconds": round(time.monotonic() - started, 1),
        **result,
    }
    text = json.dumps(body, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
