"""The station's status page on the local network: for a technician or a carer with a phone.

Off unless the station file has a `[status_page]` section. A deliberately small HTTP/1.1
server on asyncio (one request per connection, bounded request size and time, at most
MAX_CONNECTIONS at once, GET and HEAD only, the Host checked against DNS rebinding, a token for
any client not on this machine, security headers):
`/` is an HTML page that refreshes itself, `/status.json` the same data as JSON. It shows the
station, the link, the backlog, the open alarms, the devices and the residents with last-seen
and battery; it changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import ipaddress
import json
import logging
import socket
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import StatusPageSection
from gateway.i18n import N_, _, language

__all__ = [
    "MAX_CONNECTIONS",
    "StatusPage",
    "is_local",
    "render_page",
]

log = logging.getLogger("care_gateway.status_page")

REQUEST_LIMIT_BYTES = 8192  # a request line and headers; anything longer is refused
REQUEST_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32  # more at once are closed unread: a flood must not use up the daemon's files
SECURITY_HEADERS = (
    "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n"
)
REFRESH_S = 5  # the page reloads itself this often

StatusBody = Callable[[], Awaitable[dict[str, Any]]]

KIND_NAMES = {  # what a carer reads for each alarm kind
    "sos": N_("SOS emergency call"),
    "medical": N_("medical call"),
    "panic": N_("panic alarm"),
    "duress": N_("duress alarm"),
    "fire": N_("fire alarm"),
    "gas": N_("gas leak"),
    "carbon_monoxide": N_("carbon monoxide"),
    "fall": N_("fall"),
    "inactivity": N_("no activity for a long time"),
    "wearer_absent": N_("wearer not seen"),
    "vitals_alert": N_("vital signs out of range"),
}
STATE_NAMES = {  # a device's or an alarm's state
    "online": N_("online"),
    "offline": N_("offline"),
    "starting": N_("starting"),
    "seen": N_("seen"),
    "not seen": N_("not seen"),
    "up": N_("up"),
    "down": N_("down"),
    "raised": N_("raised, not yet at the platform"),
    "delivered": N_("delivered to the platform"),
    "acknowledged": N_("acknowledged by a carer"),
    "resolved": N_("resolved"),
}
STYLE = """
body{font-family:system-ui,sans-serif;margin:0;padding:12px;background:#f4f5f7;color:#222;font-size:16px}
h1{font-size:1.3em;margin:0 0 4px} h2{font-size:1.05em;margin:18px 0 6px}
section{background:#fff;border-radius:8px;padding:10px 12px;margin-bottom:10px}
table{width:100%;border-collapse:collapse;table-layout:fixed}
td,th{text-align:left;padding:4px 6px;border-bottom:1px solid #eee;overflow-wrap:anywhere;vertical-align:top}
.alarm{background:#fde2e1;border-left:6px solid #c62828} .ok{color:#2e7d32} .bad{color:#c62828;font-weight:bold}
.muted{color:#666;font-size:.9em}
"""


def _e(value: object) -> str:
    return html.escape("—" if value is None else str(value))


def _local(iso: object, zone: ZoneInfo) -> str:
    """'2026-11-23T21:48:13Z' -> '11-24 05:48:13' in the station's time zone (what carers read)."""
    if not isinstance(iso, str):
        return _e(iso)
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(zone)
    except ValueError:
        return _e(iso)
    return _e(f"{when:%m-%d %H:%M:%S}")


def _named(table: dict[str, str], value: object) -> str:
    return _e(_(table[value]) if isinstance(value, str) and value in table else value)


def render_page(status: dict[str, Any], zone: ZoneInfo) -> str:
    """The status as one HTML page, readable on a phone, in the station's language; times in
    the station's time zone."""
    link = status.get("link", {})
    link_class = "ok" if link.get("state") == "up" else "bad"
    backlog = status.get("backlog", {})
    alarms = status.get("alarms_open", [])
    residents = status.get("residents", {})
    devices = {**status.get("devices", {}), **status.get("ble_devices", {})}
    lang = "zh-CN" if language() == "zh_CN" else "en"
    oldest = status.get("oldest_unsent_s")
    parts = [
        f"<!doctype html><html lang='{lang}'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<meta http-equiv='refresh' content='{REFRESH_S}'>",
        f"<title>{_e(status.get('name'))} – care-gateway</title><style>{STYLE}</style></head><body>",
        f"<h1 id='station'>{_e(status.get('name'))}</h1>",
        f"<div class='muted'>{_e(status.get('station_id'))} · care-gateway {_e(status.get('version'))} · "
        f"{_local(status.get('ts'), zone)} ({zone.key})"
        f"{'' if status.get('clock_trusted') else ' · ' + _e(_('clock not synchronised'))}</div>",
        f"<section id='link'><h2>{_e(_('Link to the platform'))}</h2>",
        f"<div class='{link_class}'>"
        + _e(_("{state} since {since}")).format(
            state=_named(STATE_NAMES, link.get("state")), since=_local(link.get("since"), zone)
        )
        + "</div>",
        "<div>"
        + _e(_("waiting to be sent: {alarm} alarm · {status} status · {telemetry} telemetry")).format(
            alarm=_e(backlog.get("alarm", 0)),
            status=_e(backlog.get("status", 0)),
            telemetry=_e(backlog.get("telemetry", 0)),
        )
        + (_e(_(" · oldest {seconds} s")).format(seconds=_e(oldest)) if oldest else "")
        + "</div></section>",
        f"<section id='alarms' class='{'alarm' if alarms else ''}'><h2>"
        + _e(_("Open alarms ({count})")).format(count=len(alarms))
        + "</h2>",
    ]
    if alarms:
        parts.append(
            f"<table><tr><th>{_e(_('alarm'))}</th><th>{_e(_('resident'))}</th><th>{_e(_('device'))}</th>"
            f"<th>{_e(_('state'))}</th></tr>"
        )
        for alarm in alarms:
            who = residents.get(alarm.get("resident") or "", {}).get("name") or alarm.get("resident")
            parts.append(
                f"<tr><td>{_named(KIND_NAMES, alarm.get('kind'))}</td><td>{_e(who)}</td>"
                f"<td>{_e(alarm.get('device_id'))}</td><td>{_named(STATE_NAMES, alarm.get('state'))}"
                f"<div class='muted'>{_local(alarm.get('raised_at'), zone)}</div></td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append(f"<div class='ok'>{_e(_('none'))}</div>")
    parts.append(f"</section><section id='residents'><h2>{_e(_('Residents'))}</h2><table>")
    parts.append(f"<tr><th>{_e(_('name'))}</th><th>{_e(_('room'))}</th><th>{_e(_('last activity'))}</th></tr>")
    for rid, resident in residents.items():
        parts.append(
            f"<tr id='resident-{_e(rid)}'><td>{_e(resident.get('name'))}</td><td>{_e(resident.get('room'))}</td>"
            f"<td>{_local(resident.get('last_activity'), zone)}</td></tr>"
        )
    parts.append(f"</table></section><section id='devices'><h2>{_e(_('Devices'))}</h2><table>")
    parts.append(
        f"<tr><th>{_e(_('device'))}</th><th>{_e(_('state'))}</th><th>{_e(_('last seen'))}</th>"
        f"<th>{_e(_('battery'))}</th></tr>"
    )
    for device_id, device in devices.items():
        state = device.get("state") or ("seen" if device.get("last_seen") else "not seen")
        state_class = "bad" if state in ("offline", "not seen") else "ok"
        battery = f"{device['battery']} %" if device.get("battery") is not None else None
        parts.append(
            f"<tr id='device-{_e(device_id)}'><td>{_e(device_id)}<div class='muted'>{_e(device.get('kind'))}</div>"
            f"</td><td class='{state_class}'>{_named(STATE_NAMES, state)}</td>"
            f"<td>{_local(device.get('last_seen'), zone)}</td><td>{_e(battery)}</td></tr>"
        )
    parts.append("</table></section></body></html>")
    return "".join(parts)


class StatusPage:
    def __init__(
        self, section: StatusPageSection, status: StatusBody, zone: ZoneInfo, token: str | None = None
    ) -> None:
        self.section = section
        self.status = status
        self.zone = zone
        self.token = token  # asked of every client not on this machine (the secrets file's page_token)
        self.port: int | None = None  # the bound port (the configured one, or a free one for 0)
        self._open = 0
        self._names = {"localhost", socket.gethostname().lower(), f"{socket.gethostname().lower()}.local"}
        self._names |= {name.lower() for name in section.hosts}
        self.refused = 0  # connections closed unread (over MAX_CONNECTIONS)

    async def run(self) -> None:
        server = await asyncio.start_server(self._serve, self.section.bind, self.section.port)
        self.port = server.sockets[0].getsockname()[1]
        log.info(_("status page on http://%s:%d/"), self.section.bind, self.port)
        async with server:
            await server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            self.refused += 1
            if self.refused in (1, 10, 100, 1000) or self.refused % 10000 == 0:  # one line per burst
                log.warning(_("status page: %d connection(s) refused, over %d at once"), self.refused, MAX_CONNECTIONS)
            writer.close()
            return
        self._open += 1
        try:
            await self._serve_one(reader, writer)
        finally:
            self._open -= 1

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            head_only = head.startswith(b"HEAD ")
            peer = writer.get_extra_info("peername")
            status, content_type, body = await self._answer(head, peer[0] if peer else "")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            status, content_type, body = "400 Bad Request", "text/plain", b"bad request\n"
        except Exception:  # the page must never take the station down
            log.exception(_("status page: a request failed"))
            status, content_type, body = "500 Internal Server Error", "text/plain", b"error\n"
        with contextlib.suppress(ConnectionError, TimeoutError):
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                f"Cache-Control: no-store\r\n{SECURITY_HEADERS}Connection: close\r\n\r\n".encode()
                + (b"" if head_only else body)
            )
            async with asyncio.timeout(REQUEST_TIMEOUT_S):  # (a client that never reads is let go)
                await writer.drain()
        writer.close()

    def _host_ok(self, host: str) -> bool:
        """An IP address (a rebinding needs a name), localhost, this machine's name, or a
        configured one; any other name is a page on the web pointing its name at the station."""
        name = _host_name(host).lower()
        if not name:
            return True  # (no Host: an HTTP/1.0 client, not a browser on a rebinding page)
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name in self._names

    def _token_ok(self, query: str, headers: dict[str, str]) -> bool:
        assert self.token is not None
        given = urllib.parse.parse_qs(query).get("token", [""])[0]
        bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
        return any(
            hmac.compare_digest(candidate.encode(), self.token.encode()) for candidate in (given, bearer) if candidate
        )

    async def _answer(self, head: bytes, peer: str) -> tuple[str, str, bytes]:
        if len(head) > REQUEST_LIMIT_BYTES:
            return "431 Request Header Fields Too Large", "text/plain", b"too large\n"
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.split(" ", 1)[0]
        path, _, query = target.partition("?")
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if not self._host_ok(headers.get("host", "")):
            return "421 Misdirected Request", "text/plain", b"this station is not known by that name\n"
        if self.token is not None and not is_local(peer) and not self._token_ok(query, headers):
            return "401 Unauthorized", "text/plain", b"the page needs its token: http://<station>:<port>/?token=...\n"
        if path in ("/", "/index.html"):
            return "200 OK", "text/html; charset=utf-8", render_page(await self.status(), self.zone).encode()
        if path == "/status.json":
            return "200 OK", "application/json", json.dumps(await self.status(), ensure_ascii=False).encode()
        return "404 Not Found", "text/plain", b"not found\n"


def is_local(peer: str) -> bool:
    """A client on this machine (the technician's own browser, ssh -L)."""
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The Host header without its port (IPv6 literals in brackets kept whole)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
