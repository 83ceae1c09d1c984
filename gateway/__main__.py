"""Command line: `care-gateway run | check-config | status | schema | demo`."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.config import BleSection, ConfigError, StationConfig, load_config, printable, status_files

if TYPE_CHECKING:
    from gateway.ble_link import Radio

DAEMON_UMASK = 0o027  # files the daemon makes: 0640 at most (the group care-gateway reads the status)
EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus=78 stops a crash loop on a bad file
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a part the station cannot run without failed; systemd restarts it
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the outbox cannot be opened (disk, permissions)


class JournalFormatter(logging.Formatter):
    """One record, one journal line: whatever a broker, a radio or a file put in a message
    (a newline, an ANSI escape, a bidi override) is neutralised, so it can never start a
    forged line nor repaint the technician's terminal. A traceback keeps its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not record.message.isprintable():
            record.message = printable(record.message)
        return super().formatMessage(record)


def _setup_logging(level: str) -> None:
    under_journal = "JOURNAL_STREAM" in os.environ  # journald adds its own timestamps
    fmt = "%(levelname)s %(name)s: %(message)s" if under_journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])


def _cmd_check_config(args: argparse.Namespace) -> int:
    worst = 0
    for path in args.files:
        try:
            config = load_config(path)
        except ConfigError as exc:
            for line in exc.problems:
                print(line, file=sys.stderr)
            worst = 1
            continue
        from gateway.care import coverage_warnings

        print(f"{path}: ok (station {config.station.id}, {len(config.devices)} devices)")
        for warning in coverage_warnings(config):  # valid, but a care rule cannot do its job
            print(f"{path}: warning: {warning}")
    return worst


def _config_or_none(path: Path) -> StationConfig | None:
    """The station file, or None after printing its problems (one line each) to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return None


def radio_for(ble: BleSection) -> Radio | None:
    """The composition root's choice of BLE radio: BlueZ (None), or for `adapter =
    "simulated:<socket>"` the simulated radio's bleak backends (the only place the daemon
    reaches into simulators/)."""
    socket_path = ble.simulated_socket
    if socket_path is None:
        return None
    from gateway.ble_link import Radio
    from simulators.ble_backend import SimulatedClient, SimulatedScanner, reset_radio

    return Radio(
        SimulatedScanner, SimulatedClient, {"socket_path": socket_path}, functools.partial(reset_radio, socket_path)
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import StationFailed, run_station
    from gateway.outbox import OutboxUnavailable

    os.umask(DAEMON_UMASK)  # the outbox and status.json hold care data: never world-readable
    _setup_logging(args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            logging.error("configuration: %s", line)
        return EXIT_CONFIG
    try:
        asyncio.run(run_station(config, Path(args.config), radio_for))
    except OutboxUnavailable as exc:
        logging.critical("%s", exc)
        return EXIT_UNAVAILABLE
    except StationFailed as exc:
        logging.critical("%s; exiting for systemd to start the service afresh", exc)
        return EXIT_SOFTWARE
    return 0


STATUS_FRESH_S = 5.0  # the daemon rewrites status.json every second; older means it is not running


def _outbox_waiting(path: Path) -> dict[str, Any]:
    """What waits in the outbox, read directly (works whether or not the daemon runs)."""
    from gateway.outbox import peek

    if not path.exists():
        return {"outbox": str(path), "exists": False}
    view = peek(path)
    return {
        "outbox": str(path),
        "waiting": {priority.value: n for priority, n in view.waiting.items()},
        "oldest_created_ms": view.oldest_created_ms,
    }


def _live_status(path: Path) -> dict[str, Any] | None:
    """The running daemon's status.json, or None if there is none, it is stale or the process
    that wrote it is gone (killed: no clean stop removed the file)."""
    try:
        body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if time.time() - float(body.get("written_at", 0)) >= STATUS_FRESH_S:
        return None
    return body if _alive(body.get("pid")) else None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # (a file without a pid: only its age tells)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # the service user's process, asked by another user
    return True


def _ago(iso: str | None) -> str:
    if not iso:
        return "never"
    seconds = time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def render_status(live: dict[str, Any] | None, waiting: dict[str, Any]) -> str:
    """The daemon's state as a technician reads it."""
    lines = []
    if live is None:
        lines.append("the daemon is not running (no fresh status.json)")
        counts = waiting.get("waiting", {})
        lines.append("outbox: " + ", ".join(f"{n} {name}" for name, n in counts.items()) + " waiting")
        return "\n".join(lines)
    clock = "synchronised" if live.get("clock_trusted") else "NOT synchronised"
    lines.append(
        f"station {live['station_id']} ({live['name']}): care-gateway {live['version']}, "
        f"up {live['uptime_s']} s, clock {clock}"
    )
    link = live.get("link", {})
    lines.append(f"link: {link.get('state')} since {link.get('since')} ({link.get('connects_since_start')} connects)")
    for change in link.get("history", [])[-3:]:
        lines.append(f"    {change['at']} {change['state']}: {change['reason']}")
    backlog = live.get("backlog", {})
    drain = live.get("estimated_drain_s")
    lines.append(
        "backlog: "
        + ", ".join(f"{n} {name}" for name, n in backlog.items())
        + (f"; oldest {live['oldest_unsent_s']:.0f} s" if live.get("oldest_unsent_s") else "")
        + (f"; drains in about {drain:.0f} s" if drain else "")
    )
    for device_id, device in {**live.get("devices", {}), **live.get("ble_devices", {})}.items():
        state = device.get("state", "")
        battery = f", battery {device['battery']} %" if device.get("battery") is not None else ""
        lines.append(
            f"device {device_id} ({device['kind']}) {state} last seen {_ago(device.get('last_seen'))}{battery}"
        )
    for alarm in live.get("alarms_open", []):
        who = f" of {alarm['resident']}" if alarm.get("resident") else ""
        lines.append(
            f"OPEN ALARM {alarm['kind']}{who} from {alarm['device_id']}: {alarm['state']} ({alarm['alarm_id']})"
        )
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    """The running daemon's state (status.json) and what waits in the outbox."""
    config = _config_or_none(args.config)
    if config is None:
        return EXIT_CONFIG
    status_file = next((path for path in status_files(config) if path.exists()), status_files(config)[-1])
    if args.json:
        live = _live_status(status_file)
        body = {"daemon": "running" if live else "not running", "status": live, **_outbox_waiting(config.storage.path)}
        print(json.dumps(body, ensure_ascii=False))
        return 0
    if not args.watch:
        print(render_status(_live_status(status_file), _outbox_waiting(config.storage.path)))
        return 0
    return _watch(status_file, args.timeout)


def _watch(status_file: Path, timeout: float) -> int:
    """One line a second while the backlog drains: how many wait, how fast they go, when done."""
    deadline = time.monotonic() + timeout
    previous: tuple[float, int] | None = None
    while time.monotonic() < deadline:
        live = _live_status(status_file)
        if live is None:
            print("the daemon is not running", flush=True)
            return 1
        total = sum(live.get("backlog", {}).values())
        now = time.monotonic()
        if total == 0:
            print("backlog drained: nothing waits", flush=True)
            return 0
        rate = (previous[1] - total) / (now - previous[0]) if previous and now > previous[0] else 0.0
        left = f", about {total / rate:.0f} s left" if rate > 0 else ""
        print(
            f"backlog {total} events, link {live.get('link', {}).get('state')}, {rate:.0f} events/s{left}", flush=True
        )
        previous = (now, total)
        time.sleep(1.0)
    print("still draining; stopped watching", flush=True)
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from gateway import doctor

    return doctor.run(args.config)


def _cmd_scan(args: argparse.Namespace) -> int:
    """BLE devices in range and what the gateway can decode from them, to help fill the config."""
    from gateway.ble_link import BLUEZ, scan
    from gateway.config import BLE_KINDS

    config = _config_or_none(args.config)
    if config is None:
        return EXIT_CONFIG
    known = [d for d in config.devices if isinstance(d, BLE_KINDS)]
    found = asyncio.run(scan(config.ble, known, args.seconds, radio_for(config.ble) or BLUEZ))
    if args.json:
        print(json.dumps([{**vars(d), "decoded": sorted(d.decoded)} for d in found], indent=2))
        return 0
    for d in found:
        where = f"configured as {d.configured_as}" if d.configured_as else "not in the station file"
        name = printable(d.name or "-")  # (any radio nearby chooses its name: no escapes, no fake lines)
        print(f"{d.address}  {d.rssi:>4} dBm  {d.adverts:>4} adverts  {name:<16} {printable(where)}")
        for item in sorted(d.decoded):
            print(f"    {item}")
    missing = {d.id for d in known} - {d.configured_as for d in found}
    print(f"{len(found)} device(s) heard in {args.seconds:.0f} s on {config.ble.adapter}")
    if missing:
        print(f"configured but not heard: {', '.join(sorted(missing))}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from gateway.payloads import event_json_schema

    print(json.dumps(event_json_schema(), indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from simulators.demo import run_demo

    return asyncio.run(run_demo(duration_s=args.duration, outage_s=args.outage))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="care-gateway", description="Elderly-care station gateway")
    parser.add_argument("--version", action="version", version=f"care-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground until SIGTERM/SIGINT")
    run.add_argument("--config", required=True, type=Path, help="station file (TOML)")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate station files offline; non-zero exit on any problem")
    check.add_argument("files", nargs="+", type=Path)
    check.set_defaults(func=_cmd_check_config)

    status = sub.add_parser("status", help="the running daemon's state: link, backlog, devices, open alarms")
    status.add_argument("--config", required=True, type=Path)
    status.add_argument("--json", action="store_true", help="print JSON (the daemon's status and the outbox)")
    status.add_argument("--watch", action="store_true", help="one line a second until the backlog has drained")
    status.add_argument("--timeout", type=float, default=3600.0, help="stop watching after this many seconds")
    status.set_defaults(func=_cmd_status)

    doctor = sub.add_parser(
        "doctor", help="check the station: config, storage, ports, Bluetooth, clock, TLS, broker, modem"
    )
    doctor.add_argument("--config", required=True, type=Path)
    doctor.set_defaults(func=_cmd_doctor)

    scan = sub.add_parser("scan", help="list Bluetooth devices in range and what the gateway decodes from them")
    scan.add_argument("--config", required=True, type=Path, help="station file ([ble] adapter, devices)")
    scan.add_argument("--seconds", type=float, default=10.0, help="how long to listen")
    scan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scan.set_defaults(func=_cmd_scan)

    schema = sub.add_parser("schema", help="print the JSON Schema of an event")
    schema.set_defaults(func=_cmd_schema)

    demo = sub.add_parser("demo", help="run a simulated station end to end (mosquitto, simulators, gateway)")
    demo.add_argument("--duration", type=float, default=8.0, help="seconds of traffic before and after the cut")
    demo.add_argument("--outage", type=float, default=6.0, help="seconds the uplink stays cut")
    demo.set_defaults(func=_cmd_demo)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
