"""The serial layer in the field: radars, GPS, unplugging, babbling devices, bad ports."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import serial
from conftest import events_of, fresh_status, running_station, wait_until

from simulators.broker import Mosquitto
from simulators.button_receiver import surgard_report
from simulators.gps import GpsSim
from simulators.radar import RadarSim, fall_then_still


def radar_toml(device_id: str, port: str, model: str = "mr60fda1", **extra: object) -> str:
    settings = "".join(f"{key} = {value}\n" for key, value in extra.items())
    return (
        f'\n[[devices]]\nid = "{device_id}"\nkind = "mmwave_radar"\nmodel = "{model}"\nport = "{port}"\n'
        f'label = "bedroom"\nheartbeat_interval_s = 1\n{settings}'
    )


async def test_a_fall_reaches_the_platform_with_the_gps_location(tmp_path: Path, broker: Mosquitto) -> None:
    radar = RadarSim("mr60fda1")
    radar.start()
    gps = GpsSim(lat=43.9333, lon=116.0667, interval_s=0.2)
    devices = (
        radar_toml("radar-bedroom", radar.path) + f'\n[[devices]]\nid = "gps"\nkind = "gps"\nport = "{gps.path}"\n'
    )
    gps_task = asyncio.create_task(gps.run())
    try:
        async with running_station(
            tmp_path, broker, extra_devices=devices, station_extra="location = { lat = 40.0, lon = 110.0 }"
        ) as station:
            assert await wait_until(lambda: events_of(station, "location"))
            await fall_then_still(radar, seconds_still=0.5)
            assert await wait_until(lambda: len(events_of(station, "fall")) == 2)
            first, still = sorted(events_of(station, "fall"), key=lambda e: e["id"])
            location = first["data"]["location"]
            assert (location["source"], round(location["lat"], 4), round(location["lon"], 4)) == (
                "gps",
                43.9333,
                116.0667,
            )
            assert (first["priority"], first["data"]["qualifier"], first["data"]["room"]) == ("alarm", "new", "bedroom")
            assert (still["data"]["qualifier"], still["data"]["not_moved_since_fall"], still["data"]["severity"]) == (
                "still_present",
                True,
                "critical",
            )
            assert radar.queries >= 1  # the gateway polls the radar
    finally:
        gps_task.cancel()
        gps.close()
        radar.close()


async def test_mr60fda2_fall_with_the_configured_location(tmp_path: Path, broker: Mosquitto) -> None:
    radar = RadarSim("mr60fda2")
    radar.start()
    try:
        async with running_station(
            tmp_path,
            broker,
            extra_devices=radar_toml("fall-kit", radar.path, "mr60fda2"),
            station_extra="location = { lat = 30.25, lon = 122.5 }",
        ) as station:
            assert await wait_until(lambda: radar.queries >= 1)
            radar.presence(True)
            radar.fall(True)
            assert await wait_until(lambda: events_of(station, "fall"))
            [fall] = events_of(station, "fall")
            assert fall["data"]["location"] == {"lat": 30.25, "lon": 122.5, "source": "configured"}
    finally:
        radar.close()


async def test_a_radar_that_stops_answering_is_reported_offline(tmp_path: Path, broker: Mosquitto) -> None:
    radar = RadarSim("mr24hpc1")
    radar.start()
    try:
        async with running_station(
            tmp_path, broker, extra_devices=radar_toml("presence", radar.path, "mr24hpc1", silence_timeout_s=2.5)
        ) as station:
            assert await wait_until(lambda: radar.queries >= 2)
            radar.answering = False
            assert await station.gateway.wait_for_line("device presence offline", timeout=15)
            radar.answering = True
            assert await station.gateway.wait_for_line(
                "device presence online: ", after=len(station.gateway.lines) - 1, timeout=15
            )
            assert await wait_until(lambda: events_of(station, "device_offline", "presence"))
    finally:
        radar.close()


async def test_unplug_and_replug_a_radar_while_the_button_keeps_sending(tmp_path: Path, broker: Mosquitto) -> None:
    first = RadarSim("mr60fda1")
    first.start()
    link = tmp_path / "ttyRADAR"
    first.link_at(link)
    async with running_station(tmp_path, broker, extra_devices=radar_toml("radar", str(link))) as station:
        assert await wait_until(lambda: first.queries >= 1)
        first.unplug()
        zones = []
        for zone in range(1, 6):  # the button receiver is not disturbed
            assert (await station.receiver.send(surgard_report(code=101, zone=zone))).acked
            zones.append(zone)
        assert await station.gateway.wait_for_line("device radar offline")
        second = RadarSim("mr60fda1")
        second.start()
        second.link_at(link)
        try:
            assert await wait_until(lambda: second.queries >= 1)
            second.fall(True)
            assert await wait_until(lambda: events_of(station, "fall"))
            assert await wait_until(lambda: len(events_of(station, "sos")) == 5)
            assert sorted(e["data"]["zone"] for e in events_of(station, "sos")) == zones
            assert len(events_of(station, "device_offline", "radar")) == 1
        finally:
            second.close()


async def test_a_babbling_port_beside_a_working_button_receiver(tmp_path: Path, broker: Mosquitto) -> None:
    radar = RadarSim("mr60fda1")
    radar.start()
    stop = asyncio.Event()
    rng = random.Random(7)
    noise = bytes(rng.randrange(256) for _ in range(65536))

    async def babble() -> None:  # about 1 MB/s of garbage into the radar's port
        while not stop.is_set():
            try:
                os.write(radar._master, noise)
            except BlockingIOError:
                pass
            except OSError:
                return
            await asyncio.sleep(0.06)

    try:
        async with running_station(tmp_path, broker, extra_devices=radar_toml("noisy", radar.path)) as station:
            babbler = asyncio.create_task(babble())
            await asyncio.sleep(2.0)
            for zone in range(1, 11):
                delivery = await station.receiver.send(surgard_report(code=101, zone=zone))
                assert (delivery.acked, delivery.attempts) == (True, 1)
            assert await wait_until(lambda: len(events_of(station, "sos")) == 10)
            stop.set()
            await babbler
            assert (await fresh_status(station))["devices"]["noisy"]["bytes_rejected"] > 1_000_000
            rejected_lines = [line for line in station.gateway.lines if "device noisy: rejected" in line]
            assert 1 <= len(rejected_lines) <= 3  # rate-limited: one line per 10 s at most
    finally:
        stop.set()
        radar.close()


async def test_permission_denied_and_busy_ports_are_explained(tmp_path: Path, broker: Mosquitto) -> None:
    locked = RadarSim("mr60fda1")
    locked.start()
    denied = RadarSim("mr60fda1")
    holder = serial.Serial(locked.path, exclusive=True)  # another process holds the port
    os.chmod(denied.path, 0o000)
    devices = radar_toml("busy", locked.path) + radar_toml("denied", denied.path)
    try:
        async with running_station(tmp_path, broker, extra_devices=devices, obey_file_modes=True) as station:
            assert await station.gateway.wait_for_line("device busy offline")
            assert await station.gateway.wait_for_line("device denied offline")
            lines = "\n".join(station.gateway.lines)
            assert f"{denied.path}: permission denied; add the service user to the 'dialout' group" in lines
            assert f"{locked.path}: held by another process; find it with 'fuser -v {locked.path}'" in lines
            assert (await station.receiver.send(surgard_report(code=101, zone=9))).acked  # the rest keeps running
            holder.close()
            assert await station.gateway.wait_for_line("device busy online", timeout=40)
    finally:
        holder.close()
        locked.close()
        denied.close()


async def test_ademco_685_receiver_and_a_gps_losing_its_fix(tmp_path: Path, broker: Mosquitto) -> None:
    from simulators.button_receiver import ButtonReceiverSim, ademco685_report

    receiver = ButtonReceiverSim(ack_deadline_s=1.5)
    gps = GpsSim(interval_s=0.2)
    devices = (
        f'\n[[devices]]\nid = "rx-685"\nkind = "contact_id_receiver"\nformat = "ademco685"\nport = "{receiver.path}"\n'
        f'\n[[devices]]\nid = "gps"\nkind = "gps"\nport = "{gps.path}"\nfix_lost_after_s = 1\n'
    )
    gps_task = asyncio.create_task(gps.run())
    try:
        async with running_station(tmp_path, broker, extra_devices=devices) as station:
            assert await wait_until(lambda: events_of(station, "location"))
            delivery = await receiver.send(ademco685_report(account="4321", code=100, zone=12))
            assert (delivery.acked, delivery.attempts) == (True, 1)
            assert (await receiver.send(b"\nnot a report\r")).acked is False  # NAKed
            assert await wait_until(lambda: events_of(station, "medical", "rx-685"))
            [medical] = events_of(station, "medical", "rx-685")
            assert (medical["data"]["account"], medical["data"]["zone"]) == ("4321", 12)
            assert medical["data"]["location"]["source"] == "gps"
            gps.has_fix = False
            assert await wait_until(lambda: len(events_of(station, "location")) == 2)
            fixes = [e["data"]["fix"] for e in sorted(events_of(station, "location"), key=lambda e: e["id"])]
            assert fixes == ["acquired", "lost"]
    finally:
        gps_task.cancel()
        gps.close()
        receiver.close()
