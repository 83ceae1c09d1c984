"""Seeed mmWave radars on a pseudo-terminal, encoded from the datasheets (protocols.md §2).

MR60FDA1 / MR24HPC1 speak "53 59" frames, MR60FDA2 its own TinyFrame-style format. The
simulator answers the gateway's heartbeat (or parameter) queries the way the device does and
plays scripted scenarios: a normal day of movement, a fall followed by stillness, a radar that
stops answering, garbage bursts. Written with literal constants, independently of drivers/.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable

from simulators.harness import PtyDevice

# --- "53 59" frames: 53 59 ctrl cmd lenH lenL data sum 54 43; sum = low byte of the sum before it


def sy(ctrl: int, cmd: int, data: bytes) -> bytes:
    head = bytes([0x53, 0x59, ctrl, cmd, len(data) >> 8, len(data) & 0xFF]) + data
    return head + bytes([sum(head) % 256, 0x54, 0x43])


def sy_heartbeat() -> bytes:
    return sy(0x01, 0x01, b"\x0f")


def sy_presence(present: bool) -> bytes:
    return sy(0x80, 0x01, bytes([1 if present else 0]))


def sy_motion(state: int) -> bytes:  # 0 none, 1 stationary, 2 moving
    return sy(0x80, 0x02, bytes([state]))


def sy_movement(value: int) -> bytes:
    return sy(0x80, 0x03, bytes([value]))


def sy_fall(fallen: bool) -> bytes:
    return sy(0x83, 0x01, bytes([1 if fallen else 0]))


def sy_dwell(still: bool) -> bytes:
    return sy(0x83, 0x05, bytes([1 if still else 0]))


# --- MR60FDA2: 01 idH idL lenH lenL typeH typeL hcs data dcs; checksums are NOT(XOR)


def _not_xor(data: bytes) -> int:
    x = 0
    for b in data:
        x ^= b
    return 0xFF ^ x


def fda2(frame_type: int, data: bytes, frame_id: int = 0) -> bytes:
    head = bytes(
        [0x01, frame_id >> 8, frame_id & 0xFF, len(data) >> 8, len(data) & 0xFF, frame_type >> 8, frame_type & 0xFF]
    )
    head += bytes([_not_xor(head)])
    return head + (data + bytes([_not_xor(data)]) if data else b"")


def fda2_fall(fallen: bool) -> bytes:
    return fda2(0x0E02, bytes([1 if fallen else 0]))


def fda2_presence(present: bool) -> bytes:
    return fda2(0x0F09, bytes([1 if present else 0]))


def fda2_parameters() -> bytes:
    """0E06 parameter dump: height 2.2 m and threshold 0.6 m (LE float32), sensitivity 3 (LE u32)."""
    return fda2(0x0E06, bytes.fromhex("cdcc0c409a99193f03000000"))


SY_HEARTBEAT_QUERY = bytes.fromhex("5359010100010fbe5443")
FDA2_PARAMETER_QUERY = bytes.fromhex("01 00 00 00 00 0E 06 F6")  # protocols.md §2.2 "get parameters"


class RadarSim(PtyDevice):
    """A radar on a pty. `path` is the port the gateway opens."""

    def __init__(self, model: str = "mr60fda1") -> None:
        if model not in ("mr60fda1", "mr24hpc1", "mr60fda2"):
            raise ValueError(f"unknown radar model {model!r}")
        super().__init__()
        self.model = model
        self.answering = True  # False: a radar that stopped answering (and reporting)
        self.queries = 0
        self._inbox = bytearray()

    def _received(self, data: bytes) -> None:
        self._inbox += data
        query = SY_HEARTBEAT_QUERY if self.model != "mr60fda2" else FDA2_PARAMETER_QUERY
        while (i := self._inbox.find(query)) >= 0:
            del self._inbox[: i + len(query)]
            self.queries += 1
            if self.answering:
                self.write(sy_heartbeat() if self.model != "mr60fda2" else fda2_parameters())
        if len(self._inbox) > 4096:
            self._inbox.clear()

    def write(self, data: bytes) -> None:
        if self.plugged and self.answering:
            os.write(self._master, data)

    def garbage(self, n: int, rng: random.Random | None = None) -> None:
        """Line noise: n random bytes (written even when not 'answering')."""
        rng = rng or random.Random()
        if self.plugged:
            os.write(self._master, bytes(rng.randrange(256) for _ in range(n)))

    # what the radar reports; FDA2 has only fall and presence
    def presence(self, present: bool) -> None:
        self.write(fda2_presence(present) if self.model == "mr60fda2" else sy_presence(present))

    def motion(self, state: int) -> None:
        if self.model != "mr60fda2":
            self.write(sy_motion(state))

    def movement(self, value: int) -> None:
        if self.model != "mr60fda2":
            self.write(sy_movement(value))

    def fall(self, fallen: bool) -> None:
        self.write(fda2_fall(fallen) if self.model == "mr60fda2" else sy_fall(fallen))

    def dwell(self, still: bool) -> None:
        if self.model != "mr60fda2":
            self.write(sy_dwell(still))


async def normal_day(sim: RadarSim, seconds: float, rng: random.Random) -> None:
    """Someone comes and goes, moves and rests; movement reported once a second."""
    sim.presence(True)
    for t in range(int(seconds)):
        if t % 20 == 0:
            sim.motion(rng.choice([1, 2]))
        sim.movement(rng.randrange(5, 60))
        await asyncio.sleep(1)
    sim.motion(0)
    sim.presence(False)


async def fall_then_still(sim: RadarSim, seconds_still: float = 3.0) -> None:
    """Moving, then a fall, then no movement at all: the residence alarm confirms it."""
    sim.presence(True)
    sim.motion(2)
    await asyncio.sleep(0.5)
    sim.fall(True)
    sim.motion(1)
    await asyncio.sleep(seconds_still)
    sim.dwell(True)


async def stops_answering(sim: RadarSim, after_s: float) -> None:
    await asyncio.sleep(after_s)
    sim.answering = False


async def garbage_bursts(sim: RadarSim, bursts: int, size: int, rng: random.Random) -> None:
    for _ in range(bursts):
        sim.garbage(size, rng)
        await asyncio.sleep(0.5)


SCENARIOS: dict[str, Callable[[RadarSim, random.Random], Awaitable[None]]] = {
    "day": lambda sim, rng: normal_day(sim, 60, rng),
    "fall": lambda sim, rng: fall_then_still(sim),
    "silent": lambda sim, rng: stops_answering(sim, 10),
    "garbage": lambda sim, rng: garbage_bursts(sim, 20, 512, rng),
}


async def play(model: str, scenario: str, seed: int = 1) -> None:
    sim = RadarSim(model)
    sim.start()
    print(
        f'{model} radar on {sim.path}  (configure: kind = "mmwave_radar", model = "{model}", '
        f'port = "{sim.path}"); scenario {scenario}',
        flush=True,
    )
    try:
        await SCENARIOS[scenario](sim, random.Random(seed))
        print(f"scenario done; answered {sim.queries} queries; Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()
    finally:
        sim.close()
