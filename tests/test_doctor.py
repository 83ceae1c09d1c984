"""`care-gateway doctor` against a simulated station: a pty receiver, a modem, a real broker."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from simulators.broker import Mosquitto, free_port
from simulators.button_receiver import ButtonReceiverSim
from simulators.harness import station_toml
from simulators.modem import ModemSim


async def doctor(config: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "doctor", "--config", str(config), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)  # the loop keeps serving the modem meanwhile
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def write_station(config: Path, broker: Mosquitto, receiver: ButtonReceiverSim, **extra: str) -> Path:
    """A station file "st" with one receiver, for doctor to examine."""
    config.write_text(
        station_toml(
            station_id="st",
            broker_port=broker.port,
            db_path=config.with_name("outbox.db"),
            receiver_ports={"button-rx-1": receiver.path},
            **extra,  # type: ignore[arg-type]
        )
    )
    return config


async def test_a_healthy_station_then_a_broken_one(tmp_path: Path, broker: Mosquitto) -> None:
    receiver, modem = ButtonReceiverSim(), ModemSim()
    modem.start()
    sms = f'\n[sms]\nport = "{modem.path}"\n'
    config = write_station(tmp_path / "station.toml", broker, receiver, extra_devices=sms)
    code, out = await doctor(config)
    assert code == 0, out
    for expected in (
        f"OK   config: {config} is valid: station st, 1 devices",
        f"OK   device button-rx-1: {receiver.path} -> {receiver.path}, readable and writable",
        f"OK   broker: 127.0.0.1:{broker.port} accepted an MQTT 5 connection",
        f"OK   broker: 127.0.0.1:{broker.port} lets this station publish its events",
        "OK   sms modem: SIM ready, home network, signal -77 dBm",
    ):
        assert expected in out, out

    modem.faults.registered = False
    dead_port = free_port()
    config.write_text(
        config.read_text()
        .replace(receiver.path, "/dev/serial/by-id/usb-missing-receiver")
        .replace(f"port = {broker.port}", f"port = {dead_port}")
    )
    code, out = await doctor(config)
    assert code == 1
    assert "FAIL device button-rx-1: /dev/serial/by-id/usb-missing-receiver does not exist" in out
    assert "-> check the cable, then copy its /dev/serial/by-id name" in out
    assert f"FAIL broker: cannot connect to 127.0.0.1:{dead_port}" in out
    assert "FAIL sms modem: not registered on a network (searching; signal unknown)" in out
    assert "problem(s) to fix" in out
    receiver.close()
    modem.close()


async def test_a_bad_station_file_is_reported_line_by_line(tmp_path: Path) -> None:
    config = tmp_path / "station.toml"
    config.write_text('[station]\nid = "Bad Id"\nname = "x"\n')
    code, out = await doctor(config)
    assert code == 1
    assert "FAIL config: " in out
    assert 'station.toml:2:1: station.id: "Bad Id" is not allowed' in out


async def test_doctor_finds_an_acl_that_denies_the_events_even_for_a_3_1_1_station(tmp_path: Path) -> None:
    """Under 3.1.1 the broker acknowledges a denied publish; doctor asks with MQTT 5 instead."""
    from tests.test_broker_contract import ACL_DENYING_EVENTS, DYNSEC_NO_COMMANDS

    receiver = ButtonReceiverSim()
    for name, broker in [
        ("acl", Mosquitto(tmp_path / "acl", acl=ACL_DENYING_EVENTS.replace("test-station", "st"))),
        ("dynsec", Mosquitto(tmp_path / "dynsec", dynsec=DYNSEC_NO_COMMANDS)),
    ]:
        config = write_station(tmp_path / f"{name}.toml", broker, receiver, uplink_extra='protocol = "3.1.1"')
        with broker:
            code, out = await doctor(config)
        assert code == 1, out
        if name == "acl":
            assert f"FAIL broker: 127.0.0.1:{broker.port} refuses this station's events (0x87 Not authorized)" in out
            assert "publish to care/v1/st/events/#: ask the platform operator" in out
        else:
            assert f"FAIL broker: 127.0.0.1:{broker.port} refused: 0x87 Not authorized for the command topic" in out
    receiver.close()
