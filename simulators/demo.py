"""`care-gateway demo`: a whole simulated station on this machine, end to end.

mosquitto (the city broker) <- platform sink
      ^
  link proxy (cut for a while to show store-and-forward)
      ^
  care-gateway (a real child process)  <- pty <- Sur-Gard button receiver simulator
                                       <- pty <- fall radar simulator
                                       -> pty -> cellular modem simulator (SMS while the link is cut)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path

from gateway.i18n import _
from simulators.broker import Mosquitto
from simulators.button_receiver import HEARTBEAT, SCENARIO, ButtonReceiverSim, surgard_report
from simulators.harness import GatewayProcess, station_toml
from simulators.link import LinkProxy
from simulators.modem import ModemSim
from simulators.platform import PlatformSink
from simulators.radar import RadarSim, fall_then_still

STATION_ID = "demo-station-01"
PRESS_INTERVAL_S = 0.4
DEMO_LAT, DEMO_LON = 43.9333, 116.0667  # the station's configured location, attached to alarms
FALL_ALARMS_EXPECTED = 6  # two falls: each "new", "still_present" (not moved since) and "restore"
DRAIN_TIMEOUT_S = 60.0
CARE = """
[[residents]]
id = "wang-guihua"
name = "王桂花"
room = "3组12号"
[[residents.contacts]]
name = "王建国"
phone = "13800138000"
role = "family"

[sms]
port = "{modem}"
undelivered_after_s = 2
[[sms.on_duty]]
name = "站点值班"
phone = "+8613600136000"
role = "on_duty"
"""


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


async def _device_online(status_file: Path, device_id: str, timeout: float) -> bool:
    """Whether the gateway reports the device online within `timeout` (read from its status
    file, whatever language its journal speaks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            body = json.loads(status_file.read_text(encoding="utf-8"))  # noqa: ASYNC240 - a small tmpfs file
            if body.get("devices", {}).get(device_id, {}).get("state") == "online":
                return True
        await asyncio.sleep(0.1)
    return False


def _backlog(db: Path) -> int:
    with (
        contextlib.suppress(sqlite3.Error),
        sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2) as conn,
    ):
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    return -1


async def _press_for(sim: ButtonReceiverSim, seconds: float, counter: Counter[str]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # the scenario goes on where the last phase stopped: a press is always followed by its
        # restore (a second press of an unrestored button would be folded into its alarm)
        frame, _what = SCENARIO[counter["position"] % len(SCENARIO)]
        counter["position"] += 1
        result = await sim.send(frame)
        if frame != HEARTBEAT:
            counter["acked" if result.acked else "unacked"] += 1
        await asyncio.sleep(PRESS_INTERVAL_S)


async def run_demo(duration_s: float = 8.0, outage_s: float = 6.0) -> int:
    with tempfile.TemporaryDirectory(prefix="care-gateway-demo-") as tmp:
        folder = Path(tmp)
        _say(_("starting mosquitto, the platform sink and a button receiver in {folder}").format(folder=folder))
        sim = ButtonReceiverSim()
        radar = RadarSim("mr60fda1")
        radar.start()
        modem = ModemSim()
        modem.start()
        counter: Counter[str] = Counter()
        with Mosquitto(folder / "broker") as broker:
            sink = PlatformSink(broker.host, broker.port, STATION_ID, out_path=folder / "platform.jsonl")
            async with LinkProxy(broker.host, broker.port) as link, asyncio.TaskGroup() as tasks:
                sink_task = tasks.create_task(sink.run(), name="platform-sink")
                await asyncio.wait_for(sink.subscribed.wait(), 10)
                db = folder / "outbox.db"
                config = folder / "station.toml"
                config.write_text(
                    station_toml(
                        station_id=STATION_ID,
                        broker_port=link.port,
                        db_path=db,
                        receiver_ports={"button-rx-1": sim.path},
                        receiver_extra='residents = { "5" = "wang-guihua" }',  # her pendant is zone 5
                        station_extra=f"location = {{ lat = {DEMO_LAT}, lon = {DEMO_LON} }}",
                        extra_devices=(
                            f'\n[[devices]]\nid = "radar-bedroom"\nkind = "mmwave_radar"\nmodel = "mr60fda1"\n'
                            f'port = "{radar.path}"\nlabel = "bedroom"\nheartbeat_interval_s = 5\n'
                            + CARE.format(modem=modem.path)
                        ),
                    )
                )
                print(
                    _("broker 127.0.0.1:{broker}, station uplink via link proxy :{proxy}, receiver on {port}").format(
                        broker=broker.port, proxy=link.port, port=sim.path
                    )
                    + "\n"
                    + _("config:")
                    + f"\n{config.read_text()}",
                    flush=True,
                )
                gateway = GatewayProcess(config, on_line=lambda line: print(f"  gateway | {line}", flush=True))
                await gateway.start()
                try:
                    started = await _device_online(folder / "status.json", "button-rx-1", 15)
                    if started:
                        await _scenario(sim, radar, link, sink, db, counter, duration_s, outage_s)
                finally:
                    code = await gateway.stop()
                    sink_task.cancel()
                    sim.close()
                    radar.close()
                    modem.close()
        if not started:
            print(_("the gateway did not open the receiver port; see its log above"))
            return 1

        expected_reports = counter["acked"]
        received = _reports(sink)
        lost = max(0, expected_reports - received)
        summary = {
            "reports_acked_by_gateway": expected_reports,
            "reports_unacked": counter["unacked"],
            "reports_received_by_platform": received,
            "events_received_by_platform": len(sink.events),
            "by_kind": dict(Counter(e["kind"] for e in sink.events.values())),
            "duplicates_dropped_by_platform": sink.duplicates,
            "fall_alarms_received": sum(1 for e in sink.events.values() if e["kind"] == "fall"),
            "sms_received_by_the_modem": len(modem.messages),
            "sms_records_on_the_platform": dict(
                Counter(str(e["data"]["result"]) for e in sink.events.values() if e["kind"] == "sms")
            ),
            "lost": lost,
            "gateway_exit_code": code,
        }
        _say(_("summary"))
        print(json.dumps(summary, indent=2), flush=True)
        falls = summary["fall_alarms_received"]
        ok = (
            lost == 0
            and counter["unacked"] == 0
            and code == 0
            and falls == FALL_ALARMS_EXPECTED
            and len(modem.messages) > 0
            and not modem.rejected_pdus
        )
        print(_("OK: nothing accepted was lost") if ok else _("FAILED: see above"), flush=True)
        return 0 if ok else 1


async def _scenario(
    sim: ButtonReceiverSim,
    radar: RadarSim,
    link: LinkProxy,
    sink: PlatformSink,
    db: Path,
    counter: Counter[str],
    duration_s: float,
    outage_s: float,
) -> None:
    _say(
        _("link up: presses, restores and tests for {seconds} s; a fall in the bedroom").format(
            seconds=f"{duration_s:.0f}"
        )
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(_press_for(sim, duration_s, counter))
        tasks.create_task(_fall_and_recovery(radar, duration_s / 3))
    print(_("platform has {count} events so far").format(count=len(sink.events)), flush=True)

    _say(
        _("cutting the station's uplink for {seconds} s; the receiver keeps sending, someone falls again").format(
            seconds=f"{outage_s:.0f}"
        )
    )
    link.cut()
    await _unanswered_press(sim, counter)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(_press_for(sim, outage_s, counter))
        tasks.create_task(_fall_and_recovery(radar, outage_s / 3))
    print(_("outbox holds {count} events waiting for the link").format(count=_backlog(db)), flush=True)

    _say(_("link restored: the backlog drains, alarms first"))
    link.restore()
    await _press_for(sim, duration_s / 2, counter)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline and (_backlog(db) != 0 or _reports(sink) < counter["acked"]):  # noqa: ASYNC110 - polls another process's database
        await asyncio.sleep(0.2)


async def _unanswered_press(sim: ButtonReceiverSim, counter: Counter[str]) -> None:
    """Wang Guihua presses her pendant (zone 5) and nobody cancels it: with the link down, the
    station sends the alarm by SMS to her son and the on-duty number after 2 s."""
    result = await sim.send(surgard_report(qualifier="E", code=101, zone=5))
    counter["acked" if result.acked else "unacked"] += 1


async def _fall_and_recovery(radar: RadarSim, delay_s: float) -> None:
    """Someone falls, lies still (the radar's residence alarm), and is helped up."""
    await asyncio.sleep(delay_s)
    await fall_then_still(radar, seconds_still=1.0)
    await asyncio.sleep(1.0)
    radar.fall(False)
    radar.dwell(False)


def _reports(sink: PlatformSink) -> int:
    return sum(1 for e in sink.events.values() if e.get("data", {}).get("protocol") == "contact_id")
