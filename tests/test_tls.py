"""TLS to the city broker: a real mosquitto with a TLS listener and a CA made at test time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from simulators.broker import Mosquitto, TlsListener
from simulators.button_receiver import surgard_report
from simulators.harness import station_toml
from simulators.tls import TestCA
from tests.conftest import events_of, running_station, wait_until

USER, PASSWORD = "test-station", "s3cret-pass"


@pytest.fixture
def city_ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, city_ca: TestCA) -> Iterator[Mosquitto]:
    server = city_ca.server()
    listener = TlsListener(city_ca.ca_file, server.cert, server.key, users={USER: PASSWORD})
    with Mosquitto(tmp_path / "broker", tls=listener) as running:
        yield running


def secrets(folder: Path, mode: int = 0o600, password: str = PASSWORD) -> Path:
    path = folder / "secrets.toml"
    path.write_text(f'username = "{USER}"\npassword = "{password}"\n')
    path.chmod(mode)
    return path


def tls_extra(ca_file: Path, cert: Path, key: Path, secrets_file: Path) -> str:
    return (
        f'secrets_file = "{secrets_file}"\n[uplink.tls]\nca_file = "{ca_file}"\n'
        f'cert_file = "{cert}"\nkey_file = "{key}"\n'
    )


async def test_mutual_tls_with_a_secrets_file_and_the_expiry_in_the_status(
    tmp_path: Path, city_ca: TestCA, tls_broker: Mosquitto
) -> None:
    client = city_ca.client("test-station", days=10)  # expires soon: reported ahead of time
    extra = tls_extra(city_ca.ca_file, client.cert, client.key, secrets(tmp_path))
    async with running_station(tmp_path, tls_broker, uplink_port=tls_broker.tls_port, uplink_extra=extra) as station:
        assert (await station.receiver.send(surgard_report(code=101, zone=4))).acked
        assert await wait_until(lambda: len(events_of(station, "sos")) == 1), "\n".join(station.gateway.lines)
        assert await wait_until(lambda: station.sink.status is not None and station.sink.status.get("tls"))
        tls = station.sink.status["tls"]  # type: ignore[index]
        assert tls["cert_file"]["days_left"] in (9, 10)
        assert tls["cert_file"]["expires_soon"] is True
        assert tls["ca_file"]["expires_soon"] is False
        assert any(f"the certificate {client.cert} expires in" in line for line in station.gateway.lines)


async def test_a_broker_signed_by_another_ca_is_refused_with_advice(
    tmp_path: Path, city_ca: TestCA, tls_broker: Mosquitto
) -> None:
    impostor = TestCA(tmp_path / "other-pki", "Impostor CA")
    client = city_ca.client("test-station")
    extra = tls_extra(impostor.ca_file, client.cert, client.key, secrets(tmp_path))
    async with running_station(tmp_path, tls_broker, uplink_port=tls_broker.tls_port, uplink_extra=extra) as station:
        assert await station.gateway.wait_for_line("is not signed by [uplink.tls] ca_file")
        assert (await station.receiver.send(surgard_report(code=101, zone=4))).acked  # still accepted and kept
        assert events_of(station, "sos") == []


async def test_a_wrong_password_is_refused_with_advice(tmp_path: Path, city_ca: TestCA, tls_broker: Mosquitto) -> None:
    client = city_ca.client("test-station")
    extra = tls_extra(city_ca.ca_file, client.cert, client.key, secrets(tmp_path, password="wrong"))
    async with running_station(tmp_path, tls_broker, uplink_port=tls_broker.tls_port, uplink_extra=extra) as station:
        assert await station.gateway.wait_for_line("refused this station's user name or password")


def station_file(tmp_path: Path, host: str, extra: str = "") -> Path:
    text = station_toml(station_id="st", broker_port=8883, db_path=tmp_path / "o.db", receiver_ports={})
    path = tmp_path / "station.toml"
    path.write_text(text.replace('host = "127.0.0.1"', f'host = "{host}"\n{extra}'))
    return path


def test_plaintext_to_another_host_is_refused_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(station_file(tmp_path, "mqtt.care.example.cn"))
    assert info.value.problems == [
        f"{tmp_path / 'station.toml'}:5:1: uplink: plaintext MQTT to mqtt.care.example.cn is refused (allowed: an "
        "[uplink.tls] section with ca_file, usually port 8883; or allow_plaintext = true where the link itself "
        "is private)"
    ]
    assert load_config(station_file(tmp_path, "mqtt.care.example.cn", "allow_plaintext = true")).uplink.allow_plaintext
    for loopback in ("localhost", "127.0.0.1", "::1"):
        load_config(station_file(tmp_path, loopback))


def test_a_secrets_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = secrets(tmp_path, mode=0o644)
    with pytest.raises(ConfigError) as info:
        load_config(station_file(tmp_path, "localhost", f'secrets_file = "{path}"'))
    [problem] = info.value.problems
    assert problem.endswith(
        f"uplink.secrets_file: {path} is readable or writable by other users (mode 0644); run: chmod 640 {path} "
        "(owner root, group care-gateway)"
    )
    path.chmod(0o640)
    load_config(station_file(tmp_path, "localhost", f'secrets_file = "{path}"'))
