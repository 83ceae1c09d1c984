"""The outbox: durable group commit, lanes, delete only on ack, bounds, disk full, corruption."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.clock import Clock
from gateway.config import StorageSection
from gateway.events import Event, EventKind, Priority, new_event
from gateway.outbox import RUN_MIN, Outbox, OutboxFull, OutboxRow, _runs

STATION = "st-1"


class FixedClock(Clock):
    def __init__(self, at: datetime, trusted: bool = True) -> None:
        super().__init__()
        self.at, self._trusted = at, trusted

    def now(self) -> datetime:
        return self.at

    def trusted(self) -> bool:
        return self._trusted


def make(kind: EventKind, device: str = "d1", clock: Clock | None = None, **data: object) -> Event:
    return new_event(clock or Clock(), STATION, device, kind, dict(data))


def storage(tmp_path: Path, **limits: object) -> StorageSection:
    return StorageSection.model_validate({"path": tmp_path / "o.db", **limits})


def events_of(rows: list[OutboxRow]) -> list[Event]:
    return [Event.model_validate_json(r.payload) for r in rows]


async def lane(outbox: Outbox, priority: Priority) -> list[Event]:
    return events_of(await outbox.rows_after(priority, 0, 1_000_000))


async def test_lanes_give_each_class_oldest_first_after_a_cursor(tmp_path: Path) -> None:
    async with Outbox(storage(tmp_path), STATION) as outbox:
        test1, sos1, act, test2, fall = (
            make(k) for k in (EventKind.TEST, EventKind.SOS, EventKind.ACTIVITY, EventKind.TEST, EventKind.FALL)
        )
        await outbox.append(test1, sos1, act)
        await outbox.append(test2)
        await outbox.append(fall)
        assert await lane(outbox, Priority.ALARM) == [sos1, fall]
        assert await lane(outbox, Priority.STATUS) == [test1, test2]
        assert await lane(outbox, Priority.TELEMETRY) == [act]
        first = await outbox.rows_after(Priority.STATUS, 0, 1)
        assert events_of(await outbox.rows_after(Priority.STATUS, first[0].seq, 10)) == [test2]
        assert await outbox.counts() == {Priority.ALARM: 2, Priority.STATUS: 2, Priority.TELEMETRY: 1}


async def test_rows_stay_until_acked_and_survive_reopening(tmp_path: Path) -> None:
    events = [make(EventKind.TEST, n=n) for n in range(5)]
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*events)
        rows = await outbox.rows_after(Priority.STATUS, 0, 2)
        await outbox.ack(rows[:1])
        await outbox.ack(rows[:1])  # a second ack of the same row changes nothing
    async with Outbox(storage(tmp_path), STATION) as outbox:
        assert outbox.salvage is None
        assert await outbox.counts() == {Priority.ALARM: 0, Priority.STATUS: 4, Priority.TELEMETRY: 0}
        assert await lane(outbox, Priority.STATUS) == events[1:]


async def test_stored_form_is_compact_and_published_form_is_the_whole_event(tmp_path: Path) -> None:
    async with Outbox(storage(tmp_path), STATION) as outbox:
        event = make(EventKind.SOS, zone=3)
        await outbox.append(event)
        with sqlite3.connect(tmp_path / "o.db") as other:  # committed: visible to another connection
            [(stored,)] = other.execute("SELECT payload FROM outbox").fetchall()
        assert "station_id" not in stored
        [row] = await outbox.rows_after(Priority.ALARM, 0, 10)
        assert json.loads(row.payload) == json.loads(event.to_json())
        assert row.event_id == event.id  # read with the row, not parsed again from the payload


async def test_a_row_stored_with_its_ts_by_an_earlier_release_is_read_and_rebased_like_a_new_one(
    tmp_path: Path,
) -> None:
    """Rows now leave ts to created_ms (about 31 bytes a row); a backlog written by a release that
    stored ts in the payload must still be sent with it, and re-based once, the same way."""
    unsynced = FixedClock(datetime(2026, 1, 1, 8, 0, 0, 250000, tzinfo=UTC), trusted=False)
    async with Outbox(storage(tmp_path), STATION) as outbox:
        new, old = make(EventKind.TEST, clock=unsynced, n=1), make(EventKind.TEST, clock=unsynced, n=2)
        await outbox.append(new, old)
        old_layout = json.loads(old.to_json())
        del old_layout["station_id"], old_layout["priority"]
        with sqlite3.connect(tmp_path / "o.db") as conn:
            conn.execute(
                "UPDATE outbox SET payload = ? WHERE seq = 2", (json.dumps(old_layout, separators=(",", ":")),)
            )
            [(stored_new,), (stored_old,)] = conn.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
        assert '"ts"' not in stored_new
        assert '"ts":"2026-01-01T08:00:00.250Z"' in stored_old
        assert await lane(outbox, Priority.STATUS) == [new, old]  # the same events, ts and all

        assert await outbox.rebase(86_400_000) == 2  # the clock was a day behind
        sent = [r.payload for r in await outbox.rows_after(Priority.STATUS, 0, 10)]
        assert [payload.count('"ts":') for payload in sent] == [1, 1]
        rows = [json.loads(payload) for payload in sent]
        for row in rows:
            assert row["data"]["ts_unsynced"] == "2026-01-01T08:00:00.250Z"
            assert row["clock_trusted"] is True
            assert row["ts"] != "2026-01-01T08:00:00.250Z"
        assert rows[0]["ts"] == rows[1]["ts"]  # (committed together: the same monotonic time, the same true time)
        with sqlite3.connect(tmp_path / "o.db") as conn:
            assert all('"ts":' not in p for (p,) in conn.execute("SELECT payload FROM outbox"))  # one layout now


async def test_alarms_commit_with_full_sync_telemetry_alone_with_normal(tmp_path: Path) -> None:
    async with Outbox(storage(tmp_path), STATION) as outbox:

        def sync_mode() -> int:
            return int(outbox.db.execute("PRAGMA synchronous").fetchone()[0])

        await outbox.append(make(EventKind.ACTIVITY))
        assert await outbox._run(sync_mode) == 1  # NORMAL
        await outbox.append(make(EventKind.SOS))
        assert await outbox._run(sync_mode) == 2  # FULL
        assert await outbox._run(lambda: outbox.db.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"


async def test_concurrent_appends_share_group_commits(tmp_path: Path) -> None:
    async with Outbox(storage(tmp_path), STATION) as outbox:
        events = [make(EventKind.ACTIVITY, device=f"d{n % 7}", n=n) for n in range(2000)]
        await asyncio.gather(*(outbox.append(e) for e in events))
        assert outbox.commits < 200
        stored = await lane(outbox, Priority.TELEMETRY)
        assert sorted(e.id for e in stored) == sorted(e.id for e in events)
        for device in {e.device_id for e in events}:  # per-device order within the class
            mine = [e for e in stored if e.device_id == device]
            assert mine == sorted(mine, key=lambda e: e.id)


async def test_full_outbox_sheds_oldest_telemetry_then_status_never_alarms(tmp_path: Path) -> None:
    limits = {"max_bytes": 64 * 1024, "alarm_reserve_bytes": 8 * 1024}
    async with Outbox(storage(tmp_path, **limits), STATION) as outbox:
        telemetry = [make(EventKind.ACTIVITY, device=f"radar-{n % 2}", n=n) for n in range(600)]
        for event in telemetry:
            await outbox.append(event)
        kept = await lane(outbox, Priority.TELEMETRY)
        assert kept == telemetry[-len(kept) :]  # the newest are kept, the oldest shed
        snap = await outbox.snapshot()
        assert sum(snap.bytes.values()) <= 64 * 1024 - 8 * 1024
        shed_total = sum(n for per_class in snap.shed.values() for n in per_class.values())
        assert shed_total == 600 - len(kept)
        assert set(snap.shed) == {"radar-0", "radar-1"}

        statuses = [make(EventKind.TEST, device="rx", n=n) for n in range(600)]
        for event in statuses:
            await outbox.append(event)
        assert (await outbox.counts())[Priority.TELEMETRY] == 0  # status evicted every telemetry row first
        assert await lane(outbox, Priority.STATUS) == statuses[-len(await lane(outbox, Priority.STATUS)) :]
        late = make(EventKind.ACTIVITY, device="radar-0")
        await outbox.append(late)  # telemetry may not evict status: the newcomer itself is shed
        assert late not in await lane(outbox, Priority.TELEMETRY)

        alarms = [make(EventKind.SOS, device="rx", zone=n) for n in range(300)]
        for event in alarms:
            await outbox.append(event)
        assert await lane(outbox, Priority.ALARM) == alarms  # every alarm kept, even past the bound
        snap = await outbox.snapshot()
        assert "alarm" not in {c for per_class in snap.shed.values() for c in per_class}
        assert snap.shed["rx"]["status"] > 0
    async with Outbox(storage(tmp_path, **limits), STATION) as outbox:  # the counts are kept on disk
        assert (await outbox.snapshot()).shed == snap.shed


async def test_disk_full_sheds_and_only_refuses_when_nothing_is_left(tmp_path: Path) -> None:
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*[make(EventKind.ACTIVITY, device="band", pad="x" * 400) for _ in range(300)])
        pages = await outbox._run(lambda: int(outbox.db.execute("PRAGMA page_count").fetchone()[0]))
        await outbox._run(lambda: outbox.db.execute(f"PRAGMA max_page_count={pages}"))  # the "disk" is full
        alarms: list[Event] = []
        for _ in range(500):  # alarms until the "disk" is full: telemetry is shed to make room
            alarms.append(make(EventKind.SOS, device="rx", pad="y" * 400))
            await outbox.append(alarms[-1])
            if outbox.disk_full_errors:
                break
        assert await lane(outbox, Priority.ALARM) == alarms
        snap = await outbox.snapshot()
        assert snap.disk_full_errors >= 1
        assert snap.shed["band"]["telemetry"] > 0

        async def alarms_until_refused() -> None:
            for _ in range(2000):
                await outbox.append(make(EventKind.SOS, device="rx", pad="z" * 400))

        with pytest.raises(
            OutboxFull,
            match=r"the disk is full and nothing more can be freed: \d+ alarm, 0 status, 0 telemetry events are "
            r"kept, the 8 MiB reserve is used up",
        ) as refused:
            await alarms_until_refused()
        assert refused.value.advice == f"free space on {tmp_path} (journalctl --vacuum-size, old logs)"
        assert (await outbox.counts())[Priority.TELEMETRY] == 0


async def test_old_status_and_telemetry_expire_alarms_stay(tmp_path: Path) -> None:
    old = FixedClock(datetime.now(UTC) - timedelta(days=3))
    async with Outbox(storage(tmp_path, max_age_days=2), STATION) as outbox:
        stale = [make(k, clock=old) for k in (EventKind.ACTIVITY, EventKind.TEST, EventKind.SOS)]
        fresh = make(EventKind.ACTIVITY)
        await outbox.append(*stale, fresh)
        await outbox._run(outbox._expire)
        assert await lane(outbox, Priority.TELEMETRY) == [fresh]
        assert await lane(outbox, Priority.STATUS) == []
        assert await lane(outbox, Priority.ALARM) == [stale[2]]


async def test_corrupt_file_is_moved_aside_and_readable_rows_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    events = [make(EventKind.TEST, n=n, pad="p" * 200) for n in range(400)]
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*events)
    data = bytearray(path.read_bytes())
    page = data.index(b'"n":200,') // 4096  # (the page that holds row 200, whatever the layout)
    data[page * 4096 : (page + 1) * 4096] = b"\xa5" * 4096  # one page of rows destroyed
    path.write_bytes(bytes(data))
    async with Outbox(storage(tmp_path), STATION) as outbox:
        assert outbox.salvage is not None
        assert outbox.salvage.moved_aside.read_bytes() == bytes(data)  # never deleted
        assert outbox.salvage.moved_aside.name.startswith("o.db.corrupt-")
        recovered = await lane(outbox, Priority.STATUS)
        assert 0 < outbox.salvage.salvaged == len(recovered) < len(events)
        assert all(e in events for e in recovered)
        await outbox.append(make(EventKind.SOS))
        assert (await outbox.counts())[Priority.ALARM] == 1


async def test_seqs_are_never_reused_after_the_table_empties(tmp_path: Path) -> None:
    """The uplink reads after a cursor: a reused seq below it would never be sent."""
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(make(EventKind.SOS), make(EventKind.SOS))
        first = await outbox.rows_after(Priority.ALARM, 0, 10)
        await outbox.ack(first)
        await outbox.append(make(EventKind.SOS))
        [again] = await outbox.rows_after(Priority.ALARM, first[-1].seq, 10)
        assert again.seq > first[-1].seq


async def test_closing_when_the_writer_is_woken_at_that_moment_does_not_hang(tmp_path: Path) -> None:
    """Regression: asyncio.wait_for (3.11) returned the woken result and swallowed the
    writer's cancellation, so closing the outbox (a clean stop of the daemon) hung."""
    outbox = Outbox(storage(tmp_path), STATION)
    await outbox.__aenter__()
    await outbox.append(make(EventKind.SOS))
    await asyncio.sleep(0.01)  # the writer is idle, waiting to be woken
    outbox._wakeup.set()  # an append's signal arrives in the same tick as the close
    closing = asyncio.create_task(outbox.__aexit__(None, None, None))
    done, _ = await asyncio.wait({closing}, timeout=10)  # a hang guard, not a speed limit
    assert done == {closing}, "closing the outbox hung"
    assert outbox._writer is not None
    assert outbox._writer.cancelled()


async def test_care_state_commits_with_the_events_and_survives_a_reopen(tmp_path: Path) -> None:
    async with Outbox(storage(tmp_path), STATION) as outbox:
        assert await outbox.load_state() == {}
        await outbox.append(make(EventKind.SOS, zone=3), state={"alarm:x": {"count": 1}, "activity:wang": 1.5})
        await outbox.append(state={"alarm:x": {"count": 2}, "test:rx:3": 7.0})  # state alone
        await outbox.append(state={"activity:wang": None})  # None deletes the key
    async with Outbox(storage(tmp_path), STATION) as outbox:
        assert await outbox.load_state() == {"alarm:x": {"count": 2}, "test:rx:3": 7.0}
        assert await outbox.counts() == {Priority.ALARM: 1, Priority.STATUS: 0, Priority.TELEMETRY: 0}


async def test_a_row_that_cannot_be_sent_is_quarantined_and_the_queue_goes_on(tmp_path: Path) -> None:
    """A non-UTF-8 row and a broken-JSON row (a damaged disk) are never published, never lost
    unseen: moved to the quarantine table with the reason; the good rows around them go out."""
    import sqlite3

    from gateway.events import Priority

    db = tmp_path / "o.db"
    clock = Clock("always")
    async with Outbox(StorageSection(path=db), "st") as outbox:
        for n in range(3):
            await outbox.append(new_event(clock, "st", "rx", EventKind.SOS, {"n": n}))
            await outbox.append(new_event(clock, "st", "radar", EventKind.ACTIVITY, {"n": n}))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE outbox SET payload = CAST(X'7B226964223AFF22' AS TEXT) WHERE seq = 1")  # not UTF-8
        conn.execute("UPDATE outbox SET payload = substr(payload, 1, 40) WHERE seq = 4")  # cut mid-JSON
        conn.execute("""UPDATE outbox SET payload = '{"kind":"sos"}' WHERE seq = 5""")  # JSON, but no id
    async with Outbox(StorageSection(path=db), "st") as outbox:
        alarms = await outbox.rows_after(Priority.ALARM, 0, 10)
        telemetry = await outbox.rows_after(Priority.TELEMETRY, 0, 10)
        assert [r.seq for r in alarms] == [3]
        assert [r.seq for r in telemetry] == [2, 6]
        assert outbox.quarantined == 3
        assert [(f["seq"], f["reason"]) for f in outbox.faults] == [
            (1, "not valid UTF-8 (invalid start byte at byte 6)"),
            (5, "no event id"),
            (4, "not valid JSON"),
        ]
        assert (await outbox.counts())[Priority.ALARM] == 1
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT seq, priority, reason FROM quarantine ORDER BY seq").fetchall()
        assert kept == [
            (1, 0, "not valid UTF-8 (invalid start byte at byte 6)"),
            (4, 2, "not valid JSON"),
            (5, 0, "no event id"),
        ]
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 3


async def test_telemetry_with_routine_care_state_never_holds_back_an_alarm_and_never_undoes_newer_state(
    tmp_path: Path,
) -> None:
    """Radar readings carry a resident's last activity (routine state): they wait in the
    ordinary queue. Appends with state that matters (a command nonce) jump the queue but are
    committed a few at a time, so an alarm behind them waits for at most MAX_URGENT_GROUP_EVENTS
    events; and a reading committed after a newer state overtook it does not write its older value."""
    from gateway.outbox import MAX_URGENT_GROUP_EVENTS

    clock = Clock()
    async with Outbox(storage(tmp_path), STATION) as outbox:
        finished: list[str] = []
        sizes: dict[str, int] = {}

        async def append(label: str, events: list[Event], state: dict[str, object]) -> None:
            before = outbox.commits
            await outbox.append(*events, state=state)  # type: ignore[arg-type]
            sizes[label] = outbox.commits - before
            finished.append(label)

        def reading(n: int) -> list[Event]:
            return [make(EventKind.ACTIVITY, "radar", clock, n=k) for k in range(10)]

        readings = [append(f"reading-{n}", reading(n), {"resident:wang": {"active_at": n}}) for n in range(300)]
        nonces = [
            append(f"nonce-{n}", [make(EventKind.TEST, "gw", clock) for _ in range(10)], {f"nonce:{n}": 1.0})
            for n in range(50)
        ]
        alarm = append("alarm", [make(EventKind.SOS, "rx", clock, zone=1)], {"resident:wang": {"active_at": 999}})
        await asyncio.gather(*readings, *nonces, alarm)
        assert finished.index("alarm") < 0.2 * len(finished), finished.index("alarm")  # ahead of the readings
        urgent_commits = sizes["alarm"]  # (commits while the alarm waited, its own included)
        assert urgent_commits >= 50 * 10 // MAX_URGENT_GROUP_EVENTS  # the nonces went a few at a time
        state = await outbox.load_state()
        assert state["resident:wang"] == {"active_at": 999}  # the readings' older values did not win
        assert len([k for k in state if k.startswith("nonce:")]) == 50


async def test_a_row_holding_two_json_values_is_quarantined_not_spliced_into_a_batch(tmp_path: Path) -> None:
    """A batch is checked as one JSON array of exactly as many elements as rows: a row that is
    two objects (a tampered file) would pass a check of the joined text, not this one."""
    async with Outbox(storage(tmp_path), STATION) as outbox:
        readings = [make(EventKind.ACTIVITY, device="radar", n=n) for n in range(5)]
        await outbox.append(*readings)
        forged = '{"id":"01KBDZ0000ABCDEFGH12345678","device_id":"radar","kind":"sos","clock_trusted":true,"data":{}}'
        with sqlite3.connect(tmp_path / "o.db") as conn:
            conn.execute("UPDATE outbox SET payload = payload || ',' || ? WHERE seq = 3", (forged,))
        rows = await outbox.rows_after(Priority.TELEMETRY, 0, 10)
        assert [r.seq for r in rows] == [1, 2, 4, 5]
        assert [(f["seq"], f["reason"]) for f in outbox.faults] == [(3, "not valid JSON")]
        assert all(json.loads(r.payload)["kind"] == "activity" for r in rows)


async def test_a_row_holding_the_batch_separator_is_quarantined_and_its_neighbours_sent(tmp_path: Path) -> None:
    """The reader joins a batch's payloads with \\x01, which no JSON text holds unescaped: a
    row holding one (a tampered file; here a whole event after it) never splits into two
    events; it is read again row by row and quarantined."""
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*(make(EventKind.ACTIVITY, device="radar", n=n) for n in range(5)))
        forged = '{"id":"01KBDZ0000ABCDEFGH12345678","device_id":"radar","kind":"sos","clock_trusted":true,"data":{}}'
        with sqlite3.connect(tmp_path / "o.db") as conn:
            conn.execute("UPDATE outbox SET payload = payload || char(1) || ? WHERE seq = 2", (forged,))
            conn.execute(
                "UPDATE outbox SET payload = replace(payload, '\"radar\"', '\"ra' || char(1) || 'dar\"') WHERE seq = 4"
            )
        rows = await outbox.rows_after(Priority.TELEMETRY, 0, 10)
        assert [r.seq for r in rows] == [1, 3, 5]
        assert [(f["seq"], f["reason"]) for f in outbox.faults] == [(2, "not valid JSON"), (4, "not valid JSON")]
        assert all(json.loads(r.payload)["device_id"] == "radar" for r in rows)


@contextlib.asynccontextmanager
async def outbox_thread_held(outbox: Outbox) -> AsyncIterator[None]:
    """The outbox thread busy (as in a long delete or commit) until the block ends."""
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(10)

    loop = asyncio.get_running_loop()
    held = loop.run_in_executor(outbox._executor, hold)
    await loop.run_in_executor(None, busy.wait, 5)
    try:
        yield
    finally:
        release.set()
        await held


async def test_a_row_whose_time_is_not_an_integer_is_sent_and_stops_nothing(tmp_path: Path) -> None:
    """created_ms is the row's time; a tampered file holding text or a real there must not
    stop the queue: the row goes out with the time it gives (1970 for text), the rest too."""
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*(make(EventKind.ACTIVITY, n=n) for n in range(3)))
        with sqlite3.connect(tmp_path / "o.db") as conn:
            conn.execute("UPDATE outbox SET created_ms = 'garbage' WHERE seq = 1")
            conn.execute("UPDATE outbox SET created_ms = 1796217787128.9 WHERE seq = 2")
        for read in (
            lambda: outbox.rows_after(Priority.TELEMETRY, 0, 10),
            lambda: outbox._run(lambda: outbox._select(Priority.TELEMETRY, 0, 10)),
        ):
            rows = await read()
            assert [r.seq for r in rows] == [1, 2, 3]
            assert [json.loads(r.payload)["ts"] for r in rows[:2]] == [
                "1970-01-01T00:00:00.000Z",
                "2026-12-02T13:23:07.128Z",
            ]


async def test_the_uplink_reads_while_the_outbox_thread_is_busy_writing(tmp_path: Path) -> None:
    """Reads have their own thread and connection (WAL readers never wait for the writer): a
    batch is read while a long delete or commit holds the outbox thread."""
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*(make(EventKind.ACTIVITY, n=n) for n in range(20)))
        async with outbox_thread_held(outbox):
            rows = await asyncio.wait_for(outbox.rows_after(Priority.TELEMETRY, 0, 10), 5)
        assert [r.seq for r in rows] == list(range(1, 11))


async def test_rows_whose_delete_is_being_written_are_not_read_again(tmp_path: Path) -> None:
    """The uplink publishes on while acknowledged rows wait for their delete (a slow commit);
    if it starts over meanwhile (a reconnect reads from the oldest row), those rows are not
    sent a second time, by either thread's read."""
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*(make(EventKind.ACTIVITY, n=n) for n in range(20)))
        rows = await outbox.rows_after(Priority.TELEMETRY, 0, 10)
        async with outbox_thread_held(outbox):
            acked = asyncio.create_task(outbox.ack(rows[:6]))
            await asyncio.sleep(0.05)
            assert not acked.done()  # (its delete waits for the outbox thread)
            again = await outbox.rows_after(Priority.TELEMETRY, 0, 10)  # the reader thread's read
            assert [r.seq for r in again] == list(range(7, 17))
            # the outbox thread's own read (called here while that thread is held: never at once)
            assert [r.seq for r in outbox._select(Priority.TELEMETRY, 0, 10)] == list(range(7, 17))
        await acked
        assert [r.seq for r in await outbox.rows_after(Priority.TELEMETRY, 0, 10)] == list(range(7, 17))
        assert not any(outbox._deleting.values())


async def test_an_alarm_being_deleted_leaves_the_telemetry_reads_of_a_backlog_alone(tmp_path: Path) -> None:
    """Rows being deleted are kept per class: an alarm acknowledged during a drain (its seq
    above the whole backlog's) does not make every telemetry read look for rows to leave out."""
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*(make(EventKind.ACTIVITY, n=n) for n in range(20)))
        await outbox.append(make(EventKind.SOS))
        telemetry = await outbox.rows_after(Priority.TELEMETRY, 0, 10)
        [alarm] = await outbox.rows_after(Priority.ALARM, 0, 10)
        async with outbox_thread_held(outbox):
            acks = asyncio.gather(outbox.ack(telemetry), outbox.ack([alarm]))
            await asyncio.sleep(0.05)
            assert outbox._deleting_after(Priority.TELEMETRY, telemetry[-1].seq) == set()
            assert outbox._deleting_after(Priority.ALARM, 0) == {alarm.seq}
            assert outbox._deleting_after(Priority.TELEMETRY, 0) == {r.seq for r in telemetry}
        await acks
        assert not any(outbox._deleting.values())


async def test_an_alarm_commit_waits_behind_one_part_of_a_backlogs_deletes_not_all(tmp_path: Path) -> None:
    """Acknowledgements that pile up while the outbox thread is busy are deleted MAX_ACK_ROWS at
    a time, each part handed to the outbox thread after the last: an alarm's commit is never
    queued behind more than one part of a backlog's deletes."""
    from gateway.outbox import MAX_ACK_ROWS

    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*(make(EventKind.ACTIVITY, n=n) for n in range(3 * MAX_ACK_ROWS)))
        rows = await outbox.rows_after(Priority.TELEMETRY, 0, 3 * MAX_ACK_ROWS)
        order: list[str] = []
        delete, commit = outbox._delete, outbox._commit

        def deleting(seqs: list[int], state: dict[str, object] | None = None) -> None:
            order.append(f"delete {len(seqs)}")
            delete(seqs, state)  # type: ignore[arg-type]

        def committing(events: list[Event], state: dict[str, object] | None = None) -> None:
            order.append("commit " + ",".join(e.kind.value for e in events))
            commit(events, state)  # type: ignore[arg-type]

        outbox._delete = deleting  # type: ignore[method-assign]
        outbox._commit = committing  # type: ignore[method-assign]
        async with outbox_thread_held(outbox):
            first = asyncio.create_task(outbox.ack(rows[:500]))  # (its delete waits: the others pile up)
            await asyncio.sleep(0.05)
            acks = [asyncio.create_task(outbox.ack(rows[i : i + 500])) for i in range(500, len(rows), 500)]
            await asyncio.sleep(0.05)
            alarm = asyncio.create_task(outbox.append(make(EventKind.SOS)))
            await asyncio.sleep(0.05)
        await asyncio.gather(first, *acks, alarm)
        assert order[:2] == ["delete 500", "commit sos"], order  # ahead of what piled up behind the first
        parts = [int(step.split()[1]) for step in order[2:]]
        assert parts == [MAX_ACK_ROWS, MAX_ACK_ROWS, len(rows) - 500 - 2 * MAX_ACK_ROWS], order
        assert await outbox.counts() == {Priority.ALARM: 1, Priority.STATUS: 0, Priority.TELEMETRY: 0}


async def test_a_batch_read_ahead_is_what_a_read_then_would_return(tmp_path: Path) -> None:
    """A full batch starts the read of the next one; rows committed meanwhile come after it,
    rows acknowledged meanwhile are before it, and a read from another cursor is read anew."""
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*(make(EventKind.ACTIVITY, n=n) for n in range(250)))
        first = await outbox.rows_after(Priority.TELEMETRY, 0, 100)
        assert outbox._read_ahead is not None
        assert outbox._read_ahead[0] == (Priority.TELEMETRY, 100, 100)
        await outbox.ack(first)
        await outbox.append(make(EventKind.SOS), *(make(EventKind.ACTIVITY, n=n) for n in range(250, 260)))
        second = await outbox.rows_after(Priority.TELEMETRY, first[-1].seq, 100)
        assert [r.seq for r in second] == list(range(101, 201))
        third = await outbox.rows_after(Priority.TELEMETRY, 150, 100)  # not the cursor read ahead for
        assert [r.seq for r in third] == [*range(151, 251), *range(252, 262)][:100]
        fresh = await outbox._run(lambda: outbox._select(Priority.TELEMETRY, 150, 100))
        assert third == fresh  # the reader's rows are the outbox thread's, byte for byte
        assert [r.seq for r in await outbox.rows_after(Priority.TELEMETRY, third[-1].seq, 100)] == [*range(252, 262)]
        assert outbox.reader_failures == 0  # (every read above was the reader thread's own)


async def test_acknowledgements_that_arrive_together_are_deleted_in_one_transaction(tmp_path: Path) -> None:
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*(make(EventKind.ACTIVITY, n=n) for n in range(400)))
        await outbox.append(make(EventKind.SOS))
        rows = await outbox.rows_after(Priority.TELEMETRY, 0, 1000)
        [alarm] = await outbox.rows_after(Priority.ALARM, 0, 10)
        batches = [rows[i : i + 50] for i in range(0, 400, 50)]
        transactions = 0
        delete = outbox._delete

        def counted(seqs: list[int], state: dict[str, object] | None = None) -> None:
            nonlocal transactions
            transactions += 1
            delete(seqs, state)  # type: ignore[arg-type]

        outbox._delete = counted  # type: ignore[method-assign]
        await asyncio.gather(
            *(outbox.ack(batch) for batch in batches[::2]),  # every other batch: ranges with gaps between
            outbox.ack([alarm], state={"alarm:a": {"delivered": True}}),
        )
        assert transactions <= 2  # the first alone, the others together while it was written
        left = await outbox.rows_after(Priority.TELEMETRY, 0, 1000)
        assert [r.seq for r in left] == [r.seq for batch in batches[1::2] for r in batch]
        assert await outbox.counts() == {Priority.ALARM: 0, Priority.STATUS: 0, Priority.TELEMETRY: 200}
        assert await outbox.load_state() == {"alarm:a": {"delivered": True}}
        await outbox.ack([rows[1], rows[3], rows[5]])  # (already deleted: nothing happens, nothing is counted twice)
        assert (await outbox.counts())[Priority.TELEMETRY] == 200


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=200))
def test_acknowledged_seqs_are_deleted_as_ranges_of_exactly_those_seqs(seqs: list[int]) -> None:
    runs, singles = _runs(seqs)
    covered = [seq for low, high in runs for seq in range(low, high + 1)] + singles
    assert sorted(covered) == sorted(set(seqs))  # the same rows: none more, none twice
    assert all(high - low + 1 >= RUN_MIN for low, high in runs)


async def test_the_published_ts_sqlite_puts_back_is_the_events_to_the_millisecond(tmp_path: Path) -> None:
    """ts is kept as created_ms and formatted again by SQLite on read: every millisecond digit,
    across a day and the turn of a year, must come back as the event's own ts."""
    start = datetime(2026, 12, 31, 12, tzinfo=UTC)
    step = 86_400_000 // 4_001  # a prime count of steps: every millisecond digit is hit
    events = [
        make(EventKind.ACTIVITY, clock=FixedClock(start + timedelta(milliseconds=k * step, microseconds=999)), k=k)
        for k in range(4_001)
    ]
    async with Outbox(storage(tmp_path), STATION) as outbox:
        await outbox.append(*events)
        rows = await outbox.rows_after(Priority.TELEMETRY, 0, 10_000)
    assert [json.loads(r.payload)["ts"] for r in rows] == [json.loads(e.to_json())["ts"] for e in events]
    assert [r.event_id for r in rows] == [e.id for e in events]
