"""Damaged outbox rows against a running station (issue 12): nothing poisons the pipe."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.clock import Clock
from gateway.config import StorageSection
from gateway.events import EventKind, new_event
from gateway.outbox import Outbox
from simulators.broker import Mosquitto
from simulators.button_receiver import surgard_report
from tests.conftest import STATION_ID, events_of, running_station, wait_until


async def test_bad_rows_are_quarantined_reported_and_everything_else_is_delivered(
    tmp_path: Path, broker: Mosquitto
) -> None:
    db = tmp_path / "outbox.db"
    clock = Clock()
    good = []
    async with Outbox(StorageSection(path=db), STATION_ID) as outbox:
        for n in range(40):
            kind = EventKind.SOS if n % 4 == 0 else EventKind.ACTIVITY
            event = new_event(clock, STATION_ID, "radar-1" if n % 4 else "rx", kind, {"n": n})
            await outbox.append(event)
            good.append(event.id)
    with sqlite3.connect(db) as conn:
        # the first alarm is no longer UTF-8; a telemetry row in the middle of a batch is cut short
        conn.execute("UPDATE outbox SET payload = CAST(X'7B226964223AC328' AS TEXT) WHERE seq = 1")
        conn.execute("UPDATE outbox SET payload = substr(payload, 1, 50) WHERE seq = 10")
    broken = {good[0], good[9]}
    async with running_station(tmp_path, broker) as station:
        assert await wait_until(lambda: set(good) - broken <= set(station.sink.events)), station.gateway.lines[-20:]
        assert await wait_until(lambda: len(events_of(station, "storage_fault")) == 2)
        faults = sorted((e["data"]["seq"], e["data"]["reason"]) for e in events_of(station, "storage_fault"))
        assert faults == [(1, "not valid UTF-8 (invalid continuation byte at byte 6)"), (10, "not valid JSON")]
        assert not broken & set(station.sink.events)  # never published ...
        assert (await station.receiver.send(surgard_report(code=101, zone=7))).acked  # ... and the pipe flows
        assert await wait_until(lambda: any(e["data"].get("zone") == 7 for e in events_of(station, "sos")))
        assert any("row 1 (alarm) cannot be sent: not valid UTF-8" in line for line in station.gateway.lines)
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT seq FROM quarantine ORDER BY seq")] == [1, 10]  # ... nor lost
