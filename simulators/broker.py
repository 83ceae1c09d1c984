"""A real mosquitto broker on a free loopback port, for tests, the demo and benchmarks."""

from __future__ import annotations

import contextlib
import glob
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from simulators.harness import die_with_parent

START_TIMEOUT_S = 10.0
DYNSEC_GLOB = "/usr/lib/*/mosquitto_dynamic_security.so"  # in Debian's mosquitto package


class BrokerUnavailable(Exception):
    pass


@dataclass(frozen=True)
class TlsListener:
    """A second listener with TLS: the broker's certificate, and whether (and how) clients
    must identify themselves: a certificate from the CA, and a user name and password."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = True
    users: dict[str, str] = field(default_factory=dict)


def mosquitto_path() -> str:
    exe = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
    if exe is None:
        raise BrokerUnavailable("mosquitto is not installed; run: sudo apt-get install mosquitto")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """mosquitto on 127.0.0.1:port with its own config, persistence file and log in `folder`.

    Persistence is on and written at shutdown, so a platform subscriber with a persistent
    session (clean_session=False) keeps its queued messages across a `stop()`/`start()`.
    """

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        tls: TlsListener | None = None,
        acl: str | None = None,
        dynsec: str | None = None,
    ) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log_path = folder / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.tls_port = free_port() if tls else None
        tls_lines = ""
        if tls is not None:
            password_file = folder / "passwords"
            password_file.write_text("")
            for user, password in tls.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(password_file), user, password], check=True)
            tls_lines = (
                f"listener {self.tls_port} 127.0.0.1\n"
                f"cafile {tls.ca_file}\ncertfile {tls.cert_file}\nkeyfile {tls.key_file}\n"
                f"require_certificate {'true' if tls.require_certificate else 'false'}\n"
                f"allow_anonymous {'false' if tls.users else 'true'}\n"
                + (f"password_file {password_file}\n" if tls.users else "")
            )
        self.acl_path = folder / "acl"
        acl_lines = ""
        if acl is not None:  # mosquitto's acl_file syntax; re-read on reload() (SIGHUP)
            self.acl_path.write_text(acl)
            acl_lines = f"acl_file {self.acl_path}\n"
        if dynsec is not None:  # the dynamic-security plugin's JSON: refuses subscriptions, unlike acl_file
            (folder / "dynsec.json").write_text(dynsec)
            plugin = next(iter(glob.glob(DYNSEC_GLOB)), DYNSEC_GLOB)
            acl_lines += f"plugin {plugin}\nplugin_opt_config_file {folder / 'dynsec.json'}\n"
        self.conf.write_text(
            # started as root (CI, containers) mosquitto would drop to user "mosquitto" and lose
            # access to this test's files; as any other user this line has no effect
            "user root\n" + ("per_listener_settings true\n" if tls else "") + f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n" + tls_lines + "persistence true\n"
            f"persistence_location {folder}/\n"
            "autosave_interval 0\n"
            "max_queued_messages 1000000\n"  # the platform's queue must not drop (0 would mean "none")
             + acl_lines + "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [mosquitto_path(), "-c", str(self.conf)], stdout=log, stderr=log, preexec_fn=die_with_parent
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection((self.host, self.port), 0.2).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise BrokerUnavailable(f"mosquitto did not start: {self.log_path.read_text()[-2000:]}") from None
                time.sleep(0.05)

    def reload(self, acl: str | None = None) -> None:
        """Re-read the configuration (SIGHUP), with a new ACL if one is given."""
        if acl is not None:
            self.acl_path.write_text(acl)
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): persistent sessions are saved."""
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
