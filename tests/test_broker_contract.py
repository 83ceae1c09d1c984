"""The alarm path against real brokers that refuse, fail over and carry hostile commands (issue 11).

Every test runs the gateway as a child process against real mosquitto instances (ACLs, the
dynamic-security plugin, two brokers) and a receiver simulator on a real pty.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import aiomqtt

from simulators.broker import Mosquitto
from simulators.button_receiver import surgard_report
from tests.conftest import STATION_ID, events_of, running_sink, running_station, wait_until

BASE = f"care/v1/{STATION_ID}"
# anonymous clients (the station and the platform sink) may read everything, write status,
# commands and replies: but not the events
ACL_DENYING_EVENTS = (
    "topic read care/v1/#\n"
    f"topic readwrite {BASE}/status\n"
    f"topic readwrite {BASE}/cmd/#\n"
    f"topic readwrite {BASE}/cmd-reply\n"
)
ACL_OPEN = "topic readwrite care/v1/#\n"


def outbox_alarms(db_path: Path) -> int:
    with sqlite3.connect(db_path) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox WHERE priority = 0").fetchone()[0])


async def test_a_refused_publish_stays_in_the_outbox_and_arrives_once_when_the_acl_opens(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker", acl=ACL_DENYING_EVENTS) as broker:
        async with running_station(tmp_path, broker) as station:
            for zone in range(1, 6):
                assert (await station.receiver.send(surgard_report(code=101, zone=zone))).acked
            gw = station.gateway
            assert await gw.wait_for_line("the broker refused"), "\n".join(gw.lines)
            assert any("0x87 Not authorized" in line for line in gw.lines)
            assert any("ACL does not let client" in line for line in gw.lines)
            await asyncio.sleep(2)
            assert events_of(station, "sos") == []  # nothing reached the platform ...
            assert outbox_alarms(station.db_path) >= 5  # ... and nothing left the outbox

            def refused() -> int:
                link = (station.sink.status or {}).get("link") or {}
                return int(link.get("refused", {}).get("0x87 Not authorized", 0))

            assert await wait_until(lambda: refused() >= 5, timeout=20)  # counted, in the retained status

            broker.reload(ACL_OPEN)  # the operator fixes the ACL: everything arrives, once
            assert await wait_until(lambda: len(events_of(station, "sos")) == 5), "\n".join(gw.lines[-20:])
            assert await wait_until(lambda: outbox_alarms(station.db_path) == 0)
            assert station.sink.duplicates == 0
            assert sorted(e["data"]["zone"] for e in events_of(station, "sos")) == [1, 2, 3, 4, 5]


async def test_retained_poison_commands_are_ignored_and_presses_still_flow(tmp_path: Path, broker: Mosquitto) -> None:
    poison = {
        "ping": b'{"id": "\\ud800"}',  # valid JSON, a lone surrogate: cannot be encoded as UTF-8
        "time": b'{"id": "t-9999", "utc": "9999-12-31T23:59:59.999Z"}',
        "resolve": b'{"id": "r-1", "alarm_id": "01JCZ0000000000000000000AA", "by": "x"}',
    }
    async with aiomqtt.Client(broker.host, broker.port, identifier="attacker") as attacker:
        for name, body in poison.items():
            await attacker.publish(f"{BASE}/cmd/{name}", body, qos=1, retain=True)
        await attacker.publish(f"{BASE}/cmd/time/x", b'{"id": "t-0001", "utc": "0001-01-01T00:00:00Z"}', retain=True)
    async with running_station(tmp_path, broker) as station:
        gw = station.gateway
        assert await gw.wait_for_line("uplink up")
        for zone in (1, 2):
            assert (await station.receiver.send(surgard_report(code=101, zone=zone))).acked
        assert await wait_until(lambda: len(events_of(station, "sos")) == 2), "\n".join(gw.lines)
        assert station.sink.replies == {}  # no retained message was carried out
        assert station.sink.status is not None
        assert station.sink.status["clock_source"] != "platform"

        # the same poison, live: refused with a reason, and the uplink goes on
        await station.sink.command("ping", b'{"id": "\\ud800"}')
        assert await wait_until(lambda: None in station.sink.replies)
        assert station.sink.replies[None]["error"] == "id must be a string of 1-64 printable characters"
        await station.sink.command("time", {"id": "t-late", "utc": "9999-12-31T23:59:59.999Z"})
        assert await wait_until(lambda: "t-late" in station.sink.replies)
        assert station.sink.replies["t-late"]["ok"] is False
        assert "refused" in station.sink.replies["t-late"]["error"]
        await station.sink.command("time", {"id": "t-early", "utc": "0001-01-01T00:00:00Z"})
        assert await wait_until(lambda: "t-early" in station.sink.replies)
        assert "is before" in station.sink.replies["t-early"]["error"]
        await station.sink.command("ping", {"id": "p-ok"})
        assert await wait_until(lambda: "p-ok" in station.sink.replies)
        assert (await station.receiver.send(surgard_report(code=101, zone=3))).acked
        assert await wait_until(lambda: len(events_of(station, "sos")) == 3)
        assert gw.proc is not None
        assert gw.proc.returncode is None


async def test_a_command_sent_while_the_station_is_offline_is_carried_out_when_it_returns(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with running_station(tmp_path, broker) as station:
        assert await station.gateway.wait_for_line("uplink up")
        await station.gateway.stop()  # a clean stop: the broker keeps the session (MQTT 5 expiry)
        await station.sink.command("ping", {"id": "while-away"})
        await asyncio.sleep(0.5)
        assert "while-away" not in station.sink.replies
        await station.restart_gateway()
        assert await wait_until(lambda: "while-away" in station.sink.replies), "\n".join(station.gateway.lines)
        assert station.sink.replies["while-away"]["ok"] is True


DYNSEC_NO_COMMANDS = json.dumps(
    {
        "defaultACLAccess": {
            "publishClientSend": True,
            "publishClientReceive": True,
            "subscribe": True,
            "unsubscribe": True,
        },
        "clients": [],
        "groups": [{"groupname": "anonymous", "roles": [{"rolename": "no-commands"}]}],
        "roles": [
            {
                "rolename": "no-commands",
                "acls": [{"acltype": "subscribePattern", "topic": "care/v1/+/cmd/+", "priority": 1, "allow": False}],
            }
        ],
        "anonymousGroup": "anonymous",
    }
)


async def test_a_refused_command_subscription_shows_in_the_status(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker", dynsec=DYNSEC_NO_COMMANDS) as broker:
        async with running_station(tmp_path, broker) as station:
            gw = station.gateway
            assert await gw.wait_for_line("refused the subscription"), "\n".join(gw.lines)
            assert any("0x87 Not authorized" in line for line in gw.lines if "subscription" in line)

            def subscription() -> str:
                return str(((station.sink.status or {}).get("link") or {}).get("commands", {}).get("subscription"))

            assert await wait_until(lambda: subscription().startswith("refused: 0x87"))
            assert (await station.receiver.send(surgard_report(code=101, zone=4))).acked  # alarms still flow
            assert await wait_until(lambda: len(events_of(station, "sos")) == 1)


async def test_the_station_fails_over_to_the_second_broker_mid_drain_and_loses_nothing(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with Mosquitto(tmp_path / "broker-2") as second:
        failover = f'failover = ["127.0.0.1:{second.port}"]\nbyte_budget_per_s = 400000'
        async with (
            running_sink(second.host, second.port) as sink2,
            running_station(tmp_path, broker, uplink_extra=failover, seed_telemetry=12_000) as station,
        ):
            assert await wait_until(lambda: len(station.sink.events) >= 1000, timeout=30)
            broker.stop()  # the station's node dies mid-drain
            assert (await station.receiver.send(surgard_report(code=101, zone=9))).acked
            gw = station.gateway
            assert await gw.wait_for_line(f"connected to 127.0.0.1:{second.port}", timeout=30), "\n".join(gw.lines)

            def delivered() -> set[str]:
                return set(station.sink.events) | set(sink2.events)

            assert await wait_until(lambda: set(station.seeded) <= delivered(), timeout=60)
            assert any(e["kind"] == "sos" for e in sink2.events.values())
            assert len(station.sink.events) < len(station.seeded)  # the first broker really died mid-drain


async def test_life_safety_contact_id_codes_are_alarms_ahead_of_a_backlog(tmp_path: Path, broker: Mosquitto) -> None:
    codes = {110: "fire", 111: "fire", 151: "gas", 162: "carbon_monoxide", 120: "panic"}
    async with running_station(tmp_path, broker, uplink_extra="byte_budget_per_s = 200000", seed_telemetry=5000) as st:
        for zone, code in enumerate(codes, start=11):
            assert (await st.receiver.send(surgard_report(code=code, zone=zone))).acked
        assert await wait_until(lambda: sum(len(events_of(st, k)) for k in set(codes.values())) == 5)
        arrived = {e["data"]["code"]: e for e in st.sink.events.values() if e.get("priority") == "alarm"}
        assert {code: arrived[code]["kind"] for code in codes} == codes
        assert not set(st.seeded) <= set(st.sink.events)  # the backlog was still draining: they went first


async def test_a_station_on_mqtt_3_1_1_delivers_and_keeps_its_commands_while_away(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with running_station(tmp_path, broker, uplink_extra='protocol = "3.1.1"') as station:
        gw = station.gateway
        assert await gw.wait_for_line("(MQTT 3.1.1, broadband link)"), "\n".join(gw.lines)
        assert (await station.receiver.send(surgard_report(code=101, zone=2))).acked
        assert await wait_until(lambda: len(events_of(station, "sos")) == 1)
        await gw.stop()
        await station.sink.command("ping", {"id": "away-311"})  # clean_session false: queued for it
        await station.restart_gateway()
        assert await wait_until(lambda: "away-311" in station.sink.replies), "\n".join(station.gateway.lines)


class SilentToVersion5:
    """A TCP proxy to mosquitto that takes an MQTT 5 CONNECT and never answers it (as RabbitMQ
    before 3.13 does), and passes MQTT 3.1.1 through."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.v5_connects = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SilentToVersion5:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(4096)
        # fixed header byte, remaining length (1-4 bytes, high bit = more), "MQTT" (2 + 4), the level
        at = 1
        while at < len(first) and first[at] & 0x80:
            at += 1
        level_at = at + 1 + 6
        if len(first) > level_at and first[level_at] == 5:
            self.v5_connects += 1
            await reader.read()  # silence until the client gives up
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        up_writer.write(first)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


async def test_a_broker_that_ignores_mqtt_5_gets_3_1_1_after_one_silent_connect(
    tmp_path: Path, broker: Mosquitto
) -> None:
    proxy = SilentToVersion5(broker.port)
    async with proxy, running_station(tmp_path, broker, uplink_port=proxy.port) as station:
        gw = station.gateway
        assert await gw.wait_for_line("did not answer an MQTT 5 CONNECT; falling back to MQTT 3.1.1", timeout=30)
        assert (await station.receiver.send(surgard_report(code=101, zone=5))).acked
        assert await wait_until(lambda: len(events_of(station, "sos")) == 1)
        assert proxy.v5_connects == 1  # once: it does not try MQTT 5 again and again
        assert sum("falling back" in line for line in gw.lines) == 1


async def test_two_stations_with_one_id_are_told_so_and_back_off(tmp_path: Path, broker: Mosquitto) -> None:
    from simulators.button_receiver import ButtonReceiverSim
    from simulators.harness import GatewayProcess

    async with running_station(tmp_path, broker) as station:
        assert await station.gateway.wait_for_line("uplink up")
        twin_receiver = ButtonReceiverSim()
        twin_config = tmp_path / "twin.toml"
        twin_config.write_text(
            station.config_path.read_text()
            .replace(str(station.db_path), str(tmp_path / "twin.db"))
            .replace(str(station.port_link), twin_receiver.path)
        )
        twin = GatewayProcess(twin_config)
        await twin.start()
        try:
            started = time.monotonic()
            # mosquitto 2.0 closes the older connection without a DISCONNECT 0x8E: the repeated short
            # sessions are what tells (a broker that sends 0x8E gets the cause named at once)
            named = "is a second station configured with station id 'test-station'?"
            told = await asyncio.wait(
                [asyncio.create_task(p.wait_for_line(named, timeout=20)) for p in (station.gateway, twin)],
                return_when=asyncio.FIRST_COMPLETED,
            )
            lines = station.gateway.lines + twin.lines
            assert any(task.result() for task in told[0]), [line for line in lines if "uplink" in line]
            for task in told[1]:
                task.cancel()
            connects = sum("uplink up" in line for line in lines)
            elapsed = time.monotonic() - started
            assert connects < 30 * max(1.0, elapsed / 12), (connects, elapsed)  # backing off: not a takeover
            # storm (1,600 a minute before; under 30 in the 12 s it took to be named before)
        finally:
            await twin.stop()
            twin_receiver.close()


async def test_an_alarm_the_broker_refuses_goes_out_by_sms(tmp_path: Path) -> None:
    from simulators.modem import ModemSim
    from tests.test_escalation import CONTACT, ON_DUTY, RESIDENTS, sms_section

    modem = ModemSim()
    modem.start()
    (tmp_path / "ttyMODEM").symlink_to(modem.path)
    try:
        with Mosquitto(tmp_path / "broker", acl=ACL_DENYING_EVENTS) as broker:
            async with running_station(
                tmp_path,
                broker,
                receiver_extra='residents = { "3" = "wang" }',
                extra_devices=RESIDENTS + sms_section(tmp_path / "ttyMODEM"),
            ) as station:
                assert await station.gateway.wait_for_line("SMS modem on")
                assert (await station.receiver.send(surgard_report(code=101, zone=3))).acked
                # the link is up, but the broker said no: the alarm is undelivered, so it goes by SMS
                assert await wait_until(lambda: len(modem.messages) >= 2, timeout=20), station.gateway.lines[-20:]
                assert {sms.number for sms in modem.messages} == {CONTACT, ON_DUTY}
                assert events_of(station, "sos") == []
    finally:
        modem.close()
