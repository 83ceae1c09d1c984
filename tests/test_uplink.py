"""The uplink's pure parts and the clock's defences (issue 11): no broker needed here."""

from __future__ import annotations

import contextlib
import json
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import app
from gateway.clock import Clock
from gateway.commands import TimeCommand
from gateway.config import ConfigError, parse_config
from gateway.events import EventKind, Priority
from gateway.outbox import Outbox
from gateway.rules import EventDraft
from gateway.uplink import ALARM_RETRY_MAX_S, ALARM_RETRY_MIN_S, Backoff, Topics, Uplink, encode_batch

RAW: dict[str, Any] = {
    "station": {"id": "st", "name": "s"},
    "uplink": {"host": "127.0.0.1"},
    "storage": {"path": "/tmp/x.db"},
}


def test_backoff_is_full_jitter_over_a_growing_window_and_an_alarm_never_makes_it_a_hot_loop() -> None:
    backoff = Backoff(1.0, 60.0)
    for n in range(1, 12):
        window = min(60.0, 2.0 ** (n - 1))
        assert 0 <= backoff.next_delay() <= window
    samples = [Backoff(1.0, 60.0) for _ in range(2000)]
    for b in samples:
        for _ in range(6):
            b.next_delay()
    sixth = [b.next_delay() for b in samples]  # the 7th wait: uniform over [0, 60]
    busiest_second = max(sum(1 for d in sixth if k <= d < k + 1) for k in range(60))
    assert busiest_second < 0.05 * len(sixth)  # spread over the window, not bunched at its end
    assert min(sixth) < 5
    assert max(sixth) > 55
    alarm = Backoff(1.0, 60.0)
    waits = [alarm.next_delay(alarm_waiting=True) for _ in range(50)]
    assert all(ALARM_RETRY_MIN_S <= w <= ALARM_RETRY_MAX_S for w in waits)
    alarm.reset()
    assert alarm.failures == 0


def test_only_the_exact_command_topic_names_a_command() -> None:
    topics = Topics("care/v1", "st")
    assert topics.commands == "care/v1/st/cmd/+"
    assert topics.command_name("care/v1/st/cmd/ping") == "ping"
    assert topics.command_name("care/v1/st/cmd/x/y/ping") is None
    assert topics.command_name("care/v1/st/cmd/") is None
    assert topics.command_name("care/v1/other/cmd/ping") is None
    assert topics.command_name("care/v1/st/cmdping") is None


@pytest.mark.parametrize(
    ("payload", "reply_id", "error"),
    [
        (b'{"id": "\\ud800"}', None, "id must be a string of 1-64 printable characters"),
        (b'{"id": "' + b"x" * 65 + b'"}', None, "id must be a string of 1-64 printable characters"),
        (b'{"id": "a\\nb"}', None, "id must be a string of 1-64 printable characters"),
        (b'{"id": 7}', None, "id must be a string of 1-64 printable characters"),
        (b"[1, 2]", None, "payload is not a JSON object"),
        (b'{"id": "ok-1"}', "ok-1", None),
    ],
)
async def test_a_command_id_is_checked_before_it_is_used_and_replies_are_ascii(
    payload: bytes, reply_id: str | None, error: str | None
) -> None:
    from gateway.app import Station

    station = Station(parse_config({**RAW, "storage": {"path": "/tmp/x.db"}}))
    reply = await station.command_table().answer("ping", payload)
    assert reply["id"] == reply_id
    assert reply.get("error") == error
    assert reply["ok"] is (error is None)
    json.dumps(reply, ensure_ascii=True).encode("ascii")  # what is published: never an encoding error


def test_failover_brokers_are_parsed_and_each_one_is_held_to_the_plaintext_rule() -> None:
    config = parse_config(
        {**RAW, "uplink": {"host": "127.0.0.1", "port": 1884, "failover": ["localhost", "127.0.0.2:1999"]}}
    )
    assert config.uplink.brokers == [("127.0.0.1", 1884), ("localhost", 1884), ("127.0.0.2", 1999)]
    assert config.uplink.protocol == "5"
    with pytest.raises(ConfigError) as refused:
        parse_config({**RAW, "uplink": {"host": "127.0.0.1", "failover": ["broker-2.example.cn"]}})
    assert "plaintext MQTT to broker-2.example.cn is refused" in str(refused.value)
    with pytest.raises(ConfigError, match=r'uplink\.failover: failover\[0\]: port "99999" is not 1-65535'):
        parse_config({**RAW, "uplink": {"host": "127.0.0.1", "failover": ["b:99999"]}})
    with pytest.raises(ConfigError, match=r"uplink.protocol"):
        parse_config({**RAW, "uplink": {"host": "127.0.0.1", "protocol": "4"}})
    assert parse_config({**RAW, "uplink": {"host": "127.0.0.1", "protocol": "3.1.1"}}).uplink.protocol == "3.1.1"


def test_the_platform_time_is_taken_once_and_only_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import clock as clock_module

    monkeypatch.setattr(clock_module, "_kernel_says_synchronised", lambda: False)
    now = datetime.now(UTC)
    for utc, why in [
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), "more than two years ahead"),
        (datetime(1, 1, 1, tzinfo=UTC), "is before"),
        (now - timedelta(days=365), "is before"),  # behind the newest event committed
    ]:
        with pytest.raises(ValueError, match=why):
            Clock("auto").set_from_platform(utc, latest_seen=now - timedelta(minutes=5))
    clock = Clock("auto")
    assert clock.set_from_platform(now + timedelta(hours=1), latest_seen=now) == pytest.approx(3600, abs=5)
    with pytest.raises(ValueError, match="already taken in this boot"):
        clock.set_from_platform(now + timedelta(hours=1), latest_seen=now)


def test_stamping_an_event_never_raises_whatever_offset_the_clock_has() -> None:
    clock = Clock("always")
    clock._offset_s = 1e15  # as if a huge platform offset had slipped through
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 5


class SteppingClock(Clock):
    """A clock whose monotonic time the test moves, and whose wall clock it can step."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall_step_s = 0.0
        super().__init__("always")

    def monotonic(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.wall_step_s)


async def test_a_wall_clock_a_year_back_silences_no_care_timer(tmp_path: Path) -> None:
    """Inactivity and re-announcement run on the monotonic clock: stepping the wall clock a year
    back (by hand, or by a platform's time) neither delays nor cancels them."""
    raw: dict[str, Any] = {
        **RAW,
        "storage": {"path": str(tmp_path / "o.db")},
        "care": {"timezone": "Asia/Shanghai", "ack_timeout_s": 120},
        "residents": [
            {"id": "wang", "name": "王", "lives_alone": True, "inactivity_s": 3600, "waking_hours": "00:00-23:59"}
        ],
        "devices": [
            {"id": "rx", "kind": "contact_id_receiver", "port": "/dev/null", "residents": {"3": "wang"}},
            {"id": "radar", "kind": "mmwave_radar", "port": "/dev/null2", "model": "mr60fda1", "resident": "wang"},
        ],
    }
    clock = SteppingClock()
    station = app.Station(parse_config(raw), clock=clock)
    async with Outbox(station.config.storage, "st", clock.boot_id) as outbox:
        station._outbox = outbox
        await station.on_events("rx", [EventDraft(EventKind.SOS, {"zone": 3, "qualifier": "new"})])
        [sos] = await outbox.rows_after(Priority.ALARM, 0, 10)
        sos_id = json.loads(sos.payload)["id"]
        await outbox.ack([sos], state=station.on_delivered([sos_id]))
        assert (await outbox.load_state())[f"alarm:{sos_id}"]["state"] == "delivered"  # with the delete
        assert await outbox.rows_after(Priority.ALARM, 0, 10) == []
        clock.wall_step_s = -365 * 86400  # the wall clock goes back a year
        kinds: list[str] = []
        for _ in range(2 * 3600 // 15):  # two hours of care ticks, on the monotonic clock
            clock.mono += 15
            for event in station.care.tick(clock.steady()):
                kinds.append(event.kind.value)
        assert "alarm_reminder" in kinds  # the unacknowledged SOS is announced again on time
        assert "inactivity" in kinds  # and one hour without activity is noticed within the second
        first_reminder, first_inactivity = kinds.index("alarm_reminder"), kinds.index("inactivity")
        assert first_reminder < first_inactivity


async def test_a_time_command_a_year_back_is_refused_by_the_station(tmp_path: Path) -> None:
    from gateway.commands import CommandRefused

    config = parse_config({**RAW, "storage": {"path": str(tmp_path / "o.db")}})
    station = app.Station(config, clock=Clock("auto"))
    async with Outbox(config.storage, "st", station.clock.boot_id) as outbox:
        station._outbox = outbox
        await station.on_events("rx", [EventDraft(EventKind.TEST, {"zone": 1})])
        year_back = datetime.now(UTC) - timedelta(days=365)
        with pytest.raises(CommandRefused, match=r"the platform's time is refused: .* is before"):
            await station.on_time(TimeCommand(id="t", utc=year_back))


async def test_a_session_task_that_swallows_its_cancellation_is_abandoned_and_a_fresh_session_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    import aiomqtt

    from gateway.uplink import SESSION_ABANDON_S
    from simulators.broker import Mosquitto

    released = asyncio.Event()

    async def stubborn(self: Uplink, client: object) -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                continue  # as a client library that loses a cancellation would

    async def failing_watch(self: Uplink, client: object) -> None:
        await asyncio.sleep(0.3)
        raise aiomqtt.MqttError("injected session failure")

    monkeypatch.setattr(Uplink, "_report_status", stubborn)
    monkeypatch.setattr(Uplink, "_watch", failing_watch)
    with Mosquitto(tmp_path / "broker") as broker:
        raw = {**RAW, "uplink": {"host": broker.host, "port": broker.port, "reconnect_max_s": 1}}
        config = parse_config({**raw, "storage": {"path": str(tmp_path / "o.db")}})
        async with Outbox(config.storage, "st") as outbox:
            uplink = Uplink(config, outbox)
            running = asyncio.create_task(uplink.run())
            for _ in range(int((SESSION_ABANDON_S * 3 + 5) / 0.1)):
                if uplink.connects >= 3:
                    break
                await asyncio.sleep(0.1)
            assert uplink.connects >= 3  # each wedged session was left behind, and a fresh one started
            assert "uplink-status did not stop within 3 s of being cancelled; abandoning it" in caplog.text
            released.set()
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


async def test_the_platform_time_is_taken_once_per_boot_even_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import clock as clock_module
    from gateway.commands import CommandRefused

    monkeypatch.setattr(clock_module, "_kernel_says_synchronised", lambda: False)
    config = parse_config({**RAW, "storage": {"path": str(tmp_path / "o.db")}})
    platform_time = datetime.now(UTC) + timedelta(minutes=10)
    for run in ("first", "after a restart"):
        station = app.Station(config, clock=Clock("auto"))
        async with Outbox(config.storage, "st", station.clock.boot_id) as outbox:
            station._outbox = outbox
            station.care.load(await outbox.load_state())
            if run == "first":
                assert (await station.on_time(TimeCommand(id="t-1", utc=platform_time)))["offset_s"] > 500
            else:
                with pytest.raises(CommandRefused, match="already taken in this boot"):
                    await station.on_time(TimeCommand(id="t-2", utc=platform_time))


def test_a_narrowband_batch_is_sized_after_compression() -> None:
    """Radar readings as a station makes them (8 radars, one every 0.7 s, varied values): a
    narrowband message holds at least 40 of them in one second of budget, at most 25 bytes an
    event on the wire; plain JSON would have fitted 4."""
    import random

    from gateway.config import LINK_PROFILES
    from gateway.events import new_event
    from gateway.outbox import OutboxRow
    from gateway.uplink import MQTT_OVERHEAD_BYTES, batch_limit, fit_batch

    class Stepping(Clock):
        def __init__(self) -> None:
            super().__init__()
            self.at = datetime(2026, 11, 23, tzinfo=UTC)

        def now(self) -> datetime:
            self.at += timedelta(milliseconds=700)
            return self.at

    clock, rng = Stepping(), random.Random(3)
    link = LINK_PROFILES["narrowband"]
    rows = []
    for n in range(link.batch_max_events):
        data = {"presence": rng.random() < 0.8, "motion": rng.choice(["none", "stationary", "moving"]),
                "room": rng.choice(["bedroom", "living room", "bathroom"]), "change": True}  # fmt: skip
        event = new_event(clock, "nm-xilin-0012", f"radar-{n % 8}", EventKind.ACTIVITY, data)
        rows.append(OutboxRow(n, Priority.TELEMETRY, 0, event.to_json(), event.id))
    topic = Topics("care/v1", "nm-xilin-0012").events(Priority.TELEMETRY)
    wire_max = batch_limit(link, topic)
    assert wire_max == 1000 - len(topic) - MQTT_OVERHEAD_BYTES  # one second of the budget, framing included
    sent, payload = fit_batch(rows, link.compress, wire_max)
    assert len(payload) <= wire_max < len(encode_batch(rows[: len(sent) + 1], True))  # the most that fit
    assert len(sent) >= 40
    assert (len(payload) + len(topic) + MQTT_OVERHEAD_BYTES) / len(sent) <= 25
    assert json.loads(zlib.decompress(payload))["events"] == [json.loads(r.payload) for r in sent]
    plain, _ = fit_batch(rows, False, wire_max)
    assert len(plain) <= 4


async def test_a_slow_delete_does_not_stop_the_link_and_what_waits_for_it_stays_bounded(tmp_path: Path) -> None:
    """A batch's slot is free at its PUBACK, its rows deleted behind it: with the outbox thread
    held (a commit stuck in a checkpoint's fsync) the link still carries twice its window of
    batches, and no more; once the disk answers, the backlog drains, each event once."""
    import asyncio
    import sqlite3
    import threading

    import aiomqtt

    from gateway.uplink import UNSETTLED_PER_SLOT
    from simulators.broker import Mosquitto

    batch, rows = 50, 30_000  # (enough that the backlog is not through before the outbox thread is held)
    with Mosquitto(tmp_path / "broker") as broker:
        raw = {**RAW, "uplink": {"host": broker.host, "port": broker.port, "batch_max_events": batch}}
        config = parse_config({**raw, "storage": {"path": str(tmp_path / "o.db")}})
        seen: list[str] = []
        subscribed = asyncio.Event()

        async def platform() -> None:
            async with aiomqtt.Client(broker.host, broker.port, identifier="platform") as client:
                await client.subscribe("care/v1/st/events/telemetry", qos=1)
                subscribed.set()
                async for message in client.messages:
                    seen.extend(e["id"] for e in json.loads(bytes(message.payload))["events"])  # type: ignore[arg-type]

        async with Outbox(config.storage, "st") as outbox:
            clock = Clock()
            await outbox.append(
                *(app.new_event(clock, "st", "radar", EventKind.ACTIVITY, {"presence": True}) for _ in range(rows))
            )
            listening = asyncio.create_task(platform())
            await asyncio.wait_for(subscribed.wait(), 10)
            uplink = Uplink(config, outbox)
            running = asyncio.create_task(uplink.run())
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.05)
            busy, release = threading.Event(), threading.Event()
            loop = asyncio.get_running_loop()
            held = loop.run_in_executor(outbox._executor, lambda: (busy.set(), release.wait(20)))
            await loop.run_in_executor(None, busy.wait, 5)
            try:
                before = -1
                while len(seen) != before:  # until nothing more comes while the deletes wait
                    before = len(seen)
                    await asyncio.sleep(0.5)
                with contextlib.closing(sqlite3.connect(tmp_path / "o.db")) as db:
                    [(left,)] = db.execute("SELECT count(*) FROM outbox").fetchall()
                published_not_deleted = len(seen) - (rows - left)
                window = uplink.link.batches_in_flight
                assert window * batch < published_not_deleted <= UNSETTLED_PER_SLOT * window * batch, (
                    published_not_deleted
                )
            finally:
                release.set()
                await held
            for _ in range(400):
                if len(seen) >= rows:
                    break
                await asyncio.sleep(0.05)
            assert len(seen) == len(set(seen)) == rows
            running.cancel()
            listening.cancel()
            for task in (running, listening):
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task
