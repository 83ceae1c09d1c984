"""The outbox: the only SQLite user. An event is *accepted* once its row is committed here.

- WAL journal with synchronous=FULL: a commit is on disk (as far as the card honours
  flushes) before `append` returns, so it survives `kill -9` and power loss.
- The uplink reads the oldest rows of the most urgent class first (index on priority, seq),
  a bounded batch at a time: a backlog of millions is never loaded into memory.
- Rows are deleted only by `ack`, which the uplink calls after the broker's PUBACK.
- sqlite3 connections belong to one thread, so every call runs on one dedicated thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import sqlite_utils

from gateway.events import Event, Priority

log = logging.getLogger("care_gateway.outbox")

T = TypeVar("T")
BUSY_TIMEOUT_S = 5.0  # another process (care-gateway status) may hold a read lock briefly
JOURNAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024  # truncate the -wal file to this after checkpoints
_PRIORITY_OF_RANK = {p.rank: p for p in Priority}

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,          -- arrival order
    priority INTEGER NOT NULL,        -- Priority.rank: 0 alarm, 1 status, 2 telemetry
    device_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,      -- wall clock at acceptance, for the oldest-unsent age
    payload TEXT NOT NULL             -- the event as published (JSON)
);
CREATE INDEX IF NOT EXISTS outbox_lane ON outbox (priority, seq);
"""


class OutboxUnavailable(Exception):
    """The database cannot be opened or written; the message says what to check on site."""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    priority: Priority
    payload: str


class Outbox:
    """Durable, priority-ordered queue of events waiting for the broker's PUBACK."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite_utils.Database | None = None
        self._new_rows = asyncio.Event()
        self._counts = dict.fromkeys(Priority, 0)  # kept in step with the table: no COUNT(*) scans
        self.moved_aside: Path | None = None  # set when a corrupt file was found at start-up

    async def __aenter__(self) -> Outbox:
        await self._run(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # --- runs on the outbox thread -------------------------------------------------------

    def _connect(self) -> sqlite_utils.Database:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        db = sqlite_utils.Database(conn)
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only effective before the first table
            db.enable_wal()
        db.execute("PRAGMA synchronous=FULL")  # per connection: every commit reaches the disk
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
        return db

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect()
            verdict = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
            if verdict != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(verdict[:3]))
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                raise OutboxUnavailable(self._advice(exc)) from exc
            db = self._move_aside_and_recreate(exc)
        except OSError as exc:
            raise OutboxUnavailable(self._advice(exc)) from exc
        db.executescript(SCHEMA)
        for rank, n in db.execute("SELECT priority, count(*) FROM outbox GROUP BY priority"):
            self._counts[_PRIORITY_OF_RANK[rank]] = n
        self._db = db

    def _advice(self, exc: Exception) -> str:
        return (
            f"cannot open the outbox {self.path}: {exc}; check that {self.path.parent} exists, "
            "is writable by the service user and that the disk is mounted"
        )

    def _move_aside_and_recreate(self, exc: Exception) -> sqlite_utils.Database:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        log.error("outbox %s is corrupt (%s); moved aside to %s and starting a new one", self.path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                part.rename(Path(f"{aside}{suffix}"))
        self.moved_aside = aside
        return self._connect()

    def _close(self) -> None:
        if self._db is not None:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.conn.close()
            self._db = None

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RuntimeError("outbox used outside 'async with'")
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One explicit transaction (the connection is in autocommit mode otherwise)."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")  # with synchronous=FULL the WAL is fsynced here

    def _insert(self, events: list[Event]) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO outbox (priority, device_id, created_ms, payload) VALUES (?, ?, ?, ?)",
                [(e.priority.rank, e.device_id, int(e.ts.timestamp() * 1000), e.to_json()) for e in events],
            )
        for event in events:
            self._counts[event.priority] += 1

    def _select(self, limit: int) -> list[OutboxRow]:
        rows = self.db.execute(
            "SELECT seq, priority, payload FROM outbox ORDER BY priority, seq LIMIT ?", [limit]
        ).fetchall()
        return [OutboxRow(seq, _PRIORITY_OF_RANK[rank], payload) for seq, rank, payload in rows]

    def _delete(self, rows: list[OutboxRow]) -> None:
        with self._transaction() as conn:
            conn.executemany("DELETE FROM outbox WHERE seq = ?", [(row.seq,) for row in rows])
        for row in rows:
            self._counts[row.priority] -= 1

    def _oldest_ms(self) -> int | None:
        row = self.db.execute("SELECT created_ms FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    # --- the async API -----------------------------------------------------------------------

    async def append(self, *events: Event) -> None:
        """Commit the events; when this returns they are accepted (durable)."""
        await self._run(lambda: self._insert(list(events)))
        self._new_rows.set()

    async def next_batch(self, limit: int) -> list[OutboxRow]:
        """The `limit` oldest rows of the most urgent class first."""
        return await self._run(lambda: self._select(limit))

    async def ack(self, rows: Iterable[OutboxRow]) -> None:
        """Delete rows the broker has acknowledged (PUBACK received)."""
        batch = list(rows)
        if batch:
            await self._run(lambda: self._delete(batch))

    async def counts(self) -> dict[Priority, int]:
        """Rows waiting per class (kept in memory, so cheap with a million rows)."""
        return await self._run(lambda: dict(self._counts))

    async def oldest_created_ms(self) -> int | None:
        return await self._run(self._oldest_ms)

    async def wait_for_new(self, timeout: float) -> None:
        """Return when rows were appended since the last call, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._new_rows.wait(), timeout)
        self._new_rows.clear()
