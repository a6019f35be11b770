"""Downlink commands: validate, dispatch through a table, answer; send SMS from a durable queue.

A command is a JSON object published on `{prefix}/{device}/cmd/{name}`. It is checked in this
order, and anything wrong gets an error answer (never silence): the payload is at most
`mqtt.max_command_bytes` (a larger one is refused by its length alone: it is not decoded,
not even for its id), the topic is this device's, the name is known, the payload is JSON with
no key twice, it is an object, it validates against the command's model (unknown fields
refused), and its MQTT 5 response topic, when it gives one, is one the device may publish to.

Answers (`CommandResult`) go to:

- `{prefix}/{device}/cmd-result/{name}` always, through the outbox (class "command",
  committed before the call returns), so an answer is not lost while the link is down. The
  topic is outside `cmd/#`: the daemon never hears its own answers.
- the command's MQTT 5 response topic, when given, with its correlation data, published at
  once (`publish_now`). Not through the outbox: the outbox keeps topic and payload, not MQTT 5
  properties, so a stored answer would reach the requester without its correlation data,
  and late (the requester has stopped waiting). When the link is down the answer on the
  response topic is dropped and counted; the durable copy above still arrives, and carries
  the correlation data as hex in `correlation`.

A response topic is refused when it is empty, longer than `MAX_TOPIC_BYTES`, holds a NUL or
control character or is not UTF-8, has a wildcard, starts with `$` (the broker's `$SYS/...`),
or is this device's own `cmd/` (the answer would come back as a command). Beyond that, with
`commands.response_topics` empty any topic outside `{prefix}/` is allowed (inside it are other
devices' commands and this device's fixes and status); with it set, only topics matching one
of its filters, wherever they are. A command with a refused response topic is not run: a
request whose answer cannot reach the requester should not have effects the requester
never hears of (an SMS sent and billed). It is answered on `cmd-result/{name}` only, with
code `response_topic_refused` and the reason; nothing is published on the refused topic.

`sms/send` queues the message in the command store (sqlite, synchronous=FULL) and answers at
once; a sender task takes the queue in order, one part at a time, and reports progress on
`{prefix}/{device}/sms/tx/{id}` (also through the outbox): queued, sending, sent (message
references) or failed (3GPP reason). Sending part by part means the ledger counts exactly
the parts that went out, and a retry after a failure in the middle of a long message sends
only the parts still missing, with the same concatenation reference. An `sms/send` refused
before it is queued (a bad number, a text too long, a refused response topic, ...) that
carries a usable id is also reported `failed` on `sms/tx/{id}`, with the code and reason,
unless that id already names a message: then that message's state stands. A refusal does
not take the id: the corrected command may use it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from structlog.typing import FilteringBoundLogger

from terminal_gw.commands.failures import backoff_s, classify
from terminal_gw.commands.store import CommandStore, SmsJob
from terminal_gw.config import MAX_TOPIC_BYTES, Config
from terminal_gw.errors import CommandError, StoreError, TerminalGwError, UplinkError
from terminal_gw.models import (
    CommandResult,
    RecordSink,
    SmsSendProgress,
    iso_utc,
    new_id,
    stable_id,
)
from terminal_gw.modem.sms import SubmitPdu, encode_submit
from terminal_gw.topics import Topics

#: A phone number as the port may see it: digits only, an optional leading +.
NUMBER = re.compile(r"\+?[0-9]{3,20}")
#: Ids go into topics (`sms/tx/{id}`): no `/`, `+`, `#` or spaces.
COMMAND_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_COMMAND_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}(?:/[a-z0-9][a-z0-9_-]{0,31}){0,3}")


# ---------------------------------------------------------------------------
# The interfaces the runner drives.


class SmsModem(Protocol):
    """The modem driver (`terminal_gw.modem.tiantong`): sends SMS-SUBMIT PDUs, polls status."""

    async def send_sms(self, pdus: Sequence[SubmitPdu]) -> list[int]:
        """Send the PDUs in order; their message references. ModemError on failure."""
        ...

    async def poll_now(self) -> None:
        """Read signal, registration and operator now and publish the modem status."""
        ...


class Responder(Protocol):
    """Publishes an answer at once (`terminal_gw.uplink.Uplink`); UplinkError when offline."""

    async def publish_now(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        qos: int = 1,
        correlation_data: bytes | None = None,
    ) -> None:
        """Publish now, bypassing the outbox."""
        ...


# ---------------------------------------------------------------------------
# Command models (what may be published on cmd/<name>).


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class SmsSendCommand(_Command):
    """`cmd/sms/send`: send `text` to `to`; `id` names the message (a repeat is not resent)."""

    id: str = Field(pattern=COMMAND_ID)
    to: str  # the number rule is checked apart, for its own error code
    text: str = Field(min_length=1)


class PingCommand(_Command):
    """`cmd/ping`: answered at once with the time and the SMS queue depth."""

    id: str | None = Field(default=None, pattern=COMMAND_ID)


class ModemStatusCommand(_Command):
    """`cmd/modem/status`: poll the modem now (the status arrives on `modem/status`)."""

    id: str | None = Field(default=None, pattern=COMMAND_ID)


class _Meta(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def response_topic(self) -> str | None: ...
    @property
    def correlation_data(self) -> bytes | None: ...


def _answer_id(meta: _Meta, now: float, tag: str) -> str:
    """The id of an answer: stable for a command stored in the uplink's inbox (its receipt),
    so that a command run again after a kill answers with the same ids; else a new one."""
    receipt = getattr(meta, "receipt", None)
    if isinstance(receipt, str):
        ms = receipt.partition("@")[2]
        return stable_id(int(ms) if ms.isdigit() else int(now * 1000), f"{receipt}/{tag}".encode())
    return new_id(int(now * 1000))


@dataclass(frozen=True, slots=True)
class _Request:
    name: str
    meta: _Meta
    command_id: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What a command handler returns; None from a handler that answers later."""

    ok: bool = True
    result: dict[str, Any] | None = None
    code: str | None = None
    reason: str | None = None


Handler = Callable[[_Request, Any], Awaitable[Answer | None]]
#: Called when a command with a usable id is refused (its progress topic reports it).
RefusedHook = Callable[[_Request, "dict[str, Any] | None", CommandError], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One row of the command table: its payload model, its handler and what reports a
    refusal of it (sms/send and bds/send: `failed` on their progress topic)."""

    model: type[BaseModel]
    handler: Handler
    refused: RefusedHook | None = None


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(payload)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _peek_id(data: dict[str, Any]) -> str | None:
    """The command's id when it has a usable one, even if the rest is invalid."""
    value = data.get("id")
    if isinstance(value, str) and re.fullmatch(COMMAND_ID, value):
        return value
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _decode(payload: bytes) -> tuple[dict[str, Any], list[str]]:
    """The command's JSON object and the keys found twice in it (at any depth), in order."""
    twice: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out and key not in twice:
                twice.append(key)
            out[key] = value
        return out

    try:
        data = json.loads(payload, object_pairs_hook=pairs, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise CommandError(f"not JSON: {_shown(str(exc), 200)}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise CommandError("a command is a JSON object", code="invalid")
    return data, twice


def _shown(text: str, limit: int = 120) -> str:
    """`text` cut to `limit` characters, anything UTF-8 cannot carry (lone surrogates) escaped."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether the MQTT topic filter `pattern` (`+`, `#`) matches the topic name `topic`."""
    levels = topic.split("/")
    for i, level in enumerate(pattern.split("/")):
        if level == "#":
            return True  # also the parent: "a/#" matches "a"
        if i >= len(levels) or level not in {"+", levels[i]}:
            return False
    return len(pattern.split("/")) == len(levels)


def _bad_topic_char(c: str) -> bool:
    o = ord(c)
    # NUL and control characters (MQTT-1.5.4-2, 1.5.4-3), surrogates (not UTF-8), BOM.
    return o < 0x20 or 0x7F <= o < 0xA0 or 0xD800 <= o < 0xE000 or o == 0xFEFF


def _one_reference(mrs: Sequence[int]) -> int:
    if len(mrs) != 1:
        raise TerminalGwError(f"the driver returned {len(mrs)} message references for 1 part")
    return int(mrs[0])


def _hex(data: bytes | None) -> str | None:
    return None if data is None else data.hex()


# ---------------------------------------------------------------------------
# The runner.


class CommandRunner:
    """Validates and runs downlink commands; sends queued SMS (a long-lived stage)."""

    def __init__(
        self,
        config: Config,
        store: CommandStore,
        outbox: RecordSink,
        modem: SmsModem,
        *,
        responder: Responder | None = None,
        log: FilteringBoundLogger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = config.commands
        self._store = store
        self._outbox = outbox
        self._modem = modem
        #: Set after construction when the uplink is built with `on_command=runner.handle`.
        self.responder = responder
        self._log: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.commands")
        self._clock = clock
        self._max_bytes = int(config.mqtt.max_command_bytes)
        self._topics = Topics.of_config(config)
        self._prefix = config.mqtt.prefix
        self._cmd_prefix = self._topics.command_prefix
        self._wake = asyncio.Event()
        # Orders progress: "queued" is stored before the sender can report "sending".
        self._order = asyncio.Lock()
        self._tg: asyncio.TaskGroup | None = None
        self._polling = False
        self.commands: dict[str, CommandSpec] = {
            "sms/send": CommandSpec(SmsSendCommand, self._sms_send, self._send_refused),
            "ping": CommandSpec(PingCommand, self._ping),
            "modem/status": CommandSpec(ModemStatusCommand, self._modem_status),
        }
        self.counters: dict[str, int] = {
            "commands": 0,
            "refused": 0,  # invalid, unknown, too large: answered with an error
            "too_large": 0,  # refused by length, unread
            "answered": 0,
            "responses_sent": 0,  # answers published on a response topic
            "responses_dropped": 0,  # response topic given but the link was down
            "response_topics_refused": 0,  # not run: answered on cmd-result only
            "results_lost": 0,  # the outbox refused an answer or a progress record
            "sms_queued": 0,
            "sms_refused": 0,  # refused before queueing, reported failed on sms/tx/{id}
            "sms_duplicates": 0,
            "sms_sent": 0,
            "sms_parts_sent": 0,
            "sms_failed": 0,
            "sms_retries": 0,
            "sms_rate_limited": 0,
            "sms_interrupted": 0,
            "sms_unconfirmed": 0,  # failed: no answer after a part went to the modem
        }

    # ---- life -------------------------------------------------------------------------

    async def run(self) -> None:
        """Settle what a restart interrupted, then send queued SMS until cancelled."""
        if self._tg is not None:
            raise CommandError("the command runner is already running", code="busy")
        now = self._clock()
        for job in await self._store.recover(now):
            if job.state == "failed":
                self.counters["sms_interrupted"] += 1
                self.counters["sms_failed"] += 1
                self._log.warning("sms_interrupted", sms_id=job.id, reason=job.reason)
            await self._progress(job)
        with contextlib.suppress(StoreError):
            await self._store.prune(now, keep_s=self._cfg.history_days * 86400.0)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._sender(), name="commands-sms-sender")
        finally:
            self._tg = None

    # ---- commands ---------------------------------------------------------------------

    async def handle(self, topic: str, payload: bytes, meta: _Meta) -> None:
        """Run one command (the uplink's `on_command`); `topic` is its name below `cmd/`."""
        name = topic.removeprefix(self._cmd_prefix)
        self.counters["commands"] += 1
        request = _Request(name, meta)
        data: dict[str, Any] | None = None
        spec: CommandSpec | None = None  # set once the command is known to be this device's
        answer: Answer | None
        try:
            self._check_size(payload, getattr(meta, "size", None))
            try:
                data, twice = _decode(payload)
            except CommandError:
                self._spec(name, meta)  # another device's or an unknown command: said first
                raise
            request = _Request(name, meta, None if "id" in twice else _peek_id(data))
            spec = self._spec(name, meta)
            command = self._validate(spec, data, twice)
            self._check_response_topic(meta)
            answer = await spec.handler(request, command)
        except CommandError as exc:
            self.counters["refused"] += 1
            self._log.info(
                "command_refused", command=_shown(name, 64), code=exc.code, reason=str(exc)
            )
            if spec is not None and spec.refused is not None and request.command_id is not None:
                await spec.refused(request, data, exc)
            answer = Answer(ok=False, code=exc.code, reason=str(exc))
        except StoreError as exc:
            self._log.error("command_store_failed", command=_shown(name, 64), error=str(exc))
            answer = Answer(
                ok=False, code="store", reason=f"the command store failed: {exc.reason}"
            )
        if answer is not None:
            await self._answer(request, answer)

    def _check_size(self, payload: bytes, sent: int | None) -> None:
        # `sent`: the size the broker sent, where the uplink kept only a part of it.
        size = max(len(payload), sent or 0)
        if size > self._max_bytes:
            # Refused by its length alone: not decoded, not copied, not even for its id.
            self.counters["too_large"] += 1
            raise CommandError(
                f"command of {size} bytes is over the limit of {self._max_bytes}"
                " (mqtt.max_command_bytes); it was not read",
                code="too_large",
            )

    def _spec(self, name: str, meta: _Meta) -> CommandSpec:
        """The command's table row; CommandError for another device's topic or an unknown name."""
        if meta.topic != self._cmd_prefix + name:
            raise CommandError(
                f"topic {_shown(meta.topic)!r} is not this device's command topic",
                code="foreign_topic",
            )
        spec = self.commands.get(name)
        if spec is None:
            raise CommandError(
                f"unknown command {_shown(name, 64)!r}; known: {', '.join(sorted(self.commands))}",
                code="unknown_command",
            )
        return spec

    @staticmethod
    def _validate(spec: CommandSpec, data: dict[str, Any], twice: list[str]) -> BaseModel:
        """The validated model; CommandError saying what is wrong."""
        if twice:
            keys = ", ".join(repr(_shown(k, 64)) for k in twice[:5])
            raise CommandError(
                f"key {keys} given twice: refused, as which value counts would be a guess",
                code="duplicate_key",
            )
        try:
            return spec.model.model_validate(data)
        except ValidationError as exc:
            raise CommandError(_shown(_validation_reason(exc), 500), code="invalid") from None

    def _response_topic_refusal(self, topic: str) -> str | None:
        """Why the device will not publish an answer on `topic`; None when it may."""
        if not topic:
            return "is empty"
        if any(_bad_topic_char(c) for c in topic):
            return "holds a NUL, a control character or text that is not UTF-8"
        size = len(topic.encode("utf-8"))
        if size > MAX_TOPIC_BYTES:
            return f"is {size} bytes, over the limit of {MAX_TOPIC_BYTES}"
        if "+" in topic or "#" in topic:
            return "has a wildcard (+ or #): no answer can be published there"
        if topic.startswith("$"):
            return "starts with $: those topics ($SYS/...) are the broker's"
        own = self._cmd_prefix.removesuffix("/")
        if topic == own or topic.startswith(self._cmd_prefix):
            return "is this device's command topic: the answer would come back as a command"
        allowed = self._cfg.response_topics
        if allowed:
            if any(topic_matches(p, topic) for p in allowed):
                return None
            return f"matches none of commands.response_topics ({', '.join(allowed)[:200]})"
        if topic == self._prefix or topic.startswith(self._prefix + "/"):
            return (
                f"is inside this system's topics ({self._prefix}/...: other devices' commands,"
                " this device's fixes and status); allow it in commands.response_topics"
            )
        return None

    def _check_response_topic(self, meta: _Meta) -> None:
        topic = meta.response_topic
        if topic is None:
            return
        why = self._response_topic_refusal(topic)
        if why is not None:
            self.counters["response_topics_refused"] += 1
            self._log.warning("command_response_topic_refused", topic=_shown(topic), reason=why)
            raise CommandError(
                f"response topic {_shown(topic)!r} {why}; the command was not run",
                code="response_topic_refused",
            )

    async def _send_refused(
        self, request: _Request, data: dict[str, Any] | None, exc: CommandError
    ) -> None:
        """Report an sms/send refused before it was queued as failed on sms/tx/{id}."""
        sms_id = request.command_id
        if sms_id is None:
            return
        to = data.get("to") if data is not None else None
        async with self._order:
            try:
                if await self._store.get(sms_id) is not None:
                    return  # the id names a message already taken: its state stands
            except StoreError as err:
                self._log.error("command_store_failed", command="sms/send", error=str(err))
                return
            now = self._clock()
            self.counters["sms_refused"] += 1
            await self._store_result(
                SmsSendProgress(
                    id=_answer_id(request.meta, now, "sms-refused"),
                    time=iso_utc(now),
                    sms_id=sms_id,
                    state="failed",
                    to=_shown(to, 64) if isinstance(to, str) else "",
                    parts=0,
                    code=exc.code,
                    reason=str(exc),
                )
            )

    async def _answer(self, request: _Request, answer: Answer) -> None:
        now = self._clock()
        name = request.name if _COMMAND_NAME.fullmatch(request.name) else "unknown"
        result = CommandResult(
            id=_answer_id(request.meta, now, "result"),
            time=iso_utc(now),
            command=name,
            command_id=request.command_id,
            ok=answer.ok,
            code=answer.code,
            reason=None if answer.reason is None else _shown(answer.reason, 1000),
            result=answer.result or {},
            correlation=_hex(request.meta.correlation_data),
        )
        self.counters["answered"] += 1
        await self._respond(request.meta, result)
        await self._store_result(result)

    async def _respond(self, meta: _Meta, result: CommandResult) -> None:
        topic = meta.response_topic
        if topic is None or self.responder is None:
            return
        if self._response_topic_refusal(topic) is not None:
            return  # refused in handle (answered on cmd-result only)
        try:
            await self.responder.publish_now(
                topic,
                result.to_json().encode(),
                qos=1,
                correlation_data=meta.correlation_data,
            )
        except UplinkError as exc:
            self.counters["responses_dropped"] += 1
            self._log.info("command_response_not_sent", topic=_shown(topic), reason=str(exc))
        else:
            self.counters["responses_sent"] += 1

    async def _store_result(self, payload: CommandResult | SmsSendProgress) -> None:
        try:
            await self._outbox.put(self._topics.of(payload), payload, sync=True)
        except StoreError as exc:
            # The command store still holds the SMS's state; a repeat of the command shows it.
            self.counters["results_lost"] += 1
            self._log.error("command_result_not_stored", topic=payload.topic_path(), error=str(exc))

    async def _ping(self, request: _Request, command: PingCommand) -> Answer:
        waiting = await self._store.waiting()
        return Answer(result={"pong": True, "time": iso_utc(self._clock()), "sms_waiting": waiting})

    async def _modem_status(self, request: _Request, command: ModemStatusCommand) -> Answer | None:
        tg = self._tg
        if tg is None:
            raise CommandError("the command runner is not running", code="busy")
        if self._polling:
            raise CommandError("a modem poll is already running", code="busy")
        self._polling = True
        # Polled in the runner's task group: the uplink's receive loop must not wait on the modem.
        tg.create_task(self._poll(request), name="commands-modem-poll")
        return None

    async def _poll(self, request: _Request) -> None:
        try:
            async with asyncio.timeout(self._cfg.poll_timeout_s):
                await self._modem.poll_now()
        except TimeoutError:
            answer = Answer(
                ok=False,
                code="timeout",
                reason=f"the modem poll took over {self._cfg.poll_timeout_s:g} s",
            )
        except TerminalGwError as exc:
            answer = Answer(ok=False, code="modem", reason=exc.reason or str(exc))
        except Exception as exc:  # noqa: BLE001 - a driver bug must not stop the SMS sender
            self._log.exception("modem_poll_failed")
            answer = Answer(ok=False, code="modem", reason=f"{type(exc).__name__}: {exc}")
        else:
            answer = Answer(result={"polled": True})
        finally:
            self._polling = False
        await self._answer(request, answer)

    # ---- sms/send ---------------------------------------------------------------------

    async def _sms_send(self, request: _Request, command: SmsSendCommand) -> Answer:
        return await self._queue_sms(command)

    async def queue_sms(self, sms_id: str, to: str, text: str) -> None:
        """Queue an SMS of the daemon's own (a fallback track report) as `cmd/sms/send` does:
        durable, sent by the same worker under the same cost guard, progress on sms/tx/{id}.
        CommandError when it is refused (invalid number, too long, the store)."""
        answer = await self._queue_sms(SmsSendCommand(id=sms_id, to=to, text=text))
        if not answer.ok:
            raise CommandError(
                answer.reason or "the SMS was refused", code=answer.code or "refused"
            )

    async def _queue_sms(self, command: SmsSendCommand) -> Answer:
        if not NUMBER.fullmatch(command.to):
            raise CommandError(
                f"invalid phone number {command.to[:32]!r}:"
                " expected 3-20 digits with an optional +",
                code="invalid_number",
            )
        # Encode now: a text too long or not encodable is refused before it is queued.
        pdus = encode_submit(command.to, command.text, max_parts=self._cfg.sms_max_parts, ref=0)
        now = self._clock()
        async with self._order:
            try:
                job, created = await self._store.add_sms(
                    command.id, command.to, command.text, parts=len(pdus), now=now
                )
            except StoreError as exc:
                raise CommandError(
                    f"cannot queue the SMS: {exc.reason}", code="store", reason=exc.reason
                ) from exc
            if created:
                self.counters["sms_queued"] += 1
                self._log.info("sms_queued", sms_id=job.id, parts=job.parts)
            else:
                self.counters["sms_duplicates"] += 1
            # A repeat gets the current state again on sms/tx/{id} too: a consumer that missed
            # the first reports catches up.
            await self._progress(job)
        self._wake.set()
        state = {"sms_id": job.id, "state": job.state, "parts": job.parts, "mr": list(job.mrs)}
        if created:
            return Answer(result=state)
        if (job.to, job.text) != (command.to, command.text):
            return Answer(
                ok=False,
                code="id_conflict",
                reason=f"id {job.id!r} was already used for another message; not sent",
                result=state,
            )
        return Answer(result={**state, "duplicate": True})

    def _progress_payload(self, job: SmsJob) -> SmsSendProgress:
        now = self._clock()
        return SmsSendProgress(
            id=new_id(int(now * 1000)),
            time=iso_utc(now),
            sms_id=job.id,
            state=job.state,
            to=job.to,
            parts=job.parts,
            mr=list(job.mrs),
            attempts=job.attempts,
            code=job.code,
            reason=job.reason,
            error_code=job.error_code,
            retry_at=iso_utc(job.next_at) if job.state == "queued" and job.attempts else None,
        )

    async def _progress(self, job: SmsJob) -> None:
        await self._store_result(self._progress_payload(job))

    async def _sender(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            try:
                job, next_at = await self._store.next_due(now)
                if job is not None:
                    await self._send(job)
                    continue
            except StoreError as exc:
                # A job the store failed under mid-send stays "sending" and is not taken again:
                # a restart settles it (in doubt: failed; between parts: resumed).
                self._log.error("sms_store_failed", error=str(exc))
                next_at = now + 5.0
            wait = 60.0 if next_at is None else min(60.0, max(0.0, next_at - now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _send(self, job: SmsJob) -> None:
        now = self._clock()
        try:
            pdus = encode_submit(job.to, job.text, max_parts=255, ref=job.ref)
        except CommandError as exc:
            await self._fail(job, "invalid", str(exc))
            return
        remaining = pdus[len(job.mrs) :]
        hour, day = await self._store.usage(now)
        need = len(remaining)
        cfg = self._cfg
        if hour + need > cfg.max_sms_per_hour or day + need > cfg.max_sms_per_day:
            self.counters["sms_rate_limited"] += 1
            await self._fail(
                job,
                "rate_limited",
                f"cost guard: {need} part(s) to send, {hour} of {cfg.max_sms_per_hour} sent in"
                f" the last hour, {day} of {cfg.max_sms_per_day} in the last day",
            )
            return
        async with self._order:
            job = await self._store.begin_attempt(job.id, now)
            await self._progress(job)
        for pdu in remaining:
            row = await self._store.begin_part(job.id, pdu.part, self._clock())
            try:
                async with asyncio.timeout(cfg.send_timeout_s):
                    mrs = await self._modem.send_sms([pdu])
                mr = _one_reference(mrs)
            except Exception as exc:  # noqa: BLE001 - every failure is classified and reported
                failure = classify(exc)
                if failure.maybe_sent:
                    await self._store.part_unknown(job.id)
                else:
                    await self._store.part_not_sent(job.id, row)
                self._log.warning(
                    "sms_send_failed",
                    sms_id=job.id,
                    part=pdu.part,
                    code=failure.code,
                    reason=failure.reason,
                    transient=failure.transient,
                )
                if failure.maybe_sent and not cfg.resend_unconfirmed:
                    # The part may be on its way: sending it again could deliver (and bill) it
                    # twice. The sender decides, as after a crash with a part in doubt.
                    self.counters["sms_unconfirmed"] += 1
                    await self._fail(
                        job,
                        "unconfirmed",
                        f"{failure.reason}: part {pdu.part} of {pdu.total} may have been sent,"
                        " so it is not sent again (commands.resend_unconfirmed = false)",
                        failure.error_code,
                    )
                elif failure.transient and job.attempts <= cfg.retry_count:
                    delay = backoff_s(job.attempts, cfg.retry_backoff_s, cfg.retry_backoff_max_s)
                    self.counters["sms_retries"] += 1
                    job = await self._store.retry(
                        job.id,
                        at=self._clock() + delay,
                        now=self._clock(),
                        code=failure.code,
                        reason=failure.reason,
                        error_code=failure.error_code,
                    )
                    await self._progress(job)
                else:
                    reason = failure.reason
                    if failure.transient:
                        reason = f"{reason} (gave up after {job.attempts} attempts)"
                    await self._fail(job, failure.code, reason, failure.error_code)
                return
            job = await self._store.part_sent(job.id, mr, self._clock())
            self.counters["sms_parts_sent"] += 1
        job = await self._store.finish(job.id, "sent", now=self._clock())
        self.counters["sms_sent"] += 1
        self._log.info("sms_sent", sms_id=job.id, parts=job.parts, mr=list(job.mrs))
        await self._progress(job)

    async def _fail(
        self, job: SmsJob, code: str, reason: str, error_code: int | None = None
    ) -> None:
        job = await self._store.finish(
            job.id, "failed", now=self._clock(), code=code, reason=reason, error_code=error_code
        )
        self.counters["sms_failed"] += 1
        self._log.warning("sms_failed", sms_id=job.id, code=code, reason=reason)
        await self._progress(job)
