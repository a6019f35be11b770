"""The `bds/send` downlink command: validated like `sms/send`, queued by the RDSS driver.

`{"id", "to", "text" | "data", "mode": "auto"|"chinese"|"code"|"mixed", "class":
"normal"|"express"}`. The command runner checks size, topic, JSON and this model; the handler
checks the recipient (digits only), the content against the card's capacity, and queues it
(`RdssDriver.enqueue`). Nothing but validated digits and hex ever reaches the port: the text is
encoded to hex here, and the sentence builder refuses any field with a separator in it. A send
refused before it is queued is reported `failed` on `bds/tx/{id}` too, unless the id already
names a message.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from terminal_gw.commands.runner import COMMAND_ID, Answer, CommandSpec
from terminal_gw.errors import CommandError
from terminal_gw.rdss.driver import RdssDriver

__all__ = ["BdsSendCommand", "bds_send_spec"]


class BdsSendCommand(BaseModel):
    """`cmd/bds/send`: send `text` or `data` (hex) to the BeiDou user `to`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    id: str = Field(pattern=COMMAND_ID)
    to: str  # digits only, checked apart for its own error code
    text: str | None = Field(default=None, min_length=1)
    data: str | None = Field(default=None, min_length=2, pattern=r"^(?:[0-9A-Fa-f]{2})+$")
    mode: Literal["auto", "chinese", "code", "mixed"] = "auto"
    cls: Literal["normal", "express"] = Field(default="normal", alias="class")


class _Request(Protocol):
    @property
    def command_id(self) -> str | None: ...


def bds_send_spec(driver: RdssDriver) -> CommandSpec:
    """The command table row of `bds/send` for `driver`."""

    async def refused(request: _Request, data: dict[str, Any] | None, exc: CommandError) -> None:
        if request.command_id is not None:
            to = data.get("to") if data is not None else None
            await driver.report_refused(request.command_id, to, exc)

    async def handle(request: Any, command: Any) -> Answer:
        assert isinstance(command, BdsSendCommand)
        job, created = await driver.enqueue(
            command.id,
            command.to,
            text=command.text,
            data=command.data,
            mode=command.mode,
            cls=command.cls,
        )
        state = {"bds_id": job.id, "state": job.state, "attempts": job.attempts}
        if created:
            return Answer(result=state)
        same = (job.to, job.text, job.data and job.data.upper(), job.mode, job.cls) == (
            command.to,
            command.text,
            command.data and command.data.upper(),
            command.mode,
            command.cls,
        )
        if not same:
            return Answer(
                ok=False,
                code="id_conflict",
                reason=f"id {job.id!r} was already used for another message; not sent",
                result=state,
            )
        return Answer(result={**state, "duplicate": True})

    return CommandSpec(BdsSendCommand, handle, refused=refused)
