"""Link profiles: the interface from the kernel's routes, bytes counted by the kernel, daily
budgets that survive a restart and reset at UTC midnight, classes and thinning per link."""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from terminal_gw.config import Config, LinkProfileConfig, load_config_data
from terminal_gw.errors import ConfigError
from terminal_gw.outbox import Outbox
from terminal_gw.uplink import LinkState, Uplink, links
from tests.broker import Broker
from tests.uplink_support import (
    DEVICE,
    Sms,
    event,
    fix,
    make_config,
    running,
    subscriber,
    topic_of,
)
from tests.waiting import wait_until

# /proc/net/route of a vessel: a default route over a Tiantong modem (wwan0), the shore VPN
# (10.0.0.0/8 over tun0) and the LAN; one route down (flags 0).
ROUTES_V4 = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wwan0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
tun0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t0002A8C0\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
# /proc/net/ipv6_route: 2001:db8::/32 over tun0, the default over wwan0.
ROUTES_V6 = (
    "20010db8000000000000000000000000 20 00000000000000000000000000000000 00"
    " 00000000000000000000000000000000 00000400 00000000 00000000 00000001 tun0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00"
    " fe800000000000000000000000000001 00000400 00000000 00000000 00000003 wwan0\n"
)


def test_interface_is_the_longest_matching_route() -> None:
    routes = links.parse_routes(ROUTES_V4, ROUTES_V6)
    assert links.interface_for("10.20.30.40", routes) == "tun0"
    assert links.interface_for("192.168.1.20", routes) == "eth0"
    assert links.interface_for("8.8.8.8", routes) == "wwan0"
    assert links.interface_for("192.168.2.5", routes) == "wwan0"  # eth1's route is down
    assert links.interface_for("2001:db8::1", routes) == "tun0"
    assert links.interface_for("2a00::1", routes) == "wwan0"
    assert links.interface_for("127.0.0.1", routes) == "lo"
    assert links.interface_for("not an address", routes) is None


def test_this_machines_default_route_is_read_from_the_kernel() -> None:
    routes = links.read_routes()
    text = Path("/proc/net/route").read_text().splitlines()[1:]
    default = [f.split()[0] for f in text if f.split()[1] == "00000000"]
    if default:
        assert links.interface_for("198.51.100.7", routes) == default[0]
    else:
        assert links.interface_for("198.51.100.7", routes) is None


def test_first_matching_profile_wins_and_the_last_is_the_default() -> None:
    profiles = [
        LinkProfileConfig(name="tiantong", interface="wwan*"),
        LinkProfileConfig(name="vpn", interface="tun?"),
        LinkProfileConfig(name="other"),
    ]
    assert links.choose_profile(profiles, "wwan0").name == "tiantong"
    assert links.choose_profile(profiles, "tun0").name == "vpn"
    assert links.choose_profile(profiles, "eth0").name == "other"
    assert links.choose_profile(profiles, None).name == "other"


def test_profile_names_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_data(
            {"device": {"id": "x"}, "links": [{"name": "a"}, {"name": "a"}]}, environ={}
        )
    assert any("used twice" in message for _, message in err.value.problems)


def test_the_kernel_counts_a_connections_bytes_both_ways() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        client.sendall(b"x" * 10_000)
        got = 0
        while got < 10_000:
            got += len(peer.recv(65536))
        peer.sendall(b"y" * 300)
        assert client.recv(300)
        count = links.wire_count(client)
        assert count is not None
        assert count.sent == 10_000
        assert count.received == 300
        assert count.segments >= 2
        assert count.total >= 10_300 + 2 * links.SEGMENT_OVERHEAD
    finally:
        for s in (client, peer, server):
            s.close()
    assert links.wire_count(object()) is None


def test_ledger_counts_by_the_clock_at_each_message_midnight_and_a_clock_set_back(
    tmp_path: Path,
) -> None:
    """The day is that of the clock at each count: a second before midnight counts to the old
    day, midnight to a new one, and a clock set back a day starts that day afresh."""
    midnight = datetime(2026, 12, 3, tzinfo=UTC).timestamp()
    now = [midnight - 1.0]
    profile = LinkProfileConfig(name="tiantong", budget_messages_per_day=2)
    ledger = links.LinkLedger(None, clock=lambda: now[0])
    ledger.add("tiantong", messages=2)
    assert ledger.over_budget(profile)
    assert ledger.day == "2026-12-02"
    now[0] = midnight
    assert not ledger.over_budget(profile)
    assert ledger.day == "2026-12-03"
    ledger.add("tiantong", messages=2)
    now[0] = midnight - 3600.0  # set back (an RTC corrected by GNSS time)
    assert ledger.summary(profile)["messages"] == 0
    assert ledger.day == "2026-12-02"


def test_ledger_budget_persists_and_resets_at_utc_midnight(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    now = [datetime(2026, 12, 2, 23, 59, 0, tzinfo=UTC).timestamp()]
    profile = LinkProfileConfig(
        name="tiantong", budget_bytes_per_day=1000, budget_messages_per_day=3
    )
    ledger = links.LinkLedger(path, clock=lambda: now[0])
    ledger.add("tiantong", nbytes=600, messages=1)
    assert not ledger.over_budget(profile)
    ledger.save()
    # A restart keeps counting the same day.
    again = links.LinkLedger(path, clock=lambda: now[0])
    assert again.summary(profile) == {
        "day": "2026-12-02",
        "bytes": 600,
        "messages": 1,
        "bytes_left": 400,
        "messages_left": 2,
    }
    again.add("tiantong", nbytes=400)
    assert again.over_budget(profile)
    again.save()
    # UTC midnight: a new day, a new budget, for this ledger and for one read after it.
    now[0] += 120
    assert not again.over_budget(profile)
    assert again.summary(profile)["bytes"] == 0
    assert links.LinkLedger(path, clock=lambda: now[0]).summary(profile)["bytes"] == 0
    json.loads(path.read_text())  # written whole
    # The messages budget counts too.
    again.add("tiantong", messages=3)
    assert again.over_budget(profile)


def with_links(config: Config, *profiles: dict[str, Any]) -> Config:
    return config.model_copy(
        update={"links": [LinkProfileConfig.model_validate(p) for p in profiles]}
    )


async def test_budget_holds_positions_back_but_messages_go_and_the_day_is_kept(
    tmp_path: Path, broker: Broker
) -> None:
    config = with_links(
        make_config(tmp_path, broker.port),
        {"name": "metered", "interface": "lo", "budget_messages_per_day": 5},
        {"name": "other"},
    )
    events: list[Any] = []
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=events.append)
        async with subscriber(broker.port, f"tgw/{DEVICE}/#") as got:
            for i in range(20):
                p = fix(i)
                await outbox.put(topic_of(config, p), p)
            async with running(uplink, outbox):
                await wait_until(lambda: uplink.state is LinkState.CONNECTED)
                assert uplink.profile.name == "metered"
                assert uplink.interface == "lo"
                await got.wait_for(lambda g: len(g.record_ids()) >= 5)
                await wait_until(lambda: uplink.counters.budget_reached == 1)
                s = Sms(n=1)
                await outbox.put(topic_of(config, s), s)
                await got.wait_for(lambda g: ("SMS", s.id) in g.record_ids())
                assert [c for c, _ in got.record_ids()].count("TPV") == 5
                await wait_until(lambda: outbox.depth == 15)  # held back, not dropped
                summary = uplink.link_summary()
                assert summary["profile"] == "metered"
                assert summary["messages"] == 6
                assert summary["messages_left"] == 0
                assert summary["over_budget"] is True
                assert summary["bytes"] > 0  # the kernel's count of this connection
                assert any("budget is used up" in e.message for e in events)
                # Forced onto the unmetered profile: the rest go at once.
                uplink.force_profile("other")
                await wait_until(lambda: outbox.depth == 0)
                assert uplink.profile.name == "other"
                assert uplink.link_summary()["forced"] is True
    saved = json.loads((tmp_path / "links.json").read_text())
    assert saved["links"]["metered"]["messages"] == 6
    assert saved["links"]["metered"]["bytes"] > 0
    # A restart on the same day finds the budget used.
    restarted = Uplink(config, outbox, events=lambda e: None)
    assert restarted.ledger.over_budget(config.links[0])


async def test_a_profile_carries_only_its_classes_and_thins_positions(
    tmp_path: Path, broker: Broker
) -> None:
    config = with_links(
        make_config(tmp_path, broker.port),
        {"name": "sat", "interface": "*", "classes": ["sms", "fix"], "position_interval_s": 60},
    )
    start = time.time() - 600
    clock = [start]
    async with Outbox(config.outbox, clock=lambda: clock[0]) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with subscriber(broker.port, f"tgw/{DEVICE}/#") as got:
            for i in range(300):  # 5 minutes at 1 Hz
                clock[0] = start + i
                p = fix(i, start + i)
                await outbox.put(topic_of(config, p), p)
            sky_like = Sms(n=7)
            await outbox.put(topic_of(config, sky_like), sky_like)
            e = event(1)
            await outbox.put(topic_of(config, e), e)
            async with running(uplink, outbox):
                await got.wait_for(lambda g: ("SMS", sky_like.id) in g.record_ids())
                await wait_until(lambda: outbox.depth == 1)  # the event waits
                fixes = [rid for c, rid in got.record_ids() if c == "TPV"]
                assert 5 <= len(fixes) <= 6  # one a minute
                assert uplink.counters.thinned == 300 - len(fixes)
                assert ("EVENT", e.id) not in got.record_ids()


async def test_the_profile_follows_the_route_when_it_moves_to_another_interface(
    tmp_path: Path, broker: Broker
) -> None:
    config = with_links(
        make_config(tmp_path, broker.port),
        {"name": "tiantong", "interface": "wwan*", "classes": ["sms"]},
        {"name": "lan"},
    )
    route = ["eth0"]
    events: list[Any] = []
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=events.append)
        uplink.interface_probe = lambda: route[0]
        uplink.route_check_s = 0.0  # look at every tick (a second)
        async with subscriber(broker.port, f"tgw/{DEVICE}/#") as got, running(uplink, outbox):
            await wait_until(lambda: uplink.state is LinkState.CONNECTED)
            assert (uplink.profile.name, uplink.interface) == ("lan", "eth0")
            connects = uplink.counters.connects
            # The LAN goes away and the default route is now the Tiantong modem.
            route[0] = "wwan0"
            await wait_until(lambda: uplink.counters.connects > connects, timeout=15)
            await wait_until(lambda: uplink.state is LinkState.CONNECTED)
            assert (uplink.profile.name, uplink.interface) == ("tiantong", "wwan0")
            assert any("moved to wwan0" in e.message for e in events)
            # On the Tiantong profile only SMS go.
            p, s = fix(1), Sms(n=1)
            await outbox.put(topic_of(config, p), p)
            await outbox.put(topic_of(config, s), s)
            await got.wait_for(lambda g: ("SMS", s.id) in g.record_ids())
            assert ("TPV", p.id) not in got.record_ids()
            assert outbox.depth == 1
