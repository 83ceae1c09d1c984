"""The LAN status page, rendered by a real headless Chromium."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
from pathlib import Path

from simulators.broker import Mosquitto, free_port
from simulators.button_receiver import surgard_report
from tests.conftest import events_of, running_station, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RESIDENT = """
[[residents]]
id = "wang"
name = "王秀英"
room = "3号楼201室"
"""


async def chromium(tmp_path: Path, *args: str) -> str:
    assert CHROMIUM is not None, "this test needs Chromium: bash .ci/setup installs it (apt-get install chromium)"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode()


async def http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_the_page_in_a_headless_browser_shows_alarms_devices_and_residents(
    tmp_path: Path, broker: Mosquitto
) -> None:
    port = free_port()
    page = f'\n[status_page]\nbind = "127.0.0.1"\nport = {port}\n'
    async with running_station(
        tmp_path, broker, receiver_extra='residents = { "3" = "wang" }', extra_devices=RESIDENT + page
    ) as station:
        assert await station.gateway.wait_for_line(f"status page on http://127.0.0.1:{port}/")
        assert (await station.receiver.send(surgard_report(code=101, zone=3))).acked
        assert await wait_until(lambda: len(events_of(station, "sos")) == 1)

        dom = await chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{port}/")
        assert '<h1 id="station">Simulated care station</h1>' in dom, dom
        assert "未处理报警 Open alarms (1)" in dom
        assert "紧急求助 SOS</td><td>王秀英</td><td>button-rx-1</td><td>delivered" in dom
        assert '<tr id="resident-wang"><td>王秀英</td><td>3号楼201室</td>' in dom
        assert '<td class="ok">online</td>' in dom  # the receiver
        assert "up since" in dom
        assert "(Asia/Shanghai)" in dom  # times are shown in the station's time zone

        shot = tmp_path / "phone.png"
        await chromium(tmp_path, "--window-size=390,844", f"--screenshot={shot}", f"http://127.0.0.1:{port}/")
        width, height = struct.unpack(">II", shot.read_bytes()[16:24])  # PNG IHDR
        assert (width, height) == (390, 844)

        as_json = json.loads((await http(port, b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n")).split(b"\r\n\r\n")[1])
        assert as_json["station_id"] == "test-station"
        assert as_json["alarms_open"][0]["resident"] == "wang"
        for request, expected in (
            (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 405"),
            (b"GET /etc/passwd HTTP/1.1\r\n\r\n", b"HTTP/1.1 404"),
            (b"\x00\xff garbage\r\n\r\n", b"HTTP/1.1 405"),
            (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"HTTP/1.1 400"),
        ):
            assert (await http(port, request)).startswith(expected), request[:40]
        assert station.gateway.proc is not None
        assert station.gateway.proc.returncode is None  # still serving
