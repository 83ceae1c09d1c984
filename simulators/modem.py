"""A cellular modem on a pseudo-terminal: the AT subset for SMS in PDU mode.

Answers AT, ATE0/ATE1, AT+CMEE, AT+CPIN?, AT+CSQ, AT+CREG?, AT+CEREG?, AT+CMGF and
AT+CMGS=<n> (prompt `> `, then the hex PDU and Ctrl-Z). Every PDU is parsed and checked
against 3GPP TS 23.040 (SMS-SUBMIT, length, address, DCS, UDL, concatenation header)
independently of drivers/modem.py; a bad PDU gets `+CMS ERROR: 304`. Concatenated parts
are reassembled by (number, reference) and the decoded messages recorded.

It can be told to fail: no SIM, no network, a `+CMS ERROR` for the next sends, slow replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from simulators.harness import PtyDevice

CTRL_Z = 0x1A
ESC = 0x1B
MAX_COMMAND_BYTES = 4096


class PduError(ValueError):
    """The PDU breaks TS 23.040; the modem answers +CMS ERROR: 304."""


@dataclass(frozen=True)
class SubmitPdu:
    """One SMS-SUBMIT as this simulator read it."""

    number: str  # "+8613800138000" for an international address
    text: str  # this part's text
    reference: int | None  # concatenation: same for every part of one message
    total: int
    seq: int
    tpdu_octets: int


def decode_submit(hex_pdu: str) -> SubmitPdu:
    """Parse an SMS-SUBMIT PDU (with its SCA) written as hex; raise PduError if malformed."""
    try:
        pdu = bytes.fromhex(hex_pdu)
    except ValueError as exc:
        raise PduError(f"not hex: {exc}") from exc
    if not pdu:
        raise PduError("empty")
    sca_len = pdu[0]
    tpdu = pdu[1 + sca_len :]
    if len(tpdu) < 7:
        raise PduError("too short")
    first = tpdu[0]
    if first & 0x03 != 0x01:
        raise PduError(f"first octet {first:02X}: not an SMS-SUBMIT")
    vpf = (first >> 3) & 0x03
    udhi = bool(first & 0x40)
    digits = tpdu[2]
    toa = tpdu[3]
    addr_octets = (digits + 1) // 2
    pos = 4 + addr_octets
    nibbles = "".join(f"{b & 0x0F:X}{b >> 4:X}" for b in tpdu[4:pos])
    number = nibbles[:digits]
    if not number.isdigit() or (digits % 2 and nibbles[digits:] != "F"):
        raise PduError(f"bad destination address {tpdu[4:pos].hex()}")
    if toa == 0x91:
        number = "+" + number
    if len(tpdu) < pos + 3:
        raise PduError("truncated after the address")
    dcs = tpdu[pos + 1]
    pos += 2
    pos += {0: 0, 2: 1, 1: 7, 3: 7}[vpf]
    if len(tpdu) <= pos:
        raise PduError("no user data length")
    udl = tpdu[pos]
    ud = tpdu[pos + 1 :]
    if dcs != 0x08:
        raise PduError(f"DCS {dcs:02X}: this simulator expects UCS2 (08)")
    if len(ud) != udl:
        raise PduError(f"UDL says {udl} octets, {len(ud)} present")
    reference, total, seq = None, 1, 1
    if udhi:
        udh_len = ud[0]
        header, ud = ud[1 : 1 + udh_len], ud[1 + udh_len :]
        if len(header) != udh_len:
            raise PduError("user data header truncated")
        if header[:2] == b"\x00\x03" and len(header) >= 5:
            reference, total, seq = header[2], header[3], header[4]
        elif header[:2] == b"\x08\x04" and len(header) >= 6:
            reference, total, seq = header[2] << 8 | header[3], header[4], header[5]
        else:
            raise PduError(f"unknown user data header {header.hex()}")
        if not 1 <= seq <= total:
            raise PduError(f"part {seq} of {total}")
    if len(ud) % 2:
        raise PduError("odd number of UCS2 octets")
    try:
        text = ud.decode("utf-16-be")  # a split surrogate pair fails here
    except UnicodeDecodeError as exc:
        raise PduError(f"not valid UTF-16: {exc}") from exc
    return SubmitPdu(number, text, reference, total, seq, len(tpdu))


@dataclass(frozen=True)
class ReceivedSms:
    number: str
    text: str
    parts: int
    reference: int | None
    at: float


@dataclass
class ModemFaults:
    """What the simulated modem gets wrong, changeable while it runs."""

    sim: str = "READY"  # or "SIM PIN", or "NOT INSERTED" (answers +CME ERROR: 10)
    registered: bool = True
    cms_errors: list[int] = field(default_factory=list)  # popped, one per AT+CMGS
    reply_delay_s: float = 0.0


class ModemSim(PtyDevice):
    def __init__(self, record: Path | None = None) -> None:
        super().__init__()
        self.faults = ModemFaults()
        self.messages: list[ReceivedSms] = []
        self.rejected_pdus: list[str] = []
        self.commands: list[str] = []
        self._record = record
        self._echo = True
        self._pending_cmgs: int | None = None
        self._buffer = b""
        self._parts: dict[tuple[str, int], dict[int, str]] = {}
        self._mr = 0
        self.arrived = asyncio.Event()

    # --- bytes from the gateway -------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_COMMAND_BYTES:
            self._buffer = b""
            self._reply("ERROR")
        while True:
            if self._pending_cmgs is not None:
                for i, byte in enumerate(self._buffer):
                    if byte in (CTRL_Z, ESC):
                        body, self._buffer = self._buffer[:i], self._buffer[i + 1 :]
                        n, self._pending_cmgs = self._pending_cmgs, None
                        if byte == CTRL_Z:
                            self._submit(body.decode("ascii", "replace").strip(), n)
                        break
                else:
                    return
                continue
            end = self._buffer.find(b"\r")
            if end < 0:
                return
            line, self._buffer = self._buffer[:end].strip(b"\n "), self._buffer[end + 1 :]
            if line:
                self._command(line.decode("ascii", "replace"))

    def _write(self, text: str) -> None:
        if not self.plugged:
            return
        data = text.encode()
        if self.faults.reply_delay_s:
            asyncio.get_running_loop().call_later(self.faults.reply_delay_s, self._write_now, data)
        else:
            self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, data)

    def _reply(self, *lines: str) -> None:
        self._write("".join(f"\r\n{line}\r\n" for line in lines))

    def _command(self, line: str) -> None:
        self.commands.append(line)
        if self._echo:
            self._write(line + "\r")
        upper = line.upper()
        if upper in ("AT", "AT+CMGF=0"):
            self._reply("OK")
        elif upper in ("ATE0", "ATE1"):
            self._echo = upper == "ATE1"
            self._reply("OK")
        elif upper.startswith("AT+CMEE="):
            self._reply("OK")
        elif upper == "AT+CPIN?":
            if self.faults.sim == "NOT INSERTED":
                self._reply("+CME ERROR: 10")
            else:
                self._reply(f"+CPIN: {self.faults.sim}", "OK")
        elif upper == "AT+CSQ":
            self._reply("+CSQ: 18,99" if self.faults.registered else "+CSQ: 99,99", "OK")
        elif upper in ("AT+CREG?", "AT+CEREG?"):
            name = upper[3:-1]
            self._reply(f"+{name}: 0,{1 if self.faults.registered else 2}", "OK")
        elif upper.startswith("AT+CMGS="):
            try:
                n = int(upper.removeprefix("AT+CMGS="))
            except ValueError:
                self._reply("+CMS ERROR: 304")
                return
            if self.faults.sim != "READY":
                self._reply("+CMS ERROR: 310" if self.faults.sim == "NOT INSERTED" else "+CMS ERROR: 311")
                return
            self._pending_cmgs = n
            self._write("\r\n> ")
        else:
            self._reply("ERROR")

    def _submit(self, hex_pdu: str, n: int) -> None:
        try:
            pdu = decode_submit(hex_pdu)
            if pdu.tpdu_octets != n:
                raise PduError(f"AT+CMGS={n} but the TPDU has {pdu.tpdu_octets} octets")
        except PduError as exc:
            self.rejected_pdus.append(f"{hex_pdu}: {exc}")
            self._reply("+CMS ERROR: 304")
            return
        if not self.faults.registered:
            self._reply("+CMS ERROR: 331")
            return
        if self.faults.cms_errors:
            self._reply(f"+CMS ERROR: {self.faults.cms_errors.pop(0)}")
            return
        self._mr = (self._mr + 1) % 256
        self._reply(f"+CMGS: {self._mr}", "OK")
        self._collect(pdu)

    def _collect(self, pdu: SubmitPdu) -> None:
        if pdu.reference is None or pdu.total == 1:
            self._store(ReceivedSms(pdu.number, pdu.text, 1, pdu.reference, time.time()))
            return
        key = (pdu.number, pdu.reference)
        parts = self._parts.setdefault(key, {})
        parts[pdu.seq] = pdu.text
        if len(parts) == pdu.total:
            del self._parts[key]
            text = "".join(parts[i] for i in range(1, pdu.total + 1))
            self._store(ReceivedSms(pdu.number, text, pdu.total, pdu.reference, time.time()))

    def _store(self, sms: ReceivedSms) -> None:
        self.messages.append(sms)
        self.arrived.set()
        if self._record:
            with self._record.open("a", encoding="utf-8") as out:
                out.write(json.dumps(sms.__dict__, ensure_ascii=False) + "\n")
        print(f"modem: SMS to {sms.number} ({sms.parts} part(s)): {sms.text}", flush=True)


async def run(record: Path | None, fail: str | None) -> None:
    """`python -m simulators modem`: print the port, answer until interrupted."""
    modem = ModemSim(record)
    if fail == "no-sim":
        modem.faults.sim = "NOT INSERTED"
    elif fail == "no-network":
        modem.faults.registered = False
    elif fail == "slow":
        modem.faults.reply_delay_s = 3.0
    modem.start()
    print(f"modem simulator on {modem.path}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        modem.close()
