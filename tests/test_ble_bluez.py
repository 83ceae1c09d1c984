"""Bluetooth through bleak's real BlueZ backend, as on a Pi: the gateway process runs with
`[ble] adapter = "hci0"` and DBUS_SYSTEM_BUS_ADDRESS pointing at a private dbus-daemon where
simulators/bluez.py plays bluetoothd 5.66 -> the real ble_link.py -> mosquitto -> the platform."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import Station, events_of, running_station, wait_until

from simulators import wearables as w
from simulators.bluez import BlueZStandIn, Peripheral, PrivateBus
from simulators.broker import Mosquitto

KEY = "231d39c1d7cc1ab1aee224cd096db932"
ENC_PENDANT = "C0:FF:EE:00:00:09"
BP_SERVICE = 0x1810


def devices_toml(scanning_mode: str = "active", **ble: object) -> str:
    settings = {"silence_restart_s": 60, "silence_reset_s": 120, "presence_timeout_s": 5, **ble}
    lines = "".join(f"{k} = {v}\n" for k, v in settings.items())
    return (
        f'\n[ble]\nadapter = "hci0"\nscanning_mode = "{scanning_mode}"\n{lines}'
        f'\n[[devices]]\nid = "pendant-wang"\nkind = "ble_pendant"\naddress = "{w.PENDANT}"\n'
        f'\n[[devices]]\nid = "pendant-enc"\nkind = "ble_pendant"\naddress = "{ENC_PENDANT}"\nbind_key = "{KEY}"\n'
        f'\n[[devices]]\nid = "band-wang"\nkind = "ble_wristband"\naddress = "{w.WRISTBAND}"\n'
        f'\n[[devices]]\nid = "badge-li"\nkind = "caregiver_badge"\n'
        f'ibeacon = {{ uuid = "{w.BADGE_UUID}", major = 1 }}\ncaregiver = "Li Na"\nvisit_min_s = 1\nvisit_end_s = 2\n'
        f'\n[[devices]]\nid = "bp"\nkind = "ble_health"\nprofile = "blood_pressure"\naddress = "{w.BP_MONITOR}"\n'
        "cooldown_s = 0\n"
    )


def bp_record(systolic: float) -> bytes:
    return w.blood_pressure(systolic, 84, 98.7, pulse=71, when=w.date_time(2026, 11, 23, 8, 30, 0), user=1)


def systolics(station: Station) -> list[float]:
    return [
        e["data"]["systolic"]
        for e in events_of(station, "vitals", "bp")
        if e["data"]["measurement"] == "blood_pressure"
    ]


def ble_log(station: Station) -> str:
    return "\n".join(line for line in station.gateway.lines if "BLE" in line)


@contextlib.asynccontextmanager
async def station_on_bluez(
    tmp_path: Path, broker: Mosquitto, bus: PrivateBus, devices: str | None = None,
    env: dict[str, str] | None = None, experimental: bool = True,
) -> AsyncIterator[tuple[BlueZStandIn, Station]]:  # fmt: skip
    """The BlueZ stand-in on the private bus, and a station whose gateway uses it through bleak."""
    async with (
        BlueZStandIn(bus.address, experimental=experimental) as bluez,
        running_station(tmp_path, broker, extra_devices=devices or devices_toml(), env=env or bus.env()) as station,
    ):
        yield bluez, station


@pytest.fixture
async def system_bus() -> AsyncIterator[PrivateBus]:
    async with PrivateBus() as bus:  # (fails, naming the setup command, where dbus-daemon is missing)
        yield bus


async def measurement_taken(bluez: BlueZStandIn, station: Station, expected: int) -> bool:
    """The BP monitor advertises (as it does once a reading is ready) until the gateway has it."""
    for _ in range(40):
        bluez.advertise(w.BP_MONITOR, name="BP-monitor", uuids16=[BP_SERVICE])
        if await wait_until(lambda: len(systolics(station)) >= expected, timeout=0.5):
            return True
    return False


async def test_wearables_and_a_gatt_session_through_bleaks_bluez_backend(
    tmp_path: Path, broker: Mosquitto, system_bus: PrivateBus
) -> None:
    async with station_on_bluez(tmp_path, broker, system_bus) as (bluez, station):
        assert await wait_until(lambda: bluez.discovery), "\n".join(station.gateway.lines[-20:])
        assert any(f.get("DuplicateData") for f in bluez.discovery.values())

        await w.press(bluez, w.PENDANT, packet_id=42, adverts=20, interval_s=0.02)  # one press, 20 copies
        assert await wait_until(lambda: events_of(station, "sos", "pendant-wang"))
        await w.press(bluez, ENC_PENDANT, packet_id=2, adverts=3, interval_s=0.02, key=bytes.fromhex(KEY), counter=7)
        assert await wait_until(lambda: events_of(station, "sos", "pendant-enc"))
        assert len(events_of(station, "sos", "pendant-wang")) == 1

        for n in range(5):  # (an unkeyed band is present after 3 sightings a second apart)
            w.wristband_beat(bluez, n, moving=n == 1)
            w.badge_beat(bluez)  # a steady iBeacon: the same bytes every time
            await asyncio.sleep(0.6)
        assert await wait_until(lambda: events_of(station, "visit"))
        assert await wait_until(
            lambda: any(e["data"]["state"] == "away" for e in events_of(station, "presence", "band-wang"))
        )
        assert await wait_until(lambda: len(events_of(station, "visit")) == 2)

        bp = bluez.add_peripheral(Peripheral(
            w.BP_MONITOR, "blood_pressure", deque([[bp_record(128)]]), outcomes=deque(["refused", "abort-then-ok"]),
        ))  # fmt: skip
        assert await measurement_taken(bluez, station, 1), "\n".join(station.gateway.lines[-20:])
        await asyncio.sleep(1.0)
        assert systolics(station) == [128.0]  # the session survived the refusal and the abort
        # refused; aborted by the host, then connected inside bleak's retry: one session did it all
        # (a later advertisement may start another, empty one: cooldown_s = 0 here)
        assert bp.connections >= 3
        ended = [line for line in station.gateway.lines if "BLE device bp: session ended" in line]
        assert ended[0].endswith("with 1 measurement value(s)"), ble_log(station)
        assert not any("GATT session failed" in line for line in station.gateway.lines), ble_log(station)
        assert await wait_until(lambda: bluez.notify_sessions(w.BP_MONITOR) == 0, timeout=2)  # none left in BlueZ


async def test_five_sessions_in_a_row_each_give_exactly_their_own_values(
    tmp_path: Path, broker: Mosquitto, system_bus: PrivateBus
) -> None:
    async with station_on_bluez(tmp_path, broker, system_bus) as (bluez, station):
        assert await wait_until(lambda: bluez.discovery)
        bp = bluez.add_peripheral(Peripheral(w.BP_MONITOR, "blood_pressure", deque()))
        for n in range(5):
            bp.sessions.append([bp_record(120 + n)])
            assert await measurement_taken(bluez, station, n + 1), "\n".join(station.gateway.lines[-20:])
        await asyncio.sleep(1.0)  # (a duplicate would arrive within the session)
        assert await wait_until(lambda: bluez.notify_sessions(w.BP_MONITOR) == 0, timeout=2), ble_log(station)
        assert systolics(station) == [120.0, 121.0, 122.0, 123.0, 124.0]
        ended = [line.split(") with ")[1] for line in station.gateway.lines if "BLE device bp: session ended" in line]
        assert ended == ["1 measurement value(s)"] * 5, ble_log(station)  # one indication, one value
        assert bp.connections == 5  # the disconnect at the end of a session does not start another


async def test_the_end_of_a_session_is_not_an_advertisement(
    tmp_path: Path, broker: Mosquitto, system_bus: PrivateBus
) -> None:
    """A monitor that stays connected: the gateway hangs up at session_s; the Connected and
    ServicesResolved changes bleak reports as "advertisements" must not start the next session
    (cooldown_s = 0) nor count as sightings."""
    devices = devices_toml().replace("cooldown_s = 0\n", "cooldown_s = 0\nsession_s = 1\n")
    async with station_on_bluez(tmp_path, broker, system_bus, devices) as (bluez, station):
        assert await wait_until(lambda: bluez.discovery)
        bp = bluez.add_peripheral(Peripheral(w.BP_MONITOR, "blood_pressure", deque([[bp_record(131)]]), hangs_up=False))
        bluez.advertise(w.BP_MONITOR, name="BP-monitor", uuids16=[BP_SERVICE])  # one advertisement, then quiet
        assert await wait_until(lambda: systolics(station) == [131.0]), ble_log(station)
        assert await station.gateway.wait_for_line("BLE device bp: session ended (time limit)"), ble_log(station)
        await asyncio.sleep(2.0)
        assert bp.connections == 1, ble_log(station)
        await station.sink.command("status", {"id": "s-1"})
        assert await wait_until(lambda: "s-1" in station.sink.replies)
        assert station.sink.status is not None
        assert station.sink.status["ble"]["advertisements"] == bluez.adverts_delivered == 1  # the link is not


async def test_passive_mode_hears_pendants_and_health_devices_and_warns_of_badges(
    tmp_path: Path, broker: Mosquitto, system_bus: PrivateBus
) -> None:
    async with station_on_bluez(tmp_path, broker, system_bus, devices_toml("passive")) as (bluez, station):
        assert await wait_until(lambda: any(m.patterns for m in bluez.monitors.values())), ble_log(station)
        assert not bluez.discovery  # no discovery session: no scan requests
        assert any('caregiver badge, but [ble] scanning_mode = "passive"' in line for line in station.gateway.lines)

        await w.press(bluez, w.PENDANT, packet_id=42, adverts=5, interval_s=0.02)
        assert await wait_until(lambda: events_of(station, "sos", "pendant-wang")), ble_log(station)
        assert not bluez.advertise("C0:FF:EE:00:00:66", mfr={0x0006: b"\x01\x09"})  # matches no pattern

        bluez.add_peripheral(Peripheral(w.BP_MONITOR, "blood_pressure", deque([[bp_record(117)]])))
        for uuids in ([BP_SERVICE], [0x180F, 0x180A, BP_SERVICE]):  # first, and third of the list
            assert bluez.advertise(w.BP_MONITOR, uuids16=uuids), uuids
        assert await wait_until(lambda: systolics(station) == [117.0]), ble_log(station)


async def test_passive_mode_without_experimental_scans_actively_and_says_so(
    tmp_path: Path, broker: Mosquitto, system_bus: PrivateBus
) -> None:
    async with station_on_bluez(tmp_path, broker, system_bus, devices_toml("passive"), experimental=False) as (
        bluez,
        station,
    ):
        assert await station.gateway.wait_for_line("needs bluetoothd started with --experimental"), ble_log(station)
        assert await wait_until(lambda: bluez.discovery)
        assert await wait_until(lambda: events_of(station, "ble_radio"))
        assert [e["data"]["action"] for e in events_of(station, "ble_radio")] == ["scan_fallback_active"]
        await w.press(bluez, w.PENDANT, packet_id=43, adverts=3, interval_s=0.02)
        assert await wait_until(lambda: events_of(station, "sos", "pendant-wang"))


@pytest.mark.parametrize("with_bluetoothctl", [True, False])
async def test_a_hung_adapter_is_reset_through_bluetoothctl(
    tmp_path: Path, broker: Mosquitto, system_bus: PrivateBus, with_bluetoothctl: bool
) -> None:
    """No advertisement: the scan is restarted, then the adapter power-cycled with bluetoothctl
    on the same D-Bus; without bluetoothctl the reset is reported with ok: false."""
    bluetoothctl = shutil.which("bluetoothctl")
    assert bluetoothctl is not None, "this test needs bluetoothctl: bash .ci/setup installs it (apt-get install bluez)"
    env = system_bus.env()
    if not with_bluetoothctl:
        env["PATH"] = str(tmp_path / "no-tools")  # (the gateway is started by its full path)
    devices = devices_toml(silence_restart_s=5, silence_reset_s=10)
    async with station_on_bluez(tmp_path, broker, system_bus, devices, env=env) as (bluez, station):
        assert await wait_until(lambda: bluez.discovery)
        bluez.silent_until_power_cycle = True  # a hung controller

        async def keep_advertising() -> None:
            for n in range(600):
                w.wristband_beat(bluez, n % 256, moving=False)
                await asyncio.sleep(0.1)

        beats = asyncio.create_task(keep_advertising())
        try:
            assert await wait_until(lambda: len(events_of(station, "ble_radio")) >= 2, timeout=40), ble_log(station)
            radio = sorted(events_of(station, "ble_radio"), key=lambda e: e["id"])
            assert [e["data"]["action"] for e in radio[:2]] == ["scan_restarted", "adapter_reset"]
            assert radio[1]["data"]["ok"] is with_bluetoothctl, ble_log(station)
            if with_bluetoothctl:
                assert bluez.power_cycles == 1
                assert bluez.powered
                assert await wait_until(lambda: events_of(station, "presence", "band-wang"))  # heard again
            else:
                assert bluez.power_cycles == 0
                assert await station.gateway.wait_for_line("BLE adapter reset failed")
        finally:
            beats.cancel()


async def test_the_scan_survives_bluetoothd_restarting(
    tmp_path: Path, broker: Mosquitto, system_bus: PrivateBus
) -> None:
    devices = devices_toml(silence_restart_s=5, silence_reset_s=60)
    async with running_station(tmp_path, broker, extra_devices=devices, env=system_bus.env()) as station:
        async with BlueZStandIn(system_bus.address) as first:
            assert await wait_until(lambda: first.discovery)
            await w.press(first, w.PENDANT, packet_id=1, adverts=3, interval_s=0.02)
            assert await wait_until(lambda: events_of(station, "sos", "pendant-wang"))
        # bluetoothd restarts (systemctl restart bluetooth, an upgrade): its discovery sessions are gone
        async with BlueZStandIn(system_bus.address) as second:
            assert await wait_until(lambda: second.discovery, timeout=30), ble_log(station)
            for n in range(100):  # the wristband, heard only by the new bluetoothd
                w.wristband_beat(second, n, moving=False)
                if await wait_until(lambda: events_of(station, "presence", "band-wang"), timeout=0.3):
                    break
            assert events_of(station, "presence", "band-wang"), ble_log(station)
            assert await station.gateway.wait_for_line("restarting the scan"), ble_log(station)
            assert station.gateway.proc is not None
            assert station.gateway.proc.returncode is None
        assert os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") != system_bus.address  # (only the gateway's env has it)


async def test_a_random_address_flood_is_forgotten_and_the_pendant_still_heard(
    tmp_path: Path, broker: Mosquitto, system_bus: PrivateBus
) -> None:
    """bleak mirrors every device BlueZ knows: beyond STRANGERS_KEPT unknown addresses the
    gateway has BlueZ forget the oldest (memory: bench/ble_adverts.py --strangers)."""
    import random

    from gateway.ble_link import STRANGERS_KEPT

    rng = random.Random(1)
    async with station_on_bluez(tmp_path, broker, system_bus) as (bluez, station):
        assert await wait_until(lambda: bluez.discovery)
        junk = w.bthome_service_data(packet_id=1, battery=50)
        for n in range(3 * STRANGERS_KEPT):
            bluez.advertise(":".join(f"{rng.randrange(256):02X}" for _ in range(6)), svc={w.BTHOME_UUID: junk})
            if n % 50 == 0:
                await bluez.flush()
            if n == STRANGERS_KEPT:
                await w.press(bluez, w.PENDANT, packet_id=77, adverts=3, interval_s=0.01)  # amid the flood
        assert await wait_until(lambda: len(bluez.devices) <= STRANGERS_KEPT + 1, timeout=10), len(bluez.devices)
        assert w.PENDANT.upper() in bluez.devices  # a configured device is never forgotten
        assert await wait_until(lambda: events_of(station, "sos", "pendant-wang"))


async def test_a_connection_that_hangs_is_given_up_and_tried_again(
    tmp_path: Path, broker: Mosquitto, system_bus: PrivateBus
) -> None:
    """BlueZ never answers Connect (a device gone out of range mid-connection): bleak's timeout
    cancels it, the gateway's retry connects, the session gives its value."""
    async with station_on_bluez(tmp_path, broker, system_bus) as (bluez, station):
        assert await wait_until(lambda: bluez.discovery)
        bp = bluez.add_peripheral(
            Peripheral(w.BP_MONITOR, "blood_pressure", deque([[bp_record(119)]]), outcomes=deque(["hang"]))
        )
        bluez.advertise(w.BP_MONITOR, name="BP-monitor", uuids16=[BP_SERVICE])
        assert await wait_until(lambda: systolics(station) == [119.0], timeout=40), ble_log(station)
        assert bp.connections == 2
        assert bluez.devices[w.BP_MONITOR.upper()].pending_connect is None  # the hung call was cancelled
