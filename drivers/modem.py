"""Cellular modem for SMS: the AT subset (3GPP TS 27.005 / 27.007) and SMS-SUBMIT PDUs.

Sans-I/O: `ModemCodec` turns the modem's bytes into classified lines (final results,
the `> ` prompt, information lines and unsolicited codes); `sms_submit_pdus` turns a
number and a text into the PDUs to send with `AT+CMGS=<n>`. The async shell that owns the
port lives in gateway/escalation.py.

Chinese text goes as UCS2 (UTF-16BE) in PDU mode (text-mode UCS2 is module-dependent,
shared/protocols.md §5.1): 70 UTF-16 code units fit one SMS, 67 per part of a concatenated
one (the 6-octet header `05 00 03 ref total seq`), and a surrogate pair is never split.

Why no library: python-gsmmodem(-new) drives the port itself from threads, and the PDU
helpers of smspdu/smspdudecoder decode only or lack UCS2 concatenation; the encoder here
is ~60 lines and is tested against the worked examples of protocols.md §5.2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from drivers import CodecStats

__all__ = [
    "CME_ERROR_NAMES",
    "CME_NETWORK_CAUSES",
    "CMS_ERROR_NAMES",
    "CTRL_Z",
    "ESC",
    "MAX_LINE_BYTES",
    "NETWORK_CAUSES",
    "REGISTERED",
    "REGISTRATION",
    "ModemCodec",
    "ModemLine",
    "SmsPdu",
    "classify",
    "encode_address",
    "parse_cmgs",
    "parse_csq",
    "parse_registration",
    "sms_submit_pdus",
    "split_ucs2",
]

# --- SMS-SUBMIT PDU -------------------------------------------------------------------------

SINGLE_UCS2_UNITS = 70  # 140 octets of user data
PART_UCS2_UNITS = 67  # 140 - 6 octets of concatenation header, in UTF-16 code units
MAX_PARTS = 255  # the header's "total" is one octet
FIRST_OCTET_SUBMIT_RELATIVE_VP = 0x11  # MTI=01 SUBMIT, VPF=10 relative validity period
UDHI = 0x40  # user data starts with a header (concatenation)
TOA_INTERNATIONAL = 0x91
TOA_UNKNOWN = 0x81
DCS_UCS2 = 0x08
VALIDITY_24H = 0xA7  # relative VP 167 -> (167 - 143) * 30 min + 12 h = 24 h
IEI_CONCAT_8BIT = 0x00
CTRL_Z = b"\x1a"  # ends the PDU after the prompt
ESC = b"\x1b"  # aborts a pending AT+CMGS

_NUMBER = re.compile(r"^\+?[0-9]{3,20}$")


@dataclass(frozen=True)
class SmsPdu:
    """One SMS-SUBMIT: the hex to type after the prompt and the n of `AT+CMGS=<n>`."""

    hex: str  # starts with "00": use the SMSC stored on the SIM
    tpdu_octets: int  # octets after the SCA field


def encode_address(number: str) -> bytes:
    """Destination address: digit count, type of address, swapped BCD nibbles (F-padded)."""
    if not _NUMBER.match(number):
        raise ValueError(f"not a phone number: {number!r}")
    digits = number.lstrip("+")
    toa = TOA_INTERNATIONAL if number.startswith("+") else TOA_UNKNOWN
    padded = digits + ("F" if len(digits) % 2 else "")
    swapped = "".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2))
    return bytes([len(digits), toa]) + bytes.fromhex(swapped)


def split_ucs2(text: str) -> list[bytes]:
    """The text as UTF-16BE parts: one part if it fits 70 units, else parts of at most 67
    units that never end between the two halves of a surrogate pair."""
    data = text.encode("utf-16-be")
    if len(data) <= SINGLE_UCS2_UNITS * 2:
        return [data]
    parts: list[bytes] = []
    start = 0
    while start < len(data):
        end = min(start + PART_UCS2_UNITS * 2, len(data))
        if end < len(data) and 0xD8 <= data[end - 2] <= 0xDB:  # a high surrogate would be cut off
            end -= 2
        parts.append(data[start:end])
        start = end
    return parts


def sms_submit_pdus(number: str, text: str, reference: int) -> list[SmsPdu]:
    """SMS-SUBMIT PDUs (UCS2) for `text` to `number`; `reference` (0-255) ties the parts of
    one message together and must change from message to message."""
    if not text:
        raise ValueError("an SMS needs some text")
    address = encode_address(number)
    parts = split_ucs2(text)
    if len(parts) > MAX_PARTS:
        raise ValueError(f"text too long for one concatenated SMS ({len(parts)} parts)")
    pdus = []
    for seq, body in enumerate(parts, start=1):
        header = b"" if len(parts) == 1 else bytes([5, IEI_CONCAT_8BIT, 3, reference & 0xFF, len(parts), seq])
        first = FIRST_OCTET_SUBMIT_RELATIVE_VP | (UDHI if header else 0)
        user_data = header + body
        tpdu = bytes([first, 0x00]) + address + bytes([0x00, DCS_UCS2, VALIDITY_24H, len(user_data)]) + user_data
        pdus.append(SmsPdu(hex="00" + tpdu.hex().upper(), tpdu_octets=len(tpdu)))
    return pdus


# --- AT responses ---------------------------------------------------------------------------

LineKind = Literal["ok", "error", "cms_error", "cme_error", "prompt", "info"]
FINAL_KINDS = frozenset({"ok", "error", "cms_error", "cme_error"})
MAX_LINE_BYTES = 1024  # longer "lines" are noise (a modem's longest answers are ~100 bytes)

_CMS = re.compile(r"^\+CMS ERROR:\s*(.+)$")
_CME = re.compile(r"^\+CME ERROR:\s*(.+)$")


@dataclass(frozen=True)
class ModemLine:
    kind: LineKind
    text: str
    code: int | None = None  # numeric +CMS/+CME error (with AT+CMEE=1); None for text errors

    @property
    def final(self) -> bool:
        return self.kind in FINAL_KINDS


def classify(text: str) -> ModemLine:
    if text == "OK":
        return ModemLine("ok", text)
    if text in ("ERROR", "NO CARRIER"):
        return ModemLine("error", text)
    for pattern, kind in ((_CMS, "cms_error"), (_CME, "cme_error")):
        match = pattern.match(text)
        if match:
            detail = match[1].strip()
            return ModemLine(kind, text, int(detail) if detail.isdigit() else None)  # type: ignore[arg-type]
    return ModemLine("info", text)


class ModemCodec:
    """Bytes from the modem -> lines. The `> ` prompt of AT+CMGS has no line end and is
    recognised on its own; non-text bytes and over-long lines are dropped and counted."""

    def __init__(self) -> None:
        self._buffer = b""
        self.stats = CodecStats()

    def feed(self, data: bytes) -> list[ModemLine]:
        self._buffer += data
        out: list[ModemLine] = []
        while True:
            stripped = self._buffer.lstrip(b"\r\n")
            if stripped.startswith(b"> "):
                out.append(ModemLine("prompt", ">"))
                self._buffer = stripped[2:]
                continue
            self._buffer = stripped
            end = min((i for i in (self._buffer.find(b"\r"), self._buffer.find(b"\n")) if i >= 0), default=-1)
            if end < 0:
                if len(self._buffer) > MAX_LINE_BYTES:
                    self._reject(len(self._buffer))
                    self._buffer = b""
                return out
            raw, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if len(raw) > MAX_LINE_BYTES:
                self._reject(len(raw))
                continue
            try:
                text = raw.decode("ascii").strip()
            except UnicodeDecodeError:
                self._reject(len(raw))
                continue
            if text:
                self.stats.frames_ok += 1
                out.append(classify(text))

    def _reject(self, n: int) -> None:
        self.stats.frames_rejected += 1
        self.stats.bytes_rejected += n


# --- information lines ------------------------------------------------------------------------

REGISTERED = {1: "home", 5: "roaming"}  # +CREG/+CEREG stat values that allow SMS
REGISTRATION = {0: "not searching", 2: "searching", 3: "registration denied", 4: "unknown"} | REGISTERED


def parse_csq(text: str) -> tuple[int | None, int | None]:
    """'+CSQ: 18,99' -> (dBm, ber); rssi 99 (unknown) gives None."""
    match = re.match(r"^\+CSQ:\s*(\d+),(\d+)$", text)
    if not match:
        return None, None
    rssi, ber = int(match[1]), int(match[2])
    dbm = None if rssi == 99 else (-113 if rssi == 0 else (-51 if rssi >= 31 else -113 + 2 * rssi))
    return dbm, (None if ber == 99 else ber)


def parse_registration(text: str) -> int | None:
    """'+CREG: 0,1' or '+CEREG: 2,5,...' -> stat (the second field); None if not such a line."""
    match = re.match(r"^\+C(?:E|G)?REG:\s*\d+,(\d+)", text)
    return int(match[1]) if match else None


def parse_cmgs(text: str) -> int | None:
    """'+CMGS: 12' -> the message reference the network gave the SMS."""
    match = re.match(r"^\+CMGS:\s*(\d+)", text)
    return int(match[1]) if match else None


# 3GPP causes worth a retry: 27.005 §3.2.5 (331 no network service, 332 network timeout) and
# RP causes of TS 24.011 E.2 (17 network failure, 22 congestion, 38 network out of order,
# 41 temporary failure, 42 congestion). Everything else (barred, unassigned number, no SIM)
# will not get better by trying again soon.
NETWORK_CAUSES = frozenset({17, 22, 38, 41, 42, 331, 332})
CMS_ERROR_NAMES = {
    1: "unassigned number",
    8: "operator determined barring",
    10: "call barred",
    17: "network failure",
    21: "short message transfer rejected",
    22: "congestion",
    27: "destination out of service",
    38: "network out of order",
    41: "temporary failure",
    42: "congestion",
    300: "ME failure",
    302: "operation not allowed",
    304: "invalid PDU mode parameter",
    310: "SIM not inserted",
    311: "SIM PIN required",
    313: "SIM failure",
    316: "SIM PUK required",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "network timeout",
    500: "unknown error",
}
CME_NETWORK_CAUSES = frozenset({30, 31})  # no network service, network timeout
CME_ERROR_NAMES = {  # 27.007 §9.2: equipment and SIM errors
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    30: "no network service",
    31: "network timeout",
    100: "unknown",
}
