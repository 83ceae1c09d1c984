"""SMS escalation and downlink commands: the modem simulator on a pty, a real mosquitto,
the gateway as a child process behind a link proxy."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import JsonValue

import gateway.escalation as escalation
from gateway.care import CareBook
from gateway.clock import Clock
from gateway.config import parse_config
from gateway.escalation import Escalator
from gateway.events import Event, EventKind, new_event
from gateway.rules import EventDraft
from simulators.broker import Mosquitto
from simulators.button_receiver import surgard_report
from simulators.link import LinkProxy
from simulators.modem import ModemSim
from tests.conftest import events_of, running_station, wait_until

CONTACT = "+8613800138000"
ON_DUTY = "+8613900139000"
RESIDENTS = f"""
[[residents]]
id = "wang"
name = "王秀英"
room = "3号楼201室"
[[residents.contacts]]
name = "王小明"
phone = "{CONTACT[3:]}"
role = "family"

[care]
ack_timeout_s = 10
"""


def sms_section(port: Path | str, **extra: object) -> str:
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in extra.items())
    return (
        f'\n[sms]\nport = "{port}"\nundelivered_after_s = 2\n{lines}'
        f'[[sms.on_duty]]\nname = "值班站长"\nphone = "{ON_DUTY}"\nrole = "on_duty"\n'
    )


async def test_sms_when_the_link_is_down_then_the_alarm_and_the_sms_records_reach_the_platform(
    tmp_path: Path, broker: Mosquitto
) -> None:
    modem = ModemSim()
    modem.start()
    (tmp_path / "ttyMODEM").symlink_to(modem.path)
    async with (
        LinkProxy(broker.host, broker.port) as link,
        running_station(
            tmp_path,
            broker,
            uplink_port=link.port,
            keepalive_s=4,
            receiver_extra='residents = { "3" = "wang" }',
            extra_devices=RESIDENTS + sms_section(tmp_path / "ttyMODEM"),
        ) as station,
    ):
        gw = station.gateway
        assert await gw.wait_for_line("SMS modem on"), "\n".join(gw.lines)
        assert any("ready: SIM ready, home network, signal -77 dBm" in line for line in gw.lines)
        mark = len(gw.lines)
        link.cut()
        assert await gw.wait_for_line("uplink down", after=mark, timeout=15)

        assert (await station.receiver.send(surgard_report(code=101, zone=3))).acked
        assert await wait_until(lambda: len(modem.messages) >= 2, timeout=20), "\n".join(gw.lines[-20:])
        assert {sms.number for sms in modem.messages} == {CONTACT, ON_DUTY}
        assert modem.rejected_pdus == []
        for sms in modem.messages:
            assert sms.parts == 2  # longer than 70 characters: concatenated, checked part by part
            for words in ("王秀英", "按下了紧急求助按钮", "3号楼201室", "Simulated care station", "平台网络不通"):
                assert words in sms.text, sms.text
        refs = {sms.reference for sms in modem.messages}
        assert len(refs) == 1  # one message: one reference for both recipients' parts

        link.restore()
        assert await wait_until(lambda: len(events_of(station, "sms")) == 2)
        [sos] = events_of(station, "sos")
        assert sos["data"]["resident"] == "wang"
        records = events_of(station, "sms")
        assert {r["data"]["result"] for r in records} == {"sent"}
        assert {r["data"]["alarm_id"] for r in records} == {sos["id"]}
        assert {r["data"]["to"] for r in records} == {"+86138****8000", "+86139****9000"}

        # delivered and not acknowledged within 10 s: re-announced (and sent by SMS again)
        assert await wait_until(lambda: len(events_of(station, "alarm_reminder")) == 1, timeout=20)
        assert await wait_until(lambda: len(modem.messages) == 4, timeout=10)
        assert "第2次短信通知" in modem.messages[-1].text

        await station.sink.command(
            "ack", {"id": "c-1", "alarm_id": sos["id"], "by": "张医生", "note": "已电话联系家属"}
        )
        assert await wait_until(lambda: "c-1" in station.sink.replies)
        reply = station.sink.replies["c-1"]
        assert reply == {
            "id": "c-1",
            "command": "ack",
            "ok": True,
            "result": {"alarm_id": sos["id"], "state": "acknowledged"},
        }
        assert await wait_until(lambda: len(events_of(station, "alarm_update")) == 1)
        update = events_of(station, "alarm_update")[0]["data"]
        assert (update["by"], update["note"]) == ("张医生", "已电话联系家属")  # the note is kept, not dropped
        # acknowledged on the station: no more re-announcements and no more SMS (the care tests
        # follow the acknowledged alarm through 15 minutes of its clock)
        await station.sink.command("status", {"id": "s-1"})
        assert await wait_until(
            lambda: [a["state"] for a in (station.sink.status or {}).get("alarms_open", [])] == ["acknowledged"]
        )
        assert len(events_of(station, "alarm_reminder")) == 1
        assert len(modem.messages) == 4
        # (a batch whose PUBACK the cut swallowed is sent again after it: the platform drops it by
        # id, as the sink does; what counts is that each alarm and SMS record is there once, by id)
        assert len(events_of(station, "sos")) == 1
        assert await wait_until(lambda: len(events_of(station, "sms")) == 4)
    modem.close()


async def test_downlink_commands_valid_and_hostile(tmp_path: Path, broker: Mosquitto) -> None:
    async with running_station(
        tmp_path, broker, receiver_extra='residents = { "3" = "wang" }', extra_devices=RESIDENTS
    ) as station:
        sink = station.sink

        async def ask(name: str, body: dict[str, Any] | bytes, key: str | None) -> dict[str, Any]:
            sink.replies.pop(key, None)
            await sink.command(name, body)
            assert await wait_until(lambda: key in sink.replies, timeout=10), (name, body, station.gateway.lines[-10:])
            return sink.replies.pop(key)

        assert await station.gateway.wait_for_line("uplink up")
        await asyncio.sleep(0.5)  # the command topic is subscribed right after the connection
        pong = await ask("ping", {"id": "p-1"}, "p-1")
        assert pong["ok"] is True
        assert pong["result"]["station_id"] == "test-station"
        assert (await ask("status", {"id": "s-1"}, "s-1"))["ok"] is True

        hostile: list[tuple[str, dict[str, Any] | bytes, str | None, str]] = [
            ("ping", b"{not json", None, "payload is not JSON"),
            ("ping", b"\xff\xfe\x00garbage", None, "payload is not JSON"),
            ("reboot", {"id": "r-1"}, "r-1", "unknown command 'reboot' (known: ack, resolve, time, ping, status)"),
            ("ack", {"id": "a-1", "alarm_id": "01KAAAAAAAAAAAAAAAAAAAAAAA"}, "a-1", "by: Field required"),
            ("ack", {"id": "a-2", "alarm_id": "not-an-id", "by": "x"}, "a-2", "alarm_id: String should match"),
            ("ack", {"id": "a-3", "alarm_id": "01KAAAAAAAAAAAAAAAAAAAAAAA", "by": "x"}, "a-3", "is not open"),
            ("ping", {"id": "p-2", "extra": 1}, "p-2", "extra: Extra inputs are not permitted"),
            ("resolve", {"id": "v-1", "alarm_id": "01KAAAAAAAAAAAAAAAAAAAAAAA", "by": "x", "resolution": "?"}, "v-1",
             "resolution: Input should be"),
            ("ping", json.dumps({"id": "big", "pad": "x" * 5000}).encode(), None, "over the 4096-byte limit"),
            ("ping", b"[1, 2]", None, "payload is not a JSON object"),
            ("ping", b'{"id": "\\ud800"}', None, "id must be a string of 1-64 printable characters"),
        ]  # fmt: skip
        for name, body, key, error in hostile:
            reply = await ask(name, body, key)
            assert reply["ok"] is False, reply
            assert error in reply["error"], (error, reply)

        assert (await station.receiver.send(surgard_report(code=101, zone=3))).acked
        assert await wait_until(lambda: len(events_of(station, "sos")) == 1)
        [sos] = events_of(station, "sos")
        resolved = await ask(
            "resolve", {"id": "v-2", "alarm_id": sos["id"], "by": "村医", "resolution": "false_alarm"}, "v-2"
        )
        assert resolved["result"] == {"alarm_id": sos["id"], "state": "resolved"}
        assert (await ask("ack", {"id": "a-4", "alarm_id": sos["id"], "by": "x"}, "a-4"))["result"]["state"] == (
            "resolved"
        )
        assert await wait_until(lambda: len(events_of(station, "alarm_update")) == 1)
        assert events_of(station, "alarm_update")[0]["data"]["resolution"] == "false_alarm"

        assert station.gateway.proc is not None
        assert station.gateway.proc.returncode is None
        assert (await station.receiver.send(surgard_report(code=101, zone=3))).acked  # still serving
        assert await wait_until(lambda: len(events_of(station, "sos")) == 2)


# --- the escalator against the modem simulator, in-process --------------------------------------


class Bench:
    def __init__(self, modem: ModemSim, **sms: object) -> None:
        raw: dict[str, Any] = {
            "station": {"id": "st-1", "name": "海岛站"},
            "uplink": {"host": "127.0.0.1"},
            "storage": {"path": "/tmp/unused.db"},
            "residents": [
                {
                    "id": "wang",
                    "name": "王秀英",
                    "contacts": [{"name": "王小明", "phone": CONTACT, "role": "family"}],
                }
            ],
            "devices": [{"id": "rx", "kind": "contact_id_receiver", "port": "/dev/null", "residents": {"3": "wang"}}],
            "sms": {"port": modem.path, **sms},
        }
        self.config = parse_config(raw)
        clock = Clock("always")
        self.events: list[Event] = []
        self.at = datetime.now(UTC)

        def stamp(device: str, kind: EventKind, data: dict[str, JsonValue]) -> Event:
            return new_event(clock, "st-1", device, kind, data)

        async def commit(events: list[Event]) -> None:
            self.events += events
            self.care.take_changes()

        self.care = CareBook(self.config, stamp)
        self.escalator = Escalator(self.config, self.care.alarm_book, clock, stamp, commit)

    async def alarm(self) -> None:
        """A new press (past the storm window of the last), undelivered for a minute."""
        self.at += timedelta(seconds=self.config.care.storm_window_s + 1)
        self.care.triage("rx", [EventDraft(EventKind.SOS, {"code": 101, "zone": 3})], self.at)
        [alarm] = self.care.alarm_book.due_escalations(self.at + timedelta(seconds=60), 60)
        await self.escalator._escalate(alarm)

    def results(self) -> list[dict[str, JsonValue]]:
        return [e.data for e in self.events if e.kind is EventKind.SMS]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(escalation, "SEND_RETRY_FIRST_S", 0.05)
    monkeypatch.setattr(escalation, "SEND_RETRY_MAX_S", 0.1)


@pytest.mark.usefixtures("fast_retries")
async def test_network_causes_are_retried_others_are_not() -> None:
    modem = ModemSim()
    modem.start()
    bench = Bench(modem)
    modem.faults.cms_errors = [331]  # no network service: retried, then sent
    await bench.alarm()
    [record] = bench.results()
    assert (record["result"], record["attempts"], record["parts"]) == ("sent", 2, 2)
    assert len(modem.messages) == 1

    modem.faults.cms_errors = [21]  # short message transfer rejected: not retried
    await bench.alarm()
    record = bench.results()[-1]
    assert (record["result"], record["attempts"], record["error_code"]) == ("failed", 1, 21)
    assert "rejected" in str(record["error"])

    modem.faults.registered = False  # never registers: three attempts, then failed
    await bench.alarm()
    record = bench.results()[-1]
    assert (record["result"], record["attempts"]) == ("failed", 3)
    assert "not registered" in str(record["error"])

    modem.faults.registered = True
    modem.faults.sim = "NOT INSERTED"
    await bench.alarm()
    record = bench.results()[-1]
    assert (record["result"], record["attempts"]) == ("failed", 1)
    assert "SIM" in str(record["error"])
    modem.close()


async def test_a_flapping_link_cannot_flood_a_family() -> None:
    modem = ModemSim()
    modem.start()
    bench = Bench(modem, per_recipient_per_hour=2)
    for _ in range(4):
        await bench.alarm()
    assert [r["result"] for r in bench.results()] == ["sent", "sent", "held_back", "held_back"]
    assert len(modem.messages) == 2
    modem.close()


async def test_a_slow_modem_is_waited_for() -> None:
    modem = ModemSim()
    modem.start()
    modem.faults.reply_delay_s = 0.2
    bench = Bench(modem)
    await bench.alarm()
    assert [r["result"] for r in bench.results()] == ["sent"]
    modem.close()
