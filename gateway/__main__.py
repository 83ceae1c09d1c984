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
from zoneinfo import ZoneInfo

from gateway import __version__
from gateway.config import BleSection, ConfigError, StationConfig, load_config, printable, status_files
from gateway.events import Priority, counts_said
from gateway.i18n import _
from gateway.status import process_started

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
    from gateway.care import coverage_warnings
    from gateway.station_files import file_problems

    worst = 0
    for path in args.files:
        try:
            config = load_config(path)
        except ConfigError as exc:
            for line in exc.problems:
                print(line, file=sys.stderr)
            worst = 1
            continue
        unopenable = [] if args.skip_files else file_problems(path, config)
        for line in unopenable:
            print(line, file=sys.stderr)
        if unopenable:
            worst = 1
        else:
            checked = (
                _("not checked: the files and ports it names")
                if args.skip_files
                else _("the files and ports it names can be opened")
            )
            print(
                _("{file}: ok (station {station}, {devices} devices; {checked})").format(
                    file=path, station=config.station.id, devices=len(config.devices), checked=checked
                )
            )
        for warning in coverage_warnings(config):  # valid, but a care rule cannot do its job
            print(_("{file}: warning: {warning}").format(file=path, warning=warning))
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
            logging.error(_("configuration: %s"), line)
        return EXIT_CONFIG
    try:
        asyncio.run(run_station(config, Path(args.config), radio_for))
    except OutboxUnavailable as exc:
        logging.critical(_("%s"), exc)
        return EXIT_UNAVAILABLE
    except StationFailed as exc:
        logging.critical(_("%s; exiting for systemd to start the service afresh"), exc)
        return EXIT_SOFTWARE
    return 0


UTC_ZONE = ZoneInfo("UTC")
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
    if not _alive(body.get("pid"), body.get("pid_started")):
        return None  # (checked first: a killed daemon's file is still fresh for a few seconds)
    if time.time() - float(body.get("written_at", 0)) >= STATUS_FRESH_S:
        return None
    return body


def _alive(pid: object, started: object) -> bool:
    """Whether the process that wrote the status file still runs: the same pid started at the
    same time (a pid reused since is another process), read from /proc whoever asks."""
    if not isinstance(pid, int) or pid <= 0:
        return True  # (a file without a pid: only its age tells)
    now = process_started(pid)
    if now is None:
        return False
    return not isinstance(started, int) or started == now


def _ago(iso: str | None) -> str:
    if not iso:
        return _("never")
    seconds = time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    if seconds < 120:
        return _("{seconds} s ago").format(seconds=f"{seconds:.0f}")
    return _("{minutes} min ago").format(minutes=f"{seconds / 60:.0f}")


def local_time(iso: object, zone: ZoneInfo) -> str:
    """'2026-11-23T21:48:13Z' -> '2026-11-24 05:48:13' in the station's time zone, as the status
    page and the SMS write it (anything else is shown as it came)."""
    if not isinstance(iso, str):
        return _("never") if iso is None else printable(str(iso))
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(zone)
    except ValueError:
        return printable(iso)
    return f"{when:%Y-%m-%d %H:%M:%S}"


def _counts(counts: dict[str, Any]) -> str:
    return counts_said({Priority(name): n for name, n in counts.items() if name in set(Priority)})


def render_status(live: dict[str, Any] | None, waiting: dict[str, Any], zone: ZoneInfo = UTC_ZONE) -> str:
    """The daemon's state as a technician reads it; times in the station's time zone."""
    lines = []
    if live is None:
        lines.append(_("the daemon is not running (no fresh status.json)"))
        lines.append(_("outbox: {counts} waiting").format(counts=_counts(waiting.get("waiting", {}))))
        return "\n".join(lines)
    clock = _("synchronised") if live.get("clock_trusted") else _("NOT synchronised")
    lines.append(
        _("station {station} ({name}): care-gateway {version}, up {uptime} s, clock {clock}").format(
            station=live["station_id"], name=live["name"], version=live["version"], uptime=live["uptime_s"], clock=clock
        )
    )
    link = live.get("link", {})
    lines.append(
        _("link: {state} since {since} ({zone}; {connects} connects)").format(
            state=link.get("state"),
            since=local_time(link.get("since"), zone),
            zone=zone.key,
            connects=link.get("connects_since_start"),
        )
    )
    for change in link.get("history", [])[-3:]:
        lines.append(f"    {local_time(change['at'], zone)} {change['state']}: {change['reason']}")
    backlog = live.get("backlog", {})
    drain = live.get("estimated_drain_s")
    line = _("backlog: {counts}").format(counts=_counts(backlog))
    if live.get("oldest_unsent_s"):
        line += _("; oldest {seconds} s").format(seconds=f"{live['oldest_unsent_s']:.0f}")
    if drain:
        line += _("; drains in about {seconds} s").format(seconds=f"{drain:.0f}")
    lines.append(line)
    for device_id, device in {**live.get("devices", {}), **live.get("ble_devices", {})}.items():
        battery = device.get("battery")
        lines.append(
            _("device {device} ({kind}) {state} last seen {ago}").format(
                device=device_id, kind=device["kind"], state=device.get("state", ""), ago=_ago(device.get("last_seen"))
            )
            + (_(", battery {percent} %").format(percent=battery) if battery is not None else "")
        )
    for alarm in live.get("alarms_open", []):
        text = (
            _("OPEN ALARM {kind} of {resident} from {device}: {state} ({alarm})")
            if alarm.get("resident")
            else _("OPEN ALARM {kind} from {device}: {state} ({alarm})")
        )
        lines.append(
            text.format(
                kind=alarm["kind"],
                resident=alarm.get("resident"),
                device=alarm["device_id"],
                state=alarm["state"],
                alarm=alarm["alarm_id"],
            )
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
        zone = ZoneInfo(config.care.timezone)
        print(render_status(_live_status(status_file), _outbox_waiting(config.storage.path), zone))
        return 0
    return _watch(status_file, args.timeout)


def _watch(status_file: Path, timeout: float) -> int:
    """One line a second while the backlog drains: how many wait, how fast they go, when done."""
    deadline = time.monotonic() + timeout
    previous: tuple[float, int] | None = None
    while time.monotonic() < deadline:
        live = _live_status(status_file)
        if live is None:
            print(_("the daemon is not running"), flush=True)
            return 1
        total = sum(live.get("backlog", {}).values())
        now = time.monotonic()
        if total == 0:
            print(_("backlog drained: nothing waits"), flush=True)
            return 0
        rate = (previous[1] - total) / (now - previous[0]) if previous and now > previous[0] else 0.0
        left = _(", about {seconds} s left").format(seconds=f"{total / rate:.0f}") if rate > 0 else ""
        print(
            _("backlog {total} events, link {state}, {rate} events/s").format(
                total=total, state=live.get("link", {}).get("state"), rate=f"{rate:.0f}"
            )
            + left,
            flush=True,
        )
        previous = (now, total)
        time.sleep(1.0)
    print(_("still draining; stopped watching"), flush=True)
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
        where = (
            _("configured as {device}").format(device=d.configured_as)
            if d.configured_as
            else _("not in the station file")
        )
        name = printable(d.name or "-")  # (any radio nearby chooses its name: no escapes, no fake lines)
        print(
            _("{address}  {rssi} dBm  {adverts} adverts  {name} {where}").format(
                address=d.address,
                rssi=f"{d.rssi:>4}",
                adverts=f"{d.adverts:>4}",
                name=f"{name:<16}",
                where=printable(where),
            )
        )
        for item in sorted(d.decoded):
            print(f"    {item}")
    missing = {d.id for d in known} - {d.configured_as for d in found}
    print(
        _("{count} device(s) heard in {seconds} s on {adapter}").format(
            count=len(found), seconds=f"{args.seconds:.0f}", adapter=config.ble.adapter
        )
    )
    if missing:
        print(_("configured but not heard: {devices}").format(devices=", ".join(sorted(missing))))
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
    check.add_argument(
        "--skip-files",
        action="store_true",
        help="do not check the files and ports the station names (a station file checked on a laptop)",
    )
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
