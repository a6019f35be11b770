"""Exit codes of the `terminal-gw` commands (one definition; the README lists them), and the
message for a file the user may not read."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

#: Success; `status`: the daemon is healthy.
EXIT_OK = 0
#: The command ran and failed: `status` unhealthy, `replay` played nothing, no outbox there.
EXIT_FAILURE = 1
#: Bad arguments, config or input: the message names what to fix.
EXIT_USAGE = 2
#: `status`: the daemon is not running (no status file, or its process is gone).
EXIT_NOT_RUNNING = 3
#: This user may not read a file or directory the command needs (LSB: insufficient privilege).
EXIT_PERMISSION = 4
#: Interrupted (Ctrl-C, SIGINT): 128 + the signal's number, as shells report it.
EXIT_INTERRUPTED = 130


def _name(table: str, ident: int) -> str:
    try:
        if table == "user":
            return pwd.getpwuid(ident).pw_name
        return grp.getgrgid(ident).gr_name
    except KeyError:
        return str(ident)


def _blocking(path: Path, mode: int) -> tuple[Path, os.stat_result] | None:
    """The first directory on the way to `path` this user may not enter, or `path` itself
    when it may not be used in `mode`; with its stat. None when nothing in the way is seen."""
    path = Path(os.path.abspath(path))
    for parent in reversed(path.parents):
        try:
            st = parent.stat()
        except OSError:
            return None
        if not os.access(parent, os.X_OK):
            return parent, st
    try:
        st = path.stat()
    except OSError:
        return None
    if not os.access(path, mode):
        return path, st
    return None


def permission_denied(path: Path, what: str, *, access: str = "read") -> str:
    """Why this user may not read (or open) `path`, `what` naming it, and how to get access."""
    me = _name("user", os.getuid())
    head = f"permission denied: user {me} may not {access} the {what} {path}"
    found = _blocking(path, os.R_OK if access == "read" else os.R_OK | os.W_OK)
    if found is None:
        return f"{head}. Run the command with sudo."
    where, st = found
    owner, group = _name("user", st.st_uid), _name("group", st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
    head += f" ({kind} {where} is {owner}:{group}, mode {mode:04o})"
    group_may = bool(mode & (stat.S_IXGRP if kind == "directory" else stat.S_IRGRP))
    if access != "read" and kind == "file":
        group_may = group_may and bool(mode & stat.S_IWGRP)
    if st.st_gid == 0 or not group_may:
        return f"{head}. Run the command with sudo."
    try:
        members = grp.getgrgid(st.st_gid).gr_mem
    except KeyError:
        members = []
    if me in members and st.st_gid not in os.getgroups():
        return (
            f"{head}. {me} was added to group {group} after this session began:"
            f" log in again (or run `newgrp {group}`)."
        )
    return (
        f"{head}. Members of group {group} may {access} it: sudo usermod -aG {group} {me},"
        " then log in again; or run the command with sudo."
    )
