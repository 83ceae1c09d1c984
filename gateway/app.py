"""The station: one TaskGroup that owns the outbox, the uplink and every device link.

Every event goes through `accept()`, which commits it to the outbox before returning; the
serial shell writes a device's ACK only after `accept()` has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from gateway import __version__
from gateway.care import CareBook, coverage_warnings
from gateway.care_state import StateRows
from gateway.clock import Clock, utc_text
from gateway.commands import (
    SIGNATURE_WINDOW_S,
    AckCommand,
    CommandAuth,
    CommandRefused,
    CommandTable,
    Handler,
    PingCommand,
    ResolveCommand,
    StatusCommand,
    TimeCommand,
)
from gateway.config import (
    BLE_KINDS,
    SERIAL_KINDS,
    BleSection,
    ConfigError,
    StationConfig,
    load_config,
    read_secrets,
    status_file_to_write,
)
from gateway.errors import GatewayError
from gateway.escalation import Escalator
from gateway.events import PRIORITY_OF_KIND, Event, EventKind, Priority, check_data, counts_said, new_event
from gateway.i18n import _
from gateway.outbox import Outbox, OutboxFull, WriterStopped
from gateway.rules import EventDraft, StationLocation, rules_for
from gateway.serial_link import SerialLink, codec_for
from gateway.status import StationPart, own_start
from gateway.status_page import StatusPage
from gateway.uplink import Uplink

if TYPE_CHECKING:
    from gateway.ble_link import BleLink, Radio

__all__ = [
    "CLOCK_CHECK_S",
    "TASK_RESTART_DELAY_S",
    "Station",
    "StationFailed",
    "keep_running",
    "run_station",
    "sd_notify",
    "watchdog_interval_s",
]

log = logging.getLogger("care_gateway")

BACKLOG_LOG_INTERVAL_S = 30.0  # how often a non-empty backlog is logged
SUPERVISE_TICK_S = 1.0  # how often the supervisor looks at the writer (and feeds the watchdog at most)
CARE_TICK_S = 1.0  # how often the care rules look at the time
CLOCK_CHECK_S = 1.0  # how often the wall clock is compared with the monotonic clock
CLOCK_JUMP_S = 2.0  # a change of wall minus monotonic this large between checks is a jump
STATUS_FILE_INTERVAL_S = 1.0
# fields with a person's name or home (PIPL: the minimum necessary leaves the station); the
# resident's id, the contact's role and the device's id say who, for a platform that knows them
PERSONAL_FIELDS = frozenset({"wearer", "caregiver", "to_name", "last_place"})
NONCES_KEPT = 1000  # signed commands' nonces remembered (within twice the signature window)
STATUS_COMMAND_INTERVAL_S = 10.0  # `status` commands carried out at most this often
UNREAD_CARE_ROWS_LOGGED = 10  # care-state rows that do not read: the first ones named in the journal
TASK_RESTART_DELAY_S = 5.0  # a task that failed unexpectedly is restarted after this pause
UNSTORED_LOG_INTERVAL_S = 60.0  # the station's own events that cannot be stored: logged at most this often


class StationFailed(GatewayError):
    """Something the station cannot run without has failed for good (the outbox writer): the
    daemon exits non-zero and systemd starts it afresh."""


async def keep_running(name: str, work: Callable[[], Awaitable[None]]) -> None:
    """Run `work` forever: an unexpected failure of one device or of the uplink is logged and
    that task restarted, while every other task keeps running (no crash loop of the daemon)."""
    while True:
        try:
            await work()
            return
        except (StationFailed, WriterStopped):
            raise
        except Exception:
            log.exception(_("%s failed unexpectedly; restarting it in %.0f s"), name, TASK_RESTART_DELAY_S)
            await asyncio.sleep(TASK_RESTART_DELAY_S)


def sd_notify(*lines: str) -> bool:
    """Tell systemd (Type=notify) about readiness, status and liveness; no-op elsewhere."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(addr)
        sock.sendall("\n".join(lines).encode())
    return True


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec when systemd asked this process for pings, else None."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


class Station:
    def __init__(
        self, config: StationConfig, clock: Clock | None = None, radio: Radio | None = None, reloaded: bool = False
    ) -> None:
        self.config = config
        self.reloaded = reloaded  # started again by a SIGHUP reload: the daemon runs on
        self.radio = radio  # the BLE radio (the CLI injects the demo's simulated one; None: BlueZ)
        self.clock = clock or Clock(config.station.trust_clock)
        self._unstored = 0  # the station's own commits that failed since the last log line about them
        self._unstored_logged_at = -math.inf
        self._status_requested_at = -math.inf
        self._run_started_steady = self.clock.steady().timestamp()
        self.links: list[SerialLink] = []
        self._outbox: Outbox | None = None
        self._uplink: Uplink | None = None
        self.location = StationLocation(config.station.location)
        self.ble: BleLink | None = None
        self.care = CareBook(config, self.make_event)
        self.escalator: Escalator | None = None
        self.status_page: StatusPage | None = None
        self._started_ticks = own_start()
        self._stopping = False

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("station not running")
        return self._outbox

    async def accept(self, event: Event) -> None:
        """Commit one of the station's own events (see record)."""
        await self.record([event])

    async def commit(self, events: list[Event]) -> None:
        """Commit events together with what the care rules must remember (one transaction).
        Raises OutboxFull when the disk cannot take them (the care state is kept for the next commit)."""
        changes = self.care.take_changes()
        if events or changes:
            try:
                await self.outbox.append(*events, state=changes)
            except OutboxFull:
                self.care.give_back(changes)
                raise
        for event in events:
            self._log_alarm(event)

    async def record(self, events: list[Event]) -> None:
        """Commit the station's own events (start, faults, clock, care timers, SMS records): a
        full disk is logged, never fatal; a device's readings use commit, and are then not
        acknowledged to the device."""
        try:
            await self.commit(events)
        except OutboxFull as exc:
            self._not_stored(events, exc)

    def _not_stored(self, events: list[Event], exc: OutboxFull) -> None:
        """Log what of the station's own could not be stored: at once, then once a minute."""
        self._unstored += 1
        now = time.monotonic()
        if now - self._unstored_logged_at >= UNSTORED_LOG_INTERVAL_S:
            kinds = ", ".join(sorted({e.kind.value for e in events})) or "care state"
            log.error(
                _("the station's own %s could not be stored (%d time(s) since the last report): %s"),
                kinds,
                self._unstored,
                exc,
            )
            self._unstored_logged_at, self._unstored = now, 0

    def _log_alarm(self, event: Event) -> None:
        if event.priority is Priority.ALARM:
            details = ", ".join(f"{k} {v}" for k, v in event.data.items() if k not in ("protocol", "code_name"))
            log.warning(
                _("ALARM accepted: %s from %s (%s; id %s)"), event.kind.value, event.device_id, details, event.id
            )

    def make_event(self, device_id: str, kind: EventKind, data: dict[str, Any] | None = None) -> Event:
        """An event of this station; every alarm carries where the station is. Names stay on
        the station unless the platform may have them (`[uplink] share_personal_data`)."""
        if data and not self.config.uplink.share_personal_data and not PERSONAL_FIELDS.isdisjoint(data):
            data = {k: v for k, v in data.items() if k not in PERSONAL_FIELDS}
        if PRIORITY_OF_KIND[kind] is Priority.ALARM and "location" not in (data or {}):
            location = self.location.for_alarm(self.clock.monotonic())
            if location is not None:
                data = {**(data or {}), "location": location}
        return new_event(self.clock, self.config.station.id, device_id, kind, data)

    async def on_events(self, device_id: str, drafts: list[EventDraft]) -> None:
        """Pass what a device's rules made of its readings through the care rules, and commit
        the result (one commit for all; a press folded into an open alarm commits its count)."""
        checkpoint = self.care.checkpoint()
        try:
            events = self.care.triage(device_id, drafts, self.clock.steady())
        except Exception:  # a bug in a care rule must not cost the report itself
            log.exception(
                _("care rules failed on %d event(s) from %s; storing them as they came"), len(drafts), device_id
            )
            self.care.rollback(checkpoint)  # whatever the failed rule half-did is not kept
            events = [self.make_event(device_id, draft.kind, draft.data) for draft in drafts]
        try:
            await self.commit(events)
        except OutboxFull:  # not stored: the book forgets the triage, the device's resend is new again
            self.care.rollback(checkpoint)
            raise

    async def _report_unread_care_state(self, unread: list[str]) -> None:
        """Rows of the care state that did not read as their type (left out: an alarm among
        them is no longer followed up here, so the platform is told)."""
        for line in unread[:UNREAD_CARE_ROWS_LOGGED]:
            log.error(_("care state in the outbox: %s"), line)
        if len(unread) > UNREAD_CARE_ROWS_LOGGED:
            log.error(_("care state in the outbox: %d more row(s) left out"), len(unread) - UNREAD_CARE_ROWS_LOGGED)
        fault = {"fault": "care_state_unreadable", "rows": len(unread), "detail": unread[:UNREAD_CARE_ROWS_LOGGED]}
        await self.accept(self.make_event("gateway", EventKind.STORAGE_FAULT, fault))

    async def on_device_state(self, device_id: str, online: bool, reason: str) -> None:
        kind = EventKind.DEVICE_ONLINE if online else EventKind.DEVICE_OFFLINE
        await self.on_events(device_id, [EventDraft(kind, {"reason": reason})])
        if self._uplink:
            self._uplink.request_status()

    def on_delivered(self, alarm_ids: list[str]) -> StateRows:
        """The broker has the alarms (PUBACK): the platform now has to acknowledge them. Returns
        the care state that says so, which the uplink writes with the rows' deletion."""
        now = self.clock.steady()
        for alarm_id in alarm_ids:
            self.care.alarm_book.delivered(alarm_id, now)
        return self.care.take_changes()

    def command_table(self, key: bytes | None = None) -> CommandTable:
        """Every downlink command and the station's handler for it (docs/mqtt.md); signed
        commands only, with the secrets file's command_key."""
        auth = CommandAuth(key, self, lambda: self.clock.now().timestamp(), self.clock.trusted) if key else None
        handlers: dict[str, Handler] = {
            "ping": self.on_ping,
            "status": self.on_status_request,
            "time": self.on_time,
            "ack": self.on_ack,
            "resolve": self.on_resolve,
        }
        return CommandTable(handlers, auth, time.monotonic)

    def nonce_seen(self, nonce: str) -> bool:
        return nonce in self.care.state.command_nonces

    async def remember_nonce(self, nonce: str, issued_at: float) -> None:
        """A signed command's nonce, committed before the command is carried out."""
        forget_before = self.clock.now().timestamp() - 2 * SIGNATURE_WINDOW_S
        self.care.state.note_nonce(nonce, issued_at, forget_before, NONCES_KEPT)
        await self.record([])

    async def on_ping(self, command: PingCommand) -> dict[str, Any]:
        now = self.clock.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"pong": True, "station_id": self.config.station.id, "ts": now}

    async def on_status_request(self, command: StatusCommand) -> dict[str, Any]:
        """Publish the status now, at most once per STATUS_COMMAND_INTERVAL_S (a burst of
        commands must not flood the narrow link with retained messages)."""
        now = time.monotonic()
        if now - self._status_requested_at < STATUS_COMMAND_INTERVAL_S:
            wait = STATUS_COMMAND_INTERVAL_S - (now - self._status_requested_at)
            return {"status": f"published less than {STATUS_COMMAND_INTERVAL_S:.0f} s ago; ask again in {wait:.0f} s"}
        self._status_requested_at = now
        if self._uplink:
            self._uplink.request_status()
        return {"status": "publishing"}

    async def on_time(self, command: TimeCommand) -> dict[str, Any]:
        newest = self.outbox.newest_ms
        latest = datetime.fromtimestamp(newest / 1000, UTC) if newest else None
        try:
            taken = self.care.state.platform_time_boot == self.clock.boot_id
            offset = self.clock.set_from_platform(command.utc, latest, taken_this_boot=taken)
        except (ValueError, OverflowError) as exc:
            raise CommandRefused(f"the platform's time is refused: {exc}") from None
        self.care.state.note_platform_time(self.clock.boot_id)  # survives a restart of the daemon
        await self.record([])
        log.warning(_("clock set from the platform's time: %+.1f s from the system clock"), offset)
        return {"offset_s": round(offset, 3), "clock": "trusted (platform time)"}

    async def on_ack(self, command: AckCommand) -> dict[str, Any]:
        try:
            state, events = self.care.alarm_book.acknowledge(
                command.alarm_id, command.by, self.clock.steady(), command.note
            )
        except KeyError:
            raise self._not_open(command.alarm_id) from None
        await self.record(events)  # (on a full disk the change is written with the next commit)
        return {"alarm_id": command.alarm_id, "state": state}

    async def on_resolve(self, command: ResolveCommand) -> dict[str, Any]:
        try:
            state, events = self.care.alarm_book.resolve(
                command.alarm_id, command.by, command.resolution, self.clock.steady(), command.note
            )
        except KeyError:
            raise self._not_open(command.alarm_id) from None
        await self.record(events)
        return {"alarm_id": command.alarm_id, "state": state}

    @staticmethod
    def _not_open(alarm_id: str) -> CommandRefused:
        return CommandRefused(f"alarm {alarm_id} is not open on this station (unknown, or resolved long ago)")

    def stopping(self) -> None:
        """The daemon stops: its status file goes at once, before the parts wind down, so that
        `care-gateway status` says so from the first instant (not once the file has gone stale)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            status_file_to_write(self.config, os.environ.get("RUNTIME_DIRECTORY")).unlink(missing_ok=True)

    def reloading(self) -> None:
        """This station stops for a reload: its uplink leaves without the offline goodbye."""
        if self._uplink is not None:
            self._uplink.say_goodbye = False

    async def _status_file_loop(self) -> None:
        """Keep status.json fresh; a stale file, or one whose pid is gone, tells `care-gateway
        status` the daemon is not running. A clean stop removes it."""
        try:
            while True:
                try:
                    await self.write_status_file()
                except OSError as exc:
                    log.warning(_("cannot write the status file for 'care-gateway status': %s"), exc)
                    await asyncio.sleep(60)
                await asyncio.sleep(STATUS_FILE_INTERVAL_S)
        finally:
            with contextlib.suppress(OSError):
                status_file_to_write(self.config, os.environ.get("RUNTIME_DIRECTORY")).unlink(missing_ok=True)

    async def _watch_clock(self) -> None:
        """Report the clock's first synchronisation in this run (re-basing the events this boot
        accepted before it) and every jump of the wall clock against the monotonic clock."""
        offset = self.clock.now().timestamp() - self.clock.monotonic()  # wall minus monotonic
        untrusted_offset = offset  # what this run's unsynchronised timestamps were based on
        trusted = self.clock.trusted()
        while True:
            await asyncio.sleep(CLOCK_CHECK_S)
            now_offset = self.clock.now().timestamp() - self.clock.monotonic()
            jump = now_offset - offset
            now_trusted = self.clock.trusted()
            if now_trusted and not trusted:
                rebased = await self.outbox.rebase(round(now_offset * 1000))
                correction = now_offset - untrusted_offset
                # the care clock takes the correction once, with every time this run recorded on it
                self.care.shift_times(correction, since=self._run_started_steady)
                self.clock.shift_steady(correction)
                self._run_started_steady += correction
                log.warning(
                    _(
                        "clock synchronised (%+.1f s from the time this run started with); %d waiting events "
                        "of this boot "
                        "re-based to the true time"
                    ),
                    correction,
                    rebased,
                )
                data = {"change": "synchronised", "boot_id": self.clock.boot_id, "correction_s": round(correction, 3)}
                await self.accept(self.make_event("gateway", EventKind.CLOCK, {**data, "rebased_events": rebased}))
            elif abs(jump) >= CLOCK_JUMP_S:
                log.warning(
                    _("the wall clock jumped %+.1f s (clock %s)"), jump, "trusted" if now_trusted else "untrusted"
                )
                data = {"change": "jump", "jump_s": round(jump, 3), "clock_trusted": now_trusted}
                await self.accept(self.make_event("gateway", EventKind.CLOCK, {**data, "boot_id": self.clock.boot_id}))
            offset, trusted = now_offset, now_trusted

    async def _care_tick(self) -> None:
        """Time-driven care rules: re-announcements, inactivity, absence, tests, faults."""
        while True:
            await asyncio.sleep(CARE_TICK_S)
            checkpoint = self.care.checkpoint()
            events = self.care.tick(self.clock.steady())
            try:
                await self.commit(events)
            except OutboxFull as exc:  # the tick is done again (its alarms raised again) once there is room
                self.care.rollback(checkpoint)
                self._not_stored(events, exc)

    def station_part(self) -> StationPart:
        """The station's part of the status (the uplink adds link, backlog and TLS)."""
        return StationPart(
            station_id=self.config.station.id,
            name=self.config.station.name,
            version=__version__,
            ts=utc_text(self.clock.now().timestamp()),
            clock_trusted=self.clock.trusted(),
            clock_source=self.clock.source,
            boot_id=self.clock.boot_id,
            uptime_s=round(time.monotonic() - self.clock.started_mono),  # (the daemon's: a reload keeps it)
            run_id=self.clock.run_id,
            devices={link.device.id: link.report() for link in self.links},
            residents=self.care.resident_reports(),
            alarms_open=self.care.alarm_reports(),
            storage_use=self._storage_use(),
            ble=dict(self.ble.stats) if self.ble else None,
            ble_devices=self.ble.device_reports() if self.ble else None,
            sms={"modem": self.escalator.modem_state, **self.escalator.stats} if self.escalator else None,
            off_contract=dict(check_data.breaches) or None,
        )

    def _storage_use(self) -> dict[str, int]:
        path = self.config.storage.path
        on_disk = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
        free = shutil.disk_usage(path.parent).free
        return {"outbox_file_bytes": on_disk, "disk_free_bytes": free}

    async def full_status(self) -> dict[str, Any]:
        """Station, link, backlog: for the status file and the status page."""
        assert self._uplink is not None
        return (await self._uplink.status()).to_json()

    async def write_status_file(self) -> None:
        """The status as JSON beside the outbox, for `care-gateway status` (atomic replace)."""
        if self._uplink is None or self._stopping:
            return
        body = await self.full_status()
        if self._stopping:  # (asked to stop while the status was gathered)
            return
        body["written_at"] = time.time()
        body["pid"] = os.getpid()
        body["pid_started"] = self._started_ticks
        target = status_file_to_write(self.config, os.environ.get("RUNTIME_DIRECTORY"))
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(body, ensure_ascii=False))
        os.replace(temporary, target)

    async def run(self) -> None:
        cfg = self.config
        async with Outbox(cfg.storage, cfg.station.id, self.clock.boot_id) as outbox:
            self._outbox = outbox
            unread = self.care.load(await outbox.load_state())
            backlog = await outbox.counts()
            log.info(
                _("station %s starting (care-gateway %s); outbox %s holds %d events waiting"),
                cfg.station.id,
                __version__,
                cfg.storage.path,
                sum(backlog.values()),
            )
            for warning in coverage_warnings(cfg):
                log.warning(_("station file: %s"), warning)
            started = {"version": __version__, "boot_id": self.clock.boot_id, "run_id": self.clock.run_id}
            kind = EventKind.CONFIG_RELOADED if self.reloaded else EventKind.GATEWAY_STARTED
            try:
                await self.accept(self.make_event("gateway", kind, started))
            except WriterStopped as exc:
                raise StationFailed(str(exc)) from exc
            if outbox.salvage:
                fault = {
                    "fault": "corrupt_database",
                    "detail": outbox.salvage.reason,
                    "moved_aside": str(outbox.salvage.moved_aside),
                    "salvaged_events": outbox.salvage.salvaged,
                    "rejected_rows": outbox.salvage.rejected,
                }
                await self.accept(self.make_event("gateway", EventKind.STORAGE_FAULT, fault))
            if unread:
                await self._report_unread_care_state(unread)
            secrets = read_secrets(cfg.uplink.secrets_file) if cfg.uplink.secrets_file else None  # (read once)
            key = secrets.command_key if secrets else None
            self._uplink = Uplink(cfg, outbox, self.station_part, self.on_delivered, self.command_table(key))
            if cfg.sms is not None:
                self.escalator = Escalator(cfg, self.care.alarm_book, self.clock, self.make_event, self.record)
            if cfg.status_page is not None:
                token = secrets.page_token if secrets else None
                zone = ZoneInfo(cfg.care.timezone)
                self.status_page = StatusPage(cfg.status_page, self.full_status, zone, token)
            self.links = [
                SerialLink(
                    device,
                    codec_for(device),
                    rules_for(device, self.location, self.clock.monotonic()),
                    self.on_events,
                    self.on_device_state,
                )
                for device in cfg.devices
                if isinstance(device, SERIAL_KINDS)
            ]
            ble_devices = [device for device in cfg.devices if isinstance(device, BLE_KINDS)]
            if ble_devices:  # (bleak and D-Bus are loaded only by a station with BLE devices)
                from gateway.ble_link import BLUEZ, BleLink

                self.ble = BleLink(
                    cfg.ble,
                    ble_devices,
                    {d.id: rules_for(d, self.location, self.clock.monotonic(), cfg.ble) for d in ble_devices},
                    self.on_events,
                    self.radio or BLUEZ,
                    self.care.state,
                )
            try:
                await self._run_tasks()
            except* (StationFailed, WriterStopped) as failed:
                raise StationFailed(str(failed.exceptions[0])) from None

    async def _run_tasks(self) -> None:
        """Every long-lived task of the station, in one TaskGroup."""
        cfg = self.config
        assert self._uplink is not None
        async with asyncio.TaskGroup() as tasks:
            if self.ble is not None:
                tasks.create_task(keep_running("the BLE scanner", self.ble.run), name="ble")
            tasks.create_task(keep_running("the uplink", self._uplink.run), name="uplink")
            for link in self.links:
                tasks.create_task(keep_running(f"device {link.device.id}", link.run), name=f"serial-{link.device.id}")
            tasks.create_task(keep_running("supervision", self._supervise), name="supervise")
            tasks.create_task(keep_running("the care rules", self._care_tick), name="care")
            tasks.create_task(keep_running("the clock watch", self._watch_clock), name="clock")
            tasks.create_task(keep_running("the status file", self._status_file_loop), name="status-file")
            if self.status_page is not None:
                tasks.create_task(keep_running("the status page", self.status_page.run), name="status-page")
            if self.escalator is not None:
                tasks.create_task(keep_running("SMS escalation", self.escalator.run), name="sms")
            sd_notify("READY=1", f"STATUS=station {cfg.station.id}: {len(self.links)} devices")

    async def _supervise(self) -> None:
        """Log the backlog while it is non-empty; feed the systemd watchdog while the event loop
        runs, the outbox can commit and the uplink makes progress (a hung writer or forwarding
        loop gets the service restarted); a dead outbox writer stops the daemon (non-zero)."""
        ping = watchdog_interval_s()
        tick = min(ping or SUPERVISE_TICK_S, SUPERVISE_TICK_S)
        last_log = time.monotonic()  # the uplink logs the backlog when it connects
        starving = False
        while True:
            now = time.monotonic()
            failure = self.outbox.writer_failure
            if failure is not None:
                raise StationFailed(f"the outbox writer stopped ({failure!r}); no event can be accepted") from failure
            while self.outbox.faults:  # found by the outbox (a row that cannot be sent ...): reported
                try:
                    await self.commit([self.make_event("gateway", EventKind.STORAGE_FAULT, self.outbox.faults[0])])
                except OutboxFull:
                    break  # (the disk is full) reported once there is room
                self.outbox.faults.pop(0)
            if ping:
                stuck = [
                    (what, seconds)
                    for what, seconds in (
                        ("the outbox writer", self.outbox.stalled_s(now)),
                        ("the uplink", self._uplink.stalled_s(now) if self._uplink else None),
                    )
                    if seconds is not None
                ]
                if not stuck:
                    sd_notify("WATCHDOG=1")
                    starving = False
                elif not starving:
                    starving = True
                    log.error(
                        _(
                            "%s has made no progress for %.0f s; no longer feeding the systemd watchdog, "
                            "which will restart the service"
                        ),
                        stuck[0][0],
                        stuck[0][1],
                    )
            if now - last_log >= BACKLOG_LOG_INTERVAL_S:
                last_log = now
                counts = await self.outbox.counts()
                total = sum(counts.values())
                uplink = "up" if self._uplink and self._uplink.connected else "down"
                sd_notify(f"STATUS=uplink {uplink}, {total} events waiting")
                if total:
                    oldest = (await self.outbox.snapshot()).oldest_created_ms
                    age = time.time() - oldest / 1000 if oldest else 0.0
                    log.info(
                        _("backlog: %d events waiting (%s), oldest %.0f s old; uplink %s"),
                        total,
                        counts_said(counts, skip_zero=True),
                        age,
                        uplink,
                    )
            await asyncio.sleep(tick)


async def run_station(
    config: StationConfig,
    config_path: Path | None = None,
    radio_for: Callable[[BleSection], Radio | None] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly (offline status, WAL checkpoint).

    SIGHUP re-reads `config_path`: a file with errors is refused (each error logged) and the
    running configuration stays; a good one replaces it (the station restarts in-process,
    the outbox and its backlog carry over).
    """
    loop = asyncio.get_running_loop()
    stop, reload = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, reload.set)
    clock = Clock(config.station.trust_clock)  # one for the daemon's run: a reload keeps the time it was given
    reloaded = False
    settle_heap()
    while True:
        clock.retrust(config.station.trust_clock)
        station = Station(config, clock, radio_for(config.ble) if radio_for else None, reloaded)
        running = asyncio.create_task(station.run(), name="station")
        while True:
            signals = [asyncio.create_task(stop.wait()), asyncio.create_task(reload.wait())]
            done, _pending = await asyncio.wait([running, *signals], return_when=asyncio.FIRST_COMPLETED)
            for waiter in signals:
                waiter.cancel()
            if running in done:
                running.result()  # raises what stopped the station (OutboxUnavailable ...)
                return
            if stop.is_set():
                sd_notify("STOPPING=1")
                station.stopping()
                await _cancel(running)
                log.info(_("station %s stopped"), config.station.id)
                return
            reload.clear()
            new = _reread(config_path)
            if new is not None:
                break
        sd_notify("RELOADING=1")
        log.info(_("configuration %s reloaded: restarting the station with it"), config_path)
        station.reloading()  # no "offline" status: the station is back within a second
        await _cancel(running)
        config, reloaded = new, True


def settle_heap() -> None:
    """Take what start-up made (every module, the configuration) out of the garbage collector's
    full passes (gc.freeze): they would otherwise walk those objects again and again while the
    daemon makes its events. About a tenth of the ingest time (docs/performance.md), and fewer
    long pauses on a Pi's CPU."""
    gc.collect()
    gc.freeze()


def _reread(path: Path | None) -> StationConfig | None:
    """The new configuration, or None (with its errors logged) if it cannot be used."""
    assert path is not None
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            log.error(_("configuration: %s"), line)
        log.error(_("SIGHUP: %s has errors; the new configuration is refused, the running one stays"), path)
        return None


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
