"""Store-and-forward under pressure: alarms overtake a backlog; flaky links; kill -9; corruption."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import Station, running_station, wait_until

from simulators.broker import Mosquitto
from simulators.button_receiver import surgard_report
from simulators.link import LinkProxy


def arrivals(station: Station) -> list[dict[str, Any]]:
    """Distinct events in the order the platform first received them."""
    return list(station.sink.events.values())


def sos_zones(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["zone"] for e in events if e["kind"] == "sos"]


async def test_an_sos_overtakes_a_telemetry_backlog_being_drained(tmp_path: Path, broker: Mosquitto) -> None:
    # 6000 readings at a 60 kB/s budget take several seconds to drain
    async with running_station(
        tmp_path, broker, seed_telemetry=6000, uplink_extra="byte_budget_per_s = 60000"
    ) as station:
        assert await wait_until(lambda: len(station.sink.events) > 500)  # the drain is under way
        assert (await station.receiver.send(surgard_report(code=101, zone=77))).acked
        assert (await station.receiver.send(surgard_report(code=602, zone=0, group=0))).acked
        assert await wait_until(lambda: 77 in sos_zones(arrivals(station)))
        seen = arrivals(station)
        telemetry_before_sos = sum(1 for e in seen if e["kind"] == "activity")
        assert telemetry_before_sos < 6000 - 1000, "the SOS waited for the backlog"
        assert await wait_until(lambda: any(e["kind"] == "test" for e in arrivals(station)))
        seen = arrivals(station)
        test_at = next(i for i, e in enumerate(seen) if e["kind"] == "test")
        # (not "telemetry arrived after it": at the instant it arrives, it may well be the last event seen)
        telemetry_before_status = sum(1 for e in seen[:test_at] if e["kind"] == "activity")
        assert telemetry_before_status < 6000 - 1000, "status waited for telemetry"
        for device in ("radar-0", "radar-1", "radar-2"):  # per-device order kept within the class
            ns = [e["data"]["n"] for e in seen if e["device_id"] == device]
            assert ns == sorted(ns)
        status = station.sink.status
        assert status is not None
        assert set(status) >= {"backlog", "oldest_unsent_s", "estimated_drain_s", "shed", "backlog_bytes"}


async def test_flaky_link_cuts_blackholes_latency_and_bandwidth(tmp_path: Path, broker: Mosquitto) -> None:
    async with LinkProxy(broker.host, broker.port) as link:
        link.apply("latency 20")
        link.apply("bandwidth 40000")
        async with running_station(
            tmp_path, broker, uplink_port=link.port, seed_telemetry=800, keepalive_s=4
        ) as station:
            assert (await station.receiver.send(surgard_report(code=101, zone=1))).acked
            assert await wait_until(lambda: 1 in sos_zones(arrivals(station)))

            for outage, zones in (("blackhole", (10, 11, 12)), ("cut", (20, 21))):
                mark = len(station.gateway.lines)
                link.apply(outage)
                for zone in zones:  # accepted and acknowledged while the link is dead
                    assert (await station.receiver.send(surgard_report(code=101, zone=zone))).acked
                # a black hole sends no RST: only the keepalive (4 s) or a missing PUBACK can tell
                assert await station.gateway.wait_for_line("uplink down", after=mark, timeout=15)
                before = len(arrivals(station))
                link.restore()
                assert await wait_until(lambda zones=zones: set(zones) <= set(sos_zones(arrivals(station))))
                after = arrivals(station)[before:]
                first = [e["kind"] for e in after[: len(zones)]]
                assert first == ["sos"] * len(zones), f"after the {outage}, alarms came first: {first}"

            wanted = set(station.seeded)
            assert await wait_until(lambda: wanted <= set(station.sink.events)), (
                len(wanted - set(station.sink.events)),
                "\n".join(station.gateway.lines[-30:]),
            )
            assert sorted(sos_zones(arrivals(station))) == [1, 10, 11, 12, 20, 21]
            assert link.dropped_bytes > 0  # the black hole really swallowed traffic


@pytest.mark.long  # (ten kills and restarts: started first, it does not hold up the end)
async def test_kill_9_at_random_instants_during_ingest_and_drain(tmp_path: Path, broker: Mosquitto) -> None:
    rng = random.Random(3)
    async with running_station(
        tmp_path, broker, seed_telemetry=4000, uplink_extra="byte_budget_per_s = 200000"
    ) as station:
        acked: list[int] = []
        zone = 0

        async def press_until(stop: asyncio.Event) -> None:
            nonlocal zone
            while not stop.is_set():
                zone += 1
                code = 101 if zone % 3 else 602  # alarms and status, mixed
                if (await station.receiver.send(surgard_report(code=code, zone=zone))).acked:
                    acked.append(zone)

        for _round in range(10):
            stop = asyncio.Event()
            presser = asyncio.create_task(press_until(stop))
            await asyncio.sleep(rng.uniform(0.2, 1.2))
            await station.gateway.stop(signal.SIGKILL)  # no goodbye, no checkpoint: as a power cut to the daemon
            await station.restart_gateway()  # the receiver resends meanwhile, as a real one does
            stop.set()
            await presser

        def delivered_zones() -> set[int]:
            return {e["data"]["zone"] for e in arrivals(station) if e["data"].get("protocol") == "contact_id"}

        assert len(acked) > 20
        assert await wait_until(
            lambda: set(acked) <= delivered_zones() and set(station.seeded) <= set(station.sink.events)
        )
        lost = set(acked) - delivered_zones()
        assert not lost, f"accepted but lost: {sorted(lost)}"
        assert set(station.seeded) <= set(station.sink.events)


async def test_corrupt_outbox_at_start_is_moved_aside_and_reported(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "outbox.db"
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 64)  # a header, then rubbish
    async with running_station(tmp_path, broker) as station:
        assert (await station.receiver.send(surgard_report(code=101, zone=5))).acked  # the station works
        assert await wait_until(lambda: any(e["kind"] == "storage_fault" for e in arrivals(station)))
        [fault] = [e for e in arrivals(station) if e["kind"] == "storage_fault"]
        aside = Path(fault["data"]["moved_aside"])
        assert fault["data"]["fault"] == "corrupt_database"
        assert aside.name.startswith("outbox.db.corrupt-")
        assert aside.read_bytes().startswith(b"SQLite format 3\x00")  # kept, not deleted
        assert fault["data"]["salvaged_events"] == 0
        assert await wait_until(lambda: 5 in sos_zones(arrivals(station)))


async def test_telemetry_stays_within_the_byte_budget(tmp_path: Path, broker: Mosquitto) -> None:
    """Status/telemetry never leave faster than byte_budget_per_s (a lower bound on the drain time)."""
    budget = 50_000
    async with running_station(
        tmp_path, broker, seed_telemetry=1200, uplink_extra=f"byte_budget_per_s = {budget}"
    ) as station:
        wanted = set(station.seeded)
        assert await wait_until(lambda: wanted <= set(station.sink.events))
        seen = [station.sink.events[i] for i in station.seeded]
        payload_bytes = sum(len(json.dumps(e, separators=(",", ":"))) for e in seen)
        times = sorted(station.sink.arrived_at[i] for i in station.seeded)
        # one second of budget may go at once (the bucket's burst), the rest at the budget's pace
        assert times[-1] - times[0] >= (payload_bytes - 2 * budget) / budget


async def test_a_narrow_link_carries_forty_events_a_message_within_its_budget(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """narrowband: batches sized after compression against the 1 kB/s budget; the status's
    drain estimate is the one the link then achieves."""
    import time

    rows = 600
    async with running_station(
        tmp_path, broker, seed_telemetry=rows, uplink_extra='link_profile = "narrowband"'
    ) as station:
        sink = station.sink
        seeded = set(station.seeded)
        assert await wait_until(lambda: len(seeded & set(sink.events)) >= 150, timeout=30)
        await sink.command("status", {"id": "s-1"})
        assert await wait_until(lambda: "s-1" in sink.replies)
        asked_at = time.monotonic()
        assert await wait_until(lambda: sink.status is not None and sink.status["backlog"]["telemetry"] < rows)
        assert sink.status is not None
        estimate = sink.status["estimated_drain_s"]
        assert await wait_until(lambda: seeded <= set(sink.events), timeout=60)
        took = time.monotonic() - asked_at
        assert estimate is not None
        assert 0.6 * took <= estimate <= 1.5 * took, (estimate, took)

        telemetry = [(at, wire, n) for at, wire, n, priority in sink.messages if priority == "telemetry"]
        events = sum(n for _, _, n in telemetry)
        assert events == rows
        assert all(wire <= 1000 for _, wire, _ in telemetry), telemetry
        assert all(n >= 40 for _, _, n in telemetry[:-1]), [n for _, _, n in telemetry]
        assert sum(wire for _, wire, _ in telemetry) / events <= 25
        span = telemetry[-1][0] - telemetry[0][0]
        # the budget held: 1 kB/s, plus the bucket's one second of burst (the first message aside)
        assert sum(wire for _, wire, _ in telemetry[1:]) <= 1000 * (span + 1)
