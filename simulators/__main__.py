"""`python -m simulators button-receiver | radar | wearables | gps | modem | platform | flaky-link`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators", description="care-gateway device simulators")
    sub = parser.add_subparsers(dest="command", required=True)

    rx = sub.add_parser("button-receiver", help="a Sur-Gard receiver on a pty: SOS, restores, tests, heartbeats")
    rx.add_argument("--count", type=int, default=1000, help="reports to send (the scenario repeats)")
    rx.add_argument("--interval", type=float, default=2.0, help="seconds between reports")
    rx.add_argument("--format", choices=["surgard", "ademco685"], default="surgard", help="receiver output format")

    radar = sub.add_parser("radar", help="a Seeed mmWave radar on a pty, answering heartbeat queries")
    radar.add_argument("--model", choices=["mr60fda1", "mr60fda2", "mr24hpc1"], default="mr60fda1")
    radar.add_argument("--scenario", choices=["day", "fall", "silent", "garbage"], default="day")

    radio = sub.add_parser("wearables", help="a simulated Bluetooth radio: pendants, wristband, badge, health devices")
    radio.add_argument("--socket", default="/run/care-gateway/ble.sock", help="unix socket the gateway connects to")
    radio.add_argument("--scenario", choices=["day", "idle"], default="day")

    gps = sub.add_parser("gps", help="an NMEA GPS on a pty (RMC + GGA every second)")
    gps.add_argument("--scenario", choices=["still", "drive", "lose-fix"], default="drive")

    sink = sub.add_parser("platform", help="subscribe to a station's topics and record its events (JSON lines)")
    sink.add_argument("--host", default="127.0.0.1")
    sink.add_argument("--port", type=int, default=1883)
    sink.add_argument("--prefix", default="care/v1")
    sink.add_argument("--station", required=True, help="station id")
    sink.add_argument("--out", type=Path, default=Path("platform-events.jsonl"))
    sink.add_argument("--command-key", help="the station's command_key (64 hex digits): commands are signed with it")
    sink.add_argument(
        "--send", action="append", default=[], metavar="NAME=JSON", help='send a command first, e.g. ping={"id":"p1"}'
    )

    link = sub.add_parser(
        "flaky-link",
        help="a TCP proxy that cuts, black-holes, delays and throttles the uplink (commands on stdin)",
    )
    link.add_argument("--target", default="127.0.0.1:1883", help="broker HOST:PORT")
    link.add_argument("--listen", default="127.0.0.1:18830", help="HOST:PORT the gateway connects to")
    link.add_argument("--latency-ms", type=float, default=0.0)
    link.add_argument("--bandwidth", type=int, default=0, help="bytes per second per direction, 0 = unlimited")
    link.add_argument(
        "--schedule", default="", help='repeating steps "COMMAND:SECONDS,...", e.g. "up:20,blackhole:30,cut:10"'
    )

    modem = sub.add_parser("modem", help="a cellular modem on a pty: AT commands and SMS in PDU mode, decoded")
    modem.add_argument("--record", type=Path, default=None, help="append each received SMS here (JSON lines)")
    modem.add_argument("--fail", choices=["no-sim", "no-network", "slow"], default=None, help="misbehave")

    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        if args.command == "button-receiver":
            from simulators.button_receiver import play

            return 1 if asyncio.run(play(args.count, args.interval, args.format)) else 0
        if args.command == "radar":
            from simulators import radar as radar_sim

            asyncio.run(radar_sim.play(args.model, args.scenario))
            return 0
        if args.command == "wearables":
            from simulators import wearables

            asyncio.run(wearables.play(args.socket, args.scenario))
            return 0
        if args.command == "gps":
            from simulators import gps as gps_sim

            asyncio.run(gps_sim.play(args.scenario))
            return 0
        if args.command == "modem":
            from simulators import modem as modem_sim

            asyncio.run(modem_sim.run(args.record, args.fail))
            return 0
        if args.command == "flaky-link":
            return asyncio.run(_flaky_link(args))
        from simulators.platform import PlatformSink

        key = bytes.fromhex(args.command_key) if args.command_key else None
        platform = PlatformSink(args.host, args.port, args.station, args.prefix, args.out, key)
        print(f"recording events of station {args.station} from {args.host}:{args.port} into {args.out}")
        asyncio.run(_platform(platform, args.send))
    return 0


async def _platform(sink: Any, commands: list[str]) -> None:
    """Record forever; first send the commands given (signed if the sink has the key)."""
    import json

    task = asyncio.create_task(sink.run())
    await sink.subscribed.wait()
    for command in commands:
        name, _, body = command.partition("=")
        await sink.command(name, json.loads(body or "{}"))
        print(f"sent {name}: {body}")
    await task


async def _flaky_link(args: argparse.Namespace) -> int:
    from simulators.link import LinkProxy

    target_host, target_port = args.target.rsplit(":", 1)
    listen_host, listen_port = args.listen.rsplit(":", 1)
    async with LinkProxy(target_host, int(target_port), listen_host, int(listen_port)) as link:
        link.apply(f"latency {args.latency_ms}")
        print(link.apply(f"bandwidth {args.bandwidth}"), f"; listening on {listen_host}:{link.port}", flush=True)
        print("commands: up | cut | blackhole | latency MS | bandwidth BYTES_PER_S", flush=True)
        async with asyncio.TaskGroup() as tasks:
            if args.schedule:
                steps = [(step.split(":")[0], float(step.split(":")[1])) for step in args.schedule.split(",")]
                tasks.create_task(link.run_schedule(steps, repeat=True))
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                if line.strip():
                    print(link.apply(line.strip()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
