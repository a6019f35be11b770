"""Run the real CLI as an unprivileged user (nobody), for permission tests.

The suite runs as root, and root reads every file whatever its mode: a permission test must
drop to another user for the kernel to refuse. `setpriv` changes the user and the groups of
the exec'd interpreter. The test's own interpreter may live where nobody may go (a pyenv under
/root): then another Python 3.11+ on the machine runs the package from the repository with the
virtualenv's site-packages on its path (the same ABI, so the compiled dependencies load).
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOBODY = "nobody"
_PROBE = "import sys, terminal_gw.__main__; sys.exit(0 if sys.version_info >= (3, 11) else 3)"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGW_")}
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["HOME"] = "/"
    return env


def _candidates() -> list[str]:
    names = [sys.executable, os.path.realpath(sys.executable), getattr(sys, "_base_executable", "")]
    minor = f"python3.{sys.version_info.minor}"
    names += [shutil.which(minor) or "", f"/usr/bin/{minor}", "/usr/bin/python3"]
    return [n for n in dict.fromkeys(names) if n and os.path.exists(n)]


def setpriv(groups: Sequence[int] = ()) -> list[str]:
    """The prefix that runs a command as nobody, in group nogroup plus `groups`."""
    base = ["setpriv", f"--reuid={NOBODY}", "--regid=nogroup"]
    if groups:
        return [*base, f"--groups={','.join(str(g) for g in groups)}", "--"]
    return [*base, "--clear-groups", "--"]


@functools.cache
def unprivileged_python() -> tuple[str | None, str]:
    """(an interpreter nobody can run the package with, or None; why not)."""
    if os.geteuid() != 0:
        return None, "not root: cannot switch to another user to test permissions"
    if shutil.which("setpriv") is None:
        return None, "setpriv (util-linux) not installed: cannot run the CLI as nobody"
    tried = []
    for exe in _candidates():
        res = subprocess.run(
            [*setpriv(), exe, "-c", _PROBE],
            capture_output=True,
            text=True,
            env=_env(),
            cwd="/",
            timeout=60,
            check=False,
        )
        if res.returncode == 0:
            return exe, ""
        tried.append(f"{exe}: {res.stderr.strip().splitlines()[-1:] or res.returncode}")
    return None, "no Python 3.11+ that user nobody may run: " + "; ".join(tried)


@dataclass(frozen=True)
class Operator:
    """An unprivileged user (nobody) running `terminal-gw`."""

    python: str

    def run(
        self, *args: str, groups: Sequence[int] = (), timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`terminal-gw ARGS` as nobody (in `groups` besides nogroup)."""
        return subprocess.run(
            [*setpriv(groups), self.python, "-m", "terminal_gw", *args],
            capture_output=True,
            text=True,
            env=_env(),
            cwd="/",
            timeout=timeout,
            check=False,
        )


def stand_in_group() -> grp.struct_group:
    """A group that stands in for `terminal-gw`: not root's, not nobody's."""
    for name in ("daemon", "adm", "users", "staff", "bin", "sys"):
        with contextlib.suppress(KeyError):
            return grp.getgrnam(name)
    raise LookupError("no group to stand in for terminal-gw")


@contextlib.contextmanager
def reachable_dir() -> Iterator[Path]:
    """A directory nobody may enter (pytest's tmp_path is under a root-only folder)."""
    path = Path(tempfile.mkdtemp(prefix="tgw-perm-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
