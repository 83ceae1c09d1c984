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

from gateway.clock import Clock
from gateway.config import BLE_KINDS, SERIAL_KINDS, ConfigError, StationConfig, load_config
from gateway.modem_link import Modem, ModemError
from gateway.outbox import OutboxUnavailable, peek
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
        return f"{self.level:<4} {self.subject}: {self.message}" + (f"\n     -> {self.fix}" if self.fix else "")


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
        return [fail("config", problem, f"edit {path}; 'care-gateway check-config {path}'") for problem in exc.problems]
    findings = [ok("config", f"{path} is valid: station {config.station.id}, {len(config.devices)} devices")]
    findings += list(_storage(config))
    findings += [_serial_port(f"device {d.id}", d.port) for d in config.devices if isinstance(d, SERIAL_KINDS)]
    findings += list(_bluetooth(config))
    findings += list(_clock(config))
    findings += list(_certificates(config))
    findings += await _brokers(config)
    if config.sms is not None:
        findings += await _modem(config)
    return findings


def _storage(config: StationConfig) -> Iterator[Finding]:
    db = config.storage.path
    folder = db.parent
    if not folder.is_dir():
        yield fail("storage", f"{folder} does not exist", f"create it: mkdir -p {folder} (the unit's StateDirectory)")
        return
    if not os.access(folder, os.W_OK):
        yield fail("storage", f"{folder} is not writable by this user", "run as the service user, or chown the folder")
    usage = shutil.disk_usage(folder)
    free_mb = usage.free // (1024 * 1024)
    if usage.free < config.storage.max_bytes or usage.free < usage.total * MIN_FREE_FRACTION:
        yield warn(
            "storage",
            f"{free_mb} MiB free on {folder}, less than the outbox may use ({config.storage.max_bytes // 2**20} MiB)",
            "free space (journalctl --vacuum-size=50M, old logs) or lower [storage] max_bytes",
        )
    else:
        yield ok("storage", f"{free_mb} MiB free on {folder}")
    if db.exists():
        try:
            view = peek(db, check=True)
        except OutboxUnavailable as exc:
            yield fail("outbox", str(exc), "the daemon moves a corrupt file aside at start")
            return
        verdict, waiting = view.verdict, sum(view.waiting.values())
        if verdict == "ok":
            yield ok("outbox", f"{db}: intact, {waiting} events waiting")
        else:
            yield fail("outbox", f"{db}: {verdict}", "restart the service: it moves the file aside and salvages it")


def _serial_port(subject: str, port: str) -> Finding:
    path = Path(port)
    if not path.exists():
        by_id = (
            sorted(p.name for p in Path("/dev/serial/by-id").glob("*")) if Path("/dev/serial/by-id").is_dir() else []
        )
        seen = f"; plugged in now: {', '.join(by_id)}" if by_id else "; no USB serial device is plugged in"
        return fail(subject, f"{port} does not exist{seen}", "check the cable, then copy its /dev/serial/by-id name")
    target = path.resolve()
    if not stat.S_ISCHR(target.stat().st_mode):
        return fail(subject, f"{port} -> {target} is not a serial device", "point the port at a /dev/tty* device")
    if not os.access(target, os.R_OK | os.W_OK):
        return fail(
            subject,
            f"{port} -> {target}: this user may not open it",
            "add the service user to the dialout group: usermod -aG dialout care-gateway",
        )
    return ok(subject, f"{port} -> {target}, readable and writable")


def _bluetooth(config: StationConfig) -> Iterator[Finding]:
    devices = [d for d in config.devices if isinstance(d, BLE_KINDS)]
    if not devices:
        return
    socket_path = config.ble.simulated_socket
    if socket_path is not None:
        if Path(socket_path).exists():
            yield ok("bluetooth", f"simulated radio at {socket_path}")
        else:
            yield fail("bluetooth", f"no simulated radio at {socket_path}", "start: python -m simulators wearables")
        return
    adapter = Path("/sys/class/bluetooth") / config.ble.adapter
    if adapter.exists():
        yield ok("bluetooth", f"adapter {config.ble.adapter} present for {len(devices)} devices")
    else:
        yield fail(
            "bluetooth",
            f"adapter {config.ble.adapter} not found",
            "check 'bluetoothctl list' and 'rfkill list'; a USB dongle may need replugging",
        )


def _clock(config: StationConfig) -> Iterator[Finding]:
    clock = Clock(config.station.trust_clock)
    if clock.trusted():
        yield ok("clock", f"synchronised ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    else:
        yield warn(
            "clock",
            f"not synchronised; it says {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; events are flagged clock_trusted=false",
            "check NTP: timedatectl status; systemctl status systemd-timesyncd",
        )


def _certificates(config: StationConfig) -> Iterator[Finding]:
    tls = config.uplink.tls
    if tls is None:
        return
    for name, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        if path is None:
            continue
        if not path.exists():
            yield fail(f"tls {name}", f"{path} is missing", "copy it from the platform operator")
            continue
        if name == "key_file":
            if path.stat().st_mode & 0o077:
                yield warn(f"tls {name}", f"{path} can be read by other users", f"chmod 600 {path}")
            continue
        not_after = certificate_not_after(path)
        if not_after is None:
            yield fail(f"tls {name}", f"{path} is not a PEM certificate", "ask the platform operator for a new one")
            continue
        days = (not_after - datetime.now(UTC)).days
        if days < 0:
            yield fail(f"tls {name}", f"{path} expired on {not_after:%Y-%m-%d}", "install a renewed certificate")
        elif days < TLS_EXPIRY_WARNING_DAYS:
            yield warn(f"tls {name}", f"{path} expires in {days} days ({not_after:%Y-%m-%d})", "renew it now")
        else:
            yield ok(f"tls {name}", f"{path} valid until {not_after:%Y-%m-%d}")


async def _brokers(config: StationConfig) -> list[Finding]:
    """Each broker address: reachable, TLS and login, allowed to publish events and to subscribe
    to commands (tested with MQTT 5, the only version that says when a publish is refused)."""
    up = config.uplink
    findings = []
    for host, port in up.brokers:
        where = f"{host}:{port}"
        try:
            socket.getaddrinfo(host, port)
        except OSError as exc:
            findings.append(
                fail("broker", f"{host} cannot be resolved ({exc})", "check DNS and the uplink (ping, modem)")
            )
            continue
        probe = await probe_broker(config, host, port, BROKER_TIMEOUT_S)
        if not probe.connected:
            fix = _broker_fix(probe.error) if probe.error else "check the broker's MQTT versions"
            findings.append(fail("broker", probe.message, fix))
            continue
        findings.append(ok("broker", probe.message + (" over TLS" if up.tls else "")))
        if probe.protocol != "5":
            findings.append(
                warn(
                    "broker",
                    f"{where} does not speak MQTT 5: a publish its ACL denies would still be acknowledged, "
                    "and the station cannot tell",
                    "ask the platform operator for MQTT 5, or for the station's ACL to be checked by hand; "
                    'set [uplink] protocol = "3.1.1"',
                )
            )
        elif probe.publish is not None and not probe.publish.accepted:
            findings.append(
                fail(
                    "broker",
                    f"{where} refuses this station's events ({probe.publish.label})",
                    f"the broker's ACL must let client {config.client_id!r} publish to "
                    f"{up.topic_prefix}/{config.station.id}/events/#: ask the platform operator",
                )
            )
        else:
            findings.append(ok("broker", f"{where} lets this station publish its events"))
        if probe.subscription and probe.subscription.startswith("refused"):
            findings.append(
                fail(
                    "broker",
                    f"{where} {probe.subscription} for the command topic",
                    f"the broker's ACL must let client {config.client_id!r} subscribe to "
                    f"{up.topic_prefix}/{config.station.id}/cmd/+: ask the platform operator",
                )
            )
    return findings


def _broker_fix(exc: BaseException) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "the broker's certificate does not match [uplink.tls] ca_file or the host name"
    if "Not authorized" in text or "user name or password" in text:
        return "the broker refused the user name or password ([uplink] secrets_file)"
    if isinstance(exc, TimeoutError) or "timed out" in text:
        return "no answer: check the uplink (cellular signal, router), the port and the broker's firewall"
    return "check the uplink, the host and port in [uplink], and that the broker runs"


async def _modem(config: StationConfig) -> list[Finding]:
    assert config.sms is not None
    port = _serial_port("sms modem", config.sms.port)
    if port.level != "OK":
        return [port]
    try:
        async with Modem(config.sms) as modem:
            state = await modem.bring_up()
    except ModemError as exc:
        return [port, fail("sms modem", str(exc), "check the SIM card, the antenna and the network coverage")]
    signal = f"{state.signal_dbm} dBm" if state.signal_dbm is not None else "unknown"
    return [port, ok("sms modem", f"SIM ready, {state.registration} network, signal {signal}")]


def run(path: Path) -> int:
    findings = asyncio.run(examine(path))
    for finding in findings:
        print(finding.line(), flush=True)
    failed = sum(f.level == "FAIL" for f in findings)
    warned = sum(f.level == "WARN" for f in findings)
    print(f"{failed} problem(s) to fix, {warned} warning(s)" if failed or warned else "everything checked is fine")
    return 1 if failed else 0
