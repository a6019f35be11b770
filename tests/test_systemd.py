"""The systemd unit and the udev rules: parsed and checked, verified by systemd-analyze where it
is installed, and CPython checked under the kernel's MemoryDenyWriteExecute equivalent."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "terminal-gw.service"
RULES = REPO / "systemd" / "99-terminal-gw.rules"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat, like DeviceAllow)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        sections[section][key.strip()].append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]


REQUIRED: dict[str, list[str]] = {
    "Type": ["notify"],
    "ExecStart": ["/usr/local/bin/terminal-gw run --config /etc/terminal-gw/config.toml"],
    "WatchdogSec": ["30"],
    "Restart": ["always"],
    "RestartSec": ["5"],
    "User": ["terminal-gw"],
    "Group": ["terminal-gw"],
    "SupplementaryGroups": ["dialout"],
    "StateDirectory": ["terminal-gw"],
    "ConfigurationDirectory": ["terminal-gw"],
    "NoNewPrivileges": ["yes"],
    "ProtectSystem": ["strict"],
    "ProtectHome": ["yes"],
    "PrivateTmp": ["yes"],
    "DevicePolicy": ["closed"],
    "DeviceAllow": ["char-ttyUSB rw", "char-ttyACM rw", "char-ttyAMA rw", "char-ttyS rw"],
    "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
    "CapabilityBoundingSet": [""],
    "SystemCallFilter": ["@system-service"],
    "ProtectKernelTunables": ["yes"],
    "ProtectKernelModules": ["yes"],
    "ProtectControlGroups": ["yes"],
    "RestrictNamespaces": ["yes"],
    "LockPersonality": ["yes"],
    "MemoryDenyWriteExecute": ["yes"],
    "RestrictRealtime": ["yes"],
    "UMask": ["0027"],
}


@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_unit_sets(key: str) -> None:
    assert service().get(key) == REQUIRED[key]


def test_unit_leaves_private_users_out_and_says_why() -> None:
    # PrivateUsers would map the dialout group to nobody: the serial ports would be unreadable.
    assert "PrivateUsers" not in service()
    assert "PrivateUsers= is deliberately not set" in UNIT.read_text(encoding="utf-8")


def test_unit_is_installable() -> None:
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert unit["Unit"]["After"] == ["network-online.target"]


def _verify_root(tmp_path: Path, unit_text: str) -> Path:
    """A file system root holding the unit, systemd's own units and the ExecStart binary."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    exe = root / "usr/local/bin/terminal-gw"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n", encoding="utf-8")
    exe.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/terminal-gw.service").write_text(unit_text, encoding="utf-8")
    return root


def _analyze(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    return subprocess.run(
        [analyze, *args, f"--root={root}", "terminal-gw.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
    reason="systemd-analyze not installed: verify NOT run (the unit was checked by parsing only;"
    " apt-get install systemd to run it)",
)


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    root = _verify_root(tmp_path, UNIT.read_text(encoding="utf-8"))
    result = _analyze(root, "verify")
    assert result.returncode == 0, result.stderr
    # verify exits 0 on unknown keys and bad values, which it only reports: so no output at all.
    assert result.stderr.strip() == ""
    assert result.stdout.strip() == ""


@needs_analyze
def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    """Guards the test above: a misspelt key must produce output."""
    text = UNIT.read_text(encoding="utf-8").replace("WatchdogSec=30", "WatchdogSecs=30")
    result = _analyze(_verify_root(tmp_path, text), "verify")
    assert "Unknown key 'WatchdogSecs'" in result.stderr


@needs_analyze
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    root = _verify_root(tmp_path, UNIT.read_text(encoding="utf-8"))
    result = _analyze(root, "security", "--offline=yes", "--no-pager")
    m = re.search(r"Overall exposure level for terminal-gw\.service: ([\d.]+)", result.stdout)
    assert m, result.stdout + result.stderr
    # 0 = fully locked down, 10 = unprotected; "OK" below 4.5. This unit scores about 2.1.
    assert float(m.group(1)) <= 3.0, result.stdout


_PR_SET_MDWE = 65
_PR_MDWE_REFUSE_EXEC_GAIN = 1

# Run as a child: refuse W+X memory (what MemoryDenyWriteExecute=yes enforces), then exec Python
# on the code path of the daemon's start-up.
_MDWE_CHILD = textwrap.dedent(
    f"""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl({_PR_SET_MDWE}, {_PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
        sys.exit(77)
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
    """
)

_UNDER_MDWE = textwrap.dedent(
    """
    import mmap, sys
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        sys.exit("W+X memory was allowed: the restriction is not in force")
    import asyncio, sqlite3
    import aiomqtt, pydantic, pynmeagps, serial, structlog
    from terminal_gw.__main__ import main
    from terminal_gw.models import Fix
    Fix(lat=1.0).to_json()
    db = sqlite3.connect(":memory:")
    db.execute("create table t (x)")
    sys.exit(main(["check-config", "--config", sys.argv[1]]))
    """
)


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_GET_MDWE (66) fails with EINVAL on kernels before 6.3.
    return int(libc.prctl(66, 0, 0, 0, 0)) >= 0


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _mdwe_supported(),
    reason="kernel has no PR_SET_MDWE (Linux < 6.3): MemoryDenyWriteExecute not checked",
)
def test_cpython_runs_without_writable_executable_memory() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _MDWE_CHILD,
            _UNDER_MDWE,
            str(REPO / "config" / "terminal-gw.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert '"device"' in result.stdout


def _udev_rules() -> list[dict[str, str]]:
    rules = []
    for raw in RULES.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        rule = {}
        for part in re.split(r",\s*", line):
            m = re.fullmatch(r'([A-Z_]+(?:\{[^}]+\})?)\s*(==|!=|\+=|:=|=)\s*"([^"]*)"', part)
            assert m, f"not a udev key: {part!r} in {raw!r}"
            rule[m.group(1) + m.group(2)] = m.group(3)
        rules.append(rule)
    return rules


def test_udev_rules_give_stable_names_with_dialout_access() -> None:
    rules = {r["SYMLINK+="]: r for r in _udev_rules()}
    assert set(rules) == {"beidou0", "tiantong0"}
    for rule in rules.values():
        assert rule["SUBSYSTEM=="] == "tty"
        assert "ATTRS{idVendor}==" in rule
        assert "ATTRS{idProduct}==" in rule
        assert rule["GROUP="] == "dialout"
        assert rule["MODE="] == "0660"
    # The modem's AT port is one interface of several.
    assert "ENV{ID_USB_INTERFACE_NUM}==" in rules["tiantong0"]


def test_udev_placeholders_are_documented() -> None:
    text = RULES.read_text(encoding="utf-8")
    placeholders = {v for r in _udev_rules() for k, v in r.items() if "ATTRS{id" in k}
    assert placeholders == {"VVVV", "PPPP"}
    assert '"VVVV" vendor, "PPPP" product' in text
    assert "udevadm info" in text
