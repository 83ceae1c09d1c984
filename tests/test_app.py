"""The station's composition: task supervision and start-up failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import app
from gateway.rules import EventDraft
from simulators.broker import Mosquitto
from simulators.harness import station_toml


async def test_a_failing_task_is_logged_and_restarted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app, "TASK_RESTART_DELAY_S", 0.0)
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(len(calls))
        if len(calls) < 3:
            raise RuntimeError(f"boom {len(calls)}")

    await app.keep_running("device rx", flaky)
    assert calls == [0, 1, 2]
    assert [r.getMessage() for r in caplog.records] == [
        "device rx failed unexpectedly; restarting it in 0 s",
        "device rx failed unexpectedly; restarting it in 0 s",
    ]


def test_unusable_outbox_folder_exits_69_with_advice(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config = tmp_path / "station.toml"
    config.write_text(station_toml(station_id="st", broker_port=1, db_path=blocker / "outbox.db", receiver_ports={}))
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 69
    assert "Traceback" not in run.stderr
    assert f"cannot open the outbox {blocker / 'outbox.db'}" in run.stderr
    assert f"check that {blocker} exists, is writable by the service user" in run.stderr


async def test_a_failing_care_rule_still_stores_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.config import parse_config
    from gateway.events import EventKind, Priority
    from gateway.outbox import Outbox

    raw = {
        "station": {"id": "st", "name": "s"},
        "uplink": {"host": "127.0.0.1"},
        "storage": {"path": str(tmp_path / "o.db")},
    }
    station = app.Station(parse_config(raw))

    def broken(*_: object) -> list[object]:
        raise ZeroDivisionError("a bug in a rule")

    monkeypatch.setattr(station.care, "triage", broken)
    async with Outbox(station.config.storage, "st") as outbox:
        station._outbox = outbox
        await station.on_events("rx", [EventDraft(EventKind.SOS, {"zone": 3})])
        [row] = await outbox.rows_after(Priority.ALARM, 0, 10)
    assert '"kind":"sos"' in row.payload
    assert "care rules failed on 1 event(s) from rx; storing them as they came" in caplog.text


def test_the_watchdog_is_starved_only_when_the_uplink_is_stuck_longer_than_any_healthy_wait() -> None:
    import time

    from gateway.config import parse_config
    from gateway.uplink import Uplink

    raw = {"station": {"id": "st", "name": "s"}, "uplink": {"host": "127.0.0.1"}, "storage": {"path": "/tmp/x.db"}}
    config = parse_config(raw)
    uplink = Uplink(config, None)  # type: ignore[arg-type]  # no I/O is needed to judge progress
    now = time.monotonic()
    longest_healthy_wait = 60 + 10 + 3 + 10 + 30  # backoff, CONNACK, abandoning a stuck session, PUBACK, keepalive
    uplink.progress_at = now - longest_healthy_wait
    assert uplink.stalled_s(now) is None
    uplink.progress_at = now - longest_healthy_wait - 31
    assert uplink.stalled_s(now) == pytest.approx(longest_healthy_wait + 31)


async def test_sighup_refuses_a_bad_file_and_applies_a_good_one(tmp_path: Path, broker: Mosquitto) -> None:
    import signal

    from simulators.button_receiver import surgard_report
    from tests.conftest import events_of, running_station, wait_until

    async with running_station(tmp_path, broker) as station:
        gw = station.gateway
        assert gw.proc is not None
        good = station.config_path.read_text()
        station.config_path.write_text(good.replace("keepalive_s = 5", "keepalive_s = 1"))  # below the minimum
        mark = len(gw.lines)
        gw.proc.send_signal(signal.SIGHUP)
        assert await gw.wait_for_line("the new configuration is refused, the running one stays", after=mark)
        assert any("uplink.keepalive_s: must be at least 2" in line for line in gw.lines[mark:])
        assert (await station.receiver.send(surgard_report(code=101, zone=7))).acked  # still running as before
        assert await wait_until(lambda: len(events_of(station, "sos")) == 1)

        assert await wait_until(lambda: station.sink.status is not None)
        before = station.sink.status
        assert before is not None
        seen = len(station.sink.status_history)
        station.config_path.write_text(good.replace('name = "Simulated care station"', 'name = "Renamed station"'))
        mark = len(gw.lines)
        gw.proc.send_signal(signal.SIGHUP)
        assert await gw.wait_for_line("reloaded: restarting the station with it", after=mark)
        assert await gw.wait_for_line("device button-rx-1 online", after=mark)
        assert (await station.receiver.send(surgard_report(code=101, zone=8))).acked
        assert await wait_until(lambda: len(events_of(station, "sos")) == 2)
        assert await wait_until(lambda: (station.sink.status or {}).get("name") == "Renamed station")
        assert gw.proc.returncode is None
        # a reload is a reload: no offline status, no second start, the same daemon run, uptime kept
        assert [s["state"] for s in station.sink.status_history[seen:]] == ["online"] * (
            len(station.sink.status_history) - seen
        )
        assert await wait_until(lambda: events_of(station, "config_reloaded"))
        [started] = events_of(station, "gateway_started")
        [reloaded] = events_of(station, "config_reloaded")
        assert reloaded["data"]["run_id"] == started["data"]["run_id"] == before["run_id"]
        assert reloaded["data"]["boot_id"] == started["data"]["boot_id"]
        after = station.sink.status
        assert after is not None
        assert after["uptime_s"] >= before["uptime_s"]


@contextlib.asynccontextmanager
async def watching_clock(station: app.Station) -> AsyncIterator[None]:
    """The station's clock watch running, as its task would; it has taken its first reading
    when the block starts."""
    task = asyncio.create_task(station._watch_clock())
    await asyncio.sleep(0)  # (its first step reads the clock's offset)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def status_rows(outbox: Any, count: int) -> list[dict[str, Any]]:
    """The outbox's status events once there are `count` of them (the clock watch writes them),
    or what there is after 10 s."""
    from gateway.events import Priority

    for _ in range(200):
        rows = await outbox.rows_after(Priority.STATUS, 0, 100)
        if len(rows) >= count:
            break
        await asyncio.sleep(0.05)
    return [json.loads(r.payload) for r in rows]


class ShiftedClock:
    """A station clock that is `shift_s` off and trusted or not, as the test says."""

    def __init__(self) -> None:
        from gateway.clock import Clock

        self._real = Clock("always")
        self.boot_id = self._real.boot_id
        self.shift_s = 0.0
        self.synchronised = False

    def now(self) -> Any:
        from datetime import timedelta

        return self._real.now() + timedelta(seconds=self.shift_s)

    def monotonic(self) -> float:
        return self._real.monotonic()

    def trusted(self) -> bool:
        return self.synchronised

    def steady(self) -> Any:
        return self._real.steady()

    def shift_steady(self, seconds: float) -> None:
        self._real.shift_steady(seconds)


async def test_events_accepted_before_the_clock_is_synchronised_are_rebased_and_jumps_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    from datetime import UTC, datetime

    from gateway.config import parse_config
    from gateway.events import EventKind, Priority
    from gateway.outbox import Outbox

    monkeypatch.setattr(app, "CLOCK_CHECK_S", 0.1)
    raw = {"station": {"id": "st", "name": "s"}, "uplink": {"host": "127.0.0.1"}}
    config = parse_config({**raw, "storage": {"path": str(tmp_path / "o.db")}})
    clock = ShiftedClock()
    clock.shift_s = -86400.0  # booted without a clock battery: a day behind
    station = app.Station(config, clock=clock)  # type: ignore[arg-type]

    async with Outbox(config.storage, "st", clock.boot_id) as outbox:
        station._outbox = outbox
        await station.on_events(
            "rx", [EventDraft(EventKind.TEST, {"zone": 1}), EventDraft(EventKind.TEST, {"zone": 2})]
        )
        [early, _] = await outbox.rows_after(Priority.STATUS, 0, 10)
        assert json.loads(early.payload)["clock_trusted"] is False

        async with watching_clock(station):
            clock.shift_s, clock.synchronised = 0.0, True  # NTP steps the clock and reports it synchronised
            [rebased, _, synced] = await status_rows(outbox, 3)
        assert rebased["clock_trusted"] is True
        assert rebased["data"]["ts_unsynced"] == json.loads(early.payload)["ts"]
        true_ts = datetime.fromisoformat(rebased["ts"].replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - true_ts).total_seconds()) < 5
        assert synced["kind"] == "clock"
        assert synced["data"]["change"] == "synchronised"
        assert synced["data"]["rebased_events"] == 2
        assert synced["data"]["correction_s"] == pytest.approx(86400, abs=1)

        async with watching_clock(station):
            clock.shift_s = 30.0  # someone sets the clock by hand
            jump = (await status_rows(outbox, 4))[-1]
        assert (jump["kind"], jump["data"]["change"]) == ("clock", "jump")
        assert jump["data"]["jump_s"] == pytest.approx(30, abs=1)


async def test_the_platform_time_is_used_until_ntp_synchronises_the_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    from gateway import clock as clock_module
    from gateway.clock import Clock
    from gateway.commands import CommandRefused, TimeCommand
    from gateway.config import parse_config
    from gateway.events import EventKind
    from gateway.outbox import Outbox

    monkeypatch.setattr(app, "CLOCK_CHECK_S", 0.1)
    synchronised = False
    monkeypatch.setattr(clock_module, "_kernel_says_synchronised", lambda: synchronised)
    raw = {"station": {"id": "st", "name": "s"}, "uplink": {"host": "127.0.0.1"}}
    config = parse_config({**raw, "storage": {"path": str(tmp_path / "o.db")}})
    clock = Clock("auto")
    station = app.Station(config, clock=clock)
    platform_time = datetime.now(UTC) + timedelta(hours=1)  # the station's clock is an hour behind

    async with Outbox(config.storage, "st", clock.boot_id) as outbox:
        station._outbox = outbox
        await station.on_events("rx", [EventDraft(EventKind.TEST, {"zone": 1})])
        async with watching_clock(station):
            result = await station.on_time(TimeCommand(id="t-1", utc=platform_time))
            assert result["offset_s"] == pytest.approx(3600, abs=2)
            [rebased, synced] = await status_rows(outbox, 2)
        assert rebased["clock_trusted"] is True
        ts = datetime.fromisoformat(rebased["ts"].replace("Z", "+00:00"))
        assert abs((ts - platform_time).total_seconds()) < 5
        assert (synced["data"]["change"], synced["data"]["rebased_events"]) == ("synchronised", 1)
        assert station.station_part().clock_source == "platform"

        synchronised = True  # NTP gets through: the system clock is right, the offset goes
        clock._next_check = 0.0
        async with watching_clock(station):
            jump = (await status_rows(outbox, 3))[-1]
        assert jump["data"]["change"] == "jump"
        assert jump["data"]["jump_s"] == pytest.approx(-3600, abs=2)
        assert clock.source == "ntp"
        with pytest.raises(CommandRefused, match="already trusted"):
            await station.on_time(TimeCommand(id="t-2", utc=platform_time))


async def test_a_failing_retention_sweep_is_logged_and_events_are_still_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import sqlite3

    from gateway import outbox as outbox_module
    from gateway.clock import Clock
    from gateway.config import StorageSection
    from gateway.events import EventKind, Priority, new_event
    from gateway.outbox import Outbox

    monkeypatch.setattr(outbox_module, "RETENTION_SWEEP_S", 0.0)
    monkeypatch.setattr(outbox_module, "WRITER_TICK_S", 0.05)

    def disk_full(self: Outbox) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Outbox, "_expire", disk_full)
    clock = Clock("always")
    async with Outbox(StorageSection(path=tmp_path / "o.db", max_age_days=1), "st") as outbox:
        for _ in range(200):  # several sweeps fail
            if outbox.sweep_errors >= 2:
                break
            await asyncio.sleep(0.05)
        await outbox.append(new_event(clock, "st", "rx", EventKind.SOS, {"zone": 1}))
        assert len(await outbox.rows_after(Priority.ALARM, 0, 10)) == 1
        assert outbox.sweep_errors >= 2
        assert outbox.writer_failure is None
    assert "removing events older than 1 days failed (database or disk is full); new events are still" in caplog.text


async def test_a_dead_outbox_writer_stops_the_station_for_systemd_to_restart_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from gateway.config import parse_config
    from gateway.outbox import Outbox

    async def dies(self: Outbox) -> None:
        raise RuntimeError("injected writer failure")

    monkeypatch.setattr(Outbox, "_write_groups", dies)
    raw = {"station": {"id": "st", "name": "s"}, "uplink": {"host": "127.0.0.1", "port": 9}}
    station = app.Station(parse_config({**raw, "storage": {"path": str(tmp_path / "o.db")}}))
    with pytest.raises(app.StationFailed, match="the outbox writer stopped"):
        await asyncio.wait_for(station.run(), 10)


async def test_the_watchdog_is_not_fed_while_the_outbox_writer_is_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import socket
    import threading

    from gateway import outbox as outbox_module
    from gateway.clock import Clock
    from gateway.config import parse_config
    from gateway.events import EventKind, new_event
    from gateway.outbox import Outbox

    notify = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr(outbox_module, "WRITER_STALL_S", 0.5)
    release = threading.Event()
    real_commit = Outbox._commit

    def stuck_commit(self: Outbox, *args: Any, **kwargs: Any) -> None:
        release.wait(10)  # a commit that hangs (a dying SD card)
        real_commit(self, *args, **kwargs)

    raw = {"station": {"id": "st", "name": "s"}, "uplink": {"host": "127.0.0.1"}}
    station = app.Station(parse_config({**raw, "storage": {"path": str(tmp_path / "o.db")}}))

    def pings() -> int:
        n = 0
        while True:
            try:
                n += listener.recv(100) == b"WATCHDOG=1"
            except BlockingIOError:
                return n

    async with Outbox(station.config.storage, "st") as outbox:
        station._outbox = outbox
        supervisor = asyncio.create_task(station._supervise())

        async def fed(times: int) -> bool:
            seen = 0
            for _ in range(200):
                seen += pings()
                if seen >= times:
                    return True
                await asyncio.sleep(0.05)
            return False

        assert await fed(3)  # healthy: fed
        monkeypatch.setattr(Outbox, "_commit", stuck_commit)
        append = asyncio.create_task(outbox.append(new_event(Clock("always"), "st", "rx", EventKind.SOS, {})))
        for _ in range(200):
            if "the outbox writer has made no progress for" in caplog.text:  # stuck, and said so
                break
            await asyncio.sleep(0.05)
        pings()
        await asyncio.sleep(0.5)  # (a silence can only be watched for a while)
        assert pings() == 0  # stuck: starved
        release.set()
        await append
        assert await fed(2)  # committing again: fed again
        supervisor.cancel()
    listener.close()


async def test_the_platform_time_survives_a_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_station keeps one Clock for the daemon's run (the e2e reload test shows the same
    run_id before and after): a station started again on it runs on the platform's time."""
    from datetime import UTC, datetime, timedelta

    from gateway import clock as clock_module
    from gateway.clock import Clock
    from gateway.commands import TimeCommand
    from gateway.config import parse_config
    from gateway.outbox import Outbox

    monkeypatch.setattr(clock_module, "_kernel_says_synchronised", lambda: False)
    raw = {"station": {"id": "st", "name": "s"}, "uplink": {"host": "127.0.0.1"}}
    config = parse_config({**raw, "storage": {"path": str(tmp_path / "o.db")}})
    clock = Clock(config.station.trust_clock)
    first = app.Station(config, clock)
    async with Outbox(config.storage, "st", clock.boot_id) as outbox:
        first._outbox = outbox
        await first.on_time(TimeCommand(id="t-1", utc=datetime.now(UTC) + timedelta(hours=1)))
    clock.retrust(config.station.trust_clock)  # as run_station does before it starts the station again
    again = app.Station(config, clock, reloaded=True)
    assert (again.clock.trusted(), again.clock.source, again.station_part().run_id) == (True, "platform", clock.run_id)
    clock.retrust("always")  # a reloaded file that says the box keeps its time
    assert (clock.trusted(), clock.source) == (True, "configured")
