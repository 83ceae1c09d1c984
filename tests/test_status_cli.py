"""`care-gateway status`: the running daemon's state, and a progress view while a backlog drains."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from simulators.broker import Mosquitto
from simulators.button_receiver import surgard_report
from tests.conftest import Station, events_of, running_station, wait_until


async def status(config: Path, *extra: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "status", "--config", str(config), *extra, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, out
    return out.decode()


def written(station: Station) -> dict[str, Any]:
    """What the daemon last wrote to status.json (beside the outbox, outside systemd)."""
    try:
        body: dict[str, Any] = json.loads((station.db_path.parent / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return body


async def test_status_reads_the_daemon_and_watches_a_backlog_drain(tmp_path: Path, broker: Mosquitto) -> None:
    async with running_station(
        tmp_path, broker, seed_telemetry=1000, uplink_extra="byte_budget_per_s = 40000"
    ) as station:
        assert await wait_until(
            lambda: written(station).get("devices", {}).get("button-rx-1", {}).get("state") == "online"
        )
        first = await status(station.config_path)
        assert "station test-station (Simulated care station): care-gateway" in first
        assert "device button-rx-1 (contact_id_receiver) online last seen" in first
        assert "backlog: " in first

        watched = await status(station.config_path, "--watch", "--timeout", "60")
        lines = watched.splitlines()
        assert lines[-1] == "backlog drained: nothing waits", watched
        assert any(" events/s, about " in line for line in lines), watched  # the progress view had a rate
        assert await wait_until(lambda: set(station.seeded) <= set(station.sink.events))

        assert (await station.receiver.send(surgard_report(code=101, zone=5))).acked
        assert await wait_until(lambda: len(events_of(station, "sos")) == 1)
        assert await wait_until(lambda: [a["state"] for a in written(station).get("alarms_open", [])] == ["delivered"])
        now = await status(station.config_path)
        assert "OPEN ALARM sos from button-rx-1: delivered" in now
        assert "link: up since" in now
        as_json = json.loads(await status(station.config_path, "--json"))
        assert as_json["daemon"] == "running"
        assert as_json["status"]["link"]["state"] == "up"
        assert as_json["status"]["storage_use"]["outbox_file_bytes"] > 0

        await station.gateway.stop(signal.SIGKILL)  # status.json stays, fresh, but its process is gone
        assert written(station)
        assert "the daemon is not running" in await status(station.config_path)
        await station.restart_gateway()
        assert await wait_until(lambda: written(station).get("pid") == station.gateway.proc.pid)
        assert "the daemon is not running" not in await status(station.config_path)
        await station.gateway.stop()  # a clean stop takes its status file away
        assert written(station) == {}
        assert "the daemon is not running" in await status(station.config_path)


def test_the_status_file_is_where_the_reader_looks(tmp_path: Path) -> None:
    from gateway.config import RUNTIME_DIR, parse_config, status_file_to_write, status_files

    raw = {
        "station": {"id": "st", "name": "s"},
        "uplink": {"host": "127.0.0.1"},
        "storage": {"path": str(tmp_path / "outbox.db")},
    }
    config = parse_config(raw)
    assert status_file_to_write(config, None) == tmp_path / "status.json"  # no systemd: beside the outbox
    under_systemd = status_file_to_write(config, str(RUNTIME_DIR))
    assert under_systemd == RUNTIME_DIR / "status.json"
    assert {under_systemd, tmp_path / "status.json"} == set(status_files(config))  # what care-gateway status reads


def test_a_killed_daemon_is_seen_at_once_whoever_asks() -> None:
    """The status file's pid and start time against /proc: a killed daemon not yet reaped (a
    zombie), or a pid taken since by another process, is not running, however fresh the file."""
    import os
    import subprocess

    from gateway.__main__ import _alive
    from gateway.status import own_start, process_started

    me = own_start()
    assert me is not None
    assert _alive(os.getpid(), me)
    assert not _alive(os.getpid(), me + 1)  # the same pid, started at another time: reused
    child = subprocess.Popen(["sleep", "60"])
    assert process_started(child.pid) is not None
    child.kill()
    assert wait_for_zombie(child.pid)
    assert not _alive(child.pid, None)  # killed, not yet reaped
    child.wait()
    assert not _alive(child.pid, None)


def wait_for_zombie(pid: int) -> bool:
    import time

    for _ in range(200):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return True
        time.sleep(0.01)
    return False


def test_status_shows_the_station_time_zone() -> None:
    from zoneinfo import ZoneInfo

    from gateway.__main__ import render_status

    live = {
        "station_id": "st",
        "name": "s",
        "version": "0",
        "uptime_s": 5,
        "clock_trusted": True,
        "link": {
            "state": "up",
            "since": "2026-12-02T01:00:00Z",
            "connects_since_start": 1,
            "history": [{"at": "2026-12-01T23:59:30Z", "state": "down", "reason": "keepalive timeout"}],
        },
        "backlog": {"alarm": 0, "status": 0, "telemetry": 3},
    }
    text = render_status(live, {}, ZoneInfo("Asia/Shanghai"))
    assert "link: up since 2026-12-02 09:00:00 (Asia/Shanghai; 1 connects)" in text
    assert "    2026-12-02 07:59:30 down: keepalive timeout" in text
    assert "backlog: 0 alarm, 0 status, 3 telemetry" in text
