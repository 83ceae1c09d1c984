"""The uplink: the only aiomqtt user. Drains the outbox to the city broker with QoS 1.

Two lanes share one connection:
- the alarm lane publishes each alarm alone as soon as it is committed, with slots of
  paho's in-flight window reserved for it, so an alarm never queues behind a backlog;
- the bulk lane sends status, then telemetry, as `{"events": [...]}` batches shaped by the
  station's link profile (batch size, linger, zlib compression, a byte budget per second),
  with a bounded number of batches awaiting their PUBACK.

Rules learnt the hard way (shared/stack-notes.md §1):
- a fresh `aiomqtt.Client` per connection: a reused client re-sends paho's own queue, and the
  outbox must be the only memory of what is unsent;
- `publish(qos=1)` returns on PUBACK, and only then is a row deleted; an in-flight publish is
  not woken by a disconnect, so a listener task watches the connection and tears the session
  down at once, and a black-holed link is caught by the keepalive;
- retries and backoff (tenacity) wrap the connect step only, so every outage starts afresh.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiomqtt
from cryptography import x509
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential_jitter

from gateway.clock import utc_text
from gateway.config import StationConfig, UplinkSection, key_path, read_secrets
from gateway.events import ULID_PATTERN, Priority
from gateway.outbox import Outbox, OutboxRow, OutboxSnapshot

log = logging.getLogger("care_gateway.uplink")
# paho logs every socket error at ERROR level; the uplink reports each outage itself, once,
# with what it means for the backlog, so paho's own lines only add noise to the journal.
paho_log = logging.getLogger("care_gateway.uplink.paho")
paho_log.setLevel(logging.CRITICAL)

ALARM_SLOTS = 8  # alarm publishes in flight at once, reserved in paho's window
CONTROL_SLOTS = 2  # status message and command replies
IDLE_POLL_S = 1.0  # re-read the outbox at least this often even without a new-row signal
BATCH_MAX_BYTES = 256 * 1024  # a batch is cut at this size whatever the profile says
COMPRESS_MIN_BYTES = 256  # smaller batches are sent as plain JSON (zlib would not pay)
ZLIB_LEVEL = 6
MQTT_OVERHEAD_BYTES = 6  # fixed header, remaining length, packet id: counted in the byte budget
FIRST_RETRY_S = 0.5  # first reconnect delay; doubles up to [uplink] reconnect_max_s
RETRY_JITTER_S = 1.0  # spreads the reconnects of many stations after a city-wide outage
SHUTDOWN_STATUS_TIMEOUT_S = 2.0  # how long a clean stop waits to publish the offline status
PENDING_CALLS_WARNING = 10_000  # aiomqtt warns above this many pending calls; our windows are smaller
TYPICAL_ZLIB_RATIO = 0.15  # compressed/plain size of telemetry batches (bench/store_and_forward.py "wire")
DRAIN_RATE_WINDOW_S = 30.0  # the drain-time estimate uses the bytes acknowledged in this window
TLS_EXPIRY_WARNING_DAYS = 30  # a certificate expiring sooner is logged at start and flagged in the status
LINK_HISTORY = 20  # link changes kept for the status message
STALL_MARGIN_S = 30.0  # added to the longest healthy wait before the watchdog is starved

StatusSource = Callable[[], dict[str, Any]]
DeliveredSink = Callable[[list[str]], Awaitable[None]]  # ids of alarms the broker acknowledged
MAX_COMMAND_BYTES = 4096  # a downlink command is a few hundred bytes; more is refused unread


class CommandRefused(Exception):
    """A well-formed command that cannot be carried out; the message is the reply's error."""


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64, description="correlation id, returned in the reply")


class AckCommand(_Command):
    """A person has taken the alarm: stop re-announcing and escalating it."""

    alarm_id: str = Field(pattern=ULID_PATTERN, description="id of the event that raised the alarm")
    by: str = Field(min_length=1, max_length=100, description="who took it")
    note: str | None = Field(None, max_length=500)


class ResolveCommand(_Command):
    """The alarm is over (the person was visited, or it was a false alarm)."""

    alarm_id: str = Field(pattern=ULID_PATTERN, description="id of the event that raised the alarm")
    by: str = Field(min_length=1, max_length=100, description="who resolved it")
    resolution: Literal["handled", "false_alarm", "test", "other"] = "handled"
    note: str | None = Field(None, max_length=500)


class TimeCommand(_Command):
    """The platform's time, for a station whose clock is not synchronised (no NTP reachable)."""

    utc: AwareDatetime = Field(description="the platform's current time, RFC 3339 with an offset")


class PingCommand(_Command):
    """Is the station there? Answered at once with its time."""


class StatusCommand(_Command):
    """Publish the retained status message now."""


Command = AckCommand | ResolveCommand | PingCommand | StatusCommand | TimeCommand
COMMANDS: dict[str, type[_Command]] = {
    "ack": AckCommand,
    "resolve": ResolveCommand,
    "time": TimeCommand,
    "ping": PingCommand,
    "status": StatusCommand,
}
CommandHandler = Callable[[_Command], Awaitable[dict[str, Any]]]  # raises CommandRefused


class Topics:
    """The MQTT topic names of one station (docs/mqtt.md)."""

    def __init__(self, prefix: str, station_id: str) -> None:
        base = f"{prefix}/{station_id}"
        self.status = f"{base}/status"
        self.commands = f"{base}/cmd/#"
        self.command_replies = f"{base}/cmd-reply"
        self._events = {p: f"{base}/events/{p.value}" for p in Priority}

    def events(self, priority: Priority) -> str:
        return self._events[priority]


def encode_batch(rows: list[OutboxRow], compress: bool) -> bytes:
    """`{"events": [...]}`, zlib-compressed (RFC 1950) when asked and worth it."""
    body = ('{"events":[' + ",".join(row.payload for row in rows) + "]}").encode()
    if compress and len(body) >= COMPRESS_MIN_BYTES:
        return zlib.compress(body, ZLIB_LEVEL)
    return body


class ByteBudget:
    """Token bucket for status and telemetry bytes; a message may overdraw it (debt is repaid)."""

    def __init__(self, bytes_per_s: int) -> None:
        self.rate = bytes_per_s
        self._level = float(bytes_per_s)  # one second of burst
        self._at = time.monotonic()

    async def spend(self, n: int) -> None:
        while True:
            now = time.monotonic()
            self._level = min(float(self.rate), self._level + (now - self._at) * self.rate)
            self._at = now
            if self._level > 0:
                self._level -= n
                return
            await asyncio.sleep(-self._level / self.rate + 0.001)


class Uplink:
    def __init__(
        self,
        config: StationConfig,
        outbox: Outbox,
        status_source: StatusSource,
        on_delivered: DeliveredSink | None = None,
        commands: CommandHandler | None = None,
    ) -> None:
        self._config = config
        self._on_delivered = on_delivered
        self._commands = commands
        self._outbox = outbox
        self._status_source = status_source
        self.link = config.uplink.link
        self.topics = Topics(config.uplink.topic_prefix, config.station.id)
        self._budget = ByteBudget(self.link.byte_budget_per_s) if self.link.byte_budget_per_s else None
        self._status_due = asyncio.Event()
        self._acked_bytes: collections.deque[tuple[float, int]] = collections.deque()
        # Events per batch, adapted to the link: halved when a connection dies with a batch in
        # flight (its PUBACK, or the keepalive's PINGRESP, could not get through behind it),
        # grown back slowly while batches are acknowledged. Ends the livelock of a batch that
        # can never cross a thin link within the keepalive.
        self.batch_events = self.link.batch_max_events
        self._bulk_in_flight = 0
        self.connected = False
        self.published = dict.fromkeys(Priority, 0)  # events acknowledged by the broker since start
        self.progress_at = time.monotonic()  # the forwarding loop's last sign of life (watchdog)
        self.link_since = time.time()  # when the link last went up or down
        self.connects = 0
        self.link_history: collections.deque[dict[str, Any]] = collections.deque(maxlen=LINK_HISTORY)
        up = config.uplink
        self._username, self._password = broker_login(up)
        candidates = [("ca_file", up.tls.ca_file), ("cert_file", up.tls.cert_file)] if up.tls else []
        # read once: a renewed certificate is installed with a reload, which builds a new uplink
        self._certificates = {name: (path, certificate_not_after(path)) for name, path in candidates if path}
        for report in self.tls_report().values():
            if report["days_left"] is not None and report["days_left"] < TLS_EXPIRY_WARNING_DAYS:
                log.warning(
                    "uplink: the certificate %s expires in %d days (%s); renew it before then or the station "
                    "can no longer connect",
                    report["path"],
                    report["days_left"],
                    report["not_after"],
                )

    def stalled_s(self, now: float) -> float | None:
        """Seconds without progress, if longer than any healthy wait can last; else None.

        A healthy uplink shows progress at least every IDLE_POLL_S while connected, and at
        every connection attempt (backoff at most reconnect_max_s, then connect_timeout_s).
        """
        up = self._config.uplink
        limit = up.reconnect_max_s + RETRY_JITTER_S + up.connect_timeout_s + up.publish_timeout_s + up.keepalive_s
        silent = now - self.progress_at
        return silent if silent > limit + STALL_MARGIN_S else None

    def _link_changed(self, state: str, reason: str) -> None:
        self.link_since = time.time()
        self.link_history.append({"at": utc_text(self.link_since), "state": state, "reason": reason[:200]})

    def link_report(self) -> dict[str, Any]:
        """The link's state, since when, how often it came up, and its last changes."""
        return {
            "state": "up" if self.connected else "down",
            "since": utc_text(self.link_since),
            "connects_since_start": self.connects,
            "history": list(self.link_history),
        }

    async def status_body(self) -> dict[str, Any]:
        """The whole status: station, link, backlog, TLS (the MQTT status message, the status
        file that `care-gateway status` reads, and the local status page)."""
        snap = await self._outbox.snapshot()
        body = self._status_source()
        body.update(link_profile=self._config.uplink.link_profile, **self.backlog_report(snap))
        body["link"] = self.link_report()
        body["tls"] = self.tls_report() if self._config.uplink.tls else None
        return body

    def _alive(self) -> None:
        self.progress_at = time.monotonic()

    def request_status(self) -> None:
        """Publish the status message soon (a device came or went)."""
        self._status_due.set()

    async def run(self) -> None:
        """Connect, drain, reconnect; forever (until cancelled)."""
        while True:
            client = await self._connect()
            try:
                await self._session(client)
            except asyncio.CancelledError:
                await self._say_goodbye(client)
                raise
            finally:
                self.connected = False
                with contextlib.suppress(Exception):  # a dead link must not hold up the reconnect
                    await asyncio.wait_for(client.__aexit__(None, None, None), self._config.uplink.publish_timeout_s)

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection's life: returns (after logging why) when the connection is lost."""
        try:
            alarms_flushed = asyncio.Event()
            async with asyncio.TaskGroup() as session:
                session.create_task(self._watch(client), name="uplink-watch")
                session.create_task(self._alarm_lane(client, alarms_flushed), name="uplink-alarms")
                session.create_task(self._bulk_lane(client, alarms_flushed), name="uplink-bulk")
                session.create_task(self._report_status(client), name="uplink-status")
        except* (aiomqtt.MqttError, OSError, TimeoutError) as group:
            self.connected = False
            if self._bulk_in_flight and self.batch_events > 1:
                self.batch_events = max(1, self.batch_events // 2)
                log.warning(
                    "uplink: the connection died with %d batch(es) awaiting PUBACK; batches cut to %d events "
                    "(is the link slower than its profile '%s'?)",
                    self._bulk_in_flight,
                    self.batch_events,
                    self._config.uplink.link_profile,
                )
            self._bulk_in_flight = 0
            reason = "; ".join(repr(e) for e in group.exceptions)
            self._link_changed("down", reason)
            backlog = sum((await self._outbox.counts()).values())
            log.warning("uplink down: %s; %d events kept in the outbox; reconnecting", reason, backlog)

    async def _connect(self) -> aiomqtt.Client:
        up = self._config.uplink
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((aiomqtt.MqttError, OSError, TimeoutError)),
            wait=wait_exponential_jitter(multiplier=FIRST_RETRY_S, max=up.reconnect_max_s, jitter=RETRY_JITTER_S),
            stop=stop_never,
            reraise=True,
            before_sleep=self._log_retry,
        )
        async for attempt in retrying:
            self._alive()
            with attempt:
                client = aiomqtt.Client(
                    up.host,
                    up.port,
                    identifier=self._config.client_id,
                    logger=paho_log,
                    username=self._username,
                    password=self._password,
                    # paho pings after one keepalive without traffic and drops the link after a
                    # second: half the configured value catches a silent black hole within it
                    keepalive=max(1, math.ceil(up.keepalive_s / 2)),
                    timeout=up.connect_timeout_s,  # aiomqtt is not woken by a reset during CONNECT
                    clean_session=True,
                    max_inflight_messages=self.link.batches_in_flight + ALARM_SLOTS + CONTROL_SLOTS,
                    will=aiomqtt.Will(self.topics.status, self._status_json("offline", "connection lost"), 1, True),
                    tls_params=tls_parameters(up),
                )
                client.pending_calls_threshold = PENDING_CALLS_WARNING
                await client.__aenter__()
                client.timeout = up.publish_timeout_s  # from now on: how long to wait for a PUBACK
        self.connected = True
        self._alive()
        self.connects += 1
        self._link_changed("up", f"connected to {up.host}:{up.port}")
        counts = await self._outbox.counts()
        log.info(
            "uplink up: connected to %s:%d as %s (%s link); backlog %s",
            up.host,
            up.port,
            self._config.client_id,
            up.link_profile,
            ", ".join(f"{n} {p.value}" for p, n in counts.items()),
        )
        return client

    def _log_retry(self, state: RetryCallState) -> None:
        up = self._config.uplink
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "uplink down: cannot connect to %s:%d (%r)%s; attempt %d, next try in %.1f s",
            up.host,
            up.port,
            exc,
            _advice(exc),
            state.attempt_number,
            wait,
        )

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Listen for downlink commands; raises MqttError the moment the connection drops."""
        await client.subscribe(self.topics.commands, qos=1)
        async for message in client.messages:
            await self._command(client, message)

    async def _command(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        """Validate, carry out and answer one downlink command; nothing in it can stop the daemon."""
        reply = await self.answer(str(message.topic).rsplit("/", 1)[-1], message.payload)
        await client.publish(self.topics.command_replies, json.dumps(reply, ensure_ascii=False), qos=1)

    async def answer(self, name: str, payload: Any) -> dict[str, Any]:
        """The reply to a command: `{"id", "command", "ok", "result" | "error"}`."""
        reply: dict[str, Any] = {"id": None, "command": name, "ok": False}
        try:
            raw = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
            if len(raw) > MAX_COMMAND_BYTES:
                raise CommandRefused(f"payload of {len(raw)} bytes is over the {MAX_COMMAND_BYTES}-byte limit")
            try:
                body = json.loads(raw or b"{}")
            except ValueError as exc:
                raise CommandRefused(f"payload is not JSON: {exc}") from exc
            if isinstance(body, dict) and isinstance(body.get("id"), str):
                reply["id"] = body["id"][:64]
            model = COMMANDS.get(name)
            if model is None:
                raise CommandRefused(f"unknown command {name[:40]!r} (known: {', '.join(COMMANDS)})")
            try:
                command = model.model_validate(body)
            except ValidationError as exc:
                problems = "; ".join(f"{key_path(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
                raise CommandRefused(f"invalid {name} command: {problems}") from exc
            if isinstance(command, StatusCommand):
                self._status_due.set()
                result: dict[str, Any] = {"status": "publishing"}
            elif isinstance(command, PingCommand):
                result = {"pong": True, "station_id": self._config.station.id, "ts": _now_iso()}
            elif self._commands is None:
                raise CommandRefused(f"{name} is not handled by this station")
            else:
                result = await self._commands(command)
            reply.update(ok=True, result=result)
            log.info("downlink command %s (id %s) carried out: %s", name, reply["id"], result)
        except CommandRefused as exc:
            reply["error"] = str(exc)
            log.warning("downlink command %r (id %s) refused: %s", name[:40], reply["id"], exc)
        except Exception as exc:  # a bug in a handler must not take the uplink down
            reply["error"] = f"internal error: {exc!r}"
            log.exception("downlink command %r (id %s) failed", name[:40], reply["id"])
        return reply

    async def _alarm_lane(self, client: aiomqtt.Client, flushed: asyncio.Event) -> None:
        """Each alarm alone, the moment it is committed; never behind status or telemetry."""
        cursor = 0
        while True:
            self._alive()
            rows = await self._outbox.rows_after(Priority.ALARM, cursor, ALARM_SLOTS)
            if not rows:
                flushed.set()  # every alarm waiting at connect time is acknowledged: the bulk lane may start
                await self._outbox.wait_for_new(Priority.ALARM, IDLE_POLL_S)
                continue
            cursor = rows[-1].seq
            topic = self.topics.events(Priority.ALARM)
            results = await asyncio.gather(
                *(client.publish(topic, row.payload, qos=1) for row in rows), return_exceptions=True
            )
            acked = [row for row, result in zip(rows, results, strict=True) if result is None]
            await self._outbox.ack(acked)
            self.published[Priority.ALARM] += len(acked)
            if self._on_delivered and acked:
                await self._on_delivered([_event_id(row.payload) for row in acked])
            for row in acked:
                log.info("alarm delivered to the platform: %s", _brief(row.payload))
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise failures[0]

    async def _bulk_lane(self, client: aiomqtt.Client, alarms_flushed: asyncio.Event) -> None:
        """Status first, then telemetry, in batches; a bounded number awaiting PUBACK.

        After a (re)connection it starts only once the alarms waiting in the outbox have been
        acknowledged, so a recovering link carries the alarms first.
        """
        await alarms_flushed.wait()
        cursors = {Priority.STATUS: 0, Priority.TELEMETRY: 0}
        full_window = self.link.batches_in_flight
        window = asyncio.Semaphore(max(1, full_window * self.batch_events // self.link.batch_max_events))
        async with asyncio.TaskGroup() as in_flight:
            while True:
                await window.acquire()
                batch = await self._next_batch(cursors)
                if batch is None:
                    window.release()
                    continue
                priority, rows = batch
                cursors[priority] = rows[-1].seq
                payload = encode_batch(rows, self.link.compress)
                topic = self.topics.events(priority)
                if self._budget:
                    await self._budget.spend(len(payload) + len(topic) + MQTT_OVERHEAD_BYTES)
                in_flight.create_task(self._publish_batch(client, topic, priority, rows, payload, window))

    async def _next_batch(self, cursors: dict[Priority, int]) -> tuple[Priority, list[OutboxRow]] | None:
        """The next batch to send, or None after waiting a little (nothing, or lingering)."""
        link = self.link
        for priority in (Priority.STATUS, Priority.TELEMETRY):
            rows = await self._outbox.rows_after(priority, cursors[priority], self.batch_events)
            if not rows:
                continue
            age_s = time.time() - rows[0].created_ms / 1000
            if len(rows) < self.batch_events and age_s < link.batch_linger_s:
                await asyncio.sleep(link.batch_linger_s - age_s)  # let the batch fill
                return None
            # one batch is at most about one second of the byte budget, so that it cannot hold
            # back a PUBACK or a PINGRESP for long on a thin link
            return priority, _cut_to_size(rows, min(BATCH_MAX_BYTES, link.byte_budget_per_s or BATCH_MAX_BYTES))
        await self._outbox.wait_for_new(Priority.TELEMETRY, IDLE_POLL_S)  # status shares this signal
        return None

    async def _publish_batch(
        self,
        client: aiomqtt.Client,
        topic: str,
        priority: Priority,
        rows: list[OutboxRow],
        payload: bytes,
        window: asyncio.Semaphore,
    ) -> None:
        self._bulk_in_flight += 1
        try:
            await client.publish(topic, payload, qos=1)
            await self._outbox.ack(rows)
        finally:
            window.release()
            self._bulk_in_flight -= 1
        self.published[priority] += len(rows)
        if self.batch_events < self.link.batch_max_events:
            self.batch_events = min(self.link.batch_max_events, self.batch_events + max(1, self.batch_events // 8))
        now = time.monotonic()
        self._acked_bytes.append((now, len(payload)))
        while self._acked_bytes and self._acked_bytes[0][0] < now - DRAIN_RATE_WINDOW_S:
            self._acked_bytes.popleft()

    async def _report_status(self, client: aiomqtt.Client) -> None:
        interval = self._config.uplink.status_interval_s
        while True:
            await client.publish(self.topics.status, await self._status_payload("online"), qos=1, retain=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._status_due.wait()
            self._status_due.clear()

    def drain_rate_bytes_per_s(self) -> float | None:
        """Bytes per second of status/telemetry acknowledged lately (or the budget, if lower)."""
        measured = None
        if len(self._acked_bytes) >= 2:
            span = self._acked_bytes[-1][0] - self._acked_bytes[0][0]
            if span > 0:
                measured = sum(n for _, n in self._acked_bytes) / span
        budget = self.link.byte_budget_per_s
        if measured is None:
            return float(budget) if budget else None
        return min(measured, budget) if budget else measured

    async def _status_payload(self, state: str) -> str:
        return json.dumps({"state": state, **await self.status_body()}, ensure_ascii=False)

    def tls_report(self) -> dict[str, dict[str, Any]]:
        """When the CA and the station's certificate expire, for the status message."""
        out = {}
        for name, (path, not_after) in self._certificates.items():
            days = None if not_after is None else (not_after - datetime.now(UTC)).days
            out[name] = {
                "path": str(path),
                "not_after": not_after.isoformat().replace("+00:00", "Z") if not_after else None,
                "days_left": days,
                "expires_soon": days is not None and days < TLS_EXPIRY_WARNING_DAYS,
            }
        return out

    def backlog_report(self, snap: OutboxSnapshot) -> dict[str, Any]:
        """Backlog, its age, an estimated drain time and what was shed: for the status message."""
        bulk_bytes = snap.bytes[Priority.STATUS] + snap.bytes[Priority.TELEMETRY]
        rate = self.drain_rate_bytes_per_s()
        ratio = TYPICAL_ZLIB_RATIO if self.link.compress else 1.0
        drain_s = None
        if bulk_bytes == 0:
            drain_s = 0.0
        elif rate:
            drain_s = round(bulk_bytes * ratio / rate, 1)
        return {
            "backlog": {p.value: n for p, n in snap.rows.items()},
            "backlog_bytes": sum(snap.bytes.values()),
            "oldest_unsent_s": (
                None
                if snap.oldest_created_ms is None
                else round(max(0.0, time.time() - snap.oldest_created_ms / 1000), 1)
            ),
            "estimated_drain_s": drain_s,
            "shed": snap.shed,
            "storage": {"max_bytes": snap.max_bytes, "disk_full_errors": snap.disk_full_errors},
            "published_since_start": {p.value: n for p, n in self.published.items()},
        }

    def _status_json(self, state: str, reason: str) -> str:
        return json.dumps({"station_id": self._config.station.id, "state": state, "reason": reason})

    async def _say_goodbye(self, client: aiomqtt.Client) -> None:
        """On a clean stop, replace the retained status by 'offline: shutdown'."""
        if not self.connected:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                client.publish(self.topics.status, self._status_json("offline", "shutdown"), qos=1, retain=True),
                SHUTDOWN_STATUS_TIMEOUT_S,
            )


def _cut_to_size(rows: list[OutboxRow], max_bytes: int) -> list[OutboxRow]:
    """Keep the leading rows whose JSON fits in `max_bytes` (at least one row)."""
    total = 0
    for i, row in enumerate(rows):
        total += len(row.payload) + 1
        if total > max_bytes and i > 0:
            return rows[:i]
    return rows


def broker_login(up: UplinkSection) -> tuple[str | None, str | None]:
    """User name and password: from the secrets file when there is one (checked by the config)."""
    secrets = read_secrets(up.secrets_file) if up.secrets_file else None
    return (secrets.username if secrets else None) or up.username, (
        secrets.password if secrets else None
    ) or up.password


def tls_parameters(up: UplinkSection) -> aiomqtt.TLSParameters | None:
    if up.tls is None:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=str(up.tls.ca_file),
        certfile=str(up.tls.cert_file) if up.tls.cert_file else None,
        keyfile=str(up.tls.key_file) if up.tls.key_file else None,
    )


def certificate_not_after(path: Path) -> datetime | None:
    """The expiry of a PEM certificate, or None if the file cannot be read as one."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


def _advice(exc: BaseException | None) -> str:
    """What the technician should check, for the failures whose cause is on this side."""
    text = str(exc)
    if isinstance(exc, FileNotFoundError):
        return f": {exc.filename} is missing; check [uplink.tls] in the station file"
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return ": the broker's certificate is not signed by [uplink.tls] ca_file, or not issued for this host name"
    if isinstance(exc, ssl.SSLError) or "SSL" in text:
        return ": TLS failed; check the broker's port (8883?) and this station's cert_file and key_file"
    if "Not authorized" in text or "Bad user name or password" in text:
        return ": the broker refused this station's user name or password (uplink.secrets_file)"
    return ""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event_id(payload: str) -> str:
    return str(json.loads(payload)["id"])


def _brief(payload: str) -> str:
    event = json.loads(payload)
    return f"{event['kind']} from {event['device_id']} (id {event['id']})"
