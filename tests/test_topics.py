"""Topics: every topic of the contract's topic table, from one prefix and device id."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from terminal_gw import models
from terminal_gw.config import load_config
from terminal_gw.models import (
    BdsReceived,
    BdsSendProgress,
    CommandResult,
    Event,
    Fix,
    FixBatch,
    ModemStatus,
    Payload,
    RdssStatus,
    ReportedFix,
    Sky,
    SmsReceived,
    SmsSendProgress,
    Status,
)
from terminal_gw.topics import Topics
from tests.conftest import REPO, SHARED

#: A prefix of two levels, so nothing may assume one.
PREFIX = "fleet/north"
DEVICE = "vessel-042"
JOB = "job-7"
COMMAND = "sms/send"
ROW = re.compile(r"^\|\s*`\{prefix\}/\{device\}/([^`]+)`\s*\|", re.MULTILINE)


def table(path: Path) -> list[str]:
    """The topic paths (below `{prefix}/{device}/`) of a document's topic table."""
    rows = ROW.findall(path.read_text(encoding="utf-8"))
    assert rows, f"no topic table in {path}"
    return rows


def built(topics: Topics) -> dict[str, str]:
    """Each path template of the table, as Topics gives it."""
    return {
        "status": topics.of(Status.model_construct()),
        "gnss/fix": topics.of(Fix.model_construct()),
        "gnss/fix/batch": topics.of(FixBatch.model_construct()),
        "gnss/sky": topics.of(Sky.model_construct()),
        "gnss/batch": topics.batch,
        "modem/status": topics.of(ModemStatus.model_construct()),
        "sms/rx": topics.of(SmsReceived.model_construct()),
        "sms/tx/{id}": topics.of(SmsSendProgress.model_construct(sms_id=JOB)),
        "bds/rx": topics.of(BdsReceived.model_construct()),
        "bds/tx/{id}": topics.of(BdsSendProgress.model_construct(bds_id=JOB)),
        "rdss/status": topics.of(RdssStatus.model_construct()),
        "event": topics.of(Event.model_construct()),
        "cmd-result/{name}": topics.of(CommandResult.model_construct(command=COMMAND)),
        "cmd/{name}": topics.command(COMMAND),
    }


def expected(path: str) -> str:
    return f"{PREFIX}/{DEVICE}/" + path.replace("{id}", JOB).replace("{name}", COMMAND)


@pytest.mark.parametrize(
    "document",
    [SHARED / "DESIGN.md", REPO / "README.md"],
    ids=["DESIGN.md", "README.md"],
)
def test_topics_gives_every_topic_of_the_topic_table(document: Path) -> None:
    got = built(Topics(PREFIX, DEVICE))
    for path in table(document):
        assert path in got, f"{document.name} lists {path}, which Topics does not give"
        assert got[path] == expected(path)


def test_every_topic_topics_gives_is_in_the_readme_table() -> None:
    assert sorted(built(Topics(PREFIX, DEVICE))) == sorted(table(REPO / "README.md"))


def test_every_payload_model_is_published_on_a_topic_of_the_table() -> None:
    paths = set(built(Topics(PREFIX, DEVICE)).values())
    kinds: list[type[Payload]] = [
        c
        for c in vars(models).values()
        if isinstance(c, type) and issubclass(c, Payload) and c is not Payload
    ]
    assert ReportedFix in kinds
    ids: dict[str, Callable[[type[Payload]], Payload]] = {
        "SmsSendProgress": lambda c: c.model_construct(sms_id=JOB),
        "BdsSendProgress": lambda c: c.model_construct(bds_id=JOB),
        "CommandResult": lambda c: c.model_construct(command=COMMAND),
    }
    for kind in kinds:
        payload = ids.get(kind.__name__, lambda c: c.model_construct())(kind)
        assert Topics(PREFIX, DEVICE).of(payload) in paths, kind.__name__


def test_the_named_topics_and_the_command_subscription() -> None:
    topics = Topics(PREFIX, DEVICE)
    assert topics.base == "fleet/north/vessel-042"
    assert topics.status == topics.of(Status.model_construct())
    assert topics.command_filter == "fleet/north/vessel-042/cmd/#"
    assert topics.command("ping").startswith(topics.command_prefix)
    assert topics.below("x/y") == "fleet/north/vessel-042/x/y"
    other = topics.for_device("vessel-9")
    assert other.of(ReportedFix.model_construct()) == "fleet/north/vessel-9/gnss/fix"


def test_the_topics_of_a_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[device]\nid = "{DEVICE}"\n[mqtt]\nprefix = "{PREFIX}"\n')
    assert Topics.of_config(load_config(path)) == Topics(PREFIX, DEVICE)
