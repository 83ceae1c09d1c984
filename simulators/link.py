"""A flaky link: a TCP proxy between the gateway and the broker that behaves like a bad uplink.

Modes, switched on command (methods, or lines on stdin from the CLI) or on a schedule:
- `up`: bytes flow (after `latency_s`, within `bandwidth_bps` per direction);
- `cut`: every connection is reset and new ones are refused, as when a modem drops;
- `blackhole`: bytes vanish silently, no RST, connections stay "open" (the hard case: only
  keepalive or a missing PUBACK can tell). A connection that lost bytes never carries data
  again (its stream is broken); connections opened after `restore()` work.

The platform side (the sink) connects to the broker directly and is never affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

COPY_CHUNK_BYTES = 16384
Mode = Literal["up", "cut", "blackhole"]


class Pacer:
    """Holds one direction of the link to `bandwidth_bps` bytes per second (None: unlimited)."""

    def __init__(self) -> None:
        self.bandwidth_bps: int | None = None
        self._free_at = 0.0

    async def wait(self, n: int) -> None:
        if not self.bandwidth_bps:
            return
        now = time.monotonic()
        start = max(now, self._free_at)
        self._free_at = start + n / self.bandwidth_bps
        await asyncio.sleep(self._free_at - now)


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    broken: bool = False  # bytes were dropped: this stream can never be used again


class LinkProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1", listen_port: int = 0):
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        self.port = 0
        self.mode: Mode = "up"
        self.latency_s = 0.0
        self._pacers = {"up": Pacer(), "down": Pacer()}
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self.dropped_bytes = 0

    @property
    def bandwidth_bps(self) -> int | None:
        return self._pacers["up"].bandwidth_bps

    def set_bandwidth(self, bytes_per_s: int | None) -> None:
        for pacer in self._pacers.values():
            pacer.bandwidth_bps = bytes_per_s or None

    async def __aenter__(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self.mode = "cut"
        for conn in list(self._connections):
            self._close(conn)

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def restore(self) -> None:
        self.mode = "up"

    def apply(self, command: str) -> str:
        """One text command: up | cut | blackhole | latency MS | bandwidth BYTES_PER_S (0 = unlimited)."""
        word, *args = command.split()
        if word in ("up", "restore"):
            self.restore()
        elif word == "cut":
            self.cut()
        elif word == "blackhole":
            self.blackhole()
        elif word == "latency" and args:
            self.latency_s = float(args[0]) / 1000
        elif word == "bandwidth" and args:
            self.set_bandwidth(int(args[0]))
        else:
            return f"unknown command {command!r} (up, cut, blackhole, latency MS, bandwidth BYTES_PER_S)"
        return (
            f"link {self.mode}, latency {self.latency_s * 1000:.0f} ms, bandwidth {self.bandwidth_bps or 'unlimited'}"
        )

    async def run_schedule(self, steps: Iterable[tuple[str, float]], repeat: bool = False) -> None:
        """Apply (command, seconds) steps in turn, e.g. [("up", 10), ("blackhole", 20), ("cut", 5)]."""
        while True:
            for command, seconds in steps:
                self.apply(command)
                await asyncio.sleep(seconds)
            if not repeat:
                return

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        conn = _Connection(writer, up_writer, broken=self.mode == "blackhole")
        self._connections.add(conn)
        try:
            await asyncio.gather(
                self._pump(conn, reader, up_writer, self._pacers["up"]),
                self._pump(conn, up_reader, writer, self._pacers["down"]),
            )
        finally:
            self._close(conn)

    async def _pump(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pacer: Pacer
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(COPY_CHUNK_BYTES):
                if self.mode == "blackhole":
                    conn.broken = True
                if conn.broken:
                    self.dropped_bytes += len(data)
                    continue
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)  # per chunk, in order: a long thin pipe
                await pacer.wait(len(data))
                if conn.broken or self.mode == "cut":
                    continue
                writer.write(data)
                await writer.drain()
        if not conn.broken:
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        for w in (conn.client, conn.upstream):
            w.transport.abort()  # RST, as when a modem drops the PDP context
