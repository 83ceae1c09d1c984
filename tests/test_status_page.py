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


async def http(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
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
        tmp_path,
        broker,
        receiver_extra='residents = { "3" = "wang" }',
        extra_devices=RESIDENT + page,
        station_extra='language = "zh_CN"',  # the page and the journal speak the station's language
    ) as station:
        assert await station.gateway.wait_for_line(f"状态页地址 http://127.0.0.1:{port}/")
        assert (await station.receiver.send(surgard_report(code=101, zone=3))).acked
        assert await wait_until(lambda: len(events_of(station, "sos")) == 1)

        dom = await chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{port}/")
        assert '<h1 id="station">Simulated care station</h1>' in dom, dom
        assert '<html lang="zh-CN">' in dom
        assert "未处理报警（1）" in dom
        assert "紧急求助 SOS</td><td>王秀英</td><td>button-rx-1</td><td>已送达平台" in dom
        assert '<tr id="resident-wang"><td>王秀英</td><td>3号楼201室</td>' in dom
        assert '<td class="ok">在线</td>' in dom  # the receiver
        assert " 起已连接</div>" in dom
        assert "(Asia/Shanghai)" in dom  # times are shown in the station's time zone

        shot = tmp_path / "phone.png"
        await chromium(tmp_path, "--window-size=390,844", f"--screenshot={shot}", f"http://127.0.0.1:{port}/")
        width, height = struct.unpack(">II", shot.read_bytes()[16:24])  # PNG IHDR
        assert (width, height) == (390, 844)

        here = f"Host: 127.0.0.1:{port}\r\n".encode()
        as_json = json.loads(
            (await http(port, b"GET /status.json HTTP/1.1\r\n" + here + b"\r\n")).split(b"\r\n\r\n")[1]
        )
        assert as_json["station_id"] == "test-station"
        assert as_json["alarms_open"][0]["resident"] == "wang"
        head, _, body = (await http(port, b"HEAD / HTTP/1.1\r\n" + here + b"\r\n")).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert body == b""
        for header in (b"Content-Security-Policy: default-src 'none'", b"X-Content-Type-Options: nosniff",
                       b"X-Frame-Options: DENY", b"Referrer-Policy: no-referrer"):  # fmt: skip
            assert header in head
        rebinding = b"GET /status.json HTTP/1.1\r\nHost: evil.example:8080\r\n\r\n"  # a web page's name for us
        assert (await http(port, rebinding)).startswith(b"HTTP/1.1 421")
        for request, expected in (
            (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 405"),
            (b"GET /etc/passwd HTTP/1.1\r\n\r\n", b"HTTP/1.1 404"),
            (b"\x00\xff garbage\r\n\r\n", b"HTTP/1.1 405"),
            (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"HTTP/1.1 400"),
        ):
            assert (await http(port, request)).startswith(expected), request[:40]
        assert station.gateway.proc is not None
        assert station.gateway.proc.returncode is None  # still serving


def lan_address() -> str | None:
    """An address of this machine other than loopback, to reach the page as the LAN does."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # (no packet is sent: this only picks the route)
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_on_the_lan_the_page_needs_its_token_and_a_flood_does_not_reach_the_alarm_path(
    tmp_path: Path, broker: Mosquitto
) -> None:
    import os
    import resource

    lan = lan_address()
    assert lan is not None, "this test needs a network interface besides loopback"
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('page_token = "0123456789abcdef0123"\n')
    os.chmod(secrets, 0o640)
    port = free_port()
    page = f'\n[status_page]\nbind = "0.0.0.0"\nport = {port}\n'
    async with running_station(
        tmp_path, broker, uplink_extra=f'secrets_file = "{secrets}"', extra_devices=RESIDENT + page
    ) as station:
        assert await station.gateway.wait_for_line(f"status page on http://0.0.0.0:{port}/")
        host = f"Host: {lan}:{port}\r\n".encode()
        assert (await http(port, b"GET / HTTP/1.1\r\n" + host + b"\r\n", lan)).startswith(b"HTTP/1.1 401")
        with_token = b"GET /status.json?token=0123456789abcdef0123 HTTP/1.1\r\n" + host + b"\r\n"
        assert (await http(port, with_token, lan)).startswith(b"HTTP/1.1 200")
        wrong = b"GET /?token=0123456789abcdef0124 HTTP/1.1\r\n" + host + b"\r\n"
        assert (await http(port, wrong, lan)).startswith(b"HTTP/1.1 401")
        here = f"Host: 127.0.0.1:{port}\r\n".encode()
        assert (await http(port, b"GET / HTTP/1.1\r\n" + here + b"\r\n")).startswith(b"HTTP/1.1 200")  # local

        # the same in a real browser: a phone on the station's Wi-Fi, and a web page that rebinds its
        # own name to the station's address (Chromium resolves evil.example to the station)
        refused = await chromium(tmp_path, "--dump-dom", f"http://{lan}:{port}/")
        assert "the page needs its token" in refused, refused
        assert "王秀英" not in refused
        forged = await chromium(tmp_path, "--dump-dom", f"http://{lan}:{port}/?token=0123456789abcdef0124")
        assert "the page needs its token" in forged, forged
        assert "王秀英" not in forged
        rebound = await chromium(
            tmp_path, f"--host-resolver-rules=MAP evil.example {lan}", "--dump-dom",
            f"http://evil.example:{port}/?token=0123456789abcdef0123",
        )  # fmt: skip
        assert "not known by that name" in rebound, rebound
        assert "王秀英" not in rebound
        allowed = await chromium(tmp_path, "--dump-dom", f"http://{lan}:{port}/?token=0123456789abcdef0123")
        assert '<tr id="resident-wang"><td>王秀英</td>' in allowed, allowed

        # 1,100 connections that never send a request (the daemon's file limit is 1,024 without the unit's)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        slow = [await asyncio.open_connection(lan, port) for _ in range(1100)]
        try:
            assert (await station.receiver.send(surgard_report(code=101, zone=5))).acked  # the alarm path
            assert await wait_until(lambda: any(e["data"].get("zone") == 5 for e in events_of(station, "sos")))
            status_file = station.db_path.parent / "status.json"
            before = json.loads(status_file.read_text())["written_at"]
            assert await wait_until(lambda: json.loads(status_file.read_text())["written_at"] > before + 1)
        finally:
            for _, writer in slow:
                writer.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert await station.gateway.wait_for_line("status page: 1000 connection(s) refused")
        assert sum("status page:" in line for line in station.gateway.lines) < 10  # one line per burst
