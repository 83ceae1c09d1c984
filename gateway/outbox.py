"""The outbox: the only SQLite user. An event is *accepted* once its row is committed here.

- WAL journal. Alarm and status events are committed with synchronous=FULL (the WAL is
  fsynced before `append` returns: they survive power loss, and devices are acknowledged
  only after that); a commit of telemetry alone uses synchronous=NORMAL (it survives a crash
  of the daemon; a power cut may lose the last moments of readings).
- Group commit: every `append` waiting at the same moment shares one transaction and one
  fsync, so many devices can be accepted at tens of thousands of events per second.
- The uplink reads each class's oldest rows after a cursor (index on priority, seq), a bounded
  batch at a time: a backlog of millions is never loaded into memory.
- Rows are deleted only by `ack`, which the uplink calls after the broker's PUBACK.
- Bounded in bytes: when full, the oldest telemetry is shed, then status, never alarms (they
  have a reserve and may exceed the bound). Every shed row is counted per device and class,
  in the database itself.
- A full disk (SQLITE_FULL) enters disk-full mode: what the disk holds is the bound, and a
  reserve file of real blocks (DiskReserve) is given back to the filesystem so that shedding
  deletes, checkpoints and alarms can still be written; it is made again when there is room.
  A full disk at start-up is waited out, never taken for corruption (docs/storage.md).
- A corrupt file found at start-up is moved aside (never deleted) and what can be read from
  it is salvaged into a new one; a damaged WAL is kept and replayed by hand.
- sqlite3 connections belong to one thread, so every write runs on one dedicated thread (the
  outbox thread). The uplink's reads run on a second thread with a read-only connection of
  their own (WAL readers never wait for the writer): a batch's rows are built while the last
  one's delete is written, and SQLite releases the GIL for both. A read that finds a row to
  quarantine, or a file opened read-only or being reopened, is done on the outbox thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import json
import logging
import math
import operator
import os
import shutil
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import repeat
from pathlib import Path
from typing import NamedTuple, TypeVar

import orjson
import sqlite_utils
from pydantic import JsonValue

from gateway.care_state import StateRows
from gateway.clock import read_boot_id
from gateway.config import StorageSection
from gateway.errors import GatewayError
from gateway.events import Event, Priority, counts_said
from gateway.i18n import _

__all__ = [
    "RETENTION_SWEEP_S",
    "WRITER_STALL_S",
    "WRITER_TICK_S",
    "DiskReserve",
    "Outbox",
    "OutboxFull",
    "OutboxRow",
    "OutboxSnapshot",
    "OutboxUnavailable",
    "OutboxView",
    "Salvage",
    "WalDamage",
    "WriterStopped",
    "boot_key",
    "inspect_wal",
    "peek",
    "row_bytes",
    "stored_form",
]

log = logging.getLogger("care_gateway.outbox")

T = TypeVar("T")
BUSY_TIMEOUT_S = 5.0  # another process (care-gateway status) may hold a read lock briefly
JOURNAL_SIZE_LIMIT_BYTES = 1024 * 1024  # truncate the -wal file to this after checkpoints
MAX_ACK_ROWS = 2000  # acknowledged rows deleted in one transaction (bounds an alarm's wait behind them)
WAL_AUTOCHECKPOINT_PAGES = 256  # checkpoint at 1 MiB of WAL (4 KiB pages): bounds what a full disk must absorb
SHM_PREALLOCATE_BYTES = 128 * 1024  # the WAL index's real blocks (its mmap must never touch a hole: SIGBUS)
MIN_FREE_TO_OPEN_BYTES = 64 * 1024  # below this SQLite's first mapping of the WAL index may hit a hole: not opened
SPACE_MARGIN_BYTES = 1024 * 1024  # free space beyond the reserve before the outbox leaves disk-full mode
SPACE_CHECK_S = 1.0  # how often the writer looks at the disk (a statvfs call, only in disk-full mode)
REOPEN_S = 5.0  # how often an outbox that could not be opened (disk full) is tried again
ROW_OVERHEAD_BYTES = 24  # rowid, record header, the other columns: added to the payload for the byte bound
MAX_GROUP_EVENTS = 1000  # most events in one group commit (bounds the wait of the next alarm)
RUN_MIN = 8  # consecutive acknowledged seqs deleted as one range (fewer go in the list)
MAX_URGENT_GROUP_EVENTS = 64  # most events in one commit of the urgent queue: an alarm waits behind few
# care-state rows that change with telemetry (a resident's last activity, a device's supervision):
# on their own they neither jump the queue nor need a full sync (the next full sync covers them;
# a power cut loses seconds of "last seen", never an alarm, an SMS record or a replay cache)
ROUTINE_STATE_PREFIXES = ("resident:", "device:")
STATE_ARRIVALS_KEPT = 10_000
DISK_FULL_SHED_ROWS = 500  # rows shed at once when the disk itself is full (and the sweep's batch)
RETENTION_SWEEP_S = 60.0  # how often rows past max_age_days are looked for
WRITER_TICK_S = 5.0  # the writer looks around at least this often (its heartbeat)
WRITER_STALL_S = 60.0  # appends waiting this long with no commit: the writer is stuck (watchdog)
WRITER_RESTART_S = 1.0  # pause before the writer goes on after an unexpected failure
SHED_LOG_INTERVAL_S = 60.0  # at most one "shed" log line per interval (with the totals)
MIN_ROW_BYTES = 16  # no outbox row takes less room on disk (bounds the seqs of a truncated file)
SALVAGE_STEP_ROWS = 1000  # a corrupt file is read in seq ranges of this size, skipping bad ones
SQLITE_IOERR = 10
SQLITE_FULL = 13
SCHEMA_VERSION = 2  # 2: boot and mono_ms columns (clock re-basing)
_PRIORITY_OF_RANK = {p.rank: p for p in Priority}
_ALARM = Priority.ALARM
# SQL: the device of a row, or NULL for a row that is not JSON (json_extract would raise)
DEVICE_OF_ROW = "CASE WHEN json_valid(payload) THEN json_extract(payload, '$.device_id') END"
# A stored row is the event's JSON with "id" first (stored_form): checked once in SQL (json_valid,
# in C) and by its first bytes; its bytes are decoded as UTF-8 in Python
# SQL: a row's created_ms as an integer whatever the file holds (a tampered text or real would
# otherwise stop every read of the queue: the row is sent with the time it gives, 1970 for text)
CREATED_MS = "CAST(created_ms AS INTEGER)"
ID_PREFIX = '{"id":"'
ID_END = len(ID_PREFIX) + 26  # where the id's closing quote is
_ID_AT, _TS_AT = len(ID_PREFIX), ID_END + 2  # where the id starts; where ts goes in the published form

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- acceptance order; never reused (the uplink reads after a cursor)
    priority INTEGER NOT NULL,        -- Priority.rank: 0 alarm, 1 status, 2 telemetry
    created_ms INTEGER NOT NULL,      -- wall clock at acceptance, for ages and retention
    payload TEXT NOT NULL,            -- the event as JSON, without station_id and priority (added on read)
    boot INTEGER,                     -- the boot the event was accepted in (boot_key of /proc boot_id)
    mono_ms INTEGER                   -- monotonic clock at acceptance, ms: re-bases an unsynchronised ts
);
-- alarms and status have their own small indexes; telemetry, nearly every row of a backlog, is
-- read in rowid order (seq), which costs no index entry: about 15 bytes less on disk per event.
-- Their WHERE must appear literally in a query to be used (see _lane).
CREATE INDEX IF NOT EXISTS outbox_alarm ON outbox (seq) WHERE priority = 0;
CREATE INDEX IF NOT EXISTS outbox_status ON outbox (seq) WHERE priority = 1;
DROP INDEX IF EXISTS outbox_lane;
CREATE TABLE IF NOT EXISTS care_state (  -- what the care rules must remember across restarts
    key TEXT PRIMARY KEY,             -- e.g. 'alarm:<id>', 'activity:<resident>', 'test:<button>'
    value TEXT NOT NULL               -- JSON
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (  -- rows that cannot be sent: kept for a person to look at
    seq INTEGER PRIMARY KEY,          -- the row's seq in the outbox
    priority INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    payload BLOB,                     -- as it was stored, byte for byte
    reason TEXT NOT NULL,             -- what was wrong with it
    quarantined_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shed (
    device_id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (device_id, priority)
) WITHOUT ROWID;
"""


_Item = tuple[int, int, str, int, Event]  # a row to insert: rank, created_ms, payload, bytes, the event
# events of one append() call, the care state written with them, and the caller's waiter
_Append = tuple[tuple[Event, ...], "asyncio.Future[None]", "StateRows | None", int]  # (..., arrival number)


class OutboxUnavailable(GatewayError):
    """The database cannot be opened; the message says what to check on site."""


class WriterStopped(GatewayError):
    """The outbox's writer task has ended: no event can be accepted until the daemon restarts."""


class OutboxFull(GatewayError):
    """The disk is full and nothing is left to shed (or the outbox could not be opened for
    want of space): the event was not accepted."""


class _NoRoom(Exception):
    """The database cannot be opened or written for want of disk space (or an I/O error)."""


class DiskReserve:
    """A file of real blocks beside the outbox, given back to the filesystem when the disk is
    full: in WAL mode even the delete that sheds telemetry, the checkpoint and the WAL index
    need free space, and alarms need a place. Made again once the disk has room."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.held = False

    def look(self) -> None:
        try:
            self.held = self.path.stat().st_size >= self.size
        except OSError:
            self.held = False

    def free_bytes(self) -> int:
        return free_bytes(self.path.parent)

    def make(self) -> bool:
        """Hold the reserve if the disk has room for it and a margin; True when held."""
        if self.held:
            return True
        if self.free_bytes() < self.size + SPACE_MARGIN_BYTES:
            return False
        part = self.path.with_name(self.path.name + ".new")
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self.size)
                except OSError as exc:  # a filesystem without fallocate: real zeros
                    if exc.errno == errno.ENOSPC:
                        raise
                    block = bytes(65536)
                    for _ in range(0, self.size, len(block)):
                        os.write(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(part, self.path)
        except OSError as exc:
            log.warning(_("the disk reserve %s could not be made (%s); trying again later"), self.path, exc)
            part.unlink(missing_ok=True)
            return False
        self.held = True
        return True

    def release(self) -> int:
        """Give the reserve back to the filesystem; the bytes released."""
        if not self.held:
            return 0
        self.path.unlink(missing_ok=True)
        self.held = False
        return self.size


class OutboxRow(NamedTuple):
    """One row to send (a tuple: made for every row the drain reads, 0.6 µs cheaper than a
    frozen dataclass)."""

    seq: int
    priority: Priority
    created_ms: int
    payload: str  # the event as published (JSON)
    event_id: str  # its id (checked when the row was read), for the acks of alarms


@dataclass(frozen=True)
class Salvage:
    """What start-up found: a corrupt file moved aside, and how many events were recovered."""

    moved_aside: Path
    reason: str
    salvaged: int
    rejected: int = 0  # rows read but not events (torn, not JSON, no id): counted, not copied


@dataclass
class OutboxSnapshot:
    rows: dict[Priority, int]
    bytes: dict[Priority, int]
    oldest_created_ms: int | None
    shed: dict[str, dict[str, int]]  # device id -> class -> rows shed since the database was created
    max_bytes: int
    disk_full_errors: int
    disk: dict[str, JsonValue] = field(default_factory=dict)  # the reserve, disk-full mode, rows not yet deleted


@dataclass
class _Tally:
    """Rows and bytes per class, kept in step with the table (no COUNT(*) scans)."""

    rows: dict[Priority, int] = field(default_factory=lambda: dict.fromkeys(Priority, 0))
    bytes: dict[Priority, int] = field(default_factory=lambda: dict.fromkeys(Priority, 0))

    def add(self, priority: Priority, size: int, n: int = 1) -> None:
        self.rows[priority] += n
        self.bytes[priority] += size

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


def _urgent_state(state: StateRows | None) -> bool:
    """Care state that must be on disk before the append returns, ahead of telemetry: any row
    but the routine ones (alarms, SMS records, BLE counters, command nonces, buttons)."""
    return state is not None and any(not row.startswith(ROUTINE_STATE_PREFIXES) for row in state)


def _leading(queue: list[_Append], max_events: int) -> tuple[list[_Append], list[_Append]]:
    """The first appends of a queue holding at most max_events events (at least one append), and the rest."""
    taken = events = 0
    while taken < len(queue) and (taken == 0 or events + len(queue[taken][0]) <= max_events):
        events += len(queue[taken][0])
        taken += 1
    return queue[:taken], queue[taken:]


def _starts_as_event(stored: str) -> bool:
    """'{"id":"<26>",': a stored row's first bytes, checked before it is published."""
    return stored.startswith(ID_PREFIX) and stored.startswith('",', ID_END)


def _runs(seqs: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """The seqs as ranges of consecutive numbers (each at least RUN_MIN long) and the others:
    exactly the same set, so a range never takes a row that was not acknowledged."""
    ordered = sorted(set(seqs))
    if len(ordered) >= RUN_MIN and ordered[-1] - ordered[0] + 1 == len(ordered):
        return [(ordered[0], ordered[-1])], []  # (the usual batch of a backlog: one range)
    runs: list[tuple[int, int]] = []
    singles: list[int] = []
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            if i - start >= RUN_MIN:
                runs.append((ordered[start], ordered[i - 1]))
            else:
                singles += ordered[start:i]
            start = i
    return runs, singles


def row_bytes(stored: str) -> int:
    return (len(stored) if stored.isascii() else len(stored.encode())) + ROW_OVERHEAD_BYTES


def _rank_of(item: _Item) -> int:
    return item[0]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def created_ms(event: Event) -> int:
    """The event's `ts` in whole milliseconds (the wire's precision), exactly (no float)."""
    return (event.ts - _EPOCH) // _MS


def stored_form(event: Event) -> str:
    """The event JSON without what the row already knows: station_id, priority, and `ts`
    (created_ms; put back on read, see _Rfc3339Ms). About 90 bytes less a row. orjson: 0.3 µs
    against 1.9 µs for pydantic's serializer on the ingest path (docs/performance.md)."""
    return orjson.dumps(
        {
            "id": event.id,
            "device_id": event.device_id,
            "kind": event.kind,
            "clock_trusted": event.clock_trusted,
            "data": event.data,
        },
        default=_unserialisable,
    ).decode()


def _unserialisable(value: object) -> str:
    """A value JSON has no form for (a builder's mistake, check_data names it): its text, so
    that the event is still stored rather than lost."""
    return repr(value)


class _Rfc3339Ms:
    """created_ms as the wire's `ts` (2026-11-23T08:30:15.123Z); the text up to the second is
    remembered (`second_ms`, `second_text`), since a backlog's rows come a thousand to the
    second: a row then costs a subtraction and a lookup in MILLIS (see Outbox._wire_rows)."""

    MILLIS = tuple(f"{ms:03d}Z" for ms in range(1000))

    def __init__(self) -> None:
        self.second_ms = -(1 << 62)  # the start of the remembered second, in ms
        self.second_text = ""

    def seek(self, ms: int) -> None:
        """Remember the second that holds ms."""
        second = ms // 1000
        try:
            self.second_text = f"{datetime.fromtimestamp(second, UTC):%Y-%m-%dT%H:%M:%S}."
        except (OverflowError, OSError, ValueError):  # (a row whose created_ms was tampered with)
            self.second_text = "1970-01-01T00:00:00."
        self.second_ms = second * 1000

    def __call__(self, ms: int) -> str:
        if not 0 <= ms - self.second_ms < 1000:
            self.seek(ms)
        return self.second_text + self.MILLIS[ms - self.second_ms]


class Outbox:
    """Durable, priority-ordered, bounded queue of events waiting for the broker's PUBACK."""

    def __init__(self, storage: StorageSection, station_id: str, boot_id: str | None = None) -> None:
        self.storage = storage
        self.boot = boot_key(boot_id or read_boot_id())
        self.path = storage.path
        self._station_prefix = '{"station_id":' + json.dumps(station_id) + ',"priority":"'
        self._ts_of = _Rfc3339Ms()  # (outbox thread only)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        # the uplink's reads (see module doc); the reader thread's own connection and clock text
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-read")
        self._read_conn: sqlite3.Connection | None = None
        self._read_beside: sqlite_utils.Database | None = None  # the writer's database it was opened with
        self._read_ts_of = _Rfc3339Ms()
        self.reader_failures = 0  # reads the reader thread handed to the outbox thread after an SQLite error
        # the read a draining backlog asks for next, started as the last one returned (see rows_after)
        self._read_ahead: tuple[tuple[Priority, int, int], concurrent.futures.Future[list[OutboxRow] | None]] | None
        self._read_ahead = None
        self._db: sqlite_utils.Database | None = None
        self._shm_fd: int | None = None  # the WAL index, held open while SQLite maps it (see _preallocate_wal_index)
        self._tally = _Tally()  # touched on the outbox thread only
        self._shed: dict[tuple[str, Priority], int] = {}
        self._shed_unlogged: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self._last_shed_log = 0.0
        self._last_sweep = 0.0
        self._sync_mode = ""
        self.disk_full_errors = 0
        self.sweep_errors = 0
        self.quarantined = 0  # rows moved to the quarantine table by this run
        # storage faults for the station to report (storage_fault events); appended on the outbox thread
        self.faults: list[dict[str, JsonValue]] = []
        self._committing = False  # a group is being written (for stalled_s)
        self.writer_alive_at = time.monotonic()
        self.newest_ms: int | None = None  # the latest event time ever committed here (bounds the platform's time)
        self.commits = 0  # group commits of appended events (fewer than appends under load)
        self.salvage: Salvage | None = None  # set when a corrupt file was found at start-up
        self.reserve = DiskReserve(Path(f"{self.path}.reserve"), storage.disk_reserve_bytes)
        # disk-full mode: the bytes of events this disk was found to hold; status and telemetry
        # then only replace older ones of their kind (alarms still go in, into the reserve)
        self._disk_cap: int | None = None
        self._wal_fault: dict[str, JsonValue] = {}
        self.read_only = False  # opened read-only on a full disk: its rows are sent, nothing is written
        self.not_open: str | None = None  # why the database could not be opened (the disk is full): retried
        self._open_tried = 0.0
        self._space_checked = 0.0
        # rows the broker acknowledged whose delete did not fit on the full disk (never re-sent),
        # the care state that went with them, and bad rows that could not be moved to quarantine
        self._acked_unsaved: set[int] = set()
        self._state_unsaved: dict[str, JsonValue | None] = {}
        self._bad_unsaved: set[int] = set()
        self._urgent: list[_Append] = []  # appends carrying an alarm: committed first
        self._pending: list[_Append] = []  # the others, in arrival order
        self._arrivals = 0
        # care-state row -> arrival number of the append whose value of it was committed last: an
        # older append committed later (the urgent queue overtakes) must not write an older value
        self._state_arrival: dict[str, int] = {}
        self._acks: list[tuple[list[int], StateRows | None, asyncio.Future[None]]] = []  # waiting to be deleted
        # rows acknowledged whose delete is not committed yet, per class: never read again
        # meanwhile (the uplink starting over after a reconnect must not send them twice); the
        # highest of each class (a read after it has nothing to leave out: a draining backlog)
        self._deleting: dict[Priority, set[int]] = {p: set() for p in Priority}
        self._deleting_max: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self._ack_writer: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        bulk = asyncio.Event()
        self._arrived = {Priority.ALARM: asyncio.Event(), Priority.STATUS: bulk, Priority.TELEMETRY: bulk}
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Outbox:
        await self._run(self._open_or_wait)
        self._writer = asyncio.create_task(self._write_groups(), name="outbox-writer")
        self._writer.add_done_callback(self._writer_ended)
        return self

    def _writer_ended(self, writer: asyncio.Task[None]) -> None:
        """Every append still waiting gets its answer: the writer is gone."""
        why = "the outbox closed" if writer.cancelled() else f"the outbox writer stopped ({writer.exception()!r})"
        for _events, future, _changes, _arrival in self._urgent + self._pending:
            if not future.done():
                future.set_exception(WriterStopped(f"{why} before the event was committed"))
        self._urgent, self._pending = [], []

    async def __aexit__(self, *exc: object) -> None:
        if self._ack_writer:  # (acknowledged rows are deleted before the file is closed)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._ack_writer
        if self._writer:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a failed writer was reported
                await self._writer
        for _events, future, _changes, _arrival in self._urgent + self._pending:
            if not future.done():
                future.set_exception(OutboxUnavailable(_("the outbox closed before the event was committed")))
        await asyncio.get_running_loop().run_in_executor(self._reader, self._close_reader)
        self._reader.shutdown(wait=True)
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # --- the async API -----------------------------------------------------------------------

    async def append(self, *events: Event, state: StateRows | None = None) -> None:
        """Commit the events, and the care state that goes with them, in one transaction; when
        this returns they are accepted (durable, see module doc).

        Appends carrying an alarm or care state are committed in arrival order ahead of the
        others, with full durability (so the state is never older on disk than in memory).
        Raises OutboxFull when the disk is full and nothing can be shed to make room.
        """
        if self._writer is None or self._writer.done():
            raise WriterStopped(f"the outbox writer stopped ({self.writer_failure!r})")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arrivals += 1
        urgent = state is not None and _urgent_state(state)
        for e in events:  # (not any(): a generator costs more than the test, for one event a call)
            if e.priority is _ALARM:
                urgent = True
                break
        if urgent:
            self._urgent.append((events, future, state, self._arrivals))
        else:
            self._pending.append((events, future, state, self._arrivals))
        self._wakeup.set()
        await future

    async def rows_after(self, priority: Priority, after_seq: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` of the class's oldest rows with seq > after_seq (the uplink's cursor)."""
        ahead, self._read_ahead = self._read_ahead, None
        if ahead is not None and ahead[0] == (priority, after_seq, limit):
            rows = await asyncio.wrap_future(ahead[1])
        else:
            rows = await asyncio.get_running_loop().run_in_executor(
                self._reader, self._read, priority, after_seq, limit
            )
        if rows is None:  # (seldom) on the outbox thread, which can quarantine
            return await self._run(lambda: self._select(priority, after_seq, limit))
        if len(rows) == limit and priority is not _ALARM:
            # a backlog: the next batch is read while this one is published. Rows are only ever
            # added after the last seq, so it holds what a read then would (rows shed meanwhile
            # are sent all the same, harmlessly); a caller asking for another cursor reads anew
            following = (priority, rows[-1].seq, limit)
            self._read_ahead = (following, self._reader.submit(self._read, *following))
        return rows

    def holds(self, priority: Priority) -> bool:
        """Whether the class has rows (the tally, kept in step with the table by every commit
        and delete before it returns): the uplink asks before reading an empty class."""
        return self._tally.rows[priority] > 0

    async def ack(self, rows: Iterable[OutboxRow], state: StateRows | None = None) -> None:
        """Delete rows the broker has acknowledged (PUBACK received), and write the care state
        that says so (alarms now "delivered") in the same transaction.

        Acks that arrive while a delete is being written wait for it and then go together, in
        one transaction (a draining backlog's PUBACKs come several at a time): fewer commits and
        hand-offs to the outbox thread, and longer ranges. State rows are merged in arrival order.
        """
        rows = rows if isinstance(rows, list) else list(rows)
        batch = [row.seq for row in rows]
        if not (batch or state):
            return
        classes: set[Priority] = set(map(operator.itemgetter(1), rows))
        for priority in classes:  # (one, for a batch of the uplink's)
            seqs = batch if len(classes) == 1 else [row.seq for row in rows if row.priority is priority]
            self._deleting[priority].update(seqs)
            self._deleting_max[priority] = max(self._deleting_max[priority], max(seqs))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks.append((batch, state, future))
        if self._ack_writer is None or self._ack_writer.done():
            self._ack_writer = asyncio.create_task(self._write_acks(), name="outbox-acks")
        await future

    async def _write_acks(self) -> None:
        while self._acks:
            # at most MAX_ACK_ROWS a transaction: an alarm's commit, queued on the outbox thread
            # meanwhile, goes before the next part of a draining backlog's deletes
            taken = rows = 0
            while taken < len(self._acks) and (taken == 0 or rows + len(self._acks[taken][0]) <= MAX_ACK_ROWS):
                rows += len(self._acks[taken][0])
                taken += 1
            acks, self._acks = self._acks[:taken], self._acks[taken:]
            seqs = [seq for batch, _, _ in acks for seq in batch]
            state: dict[str, JsonValue | None] = {}
            for _seqs, changes, _future in acks:
                state.update(changes or {})
            try:
                try:
                    await self._run(functools.partial(self._delete, seqs, state or None))
                finally:  # deleted (or kept as acked_unsaved on a full disk); failed: sent again, harmless
                    for priority, pending in self._deleting.items():
                        pending.difference_update(seqs)
                        if not pending:
                            self._deleting_max[priority] = 0
            except Exception as exc:
                for _seqs, _changes, future in acks:
                    if not future.done():
                        future.set_exception(exc)
            except BaseException:  # (cancelled: the outbox is closing)
                for _seqs, _changes, future in acks:
                    future.cancel()
                raise
            else:
                for _seqs, _changes, future in acks:
                    if not future.done():
                        future.set_result(None)

    async def wait_for_new(self, priority: Priority, timeout: float) -> None:
        """Return when rows of the class (alarm; or status/telemetry) were committed, or after timeout."""
        arrived = self._arrived[priority]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: in 3.11 it can swallow a cancellation
                await arrived.wait()
        arrived.clear()

    async def counts(self) -> dict[Priority, int]:
        """Rows waiting per class."""
        return await self._run(lambda: dict(self._tally.rows))

    async def rebase(self, offset_ms: int) -> int:
        """The clock is now good: give this boot's unsynchronised events their true time
        (monotonic time at acceptance + `offset_ms`, the now-trusted wall minus monotonic).
        Each keeps its old time as data.ts_unsynced. Returns how many were re-based."""
        return await self._run(lambda: self._rebase(offset_ms))

    async def load_state(self) -> dict[str, JsonValue]:
        """The care state as last committed (see append)."""
        return await self._run(self._read_state)

    async def snapshot(self) -> OutboxSnapshot:
        return await self._run(self._snapshot)

    # --- group commit --------------------------------------------------------------------------

    @property
    def _disk_needs_care(self) -> bool:
        """Something for _look_after_disk to do (else the writer does not even look)."""
        return (
            self._db is None
            or self.read_only
            or bool(self._acked_unsaved or self._state_unsaved)
            or not self.reserve.held
            or self._disk_cap is not None
        )

    def stalled_s(self, now: float) -> float | None:
        """Seconds the writer has been stuck (appends waiting, nothing committed), or dead; else None."""
        if self._writer is not None and self._writer.done():
            return math.inf
        waiting = self._urgent or self._pending or self._committing
        silent = now - self.writer_alive_at
        return silent if waiting and silent > WRITER_STALL_S else None

    @property
    def writer_failure(self) -> BaseException | None:
        """Why the writer task ended, if it did (it only ends when the outbox closes)."""
        if self._writer is None or not self._writer.done() or self._writer.cancelled():
            return None
        return self._writer.exception() or RuntimeError("the outbox writer returned")

    async def _write_groups(self) -> None:
        """The one writer; an unexpected failure is logged and the writer goes on after a pause
        (every append still gets its answer: committed, or the error)."""
        while True:
            try:
                await self._write_forever()
            except Exception:
                log.exception(_("outbox writer failed unexpectedly; it starts again in %.0f s"), WRITER_RESTART_S)
                await asyncio.sleep(WRITER_RESTART_S)

    async def _write_forever(self) -> None:
        """Commits whatever appends are waiting, as one transaction; sweeps old rows now and then."""
        while True:
            self.writer_alive_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WRITER_TICK_S):  # (wait_for could swallow our cancellation)
                    await self._wakeup.wait()
            self._wakeup.clear()
            while self._urgent or self._pending:
                group = self._next_group()
                events = [e for batch, _, _, _ in group for e in batch]
                state, newest = self._state_of(group)
                self._committing = True
                try:
                    await self._run(functools.partial(self._commit, events, state))
                except BaseException as exc:  # the group's appends get the error (closing: WriterStopped)
                    failure = exc if isinstance(exc, Exception) else WriterStopped("the outbox closed mid-commit")
                    for _events, future, _changes, _arrival in group:
                        if not future.done():
                            future.set_exception(failure)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                finally:
                    self._committing = False
                self._state_arrival.update(newest)
                for _events, future, _changes, _arrival in group:
                    if not future.done():
                        future.set_result(None)
                for priority in {e.priority for e in events}:
                    self._arrived[priority].set()
                self.writer_alive_at = time.monotonic()
            if self._disk_needs_care and time.monotonic() - self._space_checked >= SPACE_CHECK_S:
                self._space_checked = time.monotonic()
                try:
                    await self._run(self._look_after_disk)
                except (sqlite3.Error, OSError) as exc:
                    log.error(_("outbox %s: looking after the full disk failed (%s); trying again"), self.path, exc)
            if self.storage.max_age_days and time.monotonic() - self._last_sweep > RETENTION_SWEEP_S:
                self._last_sweep = time.monotonic()
                try:
                    await self._run(self._expire)
                except (sqlite3.Error, OSError) as exc:  # like any write error: logged, counted, tried again later
                    if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL:
                        self.disk_full_errors += 1
                    self.sweep_errors += 1
                    log.error(
                        _(
                            "outbox %s: removing events older than %d days failed (%s); new events are still "
                            "accepted, the sweep runs again in %.0f s"
                        ),
                        self.path,
                        self.storage.max_age_days,
                        exc,
                        RETENTION_SWEEP_S,
                    )

    def _state_of(self, group: list[_Append]) -> tuple[StateRows, dict[str, int]]:
        """The care state a group writes: for each row the value of its latest append, unless a
        later append's value of it is already on disk."""
        state: dict[str, JsonValue | None] = {}
        newest: dict[str, int] = {}
        if not any(append[2] for append in group):
            return state, newest
        for _events, _future, changes, arrival in sorted(group, key=lambda append: append[3]):
            for row, value in (changes or {}).items():
                if self._state_arrival.get(row, 0) < arrival:
                    state[row], newest[row] = value, arrival
        if len(self._state_arrival) > STATE_ARRIVALS_KEPT:  # forget what no waiting append can undercut
            oldest = min((a[3] for a in self._urgent + self._pending), default=self._arrivals)
            self._state_arrival = {row: n for row, n in self._state_arrival.items() if n >= oldest}
        return state, newest

    def _next_group(self) -> list[_Append]:
        """Appends carrying an alarm or state that matters go first, in arrival order (their state
        rows may follow one another), up to MAX_URGENT_GROUP_EVENTS events; then the oldest
        others, up to MAX_GROUP_EVENTS."""
        if self._urgent:
            group, self._urgent = _leading(self._urgent, MAX_URGENT_GROUP_EVENTS)
            return group
        group, self._pending = _leading(self._pending, MAX_GROUP_EVENTS)
        return group

    # --- runs on the outbox thread -------------------------------------------------------

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RuntimeError("outbox used outside 'async with'")
        return self._db

    def _connect(self, path: Path) -> sqlite_utils.Database:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        db = sqlite_utils.Database(conn)
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only effective before the first table
            db.enable_wal()
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        self._sync_mode = ""
        return db

    def _open_or_wait(self) -> None:
        """Open the database; when the disk is too full even for that, stay up without it
        (appends refused with OutboxFull, nothing to send) and try again every REOPEN_S."""
        self._open_tried = time.monotonic()
        if self.read_only:  # try to open it for writing again
            self._close()
            self.read_only = False
        try:
            self._open()
        except _NoRoom as exc:
            first = self.not_open is None
            if first:
                log.error(
                    _(
                        "outbox %s cannot be opened: %s (%d bytes free on %s); no event is accepted until there is "
                        "room: free space there (journalctl --vacuum-size, old logs); trying again every %.0f s"
                    ),
                    self.path,
                    exc,
                    self._free_bytes(),
                    self.path.parent,
                    REOPEN_S,
                )
            self.not_open = str(exc)
            self._open_read_only(announce=first)
            return
        if self.not_open is not None:
            log.warning(_("outbox %s opened: the disk has room again"), self.path)
            self.faults.append({"fault": "disk_full_at_start", "detail": self.not_open})
        self.not_open = None

    def _open_read_only(self, announce: bool) -> None:
        """On a disk too full to open the database for writing: read it as it is, without the
        WAL index (immutable), so that the backlog still goes out; what is delivered is deleted
        once it can be opened for writing. Not possible with a WAL that holds transactions (they
        are in no file SQLite could read without its index): then nothing is sent until then."""
        wal = Path(f"{self.path}-wal")
        try:
            if not self.path.exists() or (wal.exists() and wal.stat().st_size > 0):
                return
            conn = sqlite3.connect(f"file:{self.path}?immutable=1", uri=True, check_same_thread=False)
        except (OSError, sqlite3.Error):
            return
        try:
            db = sqlite_utils.Database(conn)
            self._load_counts(db)
        except sqlite3.Error:
            conn.close()
            return
        self._db, self.read_only = db, True
        if not announce:
            return
        log.warning(
            _(
                "outbox %s opened read-only: its %d waiting events are sent, no new event is accepted until "
                "there is room"
            ),
            self.path,
            sum(self._tally.rows.values()),
        )

    def _load_counts(self, db: sqlite_utils.Database) -> None:
        """The tally, shed counts and newest time of what the file holds."""
        self._tally = _Tally()
        for rank, n, size in db.execute(
            "SELECT priority, count(*), sum(length(CAST(payload AS BLOB))) FROM outbox GROUP BY priority"
        ):
            self._tally.add(_PRIORITY_OF_RANK[rank], size + n * ROW_OVERHEAD_BYTES, n)
        for device_id, rank, count in db.execute("SELECT device_id, priority, count FROM shed"):
            self._shed[(device_id, _PRIORITY_OF_RANK[rank])] = count
        newest = db.execute("SELECT max(created_ms) FROM outbox").fetchone()[0]
        self.newest_ms = int(newest) if newest else None

    def _free_bytes(self) -> int:
        try:
            return self.reserve.free_bytes()
        except OSError:
            return -1

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._advice(exc) from exc
        self.reserve.look()
        released = False
        if self.reserve.held and self._free_bytes() < SPACE_MARGIN_BYTES:
            released = self._give_up_reserve("the disk is full at start-up", "the outbox can be opened")
        shm = Path(f"{self.path}-shm")
        shm_blocks = shm.stat().st_blocks * 512 if shm.exists() else 0  # SQLite truncates it when it opens
        if self._free_bytes() + shm_blocks < MIN_FREE_TO_OPEN_BYTES:
            # SQLite would extend the WAL index by one byte per 4 KiB and map it: on a filesystem of
            # 1 KiB blocks the rest are holes, and touching one on a full disk is SIGBUS, not an error
            raise _NoRoom(
                f"less than {MIN_FREE_TO_OPEN_BYTES // 1024} KiB free, too little to open the database safely"
            )
        try:
            self._open_database()
        except (sqlite3.Error, OSError) as exc:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.conn.close()
                self._db = None
            self._release_wal_index()
            if not _for_want_of_space(exc):
                raise
            if self._give_up_reserve(f"the outbox cannot be opened ({exc})", "it can be opened"):
                self._open()
                self._disk_cap = self._tally.total_bytes
                return
            raise _NoRoom(str(exc)) from exc
        self._preallocate_wal_index()
        if released:  # disk-full mode from the start: the reserve's room is for alarms
            self._disk_cap = self._tally.total_bytes
        elif not self.reserve.held:
            self.reserve.make()

    def _preallocate_wal_index(self) -> None:
        """Give the -shm file (the WAL index, memory-mapped by SQLite) real blocks: SQLite writes
        one byte per 4 KiB, which on a filesystem of 1 KiB blocks leaves holes, and touching a
        hole through the map on a full disk is SIGBUS, not an error.

        The descriptor stays open until SQLite's connection is closed (`_release_wal_index`):
        closing any descriptor of a file drops every POSIX lock the process holds on it,
        SQLite's own among them, and a reader in another process (`care-gateway status`, a
        backup) would then take the WAL index for unused, truncate it under the daemon's map,
        and the daemon would die of SIGBUS."""
        if self._shm_fd is not None:
            return
        with contextlib.suppress(OSError):
            fd = os.open(f"{self.path}-shm", os.O_RDWR)
            self._shm_fd = fd
            os.posix_fallocate(fd, 0, SHM_PREALLOCATE_BYTES)

    def _release_wal_index(self) -> None:
        """After SQLite's connection is closed: the descriptor of _preallocate_wal_index goes."""
        if self._shm_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._shm_fd)
            self._shm_fd = None

    def _open_database(self) -> None:
        replayed = self._keep_a_damaged_wal()  # before SQLite reads the WAL (and drops what follows a bad frame)
        try:
            db = self._connect(self.path)
            try:
                verdict = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
            except sqlite3.Error:
                db.conn.close()
                raise
            if verdict != ["ok"]:
                db.conn.close()
                raise sqlite3.DatabaseError("; ".join(verdict[:3]))
        except sqlite3.DatabaseError as exc:
            if _for_want_of_space(exc):
                raise
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                raise self._advice(exc) from exc
            db = self._move_aside_and_recreate(exc)
        except OSError as exc:
            if _for_want_of_space(exc):
                raise
            raise self._advice(exc) from exc
        self._db = db
        db.executescript(SCHEMA)
        if replayed is not None:
            self._recover_lost_commits(replayed)
        columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
        for column in ("boot", "mono_ms"):  # a version 1 database: rows without them are never re-based
            if column not in columns:
                db.execute(f"ALTER TABLE outbox ADD COLUMN {column} INTEGER")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if self.salvage:
            self._import_salvage()
        self._load_counts(db)

    def _keep_a_damaged_wal(self) -> Path | None:
        """SQLite replays the WAL up to its first bad frame and silently ignores the rest, even
        transactions committed after it. Such a WAL is copied aside (kept), and replayed by hand
        into a copy of the database, whose rows the outbox lacks are recovered once it is open
        (_recover_lost_commits). Returns that copy."""
        wal = Path(f"{self.path}-wal")
        try:
            damage = inspect_wal(wal)
        except OSError:
            return None
        if damage is None:
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = wal.with_name(f"{wal.name}.damaged-{stamp}")
        replayed = self.path.with_name(f"{self.path.name}.replayed-{stamp}")
        try:
            shutil.copyfile(wal, kept)
            _replay_wal(self.path, kept, damage.bad_frame, replayed)
        except OSError:  # (the disk is full: tried again once there is room; SQLite has not read it)
            kept.unlink(missing_ok=True)
            replayed.unlink(missing_ok=True)
            raise
        log.error(
            _(
                "outbox %s: its write-ahead log is damaged at frame %d; SQLite would drop the %d committed "
                "transaction(s) after it; the log is kept as %s and its frames are replayed by hand to recover them"
            ),
            self.path,
            damage.bad_frame,
            damage.lost_commits,
            kept,
        )
        self._wal_fault = {
            "fault": "damaged_wal",
            "bad_frame": damage.bad_frame,
            "lost_commits": damage.lost_commits,
            "lost_frames": damage.lost_frames,
            "kept": str(kept),
        }
        return replayed

    def _recover_lost_commits(self, replayed: Path) -> None:
        """Rows of the hand-replayed copy newer than any the outbox has ever had: the events of
        the transactions SQLite dropped. Whatever cannot be read is reported with the counts."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        floor = int(row[0]) if row else 0
        recovered = rejected = 0
        try:
            recovered, rejected = self._copy_rows_from(replayed, floor)
        except (sqlite3.Error, OSError) as exc:
            log.error(_("outbox %s: the damaged write-ahead log could not be replayed: %s"), self.path, exc)
        finally:
            replayed.unlink(missing_ok=True)
            replayed.with_name(replayed.name + ".header-mended").unlink(missing_ok=True)
        log.warning(_("outbox %s: %d events recovered from the damaged write-ahead log"), self.path, recovered)
        self.faults.append({**self._wal_fault, "recovered_events": recovered, "rejected_rows": rejected})

    def _advice(self, exc: Exception) -> OutboxUnavailable:
        return OutboxUnavailable(
            _("cannot open the outbox {path}: {reason}").format(path=self.path, reason=exc),
            _("check that {folder} exists, is writable by the service user and that the disk is mounted").format(
                folder=self.path.parent
            ),
        )

    def _free_space_advice(self) -> str:
        return _("free space on {folder} (journalctl --vacuum-size, old logs)").format(folder=self.path.parent)

    def _move_aside_and_recreate(self, exc: Exception) -> sqlite_utils.Database:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        log.error(_("outbox %s is corrupt (%s); moving it aside to %s and starting a new one"), self.path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.rename(Path(f"{aside}{suffix}"))
        self.salvage = Salvage(moved_aside=aside, reason=str(exc), salvaged=0)
        return self._connect(self.path)

    def _import_salvage(self) -> None:
        """Copy every row still readable in the file moved aside into the new outbox."""
        assert self.salvage is not None
        try:
            salvaged, rejected = self._copy_rows_from(self.salvage.moved_aside, 0)
        except sqlite3.Error as exc:
            log.error(_("nothing could be salvaged from %s: %s"), self.salvage.moved_aside, exc)
            return
        self.salvage = Salvage(self.salvage.moved_aside, self.salvage.reason, salvaged, rejected)
        log.warning(_("salvaged %d events from the corrupt outbox %s"), salvaged, self.salvage.moved_aside)

    def _copy_rows_from(self, path: Path, after_seq: int) -> tuple[int, int]:
        """Copy every readable event row with seq > after_seq of a damaged file into the outbox;
        returns (rows copied, rows read that were not events)."""
        copied = rejected = 0
        old = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        with contextlib.closing(old):
            old = _readable(old, path)
            # the highest seq, or (its pages lost: a truncated file) as many as the file could hold
            last_seq = _last_seq(old) or after_seq + path.stat().st_size // MIN_ROW_BYTES
            log.warning(_("reading rows %d..%d from %s"), after_seq + 1, last_seq, path)
            for low in range(after_seq, last_seq, SALVAGE_STEP_ROWS):
                rows = _readable_rows(old, low, low + SALVAGE_STEP_ROWS)
                good = [r for r in rows if _is_event_json(r[2])]
                rejected += len(rows) - len(good)
                if good:
                    with self._transaction() as conn:
                        conn.executemany("INSERT INTO outbox (priority, created_ms, payload) VALUES (?, ?, ?)", good)
                    copied += len(good)
        return copied, rejected

    def _close(self) -> None:
        if self._db is not None:
            if not self.read_only:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.conn.close()
            self._db = None
        self._release_wal_index()

    def _set_sync(self, mode: str) -> None:
        if mode != self._sync_mode:
            self.db.execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One explicit transaction (the connection is in autocommit mode otherwise)."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")  # under synchronous=FULL the WAL is fsynced here
        except BaseException:
            if conn.in_transaction:  # SQLITE_FULL may already have rolled it back
                conn.execute("ROLLBACK")
            raise

    def _commit(self, events: list[Event], state: StateRows | None = None) -> None:
        """Insert a group of events, making room first; shed what cannot be kept."""
        if self._db is None or self.read_only:
            if time.monotonic() - self._open_tried >= 1.0:
                self._open_or_wait()
            if self._db is None or self.read_only:
                text = (
                    _("outbox {path} is read-only ({reason}): the event was not accepted")
                    if self.read_only
                    else _("outbox {path} is not open ({reason}): the event was not accepted")
                )
                raise OutboxFull(text.format(path=self.path, reason=self.not_open), self._free_space_advice())
        durable = _urgent_state(state) or any(e.priority is not Priority.TELEMETRY for e in events)
        self._set_sync("FULL" if durable else "NORMAL")
        items: list[_Item] = []
        for e in events:
            stored = stored_form(e)
            items.append((e.priority.rank, created_ms(e), stored, row_bytes(stored), e))
        items.sort(key=_rank_of)  # stable: arrival order kept within a class
        while True:
            tally = _Tally()
            shed: list[tuple[str, Priority]] = []
            keep: list[_Item] = []
            try:
                with self._transaction() as conn:
                    keep = self._make_room(conn, items, tally, shed)
                    mono_ms = int(time.monotonic() * 1000)  # the events were stamped a few ms ago at most
                    conn.executemany(
                        "INSERT INTO outbox (priority, created_ms, payload, boot, mono_ms) VALUES (?, ?, ?, ?, ?)",
                        [(*item[:3], self.boot, mono_ms) for item in keep],
                    )
                    self._record_shed(conn, shed)
                    if state:
                        _write_state(conn, state)
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != SQLITE_FULL:
                    raise
                if not self._on_full_disk(exc, any(item[4].priority is Priority.ALARM for item in items)):
                    rows = self._tally.rows
                    text = (
                        _(
                            "outbox {path}: the disk is full and nothing more can be freed: {kept} events are kept, "
                            "the {reserve} MiB reserve is held"
                        )
                        if self.reserve.held
                        else _(
                            "outbox {path}: the disk is full and nothing more can be freed: {kept} events are kept, "
                            "the {reserve} MiB reserve is used up"
                        )
                    )
                    kept = counts_said(rows)
                    raise OutboxFull(
                        text.format(path=self.path, kept=kept, reserve=self.reserve.size // 2**20),
                        self._free_space_advice(),
                    ) from exc
                continue
            self.commits += 1
            if keep:
                self.newest_ms = max(self.newest_ms or 0, max(item[1] for item in keep))
            for rank, _created, _seq, size, _extra in keep:
                tally.add(_PRIORITY_OF_RANK[rank], size)
            for priority in Priority:
                self._tally.add(priority, tally.bytes[priority], tally.rows[priority])
            self._apply_shed(shed)
            return

    def _make_room(
        self,
        conn: sqlite3.Connection,
        items: list[_Item],
        freed: _Tally,
        shed: list[tuple[str, Priority]],
    ) -> list[_Item]:
        """Evict old rows so that the items fit under max_bytes; return the items to insert.

        Telemetry evicts telemetry; status evicts telemetry, then status; alarms evict both
        and may also use the reserve, or go over the bound (an alarm is never refused a place).
        In disk-full mode the bound is what the disk holds: telemetry only replaces telemetry,
        status may take a quarter of the disk reserve once no telemetry is left, alarms the rest.
        """
        cap = self.storage.max_bytes
        bulk_cap = cap - self.storage.reserve_bytes
        status_cap = bulk_cap
        if self._disk_cap is not None:
            cap = min(cap, self._disk_cap)
            status_cap = min(bulk_cap, self._disk_cap + self.reserve.size // 4)
            bulk_cap = min(bulk_cap, self._disk_cap)
        total = self._tally.total_bytes
        if total + sum(item[3] for item in items) <= bulk_cap:
            return items  # the usual case: room for everything
        steps = {  # per class: (victim, evict down to) in turn, then the bound the newcomer must fit
            Priority.TELEMETRY: ([(Priority.TELEMETRY, bulk_cap)], bulk_cap),
            Priority.STATUS: ([(Priority.TELEMETRY, bulk_cap), (Priority.STATUS, status_cap)], status_cap),
            Priority.ALARM: ([(Priority.TELEMETRY, cap), (Priority.STATUS, max(cap, status_cap))], cap),
        }
        keep = []
        for item in items:
            size, event = item[3], item[4]
            evictions, limit = steps[event.priority]
            for victim, down_to in evictions:
                while total + size > down_to:
                    have = self._tally.rows[victim] + freed.rows[victim]
                    if have <= 0:
                        break
                    average = max(1, (self._tally.bytes[victim] + freed.bytes[victim]) // have)
                    n, size_freed = self._evict(conn, victim, -(-(total + size - down_to) // average), shed)
                    if n == 0:
                        break
                    freed.add(victim, -size_freed, -n)
                    total -= size_freed
            if total + size <= limit or event.priority is Priority.ALARM:
                keep.append(item)
                total += size
            else:
                shed.append((event.device_id, event.priority))  # no room even after shedding
        return keep

    def _evict(
        self, conn: sqlite3.Connection, priority: Priority, n: int, shed: list[tuple[str, Priority]]
    ) -> tuple[int, int]:
        """Delete the class's n oldest rows; return (rows, bytes) freed."""
        gone = conn.execute(
            f"DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE {_lane(priority)} ORDER BY seq LIMIT ?) "
            f"RETURNING {DEVICE_OF_ROW}, length(CAST(payload AS BLOB))",
            (max(1, n),),
        ).fetchall()
        shed.extend((device_id or "?", priority) for device_id, _ in gone)
        return len(gone), sum(size + ROW_OVERHEAD_BYTES for _, size in gone)

    def _on_full_disk(self, exc: Exception, alarms: bool) -> bool:
        """SQLITE_FULL: enter disk-full mode, shed the oldest telemetry, else status (with the
        reserve's room if the delete itself cannot be written); with nothing left to shed, an
        alarm gets the reserve. True when the commit may be tried again."""
        self.disk_full_errors += 1
        if self._disk_cap is None:
            log.error(
                _(
                    "outbox %s: the disk is full (%s) at %.1f MB of events; until it has room again, status and "
                    "telemetry only replace the oldest of their kind and alarms are always kept"
                ),
                self.path,
                exc,
                self._tally.total_bytes / 1e6,
            )
            self.faults.append(
                {"fault": "disk_full", "free_bytes": self._free_bytes(), "events": sum(self._tally.rows.values())}
            )
        for priority in (Priority.TELEMETRY, Priority.STATUS):
            if self._tally.rows[priority] == 0:
                continue
            for attempt in range(3):
                shed: list[tuple[str, Priority]] = []
                try:
                    with self._transaction() as conn:
                        n, size = self._evict(conn, priority, DISK_FULL_SHED_ROWS, shed)
                        self._record_shed(conn, shed)
                    break
                except sqlite3.OperationalError as delete_failed:
                    if attempt == 2 or not self._find_room(
                        f"shedding {priority.value} failed ({delete_failed})", "the oldest events can be shed"
                    ):
                        log.error(
                            _(
                                "outbox %s: the disk is full and even shedding %s events failed (%s); the disk reserve "
                                "is used up"
                            ),
                            self.path,
                            priority.value,
                            delete_failed,
                        )
                        return False
            self._tally.add(priority, -size, -n)
            self._disk_cap = self._tally.total_bytes  # what this disk holds, now with room for the event
            self._apply_shed(shed)
            log.error(
                _("outbox %s: the disk is full; shed the %d oldest %s events to make room"),
                self.path,
                n,
                priority.value,
            )
            return n > 0
        if alarms and self._give_up_reserve("only alarms are left in the outbox", "the alarm can be kept"):
            self._disk_cap = self._tally.total_bytes
            return True
        self._disk_cap = self._tally.total_bytes
        return False

    def _find_room(self, why: str, so_that: str) -> bool:
        """A write that must succeed (a shedding delete, the delete of delivered rows) failed for
        want of space: release the reserve, or with none left, checkpoint and restart the WAL
        so that it is written from its start again (its blocks are the outbox's already, so a
        delete then needs no new ones). True if the write is worth trying again."""
        if self._give_up_reserve(why, so_that):
            return True
        try:
            busy = self.db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
        except sqlite3.Error:
            return False
        return bool(busy == 0)

    def _give_up_reserve(self, why: str, so_that: str) -> bool:
        """Release the disk reserve (if still held) so that `so_that`; True if it was released."""
        released = self.reserve.release()
        if not released:
            return False
        log.error(
            _(
                "outbox %s: %s: the %d MiB disk reserve %s was given back to the filesystem so that %s; it is made "
                "again once %s has room"
            ),
            self.path,
            why,
            released // 2**20,
            self.reserve.path,
            so_that,
            self.path.parent,
        )
        self.faults.append({"fault": "disk_reserve_used", "why": why, "bytes": released})
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):  # lets the next write start the WAL from its beginning
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return True

    def _look_after_disk(self) -> None:
        """Every SPACE_CHECK_S: open an outbox that could not be; delete what the broker
        acknowledged while the disk was full; make the reserve again and leave disk-full mode
        once the disk has room (giving the outbox's free pages back first if they make it)."""
        if self._db is None or self.read_only:
            if time.monotonic() - self._open_tried >= REOPEN_S:
                self._open_or_wait()
            return
        if self._acked_unsaved or self._state_unsaved:
            self._delete([])
        if self.reserve.held and self._disk_cap is None:
            return
        if not self.reserve.held:
            want = self.reserve.size + SPACE_MARGIN_BYTES
            free = self._free_bytes()
            if free < want:
                page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
                free_pages = self.db.execute("PRAGMA freelist_count").fetchone()[0]
                if free + free_pages * page_size < want:
                    return
                self._set_sync("NORMAL")
                self.db.execute(f"PRAGMA incremental_vacuum({free_pages})")  # the file gives its free pages back
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if not self.reserve.make():
                return
            log.warning(
                _("outbox %s: the disk has room again; the %d MiB reserve is held again"),
                self.path,
                self.reserve.size // 2**20,
            )
        if self._disk_cap is not None and self._free_bytes() >= SPACE_MARGIN_BYTES:
            log.warning(_("outbox %s: the disk has room again: events are kept as usual"), self.path)
            self.faults.append({"fault": "disk_space_back", "free_bytes": self._free_bytes()})
            self._disk_cap = None

    def _record_shed(self, conn: sqlite3.Connection, shed: list[tuple[str, Priority]]) -> None:
        counts: dict[tuple[str, Priority], int] = {}
        for key in shed:
            counts[key] = counts.get(key, 0) + 1
        conn.executemany(
            "INSERT INTO shed (device_id, priority, count) VALUES (?, ?, ?) "
            "ON CONFLICT (device_id, priority) DO UPDATE SET count = count + excluded.count",
            [(device_id, priority.rank, n) for (device_id, priority), n in counts.items()],
        )

    def _apply_shed(self, shed: list[tuple[str, Priority]]) -> None:
        for key in shed:
            self._shed[key] = self._shed.get(key, 0) + 1
            self._shed_unlogged[key[1]] += 1
        now = time.monotonic()
        if any(self._shed_unlogged.values()) and now - self._last_shed_log >= SHED_LOG_INTERVAL_S:
            self._last_shed_log = now
            log.warning(
                _(
                    "outbox full (%.1f of %.1f MB%s): shed %s since the last report (oldest first; alarms are never "
                    "shed); totals per device: %s"
                ),
                self._tally.total_bytes / 1e6,
                self.storage.max_bytes / 1e6,
                "" if self._disk_cap is None else f", the disk is full at {self._disk_cap / 1e6:.1f} MB",
                counts_said(self._shed_unlogged, skip_zero=True),
                self._shed_by_device(),
            )
            self._shed_unlogged = dict.fromkeys(Priority, 0)

    def _shed_by_device(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (device_id, priority), n in sorted(self._shed.items(), key=lambda kv: (kv[0][0], kv[0][1].rank)):
            out.setdefault(device_id, {})[priority.value] = n
        return out

    def _expire(self) -> None:
        """Shed status and telemetry older than max_age_days (alarms are kept)."""
        assert self.storage.max_age_days
        if self._db is None or self.read_only:
            return
        cutoff_ms = int((time.time() - self.storage.max_age_days * 86400) * 1000)
        self._set_sync("NORMAL")
        for priority in (Priority.TELEMETRY, Priority.STATUS):
            while True:
                shed: list[tuple[str, Priority]] = []
                with self._transaction() as conn:
                    gone = conn.execute(  # the oldest rows by seq, of which those past the cutoff
                        f"DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE {_lane(priority)} "
                        "ORDER BY seq LIMIT ?) AND created_ms < ? "
                        f"RETURNING {DEVICE_OF_ROW}, length(CAST(payload AS BLOB))",
                        (DISK_FULL_SHED_ROWS, cutoff_ms),
                    ).fetchall()
                    shed = [(device_id or "?", priority) for device_id, _ in gone]
                    self._record_shed(conn, shed)
                self._tally.add(priority, -sum(s + ROW_OVERHEAD_BYTES for _, s in gone), -len(gone))
                self._apply_shed(shed)
                if len(gone) < DISK_FULL_SHED_ROWS:
                    break

    def _read(self, priority: Priority, after_seq: int, limit: int) -> list[OutboxRow] | None:
        """_select on the reader thread, or None: the outbox thread must do it (a row to
        quarantine, a file open read-only or not at all, the file reopened meanwhile)."""
        beside = self._db
        if beside is None or self.read_only:
            return None
        try:
            if self._read_beside is not beside:  # (first read, or the outbox thread opened the file again)
                self._close_reader()
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
                self._read_conn, self._read_beside = conn, beside
            assert self._read_conn is not None
            if self._acked_unsaved or self._bad_unsaved:  # (a full disk) rows to skip: the outbox thread's read
                return None
            # (the uplink started over) rows whose delete is being written are not read again
            deleting = self._deleting_after(priority, after_seq)
            # the batch as three columns of one row, built in SQLite's C with the GIL released
            # (a row each costs a GIL hand-over and three objects): the seqs and times as JSON
            # arrays, the payloads joined by \x01, which no JSON text holds unescaped
            [(seqs, times, joined)] = self._read_conn.execute(
                "SELECT json_group_array(seq), json_group_array(created_ms), group_concat(payload, char(1)) FROM "
                f"(SELECT seq, {CREATED_MS} AS created_ms, payload FROM outbox WHERE {_lane(priority)} AND seq > ? "
                "ORDER BY seq LIMIT ?)",
                (after_seq, limit + len(deleting)),
            ).fetchall()
            if joined is None:
                return []
            seq_list, time_list, texts = orjson.loads(seqs), orjson.loads(times), joined.split("\x01")
            if not (len(texts) == len(seq_list) and all(map(operator.lt, seq_list, seq_list[1:]))):
                return None  # (a payload holding \x01; rows not in seq order) row by row on the outbox thread
            out = self._wire_rows(self._read_conn, priority, seq_list, time_list, texts, self._read_ts_of)
            if deleting and out is not None:
                out = [row for row in out if row.seq not in deleting][:limit]
        except sqlite3.Error as exc:  # the outbox thread reads it again, and reports what it finds
            self.reader_failures += 1
            (log.warning if self.reader_failures == 1 else log.debug)(
                "outbox %s: a read on the reader's own connection failed (%s); this batch is read on the outbox "
                "thread (slower, nothing is lost)",
                self.path,
                exc,
            )
            self._close_reader()
            return None
        return out if self._db is beside else None

    def _deleting_after(self, priority: Priority, after_seq: int) -> set[int]:
        """The class's rows after the cursor whose delete is being written (empty at once for
        a draining backlog, whose acknowledged rows are all before its cursor). The set is
        copied in one C call: safe on the reader thread while the event loop adds to it."""
        if self._deleting_max[priority] <= after_seq:
            return set()
        return {seq for seq in set(self._deleting[priority]) if seq > after_seq}

    def _close_reader(self) -> None:
        """(reader thread)"""
        if self._read_conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._read_conn.close()
        self._read_conn = self._read_beside = None

    def _fetch(
        self, conn: sqlite3.Connection, priority: Priority, after_seq: int, limit: int
    ) -> list[tuple[int, int, bytes]]:
        """The class's next rows after the cursor, without those acknowledged (or found bad)
        whose delete did not fit on a full disk, and those whose delete is being written."""
        skip = self._acked_unsaved | self._bad_unsaved
        skip |= self._deleting_after(priority, after_seq)
        rows: list[tuple[int, int, bytes]] = conn.execute(
            f"SELECT seq, {CREATED_MS}, CAST(payload AS BLOB) FROM outbox WHERE {_lane(priority)} AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (after_seq, limit + len(skip)),
        ).fetchall()
        if skip:
            rows = [row for row in rows if row[0] not in skip]
        del rows[limit:]
        return rows

    def _select(self, priority: Priority, after_seq: int, limit: int) -> list[OutboxRow]:
        """The rows to send; a row that cannot be (not UTF-8, not JSON, no id) is quarantined.
        Rows acknowledged (or found bad) whose delete did not fit on a full disk are skipped."""
        if self._db is None:
            return []
        rows = self._fetch(self.db.conn, priority, after_seq, limit)
        try:
            texts = [raw.decode() for _, _, raw in rows]
        except UnicodeDecodeError:
            return self._select_one_by_one(priority, rows)
        seqs, times = [row[0] for row in rows], [row[1] for row in rows]
        out = self._wire_rows(self.db.conn, priority, seqs, times, texts, self._ts_of)
        if out is None:  # (seldom: some row is not an event) each row on its own, the bad ones quarantined
            return self._select_one_by_one(priority, rows)
        return out

    def _wire_rows(
        self,
        conn: sqlite3.Connection,
        priority: Priority,
        seqs: list[int],
        times: list[int],
        texts: list[str],
        ts_of: _Rfc3339Ms,
    ) -> list[OutboxRow] | None:
        """The rows as published (station_id, priority and ts put back: see stored_form) if
        every one is an event's JSON object, else None. Each row must start '{"id":"<26>",', and
        the rows joined as one JSON array must parse (in SQLite's C: a fifth of the time of
        json_valid row by row) with exactly as many elements as rows, so that no row can be two
        values or a part of one. ts_of is the calling thread's own. (A hot path: each step is
        one C-level pass over the batch, not a Python loop with a branch a row: 2.9 -> 1.0 µs a row.)"""
        if not texts:
            return []
        if not (
            all(map(str.startswith, texts, repeat(ID_PREFIX)))
            and all(map(str.startswith, texts, repeat('",'), repeat(ID_END)))
        ):  # (_starts_as_event, over the batch)
            return None
        joined = ",".join(texts)
        try:
            [(elements,)] = conn.execute("SELECT json_array_length(?)", (f"[{joined}]",)).fetchall()
        except sqlite3.OperationalError:  # malformed JSON
            return None
        if elements != len(texts):
            return None
        prefix = f'{self._station_prefix}{priority.value}",'
        low, high = min(times), max(times)
        if not ts_of.second_ms <= low <= high < ts_of.second_ms + 1000:
            ts_of.seek(low)
        if high < ts_of.second_ms + 1000:  # (a backlog: rows a thousand to the second) one second's text
            second, second_ms, millis = ts_of.second_text, ts_of.second_ms, _Rfc3339Ms.MILLIS
            stamps = [second + millis[ms - second_ms] for ms in times]
        else:
            stamps = list(map(ts_of, times))
        wires = [
            f'{prefix}{stored[1:_TS_AT]}"ts":"{ts}",{stored[_TS_AT:]}' for stored, ts in zip(texts, stamps, strict=True)
        ]
        if '"ts":"' in joined:  # rows stored by an earlier release hold their ts: sent as they are
            wires = [
                prefix + stored[1:] if stored.startswith('"ts":"', _TS_AT) else wire
                for stored, wire in zip(texts, wires, strict=True)
            ]
        ids = [stored[_ID_AT:ID_END] for stored in texts]
        # (tuple.__new__ mapped in C: what OutboxRow(...) does, without a Python call a row)
        return list(map(tuple.__new__, repeat(OutboxRow), zip(seqs, repeat(priority), times, wires, ids, strict=False)))

    def _select_one_by_one(self, priority: Priority, rows: list[tuple[int, int, bytes]]) -> list[OutboxRow]:
        out: list[OutboxRow] = []
        bad: list[tuple[int, int, bytes, str]] = []
        for seq, created_ms, raw in rows:
            try:
                stored = raw.decode()
            except UnicodeDecodeError as exc:
                bad.append((seq, created_ms, raw, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"))
                continue
            [(valid,)] = self.db.execute("SELECT json_valid(?)", (stored,)).fetchall()
            if not valid:
                bad.append((seq, created_ms, raw, "not valid JSON"))
            elif not _starts_as_event(stored):
                bad.append((seq, created_ms, raw, "no event id"))
            else:
                out.extend(self._wire_rows(self.db.conn, priority, [seq], [created_ms], [stored], self._ts_of) or [])
        if bad:
            self._quarantine(priority, bad)
        return out

    def _quarantine(self, priority: Priority, bad: list[tuple[int, int, bytes, str]]) -> None:
        """Move rows that cannot be sent out of the queue, keeping them (and why) for a person."""
        now_ms = int(time.time() * 1000)
        try:
            if self.read_only:
                raise sqlite3.OperationalError("the outbox is read-only (the disk is full)")
            with self._transaction() as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO quarantine (seq, priority, created_ms, payload, reason, quarantined_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(seq, priority.rank, created_ms, raw, why, now_ms) for seq, created_ms, raw, why in bad],
                )
                conn.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _, _, _ in bad])
        except sqlite3.OperationalError as exc:  # a full disk: the rows stay where they are, skipped
            if not (self.read_only or _for_want_of_space(exc)):
                raise
            self.disk_full_errors += 1
            self._bad_unsaved.update(seq for seq, _, _, _ in bad)
        else:
            self._tally.add(priority, -sum(len(raw) + ROW_OVERHEAD_BYTES for _, _, raw, _ in bad), -len(bad))
        for seq, _priority, raw, why in bad:
            self.quarantined += 1
            log.error(
                _("outbox %s: row %d (%s) cannot be sent: %s; moved to the quarantine table, the queue goes on"),
                self.path,
                seq,
                priority.value,
                why,
            )
            self.faults.append(
                {"fault": "bad_row", "seq": seq, "class": priority.value, "reason": why, "bytes": len(raw)}
            )

    def _delete(self, seqs: list[int], state: StateRows | None = None) -> None:
        """Delete acknowledged rows (with the state that says so). On a full disk, with the
        reserve's room; failing even that, they are remembered, never sent again, and the
        delete is tried again (see _look_after_disk): a drain never re-sends in a loop."""
        if self._db is None:
            return
        if self.read_only:  # deleted once the outbox can be written
            self._acked_unsaved.update(seqs)
            self._state_unsaved.update(state or {})
            return
        seqs = [*seqs, *self._acked_unsaved]
        state = {**self._state_unsaved, **(state or {})}
        # a delete lost to a power cut only means a harmless re-send; a state change is kept
        self._set_sync("FULL" if state else "NORMAL")
        freed = _Tally()
        for attempt in range(3):
            try:
                with self._transaction() as conn:
                    # what goes, counted in C per class (a RETURNING row per deleted row and a Python
                    # loop over them cost twice the delete itself), then the delete: one transaction.
                    # A batch is mostly consecutive seqs: those go by range (half the cost of a list)
                    runs, singles = _runs(seqs)
                    gone = []
                    for low, high in runs:
                        gone += conn.execute(
                            "SELECT priority, count(*), sum(length(CAST(payload AS BLOB))) FROM outbox "
                            "WHERE seq BETWEEN ?1 AND ?2 GROUP BY priority",
                            (low, high),
                        ).fetchall()
                        conn.execute("DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2", (low, high))
                    if singles:
                        listed = json.dumps(singles)
                        gone += conn.execute(
                            "SELECT priority, count(*), sum(length(CAST(payload AS BLOB))) FROM outbox "
                            "WHERE seq IN (SELECT value FROM json_each(?1)) GROUP BY priority",
                            (listed,),
                        ).fetchall()
                        conn.execute("DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?1))", (listed,))
                    if state:
                        _write_state(conn, state)
                break
            except sqlite3.OperationalError as exc:
                if not _for_want_of_space(exc):
                    raise
                self.disk_full_errors += 1
                if attempt == 2 or not self._find_room(
                    f"deleting delivered events failed ({exc})", "they can be deleted"
                ):
                    if not self._acked_unsaved:
                        log.error(
                            _(
                                "outbox %s: the disk is full: %d delivered events cannot be deleted yet (%s); they are "
                                "not sent again, and deleted once there is room"
                            ),
                            self.path,
                            len(seqs),
                            exc,
                        )
                    self._acked_unsaved.update(seqs)
                    self._state_unsaved = state
                    return
        self._acked_unsaved.clear()
        self._state_unsaved = {}
        for rank, count, size in gone:  # rows shed while in flight are gone already: not counted twice
            freed.add(_PRIORITY_OF_RANK[rank], size + count * ROW_OVERHEAD_BYTES, count)
        for priority in Priority:
            self._tally.add(priority, -freed.bytes[priority], -freed.rows[priority])

    def _rebase(self, offset_ms: int) -> int:
        if self._db is None or self.read_only:
            return 0
        try:
            return self._rebase_rows(offset_ms)
        except sqlite3.OperationalError as exc:  # a full disk: the events keep their unsynchronised time
            if not _for_want_of_space(exc):
                raise
            self.disk_full_errors += 1
            log.error(_("outbox %s: the waiting events could not be re-based to the true time (%s)"), self.path, exc)
            return 0

    def _rebase_rows(self, offset_ms: int) -> int:
        with self._transaction() as conn:
            changed = conn.execute(
                # ts is created_ms (a row stored before that keeps its own ts: removed, it is put back on read)
                "UPDATE outbox SET created_ms = mono_ms + ?1, payload = json_set(json_remove(payload, '$.ts'), "
                "'$.data.ts_unsynced', coalesce(json_extract(payload, '$.ts'), "
                "strftime('%Y-%m-%dT%H:%M:%fZ', created_ms / 1000.0, 'unixepoch')), "
                "'$.clock_trusted', json('true')) "
                "WHERE boot = ?2 AND mono_ms IS NOT NULL "
                "AND CASE WHEN json_valid(payload) THEN json_extract(payload, '$.clock_trusted') END = 0",
                (offset_ms, self.boot),
            ).rowcount
        return int(changed)

    def _read_state(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {}
        if self._db is None:
            return out
        for key, value in self.db.execute("SELECT key, value FROM care_state"):
            with contextlib.suppress(ValueError):
                out[key] = json.loads(value)
        return out

    def _snapshot(self) -> OutboxSnapshot:
        row = None
        if self._db is not None:
            row = self.db.execute("SELECT created_ms FROM outbox WHERE seq = (SELECT min(seq) FROM outbox)").fetchone()
        return OutboxSnapshot(
            rows=dict(self._tally.rows),
            bytes=dict(self._tally.bytes),
            oldest_created_ms=None if row is None else int(row[0]),
            shed=self._shed_by_device(),
            max_bytes=self.storage.max_bytes,
            disk_full_errors=self.disk_full_errors,
            disk={
                "reserve_bytes": self.reserve.size if self.reserve.held else 0,
                "disk_full": self._disk_cap is not None or self.not_open is not None,
                "not_open": self.not_open,
                "read_only": self.read_only,
                "delivered_not_deleted": len(self._acked_unsaved),
                "quarantined": self.quarantined,
            },
        )


@dataclass(frozen=True)
class OutboxView:
    """What an outbox file holds, read without the daemon (`care-gateway status`, `doctor`)."""

    waiting: dict[Priority, int]
    oldest_created_ms: int | None
    verdict: str | None  # the first line of PRAGMA quick_check, when asked for


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of `folder`."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def peek(path: Path, check: bool = False) -> OutboxView:
    """A read-only look at an outbox file, safe while the daemon runs. On a disk with too
    little room to map the WAL index safely (see MIN_FREE_TO_OPEN_BYTES) the main file is read
    as it is (immutable), without what waits in its WAL. Raises OutboxUnavailable."""
    try:
        free = free_bytes(path.parent)
    except OSError:
        free = 0
    mode = "mode=ro" if free >= MIN_FREE_TO_OPEN_BYTES else "immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?{mode}", uri=True, timeout=BUSY_TIMEOUT_S)) as conn:
            verdict = str(conn.execute("PRAGMA quick_check").fetchone()[0]) if check else None
            rows = dict(conn.execute("SELECT priority, count(*) FROM outbox GROUP BY priority").fetchall())
            oldest = conn.execute("SELECT min(created_ms) FROM outbox").fetchone()[0]
    except sqlite3.Error as exc:
        raise OutboxUnavailable(_("{path} cannot be read: {reason}").format(path=path, reason=exc)) from exc
    return OutboxView({p: int(rows.get(p.rank, 0)) for p in Priority}, oldest, verdict)


def _lane(priority: Priority) -> str:
    """The SQL condition for one class, with its rank written out: SQLite uses a partial index
    only for a query whose WHERE names the index's condition literally (a bound ? does not)."""
    return f"priority = {int(priority.rank)}"


def boot_key(boot_id: str) -> int:
    """A boot id (a UUID) as a small integer for the boot column: its first 32 bits."""
    try:
        return int(boot_id.replace("-", "")[:8], 16)
    except ValueError:
        return abs(hash(boot_id)) % (1 << 31)


def _write_state(conn: sqlite3.Connection, state: StateRows) -> None:
    gone = [(key,) for key, value in state.items() if value is None]
    kept = [(key, json.dumps(value, ensure_ascii=False)) for key, value in state.items() if value is not None]
    if gone:
        conn.executemany("DELETE FROM care_state WHERE key = ?", gone)
    if kept:
        conn.executemany("INSERT OR REPLACE INTO care_state (key, value) VALUES (?, ?)", kept)


def _readable(conn: sqlite3.Connection, path: Path) -> sqlite3.Connection:
    """`conn` if SQLite can read the file's schema; else a connection to a copy of it with a
    mended 100-byte header: its own with the page count of what is left (a truncated file), or
    one rebuilt from a new outbox's (a zeroed or overwritten header). Every page is kept."""
    try:
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        return conn
    except sqlite3.DatabaseError:
        pass
    data = path.read_bytes()
    own_size = int.from_bytes(data[16:18], "big") if data.startswith(b"SQLite format 3\0") else 0
    own_size = 65536 if own_size == 1 else own_size
    candidates = [(own_size, True)] if own_size else []
    candidates += [(size, False) for size in (4096, 1024, 2048, 8192, 16384, 32768, 65536)]
    copy = path.with_name(path.name + ".header-mended")
    for page_size, own in candidates:
        pages = len(data) // page_size
        if pages == 0:
            continue
        header = _mended_header(data[:100], pages) if own else _fresh_header(page_size, pages)
        copy.write_bytes(header + data[100 : pages * page_size])
        mended = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        try:
            mended.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        except sqlite3.DatabaseError:
            mended.close()
            continue
        log.warning(_("%s: its header is damaged or it is cut short; reading it through %s"), path, copy)
        conn.close()
        return mended
    copy.unlink(missing_ok=True)
    return conn


def _mended_header(header: bytes, pages: int) -> bytes:
    """A file's own header, made to agree with the pages it still has and to need no -wal."""
    mended = bytearray(header)
    mended[18] = mended[19] = 1  # rollback journal: the copy needs no -wal beside it
    mended[28:32] = pages.to_bytes(4, "big")  # database size in pages ...
    mended[24:28] = mended[92:96]  # ... believed (change counter == version-valid-for)
    mended[32:40] = bytes(8)  # no freelist: its pages may be gone
    return bytes(mended)


def _fresh_header(page_size: int, pages: int) -> bytes:
    """The 100-byte header of a new outbox file with this page size, for `pages` pages."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "header.db"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute(f"PRAGMA page_size={page_size}")
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.executescript(SCHEMA)
        return _mended_header(path.read_bytes()[:100], pages)


WAL_MAGIC = (0x377F0682, 0x377F0683)  # checksums little-endian, big-endian
WAL_HEADER_BYTES = 32
WAL_FRAME_HEADER_BYTES = 24


@dataclass(frozen=True)
class WalDamage:
    bad_frame: int  # the first frame SQLite will not accept (1-based)
    lost_commits: int  # commit frames after it that carry this WAL's salt: committed, then lost
    lost_frames: int


def _wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def inspect_wal(path: Path) -> WalDamage | None:
    """Damage in a WAL that would lose committed transactions (the WAL file format, sqlite.org
    /fileformat2.html#walformat): a frame whose salt or checksum is wrong, followed by commit
    frames of the same WAL. A WAL that merely ends in an unfinished transaction is not damage."""
    if not path.exists() or path.stat().st_size <= WAL_HEADER_BYTES:
        return None
    data = path.read_bytes()
    magic, _, page_size, _, salt1, salt2, c0, c1 = struct.unpack(">8I", data[:WAL_HEADER_BYTES])
    if magic not in WAL_MAGIC or page_size < 512 or page_size & (page_size - 1):
        return None  # not a WAL SQLite would replay at all
    big = magic == WAL_MAGIC[1]
    s0, s1 = _wal_checksum(data[:24], 0, 0, big)
    if (s0, s1) != (c0, c1):
        return None  # SQLite ignores the whole file: nothing of it was ever replayed here either
    frame_bytes = WAL_FRAME_HEADER_BYTES + page_size
    frames = (len(data) - WAL_HEADER_BYTES) // frame_bytes
    bad = None
    for n in range(frames):
        at = WAL_HEADER_BYTES + n * frame_bytes
        _, _, f_salt1, f_salt2, f0, f1 = struct.unpack(">6I", data[at : at + WAL_FRAME_HEADER_BYTES])
        if (f_salt1, f_salt2) != (salt1, salt2):
            bad = n
            break
        s0, s1 = _wal_checksum(data[at : at + 8] + data[at + WAL_FRAME_HEADER_BYTES : at + frame_bytes], s0, s1, big)
        if (s0, s1) != (f0, f1):
            bad = n
            break
    if bad is None:
        return None
    later = [WAL_HEADER_BYTES + n * frame_bytes for n in range(bad, frames)]
    ours = [at for at in later if struct.unpack(">2I", data[at + 8 : at + 16]) == (salt1, salt2)]
    commits = sum(1 for at in ours if struct.unpack(">I", data[at + 4 : at + 8])[0] != 0)
    return WalDamage(bad + 1, commits, len(ours)) if commits else None


def _replay_wal(db: Path, wal: Path, bad_frame: int, into: Path) -> None:
    """Write a copy of the database with every frame of this WAL (its salt) applied in order,
    the damaged one left out: as SQLite would have, had it not stopped at the damage. Pages a
    bad frame leaves stale are found by the tolerant reader (_readable_rows)."""
    data = wal.read_bytes()
    page_size, salt = struct.unpack(">I", data[8:12])[0], data[16:24]
    frame_bytes = WAL_FRAME_HEADER_BYTES + page_size
    if db.exists():
        shutil.copyfile(db, into)
    else:
        into.write_bytes(b"")
    pages = into.stat().st_size // page_size
    with into.open("r+b") as f:
        for n, at in enumerate(range(WAL_HEADER_BYTES, len(data) - frame_bytes + 1, frame_bytes), start=1):
            pgno, commit_pages = struct.unpack(">2I", data[at : at + 8])
            if n == bad_frame or data[at + 8 : at + 16] != salt or pgno == 0:
                continue
            f.seek((pgno - 1) * page_size)
            f.write(data[at + WAL_FRAME_HEADER_BYTES : at + frame_bytes])
            pages = commit_pages or max(pages, pgno)
        f.truncate(pages * page_size)
        f.seek(0)
        header = f.read(100)
        f.seek(0)
        f.write(_mended_header(header, pages))


def _last_seq(conn: sqlite3.Connection) -> int | None:
    """The highest seq ever used, from the table or from AUTOINCREMENT's record of it."""
    for sql in ("SELECT max(seq) FROM outbox", "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"):
        try:
            row = conn.execute(sql).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row and row[0] is not None:
            return int(row[0])
    return None


def _readable_rows(conn: sqlite3.Connection, low: int, high: int) -> list[tuple[int, int, str]]:
    """Rows with low < seq <= high, halving the range around pages that cannot be read."""
    try:
        return conn.execute(
            "SELECT priority, created_ms, payload FROM outbox WHERE seq > ? AND seq <= ? ORDER BY seq", (low, high)
        ).fetchall()
    except sqlite3.DatabaseError:
        if high - low <= 1:
            return []
        middle = (low + high) // 2
        return _readable_rows(conn, low, middle) + _readable_rows(conn, middle, high)


def _is_event_json(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return isinstance(json.loads(text).get("id"), str)
    except (ValueError, AttributeError):
        return False


def _for_want_of_space(exc: BaseException) -> bool:
    """A full disk or quota, or an I/O error: waited out, never taken for a corrupt file."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO)
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (SQLITE_FULL, SQLITE_IOERR)
