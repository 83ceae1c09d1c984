"""Contact ID (SIA DC-05) reports as printed by alarm receivers on their automation port.

Sur-Gard MLR2 / MLR2000 / MLR2E automation output (shared/protocols.md §1.3):

    report     5 RR L s 18 AAAA Q XYZ GG CCC <DC4>     e.g. b"5011 181234E12101001\\x14"
    heartbeat  1 RR L + 11 spaces + "@" + 4 spaces <DC4>  (about every 30 s)

RR receiver, L line (1 digit, or 3 on newer firmware), AAAA account, Q is a letter (E new
event, R restore, P previous/still present), XYZ event code, GG group, CCC zone or user.
The computer must answer ACK (0x06) within 4 s, else the receiver resends 3 times and then
buffers; NAK (0x15) asks for a resend at once. Receivers check the DTMF checksum themselves
and drop it from this output.

"Ademco 685" output (as emulated by the Silent Knight VisorAlarm, protocols.md §1.3):

    report     <LF> R L s AAAA s 18 s QXYZ s GG s U CCC <CR>   e.g. b"\\n11 1234 18 E101 01 C015\\r"
    heartbeat  as Sur-Gard's, terminated by DC4

R receiver (one digit or two: the manual is unclear), L line, U is "C" for a zone or "U"
for a user number. Both formats share the report type and the ACK/NAK replies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import JsonValue

from drivers import BufferedCodec, Decoded
from gateway.events import EventKind

__all__ = [
    "ACK",
    "CR",
    "DC4",
    "MAX_LINE_BYTES",
    "NAK",
    "Ademco685Codec",
    "ContactIdReport",
    "SurGardCodec",
    "kind_of_code",
    "names_a_user",
]

ACK = b"\x06"
NAK = b"\x15"
DC4 = 0x14  # terminator of every automation-output line
SURGARD_ACK_DEADLINE_S = 4.0  # the receiver resends after 4 s without an ACK (MLR2-DG p.39)
MAX_LINE_BYTES = 64  # longest valid line is 23 bytes; anything longer without DC4 is garbage
LINE_NOISE = b"\r\n\x00 "  # harmless bytes some receivers put between lines

_REPORT = re.compile(
    rb"5(?P<rr>\d{2})(?P<line>\d{3}|\d) 18(?P<acct>[0-9B-F]{4})(?P<q>[ERP])"
    rb"(?P<code>\d{3})(?P<group>\d{2})(?P<zone>\d{3})$"
)
_HEARTBEAT = re.compile(rb"1(?P<rr>\d{2})(?P<line>\d{3}|\d) {11}@ {4}$")
_ADEMCO_685 = re.compile(
    rb"(?P<rr>\d{1,2})(?P<line>\d) (?P<acct>[0-9B-F]{4}) 18 (?P<q>[ERP])(?P<code>\d{3}) (?P<group>\d{2}) "
    rb"(?P<u>[CU])(?P<zone>\d{3})$"
)
CR = 0x0D  # terminator of an Ademco 685 report

Qualifier = Literal["new", "restore", "still_present"]
QUALIFIERS: dict[bytes, Qualifier] = {b"E": "new", b"R": "restore", b"P": "still_present"}

# Event codes (shared/protocols.md §1.2, names from SpanDSP's ademco_codes[]): code -> (name, kind).
# Life-safety codes are alarms of their own kinds: medical/personal 100-101, fire 110-118 (and
# 158 high temperature, SIA "KA" heat alarm), panic and hold-up 120-126 (122 silent and 123
# audible are panics; 121, 124, 125 duress), gas 151, carbon monoxide 162 (SIA "GA", "HA", "PA").
CONTACT_ID_CODES: dict[int, tuple[str, EventKind]] = {
    100: ("Medical", EventKind.MEDICAL),
    101: ("Personal emergency", EventKind.SOS),
    102: ("Fail to report in", EventKind.TROUBLE),
    110: ("Fire", EventKind.FIRE),
    111: ("Smoke", EventKind.FIRE),
    112: ("Combustion", EventKind.FIRE),
    113: ("Water flow", EventKind.FIRE),
    114: ("Heat", EventKind.FIRE),
    115: ("Pull station", EventKind.FIRE),
    116: ("Duct", EventKind.FIRE),
    117: ("Flame", EventKind.FIRE),
    118: ("Near alarm", EventKind.FIRE),
    120: ("Panic", EventKind.PANIC),
    121: ("Duress", EventKind.DURESS),
    122: ("Silent", EventKind.PANIC),
    123: ("Audible", EventKind.PANIC),
    124: ("Duress - access granted", EventKind.DURESS),
    125: ("Duress - egress granted", EventKind.DURESS),
    126: ("Hold-up suspicion print", EventKind.PANIC),
    147: ("Sensor supervision failure", EventKind.TROUBLE),
    150: ("24-hour non-burglary", EventKind.TROUBLE),
    151: ("Gas detected", EventKind.GAS),
    154: ("Water leakage", EventKind.TROUBLE),
    158: ("High temp", EventKind.FIRE),
    159: ("Low temp", EventKind.TROUBLE),
    162: ("Carbon monoxide detected", EventKind.CARBON_MONOXIDE),
    301: ("AC loss", EventKind.TROUBLE),
    302: ("Low system battery", EventKind.TROUBLE),
    305: ("System reset", EventKind.TROUBLE),
    309: ("Battery test failure", EventKind.TROUBLE),
    311: ("Battery missing/dead", EventKind.TROUBLE),
    350: ("Communication trouble", EventKind.TROUBLE),
    354: ("Failure to communicate event", EventKind.TROUBLE),
    380: ("Sensor trouble", EventKind.TROUBLE),
    381: ("Loss of supervision - RF", EventKind.TROUBLE),
    383: ("Sensor tamper", EventKind.TROUBLE),
    384: ("RF low battery", EventKind.TROUBLE),
    393: ("Maintenance alert", EventKind.TROUBLE),
    406: ("Cancel", EventKind.PANEL_EVENT),
    601: ("Manual trigger test report", EventKind.TEST),
    602: ("Periodic test report", EventKind.TEST),
    603: ("Periodic RF transmission", EventKind.TEST),
    608: ("Periodic test - system trouble present", EventKind.TEST),
    641: ("Senior watch trouble", EventKind.TROUBLE),
    654: ("System inactivity", EventKind.TROUBLE),
}
# Codes not in the table fall back on their family: 1xx and 3xx are troubles, 60x tests.
_FAMILY_KIND = {1: EventKind.TROUBLE, 3: EventKind.TROUBLE}
# Whether CCC is a user number or a zone, as SpanDSP's ademco_codes[] marks each code: the 4xx
# open/close and access family names a user except the ten codes below, which name a zone
# (forced access, door propped open, wrong code entry, panic alarm reset, ...); outside 4xx a
# user is named by duress (121; 124/125 "duress - access/egress granted" name the door's zone),
# engineer reset, burglary bypass, fire and walk tests, time/date reset, latch-key supervision,
# and the download family 9xx.
_ZONE_CODES_IN_4XX = frozenset({416, 423, 426, 427, 428, 432, 433, 434, 461, 465})
_USER_CODES_OUTSIDE_4XX = frozenset({121, 313, 573, 604, 607, 625, 642, 652, 653, 900, 901, 902, 910, 911, 999})


def names_a_user(code: int) -> bool:
    """True when a report's CCC field is a user number rather than a zone."""
    return code in _USER_CODES_OUTSIDE_4XX or (400 <= code < 500 and code not in _ZONE_CODES_IN_4XX)


def kind_of_code(code: int) -> EventKind:
    if code in CONTACT_ID_CODES:
        return CONTACT_ID_CODES[code][1]
    if 600 <= code <= 609:
        return EventKind.TEST
    return _FAMILY_KIND.get(code // 100, EventKind.PANEL_EVENT)


@dataclass(frozen=True)
class ContactIdReport:
    """One Contact ID report as a receiver printed it."""

    receiver: int
    line: int
    account: str
    qualifier: Qualifier
    code: int
    group: int
    zone: int  # the CCC field: a zone, or a user number for open/close, duress, cancel

    @property
    def kind(self) -> EventKind:
        return kind_of_code(self.code)

    def event_data(self) -> dict[str, JsonValue]:
        name = CONTACT_ID_CODES.get(self.code, ("Contact ID event", EventKind.PANEL_EVENT))[0]
        return {
            "protocol": "contact_id",
            "code": self.code,
            "code_name": name,
            "qualifier": self.qualifier,
            "account": self.account,
            "group": self.group,
            ("user" if names_a_user(self.code) else "zone"): self.zone,
            "receiver": self.receiver,
            "line": self.line,
        }


class SurGardCodec(BufferedCodec):
    """Sans-I/O decoder of Sur-Gard automation output; replies ACK/NAK as the receiver expects."""

    heartbeat_query = b""  # the receiver sends its own heartbeats
    TERMINATORS: tuple[int, ...] = (DC4,)
    REPORT = _REPORT
    NAME = "Sur-Gard Contact ID report or heartbeat"

    def feed(self, data: bytes) -> list[Decoded]:
        self._buffer += data
        out: list[Decoded] = []
        while True:
            end = min((i for i in (self._buffer.find(t) for t in self.TERMINATORS) if i >= 0), default=-1)
            if end < 0:
                if len(self._buffer) > MAX_LINE_BYTES:  # no terminator in sight: drop, stay bounded
                    raw = bytes(self._buffer)
                    self._buffer.clear()
                    out.append(self._reject(raw, f"{len(raw)} bytes without a terminator", reply=b""))
                return out
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            out.append(self._line(raw))

    def _line(self, raw: bytes) -> Decoded:
        line = raw.lstrip(LINE_NOISE)
        if len(line) > MAX_LINE_BYTES:
            line = line[-MAX_LINE_BYTES:]  # a valid line can only be the tail
        if match := self.REPORT.search(line):
            self._count_garbage(raw, match)
            self.stats.frames_ok += 1
            report = ContactIdReport(
                receiver=int(match["rr"]),
                line=int(match["line"]),
                account=match["acct"].decode(),
                qualifier=QUALIFIERS[match["q"]],
                code=int(match["code"]),
                group=int(match["group"]),
                zone=int(match["zone"]),
            )
            return Decoded(report, ACK, raw=raw)
        if match := _HEARTBEAT.search(line):
            self._count_garbage(raw, match)
            self.stats.frames_ok += 1
            return Decoded(None, ACK, raw=raw)
        return self._reject(raw, f"not a {self.NAME}", reply=NAK)

    def _count_garbage(self, raw: bytes, match: re.Match[bytes]) -> None:
        """Bytes before a good frame on its line (noise aside) are counted as rejected."""
        self.stats.bytes_rejected += len(raw.lstrip(LINE_NOISE)) - (match.end() - match.start())


class Ademco685Codec(SurGardCodec):
    """Sans-I/O decoder of "Ademco 685" receiver output (reports end in CR, heartbeats in DC4)."""

    TERMINATORS = (CR, DC4)
    REPORT = _ADEMCO_685
    NAME = "Ademco 685 Contact ID report or heartbeat"
