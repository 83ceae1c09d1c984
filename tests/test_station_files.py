"""check-config and doctor: every file and port the station opens, checked for the service user."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.station_files import ServiceUser, access_problems, files_opened
from simulators.broker import Mosquitto
from simulators.button_receiver import ButtonReceiverSim
from simulators.harness import station_toml
from simulators.tls import TestCA
from tests.test_tls import tls_extra

STRANGER = ServiceUser("care-gateway", 54321, frozenset({54321}), False)  # owns nothing, in no group


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder any user may enter (pytest's tmp_path is 0700: nobody but its owner gets in)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as name:
        folder = Path(name)
        folder.chmod(0o755)
        yield folder


def test_each_file_and_port_is_checked_for_the_service_user(open_folder: Path) -> None:
    ca = TestCA(open_folder / "pki")
    (open_folder / "pki").chmod(0o755)
    client = ca.client("st")
    ca.ca_file.chmod(0o644)  # readable by all: fine
    client.key.chmod(0o600)  # the technician's own: the service user cannot read it
    hidden = open_folder / "private"
    hidden.mkdir(mode=0o700)
    secrets = hidden / "secrets.toml"
    secrets.write_text('username = "u"\npassword = "p"\n')
    secrets.chmod(0o600)
    receiver = ButtonReceiverSim()  # a real pty: owned by this user, mode 0620 or 0600
    text = station_toml(
        station_id="st",
        broker_port=8883,
        db_path=open_folder / "outbox.db",
        receiver_ports={"button-rx-1": receiver.path, "button-rx-2": "/dev/serial/by-id/usb-FTDI-absent-if00"},
        uplink_extra=tls_extra(ca.ca_file, open_folder / "absent.pem", client.key, secrets),
    )
    station = open_folder / "station.toml"
    station.write_text(text)
    config = load_config(station)
    assert [(o.loc, o.write) for o in files_opened(config)] == [
        (("uplink", "secrets_file"), False),
        (("uplink", "tls", "ca_file"), False),
        (("uplink", "tls", "cert_file"), False),
        (("uplink", "tls", "key_file"), False),
        (("devices", 0, "port"), True),
        (("devices", 1, "port"), True),
    ]
    found = {p.loc: p.message for p in access_problems(config, STRANGER)}
    assert found[("uplink", "secrets_file")].startswith(f"user care-gateway may not enter the folder {hidden} (")
    assert ("uplink", "tls", "ca_file") not in found
    assert found[("uplink", "tls", "cert_file")] == (
        f"{open_folder / 'absent.pem'} does not exist: copy the file there (from the platform operator)"
    )
    assert found[("uplink", "tls", "key_file")].startswith(f"user care-gateway may not read {client.key} (")
    assert found[("uplink", "tls", "key_file")].endswith(f"chgrp care-gateway {client.key}; chmod 640 {client.key}")
    tty = os.path.realpath(receiver.path)
    assert found[("devices", 0, "port")].startswith(f"user care-gateway may not open {receiver.path} -> {tty} (")
    assert "usermod -aG " in found[("devices", 0, "port")]
    assert found[("devices", 1, "port")].startswith("/dev/serial/by-id/usb-FTDI-absent-if00 does not exist: is the")

    owner = ServiceUser("care-gateway", os.getuid(), frozenset(os.getgroups()), False)  # the files' owner
    mine = {p.loc for p in access_problems(config, owner)}
    assert mine == {("uplink", "tls", "cert_file"), ("devices", 1, "port")}  # what no one could open

    run = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(station)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 1, run
    lines = run.stderr.splitlines()
    cert_line = next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith("cert_file"))
    assert any(
        line.startswith(f"{station}:{cert_line}:1: uplink.tls.cert_file: {open_folder / 'absent.pem'} does not exist")
        for line in lines
    ), lines
    assert any('devices[1] (id = "button-rx-2").port: /dev/serial/by-id/usb-FTDI-absent-if00' in line for line in lines)
    skipped = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--skip-files", str(station)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert skipped.returncode == 0, skipped
    assert "not checked: the files and ports it names" in skipped.stdout
    receiver.close()


async def test_doctor_names_a_missing_certificate_not_the_network(tmp_path: Path, broker: Mosquitto) -> None:
    ca = TestCA(tmp_path / "pki")
    client = ca.client("st")
    receiver = ButtonReceiverSim()
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('username = "u"\npassword = "p"\n')
    secrets.chmod(0o600)
    station = tmp_path / "station.toml"
    station.write_text(
        station_toml(
            station_id="st",
            broker_port=broker.port,
            db_path=tmp_path / "outbox.db",
            receiver_ports={"button-rx-1": receiver.path},
            uplink_extra=tls_extra(ca.ca_file, tmp_path / "station.pem", client.key, secrets),
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "doctor", "--config", str(station), stdout=asyncio.subprocess.PIPE
    )
    out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    assert proc.returncode == 1, out
    assert f"FAIL uplink.tls.cert_file: {tmp_path / 'station.pem'} does not exist" in out
    assert "FAIL broker: not tried: the station cannot connect without the [uplink] files above" in out
    assert "cellular" not in out, out
    assert "firewall" not in out, out
    assert "OK   uplink.tls.ca_file: " in out
    receiver.close()
