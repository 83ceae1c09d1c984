"""Care rules: readings in, event drafts out (no I/O, plain values)."""

from __future__ import annotations

from drivers.contact_id import ContactIdReport
from drivers.nmea import GpsFix
from drivers.seeed_radar import RadarDwell, RadarFall, RadarHeartbeat, RadarMotion, RadarMovement, RadarPresence
from gateway.config import LocationSection
from gateway.events import EventKind
from gateway.rules import ContactIdRules, EventDraft, GpsRules, RadarRules, StationLocation, _ActivityWindow


def radar(summary_s: float = 300.0) -> RadarRules:
    return RadarRules(summary_s=summary_s, label="bedroom", _window=_ActivityWindow(started=0.0))


def test_contact_id_report_is_one_event() -> None:
    report = ContactIdReport(1, 1, "1234", "new", 101, 1, 3)
    assert ContactIdRules().on_reading(report, 0.0) == [EventDraft(EventKind.SOS, report.event_data())]
    assert ContactIdRules().on_tick(0.0) == []


def test_fall_then_stillness_then_recovery() -> None:
    rules = radar()
    rules.on_reading(RadarPresence(True), 1.0)
    assert rules.on_reading(RadarFall(True), 10.0) == [
        EventDraft(
            EventKind.FALL,
            {
                "presence": True,
                "motion": None,
                "room": "bedroom",
                "qualifier": "new",
                "severity": "high",
                "detector": "mmwave",
            },
        )
    ]
    assert rules.on_reading(RadarFall(True), 11.0) == []  # reported once
    assert rules.on_reading(RadarDwell(True), 40.0) == [
        EventDraft(
            EventKind.FALL,
            {
                "presence": True,
                "motion": None,
                "room": "bedroom",
                "qualifier": "still_present",
                "severity": "critical",
                "not_moved_since_fall": True,
                "seconds_since_fall": 30,
            },
        )
    ]
    assert rules.on_reading(RadarDwell(True), 50.0) == []
    assert rules.on_reading(RadarFall(False), 70.0) == [
        EventDraft(
            EventKind.FALL,
            {"presence": True, "motion": None, "room": "bedroom", "qualifier": "restore", "fall_lasted_s": 60},
        )
    ]


def test_dwell_without_a_fall_is_not_an_alarm() -> None:
    assert radar().on_reading(RadarDwell(True), 5.0) == []


def test_activity_on_change_not_once_a_second_and_summaries() -> None:
    rules = radar(summary_s=60.0)
    changes = []
    changes += rules.on_reading(RadarPresence(True), 0.5)
    for t in range(1, 30):  # movement once a second: no events
        assert rules.on_reading(RadarMovement(20 + t % 3), float(t)) == []
    changes += rules.on_reading(RadarMotion("moving"), 30.0)
    changes += rules.on_reading(RadarMotion("stationary"), 31.0)  # within 5 s: folded
    assert rules.on_reading(RadarHeartbeat(), 31.5) == []
    assert [draft.data for draft in changes] == [
        {"presence": True, "motion": None, "room": "bedroom", "change": True},
        {"presence": True, "motion": "moving", "room": "bedroom", "change": True},
    ]
    assert rules.on_tick(33.0) == []
    assert rules.on_tick(36.5) == [  # the folded change, with the latest state
        EventDraft(EventKind.ACTIVITY, {"presence": True, "motion": "stationary", "room": "bedroom", "change": True})
    ]
    [(kind, summary, _)] = rules.on_tick(60.0)
    assert kind is EventKind.ACTIVITY
    assert summary == {
        "presence": True,
        "motion": "stationary",
        "room": "bedroom",
        "summary": {"period_s": 60, "present_s": 60, "moving_s": 1, "movement_mean": 21.0, "movement_max": 22},
    }
    assert rules.on_tick(61.0) == []


def test_gps_fix_acquired_lost_and_location_for_alarms() -> None:
    location = StationLocation(LocationSection(lat=43.9, lon=116.1))
    assert location.for_alarm(0.0) == {"lat": 43.9, "lon": 116.1, "source": "configured"}
    rules = GpsRules(location, lost_after_s=30.0, started=0.0)
    assert rules.on_reading(GpsFix("RMC", False, None, None), 1.0) == []
    fix = GpsFix("GGA", True, 44.0, 117.0, satellites=7)
    assert rules.on_reading(fix, 2.0) == [
        EventDraft(EventKind.LOCATION, {"fix": "acquired", "lat": 44.0, "lon": 117.0, "satellites": 7})
    ]
    assert rules.on_reading(fix, 3.0) == []
    assert location.for_alarm(13.0) == {"lat": 44.0, "lon": 117.0, "source": "gps", "fix_age_s": 10}
    assert rules.on_tick(20.0) == []
    assert rules.on_tick(34.0) == [
        EventDraft(EventKind.LOCATION, {"fix": "lost", "seconds_without_fix": 31, "last_lat": 44.0, "last_lon": 117.0})
    ]
    assert rules.on_tick(35.0) == []
    assert location.for_alarm(400.0) == {"lat": 44.0, "lon": 117.0, "source": "gps_last_known", "fix_age_s": 397}


def test_gps_never_fixed_is_reported_once() -> None:
    rules = GpsRules(StationLocation(None), lost_after_s=30.0, started=0.0)
    assert rules.on_tick(31.0) == [EventDraft(EventKind.LOCATION, {"fix": "lost", "seconds_without_fix": 31})]
    assert rules.on_tick(60.0) == []
    assert StationLocation(None).for_alarm(0.0) is None


def test_one_press_carried_by_twenty_advertisements_is_one_alarm() -> None:
    from drivers.adverts import BTHomePacket
    from gateway.rules import Seen, WearableRules

    rules = WearableRules(presence_timeout_s=60, wearer="Wang", trigger_window_s=10)
    press = BTHomePacket(42, True, False, {"battery": 88}, ("press",))
    drafts = []
    for n in range(20):  # 20 copies, 0.2 s apart, as a KBeacon-style trigger window
        drafts += rules.on_reading(Seen(-60), n * 0.2)
        drafts += rules.on_reading(press, n * 0.2)
    assert drafts == [
        EventDraft(EventKind.PRESENCE, {"wearer": "Wang", "state": "present", "rssi": -60}),
        EventDraft(EventKind.SOS, {"wearer": "Wang", "source": "ble_pendant", "button": "press", "battery": 88}),
    ]
    again = BTHomePacket(43, True, False, {}, ("press",))  # a second press: a new packet id
    assert [k for k, *_ in rules.on_reading(again, 5.0)] == [EventKind.SOS]
    assert rules.on_tick(50.0) == []
    assert rules.on_tick(70.0) == [EventDraft(EventKind.PRESENCE, {"wearer": "Wang", "state": "away", "unseen_s": 66})]


def test_a_caregiver_visit_starts_after_its_minimum_and_ends_with_its_duration() -> None:
    from gateway.rules import BadgeRules, Seen

    rules = BadgeRules("Li Na", visit_min_s=60, visit_end_s=30)
    events = []
    for t in range(0, 200, 10):  # seen every 10 s for 200 s (gaps under visit_end_s)
        events += rules.on_reading(Seen(-70), float(t))
        events += rules.on_tick(float(t))
    assert events == [EventDraft(EventKind.VISIT, {"caregiver": "Li Na", "visit": "started"})]
    assert rules.on_tick(215.0) == []
    assert rules.on_tick(221.0) == [
        EventDraft(EventKind.VISIT, {"caregiver": "Li Na", "visit": "ended", "duration_s": 190})
    ]
    assert BadgeRules("x", 60, 30).on_reading(Seen(-70), 0.0) == []  # a passer-by is no visit


def test_health_measurements_become_vitals_with_no_value_as_null() -> None:
    from drivers.gatt import OximeterReading
    from gateway.rules import HealthRules

    reading = OximeterReading(None, 75.0, None, False, False)
    [(kind, data, typed)] = HealthRules("Zhang").on_reading(reading, 0.0)
    assert typed is reading  # the care rules hold the typed reading to the resident's limits
    assert (kind, data) == (
        EventKind.VITALS,
        {
            "measurement": "spo2",
            "wearer": "Zhang",
            "spo2_percent": None,
            "pulse_bpm": 75.0,
            "measured_at": None,
            "questionable": False,
            "continuous": False,
        },
    )


def test_an_ibeacon_trigger_pendant_makes_one_alarm_per_trigger_window() -> None:
    from drivers.adverts import IBeacon
    from gateway.config import IBeaconMatch
    from gateway.rules import WearableRules

    trigger = IBeaconMatch(uuid="e2c56db5-dffb-48d2-b060-d0f5a71096e3")  # KBeacon "UUID + 3": single click
    rules = WearableRules(60, "Zhao", trigger_window_s=10, trigger_ibeacon=trigger)
    pressed = IBeacon("e2c56db5-dffb-48d2-b060-d0f5a71096e3", 1, 4, -59)
    idle = IBeacon("e2c56db5-dffb-48d2-b060-d0f5a71096e0", 1, 4, -59)
    kinds = [k for t in range(50) for k, *_ in rules.on_reading(pressed if t < 50 else idle, t * 0.2)]
    assert kinds == [EventKind.SOS]  # 50 trigger advertisements over 10 s: one press
    assert rules.on_reading(idle, 11.0) == []
    assert [k for k, *_ in rules.on_reading(pressed, 21.0)] == [EventKind.SOS]


def test_an_unkeyed_wearable_is_present_again_only_after_several_sightings_a_second_apart() -> None:
    from gateway.rules import Seen, WearableRules

    unkeyed = WearableRules(60, "Wang", confirm_sightings=3)
    assert unkeyed.on_reading(Seen(-60), 0.0) == []
    assert unkeyed.on_reading(Seen(-60), 0.3) == []  # (within a second of the last: not a fresh sighting)
    assert unkeyed.on_reading(Seen(-60), 1.1) == []
    assert unkeyed.on_reading(Seen(-61), 2.2) == [
        EventDraft(EventKind.PRESENCE, {"wearer": "Wang", "state": "present", "rssi": -61})
    ]
    keyed = WearableRules(60, "Wang", confirm_sightings=1)  # its adverts are authenticated
    assert [d.kind for d in keyed.on_reading(Seen(-60), 0.0)] == [EventKind.PRESENCE]
