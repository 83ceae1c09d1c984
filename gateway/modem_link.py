"""The SMS modem's AT shell: a thin async owner of its serial port around the pure codec
(drivers/modem.py). gateway/escalation.py decides when and what to send; this module only
talks to the modem: bring it up (SIM, signal, registration, PDU mode) and send one SMS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

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
from gateway.config import SmsSection
from gateway.errors import GatewayError
from gateway.i18n import N_, Message
from gateway.serial_link import PORT_ERRORS, explain_port_error, open_port

__all__ = ["Modem", "ModemError", "ModemState"]

COMMAND_TIMEOUT_S = 5.0  # an AT command's final result
PROMPT_TIMEOUT_S = 10.0  # the '> ' after AT+CMGS=<n>
AT_ATTEMPTS = 3  # 'AT' is repeated until the modem answers (it may still be booting)


class ModemError(GatewayError):
    """The modem refused or failed; `code` is its raw +CMS/+CME code when it gave one."""

    def __init__(self, message: Message | str, code: int | None = None, network: bool = False) -> None:
        self.message = message if isinstance(message, Message) else Message("{text}", {"text": message})
        super().__init__(self.message.english())  # (the status and the SMS records: English)
        self.code = code
        self.network = network  # worth a retry: the network, not the message or the SIM

    def local(self) -> str:
        """What went wrong in the station's language, for the journal and doctor."""
        return self.message.local()


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
            raise ModemError(
                Message(
                    N_("{port}: no answer within {seconds} s"), {"port": self.section.port, "seconds": f"{timeout:.0f}"}
                ),
                network=True,
            ) from None

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
            raise ModemError(
                Message(N_("SIM not ready ({answer}); unlock or replace the SIM card"), {"answer": pin or "no answer"})
            )
        dbm, _ = parse_csq(" ".join(await self.command("AT+CSQ")))
        stat = None
        for query in ("AT+CREG?", "AT+CEREG?"):
            with contextlib.suppress(ModemError):
                for text in await self.command(query):
                    stat = parse_registration(text) if stat not in REGISTERED else stat
        if stat not in REGISTERED:
            name = REGISTRATION.get(stat, "no answer") if stat is not None else "no answer"
            signal = f"{dbm} dBm" if dbm is not None else "unknown"
            raise ModemError(
                Message(
                    N_("not registered on a network ({state}; signal {signal})"), {"state": name, "signal": signal}
                ),
                network=True,
            )
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
