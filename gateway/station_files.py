"""The files and ports a station opens, and whether the service user can open them.

`check-config` runs as the technician (often root, through sudo), the daemon as the unit's
`User=care-gateway` with the groups `dialout` and `bluetooth`: a CA file that root can read
and care-gateway cannot is a station that never connects. So access is worked out from the
owner, group and mode bits for the service user (POSIX ACLs are not read), and for the user
running the check when there is no such user on the machine (a laptop, a test).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gateway.config import BLE_KINDS, Loc, Problem, StationConfig, render_problem
from gateway.i18n import _

__all__ = [
    "SERVICE_USER",
    "Opened",
    "ServiceUser",
    "access_problem",
    "access_problems",
    "file_problems",
    "files_opened",
    "service_user",
]

SERVICE_USER = "care-gateway"  # systemd/care-gateway.service: User=


@dataclass(frozen=True)
class Opened:
    """A file or port the station opens: where the station file names it, and how."""

    loc: Loc
    path: Path
    write: bool = False  # a serial port is opened for reading and writing


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    groups: frozenset[int]
    assumed: bool  # no such user here: the user running the check stands in for it


def service_user(name: str = SERVICE_USER) -> ServiceUser:
    """The unit's user with its groups (the primary one, the SupplementaryGroups it is a member
    of), or the current user when the machine has no such user."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return ServiceUser(pwd.getpwuid(os.geteuid()).pw_name, os.geteuid(), frozenset(os.getgroups()), True)
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
    return ServiceUser(name, entry.pw_uid, frozenset(groups), False)


def files_opened(config: StationConfig) -> list[Opened]:
    """Every file and serial port the daemon will open, in the order of the station file."""
    out: list[Opened] = []
    up = config.uplink
    if up.secrets_file is not None:
        out.append(Opened(("uplink", "secrets_file"), up.secrets_file))
    if up.tls is not None:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(up.tls, key)
            if path is not None:
                out.append(Opened(("uplink", "tls", key), path))
    for i, device in enumerate(config.devices):
        if not isinstance(device, BLE_KINDS):
            out.append(Opened(("devices", i, "port"), Path(device.port), write=True))
    if config.sms is not None:
        out.append(Opened(("sms", "port"), Path(config.sms.port), write=True))
    return out


def _allowed(st: os.stat_result, user: ServiceUser, want: int) -> bool:
    """Whether the mode bits give `user` the `want` bits (4 read, 2 write, 1 search)."""
    if user.uid == 0:
        return not want & 1 or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == user.uid:
        bits = st.st_mode >> 6
    elif st.st_gid in user.groups:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


def _names(st: os.stat_result) -> tuple[str, str]:
    """The owner and group of a file, by name where the machine knows them."""
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return owner, group


def _describe(st: os.stat_result) -> str:
    owner, group = _names(st)
    return f"{owner}:{group} {stat.S_IMODE(st.st_mode):04o}"


def access_problem(opened: Opened, user: ServiceUser) -> str | None:
    """What keeps `user` from opening the file or port, in the technician's words; None if nothing."""
    path = opened.path
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        if str(path).startswith("/dev/"):
            return _("{path} does not exist: is the device plugged in? (ls /dev/serial/by-id/ lists what is)").format(
                path=path
            )
        return _("{path} does not exist: copy the file there (from the platform operator)").format(path=path)
    except (PermissionError, RuntimeError, OSError) as exc:
        return _("{path} cannot be checked ({reason}): run check-config with sudo").format(path=path, reason=exc)
    for folder in reversed(target.parents):
        try:
            st = folder.stat()
        except OSError as exc:
            return _("{path} cannot be checked ({reason}): run check-config with sudo").format(path=path, reason=exc)
        if not _allowed(st, user, 1):
            return _("user {user} may not enter the folder {folder} ({mode}): chmod o+x {folder}, or chgrp").format(
                user=user.name, folder=folder, mode=_describe(st)
            )
    st = target.stat()
    if stat.S_ISDIR(st.st_mode):
        return _("{path} is a folder, not a file").format(path=path)
    want = 6 if opened.write else 4
    if opened.write and not stat.S_ISCHR(st.st_mode):
        return _("{path} -> {target} is not a serial device (/dev/tty*)").format(path=path, target=target)
    if _allowed(st, user, want):
        return None
    if opened.write:
        return _(
            "user {user} may not open {path} -> {target} ({mode}): add it to the group that owns the port: "
            "usermod -aG {group} {user}"
        ).format(user=user.name, path=path, target=target, mode=_describe(st), group=_names(st)[1])
    return _("user {user} may not read {path} ({mode}): chgrp {user} {path}; chmod 640 {path}").format(
        user=user.name, path=path, mode=_describe(st)
    )


def access_problems(config: StationConfig, user: ServiceUser | None = None) -> list[Problem]:
    """One problem per file or port the service user cannot open, at its key in the station file."""
    user = user or service_user()
    problems = []
    for opened in files_opened(config):
        found = access_problem(opened, user)
        if found is not None:
            if user.assumed:
                found += _(" (checked for user {user}: there is no user {service} on this machine)").format(
                    user=user.name, service=SERVICE_USER
                )
            problems.append(Problem(opened.loc, found))
    return problems


def file_problems(path: Path, config: StationConfig, user: ServiceUser | None = None) -> list[str]:
    """access_problems rendered like every station-file error: file:line:column: key path: problem."""
    problems = access_problems(config, user)
    if not problems:
        return []
    text = path.read_text(encoding="utf-8")
    raw = tomllib.loads(text)
    return [render_problem(str(path), text, raw, problem) for problem in problems]
