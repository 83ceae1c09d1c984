"""SMS escalation: the second path for an alarm when the data link cannot deliver it.

An alarm that the uplink has not delivered within `[sms] undelivered_after_s` (the broker's
PUBACK never came), or that the platform has not acknowledged within `[care] ack_timeout_s`
(each re-announcement), is sent by SMS, in Chinese, to the resident's contacts and to the
station's on-duty numbers: who, what, where, when. The care rules (CareBook) decide when;
this module keeps the policy and the text; gateway/modem_link.py talks to the modem.

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
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import JsonValue
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential

from gateway.alarms import Alarm, AlarmBook, button_number
from gateway.clock import Clock
from gateway.config import Contact, ResidentSection, StationConfig
from gateway.events import Event, EventKind
from gateway.i18n import _
from gateway.modem_link import Modem, ModemError

__all__ = [
    "SEND_RETRY_FIRST_S",
    "SEND_RETRY_MAX_S",
    "Commit",
    "Escalator",
    "masked",
    "sms_text",
]

log = logging.getLogger("care_gateway.sms")

ESCALATION_TICK_S = 1.0  # how often due escalations are looked for
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


def sms_text(alarm: Alarm, config: StationConfig, resident: ResidentSection | None, clock_zone: str, why: str) -> str:
    """Who, what, where, when, in Chinese, as a carer reads it on a phone."""
    when = datetime.fromtimestamp(alarm.raised_at, ZoneInfo(clock_zone))
    who = resident.name if resident else f"设备{alarm.device_id}"
    where = resident.room if resident and resident.room else ""
    zone = button_number(alarm.detail)
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
        alarms: AlarmBook,
        clock: Clock,
        stamp: Callable[[str, EventKind, dict[str, JsonValue]], Event],
        commit: Commit,
    ) -> None:
        assert config.sms is not None
        self.config = config
        self.section = config.sms
        self.alarms = alarms
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
            due = self.alarms.due_escalations(self.clock.steady(), self.section.undelivered_after_s)
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
                _("SMS modem on %s ready: SIM ready, %s network, signal %s dBm"),
                self.section.port,
                state.registration,
                state.signal_dbm,
            )
        except ModemError as exc:
            self.modem_state = f"not ready: {exc}"
            log.warning(
                _("SMS modem on %s not ready: %s; alarms cannot be escalated by SMS until it is"),
                self.section.port,
                exc.local(),
            )

    async def _escalate(self, alarm: Alarm) -> None:
        resident = self.alarms.residents.get(alarm.resident or "")
        if alarm.state == "raised":
            why = "（平台网络不通，本短信由站点直接发出）"
        else:
            minutes = round(self.config.care.ack_timeout_s / 60)
            why = f"（平台{minutes}分钟未确认，第{alarm.sms_rounds}次短信通知）"
        text = sms_text(alarm, self.config, resident, self.config.care.timezone, why)
        recipients = self.alarms.recipients(alarm, self.section.on_duty)
        if not recipients:
            log.warning(_("alarm %s: no contact or on-duty number to send an SMS to; add them to the config"), alarm.id)
            return
        log.warning(_("alarm %s (%s) escalated by SMS to %d number(s)"), alarm.id, alarm.kind, len(recipients))
        self._reference = (self._reference + 1) % 256
        for contact in recipients:
            current = self.alarms.find(alarm.id)
            if current is not None and current.acknowledged:
                await self._record(alarm, contact, "skipped", reason="acknowledged by the platform meanwhile")
                continue
            now = self.clock.steady()
            if not self.alarms.sms_allowed(contact.international, now, self.section.per_recipient_per_hour):
                self.stats["held_back"] += 1
                log.warning(
                    _("SMS to %s held back: %d per hour already sent"),
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
            log.warning(_("SMS to %s failed (%s); network cause, retrying"), masked(contact.international), exc)

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
                _("SMS for alarm %s to %s failed after %d attempt(s): %s"),
                alarm.id,
                masked(contact.international),
                attempts,
                exc.local(),
            )
            await self._record(alarm, contact, "failed", attempts=attempts, error=str(exc), code=exc.code)
            return
        self.stats["sent"] += 1
        self.alarms.sms_sent(contact.international, self.clock.steady())
        log.warning(
            _("SMS for alarm %s sent to %s (%s, %s)"),
            alarm.id,
            contact.name,
            contact.role,
            masked(contact.international),
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
