"""The city platform, as far as a station can tell: an MQTT subscriber that records events.

It subscribes to `{prefix}/{station}/#` with QoS 1 in a persistent session, accepts single
events and `{"events": [...]}` batches, de-duplicates by event id (the way the platform
must, since delivery is at-least-once) and writes each new event as one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

RECONNECT_S = 0.2
MQTT_HEADER_BYTES = 6  # fixed header, remaining length, packet id of a QoS 1 PUBLISH (small message)


class PlatformSink:
    def __init__(
        self,
        host: str,
        port: int,
        station_id: str,
        prefix: str = "care/v1",
        out_path: Path | None = None,
        command_key: bytes | None = None,
        client_id: str | None = None,
    ) -> None:
        self.client_id = client_id or f"platform-sink-{station_id}"
        self.host, self.port = host, port
        self.command_key = command_key  # signs every command sent as a dict (docs/mqtt.md, "Signed commands")
        self.prefix, self.station_id = prefix, station_id
        self.out_path = out_path
        self.events: dict[str, dict[str, Any]] = {}  # id -> event, in arrival order
        self.arrived_at: dict[str, float] = {}  # id -> time.monotonic() of first arrival
        self.duplicates = 0
        self.status: dict[str, Any] | None = None
        self.status_history: list[dict[str, Any]] = []  # every retained status seen, in order
        self.heartbeats: list[dict[str, Any]] = []  # the small messages between full statuses
        self.status_bytes: list[int] = []  # bytes on the wire of each status / heartbeat message
        self.heartbeat_bytes: list[int] = []
        self.replies: dict[str | None, dict[str, Any]] = {}  # correlation id -> the station's reply
        self.subscribed = asyncio.Event()
        # (arrival, bytes on the wire: payload + topic + MQTT header, events, priority) per events message
        self.messages: list[tuple[float, int, int, str]] = []
        self._client: aiomqtt.Client | None = None
        self._arrived = asyncio.Condition()

    async def run(self) -> None:
        topic = f"{self.prefix}/{self.station_id}/#"
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=self.client_id, clean_session=False
                ) as client:
                    await client.subscribe(topic, qos=1)
                    self._client = client
                    self.subscribed.set()
                    async for message in client.messages:
                        await self._record(str(message.topic), bytes(message.payload))
            except aiomqtt.MqttError:
                self._client = None
                self.subscribed.clear()
                await asyncio.sleep(RECONNECT_S)

    async def command(self, name: str, body: dict[str, Any] | bytes) -> None:
        """Publish a downlink command (a dict as JSON; bytes as they are, for hostile tests)."""
        assert self._client is not None, "not connected"
        if isinstance(body, dict) and self.command_key is not None and "sig" not in body:
            body = signed(self.command_key, name, body)
        payload = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False)
        await self._client.publish(f"{self.prefix}/{self.station_id}/cmd/{name}", payload, qos=1)

    async def _record(self, topic: str, payload: bytes) -> None:
        base = f"{self.prefix}/{self.station_id}"
        if topic.startswith(f"{base}/cmd/"):
            return  # our own commands, echoed by the broker
        wire = len(payload) + len(topic) + MQTT_HEADER_BYTES
        body = json.loads(payload if payload[:1] == b"{" else zlib.decompress(payload))  # (docs/mqtt.md)
        if topic == f"{base}/cmd-reply":
            self.replies[body.get("id")] = body
            return
        if topic == f"{base}/status":
            self.status = body
            self.status_history.append(body)
            self.status_bytes.append(wire)
            return
        if topic == f"{base}/heartbeat":
            self.heartbeats.append(body)
            self.heartbeat_bytes.append(wire)
            return
        if not topic.startswith(f"{base}/events/"):
            return
        batch = body.get("events", [body])
        self.messages.append((time.monotonic(), wire, len(batch), topic.rsplit("/", 1)[-1]))
        async with self._arrived:
            for event in batch:
                if event["id"] in self.events:
                    self.duplicates += 1
                    continue
                self.events[event["id"]] = event
                self.arrived_at[event["id"]] = time.monotonic()
                if self.out_path:
                    with self.out_path.open("a") as out:
                        out.write(json.dumps({"topic": topic, **event}) + "\n")
            self._arrived.notify_all()

    async def wait_for(self, count: int, timeout: float) -> bool:
        """True once at least `count` distinct events have arrived."""
        async with self._arrived:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.events) >= count), timeout)
        return len(self.events) >= count


def signed(key: bytes, name: str, body: dict[str, Any], issued_at: datetime | None = None) -> dict[str, Any]:
    """A command as a platform signs it: issued_at (now, UTC), a fresh nonce, and sig = hex
    HMAC-SHA256(key, name + "\\n" + the body without sig as sorted, compact, ASCII JSON).
    Written from docs/mqtt.md, apart from the gateway's own code."""
    at = (issued_at or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    body = {**body, "issued_at": at, "nonce": secrets.token_urlsafe(12)}
    text = name + "\n" + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return {**body, "sig": hmac.new(key, text.encode(), hashlib.sha256).hexdigest()}
