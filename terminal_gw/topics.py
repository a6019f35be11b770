"""The MQTT topics of one device: `{prefix}/{device}` built once, every topic below it.

A payload's topic is `{prefix}/{device}/` followed by its `topic_path()` (`gnss/fix`,
`sms/tx/{id}`, `cmd-result/{name}`, ...): `Topics.of` is the one place that joins them. The
topics that carry no payload model (the compact batch, the command subscription) are named
here too, so DESIGN.md's topic table is this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from terminal_gw.wire.codec import TOPIC_SUFFIX as BATCH_PATH

if TYPE_CHECKING:
    from terminal_gw.config import Config
    from terminal_gw.models import Payload

__all__ = ["Topics"]


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of device `device` under `prefix` (`[mqtt] prefix`, `[device] id`)."""

    prefix: str
    device: str
    #: `{prefix}/{device}`: every topic of the device starts with it.
    base: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", f"{self.prefix}/{self.device}")

    @classmethod
    def of_config(cls, config: Config) -> Topics:
        """The topics of the configured device."""
        return cls(config.mqtt.prefix, config.device.id)

    def for_device(self, device: str) -> Topics:
        """Another device's topics under the same prefix (a shore station's senders)."""
        return Topics(self.prefix, device)

    def below(self, path: str) -> str:
        """`{prefix}/{device}/{path}`."""
        return f"{self.base}/{path}"

    def of(self, payload: Payload) -> str:
        """The full topic a payload is published on."""
        return f"{self.base}/{payload.topic_path()}"

    @property
    def status(self) -> str:
        """The retained status (online, offline: the last will)."""
        return f"{self.base}/status"

    @property
    def batch(self) -> str:
        """Fixes in the compact binary format (docs/wire-format.md)."""
        return f"{self.base}/{BATCH_PATH}"

    @property
    def command_prefix(self) -> str:
        """What every downlink command topic starts with: `{prefix}/{device}/cmd/`."""
        return f"{self.base}/cmd/"

    @property
    def command_filter(self) -> str:
        """The subscription that takes every downlink command."""
        return f"{self.base}/cmd/#"

    def command(self, name: str) -> str:
        """The topic downlink command `name` (`sms/send`, `ping`, ...) arrives on."""
        return f"{self.base}/cmd/{name}"
