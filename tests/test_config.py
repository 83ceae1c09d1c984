"""Station files: the shipped examples load; bad files name file, key path and what is allowed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
EXAMPLES = sorted(CONFIG_DIR.glob("*.toml"))

GOOD = """
[station]
id = "nm-xilin-0012"
name = "Baiyinxile gacha care station"
[uplink]
host = "127.0.0.1"
port = 1883
[storage]
path = "/var/lib/care-gateway/outbox.db"
[[devices]]
id = "button-rx-1"
kind = "contact_id_receiver"
port = "/dev/ttyUSB0"
baudrate = 9600
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "station.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    where = re.compile(rf"^{re.escape(str(path))}(:\d+:\d+)?: ")  # file, then line and column where known
    assert all(where.match(line) for line in info.value.problems), info.value.problems
    return [where.sub("", line) for line in info.value.problems]


def test_examples_exist_and_load() -> None:
    assert {p.name for p in EXAMPLES} >= {"village.toml", "pastoral.toml", "island.toml"}
    for path in EXAMPLES:
        config = load_config(path)
        assert config.devices, path


def test_issue_shape_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "station.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.uplink.topic_prefix == "care/v1"
    assert config.client_id == "care-gw-nm-xilin-0012"
    assert (config.devices[0].bytesize, config.devices[0].parity, config.devices[0].stopbits) == (8, "N", 1)


def test_wrong_values_name_key_path_and_what_is_allowed(tmp_path: Path) -> None:
    text = GOOD.replace("baudrate = 9600", 'baudrate = 9601\nparity = "X"').replace("port = 1883", "port = 70000")
    assert problems(tmp_path, text) == [
        "uplink.port: must be at most 65535 (got 70000) (allowed: broker TCP port, 1-65535)",
        'devices[0] (id = "button-rx-1").baudrate: 9601 is not allowed '
        "(allowed: 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)",
        'devices[0] (id = "button-rx-1").parity: "X" is not allowed (allowed: "N", "E", "O")',
    ]


def test_unknown_and_missing_keys(tmp_path: Path) -> None:
    text = GOOD.replace('name = "Baiyinxile gacha care station"', 'nmae = "typo"').replace(
        'path = "/var/lib/care-gateway/outbox.db"', ""
    )
    assert problems(tmp_path, text) == [
        "station.name: required key is missing (human-readable name, 1-200 characters)",
        "station.nmae: unknown key (allowed keys here: id, name, trust_clock, location, language)",
        "storage.path: required key is missing (path of the outbox database file; its folder must be writable)",
    ]


def test_bad_ids_kinds_and_duplicates(tmp_path: Path) -> None:
    text = GOOD.replace('id = "nm-xilin-0012"', 'id = "NM/0012"').replace('topic_prefix = "care/v1"', "")
    [station_id] = problems(tmp_path, text)
    assert station_id.startswith('station.id: "NM/0012" is not allowed (allowed: station id used in MQTT topics')
    assert problems(tmp_path, GOOD.replace('kind = "contact_id_receiver"', 'kind = "contactid"')) == [
        'devices[0] (id = "button-rx-1").kind: "contactid" is not allowed (allowed: "contact_id_receiver", '
        '"mmwave_radar", "gps", "ble_pendant", "ble_wristband", "ble_health", "caregiver_badge")'
    ]
    twice = GOOD + GOOD[GOOD.index("[[devices]]") :].replace("ttyUSB0", "ttyUSB1")
    assert problems(tmp_path, twice) == [
        'devices: devices[0] and devices[1] have the same id "button-rx-1"; each device needs its own id'
    ]


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    assert problems(tmp_path, GOOD.replace("port = 1883", "port 1883")) == [
        "TOML syntax error: expected '=' after the key (key = value)"
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.problems[0].startswith(f"{tmp_path / 'absent.toml'}: cannot read the file: [Errno 2]")


def test_check_config_cli_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("baudrate = 9600", "baudrate = 9601"))
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--skip-files", str(bad), *map(str, EXAMPLES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    assert run.stderr.splitlines() == [
        f'{bad}:14:1: devices[0] (id = "button-rx-1").baudrate: 9601 is not allowed '
        "(allowed: 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)"
    ]
    assert [line.split(":")[0] for line in run.stdout.splitlines()] == [str(p) for p in EXAMPLES]
    ok = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--skip-files", *map(str, EXAMPLES)], check=False
    )
    assert ok.returncode == 0


def test_run_with_bad_config_exits_78_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("port = 1883", "port = 0"))
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 78
    assert "Traceback" not in run.stderr
    assert f"{bad}:7:1: uplink.port: must be at least 1 (got 0)" in run.stderr


RESIDENTS = """
[[residents]]
id = "wang"
name = "王秀英"
quiet_hours = ["12:00-14:00", "13:30-15:00", "22:00-06:00", "05:00-05:30"]
[[residents.contacts]]
name = "王小明"
phone = "12345"
role = "family"
[[residents.contacts]]
name = "李医生"
phone = "+8613900139000"
role = "priest"
[residents.vitals]
spo2_min = 120
[care]
timezone = "Mars/Olympus"
"""


def test_residents_contacts_and_care_are_checked_with_key_paths(tmp_path: Path) -> None:
    text = GOOD.replace("baudrate = 9600", 'baudrate = 9600\nresidents = { "3" = "wang", "4" = "li" }')
    text += '[[devices]]\nid = "band"\nkind = "ble_wristband"\naddress = "AA:BB:CC:DD:EE:FF"\nresident = "zhao"\n'
    found = problems(tmp_path, text + RESIDENTS)
    assert found == [
        'residents[0] (id = "wang").vitals.spo2_min: must be at most 100 (got 120) (allowed: SpO2 percent '
        "below which to alarm)",
        'residents[0] (id = "wang").contacts[0] (name = "王小明").phone: "12345" is not allowed (allowed: an '
        "international number such as +8613800138000, or an 11-digit mainland mobile number)",
        'residents[0] (id = "wang").contacts[1] (name = "李医生").role: "priest" is not allowed (allowed: "family", '
        '"village_doctor", "on_duty", "neighbour", "volunteer")',
        "care.timezone: unknown time zone \"Mars/Olympus\"; use an IANA name such as 'Asia/Shanghai'",
    ]
    fixed = (
        RESIDENTS.replace('"12345"', '"13800138000"')
        .replace('"priest"', '"village_doctor"')
        .replace("spo2_min = 120", "spo2_min = 90")
        .replace("Mars/Olympus", "Asia/Shanghai")
    )
    assert problems(tmp_path, text + fixed) == [
        'residents[0] (id = "wang").quiet_hours[1]: "13:30-15:00" overlaps quiet_hours[0] "12:00-14:00" (allowed: '
        "periods that do not overlap)",
        'residents[0] (id = "wang").quiet_hours[3]: "05:00-05:30" overlaps quiet_hours[2] "22:00-06:00" (allowed: '
        "periods that do not overlap)",
        'devices[0] (id = "button-rx-1").residents.4: "li" is not a resident (allowed: resident ids from '
        "[[residents]]: wang)",
        'devices[1] (id = "band").resident: "zhao" is not a resident (allowed: resident ids from [[residents]]: wang)',
    ]
    path = tmp_path / "ok.toml"
    path.write_text(
        text.replace('"4" = "li"', '"4" = "wang"').replace('"zhao"', '"wang"')
        + fixed.replace('"13:30-15:00", ', "").replace('"05:00-05:30"', '"06:00-06:30"')
    )
    config = load_config(path)
    assert config.residents[0].contacts[0].international == "+8613800138000"


def test_the_device_kind_registry_is_one_list() -> None:
    from typing import get_args

    from gateway.config import BLE_KINDS, DEVICE_MODELS, SERIAL_KINDS, BleDevice, SerialDevice

    assert get_args(SerialDevice) == SERIAL_KINDS
    assert get_args(BleDevice) == BLE_KINDS
    assert list(DEVICE_MODELS.values()) == [*SERIAL_KINDS, *BLE_KINDS]
    assert set(DEVICE_MODELS) == {
        "contact_id_receiver",
        "mmwave_radar",
        "gps",
        "ble_pendant",
        "ble_wristband",
        "ble_health",
        "caregiver_badge",
    }


def test_a_disk_reserve_too_small_or_mistyped_is_named_with_what_is_allowed(tmp_path: Path) -> None:
    storage = 'path = "/var/lib/care-gateway/outbox.db"'
    [small] = problems(tmp_path, GOOD.replace(storage, f"{storage}\ndisk_reserve_bytes = 1024"))
    assert small.startswith("storage.disk_reserve_bytes: ")
    assert "2097152" in small  # the least it may be
    [typo] = problems(tmp_path, GOOD.replace(storage, f"{storage}\ndisk_reserve_byte = 8388608"))
    assert typo.startswith("storage.disk_reserve_byte")


def test_check_config_warns_of_a_resident_the_care_rules_cannot_watch(tmp_path: Path) -> None:
    village = (Path(__file__).parent.parent / "config" / "village.toml").read_text()
    assert "lives_alone = false" in village
    station = tmp_path / "village.toml"
    station.write_text(village.replace("lives_alone = false", "lives_alone = true"))  # zhao-shulan: a button only
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--skip-files", str(station)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0  # valid: the warning says what the station will not do
    assert run.stdout.splitlines()[1:] == [
        f"{station}: warning: resident 'zhao-shulan' lives alone, but no device of theirs shows activity (a radar, "
        "or a wristband or pendant with reports_motion = true): inactivity is not watched for them; give them one "
        '(resident = "zhao-shulan")'
    ]


def test_errors_point_at_the_line_and_name_full_width_punctuation(tmp_path: Path) -> None:
    """What a Chinese keyboard types (“ ” ＝) is named with its column and the ASCII to type;
    a wrong value names its line, the device's id, and every allowed value."""
    path = tmp_path / "station.toml"
    path.write_text(GOOD.replace('name = "Baiyinxile gacha care station"', "name = “白音锡勒”"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[1:] == [
        f"{path}:4:8: '“' is full-width punctuation (a Chinese keyboard): type the ASCII '\"' instead",
        f"{path}:4:13: '”' is full-width punctuation (a Chinese keyboard): type the ASCII '\"' instead",
    ]
    assert info.value.problems[0].startswith(f"{path}:4:8: TOML syntax error: ")
    path.write_text(GOOD.replace("port = 1883", "port ＝ 1883"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}:7:6: '＝' is full-width punctuation (a Chinese keyboard): type the ASCII '=' instead" in (
        info.value.problems
    )
    zone = GOOD.replace("baudrate = 9600", 'baudrate = 9600\nresidents = { "x3" = "wang" }')
    [wrong_key] = problems(tmp_path, zone)
    assert wrong_key.startswith('devices[0] (id = "button-rx-1").residents.x3: the key "x3" is not allowed (allowed: ')
    assert "keys are 1-3 digit numbers" in wrong_key
    path.write_text(zone)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}:15:15: ")  # the key inside the inline table


def test_the_language_comes_from_the_station_file_else_the_environment() -> None:
    from gateway.i18n import language_from_environment, normalise, use_language

    assert [normalise(n) for n in ("zh_CN.UTF-8", "zh-cn", "zh_TW", "en_GB.UTF-8", "C.UTF-8", "POSIX", "", "de")] == [
        "zh_CN", "zh_CN", "zh_CN", "en", None, None, None, None,
    ]  # fmt: skip
    assert language_from_environment({"LANG": "zh_CN.UTF-8"}) == "zh_CN"
    assert language_from_environment({"LC_ALL": "C", "LANG": "zh_CN.UTF-8"}) is None  # the first set decides
    assert language_from_environment({"LANGUAGE": "fr:zh_CN", "LANG": "en_US.UTF-8"}) == "zh_CN"
    assert language_from_environment({"LANG": "\x1b[31m"}) is None
    try:
        assert use_language("zh_CN") == "zh_CN"
    finally:
        use_language()
