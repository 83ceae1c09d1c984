"""The import rules of the code base, read from the source (AST), not from a running process.

- the codecs (drivers/) do no I/O: no event loop, port, radio, broker, database, socket, process;
- the per-device rules (gateway/rules.py), the care rules (gateway/care.py), the alarm
  lifecycle (gateway/alarms.py), the care state (gateway/care_state.py) and the command table
  (gateway/commands.py) are pure in the same way, and read no clock of their own (their
  time comes from gateway/clock.py through the station);
- each I/O library has one owner: SQLite gateway/outbox.py, MQTT gateway/uplink.py, bleak
  gateway/ble_link.py, pyserial gateway/serial_link.py;
- product code (drivers/, gateway/) never imports the simulators, except the composition root
  (gateway/__main__.py: the command line resolves the demo and the simulated radio).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_LIBRARIES = {
    "asyncio",
    "serial",
    "serial_asyncio",
    "bleak",
    "aiomqtt",
    "paho",
    "sqlite3",
    "sqlite_utils",
    "socket",
    "subprocess",
    "ssl",
}
OWNERS = {  # library -> the one module that may import it
    "sqlite3": "gateway/outbox.py",
    "sqlite_utils": "gateway/outbox.py",
    "aiomqtt": "gateway/uplink.py",
    "paho": "gateway/uplink.py",
    "bleak": "gateway/ble_link.py",
    "serial": "gateway/serial_link.py",
    "serial_asyncio": "gateway/serial_link.py",
}
COMPOSITION_ROOT = "gateway/__main__.py"


def imports_of(path: Path) -> set[str]:
    """Top-level package names a module imports, anywhere in it (lazy imports count too);
    imports only for type checking (under `if TYPE_CHECKING:`) do not."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            typing_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).glob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", modules("drivers"), ids=rel)
def test_codecs_do_no_io(path: Path) -> None:
    assert not imports_of(path) & IO_LIBRARIES


PURE = ["gateway/rules.py", "gateway/care.py", "gateway/alarms.py", "gateway/care_state.py", "gateway/commands.py"]


@pytest.mark.parametrize("name", PURE)
def test_the_rules_are_pure(name: str) -> None:
    assert not imports_of(ROOT / name) & IO_LIBRARIES
    assert "time" not in imports_of(ROOT / name)  # their time comes from the one clock


@pytest.mark.parametrize("path", modules("gateway", "drivers"), ids=rel)
def test_each_io_library_has_one_owner(path: Path) -> None:
    strays = {lib for lib in imports_of(path) if lib in OWNERS and OWNERS[lib] != rel(path)}
    assert not strays, f"{rel(path)} imports {sorted(strays)}: go through {sorted({OWNERS[s] for s in strays})}"


@pytest.mark.parametrize("path", modules("gateway", "drivers"), ids=rel)
def test_product_code_never_imports_the_simulators(path: Path) -> None:
    if rel(path) == COMPOSITION_ROOT:
        return
    assert "simulators" not in imports_of(path)


def test_the_rules_see_what_they_are_meant_to() -> None:
    """The checker itself: it sees lazy imports and skips type-checking-only ones."""
    assert {"simulators", "functools"} <= imports_of(ROOT / COMPOSITION_ROOT)
    assert "sqlite3" in imports_of(ROOT / "gateway/outbox.py")
    assert "bleak" in imports_of(ROOT / "gateway/ble_link.py")


def test_the_gateways_errors_share_one_base() -> None:
    from gateway.app import StationFailed
    from gateway.commands import CommandRefused
    from gateway.config import ConfigError
    from gateway.errors import GatewayError
    from gateway.modem_link import ModemError
    from gateway.outbox import OutboxFull, OutboxUnavailable, WriterStopped
    from gateway.uplink import PublishRefused

    kinds = (StationFailed, CommandRefused, ConfigError, ModemError, OutboxFull, OutboxUnavailable, WriterStopped)
    assert all(issubclass(kind, GatewayError) for kind in (*kinds, PublishRefused))
    error = GatewayError("the outbox cannot be opened", "check the disk")
    assert (str(error), error.advice) == ("the outbox cannot be opened; check the disk", "check the disk")


@pytest.mark.parametrize(
    "path", [p for p in modules("gateway", "drivers") if p.name not in ("__init__.py", "__main__.py")], ids=rel
)
def test_each_module_says_what_it_offers(path: Path) -> None:
    """`__all__` names the module's API (what other modules and the tests use), and only
    names it defines."""
    tree = ast.parse(path.read_text())
    declared = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    ]
    assert declared, f"{rel(path)} has no __all__"
    defined = {
        name
        for node in tree.body
        for name in (
            [node.name]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            else [t.id for t in node.targets if isinstance(t, ast.Name)]
            if isinstance(node, ast.Assign)
            else [node.target.id]
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            else []
        )
    }
    assert set(declared[0]) <= defined


def test_every_serial_device_the_station_file_can_name_has_a_codec() -> None:
    from typing import get_args

    from gateway.config import RadarModel, ReceiverFormat
    from gateway.serial_link import RADAR_CODECS, RECEIVER_CODECS

    assert set(RECEIVER_CODECS) == set(get_args(ReceiverFormat))
    assert set(RADAR_CODECS) == set(get_args(RadarModel))
