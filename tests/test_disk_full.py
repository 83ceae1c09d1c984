"""A station whose disk fills up (issue 12), on small real filesystems the test mounts: an
ext4 image on a loop device and a tmpfs, each 8 MiB. Needs root (skipped otherwise)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.broker import Mosquitto
from simulators.button_receiver import surgard_report
from simulators.harness import SmallDiskUnavailable, fill_disk, mount_small_disk
from simulators.link import LinkProxy
from simulators.radar import RadarSim
from tests.conftest import Station, events_of, running_station, wait_until
from tests.test_serial_field import radar_toml

MIB = 1024 * 1024
DISK_BYTES = 8 * MIB
RESERVE = f"disk_reserve_bytes = {2 * MIB}"


@pytest.fixture(params=["ext4", "tmpfs"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "disk"
    try:
        mount_small_disk(request.param, where, tmp_path / "disk.img", DISK_BYTES)
    except SmallDiskUnavailable as exc:
        pytest.skip(str(exc))  # (CI runs as root with loop devices: there these tests run)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def sos_zones(station: Station) -> list[int]:
    return [e["data"]["zone"] for e in events_of(station, "sos")]


def faults(station: Station) -> set[str]:
    return {e["data"]["fault"] for e in events_of(station, "storage_fault")}


def shed_telemetry(station: Station) -> int:
    shed = (station.sink.status or {}).get("shed", {})
    return sum(per_class.get("telemetry", 0) for per_class in shed.values())


async def test_a_disk_that_fills_in_an_outage_keeps_every_alarm_sheds_telemetry_and_drains_once(
    small_disk: Path, broker: Mosquitto
) -> None:
    radar = RadarSim("mr60fda1")  # live telemetry: presence changes of a room
    radar.start()
    try:
        async with LinkProxy(broker.host, broker.port) as link:
            link.cut()
            async with running_station(
                small_disk,
                broker,
                uplink_port=link.port,
                seed_telemetry=5000,
                storage_extra=RESERVE,
                extra_devices=radar_toml("radar-room", radar.path),
            ) as station:
                assert (small_disk / "outbox.db.reserve").stat().st_size == 2 * MIB
                filler = fill_disk(small_disk)
                pressed = []
                for zone in range(1, 61):  # alarms and test reports (status) while the disk is full
                    code = 602 if zone % 5 == 0 else 101
                    assert (await station.receiver.send(surgard_report(code=code, zone=zone))).acked, zone
                    pressed.append(zone)
                    radar.presence(zone % 2 == 0)
                assert station.gateway.proc is not None
                assert station.gateway.proc.returncode is None
                assert await station.gateway.wait_for_line("the disk is full")

                filler.unlink()  # the technician frees space; then the link comes back
                link.restore()
                alarms = [z for z in pressed if z % 5]
                assert await wait_until(lambda: sorted(sos_zones(station)) == alarms), station.gateway.lines[-20:]
                seeded = set(station.seeded)
                # every seeded reading arrives, or was shed and counted in the status message
                assert await wait_until(
                    lambda: (
                        len(seeded & set(station.sink.events)) + shed_telemetry(station) == len(seeded)
                        and not (station.sink.status or {}).get("storage", {}).get("disk_full")
                    ),
                    timeout=90,
                ), (len(seeded & set(station.sink.events)), shed_telemetry(station), station.gateway.lines[-20:])
                assert shed_telemetry(station) > 0  # telemetry made the room
                assert await wait_until(lambda: {"disk_full", "disk_space_back"} <= faults(station))
                assert len(events_of(station, "test")) == len(pressed) - len(alarms)  # status kept too
                assert station.sink.duplicates == 0  # nothing acknowledged was sent again
                assert await wait_until(lambda: (small_disk / "outbox.db.reserve").exists())  # the reserve is back
                radar.presence(True)
                radar.presence(False)  # and the room's readings flow as before
                assert await wait_until(lambda: events_of(station, "activity", "radar-room"), timeout=20)
    finally:
        radar.close()


async def test_the_daemon_starts_on_a_full_disk_and_takes_alarms_into_its_reserve(
    small_disk: Path, broker: Mosquitto
) -> None:
    async with running_station(small_disk, broker, storage_extra=RESERVE) as station:
        assert (await station.receiver.send(surgard_report(code=101, zone=1))).acked
        assert await wait_until(lambda: sos_zones(station) == [1])
        await station.gateway.stop()
        filler = fill_disk(small_disk)  # the disk filled up while the daemon was stopped
        await station.restart_gateway()
        assert await station.gateway.wait_for_line("the disk is full at start-up")
        for zone in (2, 3, 4):
            assert (await station.receiver.send(surgard_report(code=101, zone=zone))).acked
        assert await wait_until(lambda: sorted(sos_zones(station)) == [1, 2, 3, 4])
        assert await wait_until(lambda: "disk_reserve_used" in faults(station)), station.gateway.lines[-30:]
        filler.unlink()
        assert await wait_until(lambda: (small_disk / "outbox.db.reserve").exists())


async def test_without_its_reserve_the_daemon_stays_up_acknowledges_nothing_it_could_not_store_and_recovers(
    small_disk: Path, broker: Mosquitto
) -> None:
    """No reserve (it was deleted by hand): on the full disk the outbox cannot be opened, or
    opened but not written (ext4 gives a few blocks back as the daemon's own files go). The
    daemon stays up, says so, does not acknowledge the alarm (the receiver keeps it), and takes
    it once there is room."""
    async with running_station(small_disk, broker, storage_extra=RESERVE) as station:
        await station.gateway.stop()
        (small_disk / "outbox.db.reserve").unlink()
        filler = fill_disk(small_disk)
        await station.restart_gateway()
        mark = len(station.gateway.lines)
        fill_disk(small_disk)  # what the daemon's start gave back
        delivery = await station.receiver.send(surgard_report(code=101, zone=9))
        assert not delivery.acked, "\n".join(station.gateway.lines)  # not stored, so not acknowledged
        assert await station.gateway.wait_for_line("a reading was not stored, and not acknowledged", after=mark)
        assert any("cannot be opened" in line or "the disk is full" in line for line in station.gateway.lines)
        assert station.gateway.proc is not None
        assert station.gateway.proc.returncode is None
        filler.unlink()
        for _ in range(4):  # the receiver keeps sending it
            if (await station.receiver.send(surgard_report(code=101, zone=9))).acked:
                break
        else:
            raise AssertionError("\n".join(station.gateway.lines))
        assert await wait_until(lambda: sos_zones(station) == [9]), "\n".join(station.gateway.lines)
        assert await wait_until(lambda: faults(station) & {"disk_full_at_start", "disk_full"})


async def test_delivered_events_whose_delete_does_not_fit_are_never_sent_again(small_disk: Path) -> None:
    """The broker has acknowledged them, but the disk is so full that not even the delete can
    be written (reserve gone, WAL emptied): they are not offered again, and go once there is room."""
    import asyncio

    from gateway.clock import Clock
    from gateway.config import StorageSection
    from gateway.events import EventKind, Priority, new_event
    from gateway.outbox import Outbox

    clock = Clock()
    storage = StorageSection(path=small_disk / "outbox.db", disk_reserve_bytes=2 * MIB)
    async with Outbox(storage, "st") as outbox:
        sent = [new_event(clock, "st", "rx", EventKind.SOS, {"n": n}) for n in range(20)]
        await outbox.append(*sent)
        await outbox._run(lambda: outbox.db.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        (small_disk / "outbox.db.reserve").unlink()
        outbox.reserve.look()
        filler = fill_disk(small_disk)
        rows = await outbox.rows_after(Priority.ALARM, 0, 10)
        await outbox.ack(rows)  # PUBACKed; the delete cannot be written
        assert (await outbox.snapshot()).disk["delivered_not_deleted"] == 10
        again = await outbox.rows_after(Priority.ALARM, 0, 100)
        assert [r.seq for r in again] == list(range(11, 21))  # the delivered ten are not offered again
        filler.unlink()
        for _ in range(100):
            if not (await outbox.snapshot()).disk["delivered_not_deleted"]:
                break
            await asyncio.sleep(0.1)
        assert (await outbox.counts())[Priority.ALARM] == 10  # deleted once there was room
    async with Outbox(storage, "st") as reopened:
        assert [r.seq for r in await reopened.rows_after(Priority.ALARM, 0, 100)] == list(range(11, 21))


async def test_a_disk_with_a_few_blocks_left_is_waited_out_not_a_sigbus(small_disk: Path) -> None:
    """With nine 1 KiB blocks free, plain SQLite opening a WAL database dies of SIGBUS on ext4
    (measured: rc 135). The outbox does not open it until there is room."""
    import asyncio
    import sys

    from gateway.config import StorageSection
    from gateway.outbox import Outbox

    storage = StorageSection(path=small_disk / "outbox.db", disk_reserve_bytes=2 * MIB)
    async with Outbox(storage, "st"):
        pass
    (small_disk / "outbox.db.reserve").unlink()
    filler = fill_disk(small_disk)
    st = os.statvfs(small_disk)
    os.truncate(filler, filler.stat().st_size - 9 * 1024)  # nine blocks back
    os.sync()
    script = (
        "import asyncio, sys; from pathlib import Path; from gateway.config import StorageSection; "
        "from gateway.outbox import Outbox\n"
        "async def main():\n"
        f"    async with Outbox(StorageSection(path=Path({str(storage.path)!r}), disk_reserve_bytes={2 * MIB}), 'st')"
        " as o:\n"
        "        print('not_open' if o.not_open else 'open', flush=True)\n"
        "asyncio.run(main())\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, (child.returncode, err[-2000:], st.f_bavail)  # not -7: SIGBUS
    assert out.decode().strip() == "not_open"
    filler.unlink()
    async with Outbox(storage, "st") as outbox:
        assert outbox.not_open is None


async def test_on_a_disk_too_full_to_open_it_the_backlog_is_still_sent_read_only(small_disk: Path) -> None:
    import asyncio

    from gateway.clock import Clock
    from gateway.config import StorageSection
    from gateway.events import EventKind, Priority, new_event
    from gateway.outbox import Outbox, OutboxFull

    clock = Clock()
    storage = StorageSection(path=small_disk / "outbox.db", disk_reserve_bytes=2 * MIB)
    async with Outbox(storage, "st") as outbox:
        await outbox.append(*[new_event(clock, "st", "rx", EventKind.SOS, {"n": n}) for n in range(10)])
    (small_disk / "outbox.db.reserve").unlink()
    filler = fill_disk(small_disk)
    async with Outbox(storage, "st") as outbox:
        assert outbox.read_only
        rows = await outbox.rows_after(Priority.ALARM, 0, 100)
        assert len(rows) == 10  # the backlog still goes out
        await outbox.ack(rows[:6])
        assert [r.seq for r in await outbox.rows_after(Priority.ALARM, 0, 100)] == [7, 8, 9, 10]
        with pytest.raises(OutboxFull, match="read-only"):
            await outbox.append(new_event(clock, "st", "rx", EventKind.SOS, {"n": 99}))
        filler.unlink()
        for _ in range(150):
            if not outbox.read_only and not (await outbox.snapshot()).disk["delivered_not_deleted"]:
                break
            await asyncio.sleep(0.1)
        assert not outbox.read_only
        assert (await outbox.counts())[Priority.ALARM] == 4  # what was delivered read-only is deleted now
        await outbox.append(new_event(clock, "st", "rx", EventKind.SOS, {"n": 99}))
