"""Device codecs: pure, sans-I/O translators between device bytes and typed readings.

The contract every codec keeps (see ARCHITECTURE.md, "Rules of the road"):

- `feed(data)` takes whatever bytes arrived (a fragment, many frames, garbage) and returns the
  units it could complete, in order, as `Decoded` values. It never raises, buffers partial
  frames, bounds every length and resynchronises on garbage.
- It never touches a port, the clock, a logger or the database; the shell does.
- `stats` counts what was accepted and what was rejected, for the status message.

`Decoded.reply` is what the device expects back. The shell writes it only **after** the
reading has been committed to the outbox (an ACK is a promise that the event is safe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "BufferedCodec",
    "Codec",
    "CodecStats",
    "Decoded",
]


@dataclass(frozen=True)
class Decoded:
    """One unit recognised in the byte stream.

    reading: a typed reading (each codec documents its types), or None (a heartbeat the
      device expects an answer to, a frame of no interest, or a rejected frame).
    reply: bytes to send back once the reading (if any) is committed; b"" for silence.
    error: why the unit was rejected, or None when it was good.
    raw: the bytes of the unit, for the log of a rejection.
    """

    reading: object | None
    reply: bytes
    error: str | None = None
    raw: bytes = b""


@dataclass
class CodecStats:
    frames_ok: int = 0
    frames_rejected: int = 0
    bytes_rejected: int = 0


class BufferedCodec:
    """What every codec here shares: a bounded input buffer and the counters of what it rejected."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.stats = CodecStats()

    def _drop(self, n: int) -> None:
        """Discard n bytes of garbage from the front of the buffer, counting them."""
        if n > 0:
            self.stats.bytes_rejected += n
            del self._buffer[:n]

    def _reject(self, raw: bytes, why: str, reply: bytes = b"") -> Decoded:
        """A unit that is not a valid frame: counted, and returned for the shell to log (and answer)."""
        self.stats.frames_rejected += 1
        self.stats.bytes_rejected += len(raw)
        return Decoded(None, reply, error=why, raw=raw)


class Codec(Protocol):
    stats: CodecStats
    heartbeat_query: bytes  # what the gateway sends on a timer to see the device is alive (b"": none)

    def feed(self, data: bytes) -> list[Decoded]: ...
