"""A Sur-Gard MLR2-style alarm receiver on a pseudo-terminal (shared/protocols.md §1.3).

It prints Contact ID reports as the receiver's automation output does and expects the
computer's ACK (0x06) within 4 s; on NAK (0x15) or silence it resends, 3 times, as the real
receiver does. Encoded here from the datasheet, independently of drivers/contact_id.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from simulators.harness import PtyDevice

ACK = 0x06
NAK = 0x15
DC4 = b"\x14"
ACK_DEADLINE_S = 4.0  # MLR2-DG manual p.39: the computer must ACK within 4 s
RESENDS = 3  # then the receiver buffers the report
HEARTBEAT = b"1011" + b" " * 11 + b"@" + b" " * 4 + DC4  # 21 bytes, about every 30 s


def surgard_report(
    account: str = "1234",
    qualifier: str = "E",
    code: int = 101,
    group: int = 1,
    zone: int = 1,
    receiver: int = 1,
    line: int = 1,
) -> bytes:
    """`5RRLs18AAAAQXYZGGCCC<DC4>`: Q is E (new), R (restore) or P (still present)."""
    return f"5{receiver:02d}{line} 18{account}{qualifier}{code:03d}{group:02d}{zone:03d}".encode() + DC4


def ademco685_report(
    account: str = "1234",
    qualifier: str = "E",
    code: int = 101,
    group: int = 1,
    zone: int = 1,
    receiver: int = 1,
    line: int = 1,
    user: bool = False,
) -> bytes:
    """`<LF>RLsAAAAs18sQXYZsGGsUCCC<CR>` (Ademco 685, as the VisorAlarm emulates it); U is C or U."""
    u = "U" if user else "C"
    return f"\n{receiver}{line} {account} 18 {qualifier}{code:03d} {group:02d} {u}{zone:03d}\r".encode()


@dataclass(frozen=True)
class Delivery:
    frame: bytes
    acked: bool
    attempts: int
    ack_latency_s: float | None  # from the last (re)send to the ACK


class ButtonReceiverSim(PtyDevice):
    """The receiver side of a pty; `path` is the port the gateway opens."""

    def __init__(self, ack_deadline_s: float = ACK_DEADLINE_S) -> None:
        super().__init__()
        self.ack_deadline_s = ack_deadline_s
        self._replies: asyncio.Queue[int] = asyncio.Queue()
        self.deliveries: list[Delivery] = []

    def _received(self, data: bytes) -> None:
        for byte in data:
            if byte in (ACK, NAK):
                self._replies.put_nowait(byte)

    async def send(self, frame: bytes) -> Delivery:
        """Send a frame and wait for the ACK, resending on NAK or silence like the receiver."""
        if not self._reading:
            self.start()
        while not self._replies.empty():
            self._replies.get_nowait()
        attempts = 0
        for attempts in range(1, RESENDS + 2):
            sent_at = time.monotonic()
            os.write(self._master, frame)
            try:
                reply = await asyncio.wait_for(self._replies.get(), self.ack_deadline_s)
            except TimeoutError:
                continue
            if reply == ACK:
                delivery = Delivery(frame, True, attempts, time.monotonic() - sent_at)
                self.deliveries.append(delivery)
                return delivery
        delivery = Delivery(frame, False, attempts, None)
        self.deliveries.append(delivery)
        return delivery


SCENARIO = (  # (frame, what it is) played in a loop by `python -m simulators button-receiver`
    (surgard_report(qualifier="E", code=101, zone=1), "SOS pressed (101 new, zone 1)"),
    (surgard_report(qualifier="R", code=101, zone=1), "SOS restored (101 restore)"),
    (HEARTBEAT, "receiver heartbeat"),
    (surgard_report(qualifier="E", code=100, zone=2), "medical alarm (100 new, zone 2)"),
    (surgard_report(qualifier="R", code=100, zone=2), "medical restored"),
    (surgard_report(qualifier="E", code=602, zone=0, group=0), "periodic test (602)"),
    (surgard_report(qualifier="E", code=384, zone=3), "pendant low battery (384)"),
)


def _as_ademco685(frame: bytes) -> bytes:
    """The same report in Ademco 685 form (heartbeats are the same in both formats)."""
    if frame == HEARTBEAT:
        return frame
    text = frame[:-1].decode()
    return ademco685_report(
        account=text[7:11], qualifier=text[11], code=int(text[12:15]), group=int(text[15:17]), zone=int(text[17:20])
    )


async def play(count: int, interval_s: float, fmt: str = "surgard") -> int:
    sim = ButtonReceiverSim()
    print(f'{fmt} button receiver on {sim.path}  (configure: port = "{sim.path}", format = "{fmt}")', flush=True)
    unacked = 0
    try:
        for n in range(count):
            frame, what = SCENARIO[n % len(SCENARIO)]
            if fmt == "ademco685":
                frame = _as_ademco685(frame)
            result = await sim.send(frame)
            state = f"ACK after {result.ack_latency_s * 1000:.0f} ms" if result.ack_latency_s else "NO ACK"
            print(f"{what}: {frame.strip().decode()!r} -> {state} (attempts {result.attempts})", flush=True)
            unacked += not result.acked
            await asyncio.sleep(interval_s)
    finally:
        sim.close()
    return unacked
