"""BLE end to end: the wearables simulator's radio -> bleak (simulated backend) -> the real
ble_link.py in the gateway process -> mosquitto -> the platform sink."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import events_of, fresh_status, running_station, wait_until

from simulators import wearables as w
from simulators.broker import Mosquitto

KEY = "231d39c1d7cc1ab1aee224cd096db932"


def ble_toml(socket: Path, **overrides: object) -> str:
    settings = {"silence_restart_s": 60, "silence_reset_s": 120, "presence_timeout_s": 5, **overrides}
    ble = "".join(f"{k} = {v}\n" for k, v in settings.items())
    return (
        f'\n[ble]\nadapter = "simulated:{socket}"\n{ble}'
        f'\n[[devices]]\nid = "pendant-wang"\nkind = "ble_pendant"\naddress = "{w.PENDANT}"\n'
        'wearer = "Wang Guihua"\n'
        f'\n[[devices]]\nid = "pendant-enc"\nkind = "ble_pendant"\naddress = "C0:FF:EE:00:00:09"\nbind_key = "{KEY}"\n'
        f'\n[[devices]]\nid = "band-wang"\nkind = "ble_wristband"\naddress = "{w.WRISTBAND}"\n'
        'wearer = "Wang Guihua"\n'
        f'\n[[devices]]\nid = "badge-li"\nkind = "caregiver_badge"\n'
        f'ibeacon = {{ uuid = "{w.BADGE_UUID}", major = 1 }}\n'
        f'caregiver = "Li Na"\nvisit_min_s = 1\nvisit_end_s = 2\n'
        f'\n[[devices]]\nid = "bp"\nkind = "ble_health"\nprofile = "blood_pressure"\naddress = "{w.BP_MONITOR}"\n'
        f'\n[[devices]]\nid = "oxi"\nkind = "ble_health"\nprofile = "oximeter"\naddress = "{w.OXIMETER}"\n'
        "cooldown_s = 0\n"
    )


async def test_wearables_through_the_real_ble_link(tmp_path: Path, broker: Mosquitto) -> None:
    socket = tmp_path / "ble.sock"
    async with w.SimulatedRadio(socket) as radio:
        w.health_devices(radio)
        radio.devices[w.OXIMETER.upper()].drop_after = 1  # drops the connection mid-measurement
        radio.devices[w.BP_MONITOR.upper()].refuse_connections = 1  # first attempt fails: retried
        async with running_station(tmp_path, broker, extra_devices=ble_toml(socket)) as station:
            assert await wait_until(lambda: radio.scans >= 1)

            await w.press(radio, w.PENDANT, packet_id=42, adverts=20, interval_s=0.02)  # one press, 20 copies
            assert await wait_until(lambda: events_of(station, "sos", "pendant-wang"))
            await asyncio.sleep(0.5)
            [sos] = events_of(station, "sos", "pendant-wang")
            assert (sos["priority"], sos["data"]["button"]) == ("alarm", "press")
            assert "wearer" not in sos["data"]  # the wearer's name stays on the station (share_personal_data)

            wrong = bytes.fromhex("00" * 16)  # the pendant was paired with another key
            await w.press(radio, "C0:FF:EE:00:00:09", packet_id=1, adverts=3, interval_s=0.02, key=wrong)
            assert await station.gateway.wait_for_line("BTHome decryption failed: wrong bind_key"), (
                station.gateway.lines[-15:]
            )
            await w.press(
                radio, "C0:FF:EE:00:00:09", packet_id=2, adverts=3, interval_s=0.02, key=bytes.fromhex(KEY), counter=7
            )
            assert await wait_until(lambda: events_of(station, "sos", "pendant-enc"))

            for n in range(5):  # (an unkeyed band is present again after 3 sightings a second apart)
                w.wristband_beat(radio, n, moving=n == 1)
                w.badge_beat(radio)
                await asyncio.sleep(0.6)
            assert await wait_until(lambda: events_of(station, "visit"))
            assert await wait_until(
                lambda: any(e["data"]["state"] == "away" for e in events_of(station, "presence", "band-wang"))
            )
            assert await wait_until(lambda: len(events_of(station, "visit")) == 2)
            started, ended = sorted(events_of(station, "visit"), key=lambda e: e["id"])
            assert (started["data"]["visit"], ended["data"]["visit"], ended["device_id"]) == (
                "started",
                "ended",
                "badge-li",  # the badge says who; the caregiver's name stays on the station
            )

            radio.advertise(w.BP_MONITOR, name="BP")
            radio.advertise(w.OXIMETER, name="Oxi")
            assert await wait_until(
                lambda: (
                    len([e for e in events_of(station, "vitals", "bp") if e["data"]["measurement"] == "blood_pressure"])
                    == 1
                )
            )
            [bp] = [e for e in events_of(station, "vitals", "bp") if e["data"]["measurement"] == "blood_pressure"]
            assert {
                k: bp["data"][k]
                for k in ("systolic", "diastolic", "mean_arterial", "pulse_bpm", "user", "measured_at", "status")
            } == {
                "systolic": 128.0,
                "diastolic": 84.0,
                "mean_arterial": 98.7,
                "pulse_bpm": 71.0,
                "user": 1,
                "measured_at": "2026-11-23T08:30:00",
                "status": ["irregular_pulse"],
            }
            assert await wait_until(
                lambda: any(e["data"]["measurement"] == "spo2" for e in events_of(station, "vitals", "oxi"))
            )
            spo2 = [e["data"] for e in events_of(station, "vitals", "oxi") if e["data"]["measurement"] == "spo2"]
            assert spo2 == [
                {
                    "measurement": "spo2",
                    "spo2_percent": None,
                    "pulse_bpm": 75.0,
                    "measured_at": None,
                    "questionable": False,
                    "continuous": False,
                }
            ]  # NaN is "no value"; the drop cut the 2nd
            assert radio.devices[w.BP_MONITOR.upper()].connections == 2
            assert await station.gateway.wait_for_line("BLE device oxi: session ended (the device disconnected)")
            assert (await fresh_status(station))["ble"]["rejected"] >= 1


async def test_a_silent_radio_is_restarted_then_reset(tmp_path: Path, broker: Mosquitto) -> None:
    socket = tmp_path / "ble.sock"
    async with w.SimulatedRadio(socket) as radio:
        devices = ble_toml(socket, silence_restart_s=5, silence_reset_s=10)
        async with running_station(tmp_path, broker, extra_devices=devices) as station:
            assert await wait_until(lambda: radio.scans >= 1)
            radio.silent_until_reset = True  # a hung controller: nothing until it is power-cycled

            async def keep_advertising() -> None:
                for n in range(400):
                    w.wristband_beat(radio, n % 256, moving=False)
                    await asyncio.sleep(0.1)

            beats = asyncio.create_task(keep_advertising())
            try:
                assert await wait_until(lambda: radio.resets >= 1, timeout=40)
                assert radio.scans >= 2  # the scan was restarted first
                assert await wait_until(lambda: len(events_of(station, "ble_radio")) >= 2)
                actions = [e["data"]["action"] for e in sorted(events_of(station, "ble_radio"), key=lambda e: e["id"])]
                assert actions[:2] == ["scan_restarted", "adapter_reset"]
                assert await wait_until(lambda: events_of(station, "presence", "band-wang"))  # heard again
            finally:
                beats.cancel()


async def test_scan_lists_devices_in_range_with_what_it_decodes(tmp_path: Path) -> None:
    import sys

    from simulators.harness import station_toml

    socket = tmp_path / "ble.sock"
    config = tmp_path / "station.toml"
    config.write_text(
        station_toml(station_id="st", broker_port=1883, db_path=tmp_path / "o.db", receiver_ports={}) + ble_toml(socket)
    )
    async with w.SimulatedRadio(socket) as radio:

        async def advertise() -> None:
            for n in range(1000):
                w.wristband_beat(radio, n % 256, moving=True)
                w.badge_beat(radio)
                radio.advertise("C0:FF:EE:00:00:77", name="stranger", svc={w.BTHOME_UUID: w.bthome_service_data(
                    packet_id=n % 256, battery=50, presence=True)})  # fmt: skip
                await asyncio.sleep(0.05)

        beacon = asyncio.create_task(advertise())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "scan", "--config", str(config), "--seconds", "1.5",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out = (await asyncio.wait_for(proc.communicate(), 30))[0].decode()
        beacon.cancel()
    assert proc.returncode == 0, out
    assert f"{w.WRISTBAND.upper()}" in out
    assert "configured as band-wang" in out
    assert "configured as badge-li" in out
    assert "C0:FF:EE:00:00:77" in out
    assert "stranger         not in the station file" in out
    assert "BTHome v2 [battery 50, presence True]" in out
    assert f"iBeacon uuid {w.BADGE_UUID.lower()} major 1 minor 7" in out
    assert "configured but not heard: bp, oxi, pendant-enc, pendant-wang" in out


async def test_a_keyed_pendant_cannot_be_imitated_in_plaintext_nor_replayed(tmp_path: Path, broker: Mosquitto) -> None:
    socket = tmp_path / "ble.sock"
    enc = "C0:FF:EE:00:00:09"
    devices = (
        f'\n[ble]\nadapter = "simulated:{socket}"\npresence_timeout_s = 5\n'
        f'\n[[devices]]\nid = "pendant-enc"\nkind = "ble_pendant"\naddress = "{enc}"\nbind_key = "{KEY}"\n'
        "trigger_window_s = 0.5\n"
    )
    key = bytes.fromhex(KEY)
    async with w.SimulatedRadio(socket) as radio, running_station(tmp_path, broker, extra_devices=devices) as station:
        assert await wait_until(lambda: radio.scans >= 1)
        gw = station.gateway

        await w.press(radio, enc, packet_id=1, adverts=3, interval_s=0.02)  # a neighbour's plaintext "press"
        assert await gw.wait_for_line("not encrypted, but the device has a bind_key: refused")

        await w.press(radio, enc, packet_id=2, adverts=3, interval_s=0.02, key=key, counter=7)  # the real one
        assert await wait_until(lambda: len(events_of(station, "sos", "pendant-enc")) == 1)
        await asyncio.sleep(0.6)  # past the trigger window: a copy would now count as a new press
        recorded = w.bthome_encrypt(bytes([0x00, 2, 0x01, 88, 0x3A, 0x01]), key, enc, 7, trigger=True)
        for _ in range(3):  # the same advertisement recorded and played back
            radio.advertise(enc, name="SOS-pendant", svc={w.BTHOME_UUID: recorded})
        await w.press(radio, enc, packet_id=9, adverts=3, interval_s=0.02, key=key, counter=5)  # an older one
        assert await gw.wait_for_line("replayed: encryption counter 5 is not above 7")

        await w.press(radio, enc, packet_id=3, adverts=3, interval_s=0.02, key=key, counter=8)  # a new press

        def presses_counted() -> int | None:
            alarms = (station.sink.status or {}).get("alarms_open", [])
            return alarms[0]["count"] if alarms else None

        for attempt in range(20):  # (the new press is counted into the open alarm: the status says so)
            await station.sink.command("status", {"id": f"s-{attempt}"})
            if await wait_until(lambda: presses_counted() == 2, timeout=1.0):
                break
        assert presses_counted() == 2
        assert len(events_of(station, "sos", "pendant-enc")) == 1  # the plaintext and the replays raised nothing
        assert station.sink.status is not None
        assert station.sink.status["ble"]["rejected"] >= 2
