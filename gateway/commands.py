"""Downlink commands: everything the platform may ask of a station, in one table.

The uplink only carries them: it hands each message on `{prefix}/{station}/cmd/<name>` to
`CommandTable.answer` and publishes the reply. Here a payload is checked (size, JSON, the
correlation id, the command's model) and passed, typed, to the one handler of its name; the
station (gateway/app.py) supplies the handlers. The contract is in docs/mqtt.md ("Downlink
commands").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.config import key_path
from gateway.errors import GatewayError
from gateway.events import ULID_PATTERN
from gateway.i18n import _

__all__ = [
    "COMMANDS",
    "MAX_COMMAND_BYTES",
    "SIGNATURE_WINDOW_S",
    "AckCommand",
    "CommandAuth",
    "CommandRefused",
    "CommandTable",
    "Handler",
    "NonceBook",
    "PingCommand",
    "ResolveCommand",
    "StatusCommand",
    "TimeCommand",
    "canonical_command",
    "sign_command",
]

log = logging.getLogger("care_gateway.commands")

MAX_COMMAND_BYTES = 4096  # a downlink command is a few hundred bytes; more is refused unread
COMMAND_ID_RULE = "a string of 1-64 printable characters"


class CommandRefused(GatewayError):
    """A command that cannot be carried out; the message is the reply's error."""


def valid_command_id(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 64 and value.isprintable()


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        min_length=1, max_length=64, description=f"correlation id, returned in the reply: {COMMAND_ID_RULE}"
    )

    @field_validator("id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError(f"must be {COMMAND_ID_RULE}")
        return value


class AckCommand(_Command):
    """A person has taken the alarm: stop re-announcing and escalating it."""

    alarm_id: str = Field(pattern=ULID_PATTERN, description="id of the event that raised the alarm")
    by: str = Field(min_length=1, max_length=100, description="who took it")
    note: str | None = Field(None, max_length=500, description="kept in the alarm_update event")


class ResolveCommand(_Command):
    """The alarm is over (the person was visited, or it was a false alarm)."""

    alarm_id: str = Field(pattern=ULID_PATTERN, description="id of the event that raised the alarm")
    by: str = Field(min_length=1, max_length=100, description="who resolved it")
    resolution: Literal["handled", "false_alarm", "test", "other"] = "handled"
    note: str | None = Field(None, max_length=500, description="kept in the alarm_update event")


class TimeCommand(_Command):
    """The platform's time, for a station whose clock is not synchronised (no NTP reachable)."""

    utc: AwareDatetime = Field(description="the platform's current time, RFC 3339 with an offset")


class PingCommand(_Command):
    """Is the station there? Answered at once with its time."""


class StatusCommand(_Command):
    """Publish the retained status message now."""


COMMANDS: dict[str, type[_Command]] = {
    "ack": AckCommand,
    "resolve": ResolveCommand,
    "time": TimeCommand,
    "ping": PingCommand,
    "status": StatusCommand,
}
Handler = Callable[[Any], Awaitable[dict[str, Any]]]  # takes its command's model; raises CommandRefused

COMMAND_LOG_INTERVAL_S = 10.0  # one journal line per kind of command outcome in this time
SIGNATURE_WINDOW_S = 300.0  # a signed command's issued_at may be this far from the station's clock
NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")
SIGNED_FIELDS = ("issued_at", "nonce", "sig")


def canonical_command(name: str, body: Mapping[str, Any]) -> bytes:
    """What is signed: the command name, a newline, and the body without `sig` as JSON with
    sorted keys, no spaces, ASCII escapes (docs/mqtt.md, "Signed commands")."""
    unsigned = {k: v for k, v in body.items() if k != "sig"}
    return f"{name}\n".encode() + json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def sign_command(key: bytes, name: str, body: Mapping[str, Any]) -> str:
    """The `sig` of a command body (which carries its issued_at and nonce): hex HMAC-SHA256."""
    return hmac.new(key, canonical_command(name, body), hashlib.sha256).hexdigest()


class NonceBook(Protocol):
    """Where the nonces of the commands carried out are kept (with the care state, persisted)."""

    def nonce_seen(self, nonce: str) -> bool: ...

    async def remember_nonce(self, nonce: str, issued_at: float) -> None: ...


@dataclass
class CommandAuth:
    """Signed commands, on when the secrets file has a command_key: HMAC-SHA256 over the name
    and the body, fresh (issued_at within SIGNATURE_WINDOW_S of the station's clock, judged
    only while that clock is trusted) and never seen before (the nonce)."""

    key: bytes
    nonces: NonceBook
    now: Callable[[], float]  # the station's clock, epoch seconds
    clock_trusted: Callable[[], bool]
    window_s: float = SIGNATURE_WINDOW_S

    async def check(self, name: str, body: dict[str, Any]) -> None:
        """Raise CommandRefused saying why the command is not the platform's; else note its nonce."""
        sig, nonce, issued = body.get("sig"), body.get("nonce"), body.get("issued_at")
        if not isinstance(sig, str) or not isinstance(nonce, str) or not isinstance(issued, str):
            raise CommandRefused("unsigned: this station carries out only signed commands (sig, nonce, issued_at)")
        if not NONCE_PATTERN.fullmatch(nonce):
            raise CommandRefused("nonce must be 8-64 characters of A-Z, a-z, 0-9, _ and -")
        expected = sign_command(self.key, name, body)
        if not hmac.compare_digest(expected, sig.lower()):
            raise CommandRefused("bad signature (not signed with this station's command_key)")
        try:
            at = datetime.fromisoformat(issued.replace("Z", "+00:00"))
        except ValueError:
            raise CommandRefused("issued_at is not an RFC 3339 time") from None
        if at.tzinfo is None:
            raise CommandRefused("issued_at has no time zone offset")
        skew = at.timestamp() - self.now()
        if self.clock_trusted() and abs(skew) > self.window_s:
            when = "before" if skew < 0 else "after"
            raise CommandRefused(
                f"stale: issued {abs(skew):.0f} s {when} the station's time (allowed: within {self.window_s:.0f} s)"
            )
        if self.nonces.nonce_seen(nonce):
            raise CommandRefused("replayed: this nonce was used before")
        await self.nonces.remember_nonce(nonce, at.timestamp())


class CommandTable:
    """The handler of each command name (every name of COMMANDS, no other)."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        auth: CommandAuth | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if set(handlers) != set(COMMANDS):
            raise ValueError(f"handlers for {sorted(handlers)}, commands are {sorted(COMMANDS)}")
        self._handlers = dict(handlers)
        self.auth = auth
        self._logged: dict[str, tuple[float, int]] = {}  # kind of line -> (when last logged, left out since)
        self._clock = clock  # monotonic seconds, for pacing the journal (None: every line)

    def _may_log(self, which: str) -> bool:
        """At most one journal line per kind of command outcome every COMMAND_LOG_INTERVAL_S
        (a flood of commands is one line, with how many were left out), over a bounded table."""
        if self._clock is None:
            return True
        now = self._clock()
        last, left_out = self._logged.get(which, (-COMMAND_LOG_INTERVAL_S, 0))
        if now - last < COMMAND_LOG_INTERVAL_S:
            self._logged[which] = (last, left_out + 1)
            return False
        if left_out:
            log.warning(_("downlink: %d more command line(s) like the next were left out of the journal"), left_out)
        if len(self._logged) > 64:
            self._logged.clear()
        self._logged[which] = (now, 0)
        return True

    async def answer(self, name: str, payload: object) -> dict[str, Any]:
        """The reply to a command: `{"id", "command", "ok", "result" | "error"}` (ASCII-safe)."""
        reply: dict[str, Any] = {"id": None, "command": name[:40], "ok": False}
        try:
            raw = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
            if len(raw) > MAX_COMMAND_BYTES:
                raise CommandRefused(f"payload of {len(raw)} bytes is over the {MAX_COMMAND_BYTES}-byte limit")
            body = _json_object(raw)
            if not valid_command_id(body.get("id")):
                raise CommandRefused(f"id must be {COMMAND_ID_RULE}")
            reply["id"] = body["id"]
            model = COMMANDS.get(name)
            if model is None:
                raise CommandRefused(f"unknown command {name[:40]!r} (known: {', '.join(COMMANDS)})")
            if self.auth is not None:
                await self.auth.check(name, body)
            try:
                command = model.model_validate({k: v for k, v in body.items() if k not in SIGNED_FIELDS})
            except ValidationError as exc:
                problems = "; ".join(f"{key_path(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
                raise CommandRefused(f"invalid {name} command: {problems}") from exc
            result = await self._handlers[name](command)
            reply.update(ok=True, result=result)
            if self._may_log(f"ok:{name}"):
                log.info(_("downlink command %s (id %s) carried out: %s"), name, ascii(reply["id"]), ascii(result))
        except CommandRefused as exc:
            reply["error"] = str(exc)
            if self._may_log(f"refused:{name[:40]}"):
                log.warning(
                    _("downlink command %s (id %s) refused: %s"), ascii(name[:40]), ascii(reply["id"]), ascii(str(exc))
                )
        except Exception as exc:  # a bug in a handler must not take the uplink down
            reply["error"] = f"internal error: {type(exc).__name__}"
            log.exception(_("downlink command %r (id %r) failed"), name[:40], reply["id"])
        return reply


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise CommandRefused(f"payload is not JSON: {exc}") from exc
    except RecursionError:  # (thousands of nested brackets: refused, not a traceback per message)
        raise CommandRefused("payload is nested too deeply to be a command") from None
    if not isinstance(body, dict):
        raise CommandRefused("payload is not a JSON object")
    return body
