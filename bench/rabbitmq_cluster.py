"""The station against a 2-node RabbitMQ cluster (MQTT plugin), with its node killed mid-drain.

    sudo apt-get install rabbitmq-server      # once; not part of CI
    python bench/rabbitmq_cluster.py [--backlog 20000]

Starts two RabbitMQ nodes on this machine (rabbit1@localhost, rabbit2@localhost, each with the
MQTT plugin on its own port) and clusters them; the platform sink subscribes on node 2; the
gateway (a child process, with a Sur-Gard receiver simulator on a pty) has node 1 as `host` and
node 2 in `[uplink] failover`, and a telemetry backlog to drain. Mid-drain node 1 is killed
(SIGKILL) and an SOS is pressed. Prints one JSON object: what the platform received, lost (must
be 0) and received twice, which MQTT version the station ended up speaking (RabbitMQ before 3.13
refuses MQTT 5, so the station falls back to 3.1.1 and says so) and how long the failover took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.clock import Clock
from gateway.config import StorageSection
from gateway.events import EventKind, new_event
from gateway.outbox import Outbox
from simulators.broker import free_port
from simulators.button_receiver import ButtonReceiverSim, surgard_report
from simulators.harness import GatewayProcess, station_toml
from simulators.platform import PlatformSink

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
STATION = "rabbit-station"


class RabbitNode:
    def __init__(self, folder: Path, n: int) -> None:
        self.name = f"rabbit{n}@localhost"
        self.mqtt_port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {free_port()}\nmqtt.listeners.tcp.default = {self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\nloopback_users = none\n"
        )
        (folder / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(folder / "pid"),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.folder = folder

    def start(self) -> None:
        log = (self.folder / "server.out").open("ab")
        self.proc = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=self.folder,  # its crash dump lands there, not in the working tree
        )
        deadline = time.monotonic() + 120
        while True:  # await_startup fails at once until the Erlang node answers at all
            try:
                self.ctl("await_startup", timeout=60)
                return
            except subprocess.CalledProcessError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    output = (self.folder / "server.out").read_text()[-2000:]
                    raise SystemExit(f"{self.name} did not start: {output}") from None
                time.sleep(1)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return done.stdout

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def say(text: str) -> None:
    print(f"rabbitmq_cluster: {text}", file=sys.stderr, flush=True)


async def bench(backlog: int) -> dict[str, Any]:
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        raise SystemExit("rabbitmq-server is not installed: sudo apt-get install rabbitmq-server")
    folder = Path(tempfile.mkdtemp(prefix="care-rabbit-"))
    nodes = [RabbitNode(folder / f"n{n}", n) for n in (1, 2)]
    try:
        for node in nodes:
            node.start()
            say(f"{node.name} up, MQTT on {node.mqtt_port}")
        nodes[1].ctl("stop_app")
        nodes[1].ctl("join_cluster", nodes[0].name)
        nodes[1].ctl("start_app")
        version = nodes[0].ctl("version").strip()
        say(f"clustered (RabbitMQ {version})")
        receiver = ButtonReceiverSim()
        db_path = folder / "outbox.db"
        clock = Clock()
        seeded = [
            new_event(clock, STATION, "radar-1", EventKind.ACTIVITY, {"n": n, "motion": "moving"})
            for n in range(backlog)
        ]
        async with Outbox(StorageSection(path=db_path), STATION) as outbox:
            for start in range(0, backlog, 1000):
                await outbox.append(*seeded[start : start + 1000])
        config = folder / "station.toml"
        config.write_text(
            station_toml(
                station_id=STATION,
                broker_port=nodes[0].mqtt_port,
                db_path=db_path,
                receiver_ports={"button-rx-1": receiver.path},
                uplink_extra=f'failover = ["127.0.0.1:{nodes[1].mqtt_port}"]\nbyte_budget_per_s = 300000',
            )
        )
        sink = PlatformSink("127.0.0.1", nodes[1].mqtt_port, STATION)
        sink_task = asyncio.create_task(sink.run())
        await asyncio.wait_for(sink.subscribed.wait(), 30)
        say("platform sink subscribed on node 2")
        gateway = GatewayProcess(config)
        await gateway.start()
        try:
            started = time.monotonic()
            while len(sink.events) < backlog // 5:
                if time.monotonic() - started > 60:
                    raise SystemExit("the platform got too little from node 1:\n" + "\n".join(gateway.lines[-30:]))
                await asyncio.sleep(0.05)
            nodes[0].kill()
            say(f"node 1 killed after {len(sink.events)} events")
            killed = time.monotonic()
            press = await receiver.send(surgard_report(code=101, zone=1))
            await gateway.wait_for_line(f"connected to 127.0.0.1:{nodes[1].mqtt_port}", timeout=60)
            failover_s = time.monotonic() - killed
            wanted = {e.id for e in seeded}
            deadline = time.monotonic() + 120
            while not (wanted <= set(sink.events) and any(e["kind"] == "sos" for e in sink.events.values())):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            complete_s = time.monotonic() - killed
            tail = gateway.lines[-12:]
            protocol_lines = [line for line in gateway.lines if "MQTT 5" in line or "falling back" in line]
        finally:
            await gateway.stop()
            sink_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sink_task
            receiver.close()
        return {
            "rabbitmq": version,
            "backlog": backlog,
            "received": len(set(sink.events) & {e.id for e in seeded}),
            "lost": len({e.id for e in seeded} - set(sink.events)),
            "duplicates": sink.duplicates,
            "sos_acked": press.acked,
            "sos_delivered": any(e["kind"] == "sos" for e in sink.events.values()),
            "failover_s": round(failover_s, 1),
            "killed_to_complete_s": round(complete_s, 1),
            "clean_session_fallback": any("with a clean session" in line for line in gateway.lines),
            "protocol_log": protocol_lines[:2],
            "gateway_log_tail": [] if {e.id for e in seeded} <= set(sink.events) else tail,
        }
    finally:
        for node in nodes:
            node.kill()
        if os.environ.get("KEEP") is None:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=20000)
    args = parser.parse_args()
    result = asyncio.run(bench(args.backlog))
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    result["machine"] = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
