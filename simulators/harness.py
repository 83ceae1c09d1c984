"""Run a real gateway process against simulated devices: used by the demo, tests and bench."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import sys
import tty
from collections.abc import Callable, Mapping
from pathlib import Path


def station_toml(
    *,
    station_id: str,
    broker_port: int,
    db_path: Path,
    receiver_ports: dict[str, str],
    keepalive_s: int = 5,
    reconnect_max_s: float = 2.0,
    status_interval_s: float = 5.0,
    silence_timeout_s: float = 100.0,
    uplink_extra: str = "",
    storage_extra: str = "",
    station_extra: str = "",
    extra_devices: str = "",
    receiver_extra: str = "",
) -> str:
    """A station file for simulated devices on a loopback broker (or link proxy)."""
    devices = "".join(
        f'\n[[devices]]\nid = "{device_id}"\nkind = "contact_id_receiver"\nport = "{port}"\nbaudrate = 9600\n'
        f"silence_timeout_s = {silence_timeout_s}\n{receiver_extra}\n"
        for device_id, port in receiver_ports.items()
    )
    return (
        f'[station]\nid = "{station_id}"\nname = "Simulated care station"\n{station_extra}\n'
        f'[uplink]\nhost = "127.0.0.1"\nport = {broker_port}\nkeepalive_s = {keepalive_s}\n'
        f"reconnect_max_s = {reconnect_max_s}\nstatus_interval_s = {status_interval_s}\n"
        f"connect_timeout_s = 2\npublish_timeout_s = 5\n{uplink_extra}\n\n"
        f'[storage]\npath = "{db_path}"\n{storage_extra}\n{devices}{extra_devices}'
    )


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOG_LINE_LIMIT_BYTES = 1024 * 1024  # a longer log line is kept cut short


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat), for benchmarks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (/proc/PID/status VmRSS), for benchmarks."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


PR_SET_PDEATHSIG = 1  # prctl(2): signal this process when its parent dies
PR_CAPBSET_DROP = 24  # prctl(2): drop a capability from the bounding set
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2  # capabilities(7): what lets root ignore file modes
# prctl(2), Linux >= 6.3: no mapping may become writable and executable, the kernel's own form of
# the unit's MemoryDenyWriteExecute=yes, so every gateway a test or the demo runs proves that
# the interpreter and the libraries work under it
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def deny_write_execute() -> bool:
    """Refuse writable+executable memory to this process and its children; False on an old kernel."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0)


def die_with_parent() -> None:
    """preexec_fn for child processes of demos and tests: they end when their parent does."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class PtyDevice:
    """The device end of a pseudo-terminal; `path` is the port the gateway opens.

    Subclasses implement `_received(data)` for what the gateway writes to the device.
    """

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo or line editing before the gateway opens the port
        self.path = os.ttyname(self._slave)
        self._reading = False
        self.plugged = True
        self._links: list[Path] = []

    def link_at(self, link: Path) -> None:
        """A stable name for the port (as udev's /dev/serial/by-id/...), gone when unplugged."""
        link.symlink_to(self.path)
        self._links.append(link)

    def start(self) -> None:
        if not self._reading:
            asyncio.get_running_loop().add_reader(self._master, self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        """What the gateway wrote; ignored unless a subclass answers it."""

    def unplug(self) -> None:
        """Close both ends: the gateway's next read fails as with a pulled USB cable."""
        if self._reading:
            asyncio.get_running_loop().remove_reader(self._master)
            self._reading = False
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        for link in self._links:  # the device node goes, as a pulled USB device's does: else the
            link.unlink(missing_ok=True)  # name would point at a freed pty another program may get
        self._links = []
        self.plugged = False

    def close(self) -> None:
        if self.plugged:
            self.unplug()


class GatewayProcess:
    """`python -m gateway run --config FILE` as a child process, its log lines streamed."""

    def __init__(
        self,
        config_path: Path,
        on_line: Callable[[str], None] | None = None,
        obey_file_modes: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.env = dict(env or {})  # on top of this process's environment (a private D-Bus, a PATH)
        # root ignores file modes; tests of "permission denied" drop that privilege in the child
        self.obey_file_modes = obey_file_modes
        self.on_line = on_line
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._seen = asyncio.Condition()

    async def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        # The child must not outlive a demo or test that dies: an orphaned gateway would keep
        # re-opening /dev/pts/N and grab the next simulator that gets the same number.
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(self.config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            preexec_fn=self._preexec,
            limit=LOG_LINE_LIMIT_BYTES,
        )
        self._pump = asyncio.create_task(self._read_lines(), name="gateway-log")

    def _preexec(self) -> None:
        die_with_parent()
        deny_write_execute()
        if self.obey_file_modes and os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
                libc.prctl(PR_CAPBSET_DROP, capability)  # gone from the process after exec

    async def _read_lines(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # a line past the limit: kept cut short, the reading goes on
                raw = await self.proc.stdout.read(LOG_LINE_LIMIT_BYTES) + b" [cut]"
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip()
            async with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
            if self.on_line:
                self.on_line(line)

    async def wait_for_line(self, needle: str, timeout: float = 15.0, after: int = 0) -> bool:
        """True once a log line (from index `after` on) contains `needle`."""
        async with self._seen:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._seen.wait_for(lambda: any(needle in line for line in self.lines[after:])), timeout
                )
        return any(needle in line for line in self.lines[after:])

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` (SIGKILL for a crash) and wait for the process to end."""
        assert self.proc
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        if self._pump:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        return code


class SmallDiskUnavailable(Exception):
    """A small filesystem cannot be mounted here (not root, no loop devices, no mkfs.ext4)."""


def mount_small_disk(kind: str, where: Path, image: Path, size: int) -> None:
    """Mount a `size`-byte filesystem at `where` (created): a tmpfs, or an ext4 image file on a
    loop device (1 KiB blocks at this size, no blocks reserved for root). For the disk-full
    tests and soak; unmount with `umount -l where`."""
    if os.geteuid() != 0:
        raise SmallDiskUnavailable("mounting a small filesystem needs root")
    where.mkdir()
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    else:
        with image.open("wb") as f:
            f.truncate(size)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True, text=True)
        if made.returncode:
            raise SmallDiskUnavailable(f"mkfs.ext4 failed: {made.stderr.strip()}")
        command = ["mount", "-o", "loop", str(image), str(where)]
    mounted = subprocess.run(command, capture_output=True, text=True)
    if mounted.returncode:
        raise SmallDiskUnavailable(f"cannot mount a small {kind} filesystem here: {mounted.stderr.strip()}")


def fill_disk(disk: Path) -> Path:
    """Fill the filesystem to the last block with a file, as a log that ran away would; again
    after a sync, until nothing more fits (ext4 gives back blocks it held for delayed
    allocation). Returns the file (delete it to give the space back).

    It stops as soon as the gateway gives its disk reserve back (it met the full disk while
    the file grew): that room is the gateway's, for alarms, not the runaway log's; taking it
    as well is a different test, of a disk that stays full (test_disk_full's "without its
    reserve")."""
    filler = disk / "runaway.log"
    reserves = list(disk.glob("*.reserve"))

    def reserve_given_back() -> bool:
        return any(not reserve.exists() for reserve in reserves)

    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while not reserve_given_back():
            written = 0
            for chunk in (bytes(65536), bytes(4096), bytes(512), bytes(1)):
                while not reserve_given_back():
                    try:
                        written += os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
            os.fsync(fd)
            os.sync()
            if not written:
                break
    finally:
        os.close(fd)
    st = os.statvfs(disk)
    if st.f_bavail * st.f_frsize >= 4096 and not reserve_given_back():
        raise RuntimeError(f"{disk} still has {st.f_bavail * st.f_frsize} bytes free after filling it")
    return filler
