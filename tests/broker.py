"""A real mosquitto broker for tests, on a free loopback port; killable and restartable."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    """The mosquitto executable; tests that need a broker fail loudly without one."""
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if path is None:
        raise RuntimeError(
            "mosquitto is not installed: scripts/test installs it (apt-get install mosquitto)"
        )
    return path


@dataclass
class Broker:
    """One mosquitto process. `extra_conf` lines are appended to its config (TLS listeners...)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    extra_conf: list[str] = field(default_factory=list)
    listener_conf: list[str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_conf(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_inflight_messages 100",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            # As root mosquitto drops to user `mosquitto` and then cannot write our tmp dir.
            lines.append("user root")
        if self.listener_conf is None:
            lines += [f"listener {self.port} {self.host}", "allow_anonymous true"]
        else:
            lines += self.listener_conf
        lines += self.extra_conf
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until its port accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        conf = self.write_conf()
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def kill(self) -> None:
        """Cut the link for real: SIGKILL the broker (no clean disconnects)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        """Stop the broker politely."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Kill and start again on the same port."""
        self.kill()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
