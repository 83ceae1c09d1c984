"""`care-gateway doctor`: what a technician on site should check, and how to fix it.

Each check prints one line, `OK`, `WARN` or `FAIL`, with what was found and, when something is
wrong, what to do. It reads the station file and the machine; it may run beside the daemon
(it opens no serial port the daemon holds, and connects to the broker under its own client id).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.clock import Clock
from gateway.config import BLE_KINDS, SERIAL_KINDS, ConfigError, StationConfig, key_path, load_config
from gateway.i18n import _
from gateway.modem_link import Modem, ModemError
from gateway.outbox import OutboxUnavailable, peek
from gateway.station_files import Opened, access_problem, files_opened, service_user
from gateway.uplink import TLS_EXPIRY_WARNING_DAYS, certificate_not_after, probe_broker

__all__ = [
    "Finding",
    "examine",
    "fail",
    "ok",
    "run",
    "warn",
]

BROKER_TIMEOUT_S = 8.0  # reaching the broker, TLS handshake and CONNACK
BY_ID = Path("/dev/serial/by-id")  # stable names of USB serial adapters
MIN_FREE_FRACTION = 0.10  # warn when the outbox's disk has less free space than this


@dataclass(frozen=True)
class Finding:
    level: str  # "OK", "WARN" or "FAIL"
    subject: str
    message: str
    fix: str = ""

    def line(self) -> str:
        level = {"OK": _("OK"), "WARN": _("WARN"), "FAIL": _("FAIL")}[self.level]
        return f"{level:<4} {self.subject}: {self.message}" + (f"\n     -> {self.fix}" if self.fix else "")


def ok(subject: str, message: str) -> Finding:
    return Finding("OK", subject, message)


def warn(subject: str, message: str, fix: str = "") -> Finding:
    return Finding("WARN", subject, message, fix)


def fail(subject: str, message: str, fix: str = "") -> Finding:
    return Finding("FAIL", subject, message, fix)


async def examine(path: Path) -> list[Finding]:
    """Every check, in the order a technician would go through them."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        fix = _("edit {file}; then: care-gateway check-config {file}").format(file=path)
        return [fail(_("config"), problem, fix) for problem in exc.problems]
    findings = [
        ok(
            _("config"),
            _("{file} is valid: station {station}, {devices} devices").format(
                file=path, station=config.station.id, devices=len(config.devices)
            ),
        )
    ]
    findings += list(_storage(config))
    findings += [
        _serial_port(_("device {device}").format(device=d.id), d.port)
        for d in config.devices
        if isinstance(d, SERIAL_KINDS)
    ]
    findings += list(_bluetooth(config))
    findings += list(_clock(config))
    certificates = list(_certificates(config))
    findings += certificates
    if any(f.level == "FAIL" for f in certificates):
        findings.append(
            fail(
                _("broker"),
                _("not tried: the station cannot connect without the [uplink] files above"),
                _("fix the files marked FAIL above first; the network is not the problem yet"),
            )
        )
    else:
        findings += await _brokers(config)
    if config.sms is not None:
        findings += await _modem(config)
    return findings


def _storage(config: StationConfig) -> Iterator[Finding]:
    db = config.storage.path
    folder = db.parent
    if not folder.is_dir():
        yield fail(
            _("storage"),
            _("{folder} does not exist").format(folder=folder),
            _("create it: mkdir -p {folder} (the unit's StateDirectory)").format(folder=folder),
        )
        return
    if not os.access(folder, os.W_OK):
        yield fail(
            _("storage"),
            _("{folder} is not writable by this user").format(folder=folder),
            _("run as the service user, or chown the folder"),
        )
    usage = shutil.disk_usage(folder)
    free_mb = usage.free // (1024 * 1024)
    if usage.free < config.storage.max_bytes or usage.free < usage.total * MIN_FREE_FRACTION:
        yield warn(
            _("storage"),
            _("{free} MiB free on {folder}, less than the outbox may use ({limit} MiB)").format(
                free=free_mb, folder=folder, limit=config.storage.max_bytes // 2**20
            ),
            _("free space (journalctl --vacuum-size=50M, old logs) or lower [storage] max_bytes"),
        )
    else:
        yield ok(_("storage"), _("{free} MiB free on {folder}").format(free=free_mb, folder=folder))
    if db.exists():
        try:
            view = peek(db, check=True)
        except OutboxUnavailable as exc:
            yield fail(_("outbox"), str(exc), _("the daemon moves a corrupt file aside at start"))
            return
        verdict, waiting = view.verdict, sum(view.waiting.values())
        if verdict == "ok":
            yield ok(_("outbox"), _("{file}: intact, {waiting} events waiting").format(file=db, waiting=waiting))
        else:
            yield fail(
                _("outbox"),
                f"{db}: {verdict}",
                _("restart the service: it moves the file aside and salvages it"),
            )


def _serial_port(subject: str, port: str) -> Finding:
    path = Path(port)
    if not path.exists():
        by_id = sorted(p.name for p in BY_ID.glob("*")) if BY_ID.is_dir() else []
        seen = (
            _("plugged in now: {ports}").format(ports=", ".join(by_id))
            if by_id
            else _("no USB serial device is plugged in")
        )
        return fail(
            subject,
            _("{port} does not exist; {seen}").format(port=port, seen=seen),
            _("check the cable, then copy its /dev/serial/by-id name"),
        )
    target = path.resolve()
    if not stat.S_ISCHR(target.stat().st_mode):
        return fail(
            subject,
            _("{port} -> {target} is not a serial device").format(port=port, target=target),
            _("point the port at a /dev/tty* device"),
        )
    problem = access_problem(Opened((), path, write=True), service_user())
    if problem is not None:
        return fail(subject, problem, _("see above: the service user must be able to open the port"))
    return ok(subject, _("{port} -> {target}, readable and writable").format(port=port, target=target))


def _bluetooth(config: StationConfig) -> Iterator[Finding]:
    devices = [d for d in config.devices if isinstance(d, BLE_KINDS)]
    if not devices:
        return
    socket_path = config.ble.simulated_socket
    if socket_path is not None:
        if Path(socket_path).exists():
            yield ok(_("bluetooth"), _("simulated radio at {socket}").format(socket=socket_path))
        else:
            yield fail(
                _("bluetooth"),
                _("no simulated radio at {socket}").format(socket=socket_path),
                _("start: python -m simulators wearables"),
            )
        return
    adapter = Path("/sys/class/bluetooth") / config.ble.adapter
    if adapter.exists():
        yield ok(
            _("bluetooth"),
            _("adapter {adapter} present for {devices} devices").format(
                adapter=config.ble.adapter, devices=len(devices)
            ),
        )
    else:
        yield fail(
            _("bluetooth"),
            _("adapter {adapter} not found").format(adapter=config.ble.adapter),
            _("check 'bluetoothctl list' and 'rfkill list'; a USB dongle may need replugging"),
        )


def _clock(config: StationConfig) -> Iterator[Finding]:
    clock = Clock(config.station.trust_clock)
    zone = ZoneInfo(config.care.timezone)
    now = f"{datetime.now(zone):%Y-%m-%d %H:%M} ({zone.key})"
    if clock.trusted():
        yield ok(_("clock"), _("synchronised ({now})").format(now=now))
    else:
        yield warn(
            _("clock"),
            _("not synchronised; it says {now}; events are flagged clock_trusted=false").format(now=now),
            _("check NTP: timedatectl status; systemctl status systemd-timesyncd"),
        )


def _certificates(config: StationConfig) -> Iterator[Finding]:
    """The [uplink] files (secrets, CA, certificate, key): there, readable by the service user,
    certificates valid. A missing or unreadable one is named as such, not as a network fault."""
    user = service_user()
    for opened in files_opened(config):
        if opened.loc[0] != "uplink":
            continue
        subject = key_path(opened.loc)
        path = opened.path
        problem = access_problem(opened, user)
        if problem is not None:
            yield fail(
                subject,
                problem,
                _("the station cannot log in to the broker without it; ask the platform operator for the file"),
            )
            continue
        if opened.loc[-1] == "secrets_file":
            yield ok(subject, _("{path} readable by {user}").format(path=path, user=user.name))
            continue
        if opened.loc[-1] == "key_file":
            if path.stat().st_mode & 0o077:
                yield warn(subject, _("{path} can be read by other users").format(path=path), f"chmod 600 {path}")
            else:
                yield ok(subject, _("{path} readable by {user}").format(path=path, user=user.name))
            continue
        not_after = certificate_not_after(path)
        if not_after is None:
            yield fail(
                subject,
                _("{path} is not a PEM certificate").format(path=path),
                _("ask the platform operator for a new one"),
            )
            continue
        days = (not_after - datetime.now(UTC)).days
        if days < 0:
            yield fail(
                subject,
                _("{path} expired on {day}").format(path=path, day=f"{not_after:%Y-%m-%d}"),
                _("install a renewed certificate"),
            )
        elif days < TLS_EXPIRY_WARNING_DAYS:
            yield warn(
                subject,
                _("{path} expires in {days} days ({day})").format(path=path, days=days, day=f"{not_after:%Y-%m-%d}"),
                _("renew it now"),
            )
        else:
            yield ok(subject, _("{path} valid until {day}").format(path=path, day=f"{not_after:%Y-%m-%d}"))


async def _brokers(config: StationConfig) -> list[Finding]:
    """Each broker address: reachable, TLS and login, allowed to publish events and to subscribe
    to commands (tested with MQTT 5, the only version that says when a publish is refused)."""
    up = config.uplink
    broker = _("broker")
    findings = []
    for host, port in up.brokers:
        where = f"{host}:{port}"
        try:
            socket.getaddrinfo(host, port)
        except OSError as exc:
            findings.append(
                fail(
                    broker,
                    _("{host} cannot be resolved ({reason})").format(host=host, reason=exc),
                    _("check DNS and the uplink (ping, modem)"),
                )
            )
            continue
        probe = await probe_broker(config, host, port, BROKER_TIMEOUT_S)
        if not probe.connected:
            fix = _broker_fix(probe.error) if probe.error else _("check the broker's MQTT versions")
            findings.append(fail(broker, probe.message, fix))
            continue
        findings.append(ok(broker, probe.message + (_(" over TLS") if up.tls else "")))
        if probe.protocol != "5":
            findings.append(
                warn(
                    broker,
                    _(
                        "{broker} does not speak MQTT 5: a publish its ACL denies would still be acknowledged, "
                        "and the station cannot tell"
                    ).format(broker=where),
                    _(
                        "ask the platform operator for MQTT 5, or for the station's ACL to be checked by hand; "
                        'set [uplink] protocol = "3.1.1"'
                    ),
                )
            )
        elif probe.publish is not None and not probe.publish.accepted:
            findings.append(
                fail(
                    broker,
                    _("{broker} refuses this station's events ({reason})").format(
                        broker=where, reason=probe.publish.label
                    ),
                    _("the broker's ACL must let client {client} publish to {topic}: ask the platform operator").format(
                        client=repr(config.client_id), topic=f"{up.topic_prefix}/{config.station.id}/events/#"
                    ),
                )
            )
        else:
            findings.append(ok(broker, _("{broker} lets this station publish its events").format(broker=where)))
        if probe.subscription and probe.subscription.startswith("refused"):
            findings.append(
                fail(
                    broker,
                    _("{broker} {answer} for the command topic").format(broker=where, answer=probe.subscription),
                    _(
                        "the broker's ACL must let client {client} subscribe to {topic}: ask the platform operator"
                    ).format(client=repr(config.client_id), topic=f"{up.topic_prefix}/{config.station.id}/cmd/+"),
                )
            )
    return findings


def _broker_fix(exc: BaseException) -> str:
    """What to do about a failed connection, from what failed (the first matching cause)."""
    text = str(exc)
    if isinstance(exc, FileNotFoundError | PermissionError) or "No such file" in text:
        return _("a file the connection needs cannot be opened ({reason}): see the [uplink.tls] checks").format(
            reason=text
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return _("the broker's certificate does not match [uplink.tls] ca_file or the host name")
    if "certificate required" in text.lower() or "CERTIFICATE_REQUIRED" in text or "bad certificate" in text.lower():
        return _("the broker wants this station's client certificate: set [uplink.tls] cert_file and key_file")
    if "unknown ca" in text.lower() or "certificate unknown" in text.lower():
        return _("the broker does not accept this station's certificate: ask the platform operator to register it")
    if "KEY_VALUES_MISMATCH" in text or "key values mismatch" in text.lower():
        return _("[uplink.tls] key_file is not the key of cert_file")
    if "Not authorized" in text or "user name or password" in text:
        return _("the broker refused the user name or password ([uplink] secrets_file)")
    if isinstance(exc, ConnectionRefusedError) or "Connection refused" in text:
        return _("the host answers but nothing listens on the port: check [uplink] port, and that the broker runs")
    if isinstance(exc, TimeoutError) or "timed out" in text:
        return _("no answer: check the uplink (cellular signal, router), the port and the broker's firewall")
    return _("check the uplink, the host and port in [uplink], and that the broker runs")


async def _modem(config: StationConfig) -> list[Finding]:
    assert config.sms is not None
    subject = _("sms modem")
    port = _serial_port(subject, config.sms.port)
    if port.level != "OK":
        return [port]
    try:
        async with Modem(config.sms) as modem:
            state = await modem.bring_up()
    except ModemError as exc:
        return [port, fail(subject, exc.local(), _("check the SIM card, the antenna and the network coverage"))]
    signal = f"{state.signal_dbm} dBm" if state.signal_dbm is not None else _("unknown")
    return [
        port,
        ok(
            subject,
            _("SIM ready, {registration} network, signal {signal}").format(
                registration=state.registration, signal=signal
            ),
        ),
    ]


def run(path: Path) -> int:
    findings = asyncio.run(examine(path))
    for finding in findings:
        print(finding.line(), flush=True)
    failed = sum(f.level == "FAIL" for f in findings)
    warned = sum(f.level == "WARN" for f in findings)
    if failed or warned:
        print(_("{failed} problem(s) to fix, {warned} warning(s)").format(failed=failed, warned=warned))
    else:
        print(_("everything checked is fine"))
    return 1 if failed else 0
