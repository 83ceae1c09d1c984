"""The station's composition: task supervision and start-up failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import app
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

    raw = {"station": {"id": "st", "name": "s"}, "uplink": {"host": "h"}, "storage": {"path": str(tmp_path / "o.db")}}
    station = app.Station(parse_config(raw))

    def broken(*_: object) -> list[object]:
        raise ZeroDivisionError("a bug in a rule")

    monkeypatch.setattr(station.care, "triage", broken)
    async with Outbox(station.config.storage, "st") as outbox:
        station._outbox = outbox
        await station.on_events("rx", [(EventKind.SOS, {"zone": 3})])
        [row] = await outbox.rows_after(Priority.ALARM, 0, 10)
    assert '"kind":"sos"' in row.payload
    assert "care rules failed on 1 event(s) from rx; storing them as they came" in caplog.text
