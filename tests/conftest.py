"""Shared fixtures: a real mosquitto on a free loopback port, a platform sink, a station."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.clock import Clock
from gateway.config import StorageSection
from gateway.events import EventKind, new_event
from gateway.i18n import use_language
from gateway.outbox import Outbox
from simulators.broker import Mosquitto
from simulators.button_receiver import ButtonReceiverSim
from simulators.harness import GatewayProcess, station_toml
from simulators.platform import PlatformSink

# English messages, whatever the machine's locale: the tests read what the gateway says (the
# gateway and every process it starts inherit this); tests/test_i18n.py tries the languages.
# (gateway.i18n chose from the environment at import: the station files' language decides again)
for _variable in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
    os.environ.pop(_variable, None)
os.environ["LANG"] = "C.UTF-8"
use_language()

STATION_ID = "test-station"
SEED_CHUNK = 1000
TEST_ACK_DEADLINE_S = 1.5  # shorter than the receiver's 4 s so that resends happen quickly


ARRIVAL_TIMEOUT_S = 60.0


async def wait_until(predicate: Callable[[], object], timeout: float = ARRIVAL_TIMEOUT_S) -> bool:
    """Poll `predicate` every 50 ms until it is true or `timeout` passes; its last value."""
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


async def fresh_status(station: Station) -> dict[str, Any]:
    """A full status published after now: asked for with the `status` command (the station
    otherwise publishes it only when something an operator acts on changes)."""
    before = len(station.sink.status_history)
    ask = f"fresh-{before}-{time.monotonic_ns()}"
    await station.sink.command("status", {"id": ask})
    assert await wait_until(lambda: ask in station.sink.replies), "no reply to the status command"
    assert await wait_until(lambda: len(station.sink.status_history) > before), "no status after the command"
    return station.sink.status_history[-1]


def events_of(station: Station, kind: str, device: str | None = None) -> list[dict[str, Any]]:
    """Distinct events of one kind (and device) the platform received, in arrival order."""
    return [
        e for e in station.sink.events.values() if e["kind"] == kind and (device is None or e["device_id"] == device)
    ]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@dataclass
class Station:
    """A running simulated station: receiver pty, gateway process, platform sink."""

    folder: Path
    port_link: Path  # the configured port: a symlink to the pty, as /dev/serial/by-id/ links are
    config_path: Path
    db_path: Path
    receiver: ButtonReceiverSim
    sink: PlatformSink
    gateway: GatewayProcess
    seeded: list[str]  # ids of telemetry events put in the outbox before the gateway started

    def replug(self) -> ButtonReceiverSim:
        """Unplug the receiver and plug a new one in: the stable name points at a new pty."""
        self.receiver.unplug()
        self.receiver = ButtonReceiverSim(ack_deadline_s=TEST_ACK_DEADLINE_S)
        self.receiver.link_at(self.port_link)
        return self.receiver

    async def restart_gateway(self) -> None:
        self.gateway = GatewayProcess(self.config_path)
        await self.gateway.start()
        assert await self.gateway.wait_for_line("device button-rx-1 online"), "\n".join(self.gateway.lines)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests first: with 4 workers stealing work, each starts early instead of last."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "docs" / "event.schema.json").read_text())


def assert_published_contract(events: Iterable[dict[str, Any]]) -> None:
    """Every event the platform received is valid under docs/event.schema.json (the published
    contract, checked by an independent JSON Schema validator): every field of `data` named."""
    whole = jsonschema.Draft202012Validator(SCHEMA)
    branches = SCHEMA["discriminator"]["mapping"]  # kind -> its branch (for a precise message)
    problems = []
    for event in events:
        branch = branches.get(event.get("kind"))
        validator = jsonschema.Draft202012Validator({"$ref": branch, "$defs": SCHEMA["$defs"]}) if branch else whole
        problems += [
            f"{event.get('kind')} {event.get('id')}: {error.json_path}: {error.message}"
            for error in validator.iter_errors(event)
        ]
        assert whole.is_valid(event) or problems
    assert not problems, "\n".join(problems[:20])


def assert_no_personal_data(events: Iterable[dict[str, Any]], statuses: Iterable[dict[str, Any]]) -> None:
    """Names and rooms stay on the station: no event or status the platform got carries one."""
    from gateway.app import PERSONAL_FIELDS

    leaks = [f"{e['kind']} {e['id']}: {sorted(PERSONAL_FIELDS & set(e['data']))}" for e in events]
    leaks = [leak for leak in leaks if not leak.endswith("[]")]
    leaks += [
        f"status: residents.{rid}.{field}"
        for status in statuses
        for rid, resident in status.get("residents", {}).items()
        for field in ("name", "room")
        if field in resident
    ]
    assert not leaks, "\n".join(leaks[:20])


async def seed_outbox(db_path: Path, count: int) -> list[str]:
    """A telemetry backlog, as if the link had been down for a while: activity readings of 3 radars."""
    clock = Clock()
    events = [
        new_event(clock, STATION_ID, f"radar-{n % 3}", EventKind.ACTIVITY, {"n": n, "motion": "moving", "movement": 30})
        for n in range(count)
    ]
    async with Outbox(StorageSection(path=db_path), STATION_ID) as outbox:
        for start in range(0, count, SEED_CHUNK):
            await outbox.append(*events[start : start + SEED_CHUNK])
    return [e.id for e in events]


@contextlib.asynccontextmanager
async def running_platform(sink: PlatformSink) -> AsyncIterator[PlatformSink]:
    """A platform client subscribed to the station's topics, for as long as the block runs."""
    task = asyncio.create_task(sink.run())
    try:
        await asyncio.wait_for(sink.subscribed.wait(), 10)
        yield sink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running_sink(host: str, port: int) -> AsyncIterator[PlatformSink]:
    async with running_platform(PlatformSink(host, port, STATION_ID)) as sink:
        yield sink


@contextlib.asynccontextmanager
async def running_station(
    folder: Path,
    broker: Mosquitto,
    uplink_port: int | None = None,
    silence_timeout_s: float = 100.0,
    uplink_extra: str = "",
    seed_telemetry: int = 0,
    keepalive_s: int = 5,
    extra_devices: str = "",
    station_extra: str = "",
    obey_file_modes: bool = False,
    receiver_extra: str = "",
    storage_extra: str = "",
    env: dict[str, str] | None = None,
    status_interval_s: float = 5.0,
) -> AsyncIterator[Station]:
    """Gateway (child process) + receiver simulator + sink; the uplink may go through a proxy."""
    receiver = ButtonReceiverSim(ack_deadline_s=TEST_ACK_DEADLINE_S)
    port_link = folder / "ttyBUTTON"
    receiver.link_at(port_link)
    db_path = folder / "outbox.db"
    config_path = folder / "station.toml"
    config_path.write_text(
        station_toml(
            station_id=STATION_ID,
            broker_port=uplink_port or broker.port,
            db_path=db_path,
            receiver_ports={"button-rx-1": str(port_link)},
            reconnect_max_s=1.0,
            silence_timeout_s=silence_timeout_s,
            uplink_extra=uplink_extra,
            keepalive_s=keepalive_s,
            extra_devices=extra_devices,
            station_extra=station_extra,
            receiver_extra=receiver_extra,
            storage_extra=storage_extra,
            status_interval_s=status_interval_s,
        )
    )
    seeded = await seed_outbox(db_path, seed_telemetry) if seed_telemetry else []
    async with running_sink(broker.host, broker.port) as sink:
        gateway = GatewayProcess(config_path, obey_file_modes=obey_file_modes, env=env)
        station = Station(folder, port_link, config_path, db_path, receiver, sink, gateway, seeded)
        await gateway.start()
        try:
            online = "设备 button-rx-1 在线" if 'language = "zh_CN"' in station_extra else "device button-rx-1 online"
            assert await gateway.wait_for_line(online), "\n".join(gateway.lines)
            yield station
            seeded = set(station.seeded)  # (test data put in the outbox, not made by the gateway)
            assert_published_contract(e for i, e in station.sink.events.items() if i not in seeded)
            if "share_personal_data = true" not in station.config_path.read_text():
                assert_no_personal_data(station.sink.events.values(), station.sink.status_history)
        finally:
            await station.gateway.stop()
            station.receiver.close()
