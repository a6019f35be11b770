"""What a new user met on a first run, each through the real CLI in a subprocess: files an
operator may not read (as user nobody, for real), bad --broker values, `outbox stats` on a
directory, a missing serial device, bad environment values, and a daemon with no device."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from terminal_gw.exit_codes import EXIT_NOT_RUNNING, EXIT_OK, EXIT_PERMISSION, EXIT_USAGE
from terminal_gw.transport.pty import PtyDevice
from tests.broker import Broker, free_port, mosquitto_binary
from tests.test_systemd import UNIT, service
from tests.unprivileged import (
    Operator,
    reachable_dir,
    setpriv,
    stand_in_group,
    unprivileged_python,
)
from tests.uplink_support import subscriber

REPO = Path(__file__).resolve().parent.parent


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TGW_")}
    return subprocess.run(
        [sys.executable, "-m", "terminal_gw", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=timeout,
        check=False,
    )


def no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stderr + res.stdout, res.stderr


# --- permission denied: a real unprivileged user -------------------------------------------


@pytest.fixture
def operator() -> Operator:
    python, why = unprivileged_python()
    if python is None:
        pytest.skip(why)
    return Operator(python)


@pytest.fixture
def site() -> Iterator[Path]:
    """An install laid out as the README's: etc/ (0750 root:GROUP, config 0640) and state/
    (the unit's StateDirectoryMode, root:GROUP), GROUP standing in for terminal-gw."""
    with reachable_dir() as base:
        group = stand_in_group().gr_gid
        unit = service()
        for name, key in (("etc", "ConfigurationDirectoryMode"), ("state", "StateDirectoryMode")):
            d = base / name
            d.mkdir()
            os.chown(d, 0, group)
            d.chmod(int(unit[key][0], 8))
        yield base


def write_site_config(base: Path, **mqtt: object) -> Path:
    state = base / "state"
    lines = [
        "[device]",
        'id = "perm-1"',
        "[mqtt]",
        *(f"{k} = {json.dumps(v)}" for k, v in mqtt.items()),
        "backoff_min_s = 0.2",
        "backoff_max_s = 1",
        "[outbox]",
        f'path = "{state}/outbox.db"',
        "[commands]",
        f'path = "{state}/commands.db"',
        "[status]",
        f'path = "{state}/status.json"',
        "interval_s = 0.5",
        "[log]",
        'format = "json"',
    ]
    cfg = base / "etc" / "config.toml"
    cfg.write_text("\n".join(lines) + "\n")
    os.chown(cfg, 0, stand_in_group().gr_gid)
    cfg.chmod(0o640)
    return cfg


def test_status_without_access_to_the_config_says_permission_denied(
    operator: Operator, site: Path
) -> None:
    cfg = write_site_config(site)
    group = stand_in_group()
    res = operator.run("status", "--config", str(cfg))
    no_traceback(res)
    assert res.returncode == EXIT_PERMISSION, res.stderr
    assert "permission denied: user nobody may not read the config file" in res.stderr
    assert f"{site / 'etc'} is root:{group.gr_name}, mode 0750" in res.stderr
    assert f"sudo usermod -aG {group.gr_name} nobody" in res.stderr
    assert "not running" not in res.stderr
    # The README's step: a member of the group reads the config (and finds no daemon).
    member = operator.run("status", "--config", str(cfg), groups=[group.gr_gid])
    assert member.returncode == EXIT_NOT_RUNNING, member.stderr
    assert "not running (no status file" in member.stderr
    # check-config, outbox: the same code and advice.
    for args in (["check-config"], ["outbox", "stats"], ["outbox", "export"]):
        other = operator.run(*args, "--config", str(cfg))
        no_traceback(other)
        assert other.returncode == EXIT_PERMISSION, (args, other.stderr)
        assert "permission denied" in other.stderr


def test_outbox_stats_without_access_to_the_database(operator: Operator, site: Path) -> None:
    db = site / "state" / "outbox.db"
    db.write_bytes(b"")
    for args in (["stats"], ["export", "--format", "gpx"]):
        res = operator.run("outbox", *args, "--db", str(db))
        no_traceback(res)
        assert res.returncode == EXIT_PERMISSION, res.stderr
        assert f"may not read the outbox {db}" in res.stderr
    # The directory itself readable, the file not (a copy taken as root, mode 0600).
    open_db = site / "outbox-copy.db"
    open_db.write_bytes(b"")
    open_db.chmod(0o600)
    res = operator.run("outbox", "stats", "--db", str(open_db))
    assert res.returncode == EXIT_PERMISSION, res.stderr
    assert f"file {open_db} is root:root, mode 0600" in res.stderr
    assert "Run the command with sudo" in res.stderr


def daemon_command(cfg: Path, group: int) -> list[str]:
    """`terminal-gw run` as the unit runs it: group GROUP (files it creates are GROUP's)."""
    return [
        "setpriv",
        f"--regid={group}",
        "--clear-groups",
        "--",
        sys.executable,
        "-m",
        "terminal_gw",
        "run",
        "--config",
        str(cfg),
    ]


def unit_umask() -> int:
    return int(service()["UMask"][0], 8)


async def wait_for_file(path: Path, within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not await asyncio.to_thread(path.exists):
            await asyncio.sleep(0.05)


async def test_status_file_is_readable_by_the_group_only(
    operator: Operator, site: Path, broker: Broker
) -> None:
    group = stand_in_group()
    cfg = write_site_config(site, host="127.0.0.1", port=broker.port)
    status = site / "state" / "status.json"
    proc = await asyncio.create_subprocess_exec(
        *daemon_command(cfg, group.gr_gid),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        umask=unit_umask(),
    )
    try:
        await wait_for_file(status)
        async with asyncio.timeout(30):
            while not json.loads(status.read_text() or "{}").get("healthy"):
                await asyncio.sleep(0.1)
        # The mode the unit's UMask gives: the group reads, others nothing.
        for path in (status, site / "state" / "outbox.db", site / "state" / "commands.db"):
            st = path.stat()
            assert stat.S_IMODE(st.st_mode) == 0o640, (path, oct(st.st_mode))
            assert st.st_gid == group.gr_gid, path

        outsider = await asyncio.to_thread(operator.run, "status", "--file", str(status))
        no_traceback(outsider)
        assert outsider.returncode == EXIT_PERMISSION, outsider.stderr
        assert f"may not read the status file {status}" in outsider.stderr
        assert f"sudo usermod -aG {group.gr_name} nobody" in outsider.stderr

        member = await asyncio.to_thread(
            operator.run, "status", "--config", str(cfg), groups=[group.gr_gid]
        )
        assert member.returncode == EXIT_OK, member.stdout + member.stderr
        assert "device perm-1" in member.stdout
        assert "healthy" in member.stdout

        stats = await asyncio.to_thread(
            operator.run, "outbox", "stats", "--config", str(cfg), "--json", groups=[group.gr_gid]
        )
        assert stats.returncode == EXIT_OK, stats.stderr
        assert isinstance(json.loads(stats.stdout), dict)
        outsider_stats = await asyncio.to_thread(
            operator.run, "outbox", "stats", "--db", str(site / "state" / "outbox.db")
        )
        no_traceback(outsider_stats)
        assert outsider_stats.returncode == EXIT_PERMISSION, outsider_stats.stderr
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


# --- run with both device ports "none" -----------------------------------------------------


async def test_run_with_no_device_warns_at_start(tmp_path: Path, broker: Broker) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[device]\nid = "nodev-1"\n[gnss]\nport = "none"\n[modem]\nport = "none"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        f'[outbox]\npath = "{state}/outbox.db"\n[commands]\npath = "{state}/commands.db"\n'
        f'[status]\npath = "{state}/status.json"\ninterval_s = 0.5\n[log]\nformat = "json"\n'
    )
    async with subscriber(broker.port, "tgw/nodev-1/#") as got:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "terminal_gw",
            "run",
            "--config",
            str(cfg),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await got.wait_for(
                lambda g: any(p.get("kind") == "no_devices" for p in g.payloads("/event")),
                within=30,
            )
        finally:
            proc.terminate()
            _, err = await asyncio.wait_for(proc.communicate(), 30)
    (event,) = [p for p in got.payloads("/event") if p.get("kind") == "no_devices"]
    assert event["severity"] == "warning"
    assert event["data"] == {"gnss": "none", "modem": "none"}
    assert "no device stage runs" in event["message"]
    logged = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    warnings = [e for e in logged if "no device stage runs" in e.get("event", "")]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"


async def test_run_with_a_device_does_not_warn(tmp_path: Path) -> None:
    device = PtyDevice(tmp_path / "gnss0")
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[device]\nid = "dev-1"\n[gnss]\nport = "{device.path}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[outbox]\npath = "{state}/outbox.db"\n[commands]\npath = "{state}/commands.db"\n'
        f'[status]\npath = "{state}/status.json"\ninterval_s = 0.5\n[log]\nformat = "json"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "terminal_gw",
        "run",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for_file(state / "status.json")
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        device.close()
    assert "terminal-gw starting" in err.decode()
    assert "no device stage runs" not in err.decode()


# --- demo --broker ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("host:99999", "'host:99999': port 99999 is not in 1-65535"),
        ("host:0", "port 0 is not in 1-65535"),
        ("host:abc", "port 'abc' is not a number"),
        ("host:", "the port is missing"),
        ("[::1", "an IPv6 address goes as [ADDRESS]:PORT"),
        ("mqtts://host:8883", "give HOST or HOST:PORT"),
        ("bogus.invalid", "cannot resolve host 'bogus.invalid'"),
    ],
)
def test_demo_bad_broker_is_a_clear_error(spec: str, says: str) -> None:
    res = run_cli("demo", "--duration", "1", "--broker", spec)
    no_traceback(res)
    assert res.returncode == EXIT_USAGE
    assert says in res.stderr
    assert "terminal-gw demo:" not in res.stdout  # nothing was started


def in_own_network(script: str) -> subprocess.CompletedProcess[str]:
    """Run a Python script in a network namespace of its own (only its loopback): localhost
    there is not the machine's, and no name resolves."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a network namespace of its own")
    probe = subprocess.run(
        ["unshare", "--net", "true"], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()}")
    return subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


_LOCALHOST_DEMO = """
import subprocess, sys, tempfile
from pathlib import Path
from tests.broker import Broker
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
work = Path(tempfile.mkdtemp())
b = Broker(work, port=1883)
b.start()
try:
    res = subprocess.run(
        [sys.executable, "-m", "terminal_gw", "demo", "--broker", "localhost",
         "--duration", "5", "--state-dir", str(work / "demo")],
        capture_output=True, text=True, timeout=90,
    )
finally:
    b.kill()
sys.stdout.write(res.stdout)
sys.stderr.write(res.stderr)
sys.exit(res.returncode)
"""


def test_demo_broker_host_alone_means_port_1883() -> None:
    mosquitto_binary()
    res = in_own_network(_LOCALHOST_DEMO)
    no_traceback(res)
    assert res.returncode == 0, res.stderr
    assert "terminal-gw demo: using the broker at localhost:1883" in res.stdout
    assert "mosquitto_sub -h localhost -p 1883" in res.stdout
    assert "link connected" in res.stdout
    stopped = next(ln for ln in res.stdout.splitlines() if ln.startswith("stopped:"))
    assert int(stopped.split(" delivered")[0].split()[-1]) > 0


def test_demo_broker_name_that_does_not_resolve() -> None:
    script = (
        "import subprocess, sys\n"
        "res = subprocess.run([sys.executable, '-m', 'terminal_gw', 'demo', '--broker', 'bogus',"
        " '--duration', '1'], capture_output=True, text=True, timeout=60)\n"
        "sys.stdout.write(res.stdout); sys.stderr.write(res.stderr); sys.exit(res.returncode)\n"
    )
    res = in_own_network(script)
    no_traceback(res)
    assert res.returncode == EXIT_USAGE, res.stderr
    assert "error: --broker: cannot resolve host 'bogus'" in res.stderr


def _stopped_waiting(stdout: str) -> int:
    stopped = next(ln for ln in stdout.splitlines() if ln.startswith("stopped:"))
    return int(stopped.split(" delivered, ")[1].split()[0])


def test_demo_broker_none_keeps_its_records_in_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    res = run_cli("demo", "--broker", "none", "--duration", "4", "--state-dir", str(state))
    assert res.returncode == 0, res.stderr
    assert "no broker found" not in res.stdout
    assert "terminal-gw demo: no broker (--broker none): records wait in the outbox" in res.stdout
    waiting = _stopped_waiting(res.stdout)
    assert waiting > 0
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith(f"kept: {waiting} records waiting in {state / 'outbox.db'}")
    stats = run_cli("outbox", "stats", "--db", str(state / "outbox.db"), "--json")
    assert sum(s["count"] for s in json.loads(stats.stdout).values()) == waiting


def test_demo_without_state_dir_says_its_records_are_deleted() -> None:
    res = run_cli("demo", "--broker", "none", "--duration", "4")
    assert res.returncode == 0, res.stderr
    waiting = _stopped_waiting(res.stdout)
    assert waiting > 0
    last = res.stdout.strip().splitlines()[-1]
    m = re.fullmatch(
        rf"deleted: {waiting} records waiting in the outbox went with the temporary directory"
        r" (\S+) \(--state-dir DIR keeps them\)",
        last,
    )
    assert m, last
    assert not Path(m.group(1)).exists()


# --- outbox stats --db DIR ----------------------------------------------------------------


def test_outbox_on_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    for args in (["stats"], ["export"]):
        res = run_cli("outbox", *args, "--db", str(tmp_path))
        no_traceback(res)
        assert res.returncode == EXIT_USAGE
        assert f"error: {tmp_path} is a directory" in res.stderr
        assert str(tmp_path / "outbox.db") in res.stderr


# --- record --port MISSING ----------------------------------------------------------------


def test_record_missing_device_fails_and_leaves_no_capture(tmp_path: Path) -> None:
    port = "/dev/ttyUSB9"
    if os.path.exists(port):
        pytest.skip(f"{port} exists on this machine")
    out = tmp_path / "x.cap"
    # No --duration: it must fail at once, not wait for the device.
    res = run_cli("record", "--port", port, "--out", str(out), timeout=30)
    no_traceback(res)
    assert res.returncode == EXIT_USAGE
    assert f"error: no device at {port}: nothing recorded" in res.stderr
    assert "recorded 0 chunks" not in res.stderr
    assert not out.exists()


def test_record_device_the_user_may_not_open(operator: Operator) -> None:
    with reachable_dir() as base:
        device = PtyDevice(base / "gnss0")  # the pty's tty is root's, mode 0620
        try:
            out = base / "x.cap"
            base.chmod(0o777)  # nobody may write the capture; only the device is refused
            res = operator.run("record", "--port", device.path, "--out", str(out), timeout=30)
        finally:
            device.close()
        no_traceback(res)
        assert res.returncode == EXIT_PERMISSION, res.stderr
        assert f"permission denied: user nobody may not open the serial device {device.path}" in (
            res.stderr
        )
        assert not out.exists()


# --- environment and config-file errors ---------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[device]\nid = "env-1"\n')
    return cfg


def test_bad_environment_value_is_reported_as_the_environment(config: Path) -> None:
    res = run_cli("check-config", "--config", str(config), env={"TGW_MQTT__PORT": "abc"})
    assert res.returncode == EXIT_USAGE
    lines = res.stderr.splitlines()
    assert lines[0] == (
        f"error: the environment (TGW_ variables, applied over {config}): 1 invalid setting(s)"
    )
    assert lines[1] == (
        "  mqtt.port: from the environment (TGW_MQTT__PORT): Input should be a valid integer,"
        " unable to parse string as an integer, got 'abc'"
    )


def test_environment_and_file_errors_each_say_where(config: Path) -> None:
    config.write_text('[device]\nid = "env-1"\n[mqtt]\nkeepalive_s = 1\n')
    res = run_cli(
        "check-config",
        "--config",
        str(config),
        env={"TGW_MQTT__PORTT": "1884", "TGW_MQTT__PASSWORD": "fine"},
    )
    assert res.returncode == EXIT_USAGE
    assert f"error: {config} and the environment (TGW_ variables): 2 invalid" in res.stderr
    assert "  mqtt.keepalive_s: Input should be greater than or equal to 5, got 1\n" in res.stderr
    assert (
        "  mqtt.portt: from the environment (TGW_MQTT__PORTT): unknown key (set to '1884');"
        " did you mean 'port'?"
    ) in res.stderr


def test_unknown_key_is_called_unknown_key(config: Path) -> None:
    config.write_text('[device]\nid = "env-1"\nname = "x"\n[mqtt]\nhots = "broker"\n[gsm]\n')
    res = run_cli("check-config", "--config", str(config))
    assert res.returncode == EXIT_USAGE
    assert "Extra inputs are not permitted" not in res.stderr
    assert "  device.name: unknown key (set to 'x')\n" in res.stderr
    assert "  mqtt.hots: unknown key (set to 'broker'); did you mean 'host'?\n" in res.stderr
    assert "  gsm: unknown section\n" in res.stderr


def test_a_secret_is_not_echoed(config: Path) -> None:
    config.write_text('[device]\nid = "env-1"\n[mqtt]\npassword = 12345678\n')
    res = run_cli("check-config", "--config", str(config))
    assert res.returncode == EXIT_USAGE
    assert "mqtt.password: Input should be a valid string" in res.stderr
    assert "12345678" not in res.stderr


def test_toml_error_is_printed_once(config: Path) -> None:
    config.write_text('[device\nid = "x"\n')
    res = run_cli("check-config", "--config", str(config))
    assert res.returncode == EXIT_USAGE
    assert res.stderr.count("Expected ']'") == 1, res.stderr
    assert res.stderr.startswith(f"error: {config}: not valid TOML: Expected ']'")


# --- the unit's Documentation= ------------------------------------------------------------


def test_unit_documentation_is_installed_by_the_readme_steps(tmp_path: Path) -> None:
    unit_text = UNIT.read_text(encoding="utf-8")
    docs = re.findall(r"^Documentation=(.+)$", unit_text, re.MULTILINE)
    assert docs
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for url in docs:
        for target in url.split():
            assert target.startswith("file:///"), f"{target}: not a file the install provides"
            dest = target.removeprefix("file://")
            step = f"sudo install -D -m 0644 README.md {dest}"
            assert step in readme, f"the README's install steps do not install {dest}"
            assert step in unit_text, f"the unit's install comment does not install {dest}"
            # Run the step into a scratch root: the file the unit names is there afterwards.
            root = tmp_path / "root"
            subprocess.run(
                ["install", "-D", "-m", "0644", str(REPO / "README.md"), f"{root}{dest}"],
                check=True,
            )
            assert (root / dest.lstrip("/")).read_text(encoding="utf-8") == readme


def test_readme_lists_the_exit_codes_defined() -> None:
    from terminal_gw import exit_codes

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    codes = {v for k, v in vars(exit_codes).items() if k.startswith("EXIT_")}
    listed = {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    assert listed == codes


def test_setpriv_prefix_drops_to_nobody(operator: Operator) -> None:
    """Guards the permission tests: the CLI really runs as nobody, in the groups given."""
    script = "import os; print(os.getuid(), os.getgid(), sorted(os.getgroups()))"
    res = subprocess.run(
        [*setpriv([stand_in_group().gr_gid]), operator.python, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd="/",
    )
    uid, gid, *_ = res.stdout.split()
    nobody = pwd.getpwnam("nobody")
    assert (int(uid), int(gid)) == (nobody.pw_uid, grp.getgrnam("nogroup").gr_gid), res.stdout
    assert int(uid) != 0
    assert str(stand_in_group().gr_gid) in res.stdout
