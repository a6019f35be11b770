"""Shared fixtures: a real mosquitto broker per test, a real PostgreSQL cluster per session,
a systemd notify socket, corpus paths, leftover-task check."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.broker import Broker
from tests.pg import Postgres

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"
GNSS_CORPUS = CORPUS / "gnss"
AT_CORPUS = CORPUS / "at"
RDSS_CORPUS = CORPUS / "rdss"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto started for this test on a free port; killed afterwards."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = Broker(workdir)
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A non-blocking datagram socket standing in for systemd's, and its NOTIFY_SOCKET value."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()


@pytest.fixture(autouse=True)
async def _no_leftover_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running on its loop."""
    yield
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if leftovers:
        for t in leftovers:
            t.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        names = ", ".join(sorted(t.get_name() for t in leftovers))
        pytest.fail(f"test left tasks running: {names}")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster for the whole session (initdb + pg_ctl, a free port)."""
    cluster = Postgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg(pg_cluster: Postgres) -> Iterator[Postgres]:
    """The session's cluster with an empty test database; started again if a test stopped it."""
    if not (pg_cluster.data / "postmaster.pid").exists():
        pg_cluster.start()
    pg_cluster.reset()
    yield pg_cluster
    if not (pg_cluster.data / "postmaster.pid").exists():
        pg_cluster.start()
