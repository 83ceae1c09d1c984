"""The uplink: the only aiomqtt user. Drains the outbox to the city broker with QoS 1.

Rules learnt the hard way (shared/stack-notes.md §1):
- a fresh `aiomqtt.Client` per connection: a reused client re-sends paho's own queue, and the
  outbox must be the only memory of what is unsent;
- `publish(qos=1)` returns on PUBACK, and only then is the row deleted; an in-flight publish
  is not woken by a disconnect, so a listener task watches the connection and tears the
  session down at once;
- retries and backoff (tenacity) wrap the connect step only, so every outage starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiomqtt
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)

from gateway.config import StationConfig
from gateway.events import Priority
from gateway.outbox import Outbox, OutboxRow

log = logging.getLogger("care_gateway.uplink")

DRAIN_BATCH_ROWS = 50  # publishes in flight at once; paho's default in-flight window is 20
IDLE_POLL_S = 1.0  # re-read the outbox at least this often even without a new-row signal
FIRST_RETRY_S = 0.5  # first reconnect delay; doubles up to [uplink] reconnect_max_s
RETRY_JITTER_S = 1.0  # spreads the reconnects of many stations after a city-wide outage
SHUTDOWN_STATUS_TIMEOUT_S = 2.0  # how long a clean stop waits to publish the offline status
PENDING_CALLS_WARNING = 1000  # aiomqtt warns above this many pending calls; our window is smaller

StatusSource = Callable[[], dict[str, Any]]


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


class Uplink:
    def __init__(self, config: StationConfig, outbox: Outbox, status_source: StatusSource) -> None:
        self._config = config
        self._outbox = outbox
        self._status_source = status_source
        self.topics = Topics(config.uplink.topic_prefix, config.station.id)
        self._status_due = asyncio.Event()
        self.connected = False
        self.published = 0  # events acknowledged by the broker since start

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
            async with asyncio.TaskGroup() as session:
                session.create_task(self._watch(client), name="uplink-watch")
                session.create_task(self._drain(client), name="uplink-drain")
                session.create_task(self._report_status(client), name="uplink-status")
        except* (aiomqtt.MqttError, OSError, TimeoutError) as group:
            self.connected = False
            reason = "; ".join(repr(e) for e in group.exceptions)
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
            with attempt:
                client = aiomqtt.Client(
                    up.host,
                    up.port,
                    identifier=self._config.client_id,
                    username=up.username,
                    password=up.password,
                    keepalive=up.keepalive_s,
                    timeout=up.connect_timeout_s,  # aiomqtt is not woken by a reset during CONNECT
                    clean_session=True,
                    will=aiomqtt.Will(self.topics.status, self._status_json("offline", "connection lost"), 1, True),
                    tls_params=(
                        aiomqtt.TLSParameters(
                            ca_certs=str(up.tls.ca_file),
                            certfile=str(up.tls.cert_file) if up.tls.cert_file else None,
                            keyfile=str(up.tls.key_file) if up.tls.key_file else None,
                        )
                        if up.tls
                        else None
                    ),
                )
                client.pending_calls_threshold = PENDING_CALLS_WARNING
                await client.__aenter__()
                client.timeout = up.publish_timeout_s  # from now on: how long to wait for a PUBACK
        self.connected = True
        counts = await self._outbox.counts()
        log.info(
            "uplink up: connected to %s:%d as %s; backlog %s",
            up.host,
            up.port,
            self._config.client_id,
            _describe_counts(counts),
        )
        return client

    def _log_retry(self, state: RetryCallState) -> None:
        up = self._config.uplink
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "uplink down: cannot connect to %s:%d (%r); attempt %d, next try in %.1f s",
            up.host,
            up.port,
            exc,
            state.attempt_number,
            wait,
        )

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Listen for downlink commands; raises MqttError the moment the connection drops."""
        await client.subscribe(self.topics.commands, qos=1)
        async for message in client.messages:
            await self._command(client, message)

    async def _command(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        name = str(message.topic).rsplit("/", 1)[-1]
        log.info("downlink command %r received", name)
        if name == "status":
            self._status_due.set()
            reply = {"command": name, "ok": True}
        else:
            reply = {"command": name, "ok": False, "error": "unknown command (known: status)"}
        await client.publish(self.topics.command_replies, json.dumps(reply), qos=1)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the oldest, most urgent rows; delete each only after its PUBACK."""
        while True:
            rows = await self._outbox.next_batch(DRAIN_BATCH_ROWS)
            if not rows:
                await self._outbox.wait_for_new(IDLE_POLL_S)
                continue
            results = await asyncio.gather(*(self._publish(client, row) for row in rows), return_exceptions=True)
            acked = [row for row, result in zip(rows, results, strict=True) if result is None]
            await self._outbox.ack(acked)
            self.published += len(acked)
            for row, result in zip(rows, results, strict=True):
                if row.priority is Priority.ALARM and result is None:
                    log.info("alarm delivered to the platform: %s", _brief(row.payload))
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise failures[0]

    async def _publish(self, client: aiomqtt.Client, row: OutboxRow) -> None:
        await client.publish(self.topics.events(row.priority), row.payload, qos=1)

    async def _report_status(self, client: aiomqtt.Client) -> None:
        interval = self._config.uplink.status_interval_s
        while True:
            await client.publish(self.topics.status, await self._status_payload("online"), qos=1, retain=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_due.wait(), interval)
            self._status_due.clear()

    async def _status_payload(self, state: str) -> str:
        counts = await self._outbox.counts()
        oldest = await self._outbox.oldest_created_ms()
        body = self._status_source()
        body.update(
            state=state,
            backlog={p.value: n for p, n in counts.items()},
            oldest_unsent_s=None if oldest is None else round(max(0.0, time.time() - oldest / 1000), 1),
            published_since_start=self.published,
        )
        return json.dumps(body)

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


def _describe_counts(counts: dict[Priority, int]) -> str:
    return ", ".join(f"{n} {p.value}" for p, n in counts.items())


def _brief(payload: str) -> str:
    event = json.loads(payload)
    return f"{event['kind']} from {event['device_id']} (id {event['id']})"
