"""The serial shell: the only pyserial user. Owns one port, feeds its bytes to a codec,
passes the readings through the device's care rules, hands the resulting events to the
station, and writes the device's reply (ACK) only after the station has committed them.
Sends heartbeat queries on a timer to devices that need them, reports a silent device
offline, and re-opens a vanished port with capped backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import termios
import time
from collections.abc import Awaitable, Callable

import serial
import serial_asyncio_fast
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)

from drivers import Codec, Decoded
from drivers.contact_id import Ademco685Codec, SurGardCodec
from drivers.nmea import NmeaCodec
from drivers.seeed_radar import SeeedFda2Codec, SeeedRadarCodec
from gateway.clock import utc_text
from gateway.config import (
    ContactIdReceiverDevice,
    GpsDevice,
    RadarDevice,
    RadarModel,
    ReceiverFormat,
    SerialDevice,
)
from gateway.i18n import N_, Message, _
from gateway.outbox import OutboxFull
from gateway.rules import DeviceRules, EventDraft
from gateway.status import SerialDeviceStatus

__all__ = [
    "PORT_ERRORS",
    "RADAR_CODECS",
    "RECEIVER_CODECS",
    "REJECT_LOG_INTERVAL_S",
    "TICK_S",
    "EventSink",
    "SerialLink",
    "codec_for",
    "explain_port_error",
    "open_port",
]

log = logging.getLogger("care_gateway.serial")

READ_CHUNK_BYTES = 4096  # one read; the codec bounds its own buffer
FIRST_REOPEN_S = 0.5  # first wait before re-opening a lost port; doubles up to REOPEN_MAX_S
REOPEN_MAX_S = 30.0  # a replugged receiver is picked up within this long
REOPEN_JITTER_S = 0.5
REJECT_LOG_INTERVAL_S = 10.0  # at most one "rejected bytes" line per device per interval
TICK_S = 1.0  # how often the device's rules look at the time (summaries, lost fixes)

PORT_ERRORS = (serial.SerialException, OSError, termios.error, EOFError)

EventSink = Callable[[str, list[EventDraft]], Awaitable[None]]  # (device id, drafts) -> committed
StateSink = Callable[[str, bool, str], Awaitable[None]]  # (device id, online, reason)


# the codec of each serial device, by what the station file says it is (the keys are the
# file's vocabulary; tests/test_serial_field.py holds the tables to the config's literals)
RECEIVER_CODECS: dict[ReceiverFormat, Callable[[], Codec]] = {"surgard": SurGardCodec, "ademco685": Ademco685Codec}
RADAR_CODECS: dict[RadarModel, Callable[[], Codec]] = {
    "mr60fda1": SeeedRadarCodec,
    "mr24hpc1": SeeedRadarCodec,
    "mr60fda2": SeeedFda2Codec,
}


def codec_for(device: SerialDevice) -> Codec:
    """A new codec for a configured serial device."""
    if isinstance(device, ContactIdReceiverDevice):
        return RECEIVER_CODECS[device.format]()
    if isinstance(device, RadarDevice):
        return RADAR_CODECS[device.model]()
    assert isinstance(device, GpsDevice)
    return NmeaCodec()


def explain_port_error(port: str, exc: BaseException) -> Message:
    """Turn an open/read failure into advice for the person on site."""
    err = getattr(exc, "errno", None)
    if isinstance(exc, termios.error):
        return Message(
            N_("{port}: the port rejected its settings ({reason}); check baudrate, bytesize, parity, stopbits"),
            {"port": port, "reason": exc},
        )
    if err == errno.EACCES or "Permission denied" in str(exc):
        return Message(
            N_("{port}: permission denied; add the service user to the 'dialout' group (usermod -aG dialout USER)"),
            {"port": port},
        )
    if err in (errno.EBUSY, errno.EAGAIN) or "Resource temporarily unavailable" in str(exc):
        return Message(
            N_("{port}: held by another process; find it with 'fuser -v {port}' (ModemManager often probes ttyACM)"),
            {"port": port},
        )
    if err == errno.ENOENT or "No such file" in str(exc):
        return Message(
            N_("{port}: not present; check the cable and USB plug (use a /dev/serial/by-id/... path)"), {"port": port}
        )
    return Message(N_("{port}: {reason}; check the cable and the device's power"), {"port": port, "reason": exc})


async def open_port(port: str, baudrate: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a port 8N1 for another owner of a conversation (the SMS modem); raises PORT_ERRORS."""
    return await serial_asyncio_fast.open_serial_connection(url=port, baudrate=baudrate, exclusive=True)


class SerialLink:
    """One configured serial device, for as long as the daemon runs."""

    def __init__(
        self, device: SerialDevice, codec: Codec, rules: DeviceRules, on_events: EventSink, on_state: StateSink
    ) -> None:
        self.device = device
        self.codec = codec
        self.rules = rules
        self._on_events = on_events
        self._on_state = on_state
        self.online: bool | None = None  # None until the first open attempt has finished
        self.last_seen: float | None = None  # wall time of the last good frame (status, status page)
        self._last_reject_log = -REJECT_LOG_INTERVAL_S
        self._unlogged_rejects = 0
        self._logged_bytes = 0
        self._last_example = ""

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._tick(), name=f"{self.device.id}-rules")
            tasks.create_task(self._serve(), name=f"{self.device.id}-port")

    async def _tick(self) -> None:
        """Let the rules look at the time: summaries, lost fixes."""
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self._emit(self.rules.on_tick(time.monotonic()))
            except OutboxFull as exc:  # the device task stays up; the journal says what was not kept
                log.error(_("device %s: a summary was not stored: %s"), self.device.id, exc)

    def report(self) -> SerialDeviceStatus:
        """This device's part of the station status."""
        return SerialDeviceStatus(
            kind=self.device.kind,
            state="starting" if self.online is None else "online" if self.online else "offline",
            last_seen=utc_text(self.last_seen),
            frames_ok=self.codec.stats.frames_ok,
            frames_rejected=self.codec.stats.frames_rejected,
            bytes_rejected=self.codec.stats.bytes_rejected,
        )

    async def _emit(self, drafts: list[EventDraft]) -> None:
        if drafts:
            await self._on_events(self.device.id, drafts)

    async def _serve(self) -> None:
        while True:
            reader, writer = await self._open()
            try:
                async with asyncio.TaskGroup() as session:
                    session.create_task(self._pump(reader, writer))
                    if self.codec.heartbeat_query:
                        session.create_task(self._poll(writer))
            except* PORT_ERRORS as group:
                await self._set_state(False, explain_port_error(self.device.port, group.exceptions[0]))
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _poll(self, writer: asyncio.StreamWriter) -> None:
        """Ask the device if it is alive; its answer (any good frame) keeps it online."""
        interval = getattr(self.device, "heartbeat_interval_s", 10.0)
        while True:
            writer.write(self.codec.heartbeat_query)
            await writer.drain()
            await asyncio.sleep(interval)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        d = self.device
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(PORT_ERRORS),
            wait=wait_exponential_jitter(multiplier=FIRST_REOPEN_S, max=REOPEN_MAX_S, jitter=REOPEN_JITTER_S),
            stop=stop_never,
            reraise=True,
            before_sleep=self._report_open_failure,
        )
        async for attempt in retrying:
            with attempt:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=d.port,
                    baudrate=d.baudrate,
                    bytesize=d.bytesize,
                    parity=d.parity,
                    stopbits=d.stopbits,
                    exclusive=True,  # a second process on the same receiver would steal ACKs
                )
        settings = f"{d.baudrate} {d.bytesize}{d.parity}{d.stopbits}"
        await self._set_state(True, Message(N_("{port} opened at {settings}"), {"port": d.port, "settings": settings}))
        return reader, writer

    async def _report_open_failure(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = explain_port_error(self.device.port, exc) if exc else Message(N_("unknown error"))
        if self.online is not False:
            await self._set_state(False, reason)
        else:
            log.debug(
                "device %s: still unavailable (attempt %d): %s", self.device.id, state.attempt_number, reason.english()
            )

    async def _set_state(self, online: bool, reason: Message) -> None:
        """Online or offline, said once a change: in the journal in the station's language, to
        the platform (the device's state event) in English."""
        if self.online is online:
            return
        self.online = online
        if online:
            log.info(_("device %s online: %s"), self.device.id, reason.local())
        else:
            log.warning(_("device %s offline: %s; retrying in the background"), self.device.id, reason.local())
        try:
            await self._on_state(self.device.id, online, reason.english())
        except OutboxFull as exc:
            log.error(_("device %s: its state change was not stored: %s"), self.device.id, exc)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silence_s = self.device.silence_timeout_s or None
        while True:
            try:
                async with asyncio.timeout(silence_s):
                    data = await reader.read(READ_CHUNK_BYTES)
            except TimeoutError:
                await self._set_state(
                    False,
                    Message(
                        N_(
                            "{port}: nothing received for {seconds} s although the device should send or answer "
                            "heartbeats; check its power and the serial cable"
                        ),
                        {"port": self.device.port, "seconds": f"{silence_s:.0f}"},
                    ),
                )
                continue
            if not data:
                raise EOFError("the port reported end of file (device unplugged?)")
            units = self.codec.feed(data)
            if any(unit.error is None for unit in units):
                self.last_seen = time.time()
            self._report_rejects(units)
            if self.online is False and any(unit.error is None for unit in units):
                await self._set_state(True, Message(N_("{port}: the device answers again"), {"port": self.device.port}))
            for unit in units:
                await self._handle(unit, writer)

    async def _handle(self, unit: Decoded, writer: asyncio.StreamWriter) -> None:
        if unit.reading is not None:
            try:
                await self._emit(self.rules.on_reading(unit.reading, time.monotonic()))
            except OutboxFull as exc:  # not committed, so not acknowledged: the device will send it again
                log.error(_("device %s: a reading was not stored, and not acknowledged: %s"), self.device.id, exc)
                return
            except Exception:
                # Not committed, so not acknowledged: the device will send it again.
                log.exception(_("device %s: could not store a reading; not acknowledging it"), self.device.id)
                return
        if unit.reply:
            writer.write(unit.reply)
            await writer.drain()

    def _report_rejects(self, units: list[Decoded]) -> None:
        """At most one line per REJECT_LOG_INTERVAL_S about garbage: frames and bytes rejected."""
        stats = self.codec.stats
        errors = [unit for unit in units if unit.error is not None]
        self._unlogged_rejects += len(errors)
        if errors:
            self._last_example = f"{errors[-1].error}, e.g. {errors[-1].raw[:40]!r}"
        new_bytes = stats.bytes_rejected - self._logged_bytes
        now = time.monotonic()
        if not (self._unlogged_rejects or new_bytes) or now - self._last_reject_log < REJECT_LOG_INTERVAL_S:
            return
        log.warning(
            _(
                "device %s: rejected %d frame(s) and %d bytes of garbage since the last report (%s); "
                "total %d frames, %d bytes rejected; check the cable, the baudrate and the device"
            ),
            self.device.id,
            self._unlogged_rejects,
            new_bytes,
            self._last_example or "no frame at all",
            stats.frames_rejected,
            stats.bytes_rejected,
        )
        self._last_reject_log = now
        self._unlogged_rejects = 0
        self._logged_bytes = stats.bytes_rejected
        self._last_example = ""
