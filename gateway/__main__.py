"""Command line: `care-gateway run | check-config | status | schema | demo`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sqlite3
import sys
from pathlib import Path

from gateway import __version__
from gateway.config import ConfigError, load_config

EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus=78 stops a crash loop on a bad file
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the outbox cannot be opened (disk, permissions)


def _setup_logging(level: str) -> None:
    under_journal = "JOURNAL_STREAM" in os.environ  # journald adds its own timestamps
    fmt = "%(levelname)s %(name)s: %(message)s" if under_journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


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
        print(f"{path}: ok (station {config.station.id}, {len(config.devices)} devices)")
    return worst


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import run_station
    from gateway.outbox import OutboxUnavailable

    _setup_logging(args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            logging.error("configuration: %s", line)
        return EXIT_CONFIG
    try:
        asyncio.run(run_station(config, Path(args.config)))
    except OutboxUnavailable as exc:
        logging.critical("%s", exc)
        return EXIT_UNAVAILABLE
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    """What is waiting in the outbox, read offline (works while the daemon runs)."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return EXIT_CONFIG
    path = config.storage.path
    if not path.exists():
        print(json.dumps({"outbox": str(path), "exists": False}))
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        rows = dict(conn.execute("SELECT priority, count(*) FROM outbox GROUP BY priority").fetchall())
        oldest = conn.execute("SELECT min(created_ms) FROM outbox").fetchone()[0]
    names = {0: "alarm", 1: "status", 2: "telemetry"}
    print(
        json.dumps(
            {
                "outbox": str(path),
                "waiting": {names[k]: rows.get(k, 0) for k in names},
                "oldest_created_ms": oldest,
            }
        )
    )
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from gateway import doctor

    return doctor.run(args.config)


def _cmd_scan(args: argparse.Namespace) -> int:
    """BLE devices in range and what the gateway can decode from them, to help fill the config."""
    from gateway.ble_link import scan
    from gateway.config import BLE_KINDS

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return EXIT_CONFIG
    known = [d for d in config.devices if isinstance(d, BLE_KINDS)]
    found = asyncio.run(scan(config.ble, known, args.seconds))
    if args.json:
        print(json.dumps([{**vars(d), "decoded": sorted(d.decoded)} for d in found], indent=2))
        return 0
    for d in found:
        where = f"configured as {d.configured_as}" if d.configured_as else "not in the station file"
        print(f"{d.address}  {d.rssi:>4} dBm  {d.adverts:>4} adverts  {d.name or '-':<16} {where}")
        for item in sorted(d.decoded):
            print(f"    {item}")
    missing = {d.id for d in known} - {d.configured_as for d in found}
    print(f"{len(found)} device(s) heard in {args.seconds:.0f} s on {config.ble.adapter}")
    if missing:
        print(f"configured but not heard: {', '.join(sorted(missing))}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from gateway.events import event_json_schema

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

    status = sub.add_parser("status", help="print what waits in the outbox (JSON)")
    status.add_argument("--config", required=True, type=Path)
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
