"""SMS escalation: the second path for an alarm when the data link cannot deliver it.

An alarm that the uplink has not delivered within `[sms] undelivered_after_s` (the broker's
PUBACK never came), or that the platform has not acknowledged within `[care] ack_timeout_s`
(each re-announcement), is sent by SMS, in Chinese, to the resident's contacts and to the
station's on-duty numbers: who, what, where, when. The care rules (CareBook) decide when;
this module only sends, through the modem on a serial port (drivers/modem.py codec).

- a send is retried (tenacity) only for network causes (no service, network timeout,
  congestion...); a barred or unassigned number is not;
- each number gets at most `per_recipient_per_hour` SMS, so a flapping link cannot flood a
  family; a held-back SMS is recorded too;
- every attempt becomes an `sms` event (sent with the network's message references, failed
  with the modem's raw error code, held back, or skipped because the alarm was acknowledged
  in the meantime) that goes up with the rest when the link returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import JsonValue
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential

from drivers.modem import (
    CME_ERROR_NAMES,
    CME_NETWORK_CAUSES,
    CMS_ERROR_NAMES,
    CTRL_Z,
    ESC,
    NETWORK_CAUSES,
    REGISTERED,
    REGISTRATION,
    ModemCodec,
    ModemLine,
    parse_cmgs,
    parse_csq,
    parse_registration,
    sms_submit_pdus,
)
from gateway.clock import Clock
from gateway.config import Contact, ResidentSection, SmsSection, StationConfig
from gateway.events import Event, EventKind
from gateway.rules import Alarm, CareBook
from gateway.serial_link import PORT_ERRORS, explain_port_error, open_port

log = logging.getLogger("care_gateway.sms")

ESCALATION_TICK_S = 1.0  # how often due escalations are looked for
COMMAND_TIMEOUT_S = 5.0  # an AT command's final result
PROMPT_TIMEOUT_S = 10.0  # the '> ' after AT+CMGS=<n>
AT_ATTEMPTS = 3  # 'AT' is repeated until the modem answers (it may still be booting)
SEND_ATTEMPTS = 3  # network causes: first try and two retries
SEND_RETRY_FIRST_S = 2.0  # then doubling, at most SEND_RETRY_MAX_S
SEND_RETRY_MAX_S = 30.0

WHAT = {
    "sos": "按下了紧急求助按钮",
    "medical": "发出医疗求助",
    "panic": "发出紧急报警",
    "duress": "发出胁迫报警",
    "fire": "家中发生火警（烟雾或高温）",
    "gas": "家中检测到燃气泄漏",
    "carbon_monoxide": "家中检测到一氧化碳",
    "fall": "疑似跌倒",
    "inactivity": "长时间没有活动",
    "wearer_absent": "佩戴设备长时间未出现，可能走失",
    "vitals_alert": "生命体征异常",
}
VITAL_NAMES = {"heart_rate": "心率", "spo2": "血氧", "temperature": "体温", "systolic": "收缩压"}


class ModemError(Exception):
    """The modem refused or failed; `code` is its raw +CMS/+CME code when it gave one."""

    def __init__(self, message: str, code: int | None = None, network: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.network = network  # worth a retry: the network, not the message or the SIM


@dataclass(frozen=True)
class ModemState:
    signal_dbm: int | None
    registration: str


class Modem:
    """The modem's port, open for one round of SMS (re-opened each time: a replugged or
    rebooted modem is simply found again)."""

    def __init__(self, section: SmsSection) -> None:
        self.section = section
        self.codec = ModemCodec()
        self._lines: asyncio.Queue[ModemLine] = asyncio.Queue()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Modem:
        try:
            self._reader, self._writer = await open_port(self.section.port, self.section.baudrate)
        except PORT_ERRORS as exc:
            raise ModemError(explain_port_error(self.section.port, exc)) from exc
        self._pump = asyncio.create_task(self._read(), name="modem-read")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pump:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, *PORT_ERRORS):
                await self._pump
        if self._writer:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            data = await self._reader.read(1024)
            if not data:
                return
            for line in self.codec.feed(data):
                self._lines.put_nowait(line)

    async def _write(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def _until(self, timeout: float, done: Callable[[ModemLine], bool]) -> list[ModemLine]:
        lines: list[ModemLine] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self._lines.get()
                    lines.append(line)
                    if done(line):
                        return lines
        except TimeoutError:
            raise ModemError(f"{self.section.port}: no answer within {timeout:.0f} s", network=True) from None

    async def command(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> list[str]:
        """Send one AT command; return its information lines, or raise ModemError."""
        while not self._lines.empty():  # drop leftovers (URCs, a late answer to a timed-out command)
            self._lines.get_nowait()
        await self._write(command.encode() + b"\r")
        lines = await self._until(timeout, lambda line: line.final)
        final = lines[-1]
        if final.kind != "ok":
            raise _error(command, final)
        return [line.text for line in lines[:-1] if line.kind == "info" and line.text != command]

    async def bring_up(self) -> ModemState:
        """AT, echo off, numeric errors, SIM, signal, registration, PDU mode."""
        for attempt in range(AT_ATTEMPTS):
            try:
                await self.command("AT", timeout=2.0)
                break
            except ModemError:
                if attempt == AT_ATTEMPTS - 1:
                    raise
        await self.command("ATE0")
        await self.command("AT+CMEE=1")
        pin = " ".join(await self.command("AT+CPIN?"))
        if "READY" not in pin:
            raise ModemError(f"SIM not ready ({pin or 'no answer'}); unlock or replace the SIM card")
        dbm, _ = parse_csq(" ".join(await self.command("AT+CSQ")))
        stat = None
        for query in ("AT+CREG?", "AT+CEREG?"):
            with contextlib.suppress(ModemError):
                for text in await self.command(query):
                    stat = parse_registration(text) if stat not in REGISTERED else stat
        if stat not in REGISTERED:
            name = REGISTRATION.get(stat, "no answer") if stat is not None else "no answer"
            signal = f"{dbm} dBm" if dbm is not None else "unknown"
            raise ModemError(f"not registered on a network ({name}; signal {signal})", network=True)
        await self.command("AT+CMGF=0")
        return ModemState(dbm, REGISTERED[stat])

    async def send(self, number: str, text: str, reference: int) -> list[int]:
        """Send one SMS (all its parts); return the network's message references."""
        refs: list[int] = []
        for pdu in sms_submit_pdus(number, text, reference):
            while not self._lines.empty():
                self._lines.get_nowait()
            await self._write(f"AT+CMGS={pdu.tpdu_octets}\r".encode())
            first = await self._until(PROMPT_TIMEOUT_S, lambda line: line.kind == "prompt" or line.final)
            if first[-1].kind != "prompt":
                raise _error("AT+CMGS", first[-1])
            await self._write(pdu.hex.encode() + CTRL_Z)
            try:
                lines = await self._until(self.section.send_timeout_s, lambda line: line.final)
            except ModemError:
                await self._write(ESC)
                raise
            if lines[-1].kind != "ok":
                raise _error("AT+CMGS", lines[-1])
            refs.extend(r for r in (parse_cmgs(line.text) for line in lines) if r is not None)
        return refs


def _error(command: str, final: ModemLine) -> ModemError:
    names = CMS_ERROR_NAMES if final.kind == "cms_error" else CME_ERROR_NAMES
    name = names.get(final.code, "") if final.code is not None else ""
    network = (final.kind == "cms_error" and final.code in NETWORK_CAUSES) or (
        final.kind == "cme_error" and final.code in CME_NETWORK_CAUSES
    )
    detail = f"{final.text}" + (f" ({name})" if name else "")
    return ModemError(f"{command}: {detail}", final.code, network)


def sms_text(alarm: Alarm, config: StationConfig, resident: ResidentSection | None, clock_zone: str, why: str) -> str:
    """Who, what, where, when, in Chinese, as a carer reads it on a phone."""
    when = datetime.fromtimestamp(alarm.raised_at, ZoneInfo(clock_zone))
    who = resident.name if resident else f"设备{alarm.device_id}"
    where = resident.room if resident and resident.room else ""
    zone = alarm.detail.get("zone", alarm.detail.get("user"))
    if not resident and zone is not None:
        where = f"防区{zone}"
    what = WHAT.get(alarm.kind, alarm.kind)
    extra = ""
    vital = alarm.detail.get("vital")
    if isinstance(vital, str):
        extra = f"（{VITAL_NAMES.get(vital, vital)} {alarm.detail.get('value')}）"
    if alarm.detail.get("still_present"):
        extra += "，跌倒后一直未动"
    if alarm.count > 1:
        extra += f"，共{alarm.count}次"
    place = f"{config.station.name}" + (f"，{where}" if where else "")
    return (
        f"【{config.station.name}】紧急：{who}{what}{extra}。地点：{place}。"
        f"时间：{when.month}月{when.day}日{when:%H:%M}。{why}请尽快电话联系或上门查看。报警号{alarm.id[-6:]}"
    )


def masked(number: str) -> str:
    """+8613812345678 -> +86138****5678: enough to tell numbers apart in the journal and events."""
    return number[:-8] + "****" + number[-4:] if len(number) > 8 else "****"


Commit = Callable[[list[Event]], Awaitable[None]]  # commits events with the care book's changes


class Escalator:
    def __init__(
        self,
        config: StationConfig,
        care: CareBook,
        clock: Clock,
        stamp: Callable[[str, EventKind, dict[str, JsonValue]], Event],
        commit: Commit,
    ) -> None:
        assert config.sms is not None
        self.config = config
        self.section = config.sms
        self.care = care
        self.clock = clock
        self.stamp = stamp
        self.commit = commit
        self._reference = random.randrange(256)  # concatenation reference: fresh for each message
        self.stats = {"sent": 0, "failed": 0, "held_back": 0}
        self.modem_state = "unknown"

    async def run(self) -> None:
        await self._check_modem()
        while True:
            await asyncio.sleep(ESCALATION_TICK_S)
            due = self.care.due_escalations(self.clock.steady(), self.section.undelivered_after_s)
            if due:
                await self.commit([])  # the rounds are counted before anything is sent
            for alarm in due:
                await self._escalate(alarm)

    async def _check_modem(self) -> None:
        """Say at start-up whether SMS would work, so a technician sees it in the journal."""
        try:
            async with Modem(self.section) as modem:
                state = await modem.bring_up()
            self.modem_state = "ready"
            log.info(
                "SMS modem on %s ready: SIM ready, %s network, signal %s dBm",
                self.section.port,
                state.registration,
                state.signal_dbm,
            )
        except ModemError as exc:
            self.modem_state = f"not ready: {exc}"
            log.warning(
                "SMS modem on %s not ready: %s; alarms cannot be escalated by SMS until it is", self.section.port, exc
            )

    async def _escalate(self, alarm: Alarm) -> None:
        resident = self.care.residents.get(alarm.resident or "")
        if alarm.state == "raised":
            why = "（平台网络不通，本短信由站点直接发出）"
        else:
            minutes = round(self.config.care.ack_timeout_s / 60)
            why = f"（平台{minutes}分钟未确认，第{alarm.sms_rounds}次短信通知）"
        text = sms_text(alarm, self.config, resident, self.config.care.timezone, why)
        recipients = self.care.recipients(alarm, self.section.on_duty)
        if not recipients:
            log.warning("alarm %s: no contact or on-duty number to send an SMS to; add them to the config", alarm.id)
            return
        log.warning("alarm %s (%s) escalated by SMS to %d number(s)", alarm.id, alarm.kind, len(recipients))
        self._reference = (self._reference + 1) % 256
        for contact in recipients:
            current = self.care.find(alarm.id)
            if current is not None and current.acknowledged:
                await self._record(alarm, contact, "skipped", reason="acknowledged by the platform meanwhile")
                continue
            now = self.clock.steady()
            if not self.care.sms_allowed(contact.international, now, self.section.per_recipient_per_hour):
                self.stats["held_back"] += 1
                log.warning(
                    "SMS to %s held back: %d per hour already sent",
                    masked(contact.international),
                    self.section.per_recipient_per_hour,
                )
                await self._record(
                    alarm, contact, "held_back", reason=f"limit {self.section.per_recipient_per_hour} per hour"
                )
                continue
            await self._send(alarm, contact, text)

    async def _send(self, alarm: Alarm, contact: Contact, text: str) -> None:
        attempts = 0

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("SMS to %s failed (%s); network cause, retrying", masked(contact.international), exc)

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: isinstance(e, ModemError) and e.network),
                stop=stop_after_attempt(SEND_ATTEMPTS),
                wait=wait_exponential(multiplier=SEND_RETRY_FIRST_S, max=SEND_RETRY_MAX_S),
                reraise=True,
                before_sleep=log_retry,
            ):
                with attempt:
                    attempts += 1
                    async with Modem(self.section) as modem:
                        await modem.bring_up()
                        refs = await modem.send(contact.international, text, self._reference)
        except ModemError as exc:
            self.stats["failed"] += 1
            log.error(
                "SMS for alarm %s to %s failed after %d attempt(s): %s",
                alarm.id,
                masked(contact.international),
                attempts,
                exc,
            )
            await self._record(alarm, contact, "failed", attempts=attempts, error=str(exc), code=exc.code)
            return
        self.stats["sent"] += 1
        self.care.sms_sent(contact.international, self.clock.steady())
        log.warning(
            "SMS for alarm %s sent to %s (%s, %s)", alarm.id, contact.name, contact.role, masked(contact.international)
        )
        await self._record(alarm, contact, "sent", attempts=attempts, refs=refs, parts=len(refs))

    async def _record(
        self,
        alarm: Alarm,
        contact: Contact,
        result: str,
        *,
        attempts: int = 0,
        error: str | None = None,
        code: int | None = None,
        refs: list[int] | None = None,
        parts: int | None = None,
        reason: str | None = None,
    ) -> None:
        data: dict[str, JsonValue] = {
            "alarm_id": alarm.id,
            "alarm_kind": alarm.kind,
            "round": alarm.sms_rounds,
            "to_name": contact.name,
            "to_role": contact.role,
            "to": masked(contact.international),
            "result": result,
            "attempts": attempts,
        }
        if alarm.resident:
            data["resident"] = alarm.resident
        extras: dict[str, JsonValue] = {
            "error": error,
            "error_code": code,
            "message_refs": list[JsonValue](refs) if refs is not None else None,
            "parts": parts,
            "reason": reason,
        }
        data.update({k: v for k, v in extras.items() if v is not None})
        await self.commit([self.stamp("modem", EventKind.SMS, data)])
