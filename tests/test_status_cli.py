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
