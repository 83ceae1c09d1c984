"""Care rules of the whole station (CareBook), with a fake clock and no I/O."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import JsonValue

from drivers.contact_id import ContactIdReport, Qualifier
from drivers.gatt import HeartRate, Measurement, OximeterReading, Temperature
from gateway.alarms import Alarm
from gateway.care import CareBook
from gateway.care_state import CARE_STATE_VERSION, ButtonWatch, CareState, DeviceWatch, ResidentWatch, VitalWatch
from gateway.clock import Clock
from gateway.config import StationConfig, parse_config
from gateway.events import Event, EventKind, new_event
from gateway.rules import EventDraft, HealthRules, Seen, Supervised, WearableRules
from tests.conftest import assert_published_contract

START = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai: waking hours


def report(code: int, zone: int, qualifier: Qualifier = "new") -> tuple[EventKind, dict[str, JsonValue]]:
    """A receiver's Contact ID report as its rules hand it on (the codec's own fields)."""
    decoded = ContactIdReport(receiver=1, line=1, account="1234", qualifier=qualifier, code=code, group=1, zone=zone)
    return decoded.kind, decoded.event_data()


SOS = report(101, 3)


def config(**care: Any) -> StationConfig:
    raw: dict[str, Any] = {
        "station": {"id": "st-1", "name": "草原站"},
        "uplink": {"host": "127.0.0.1"},
        "storage": {"path": "/tmp/unused.db"},
        "care": {"storm_window_s": 120, "alarm_update_interval_s": 30, "ack_timeout_s": 300, **care},
        "residents": [
            {
                "id": "wang",
                "name": "王秀英",
                "room": "3号楼201室",
                "lives_alone": True,
                "dementia_risk": True,
                "waking_hours": "07:00-21:00",
                "quiet_hours": ["12:00-14:00"],
                "inactivity_s": 3600,
                "absent_after_s": 1800,
                "vitals": {"heart_rate_max": 120, "min_duration_s": 60},
                "contacts": [{"name": "王小明", "phone": "13800138000", "role": "family"}],
            }
        ],
        "devices": [
            {"id": "rx", "kind": "contact_id_receiver", "port": "/dev/null", "residents": {"3": "wang"}},
            {"id": "radar", "kind": "mmwave_radar", "port": "/dev/null2", "model": "mr60fda1", "resident": "wang"},
            {
                "id": "band",
                "kind": "ble_wristband",
                "address": "AA:BB:CC:DD:EE:01",
                "resident": "wang",
                "supervision_s": 300,  # it advertises periodically: its silence means the wearer is away
            },
            {
                "id": "hr",
                "kind": "ble_health",
                "address": "AA:BB:CC:DD:EE:02",
                "profile": "heart_rate",
                "resident": "wang",
            },
        ],
    }
    return parse_config(raw)


class Book:
    """A CareBook with a clock the test moves, and everything it asked to persist."""

    def __init__(self, cfg: StationConfig | None = None, state: dict[str, JsonValue] | None = None) -> None:
        self.cfg = cfg or config()
        self.now = START
        clock = Clock("always")
        self.book = CareBook(self.cfg, lambda device, kind, data: new_event(clock, "st-1", device, kind, data))
        self.book.load(state or {})
        self.saved: dict[str, JsonValue] = dict(state or {})

    def _checked(self, events: list[Event]) -> list[Event]:
        """Every event the care rules make is valid under the published schema."""
        assert_published_contract(e.model_dump(mode="json") for e in events)
        return events

    def _persist(self) -> None:
        for key, value in self.book.take_changes().items():
            if value is None:
                self.saved.pop(key, None)
            else:
                self.saved[key] = value

    def feed(self, device: str, *drafts: EventDraft | tuple[EventKind, dict[str, JsonValue]]) -> list[Event]:
        out = self.book.triage(device, [EventDraft(*draft) for draft in drafts], self.now)
        self._persist()
        return self._checked(out)

    def wait(self, seconds: float) -> list[Event]:
        """Move the clock in steps of one second, ticking as the station does."""
        out: list[Event] = []
        end = self.now + timedelta(seconds=seconds)
        while self.now < end:
            self.now = min(end, self.now + timedelta(seconds=1))
            out += self.book.tick(self.now)
        self._persist()
        return self._checked(out)

    def jump(self, seconds: float) -> list[Event]:
        """Move the clock at once, then tick (for hours and days)."""
        self.now += timedelta(seconds=seconds)
        out = self.book.tick(self.now)
        self._persist()
        return self._checked(out)

    def restarted(self) -> Book:
        """A new CareBook that starts from what this one persisted (a daemon restart)."""
        again = Book(self.cfg, self.saved)
        again.now = self.now
        return again


def kinds(events: list[Event]) -> list[str]:
    return [e.kind.value for e in events]


def test_a_storm_of_presses_is_one_alarm_with_its_count() -> None:
    b = Book()
    first = b.feed("rx", SOS)
    assert kinds(first) == ["sos"]
    assert first[0].data["resident"] == "wang"
    later: list[Event] = []
    for _ in range(9):
        b.now += timedelta(seconds=5)
        later += b.feed("rx", SOS)
    assert kinds(later) == ["alarm_update"]  # one count update per 30 s, not nine alarms
    t0 = START.timestamp()
    assert list(b.book.alarms.values()) == [
        Alarm(
            id=first[0].id,
            kind="sos",
            device_id="rx",
            resident="wang",
            storm_key="wang/button",
            raised_at=t0,
            last_at=t0 + 45,
            count=10,
            count_reported=7,  # the update went out with the 7th press
            update_at=t0 + 30,
            detail={"code_name": "Personal emergency", "qualifier": "new", "zone": 3},
            buttons=["rx:3"],
        )
    ]
    assert later[0].data["count"] == 7  # the update went out with the 7th press (30 s after the first)
    [final] = b.wait(30)  # the last three presses are counted once the interval has passed
    assert (final.kind, final.data["count"], final.data["change"]) == (EventKind.ALARM_UPDATE, 10, "repeated")
    assert b.wait(60) == []
    b.now += timedelta(seconds=121)  # past the storm window: a new alarm
    assert kinds(b.feed("rx", SOS)) == ["sos"]
    assert len(b.book.alarms) == 2


def test_alarm_life_delivered_reannounced_acknowledged_resolved_across_a_restart() -> None:
    b = Book()
    [sos] = b.feed("rx", SOS)
    b.book.alarm_book.delivered(sos.id, b.now)
    assert b.wait(299) == []
    [reminder] = b.wait(2)
    assert reminder.kind is EventKind.ALARM_REMINDER
    assert (reminder.data["alarm_id"], reminder.data["reannouncement"]) == (sos.id, 1)
    assert [a.id for a in b.book.alarm_book.due_escalations(b.now, 60)] == [sos.id]  # a re-announcement is escalated
    b._persist()

    b = b.restarted()  # the daemon restarts in the middle of the alarm's life
    assert b.book.alarms[sos.id].reannounced == 1
    assert kinds(b.wait(301)) == ["alarm_reminder"]
    state, events = b.book.alarm_book.acknowledge(sos.id, "张医生", b.now)
    assert state == "acknowledged"
    assert events[0].data["change"] == "acknowledged"
    assert events[0].data["by"] == "张医生"
    assert b.wait(900) == []  # no more re-announcements once acknowledged
    assert b.book.alarm_book.due_escalations(b.now, 60) == []
    assert b.book.alarm_book.acknowledge(sos.id, "张医生", b.now) == ("acknowledged", [])  # idempotent
    state, events = b.book.alarm_book.resolve(sos.id, "张医生", "handled", b.now)
    assert state == "resolved"
    assert events[0].data["change"] == "resolved"
    b._persist()
    assert not any(key.startswith("alarm:") for key in b.saved)


def test_an_undelivered_alarm_is_escalated_once_after_the_delay() -> None:
    b = Book()
    [sos] = b.feed("rx", SOS)
    assert b.book.alarm_book.due_escalations(b.now + timedelta(seconds=59), 60) == []
    assert [a.id for a in b.book.alarm_book.due_escalations(b.now + timedelta(seconds=60), 60)] == [sos.id]
    assert b.book.alarm_book.due_escalations(b.now + timedelta(seconds=120), 60) == []


def test_a_device_restore_resolves_the_fall() -> None:
    b = Book()
    [fall] = b.feed("radar", (EventKind.FALL, {"qualifier": "new"}))
    still = b.feed("radar", (EventKind.FALL, {"qualifier": "still_present"}))
    assert kinds(still) == ["fall"]
    assert still[0].data["alarm_id"] == fall.id
    restore = b.feed("radar", (EventKind.FALL, {"qualifier": "restore"}))
    assert kinds(restore) == ["fall", "alarm_update"]
    assert restore[1].data["resolution"] == "device_restore"
    assert b.book.alarms == {}


def inactive(b: Book, seconds: float) -> list[Event]:
    return [e for e in b.jump(seconds) if e.kind is EventKind.INACTIVITY]


def test_inactivity_of_a_resident_living_alone_counts_waking_hours_only() -> None:
    b = Book()
    b.jump(0)  # supervision starts at 09:00
    assert inactive(b, 3599) == []
    [alarm] = inactive(b, 15)  # one hour without activity in waking hours
    assert (alarm.kind, alarm.device_id, alarm.data) == (
        EventKind.INACTIVITY,
        "radar",  # the resident's first device
        {
            "resident": "wang",
            "last_activity_at": "2026-11-23T01:00:00Z",
            "inactive_waking_s": 3614,
            "window_s": 3600,
        },
    )
    cleared = b.feed("radar", (EventKind.ACTIVITY, {"presence": True, "motion": "moving"}))
    assert kinds(cleared) == ["activity", "alarm_update"]
    assert cleared[1].data == {
        "alarm_id": alarm.id,
        "alarm_kind": "inactivity",
        "change": "resolved",
        "state": "resolved",
        "count": 1,
        "first_at": "2026-11-23T02:00:14Z",
        "last_at": "2026-11-23T02:00:14Z",
        "resident": "wang",
        "by": "gateway",
        "resolution": "activity",
        "activity_kind": "activity",
    }

    b = Book()
    b.now = datetime(2026, 11, 23, 3, 30, tzinfo=UTC)  # 11:30: the nap (12:00-14:00) does not count
    b.feed("radar", (EventKind.ACTIVITY, {"motion": "moving"}))
    assert inactive(b, 3 * 3600 - 60) == []  # 14:29: only 59 watched minutes
    assert kinds(inactive(b, 120)) == ["inactivity"]

    b = Book()
    b.now = datetime(2026, 11, 23, 12, 30, tzinfo=UTC)  # 20:30, then the night
    b.feed("radar", (EventKind.ACTIVITY, {"motion": "moving"}))
    assert inactive(b, 10 * 3600) == []  # 06:30 next morning: 30 watched minutes
    assert inactive(b, 1200) == []  # 06:50
    assert kinds(inactive(b, 3000)) == ["inactivity"]  # 07:40: 30 + 40 minutes


def test_presence_alone_is_not_activity() -> None:
    b = Book()
    inactive(b, 0)
    b.now += timedelta(seconds=1800)
    b.feed("radar", (EventKind.ACTIVITY, {"presence": True, "motion": "still"}))  # lying still is not activity
    assert kinds(inactive(b, 1815)) == ["inactivity"]


def test_wearer_absent_with_last_place_and_time_then_seen_again() -> None:
    b = Book()
    b.feed("band", (EventKind.PRESENCE, {"state": "present", "rssi": -70}))
    b.now += timedelta(seconds=600)
    b.feed("band", (EventKind.PRESENCE, {"state": "away", "unseen_s": 120}))  # last seen 120 s ago
    out = b.jump(1800 - 120 - 15)
    assert "wearer_absent" not in kinds(out)
    [absent] = [e for e in b.jump(20) if e.kind is EventKind.WEARER_ABSENT]
    assert (absent.device_id, absent.data) == (
        "band",
        {
            "resident": "wang",
            "last_seen_at": "2026-11-23T01:08:00Z",
            "unseen_s": 1805,
            "last_place": "草原站, 3号楼201室",
            "last_rssi": -70,
        },
    )
    back = b.feed("band", (EventKind.PRESENCE, {"state": "present", "rssi": -60}))
    assert kinds(back) == ["presence", "alarm_update"]
    assert (back[1].data["resolution"], back[1].data["device_id"], back[1].data["alarm_id"]) == (
        "wearer_seen",
        "band",
        absent.id,
    )


def measured(reading: Measurement) -> EventDraft:
    """A measurement as the health device's rules hand it on: the event data and the typed reading."""
    [draft] = HealthRules(None).on_reading(reading, 0.0)
    return draft


def heart(bpm: int, contact: bool | None = True) -> EventDraft:
    return measured(HeartRate(bpm, contact, None, ()))


def test_continuous_vitals_need_the_minimum_duration_and_clear_with_hysteresis() -> None:
    b = Book()
    assert kinds(b.feed("hr", heart(130))) == ["vitals"]
    b.now += timedelta(seconds=30)
    assert kinds(b.feed("hr", heart(118))) == ["vitals"]  # back in range: the clock restarts
    b.now += timedelta(seconds=1)
    b.feed("hr", heart(131))
    b.now += timedelta(seconds=59)
    assert kinds(b.feed("hr", heart(135))) == ["vitals"]
    b.now += timedelta(seconds=2)
    out = b.feed("hr", heart(140))
    assert kinds(out) == ["vitals", "vitals_alert"]
    assert out[1].data == {
        "vital": "heart_rate",
        "value": 140,
        "limit_low": 41,  # the default
        "limit_high": 120,
        "measurement": "heart_rate",
        "out_of_range_s": 61,
        "resident": "wang",
    }
    b.now += timedelta(seconds=10)
    assert kinds(b.feed("hr", heart(141))) == ["vitals"]  # still out: no second alarm
    assert kinds(b.feed("hr", heart(117))) == ["vitals"]  # inside the limit, within the 5 bpm band
    assert kinds(b.feed("hr", heart(110))) == ["vitals", "alarm_update"]  # clear of the band: resolved
    assert b.book.alarms == {}


def test_invalid_or_missing_vitals_never_alarm_and_spot_measurements_alarm_at_once() -> None:
    b = Book()
    for _ in range(5):
        b.now += timedelta(seconds=60)
        no_value = measured(OximeterReading(None, None, None, questionable=False, continuous=True))
        assert kinds(b.feed("hr", no_value)) == ["vitals"]
        assert kinds(b.feed("hr", heart(200, contact=False))) == ["vitals"]  # sensor not on the skin
    spot = measured(OximeterReading(85.0, None, None, questionable=False, continuous=False))
    assert kinds(b.feed("hr", spot)) == ["vitals", "vitals_alert"]
    doubtful = measured(Temperature(None, None, None))
    assert kinds(b.feed("hr", doubtful)) == ["vitals"]


def test_low_battery_is_reported_once_until_replaced() -> None:
    b = Book()
    low = b.feed("band", (EventKind.ACTIVITY, {"moving": True, "battery": 19}))
    assert kinds(low) == ["activity", "low_battery"]
    assert low[1].data == {"battery": 19, "limit": 20, "resident": "wang"}
    assert kinds(b.feed("band", (EventKind.ACTIVITY, {"moving": False, "battery": 18}))) == ["activity"]
    b.feed("band", (EventKind.ACTIVITY, {"moving": True, "battery": 95}))  # new battery
    assert kinds(b.feed("band", (EventKind.ACTIVITY, {"moving": False, "battery": 15}))) == ["activity", "low_battery"]


def test_weekly_button_test_and_device_fault_after_two_hours() -> None:
    b = Book(config(button_test_days=7))
    b.jump(0)  # the button's first week starts
    assert "test_overdue" not in kinds(b.jump(7 * 86400 - 60))
    [overdue] = [e for e in b.jump(120) if e.kind is EventKind.TEST_OVERDUE]
    assert (overdue.device_id, overdue.data["button"], overdue.data["zone"]) == ("rx", "rx:3", 3)
    assert overdue.data["resident"] == "wang"
    assert "test_overdue" not in kinds(b.jump(3600))  # reported again a day later, not every tick
    assert "test_overdue" in kinds(b.jump(86400))
    b.feed("rx", report(601, 3))
    assert "test_overdue" not in kinds(b.jump(86400))

    b.feed("radar", (EventKind.DEVICE_OFFLINE, {"reason": "unplugged"}))
    assert "device_fault" not in kinds(b.jump(7200 - 30))
    [fault] = [e for e in b.jump(45) if e.kind is EventKind.DEVICE_FAULT]
    assert fault.device_id == "radar"
    assert fault.data["offline_s"] == 7215
    assert "device_fault" not in kinds(b.jump(7200))
    b.feed("radar", (EventKind.DEVICE_ONLINE, {"reason": "back"}))
    b.feed("radar", (EventKind.DEVICE_OFFLINE, {"reason": "again"}))
    assert "device_fault" in kinds(b.jump(7300))


def test_supervision_of_a_ble_device_reports_offline_and_online() -> None:
    rules = Supervised(WearableRules(presence_timeout_s=1000), window_s=300, started=0.0)
    assert rules.on_reading(Seen(-60), 10.0)[-1][0] is EventKind.PRESENCE
    assert [d[0] for d in rules.on_tick(300.0)] == []
    assert [d[0] for d in rules.on_tick(311.0)] == [EventKind.DEVICE_OFFLINE]
    assert rules.on_tick(400.0) == []
    back = rules.on_reading(Seen(-61), 500.0)
    assert back[0] == EventDraft(EventKind.DEVICE_ONLINE, {"reason": "advertising again after 490 s"})


def test_only_the_button_that_raised_an_alarm_restores_it() -> None:
    cfg = config()
    raw = cfg.model_dump(mode="json")
    raw["devices"][0]["residents"] = {"3": "wang", "4": "wang"}
    b = Book(parse_config(raw))
    [sos] = b.feed("rx", SOS)
    other = b.feed("rx", report(101, 4, "restore"))
    assert kinds(other) == ["sos"]
    assert "alarm_id" not in other[0].data
    assert sos.id in b.book.alarms
    own = b.feed("rx", report(101, 3, "restore"))
    assert kinds(own) == ["sos", "alarm_update"]
    assert own[0].data["alarm_id"] == sos.id
    assert b.book.alarms == {}


def test_every_restore_of_a_press_the_station_saw_names_its_alarm() -> None:
    raw = config().model_dump(mode="json")
    raw["devices"][0]["residents"] = {"3": "wang", "4": "wang"}
    b = Book(parse_config(raw))
    [sos] = b.feed("rx", SOS)
    b.now += timedelta(seconds=5)
    assert b.feed("rx", report(101, 4, "new")) == []  # counted into it
    restore_4 = b.feed("rx", report(101, 4, "restore"))
    assert [(e.kind.value, e.data.get("alarm_id")) for e in restore_4] == [("sos", sos.id)]  # named, not ended
    assert sos.id in b.book.alarms
    state, _ = b.book.alarm_book.resolve(sos.id, "张医生", "handled", b.now)  # the platform resolves it first
    assert state == "resolved"
    restore_3 = b.feed("rx", report(101, 3, "restore"))
    assert [(e.kind.value, e.data.get("alarm_id")) for e in restore_3] == [("sos", sos.id)]  # late, still named


def test_a_button_or_a_press_only_pendant_cannot_show_inactivity_or_absence_and_check_config_says_so() -> None:
    from gateway.care import coverage_warnings

    raw = config().model_dump(mode="json")
    raw["residents"].append({"id": "zhao", "name": "赵", "lives_alone": True, "dementia_risk": True})
    raw["devices"][0]["residents"]["4"] = "zhao"  # a button on the receiver
    raw["devices"].append(
        {"id": "pendant-zhao", "kind": "ble_pendant", "address": "AA:BB:CC:DD:EE:09", "resident": "zhao"}
    )
    b = Book(parse_config(raw))
    b.feed("pendant-zhao", (EventKind.PRESENCE, {"state": "present", "rssi": -70}))
    b.jump(0)
    out = [e for e in b.jump(6 * 3600) + b.jump(6 * 3600) if e.kind in (EventKind.INACTIVITY, EventKind.WEARER_ABSENT)]
    assert [(e.kind.value, e.data["resident"]) for e in out] == [("inactivity", "wang"), ("wearer_absent", "wang")]
    assert coverage_warnings(b.cfg) == [
        "resident 'zhao' lives alone, but no device of theirs shows activity (a radar, or a wristband or pendant "
        'with reports_motion = true): inactivity is not watched for them; give them one (resident = "zhao")',
        "resident 'zhao' has dementia_risk = true, but no wearable of theirs advertises periodically "
        "(supervision_s > 0): wandering away is not watched for them; give them a wristband or a periodic pendant "
        "with supervision_s set",
    ]


def test_inactivity_is_only_judged_for_a_resident_some_device_reports_on() -> None:
    raw = config().model_dump(mode="json")
    raw["residents"].append({"id": "li", "name": "李", "lives_alone": True, "inactivity_s": 3600})
    b = Book(parse_config(raw))
    b.jump(0)
    alarms = [e for e in b.jump(6 * 3600) if e.kind is EventKind.INACTIVITY]
    assert [e.data["resident"] for e in alarms] == ["wang"]  # li has no device: nothing can be seen


# --- the typed care state: what is written, what a restart reads, what an older layout becomes ---


def test_the_care_state_is_typed_and_a_restart_reads_back_the_same_value() -> None:
    b = Book()
    [sos] = b.feed("rx", SOS)
    b.now += timedelta(seconds=5)
    b.feed("rx", SOS)  # counted into the alarm
    b.feed("band", (EventKind.PRESENCE, {"state": "present", "rssi": -70}))
    b.feed("hr", heart(130))
    b.feed("radar", (EventKind.DEVICE_OFFLINE, {"reason": "unplugged"}))
    t0, t5 = START.timestamp(), START.timestamp() + 5
    assert b.book.state == CareState(
        residents={
            "wang": ResidentWatch(
                active_at=t5,
                seen_at=t5,
                seen_rssi=-70,
                present=True,
                vitals={"heart_rate": VitalWatch(since=t5, alarmed=False)},
            )
        },
        buttons={"rx:3": ButtonWatch(tested_at=t5)},
        devices={"radar": DeviceWatch(offline_since=t5)},
        alarms={
            sos.id: Alarm(
                id=sos.id,
                kind="sos",
                device_id="rx",
                resident="wang",
                storm_key="wang/button",
                raised_at=t0,
                last_at=t5,
                count=2,
                update_at=t0,
                detail={"code_name": "Personal emergency", "qualifier": "new", "zone": 3},
                buttons=["rx:3"],
            )
        },
    )
    assert b.saved["version"] == CARE_STATE_VERSION
    assert b.saved["resident:wang"] == {
        "active_at": t5,
        "seen_at": t5,
        "seen_rssi": -70,
        "present": True,
        "vitals": {"heart_rate": {"since": t5, "alarmed": False}},
    }
    assert b.restarted().book.state == b.book.state


def test_a_care_state_of_layout_1_is_migrated_and_rewritten() -> None:
    t = START.timestamp() - 600
    alarm = {"id": "01J0", "kind": "fall", "device_id": "radar", "resident": "wang", "storm_key": "wang/fall"}
    layout_1: dict[str, JsonValue] = {  # as care-gateway wrote it before the layout had a version
        "activity:wang": t,
        "seen:wang": t + 1,
        "seen_rssi:wang": -80,
        "vital:wang:heart_rate": {"since": t + 2, "alarmed": True},
        "test:rx:3": t + 3,
        "overdue:rx:3": t + 4,
        "offline:radar": t + 5,
        "fault:radar": t + 6,
        "battery_low:band": 15,
        "sms:+8613800138000": [t + 7],
        "alarm:01J0": {**alarm, "raised_at": t, "last_at": t, "state": "delivered"},
        "clock:platform_time_boot": "boot-1",
    }
    b = Book(state=layout_1)
    assert b.book.state == CareState(
        residents={
            "wang": ResidentWatch(
                active_at=t, seen_at=t + 1, seen_rssi=-80, vitals={"heart_rate": VitalWatch(t + 2, True)}
            )
        },
        buttons={"rx:3": ButtonWatch(tested_at=t + 3, overdue_reported_at=t + 4)},
        devices={
            "radar": DeviceWatch(offline_since=t + 5, fault_reported_at=t + 6),
            "band": DeviceWatch(battery_low=15),
        },
        sms_sent={"+8613800138000": (t + 7,)},
        alarms={"01J0": Alarm(**{**alarm, "raised_at": t, "last_at": t, "state": "delivered"})},  # type: ignore[arg-type]
        platform_time_boot="boot-1",
    )
    b._persist()  # the next commit: the old rows go, the new ones are written
    assert set(b.saved) == {
        "version",
        "resident:wang",
        "button:rx:3",
        "device:radar",
        "device:band",
        "sms:+8613800138000",
        "alarm:01J0",
        "clock:platform_time_boot",
    }
    assert b.restarted().book.state == b.book.state


def test_an_unreadable_care_state_row_is_left_out_and_named() -> None:
    rows: dict[str, JsonValue] = {
        "version": CARE_STATE_VERSION,
        "resident:wang": {"active_at": "yesterday"},
        "alarm:01J1": {"id": "01J1"},  # fields missing
        "button:rx:3": {"tested_at": 7.0},
        "mystery:1": 1,
    }
    state, problems = CareState.from_rows(rows)
    assert state == CareState(buttons={"rx:3": ButtonWatch(tested_at=7.0)})
    assert problems == [
        "resident:wang: active_at: Input should be a valid number, unable to parse string as a number; left out",
        "alarm:01J1: kind: Field required; left out",
        "mystery:1: not a care-state row this gateway knows; left out",
    ]


def test_a_rollback_gives_back_the_state_of_the_checkpoint_and_its_unwritten_rows() -> None:
    b = Book()
    b.feed("rx", SOS)
    before = copy.deepcopy(b.book.state)
    checkpoint = b.book.checkpoint()
    b.now += timedelta(seconds=5)
    b.book.triage("rx", [EventDraft(*SOS)], b.now)  # counted, then the commit fails
    b.book.triage("radar", [EventDraft(EventKind.FALL, {"qualifier": "new"})], b.now)
    assert b.book.state != before
    b.book.rollback(checkpoint)
    assert b.book.state == before
    assert b.book.take_changes() == {}  # nothing of the failed triage is written


def test_a_present_wearer_is_not_absent_and_only_a_confirmed_presence_ends_an_absence() -> None:
    b = Book()
    b.feed("band", (EventKind.PRESENCE, {"state": "present", "rssi": -70}))
    assert [e for e in b.jump(3 * 3600) if e.kind is EventKind.WEARER_ABSENT] == []  # heard all along: present
    b.feed("band", (EventKind.PRESENCE, {"state": "away", "unseen_s": 120}))
    [absent] = [e for e in b.jump(1800) if e.kind is EventKind.WEARER_ABSENT]
    # a neighbour imitating the (unkeyed) band: its "moving" advert is noted, but ends nothing
    assert kinds(b.feed("band", (EventKind.ACTIVITY, {"moving": True, "battery": 60}))) == ["activity"]
    assert absent.id in b.book.alarms
    back = b.feed("band", (EventKind.PRESENCE, {"state": "present", "rssi": -60}))  # confirmed by its rules
    assert kinds(back) == ["presence", "alarm_update"]
