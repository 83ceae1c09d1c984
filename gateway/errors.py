"""The gateway's errors: one base that a caller can catch by kind (a config error, the outbox
unavailable or full, the writer stopped, the broker refusing, the modem failing, a command
refused, the station failing). `advice` is what a technician can do on site; it is part of the
message too, which is what the journal shows."""

from __future__ import annotations

__all__ = ["GatewayError"]


class GatewayError(Exception):
    """Base of the gateway's own errors."""

    def __init__(self, message: str = "", advice: str = "") -> None:
        super().__init__(f"{message}; {advice}" if message and advice else message or advice)
        self.advice = advice
