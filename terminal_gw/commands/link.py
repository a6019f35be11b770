"""The `link/set` downlink command: force a link profile, or go back to choosing by interface.

`{"id", "profile": "NAME" | null}`. For a link the kernel cannot tell apart (the same
interface carries a cheap and a metered path), the fleet names the profile; `null` returns to
choosing by the interface. The change takes effect at once: the connection is dropped and made
again under the new profile. The answer carries the profile named and today's use of it.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from terminal_gw.commands.runner import COMMAND_ID, Answer, CommandSpec
from terminal_gw.errors import CommandError, UplinkError

__all__ = ["LinkSetCommand", "link_set_spec"]


class LinkSetCommand(BaseModel):
    """`cmd/link/set`: use the profile named (null: choose by interface again)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: str | None = Field(default=None, pattern=COMMAND_ID)
    profile: str | None = Field(min_length=1, max_length=64)


class _Links(Protocol):
    def force_profile(self, name: str | None) -> None: ...
    def profile_names(self) -> list[str]: ...


def link_set_spec(uplink: _Links) -> CommandSpec:
    """The command table row of `link/set` for `uplink`."""

    async def handle(request: Any, command: Any) -> Answer:
        assert isinstance(command, LinkSetCommand)
        try:
            uplink.force_profile(command.profile)
        except UplinkError as exc:
            raise CommandError(
                f"{exc}; the profiles are {', '.join(uplink.profile_names())}",
                code="unknown_profile",
            ) from exc
        return Answer(result={"profile": command.profile, "forced": command.profile is not None})

    return CommandSpec(LinkSetCommand, handle)
