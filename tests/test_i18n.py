"""The message catalogs: every technician-facing string marked, zh_CN complete and compiled."""

from __future__ import annotations

import ast
import gettext
import os
import re
import subprocess
import sys
from pathlib import Path

from babel.messages.pofile import read_po

from gateway.i18n import DOMAIN, LOCALE_DIR

ROOT = Path(__file__).parent.parent
PO = LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / f"{DOMAIN}.po"
MO = PO.with_suffix(".mo")
LOG_LEVELS = {"info", "warning", "error", "critical", "exception"}  # (debug is for developers)
# modules whose print() output a technician reads (the CLI, doctor, the demo's narration)
PRINTING = [ROOT / "gateway" / "__main__.py", ROOT / "gateway" / "doctor.py", ROOT / "simulators" / "demo.py"]
NOT_PROSE = {"  gateway | {line}", "\n=== {text}"}  # (a prefix to another's text)
BRACES = re.compile(r"\{(\w*)[^{}]*\}")
PERCENT = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(?:\d+|\*)?(?:\.\d+)?[diouxXeEfFgGcrsa%]")


def extracted(tmp_path: Path) -> set[str]:
    pot = tmp_path / "messages.pot"
    subprocess.run(
        [
            Path(sys.executable).with_name("pybabel"),
            "extract",
            "-F",
            ROOT / "babel.cfg",
            "-k",
            "N_",
            "--no-location",
            "-o",
            pot,
            ROOT,
        ],
        check=True,
        capture_output=True,
    )
    with pot.open("rb") as fh:
        return {m.id for m in read_po(fh) if m.id}


def catalog() -> dict[str, str]:
    with PO.open("rb") as fh:
        return {m.id: m.string for m in read_po(fh) if m.id and not m.fuzzy}


def test_every_marked_message_has_its_chinese_translation(tmp_path: Path) -> None:
    marked = extracted(tmp_path)
    zh = catalog()
    assert len(marked) > 400
    missing = sorted(m for m in marked if not zh.get(m))
    assert missing == [], f"{len(missing)} message(s) without a zh_CN translation; see docs/i18n.md: {missing[:5]}"
    stale = sorted(set(zh) - marked)
    assert stale == [], f"the catalog holds messages the code no longer has (pybabel update): {stale[:5]}"


def test_translations_keep_every_placeholder() -> None:
    """A {name} lost or a %s out of order would raise, or say the wrong thing, in the field."""
    for english, chinese in catalog().items():
        assert sorted(BRACES.findall(english)) == sorted(BRACES.findall(chinese)), (english, chinese)
        assert PERCENT.findall(english) == PERCENT.findall(chinese), (english, chinese)


def test_the_compiled_catalog_is_the_catalog() -> None:
    with MO.open("rb") as fh:
        compiled = gettext.GNUTranslations(fh)
    zh = catalog()
    assert {m: compiled.gettext(m) for m in zh} == zh, "gateway/locale: run pybabel compile (docs/i18n.md)"


def _is_prose(node: ast.expr) -> bool:
    """Literal English a technician would read: a str constant or an f-string with words."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(re.search(r"[A-Za-z]{2}", node.value))
    if isinstance(node, ast.JoinedStr):
        text = "".join(
            part.value if isinstance(part, ast.Constant) else "{" + ast.unparse(part.value) + "}"  # type: ignore[attr-defined]
            for part in node.values
        )
        return text not in NOT_PROSE and bool(re.search(r"[A-Za-z]{2}", re.sub(r"\{[^}]*\}", "", text)))
    return False


def _marked(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_"


def test_journal_lines_and_printed_text_are_marked_for_translation() -> None:
    unmarked = []
    for path in [*sorted((ROOT / "gateway").glob("*.py")), ROOT / "simulators" / "demo.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func, first = node.func, node.args[0]
            is_log = (
                isinstance(func, ast.Attribute)
                and func.attr in LOG_LEVELS
                and isinstance(func.value, ast.Name)
                and func.value.id in ("log", "logging")
            )
            is_print = path in PRINTING and isinstance(func, ast.Name) and func.id in ("print", "_say")
            if (is_log and not _marked(first)) or (is_print and _is_prose(first)):
                unmarked.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert unmarked == []


def _check_config(path: Path, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")}
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--skip-files", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**clean, **env},
    )
    assert run.returncode == 1
    return run.stderr.splitlines()


def test_a_chinese_technician_reads_chinese_and_the_station_file_can_say_so(tmp_path: Path) -> None:
    station = tmp_path / "station.toml"
    village = (ROOT / "config" / "village.toml").read_text(encoding="utf-8")
    station.write_text(village.replace("baudrate = 9600", "baudrate = 9601", 1), encoding="utf-8")
    english = "baudrate: 9601 is not allowed (allowed: 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)"
    chinese = "baudrate: 不允许 9601（允许：1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200）"
    assert _check_config(station, LANG="zh_CN.UTF-8")[0].endswith(chinese)
    assert _check_config(station, LANG="C.UTF-8")[0].endswith(english)
    assert _check_config(station, LANG="en_GB.UTF-8", LANGUAGE="zh_CN:en")[0].endswith(chinese)
    pinned = village.replace('# language = "zh_CN"', 'language = "en"', 1)
    pinned = pinned.replace("baudrate = 9600", "baudrate = 9601", 1)
    assert 'language = "en"' in pinned
    station.write_text(pinned, encoding="utf-8")
    assert _check_config(station, LANG="zh_CN.UTF-8")[0].endswith(english)  # the station file wins
    station.write_text(pinned.replace('language = "en"', 'language = "zh_CN"'), encoding="utf-8")
    assert _check_config(station, LANG="C.UTF-8")[0].endswith(chinese)
