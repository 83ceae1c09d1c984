"""Only the platform commands a station: signed commands, against a running station and a real broker."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.commands import CommandAuth, CommandRefused, sign_command
from simulators.broker import Mosquitto
from simulators.button_receiver import surgard_report
from simulators.platform import PlatformSink, signed
from tests.conftest import STATION_ID, events_of, running_platform, running_station, wait_until

KEY = bytes(range(32))


class Nonces:
    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def nonce_seen(self, nonce: str) -> bool:
        return nonce in self.seen

    async def remember_nonce(self, nonce: str, issued_at: float) -> None:
        self.seen[nonce] = issued_at


def auth(now: datetime, trusted: bool = True) -> CommandAuth:
    return CommandAuth(KEY, Nonces(), lambda: now.timestamp(), lambda: trusted)


async def test_a_command_signed_as_the_docs_say_is_taken_once_and_nothing_else_is() -> None:
    now = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    body = {"id": "r-1", "alarm_id": "01J0000000000000000000000A", "by": "值班医生", "resolution": "handled"}
    good = signed(KEY, "resolve", body, issued_at=now)  # the platform simulator's own implementation
    assert good["sig"] == sign_command(KEY, "resolve", good)  # both sides read the docs the same way
    checker = auth(now)
    await checker.check("resolve", dict(good))
    refusals = [
        (body, "unsigned"),
        ({**good, "by": "someone else"}, "bad signature"),  # altered after signing
        (good, "replayed: this nonce was used before"),
        (signed(bytes(32), "resolve", body, issued_at=now), "bad signature"),  # another key
        (
            signed(KEY, "resolve", body, issued_at=now - timedelta(minutes=6)),
            "stale: issued 360 s before the station's time",
        ),
        (signed(KEY, "ack", body, issued_at=now), "bad signature"),  # signed for another command
    ]
    for candidate, reason in refusals:
        with pytest.raises(CommandRefused, match=reason):
            await checker.check("resolve", dict(candidate))
    # a station whose clock is not synchronised cannot judge freshness: the nonce still stops replays
    old = signed(KEY, "ping", {"id": "p-1"}, issued_at=now - timedelta(days=2))
    untrusted = auth(now, trusted=False)
    await untrusted.check("ping", dict(old))
    with pytest.raises(CommandRefused, match="replayed"):
        await untrusted.check("ping", dict(old))


def secrets_file(folder: Path) -> Path:
    path = folder / "secrets.toml"
    path.write_text(f'command_key = "{KEY.hex()}"\n')
    os.chmod(path, 0o640)
    return path


async def test_a_forged_resolve_is_refused_and_the_platforms_signed_one_is_carried_out_once(
    tmp_path: Path, broker: Mosquitto
) -> None:
    extra = f'secrets_file = "{secrets_file(tmp_path)}"'
    async with running_station(tmp_path, broker, uplink_extra=extra, receiver_extra='residents = { "3" = "wang" }',
                               extra_devices=RESIDENT) as station:  # fmt: skip
        assert (await station.receiver.send(surgard_report(code=101, zone=3))).acked
        assert await wait_until(lambda: events_of(station, "sos"))
        [sos] = events_of(station, "sos")
        assert await station.gateway.wait_for_line("uplink up")
        await asyncio.sleep(0.5)  # the command topic is subscribed right after the connection

        intruder = PlatformSink(broker.host, broker.port, STATION_ID, client_id="intruder")
        async with running_platform(intruder):  # another client the broker lets in
            forged = {"id": "f-1", "alarm_id": sos["id"], "by": "值班医生", "resolution": "false_alarm"}
            await intruder.command("resolve", forged)
            assert await wait_until(lambda: "f-1" in intruder.replies)
            assert intruder.replies["f-1"]["ok"] is False
            assert "unsigned" in intruder.replies["f-1"]["error"]

        platform: PlatformSink = station.sink
        platform.command_key = KEY
        real = signed(KEY, "resolve", {"id": "r-1", "alarm_id": sos["id"], "by": "值班医生"})
        await platform.command("resolve", real)
        assert await wait_until(lambda: "r-1" in platform.replies)
        assert platform.replies["r-1"]["ok"] is True
        replayed = {**real, "id": "r-1"}
        platform.replies.pop("r-1")
        await platform.command("resolve", replayed)  # the same signed message, captured and sent again
        assert await wait_until(lambda: "r-1" in platform.replies)
        assert platform.replies["r-1"] == {
            "id": "r-1",
            "command": "resolve",
            "ok": False,
            "error": "replayed: this nonce was used before",
        }
        assert await wait_until(lambda: len(events_of(station, "alarm_update")) == 1)
        updates = events_of(station, "alarm_update")
        assert (updates[0]["data"]["change"], updates[0]["data"]["resolution"]) == ("resolved", "handled")


RESIDENT = """
[[residents]]
id = "wang"
name = "王秀英"
"""


def test_the_worked_example_of_docs_mqtt_verifies() -> None:
    import json
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "mqtt.md").read_text()
    example = doc[doc.index("Worked example") : doc.index("```", doc.index("published:"))]
    published = json.loads(" ".join(example[example.index("published:") + 10 :].split()))
    text = re.search(r"signed text:  (\w+)\n\s+(\{.*\})", example)
    assert text is not None
    assert json.loads(text[2]) == {k: v for k, v in published.items() if k != "sig"}
    assert sign_command(KEY, text[1], published) == published["sig"]


async def test_the_shipped_broker_acl_keeps_every_client_to_its_own_topics(tmp_path: Path) -> None:
    """systemd/broker/mosquitto-care.acl on a real mosquitto (user names given as the
    certificates' CNs would give them): only the platform commands a station, and a station
    speaks only in its own name."""
    import aiomqtt

    from gateway.uplink import BrokerClient

    acl = (Path(__file__).resolve().parent.parent / "systemd" / "broker" / "mosquitto-care.acl").read_text()

    async def verdict(user: str | None, topic: str) -> int:
        v5 = aiomqtt.ProtocolVersion.V5  # (only MQTT 5 says "refused" in its PUBACK)
        async with BrokerClient(
            broker.host, broker.port, identifier=f"acl-{user}", username=user, protocol=v5
        ) as client:
            return (await client.deliver(topic, '{"id":"x"}')).code

    with Mosquitto(tmp_path / "broker", acl=acl) as broker:
        allowed = {
            ("platform", "care/v1/st-a/cmd/resolve"),  # the platform commands
            ("st-a", "care/v1/st-a/events/alarm"),  # a station speaks in its own name
            ("st-a", "care/v1/st-a/status"),
            ("st-a", "care/v1/st-a/heartbeat"),
            ("st-a", "care/v1/st-a/cmd-reply"),
        }
        assert [case for case in allowed if await verdict(*case) >= 0x80] == []  # (0x10: no subscriber yet)
        refused = {
            (None, "care/v1/st-a/cmd/resolve"),  # an anonymous client
            ("intruder", "care/v1/st-a/cmd/resolve"),  # any other user
            ("st-b", "care/v1/st-a/cmd/resolve"),  # another station
            ("st-b", "care/v1/st-a/events/alarm"),  # ... speaking in st-a's name
            ("st-b", "care/v1/st-a/status"),
            ("st-b", "care/v1/st-a/heartbeat"),
            ("st-a", "care/v1/st-a/cmd/ack"),  # a station cannot command itself
        }
        assert {case: await verdict(*case) for case in refused} == dict.fromkeys(refused, 0x87)


def test_names_and_rooms_leave_the_station_only_where_the_platform_may_have_them(tmp_path: Path) -> None:
    from gateway import app
    from gateway.config import parse_config
    from gateway.events import EventKind

    raw: dict[str, Any] = {
        "station": {"id": "st", "name": "s"},
        "uplink": {"host": "127.0.0.1"},
        "storage": {"path": str(tmp_path / "o.db")},
    }
    data = {"caregiver": "李娜", "visit": "started", "resident": "wang"}
    assert app.Station(parse_config(raw)).make_event("badge", EventKind.VISIT, data).data == {
        "visit": "started",
        "resident": "wang",
    }
    opted_in = parse_config({**raw, "uplink": {"host": "127.0.0.1", "share_personal_data": True}})
    assert app.Station(opted_in).make_event("badge", EventKind.VISIT, data).data == data


def test_control_and_direction_characters_never_reach_a_reader() -> None:
    from gateway.config import ConfigError, parse_config, printable

    raw: dict[str, Any] = {
        "station": {"id": "st", "name": "草原站\u202e"},  # a right-to-left override
        "uplink": {"host": "127.0.0.1"},
        "storage": {"path": "/tmp/unused.db"},
    }
    with pytest.raises(ConfigError, match=r"station.name: .*control or direction character U\+202E"):
        parse_config(raw)
    raw["station"]["name"] = "草原站"
    raw["residents"] = [{"id": "wang", "name": "王\n秀英"}]
    with pytest.raises(ConfigError, match=r'residents\[0\] \(id = "wang"\)\.name: .*U\+000A'):
        parse_config(raw)
    # what a radio names itself is neutralised before it is printed
    assert printable("pendant\x1b[2J\nconfigured as sos-1") == "pendant\ufffd[2J\ufffdconfigured as sos-1"


async def test_a_command_nested_two_thousand_deep_is_refused_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.commands import COMMANDS, CommandTable

    async def handler(command: object) -> dict[str, Any]:
        return {}

    table = CommandTable(dict.fromkeys(COMMANDS, handler))
    reply = await table.answer("ping", b"[" * 2000 + b"]" * 2000)  # (within the 4096-byte limit)
    assert reply == {
        "id": None,
        "command": "ping",
        "ok": False,
        "error": "payload is nested too deeply to be a command",
    }
    assert "Traceback" not in caplog.text
    forged_line = await table.answer("ping", b'{"id": "a\\nINFO care_gateway: station stopped"}')
    assert forged_line["ok"] is False  # an id with a newline is refused (and never starts a journal line)


def test_the_broker_link_is_never_below_tls_1_2(tmp_path: Path) -> None:
    import ssl

    from gateway.config import parse_config
    from gateway.uplink import tls_context
    from simulators.tls import TestCA

    ca = TestCA(tmp_path)
    station = ca.client("st-1")
    tls = {"ca_file": str(ca.ca_file), "cert_file": str(station.cert), "key_file": str(station.key)}
    raw = {"station": {"id": "st", "name": "s"}, "uplink": {"host": "broker.example", "tls": tls}}
    context = tls_context(parse_config({**raw, "storage": {"path": str(tmp_path / "o.db")}}).uplink)
    assert context is not None
    assert (context.minimum_version, context.verify_mode, context.check_hostname) == (
        ssl.TLSVersion.TLSv1_2,
        ssl.CERT_REQUIRED,
        True,
    )


async def test_the_daemon_makes_no_world_readable_file_whatever_its_umask(tmp_path: Path, broker: Mosquitto) -> None:
    old = os.umask(0)  # started from a shell that allows everything
    try:
        async with running_station(tmp_path, broker) as station:
            assert (await station.receiver.send(surgard_report(code=101, zone=3))).acked
            status = station.db_path.parent / "status.json"
            assert await wait_until(status.exists)
            made = [station.db_path, Path(f"{station.db_path}-wal"), status, Path(f"{station.db_path}.reserve")]
            modes = {path.name: oct(path.stat().st_mode & 0o777) for path in made if path.exists()}
            assert station.db_path.name in modes
            assert {name: mode for name, mode in modes.items() if int(mode, 8) & 0o007} == {}
    finally:
        os.umask(old)


def test_a_password_in_a_station_file_others_can_read_is_refused_and_never_echoed(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_config

    station = tmp_path / "station.toml"
    station.write_text(
        '[station]\nid = "st"\nname = "s"\n[uplink]\nhost = "127.0.0.1"\npassword = "hunter2-secret"\n'
        f'[storage]\npath = "{tmp_path / "o.db"}"\n'
    )
    os.chmod(station, 0o644)
    with pytest.raises(ConfigError) as refused:
        load_config(station)
    assert "uplink.password: the file is readable or writable by other users (mode 0644)" in str(refused.value)
    assert "hunter2" not in str(refused.value)
    os.chmod(station, 0o640)
    assert load_config(station).uplink.password == "hunter2-secret"


def test_the_unit_is_rated_at_most_1_5_by_systemd_analyze() -> None:
    import re
    import shutil
    import subprocess

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = Path(__file__).resolve().parent.parent / "systemd" / "care-gateway.service"
    run = subprocess.run(
        [analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True, check=False
    )
    rating = re.search(r"Overall exposure level for care-gateway.service: (\d+\.\d)", run.stdout)
    assert rating is not None, run.stdout[-500:] + run.stderr[-500:]
    assert float(rating[1]) <= 1.5


def test_the_gateways_of_the_tests_run_under_the_units_memory_deny_write_execute() -> None:
    """The unit sets MemoryDenyWriteExecute=yes; the harness starts every test's and the demo's
    gateway under the kernel's same rule, so the whole suite shows the daemon works under it."""
    import subprocess
    import sys

    from simulators.harness import GatewayProcess

    unit = (Path(__file__).resolve().parent.parent / "systemd" / "care-gateway.service").read_text()
    assert "\nMemoryDenyWriteExecute=yes\n" in unit
    if not deny_write_execute_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3): the gateways run without the rule")
    harness = GatewayProcess(Path("unused.toml"))
    try_wx = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    run = subprocess.run([sys.executable, "-c", try_wx], preexec_fn=harness._preexec, capture_output=True, text=True)
    assert "PermissionError" in run.stderr, run.stderr
    free = subprocess.run([sys.executable, "-c", try_wx], capture_output=True, text=True)
    assert free.returncode == 0, free.stderr  # (without the rule the same mapping is allowed)


def deny_write_execute_supported() -> bool:
    import subprocess
    import sys

    probe = "from simulators.harness import deny_write_execute; raise SystemExit(0 if deny_write_execute() else 1)"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


async def test_text_from_the_broker_never_starts_a_journal_line_nor_reaches_the_terminal(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A hostile client puts newlines, carriage returns, ANSI escapes and bidi overrides in
    every part of a downlink message the gateway reads: the topic, the command name, the
    fields. However the gateway logs them, each record stays one line with no control character."""
    async with running_station(tmp_path, broker) as station:
        assert await station.gateway.wait_for_line("uplink up")
        await asyncio.sleep(0.5)  # the command topic is subscribed right after the connection
        forged = "\nERROR care_gateway: FORGED station stopped\r\x1b[2J\u202e"
        in_topic = "\u2028ERROR care_gateway: FORGED\u202e"  # (mosquitto drops a client for C0 controls there)
        intruder = PlatformSink(broker.host, broker.port, STATION_ID, client_id="intruder")
        async with running_platform(intruder):
            await intruder.command("ping" + in_topic, {"id": "t-1"})
            await intruder.command("resolve", {"id": "t-2", "alarm_id": "a" + forged, "by": "x" + forged})
            await intruder.command("ack", {"id": "t-3" + forged})
            await intruder.command("ping", {"id": "t-4", "extra": forged, forged: 1})
            await intruder.command("status", ("\xff" + forged).encode("utf-8", "surrogateescape"))
            await intruder.command("config" + in_topic, b"\x1b[31m" + forged.encode())
            assert await wait_until(lambda: "t-2" in intruder.replies)
            await asyncio.sleep(1.0)  # the rest are answered or logged as refused
        log = station.gateway.lines
        assert any("downlink" in line for line in log), "\n".join(log)
        assert not [line for line in log if line.startswith("ERROR care_gateway: FORGED")], "\n".join(log)
        assert not [line for line in log if any(c in line for c in "\r\x1b\u202e\u2028")], "\n".join(log)
        assert station.gateway.proc is not None
        assert station.gateway.proc.returncode is None


def test_a_message_logged_raw_is_still_one_line_without_control_characters() -> None:
    """The journal's last defence: even a `%s` of hostile text (a broker's reason string, an
    exception's message) cannot start a line or send an escape to the terminal."""
    import logging

    from gateway.__main__ import JournalFormatter

    record = logging.LogRecord("care_gateway.uplink", logging.WARNING, __file__, 1, "broker said: %s", (
        "bye\nERROR care_gateway: FORGED\r\x1b[2J\u202e",), None)  # fmt: skip
    line = JournalFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert line == "WARNING care_gateway.uplink: broker said: bye\ufffdERROR care_gateway: FORGED\ufffd\ufffd[2J\ufffd"
    assert JournalFormatter("%(message)s").format(logging.makeLogRecord({"msg": "草原站 3号楼"})) == "草原站 3号楼"
