"""The station status: one typed value, one JSON layout for the MQTT message, status.json and the page."""

from __future__ import annotations

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
