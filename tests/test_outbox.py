"""The outbox: durable append, priority order, delete only on ack, corrupt files moved aside."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.clock import Clock
from gateway.events import Event, EventKind, Priority, new_event
from gateway.outbox import Outbox


def make(kind: EventKind, device: str = "d1") -> Event:
    return new_event(Clock(), "st", device, kind)


async def test_alarms_first_then_status_then_telemetry_each_oldest_first(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        test1, sos1, test2, fall = (
            make(EventKind.TEST),
            make(EventKind.SOS),
            make(EventKind.TEST),
            make(EventKind.FALL),
        )
        await outbox.append(test1, sos1)
        await outbox.append(test2)
        await outbox.append(fall)
        rows = await outbox.next_batch(10)
        assert [Event.model_validate_json(r.payload) for r in rows] == [sos1, fall, test1, test2]
        assert [r.priority for r in rows] == [
            Priority.ALARM,
            Priority.ALARM,
            Priority.STATUS,
            Priority.STATUS,
        ]
        assert [Event.model_validate_json(r.payload) for r in await outbox.next_batch(3)] == [
            sos1,
            fall,
            test1,
        ]


async def test_rows_stay_until_acked_and_survive_reopening(tmp_path: Path) -> None:
    events = [make(EventKind.TEST) for _ in range(5)]
    async with Outbox(tmp_path / "o.db") as outbox:
        await outbox.append(*events)
        rows = await outbox.next_batch(2)
        await outbox.ack([rows[0]])
    async with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.moved_aside is None
        assert await outbox.counts() == {Priority.ALARM: 0, Priority.STATUS: 4, Priority.TELEMETRY: 0}
        assert [Event.model_validate_json(r.payload) for r in await outbox.next_batch(10)] == events[1:]


async def test_committed_rows_are_visible_to_another_connection_at_once(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        event = make(EventKind.SOS)
        await outbox.append(event)
        with sqlite3.connect(tmp_path / "o.db") as other:
            [(payload,)] = other.execute("SELECT payload FROM outbox").fetchall()
        assert Event.model_validate_json(payload) == event


async def test_wal_and_full_sync_are_in_force(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db") as outbox:
        mode = await outbox._run(lambda: outbox.db.execute("PRAGMA journal_mode").fetchone()[0])
        sync = await outbox._run(lambda: outbox.db.execute("PRAGMA synchronous").fetchone()[0])
        assert (mode, sync) == ("wal", 2)  # 2 = FULL


async def test_corrupt_file_is_moved_aside_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with Outbox(path) as outbox:
        await outbox.append(*[make(EventKind.TEST) for _ in range(200)])
    data = bytearray(path.read_bytes())
    data[4096 : 4096 + 2048] = b"\xa5" * 2048  # overwrite part of the first table page
    path.write_bytes(bytes(data))
    original = bytes(data)
    async with Outbox(path) as outbox:
        assert outbox.moved_aside is not None
        assert outbox.moved_aside.read_bytes() == original
        assert outbox.moved_aside.name.startswith("o.db.corrupt-")
        assert await outbox.counts() == {Priority.ALARM: 0, Priority.STATUS: 0, Priority.TELEMETRY: 0}
        await outbox.append(make(EventKind.SOS))
        assert (await outbox.counts())[Priority.ALARM] == 1
