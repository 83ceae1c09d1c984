"""The station status: one typed value, one JSON layout for the MQTT message, status.json and the page."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import STATION_ID, running_platform, running_station, wait_until

from gateway.status import (
    AlarmStatus,
    BacklogStatus,
    BleDeviceStatus,
    LinkStatus,
    ResidentStatus,
    SerialDeviceStatus,
    StationPart,
    StationStatus,
)
from simulators.broker import Mosquitto
from simulators.button_receiver import surgard_report
from simulators.platform import PlatformSink

LINK = LinkStatus("up", "2026-12-02T01:00:00Z", "127.0.0.1:1883", "5", 1, [], {}, 0, {"subscription": "granted QoS 1"})
BACKLOG = BacklogStatus({"alarm": 0, "status": 2, "telemetry": 5}, 900, 12.5, 0.1, {}, {"max_bytes": 1}, {"alarm": 1})


def station(**optional: object) -> StationPart:
    return StationPart(
        station_id="st-1",
        name="草原站",
        version="0.1.0",
        ts="2026-12-02T01:00:05Z",
        clock_trusted=True,
        clock_source="ntp",
        boot_id="b",
        uptime_s=5,
        run_id="r",
        devices={"rx": SerialDeviceStatus("contact_id_receiver", "online", None, 3, 0, 0)},
        residents={"wang": ResidentStatus("王秀英", "201", None, 1)},
        alarms_open=[AlarmStatus("01J", "sos", "delivered", "wang", "rx", 2, "2026-12-02T01:00:01Z")],
        storage_use={"outbox_file_bytes": 4096, "disk_free_bytes": 10},
        **optional,  # type: ignore[arg-type]
    )


def test_the_status_is_one_flat_object_in_the_documented_layout() -> None:
    status = StationStatus("online", "broadband", BACKLOG, LINK, None, station())
    assert status.to_json() == {
        "state": "online",
        "station_id": "st-1",
        "name": "草原站",
        "version": "0.1.0",
        "ts": "2026-12-02T01:00:05Z",
        "clock_trusted": True,
        "clock_source": "ntp",
        "boot_id": "b",
        "uptime_s": 5,
        "run_id": "r",
        "devices": {
            "rx": {
                "kind": "contact_id_receiver",
                "state": "online",
                "last_seen": None,
                "frames_ok": 3,
                "frames_rejected": 0,
                "bytes_rejected": 0,
            }
        },
        "residents": {"wang": {"name": "王秀英", "room": "201", "last_activity": None, "open_alarms": 1}},
        "alarms_open": [
            {
                "alarm_id": "01J",
                "kind": "sos",
                "state": "delivered",
                "resident": "wang",
                "device_id": "rx",
                "count": 2,
                "raised_at": "2026-12-02T01:00:01Z",
            }
        ],
        "storage_use": {"outbox_file_bytes": 4096, "disk_free_bytes": 10},
        "link_profile": "broadband",
        "backlog": {"alarm": 0, "status": 2, "telemetry": 5},
        "backlog_bytes": 900,
        "oldest_unsent_s": 12.5,
        "estimated_drain_s": 0.1,
        "shed": {},
        "storage": {"max_bytes": 1},
        "published_since_start": {"alarm": 1},
        "link": {
            "state": "up",
            "since": "2026-12-02T01:00:00Z",
            "broker": "127.0.0.1:1883",
            "protocol": "5",
            "connects_since_start": 1,
            "history": [],
            "refused": {},
            "no_subscribers": 0,
            "commands": {"subscription": "granted QoS 1"},
        },
        "tls": None,
    }


def test_bluetooth_and_sms_parts_appear_only_on_a_station_that_has_them() -> None:
    plain = StationStatus("offline", "cellular", BACKLOG, LINK, None, station()).to_json()
    assert not {"ble", "ble_devices", "sms"} & set(plain)
    ble = {"advertisements": 9, "decoded": 8, "rejected": 1, "dropped": 0}
    both = station(
        ble=ble,
        ble_devices={"band": BleDeviceStatus("ble_wristband", "wang", None, -70, 80)},
        sms={"modem": "ready", "sent": 2},
    )
    body = StationStatus("offline", "cellular", BACKLOG, LINK, None, both).to_json()
    assert (body["ble"], body["sms"]) == (ble, {"modem": "ready", "sent": 2})
    assert body["ble_devices"] == {
        "band": {"kind": "ble_wristband", "resident": "wang", "last_seen": None, "rssi": -70, "battery": 80}
    }
    assert body["state"] == "offline"


def test_the_ble_counters_are_in_the_status_from_the_start_zeros_included() -> None:
    from gateway.ble_link import BLE_COUNTERS, BLUEZ, BleLink
    from gateway.config import BleSection

    async def sink(device_id: str, drafts: object) -> None: ...

    link = BleLink(BleSection(), [], {}, sink, BLUEZ)  # type: ignore[arg-type]
    assert (
        dict(link.stats)
        == dict.fromkeys(BLE_COUNTERS, 0)
        == {
            "advertisements": 0,
            "decoded": 0,
            "rejected": 0,
            "dropped": 0,
        }
    )


async def test_the_full_status_is_sent_when_it_says_something_new_and_a_heartbeat_between(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """At 10,000 stations a ~1 KB retained status every minute is 15 GB a day on the platform's
    broker: the full one goes out on connect and on a change an operator acts on, a heartbeat
    of at most 200 bytes between them, and a late subscriber still gets the full one."""
    async with running_station(tmp_path, broker, status_interval_s=1) as station:
        sink = station.sink
        assert await wait_until(lambda: len(sink.heartbeats) >= 4, timeout=15)
        fulls = len(sink.status_history)
        assert fulls <= 2  # on connect (and once more if the receiver came online after it)
        assert all(size <= 200 for size in sink.heartbeat_bytes), sink.heartbeat_bytes
        beat = sink.heartbeats[-1]
        assert set(beat) == {"state", "ts", "uptime_s", "oldest_unsent_s", "estimated_drain_s", "backlog",
                             "alarms_open"}  # fmt: skip
        assert beat["state"] == "online"

        assert (await station.receiver.send(surgard_report(code=101, zone=4))).acked  # an operator acts on it
        assert await wait_until(lambda: any(s["alarms_open"] for s in sink.status_history[fulls:]))
        assert sink.heartbeats[-1]["alarms_open"] in (0, 1)
        after_alarm, beats = len(sink.status_history), len(sink.heartbeats)
        await asyncio.sleep(4)
        assert len(sink.heartbeats) >= beats + 3
        assert len(sink.status_history) <= after_alarm + 1  # (its delivery may change it once), then beats

        late = PlatformSink(broker.host, broker.port, STATION_ID, client_id="late-subscriber")
        async with running_platform(late):
            assert await wait_until(lambda: late.status is not None)
            assert late.status is not None
            assert late.status["alarms_open"][0]["kind"] == "sos"  # the retained one is the full status
            assert "devices" in late.status


async def test_a_broker_that_refuses_the_full_status_gets_it_again_not_a_heartbeat_instead(tmp_path: Path) -> None:
    """An ACL that lets the station write its heartbeat but not its status (a platform that
    forgot the status line): the station never settles for heartbeats, since the platform has
    no full status to go with them; it offers the full one at each interval and says why once."""
    acl = (
        f"topic write care/v1/{STATION_ID}/events/#\ntopic write care/v1/{STATION_ID}/heartbeat\n"
        f"topic write care/v1/{STATION_ID}/cmd-reply\ntopic read care/v1/{STATION_ID}/#\n"
    )
    with Mosquitto(tmp_path / "acl-broker", acl=acl) as broker:
        async with running_station(tmp_path, broker, status_interval_s=1) as station:
            assert await station.gateway.wait_for_line("refused the status message on care/v1/test-station/status")
            await asyncio.sleep(4)
            assert station.sink.heartbeats == []  # (every interval offered the full status again)
            assert station.sink.status_history == []
            refusals = [line for line in station.gateway.lines if "refused the status message" in line]
            assert len(refusals) == 1, refusals  # logged once, not every second
            assert (await station.receiver.send(surgard_report(code=101, zone=2))).acked
            assert await wait_until(lambda: any(e["kind"] == "sos" for e in station.sink.events.values()))
