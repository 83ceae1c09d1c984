"""The uplink: the only aiomqtt user. Drains the outbox to the city broker with QoS 1.

Two lanes share one connection:
- the alarm lane publishes each alarm alone as soon as it is committed, with slots of
  paho's in-flight window reserved for it, so an alarm never queues behind a backlog;
- the bulk lane sends status, then telemetry, as `{"events": [...]}` batches shaped by the
  station's link profile (batch size, linger, zlib compression, a byte budget per second),
  with a bounded number of batches awaiting their PUBACK, and as many again acknowledged
  whose delete is still being written (a slow commit does not stop the link).

Rules learnt the hard way (shared/stack-notes.md §1, docs/mqtt.md):
- a fresh client per connection: a reused client re-sends paho's own queue, and the outbox
  must be the only memory of what is unsent;
- a row is deleted only on a PUBACK whose reason code is below 0x80. aiomqtt 2.5 drops the
  reason code, so `BrokerClient` takes it from paho's callback itself: under MQTT 5 a broker's
  refusal (0x87 not authorised, 0x97 quota, ...) keeps the event in the outbox and is retried
  with backoff; an in-flight publish is failed the moment the connection drops;
- MQTT 5 by default, 3.1.1 as a setting or as the fallback when a broker refuses 5 (a 3.1.1
  broker may PUBACK a publish its ACL denied: nothing on the wire says so);
- every session task is cancelled when one ends, and a task that does not stop within
  SESSION_ABANDON_S is abandoned: a wedged client can never keep the station offline;
- reconnects use full jitter over a window that grows while sessions keep dying young, so ten
  thousand stations after a broker restart do not come back in the same second;
- the downlink cannot hurt: exact topics only, retained messages ignored, every command in its
  own error boundary and time limit, ids checked before use, replies in ASCII-safe JSON.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import operator
import random
import ssl
import time
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from cryptography import x509
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.care_state import StateRows
from gateway.clock import utc_text
from gateway.commands import COMMANDS, CommandRefused, CommandTable
from gateway.config import LinkSettings, StationConfig, UplinkSection, read_secrets
from gateway.errors import GatewayError
from gateway.events import Priority, counts_said
from gateway.i18n import _
from gateway.outbox import Outbox, OutboxRow, OutboxSnapshot
from gateway.status import BacklogStatus, LinkStatus, StationPart, StationStatus, heartbeat, operator_view

__all__ = [
    "ALARM_RETRY_MAX_S",
    "ALARM_RETRY_MIN_S",
    "COMMAND_TIMEOUT_S",
    "MQTT_OVERHEAD_BYTES",
    "SESSION_ABANDON_S",
    "TLS_EXPIRY_WARNING_DAYS",
    "Backoff",
    "BrokerClient",
    "BrokerProbe",
    "ByteBudget",
    "PublishRefused",
    "Topics",
    "Uplink",
    "Verdict",
    "broker_login",
    "certificate_not_after",
    "encode_batch",
    "probe_broker",
    "subscribe_commands",
    "tls_context",
]

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
RETRY_WINDOW_S = 2.0  # the first reconnect waits U(0, 2 s); the window doubles up to reconnect_max_s
STABLE_SESSION_S = 30.0  # a session shorter than this does not reset the backoff (a broker dropping us)
ALARM_RETRY_MIN_S = 0.5  # an alarm waiting caps the reconnect wait at ALARM_RETRY_MAX_S ...
ALARM_RETRY_MAX_S = 2.0  # ... but never below ALARM_RETRY_MIN_S: no hot loop
REFUSAL_RETRY_S = 1.0  # first pause after a refused publish; doubles up to reconnect_max_s
SESSION_ABANDON_S = 3.0  # a session task that ignores its cancellation this long is abandoned
SHUTDOWN_STATUS_TIMEOUT_S = 2.0  # how long a clean stop waits to publish the offline status
PENDING_CALLS_WARNING = 10_000  # aiomqtt warns above this many pending calls; our windows are smaller
TYPICAL_ZLIB_RATIO = 0.1  # wire/plain size of a narrowband telemetry batch (bench/store_and_forward.py "wire")
DRAIN_RATE_WINDOW_S = 30.0  # the drain-time estimate uses the events acknowledged in this window
DRAIN_RATE_MIN_SPAN_S = 5.0  # ... once they span at least this long
TLS_EXPIRY_WARNING_DAYS = 30  # a certificate expiring sooner is logged at start and flagged in the status
LINK_HISTORY = 20  # link changes kept for the status message
STALL_MARGIN_S = 30.0  # added to the longest healthy wait before the watchdog is starved
SESSION_EXPIRY_S = 86400  # the broker keeps the command subscription (and queued commands) this long offline
COMMAND_QUEUE = 64  # downlink messages waiting to be handled; more are dropped by the client (logged)
COMMAND_TIMEOUT_S = 10.0  # one command may take this long, then it is answered with an error
CLEAN_SESSION_AFTER = 2  # after this many short sessions in a row, one connection starts a clean session
TAKEOVER_HINT_AFTER = 3  # this many short sessions in a row get the "same client id?" hint in the journal
UNSETTLED_PER_SLOT = 2  # batches acknowledged but not yet deleted, per batch the link may have in flight
REASON_NO_SUBSCRIBERS = 0x10  # MQTT 5 PUBACK: accepted, but nobody subscribes to the topic
REASON_SESSION_TAKEN_OVER = 0x8E
UNSUPPORTED_PROTOCOL = (1, 0x84)  # CONNACK: 3.1.1 "unacceptable protocol version", 5 "unsupported"

# the broker has these alarms (their ids): the care state that says so, written with the delete
DeliveredSink = Callable[[list[str]], StateRows]


class Topics:
    """The MQTT topic names of one station (docs/mqtt.md)."""

    def __init__(self, prefix: str, station_id: str) -> None:
        base = f"{prefix}/{station_id}"
        self.status = f"{base}/status"
        self.heartbeat = f"{base}/heartbeat"
        self.commands = f"{base}/cmd/+"  # one level: cmd/x/y/ping is not a command
        self._command_prefix = f"{base}/cmd/"
        self.command_replies = f"{base}/cmd-reply"
        self._events = {p: f"{base}/events/{p.value}" for p in Priority}

    def events(self, priority: Priority) -> str:
        return self._events[priority]

    def command_name(self, topic: str) -> str | None:
        """The command a topic names, or None when it is not exactly {prefix}/{station}/cmd/<name>."""
        if not topic.startswith(self._command_prefix):
            return None
        name = topic[len(self._command_prefix) :]
        return name if name and "/" not in name else None


@dataclass(frozen=True)
class Verdict:
    """The broker's answer to one publish: its PUBACK reason code (0 under MQTT 3.1.1)."""

    code: int
    reason: str

    @property
    def accepted(self) -> bool:
        return self.code < 0x80

    @property
    def label(self) -> str:
        return f"0x{self.code:02X} {self.reason}"


class PublishRefused(GatewayError):
    """The broker answered a publish with a reason code >= 0x80: it does not have the events."""

    def __init__(self, verdict: Verdict, topic: str, events: int, advice: str = "") -> None:
        super().__init__(f"{verdict.label} for {events} event(s) on {topic}", advice)
        self.verdict, self.topic, self.events = verdict, topic, events


def _reason_code(reason: object) -> tuple[int, str]:
    value = getattr(reason, "value", reason)
    return (int(value) if isinstance(value, int) else 0), str(reason)


class BrokerClient(aiomqtt.Client):
    """aiomqtt's client, plus what aiomqtt 2.5 throws away: the PUBACK's reason code, and a
    publish woken at once when the connection drops (aiomqtt lets it wait for its timeout).

    Uses aiomqtt's private `_client` (paho) and callbacks: aiomqtt is pinned below 3.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._verdicts: dict[int, asyncio.Future[Verdict]] = {}
        self.disconnect_reason: tuple[int, str] | None = None

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        verdict = self._verdicts.pop(mid, None)
        if verdict is not None and not verdict.done():
            verdict.set_result(Verdict(*_reason_code(reason_code)))
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self.disconnect_reason = _reason_code(reason_code)
        for verdict in self._verdicts.values():
            if not verdict.done():
                verdict.set_exception(aiomqtt.MqttError(f"disconnected ({reason_code}) before the broker's PUBACK"))
        self._verdicts.clear()
        super()._on_disconnect(client, userdata, flags, reason_code, properties)
        if self._disconnected.done() and not self._disconnected.cancelled():
            self._disconnected.exception()  # seen (the session logs it): no "never retrieved" noise

    async def deliver(self, topic: str, payload: str | bytes, *, retain: bool = False) -> Verdict:
        """Publish with QoS 1 and return the broker's verdict; raise MqttError if none comes."""
        info = self._client.publish(topic, payload, 1, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        verdict: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._verdicts[info.mid] = verdict
        try:
            async with asyncio.timeout(self.timeout):
                return await verdict
        except TimeoutError:
            raise aiomqtt.MqttError(f"no PUBACK within {self.timeout:g} s") from None
        finally:
            self._verdicts.pop(info.mid, None)


class Backoff:
    """Full jitter: the n-th wait in a row is uniform in [0, min(cap, first * 2**(n-1))].

    The one retry policy of the uplink (reconnects and refused publishes)."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self.failures = 0

    def next_delay(self, alarm_waiting: bool = False) -> float:
        self.failures += 1
        window = min(self.cap_s, self.first_s * 2 ** min(self.failures - 1, 30))
        delay = random.uniform(0, window)
        if alarm_waiting:  # sooner, but never a hot loop
            delay = min(max(delay, ALARM_RETRY_MIN_S), ALARM_RETRY_MAX_S)
        return delay

    def reset(self) -> None:
        self.failures = 0


_payload_of = operator.attrgetter("payload")


def encode_batch(rows: list[OutboxRow], compress: bool) -> bytes:
    """`{"events": [...]}`, zlib-compressed (RFC 1950) when asked and worth it."""
    body = ('{"events":[' + ",".join(map(_payload_of, rows)) + "]}").encode()
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


NETWORK_ERRORS = (aiomqtt.MqttError, OSError, TimeoutError)


def _flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _flatten(inner)]
    return [exc]


class Uplink:
    def __init__(
        self,
        config: StationConfig,
        outbox: Outbox,
        station_part: Callable[[], StationPart] | None = None,
        on_delivered: DeliveredSink | None = None,
        commands: CommandTable | None = None,
    ) -> None:
        self._config = config
        self._on_delivered = on_delivered
        self._commands = commands or CommandTable(dict.fromkeys(COMMANDS, self._not_handled))
        self._outbox = outbox
        self._station_part = station_part
        self.say_goodbye = True  # the offline status on a clean stop (a reload clears it)
        self.link = config.uplink.link
        self.topics = Topics(config.uplink.topic_prefix, config.station.id)
        self._budget = ByteBudget(self.link.byte_budget_per_s) if self.link.byte_budget_per_s else None
        self._status_due = asyncio.Event()
        self._status_full_due = True  # the next status message is the full one
        # (when, events, bytes sent, bytes of plain JSON) per acknowledged batch
        self._acked: collections.deque[tuple[float, int, int]] = collections.deque()  # (when, events, bytes sent)
        # Events per batch, adapted to the link: halved when a connection dies with a batch in
        # flight (its PUBACK, or the keepalive's PINGRESP, could not get through behind it),
        # grown back slowly while batches are acknowledged. Ends the livelock of a batch that
        # can never cross a thin link within the keepalive.
        self.batch_events = self.link.batch_max_events
        self._bulk_in_flight = 0
        self.connected = False
        self.published = dict.fromkeys(Priority, 0)  # events acknowledged by the broker since start
        self.refused: dict[str, int] = {}  # events the broker refused, per reason ("0x87 Not authorized")
        self.no_subscribers = 0  # events the broker took while nobody subscribed (MQTT 5 reason 0x10)
        self.commands_ignored: dict[str, int] = {}  # downlink messages not carried out, per reason
        self.command_subscription = "not yet subscribed"
        self.progress_at = time.monotonic()  # the forwarding loop's last sign of life (watchdog)
        self.link_since = time.time()  # when the link last went up or down
        self.connects = 0
        self.link_history: collections.deque[dict[str, Any]] = collections.deque(maxlen=LINK_HISTORY)
        up = config.uplink
        self.protocol = up.protocol  # may fall back to 3.1.1 once, when a broker refuses MQTT 5
        self.broker: tuple[str, int] = up.brokers[0]  # the one in use, or tried last
        self._broker_index = 0
        self._backoff = Backoff(RETRY_WINDOW_S, up.reconnect_max_s)
        self._short_sessions = 0
        self._session_mode = "persistent"  # or "clean" (commands at QoS 0), "no commands": see _open
        self._mode_logged = "persistent"
        self._abandoned: set[asyncio.Task[None]] = set()
        self._username, self._password = broker_login(up)
        candidates = [("ca_file", up.tls.ca_file), ("cert_file", up.tls.cert_file)] if up.tls else []
        # read once: a renewed certificate is installed with a reload, which builds a new uplink
        self._certificates = {name: (path, certificate_not_after(path)) for name, path in candidates if path}
        for report in self.tls_report().values():
            if report["days_left"] is not None and report["days_left"] < TLS_EXPIRY_WARNING_DAYS:
                log.warning(
                    _(
                        "uplink: the certificate %s expires in %d days (%s); renew it before then or the station "
                        "can no longer connect"
                    ),
                    report["path"],
                    report["days_left"],
                    report["not_after"],
                )

    def stalled_s(self, now: float) -> float | None:
        """Seconds without progress, if longer than any healthy wait can last; else None.

        A healthy uplink shows progress at least every IDLE_POLL_S while connected, and at
        every connection attempt (backoff at most reconnect_max_s, then connect_timeout_s per broker).
        """
        up = self._config.uplink
        limit = (
            up.reconnect_max_s
            + (up.connect_timeout_s + SESSION_ABANDON_S) * len(up.brokers)
            + up.publish_timeout_s
            + up.keepalive_s
        )
        silent = now - self.progress_at
        return silent if silent > limit + STALL_MARGIN_S else None

    def _link_changed(self, state: str, reason: str) -> None:
        self.link_since = time.time()
        self.link_history.append({"at": utc_text(self.link_since), "state": state, "reason": reason[:200]})

    def link_report(self) -> LinkStatus:
        """The link's state, since when, how often it came up, and its last changes."""
        host, port = self.broker
        return LinkStatus(
            state="up" if self.connected else "down",
            since=utc_text(self.link_since),
            broker=f"{host}:{port}",
            protocol=self.protocol,
            connects_since_start=self.connects,
            history=list(self.link_history),
            refused=dict(self.refused),
            no_subscribers=self.no_subscribers,
            commands={"subscription": self.command_subscription, "ignored": dict(self.commands_ignored)},
        )

    async def status(self, state: Literal["online", "offline"] | None = None) -> StationStatus:
        """The whole status: station, link, backlog, TLS (the MQTT status message, the status
        file that `care-gateway status` reads, and the local status page). `state`: as the link
        is now, unless given."""
        snap = await self._outbox.snapshot()
        return StationStatus(
            state=state or ("online" if self.connected else "offline"),
            link_profile=self._config.uplink.link_profile,
            backlog=self.backlog_report(snap),
            link=self.link_report(),
            tls=self.tls_report() if self._config.uplink.tls else None,
            station=self._station_part() if self._station_part else None,
        )

    def _alive(self) -> None:
        self.progress_at = time.monotonic()

    def request_status(self) -> None:
        """Publish the full status message soon (a device came or went, the platform asked)."""
        self._status_full_due = True
        self._status_due.set()

    # --- connections ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, drain, reconnect; forever (until cancelled)."""
        while True:
            client = await self._connect()
            started = time.monotonic()
            try:
                await self._session(client)
            except asyncio.CancelledError:
                await self._say_goodbye(client)
                raise
            finally:
                self.connected = False
                with contextlib.suppress(Exception):  # a dead link must not hold up the reconnect
                    async with asyncio.timeout(SESSION_ABANDON_S):  # (not wait_for: it can swallow a cancel)
                        await client.__aexit__(None, None, None)
            await self._after_session(client, time.monotonic() - started)

    async def _after_session(self, client: BrokerClient, lived_s: float) -> None:
        """Wait before reconnecting: at once after a long session (with jitter), growing after short ones."""
        if lived_s >= STABLE_SESSION_S:
            self._backoff.reset()
            self._short_sessions = 0
        else:
            self._short_sessions += 1
        reason = client.disconnect_reason
        if reason is not None and reason[0] == REASON_SESSION_TAKEN_OVER:
            log.error(
                _(
                    "uplink: the broker ended the session because another client connected with this "
                    "station's client id "
                    "%r (MQTT 5 reason 0x8E): is a second station configured with station id %r? Give each station its "
                    "own id; backing off"
                ),
                self._config.client_id,
                self._config.station.id,
            )
        elif self._short_sessions == TAKEOVER_HINT_AFTER:
            log.error(
                _(
                    "uplink: %d sessions in a row ended within %.0f s of connecting; likely causes: another client "
                    "with this station's client id %r (is a second station configured with station id %r?), or the "
                    "broker's ACL or quotas for this client; backing off"
                ),
                self._short_sessions,
                STABLE_SESSION_S,
                self._config.client_id,
                self._config.station.id,
            )
        delay = self._backoff.next_delay(await self._alarm_waiting())
        if self._short_sessions:
            log.info(_("uplink: reconnecting in %.1f s"), delay)
        await asyncio.sleep(delay)

    async def _alarm_waiting(self) -> bool:
        return (await self._outbox.counts())[Priority.ALARM] > 0

    async def _connect(self) -> BrokerClient:
        """A connected client: each broker in turn (the last good one first), then backoff."""
        brokers = self._config.uplink.brokers
        while True:
            for step in range(len(brokers)):
                index = (self._broker_index + step) % len(brokers)
                self.broker = brokers[index]
                self._alive()
                try:
                    client = await self._open(*self.broker)
                except NETWORK_ERRORS as exc:
                    fallback = await self._fall_back(exc)
                    if fallback is None:
                        self._log_connect_failure(exc)
                        continue
                    client = fallback
                self._broker_index = index
                await self._connected(client)
                return client
            delay = self._backoff.next_delay(await self._alarm_waiting())
            log.warning(
                _("uplink down: no broker reachable (%s); round %d, next try in %.1f s"),
                ", ".join(f"{h}:{p}" for h, p in brokers),
                self._backoff.failures,
                delay,
            )
            self._alive()
            await asyncio.sleep(delay)

    async def _fall_back(self, exc: BaseException) -> BrokerClient | None:
        """A broker that refuses MQTT 5 at CONNECT (CONNACK 0x84), or takes the connection and
        never answers a version-5 CONNECT (RabbitMQ before 3.13): if MQTT 3.1.1 then works, use
        it from now on (logged once). None when 3.1.1 does not help either."""
        if self.protocol != "5":
            return None
        if isinstance(exc, MqttConnectError):
            if _reason_code(exc.rc)[0] not in UNSUPPORTED_PROTOCOL:
                return None
            how = f"refuses MQTT 5 ({exc})"
        elif isinstance(exc, aiomqtt.MqttError) and any(
            sign in str(exc) for sign in ("Operation timed out", "disconnect", "Disconnected")
        ):
            how = "took the connection but did not answer an MQTT 5 CONNECT"
        else:
            return None
        self.protocol = "3.1.1"
        try:
            client = await self._open(*self.broker)
        except NETWORK_ERRORS:
            self.protocol = "5"
            return None
        host, port = self.broker
        log.warning(
            _(
                "uplink: the broker %s:%d %s; falling back to MQTT 3.1.1, under which a publish the broker's ACL "
                'denies may still be acknowledged (docs/mqtt.md). Set [uplink] protocol = "3.1.1" to silence this'
            ),
            host,
            port,
            how,
        )
        return client

    async def _open(self, host: str, port: int) -> BrokerClient:
        up = self._config.uplink
        v5 = self.protocol == "5"
        properties = None
        if v5:  # keep the command subscription (and commands sent meanwhile) through an outage
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        # Sessions that keep dying young may mean the broker cannot reach its copy of this
        # station's session or subscription (a cluster node that died held it: RabbitMQ's
        # "home node of durable queue ... is down"). Alarms must still get out: start a clean
        # session with the commands at QoS 0, then, if that dies too, without commands at all.
        self._session_mode = "persistent"
        if self._short_sessions >= 2 * CLEAN_SESSION_AFTER:
            self._session_mode = "no commands"
        elif self._short_sessions >= CLEAN_SESSION_AFTER:
            self._session_mode = "clean"
        clean = self._session_mode != "persistent"
        if self._session_mode != self._mode_logged:
            self._mode_logged = self._session_mode
            if clean:
                log.warning(
                    _(
                        "uplink: %d sessions in a row ended at once (does the broker still hold this station's session "
                        "on a node that is down?); connecting to %s:%d with a clean session%s until one lasts"
                    ),
                    self._short_sessions,
                    host,
                    port,
                    ", commands at QoS 0" if self._session_mode == "clean" else " and no command subscription",
                )
        client = BrokerClient(
            host,
            port,
            identifier=self._config.client_id,
            logger=paho_log,
            username=self._username,
            password=self._password,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            # paho pings after one keepalive without traffic and drops the link after a
            # second: half the configured value catches a silent black hole within it
            keepalive=max(1, math.ceil(up.keepalive_s / 2)),
            timeout=up.connect_timeout_s,  # aiomqtt is not woken by a reset during CONNECT
            clean_session=None if v5 else clean,
            clean_start=clean if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,  # (3.1.1: clean_session)
            properties=properties,
            max_inflight_messages=self.link.batches_in_flight + ALARM_SLOTS + CONTROL_SLOTS,
            max_queued_incoming_messages=COMMAND_QUEUE,
            will=aiomqtt.Will(self.topics.status, self._status_json("offline", "connection lost"), 1, True),
            tls_context=tls_context(up),
        )
        client.pending_calls_threshold = PENDING_CALLS_WARNING
        async with asyncio.timeout(up.connect_timeout_s + SESSION_ABANDON_S):
            await client.__aenter__()
        client.timeout = up.publish_timeout_s  # from now on: how long to wait for a PUBACK
        return client

    async def _connected(self, client: BrokerClient) -> None:
        up = self._config.uplink
        host, port = self.broker
        self.connected = True
        self._alive()
        self.connects += 1
        self._link_changed("up", f"connected to {host}:{port} (MQTT {self.protocol})")
        counts = await self._outbox.counts()
        log.info(
            _("uplink up: connected to %s:%d as %s (MQTT %s, %s link); backlog %s"),
            host,
            port,
            self._config.client_id,
            self.protocol,
            up.link_profile,
            counts_said(counts),
        )

    def _log_connect_failure(self, exc: BaseException) -> None:
        host, port = self.broker
        log.warning(_("uplink down: cannot connect to %s:%d (%r)%s"), host, port, exc, _advice(exc))

    async def _session(self, client: BrokerClient) -> None:
        """One connection's life: returns (after logging why) when the connection is lost.

        Its tasks run until one of them ends; the others are then cancelled, and any that has
        not stopped SESSION_ABANDON_S later is abandoned (logged), so a fresh connection starts.
        """
        alarms_flushed = asyncio.Event()
        lanes: dict[str, Coroutine[Any, Any, None]] = {
            "uplink-watch": self._watch(client),
            "uplink-alarms": self._alarm_lane(client, alarms_flushed),
            "uplink-bulk": self._bulk_lane(client, alarms_flushed),
            "uplink-status": self._report_status(client),
        }
        tasks = [asyncio.create_task(work, name=name) for name, work in lanes.items()]
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            _ended, stuck = await asyncio.wait(tasks, timeout=SESSION_ABANDON_S)
            if stuck:
                log.error(
                    _(
                        "uplink: %s did not stop within %.0f s of being cancelled; abandoning it and starting a fresh "
                        "connection"
                    ),
                    ", ".join(t.get_name() for t in stuck),
                    SESSION_ABANDON_S,
                )
                self._abandoned |= stuck
                for task in stuck:
                    task.add_done_callback(self._abandoned.discard)
        errors = [leaf for t in done if not t.cancelled() and t.exception() for leaf in _flatten(t.exception())]  # type: ignore[arg-type]
        self.connected = False
        if self._bulk_in_flight and self.batch_events > 1:
            self.batch_events = max(1, self.batch_events // 2)
            log.warning(
                _(
                    "uplink: the connection died with %d batch(es) awaiting PUBACK; batches cut to %d events "
                    "(is the link slower than its profile '%s'?)"
                ),
                self._bulk_in_flight,
                self.batch_events,
                self._config.uplink.link_profile,
            )
        self._bulk_in_flight = 0
        for exc in errors:
            if not isinstance(exc, NETWORK_ERRORS):
                log.error(_("uplink: a session task failed unexpectedly; reconnecting"), exc_info=exc)
        reason = "; ".join(repr(e) for e in errors) or "session ended"
        if client.disconnect_reason and client.disconnect_reason[0]:
            reason += f" (broker: 0x{client.disconnect_reason[0]:02X} {client.disconnect_reason[1]})"
        self._link_changed("down", reason)
        backlog = sum((await self._outbox.counts()).values())
        log.warning(_("uplink down: %s; %d events kept in the outbox; reconnecting"), reason, backlog)

    # --- downlink ---------------------------------------------------------------------------------

    async def _watch(self, client: BrokerClient) -> None:
        """Listen for downlink commands; raises MqttError the moment the connection drops."""
        if self._session_mode == "no commands":
            self.command_subscription = "not subscribed (sessions kept failing; see the journal)"
            await asyncio.Future()  # the connection's end is seen by the lanes
        qos = 1 if self._session_mode == "persistent" else 0
        self._check_suback(await subscribe_commands(client, self.topics, self.protocol == "5", qos))
        async for message in client.messages:
            await self._command(client, message)

    def _check_suback(self, granted: Any) -> None:
        codes = [_reason_code(g) for g in granted] if isinstance(granted, list | tuple) else []
        code, reason = codes[0] if codes else (0x80, "no answer")
        if code >= 0x80:
            self.command_subscription = f"refused: 0x{code:02X} {reason}"
            log.error(
                _(
                    "uplink: the broker refused the subscription to %s (0x%02X %s): platform commands (ack, resolve, "
                    "time) cannot reach this station; check the broker's ACL for this station's client"
                ),
                self.topics.commands,
                code,
                reason,
            )
        else:
            self.command_subscription = f"granted QoS {code}"
            if code < 1 and self._session_mode == "persistent":
                log.warning(
                    _("uplink: the broker granted only QoS %d for %s: a command sent while the link is down is lost"),
                    code,
                    self.topics.commands,
                )

    @staticmethod
    async def _not_handled(command: object) -> dict[str, Any]:
        raise CommandRefused(f"{type(command).__name__} is not handled by this station")

    def _ignore(self, why: str, topic: str) -> None:
        self.commands_ignored[why] = self.commands_ignored.get(why, 0) + 1
        log.warning(_("downlink: message on %r ignored: %s"), topic[:200], why)

    async def _command(self, client: BrokerClient, message: aiomqtt.Message) -> None:
        """Validate, carry out and answer one downlink command, inside its own error boundary:
        nothing in a message can stop the uplink (only a lost connection ends the session)."""
        topic = str(message.topic)
        if message.retain:
            self._ignore("retained (a command is never taken from the broker's retained store)", topic)
            return
        name = self.topics.command_name(topic)
        if name is None:
            self._ignore("not exactly {prefix}/{station}/cmd/<name>", topic)
            return
        try:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT_S):
                    reply = await self._commands.answer(name, message.payload)
            except TimeoutError:
                reply = {"id": None, "command": name, "ok": False, "error": "timed out"}
                log.error(_("downlink command %r timed out after %.0f s"), name[:40], COMMAND_TIMEOUT_S)
            verdict = await client.deliver(self.topics.command_replies, json.dumps(reply, ensure_ascii=True))
            if not verdict.accepted:
                log.warning(_("downlink: the broker refused the reply to %r (%s)"), name[:40], verdict.label)
        except NETWORK_ERRORS:
            raise
        except Exception:
            log.exception(_("downlink command %r could not be answered"), name[:40])

    # --- uplink -----------------------------------------------------------------------------------

    def _count_refusal(self, refusal: PublishRefused) -> None:
        label = refusal.verdict.label
        self.refused[label] = self.refused.get(label, 0) + refusal.events
        self.request_status()
        log.error(
            _("uplink: the broker refused %d event(s) on %s: %s; they stay in the outbox and are retried%s"),
            refusal.events,
            refusal.topic,
            label,
            _refusal_advice(refusal.verdict.code, self._config.client_id),
        )

    def _note_verdict(self, verdict: Verdict, topic: str, events: int) -> None:
        if verdict.code == REASON_NO_SUBSCRIBERS:
            if not self.no_subscribers:
                log.warning(
                    _(
                        "uplink: the broker took events on %s but says nobody subscribes to it (0x10): is the platform "
                        "listening with a persistent session?"
                    ),
                    topic,
                )
            self.no_subscribers += events

    async def _alarm_lane(self, client: BrokerClient, flushed: asyncio.Event) -> None:
        """Each alarm alone, the moment it is committed; never behind status or telemetry."""
        cursor = 0
        topic = self.topics.events(Priority.ALARM)
        refusals = Backoff(REFUSAL_RETRY_S, self._config.uplink.reconnect_max_s)
        while True:
            self._alive()
            rows = await self._outbox.rows_after(Priority.ALARM, cursor, ALARM_SLOTS)
            if not rows:
                flushed.set()  # every alarm waiting at connect time is acknowledged: the bulk lane may start
                await self._outbox.wait_for_new(Priority.ALARM, IDLE_POLL_S)
                continue
            cursor = rows[-1].seq
            results = await asyncio.gather(
                *(client.deliver(topic, row.payload) for row in rows), return_exceptions=True
            )
            acked = [row for row, r in zip(rows, results, strict=True) if isinstance(r, Verdict) and r.accepted]
            refused = [r for r in results if isinstance(r, Verdict) and not r.accepted]
            for result in results:
                if isinstance(result, Verdict) and result.accepted:
                    self._note_verdict(result, topic, 1)
            if acked:
                ids = [row.event_id for row in acked]
                # the rows go and the alarms become "delivered" in one transaction
                await self._outbox.ack(acked, state=self._on_delivered(ids) if self._on_delivered else None)
                self.published[Priority.ALARM] += len(acked)
                for row in acked:
                    log.info(_("alarm delivered to the platform: %s"), _brief(row.payload))
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise failures[0]
            if refused:
                self._count_refusal(PublishRefused(refused[0], topic, len(refused)))
                flushed.set()  # a refused alarm must not hold back the rest (it stays first in line)
                delay = refusals.next_delay()
                log.info(_("uplink: retrying the refused alarm(s) in %.1f s"), delay)
                self._alive()
                await asyncio.sleep(delay)
                cursor = 0  # read them again, oldest first
            else:
                refusals.reset()

    async def _bulk_lane(self, client: BrokerClient, alarms_flushed: asyncio.Event) -> None:
        """Status first, then telemetry, in batches; a bounded number awaiting PUBACK.

        After a (re)connection it starts only once the alarms waiting in the outbox have been
        acknowledged, so a recovering link carries the alarms first. A refused batch stops the
        pass: its rows stay, and the lane starts again from the oldest after a backoff.
        """
        await alarms_flushed.wait()
        refusals = Backoff(REFUSAL_RETRY_S, self._config.uplink.reconnect_max_s)
        while True:
            try:
                await self._bulk_pass(client, refusals)
            except* PublishRefused as group:
                for refusal in group.exceptions:
                    assert isinstance(refusal, PublishRefused)
                    self._count_refusal(refusal)
                self._bulk_in_flight = 0
                delay = refusals.next_delay()
                self._alive()
                await asyncio.sleep(delay)

    async def _bulk_pass(self, client: BrokerClient, refusals: Backoff) -> None:
        cursors = {Priority.STATUS: 0, Priority.TELEMETRY: 0}
        full_window = self.link.batches_in_flight
        slots = max(1, full_window * self.batch_events // self.link.batch_max_events)
        window = asyncio.Semaphore(slots)  # batches awaiting their PUBACK
        # and batches acknowledged whose rows are still being deleted: a slow commit (a checkpoint's
        # fsync) does not stop the link, and what waits for the disk stays bounded
        unsettled = asyncio.Semaphore(UNSETTLED_PER_SLOT * slots)
        async with asyncio.TaskGroup() as in_flight:
            while True:
                await unsettled.acquire()
                await window.acquire()
                batch = await self._next_batch(cursors)
                if batch is None:
                    window.release()
                    unsettled.release()
                    continue
                priority, rows, payload = batch
                cursors[priority] = rows[-1].seq
                topic = self.topics.events(priority)
                if self._budget:
                    await self._budget.spend(len(payload) + len(topic) + MQTT_OVERHEAD_BYTES)
                in_flight.create_task(
                    self._publish_batch(client, topic, priority, rows, payload, (window, unsettled), refusals)
                )

    async def _next_batch(self, cursors: dict[Priority, int]) -> tuple[Priority, list[OutboxRow], bytes] | None:
        """The next batch to send, or None after waiting a little (nothing, or lingering)."""
        link = self.link
        self._alive()
        for priority in (Priority.STATUS, Priority.TELEMETRY):
            if not self._outbox.holds(priority):  # (a backlog of telemetry: one read a batch, not two)
                continue
            rows = await self._outbox.rows_after(priority, cursors[priority], self.batch_events)
            if not rows:
                continue
            age_s = time.time() - rows[0].created_ms / 1000
            if len(rows) < self.batch_events and 0 <= age_s < link.batch_linger_s:
                await asyncio.sleep(link.batch_linger_s - age_s)  # let the batch fill
                return None
            rows, payload = fit_batch(rows, link.compress, batch_limit(link, self.topics.events(priority)))
            return priority, rows, payload
        await self._outbox.wait_for_new(Priority.TELEMETRY, IDLE_POLL_S)  # status shares this signal
        return None

    async def _publish_batch(
        self,
        client: BrokerClient,
        topic: str,
        priority: Priority,
        rows: list[OutboxRow],
        payload: bytes,
        slots: tuple[asyncio.Semaphore, asyncio.Semaphore],
        refusals: Backoff,
    ) -> None:
        window, unsettled = slots
        try:
            self._bulk_in_flight += 1
            try:
                verdict = await client.deliver(topic, payload)
            finally:
                window.release()
                self._bulk_in_flight -= 1
            if not verdict.accepted:
                raise PublishRefused(verdict, topic, len(rows))
            await self._outbox.ack(rows)
        finally:
            unsettled.release()
        self._note_verdict(verdict, topic, len(rows))
        refusals.reset()
        self.published[priority] += len(rows)
        if self.batch_events < self.link.batch_max_events:
            self.batch_events = min(self.link.batch_max_events, self.batch_events + max(1, self.batch_events // 8))
        now = time.monotonic()
        self._acked.append((now, len(rows), len(payload) + len(topic) + MQTT_OVERHEAD_BYTES))  # as the budget counts
        while self._acked and self._acked[0][0] < now - DRAIN_RATE_WINDOW_S:
            self._acked.popleft()

    async def _report_status(self, client: BrokerClient) -> None:
        """The full retained status on connect, on request and whenever what an operator acts
        on changes (status.operator_view); between them, every status_interval_s, a heartbeat
        of ~150 bytes, not retained: at fleet scale the broker keeps one status per station
        and writes it only when it says something new (docs/mqtt.md, "Status")."""
        interval = self._config.uplink.status_interval_s
        refused_before: str | None = None
        self._status_full_due = True  # (a new connection: the broker may have lost the retained one)
        last_view: dict[str, Any] | None = None
        while True:
            personal = self._config.uplink.share_personal_data  # (the retained message outlives the station)
            body = (await self.status("online")).to_json(personal=personal)
            view = operator_view(body)
            if self._status_full_due or view != last_view:
                self._status_full_due = False
                topic, payload, retain = self.topics.status, json.dumps(body, ensure_ascii=False), True
            else:
                topic, payload, retain = self.topics.heartbeat, json.dumps(heartbeat(body)), False
            if self._budget:
                await self._budget.spend(len(payload) + len(topic) + MQTT_OVERHEAD_BYTES)
            verdict = await client.deliver(topic, payload, retain=retain)
            if retain:
                last_view = view if verdict.accepted else None  # (refused: send the full one again)
            if not verdict.accepted and verdict.label != refused_before:
                log.error(
                    _("uplink: the broker refused the status message on %s (%s)%s"),
                    topic,
                    verdict.label,
                    _refusal_advice(verdict.code, self._config.client_id),
                )
            refused_before = None if verdict.accepted else verdict.label
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._status_due.wait()
            self._status_due.clear()

    def drain_rate_events_per_s(self) -> float | None:
        """Status and telemetry events acknowledged per second lately (None: not yet measurable,
        under DRAIN_RATE_MIN_SPAN_S of batches: a budget's first second goes out in a burst)."""
        if len(self._acked) < 2:
            return None
        span = self._acked[-1][0] - self._acked[0][0]
        if span < DRAIN_RATE_MIN_SPAN_S:
            return None
        return (sum(batch[1] for batch in self._acked) - self._acked[0][1]) / span  # (the first began the span)

    def wire_bytes_per_event(self) -> float | None:
        """Bytes on the link per event in the recent batches, as the byte budget counts them
        (None before the first batch). Not a ratio to the stored bytes: a row stores less than
        it sends (stored_form), so that ratio would misjudge a budget-bound drain."""
        events = sum(batch[1] for batch in self._acked)
        return sum(batch[2] for batch in self._acked) / events if events else None

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

    def backlog_report(self, snap: OutboxSnapshot) -> BacklogStatus:
        """Backlog, its age, an estimated drain time and what was shed: for the status message."""
        bulk_rows = snap.rows[Priority.STATUS] + snap.rows[Priority.TELEMETRY]
        bulk_bytes = snap.bytes[Priority.STATUS] + snap.bytes[Priority.TELEMETRY]
        drain_s = None
        if bulk_rows == 0:
            drain_s = 0.0
        elif (rate := self.drain_rate_events_per_s()) is not None:
            drain_s = round(bulk_rows / rate, 1)  # what the link has been doing: measured, not modelled
        elif self.link.byte_budget_per_s:  # not measured yet: the budget, at the bytes per event seen so far
            per_event = self.wire_bytes_per_event()
            sent = (
                bulk_rows * per_event if per_event else bulk_bytes * (TYPICAL_ZLIB_RATIO if self.link.compress else 1.0)
            )
            drain_s = round(sent / self.link.byte_budget_per_s, 1)
        return BacklogStatus(
            backlog={p.value: n for p, n in snap.rows.items()},
            backlog_bytes=sum(snap.bytes.values()),
            oldest_unsent_s=(
                None
                if snap.oldest_created_ms is None
                else round(max(0.0, time.time() - snap.oldest_created_ms / 1000), 1)
            ),
            estimated_drain_s=drain_s,
            shed=dict(snap.shed),
            storage={"max_bytes": snap.max_bytes, "disk_full_errors": snap.disk_full_errors, **snap.disk},
            published_since_start={p.value: n for p, n in self.published.items()},
        )

    def _status_json(self, state: str, reason: str) -> str:
        return json.dumps({"station_id": self._config.station.id, "state": state, "reason": reason})

    async def _say_goodbye(self, client: BrokerClient) -> None:
        """On a clean stop, replace the retained status by 'offline: shutdown' (not for a
        reload: the station is back at once, and the clean DISCONNECT keeps the last will)."""
        if not self.connected or not self.say_goodbye:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SHUTDOWN_STATUS_TIMEOUT_S):
                await client.deliver(self.topics.status, self._status_json("offline", "shutdown"), retain=True)


async def subscribe_commands(client: BrokerClient, topics: Topics, v5: bool, qos: int) -> Any:
    """Subscribe to the station's command topic; under MQTT 5 the broker is asked to send no
    retained message (none would be carried out anyway, see Uplink._command). The SUBACK's codes."""
    if v5:
        options = SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        return await client.subscribe(topics.commands, options=options)
    return await client.subscribe(topics.commands, qos=qos)


@dataclass(frozen=True)
class BrokerProbe:
    """What `care-gateway doctor` learnt from one broker: connect, publish permission, commands."""

    broker: str
    connected: bool
    message: str
    error: BaseException | None = None
    publish: Verdict | None = None  # the broker's answer to an empty batch on the events topic
    subscription: str | None = None  # "granted QoS 1", "refused: 0x87 Not authorized"
    protocol: str = "5"


async def probe_broker(config: StationConfig, host: str, port: int, timeout_s: float) -> BrokerProbe:
    """Connect as the station would (under its own client id, MQTT 5) and test what the station
    needs: publishing events (an empty batch, `{"events":[]}`, which a platform counts as
    nothing) and subscribing to its commands. MQTT 5 is used even on a 3.1.1 station: only
    MQTT 5 tells a refused publish from an accepted one."""
    up = config.uplink
    username, password = broker_login(up)
    topics = Topics(up.topic_prefix, config.station.id)
    where = f"{host}:{port}"
    for protocol in (aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311):
        client = BrokerClient(
            host,
            port,
            identifier=f"{config.client_id}-doctor",  # not the daemon's id: it must not be kicked off
            username=username,
            password=password,
            protocol=protocol,
            tls_context=tls_context(up),
            timeout=timeout_s,
        )
        try:
            async with asyncio.timeout(timeout_s * 3):
                async with client:
                    verdict = await client.deliver(topics.events(Priority.STATUS), '{"events":[]}')
                    granted = await subscribe_commands(client, topics, protocol is aiomqtt.ProtocolVersion.V5, 1)
                    code, reason = _reason_code(granted[0]) if granted else (0x80, "no answer")
                    await client.unsubscribe(topics.commands)
        except MqttConnectError as exc:
            if protocol is aiomqtt.ProtocolVersion.V5 and _reason_code(exc.rc)[0] in UNSUPPORTED_PROTOCOL:
                continue
            return BrokerProbe(
                where, False, _("cannot connect to {broker}: {reason}").format(broker=where, reason=repr(exc)), exc
            )
        except (*NETWORK_ERRORS, ssl.SSLError) as exc:
            return BrokerProbe(
                where, False, _("cannot connect to {broker}: {reason}").format(broker=where, reason=repr(exc)), exc
            )
        subscription = f"granted QoS {code}" if code < 0x80 else f"refused: 0x{code:02X} {reason}"
        name = "5" if protocol is aiomqtt.ProtocolVersion.V5 else "3.1.1"
        accepted = _("{broker} accepted an MQTT {version} connection").format(broker=where, version=name)
        return BrokerProbe(where, True, accepted, None, verdict, subscription, name)
    return BrokerProbe(where, False, _("{broker} refused both MQTT 5 and 3.1.1").format(broker=where))


def batch_limit(link: LinkSettings, topic: str) -> int:
    """Most payload bytes of one batch: about one second of the byte budget on the wire, topic
    and MQTT header included, so that it cannot hold back a PUBACK or a PINGRESP for long on a
    thin link; BATCH_MAX_BYTES whatever the profile."""
    if not link.byte_budget_per_s:
        return BATCH_MAX_BYTES
    return min(BATCH_MAX_BYTES, link.byte_budget_per_s - len(topic) - MQTT_OVERHEAD_BYTES)


def fit_batch(rows: list[OutboxRow], compress: bool, max_bytes: int) -> tuple[list[OutboxRow], bytes]:
    """The leading rows whose batch, as sent (compressed when the link compresses), fits in
    `max_bytes` (at least one row), and that batch. Sizing after compression is what lets a
    narrow link carry ~49 readings a message instead of the 3 whose plain JSON fits."""
    if not compress:
        rows = _cut_to_size(rows, max_bytes)
        return rows, encode_batch(rows, False)
    payload = encode_batch(rows, True)
    if len(payload) <= max_bytes or len(rows) == 1:
        return rows, payload
    best, low, high = (rows[:1], encode_batch(rows[:1], True)), 2, len(rows) - 1
    while low <= high:  # the largest count that fits (a batch grows with its rows)
        middle = (low + high) // 2
        candidate = encode_batch(rows[:middle], True)
        if len(candidate) <= max_bytes:
            best, low = (rows[:middle], candidate), middle + 1
        else:
            high = middle - 1
    return best


def _json_length(rows: list[OutboxRow]) -> int:
    """Characters of the rows' JSON with a comma each (in C: the drain calls it per batch)."""
    return sum(map(len, map(_payload_of, rows))) + len(rows)


def _cut_to_size(rows: list[OutboxRow], max_bytes: int) -> list[OutboxRow]:
    """Keep the leading rows whose JSON fits in `max_bytes` (at least one row)."""
    if _json_length(rows) <= max_bytes:
        return rows  # (the usual case, counted in C)
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


def tls_context(up: UplinkSection) -> ssl.SSLContext | None:
    """The broker's TLS: its certificate checked against [uplink.tls] ca_file and its name,
    never below TLS 1.2 (pinned here, not left to the machine's defaults), and the station's
    own certificate when the broker asks for one."""
    if up.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(up.tls.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if up.tls.cert_file:
        context.load_cert_chain(str(up.tls.cert_file), str(up.tls.key_file) if up.tls.key_file else None)
    return context


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


def _refusal_advice(code: int, client_id: str) -> str:
    """What to check when the broker refuses a publish (MQTT 5 reason codes)."""
    if code == 0x87:
        return f"; the broker's ACL does not let client {client_id!r} publish there: ask the platform operator"
    if code == 0x97:
        return "; the broker's quota for this station is exhausted (it may clear by itself)"
    if code in (0x90, 0x99):
        return "; the broker rejects the topic name or payload format: check [uplink] topic_prefix"
    if code == 0x95:
        return "; the message is larger than the broker accepts: lower [uplink] batch_max_events"
    return ""


def _brief(payload: str) -> str:
    event = json.loads(payload)
    return _("{kind} from {device} (id {id})").format(kind=event["kind"], device=event["device_id"], id=event["id"])
