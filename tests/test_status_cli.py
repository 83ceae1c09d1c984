"""`care-gateway status`: the running daemon's state, and a progress view while a backlog drains."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from simulators.broker import Mosquitto
from simulators.button_receiver import surgard_report
from tests.conftest import events_of, running_station, wait_until


async def status(config: Path, *extra: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "status", "--config", str(config), *extra, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, out
    return out.decode()


async def test_status_reads_the_daemon_and_watches_a_backlog_drain(tmp_path: Path, broker: Mosquitto) -> None:
    async with running_station(
        tmp_path, broker, seed_telemetry=1500, uplink_extra="byte_budget_per_s = 40000"
    ) as station:
        await asyncio.sleep(1.5)  # the status file is rewritten every second
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
        await asyncio.sleep(1.5)  # the status file is rewritten every second
        now = await status(station.config_path)
        assert "OPEN ALARM sos from button-rx-1: delivered" in now
        assert "link: up since" in now
        as_json = json.loads(await status(station.config_path, "--json"))
        assert as_json["daemon"] == "running"
        assert as_json["status"]["link"]["state"] == "up"
        assert as_json["status"]["storage_use"]["outbox_file_bytes"] > 0

        await station.gateway.stop()
        await asyncio.sleep(5.5)  # status.json is now stale
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
