"""On demand (about 90 s: absent_after_s is at least 60 s and the care rules look every 15 s):
`.venv/bin/python -m pytest -q bench/test_spoofed_sighting.py`. One imitated sighting of an
unkeyed band must not end its wearer's wearer_absent alarm, against a running station with the
simulated radio. The suite holds the same rule in tests/test_care.py and tests/test_rules.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from simulators import wearables as w
from simulators.broker import Mosquitto
from tests.conftest import broker, events_of, running_station, wait_until

__all__ = ["broker"]  # (the fixture, from the suite's conftest)


async def test_one_imitated_sighting_does_not_end_a_wearer_absent_alarm(tmp_path: Path, broker: Mosquitto) -> None:
    """An unkeyed band of a resident at risk of wandering: away long enough for wearer_absent;
    one advertisement from its address (anyone nearby can send it) ends nothing; the band heard
    again three times a second apart does."""
    socket = tmp_path / "ble.sock"
    station_file = (
        f'\n[ble]\nadapter = "simulated:{socket}"\npresence_timeout_s = 5\n'
        f'\n[[devices]]\nid = "band-wang"\nkind = "ble_wristband"\naddress = "{w.WRISTBAND}"\n'
        'resident = "wang"\nsupervision_s = 600\n'
        '\n[[residents]]\nid = "wang"\nname = "王秀英"\ndementia_risk = true\nabsent_after_s = 60\n'
    )
    async with (
        w.SimulatedRadio(socket) as radio,
        running_station(tmp_path, broker, extra_devices=station_file) as station,
    ):
        assert await wait_until(lambda: radio.scans >= 1)
        for n in range(4):
            w.wristband_beat(radio, n, moving=False)
            await asyncio.sleep(1.1)
        assert await wait_until(lambda: events_of(station, "presence", "band-wang"))
        assert await wait_until(
            lambda: any(e["data"]["state"] == "away" for e in events_of(station, "presence", "band-wang"))
        )
        assert await wait_until(lambda: events_of(station, "wearer_absent"), timeout=90)  # 60 s unseen
        [absent] = events_of(station, "wearer_absent")

        w.wristband_beat(radio, 9, moving=True)  # one imitation from the band's address
        await asyncio.sleep(3)  # (a silence: nothing may end the alarm)
        assert not any(e["data"].get("alarm_id") == absent["id"] for e in events_of(station, "alarm_update"))

        for n in range(10, 13):  # the band itself, heard again
            w.wristband_beat(radio, n, moving=False)
            await asyncio.sleep(1.1)
        assert await wait_until(
            lambda: any(
                e["data"]["alarm_id"] == absent["id"] and e["data"]["resolution"] == "wearer_seen"
                for e in events_of(station, "alarm_update")
            )
        )
