"""`python -m simulators button-receiver | platform`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators", description="care-gateway device simulators")
    sub = parser.add_subparsers(dest="command", required=True)

    rx = sub.add_parser("button-receiver", help="a Sur-Gard receiver on a pty: SOS, restores, tests, heartbeats")
    rx.add_argument("--count", type=int, default=1000, help="reports to send (the scenario repeats)")
    rx.add_argument("--interval", type=float, default=2.0, help="seconds between reports")

    sink = sub.add_parser("platform", help="subscribe to a station's topics and record its events (JSON lines)")
    sink.add_argument("--host", default="127.0.0.1")
    sink.add_argument("--port", type=int, default=1883)
    sink.add_argument("--prefix", default="care/v1")
    sink.add_argument("--station", required=True, help="station id")
    sink.add_argument("--out", type=Path, default=Path("platform-events.jsonl"))

    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        if args.command == "button-receiver":
            from simulators.button_receiver import play

            return 1 if asyncio.run(play(args.count, args.interval)) else 0
        from simulators.platform import PlatformSink

        print(f"recording events of station {args.station} from {args.host}:{args.port} into {args.out}")
        asyncio.run(PlatformSink(args.host, args.port, args.station, args.prefix, args.out).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
