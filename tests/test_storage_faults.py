"""Damaged outbox rows against a running station (issue 12): nothing poisons the pipe."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.clock import Clock
from gateway.config import StorageSection
from gateway.events import EventKind, new_event
from gateway.i18n import Message
from gateway.outbox import Outbox
from gateway.rules import EventDraft
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
        station.seeded += good  # (test data, not events the gateway made)
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


async def seeded_file(path: Path, count: int) -> list[str]:
    clock = Clock()
    events = [new_event(clock, STATION_ID, "rx", EventKind.SOS, {"n": n, "pad": "x" * 200}) for n in range(count)]
    async with Outbox(StorageSection(path=path), STATION_ID) as outbox:
        for start in range(0, count, 40):
            await outbox.append(*events[start : start + 40])
    return [e.id for e in events]


async def salvaged_ids(path: Path) -> tuple[int, set[str], str]:
    import json

    from gateway.events import Priority

    async with Outbox(StorageSection(path=path), STATION_ID) as outbox:
        assert outbox.salvage is not None
        rows = await outbox.rows_after(Priority.ALARM, 0, 100_000)
        return outbox.salvage.salvaged, {json.loads(r.payload)["id"] for r in rows}, str(outbox.salvage.moved_aside)


async def test_a_file_with_a_zeroed_header_is_salvaged_whole(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    ids = await seeded_file(db, 840)
    original = db.read_bytes()
    with db.open("r+b") as f:
        f.write(b"\0" * 100)  # the 100-byte database header is gone
    salvaged, found, aside = await salvaged_ids(db)
    assert salvaged == 840
    assert found == set(ids)
    assert Path(aside).read_bytes() == b"\0" * 100 + original[100:]  # the original is kept as it was


async def test_a_file_cut_in_half_gives_back_the_rows_it_still_holds(tmp_path: Path) -> None:
    import os

    db = tmp_path / "outbox.db"
    ids = await seeded_file(db, 840)
    os.truncate(db, db.stat().st_size // 2)
    salvaged, found, _ = await salvaged_ids(db)
    assert found <= set(ids)
    assert salvaged == len(found)
    assert salvaged >= 300  # about half of the rows were on the pages that are left


async def test_garbage_in_the_wal_is_kept_reported_and_its_events_recovered(tmp_path: Path) -> None:
    import json
    import shutil

    from gateway.events import Priority
    from gateway.outbox import inspect_wal

    live, crashed = tmp_path / "live", tmp_path / "crashed"
    live.mkdir()
    crashed.mkdir()
    clock = Clock()
    async with Outbox(StorageSection(path=live / "outbox.db"), STATION_ID) as outbox:
        for n in range(12):  # twelve commits, each fsynced into the WAL
            await outbox.append(new_event(clock, STATION_ID, "rx", EventKind.SOS, {"n": n}))
        for name in ("outbox.db", "outbox.db-wal"):  # the disk as a power cut leaves it
            shutil.copyfile(live / name, crashed / name)
    wal = crashed / "outbox.db-wal"
    assert inspect_wal(wal) is None  # a healthy WAL
    data = bytearray(wal.read_bytes())
    page = int.from_bytes(data[8:12], "big")
    third_frame = 32 + 2 * (24 + page)
    data[third_frame + 24 + 100 : third_frame + 24 + 200] = b"\xa5" * 100  # garbage in one frame's page
    wal.write_bytes(bytes(data))
    damage = inspect_wal(wal)
    assert damage is not None
    assert damage.bad_frame == 3
    assert damage.lost_commits >= 9
    plain = tmp_path / "plain"
    shutil.copytree(crashed, plain)
    with sqlite3.connect(plain / "outbox.db") as conn:  # what SQLite alone makes of it: not even the table
        tables = conn.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'outbox'").fetchone()[0]
    replayed_by_sqlite = 0
    assert tables == 0
    async with Outbox(StorageSection(path=crashed / "outbox.db"), STATION_ID) as reopened:
        [fault] = [f for f in reopened.faults if f["fault"] == "damaged_wal"]
        assert fault["lost_commits"] == damage.lost_commits
        kept = Path(str(fault["kept"]))
        assert kept.read_bytes() == bytes(data)  # the damaged log itself is kept
        # and replayed by hand: every committed event is back, once
        rows = await reopened.rows_after(Priority.ALARM, 0, 100)
        assert sorted(json.loads(r.payload)["data"]["n"] for r in rows) == list(range(12))
        assert fault["recovered_events"] == 12 - replayed_by_sqlite


async def test_a_full_outbox_does_not_take_a_device_task_down(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A radar's summaries and state changes that cannot be stored are logged; its task stays up."""
    import asyncio

    from gateway import serial_link
    from gateway.config import parse_config
    from gateway.outbox import OutboxFull
    from gateway.rules import StationLocation, rules_for

    raw = {
        "station": {"id": "st", "name": "s"},
        "uplink": {"host": "127.0.0.1"},
        "storage": {"path": "/tmp/unused.db"},
        "devices": [{"id": "radar-1", "kind": "mmwave_radar", "model": "mr60fda1", "port": "/dev/null"}],
    }
    [device] = parse_config(raw).devices

    async def full(*_: object) -> None:
        raise OutboxFull("the disk is full")

    rules = rules_for(device, StationLocation(None), 0.0)
    monkeypatch.setattr(rules, "on_tick", lambda now: [EventDraft(EventKind.ACTIVITY, {"summary": {}})])
    link = serial_link.SerialLink(device, serial_link.codec_for(device), rules, full, full)  # type: ignore[arg-type]
    monkeypatch.setattr(serial_link, "TICK_S", 0.01)
    ticking = asyncio.create_task(link._tick())
    await link._set_state(False, Message("unplugged"))
    await asyncio.sleep(0.1)
    assert not ticking.done()  # still running after several failed stores
    ticking.cancel()
    assert "device radar-1: a summary was not stored: the disk is full" in caplog.text
    assert "device radar-1: its state change was not stored: the disk is full" in caplog.text


def _zero_header(db: Path) -> None:
    with db.open("r+b") as f:
        f.write(b"\0" * 100)


def _cut_in_half(db: Path) -> None:
    import os

    os.truncate(db, db.stat().st_size // 2)


def _three_random_pages(db: Path) -> None:
    import random

    data = bytearray(db.read_bytes())
    pages = len(data) // 4096
    for page in random.Random(12).sample(range(2, pages), 3):
        data[page * 4096 : (page + 1) * 4096] = bytes(random.Random(page).randrange(256) for _ in range(4096))
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_zero_header, _cut_in_half, _three_random_pages], ids=lambda f: f.__name__[1:])
async def test_a_station_with_a_damaged_file_stays_up_and_delivers_every_row_it_could_read(
    tmp_path: Path, broker: Mosquitto, damage: object
) -> None:
    assert callable(damage)
    ids = await seeded_file(tmp_path / "outbox.db", 840)
    damage(tmp_path / "outbox.db")
    async with running_station(tmp_path, broker) as station:
        station.seeded += ids
        assert await wait_until(lambda: events_of(station, "storage_fault"))
        [fault] = events_of(station, "storage_fault")
        assert fault["data"]["fault"] == "corrupt_database"
        salvaged = fault["data"]["salvaged_events"]
        assert salvaged >= 300
        assert await wait_until(lambda: len(set(ids) & set(station.sink.events)) == salvaged)
        assert Path(fault["data"]["moved_aside"]).exists()  # the original is kept
        assert (await station.receiver.send(surgard_report(code=101, zone=3))).acked  # and the station goes on
        assert await wait_until(lambda: any(e["data"].get("zone") == 3 for e in events_of(station, "sos")))


async def test_a_station_with_garbage_in_its_wal_delivers_the_events_sqlite_would_drop(
    tmp_path: Path, broker: Mosquitto
) -> None:
    import shutil

    live = tmp_path / "live"
    live.mkdir()
    clock = Clock()
    ids = []
    async with Outbox(StorageSection(path=live / "outbox.db"), STATION_ID) as outbox:
        for n in range(12):
            event = new_event(clock, STATION_ID, "rx", EventKind.SOS, {"n": n})
            await outbox.append(event)
            ids.append(event.id)
        for name in ("outbox.db", "outbox.db-wal"):  # the disk as a power cut leaves it
            shutil.copyfile(live / name, tmp_path / name)
    wal = tmp_path / "outbox.db-wal"
    data = bytearray(wal.read_bytes())
    page = int.from_bytes(data[8:12], "big")
    frame = 32 + 4 * (24 + page)
    data[frame + 24 + 300 : frame + 24 + 400] = b"\x5a" * 100
    wal.write_bytes(bytes(data))
    async with running_station(tmp_path, broker) as station:
        station.seeded += ids
        assert await wait_until(lambda: set(ids) <= set(station.sink.events)), station.gateway.lines[-10:]
        assert await wait_until(lambda: events_of(station, "storage_fault"))  # (reported after the recovered alarms)
        [fault] = [e["data"] for e in events_of(station, "storage_fault")]
        assert (fault["fault"], fault["bad_frame"]) == ("damaged_wal", 5)
        assert fault["recovered_events"] >= 9
        assert Path(fault["kept"]).read_bytes() == bytes(data)


async def test_another_process_cannot_take_the_wal_index_from_under_the_daemon(tmp_path: Path) -> None:
    """SQLite marks the WAL index (-shm) as in use with a POSIX lock (byte 128, the "dead man
    switch"); closing any descriptor of that file in the daemon's process dropped it, and a
    reader in another process (care-gateway status, a backup) then truncated the index under
    the daemon's memory map: the daemon died of SIGBUS, with an alarm half-delivered."""
    import sys

    async with Outbox(StorageSection(path=tmp_path / "outbox.db"), STATION_ID) as outbox:
        await outbox.append(new_event(Clock(), STATION_ID, "rx", EventKind.SOS, {"zone": 1}))
        grab = (
            "import fcntl, os, sys\n"
            f"fd = os.open({str(tmp_path / 'outbox.db-shm')!r}, os.O_RDWR)\n"
            "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128, 0)\n"
            "except OSError:\n    sys.exit(0)\n"
            "sys.exit(1)  # taken: SQLite in the daemon would no longer be protected\n"
        )
        other = await asyncio.create_subprocess_exec(sys.executable, "-c", grab)
        assert await other.wait() == 0
