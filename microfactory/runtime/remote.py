"""Machines driven by one process, commanded from many: PostgreSQL LISTEN/NOTIFY.

Topology (docs/architecture.md): exactly one *machine host* process per host runs the
supervisors, the queue and the scheduler; any number of *web workers* serve HTTP. A web
worker's `RemoteFleet` looks like the host's `Fleet` to the routes:

- commands (start a job, pause, resume, cancel, emergency stop, raw G-code, "this machine was
  created or changed") travel as a NOTIFY on `mf_machine_commands`; the host answers on the
  worker's own reply channel, or the worker gives up after `timeout_s` with a clear error;
- the host publishes status snapshots on `mf_machine_status`: changes coalesced per machine
  every 100 ms, and a full snapshot every few seconds as a heartbeat, so every worker serves
  live `GET /machines` and the SSE stream.

NOTIFY payloads are limited to 8,000 bytes, so messages travel as numbered chunks and are put
together on arrival. The database is the only shared state: nothing else links the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory import errors
from microfactory.events import Actor
from microfactory.machines.models import Machine
from microfactory.machines.service import offline_status
from microfactory.runtime.fleet import Fleet

log = logging.getLogger("microfactory.runtime.remote")

COMMANDS = "mf_machine_commands"
STATUS = "mf_machine_status"
JOB_EVENTS = "mf_job_events"
# NOTIFY takes at most 7,999 bytes. A chunk is JSON text (ASCII: json.dumps escapes the
# rest) that the envelope escapes again, so each character takes at most two bytes there.
CHUNK_CHARS = 3500
MAX_PAYLOAD_BYTES = 7999
STATUS_INTERVAL_S = 0.1  # coalesce status changes; a dashboard needs no more than 10 a second
HEARTBEAT_S = 3.0  # full snapshot; a worker that hears none for 3 beats shows machines offline
RECONCILE_S = 5.0  # the host re-reads the machine table this often, in case a NOTIFY was lost
COMMAND_TIMEOUT_S = 15.0  # G28 or a heater wait answers at once: commands are not long-running
RESET_TIMEOUT_S = 75.0  # a reset reconnects the machine (the host gives it 60 s)

# Domain errors travel as their HTTP status; the worker raises the same kind.
_ERRORS: dict[int, type[errors.DomainError]] = {
    400: errors.BadRequestError,
    401: errors.NotAuthenticatedError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    413: errors.PayloadTooLargeError,
    422: errors.InvalidInputError,
}


def libpq_dsn(database_url: str) -> str:
    """Turn a SQLAlchemy PostgreSQL URL into a libpq one (psycopg connects with it)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError("LISTEN/NOTIFY needs PostgreSQL")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def envelopes_of(message: Any) -> list[str]:
    """Return the NOTIFY payloads that carry a message: numbered chunks of its JSON."""
    text = json.dumps(message, default=str, separators=(",", ":"))
    chunks = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
    mid = uuid.uuid4().hex[:12]
    return [
        json.dumps({"m": mid, "i": i, "n": len(chunks), "d": chunk}, separators=(",", ":"))
        for i, chunk in enumerate(chunks)
    ]


class Bus:
    """LISTEN on some channels and NOTIFY on any, reconnecting with backoff.

    One connection listens, another sends: psycopg serialises a connection's commands, and
    the listener spends its time waiting for notifications.
    """

    def __init__(self, dsn: str, channels: list[str]) -> None:
        self.dsn = dsn
        self.channels = channels
        self.handlers: list[Callable[[str, Any], Awaitable[None] | None]] = []
        self.on_connect: list[Callable[[], Awaitable[None] | None]] = []
        self._sender: psycopg.AsyncConnection[Any] | None = None
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._parts: dict[str, dict[int, str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.listening = asyncio.Event()

    async def start(self) -> None:
        """Start listening; return once the first LISTEN is in place (or after 10 s)."""
        self._task = asyncio.create_task(self._listen(), name="bus-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), 10)

    async def stop(self) -> None:
        """Stop listening and close both connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for task in list(self._tasks):
            task.cancel()
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await self._sender.close()
            self._sender = None

    async def send(self, channel: str, message: Any) -> None:
        """NOTIFY a JSON message, in chunks if it is long."""
        envelopes = envelopes_of(message)
        async with self._send_lock:
            for attempt in (1, 2):
                try:
                    if self._sender is None or self._sender.closed:
                        self._sender = await psycopg.AsyncConnection.connect(
                            self.dsn, autocommit=True
                        )
                    for envelope in envelopes:
                        await self._sender.execute("SELECT pg_notify(%s, %s)", (channel, envelope))
                    return
                except psycopg.OperationalError:
                    self._sender = None  # reconnect once; a second failure is the caller's
                    if attempt == 2:
                        raise

    async def _listen(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                    for channel in self.channels:
                        await conn.execute(f'LISTEN "{channel}"')  # names are ours: [a-z_0-9]
                    self.listening.set()
                    backoff = 0.5
                    for hook in self.on_connect:
                        self._spawn(hook())
                    async for note in conn.notifies():
                        self._receive(note.channel, note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: wait and listen again
                self.listening.clear()
                log.warning("notification link lost (%s); reconnecting in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _receive(self, channel: str, payload: str) -> None:
        try:
            env = json.loads(payload)
            mid, index, total, data = env["m"], int(env["i"]), int(env["n"]), env["d"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed notification on %s", channel)
            return
        if total == 1:
            text = data
        else:
            parts = self._parts.setdefault(mid, {})
            parts[index] = data
            if len(parts) < total:
                if len(self._parts) > 1000:  # lost chunks must not pile up
                    self._parts.pop(next(iter(self._parts)))
                return
            text = "".join(parts[i] for i in range(total))
            del self._parts[mid]
        try:
            message = json.loads(text)
        except ValueError:
            log.warning("ignored a malformed message on %s", channel)
            return
        for handler in self.handlers:
            self._spawn(handler(channel, message))

    def _spawn(self, result: Awaitable[None] | None) -> None:
        if result is None:
            return

        async def run() -> None:
            try:
                await result
            except Exception:
                log.exception("notification handler failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _with_actor(args: dict[str, Any], actor: Actor | None) -> dict[str, Any]:
    """Add who asked, so the job's history names the person, not the machine host."""
    if actor is not None:
        args["actor"] = {"kind": actor.kind, "user_id": actor.user_id, "name": actor.name}
    return args


def _actor_from(data: Any) -> Actor | None:
    if not isinstance(data, dict):
        return None
    user_id = data.get("user_id")
    return Actor(
        str(data.get("kind") or "user"),
        int(user_id) if user_id is not None else None,
        str(data["name"]) if data.get("name") is not None else None,
    )


# -- the machine host -------------------------------------------------------------------


class MachineHost:
    """Serve commands from web workers on this process's fleet, and publish its status."""

    def __init__(
        self,
        fleet: Fleet,
        sessionmaker: async_sessionmaker[AsyncSession],
        dsn: str,
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        self.fleet = fleet
        self.sessionmaker = sessionmaker
        self.bus = Bus(dsn, [COMMANDS])
        self.bus.handlers.append(self._on_message)
        self.on_wake = on_wake
        self.host_id = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._changed: dict[int, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Listen for commands and start publishing status."""
        await self.bus.start()
        self._tasks = [
            asyncio.create_task(self._collect(), name="host-collect"),
            asyncio.create_task(self._publish(), name="host-publish"),
            asyncio.create_task(self._reconcile(), name="host-reconcile"),
        ]
        log.info("machine host %s listening for commands", self.host_id)

    async def stop(self) -> None:
        """Stop serving."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.bus.stop()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Return every supervised machine's status, keyed by id (JSON keys are strings)."""
        return {str(mid): status for mid, status in self.fleet.snapshots().items()}

    async def _collect(self) -> None:
        updates = self.fleet.subscribe()
        try:
            async for kind, machine_id, status in updates:
                # Announcements (a machine added, changed, removed) go through the job event
                # relay, one NOTIFY each: merged here, the next status would replace them, and
                # web workers would cache a removed machine or a one-off flag as its status.
                if kind == "machine" and not (status.get("edited") or status.get("removed")):
                    self._changed[machine_id] = status
        finally:
            await updates.aclose()  # type: ignore[attr-defined]

    async def _publish(self) -> None:
        last_full = 0.0
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            try:
                now = time.monotonic()
                if now - last_full >= HEARTBEAT_S:
                    self._changed.clear()
                    last_full = now
                    await self.bus.send(
                        STATUS, {"host": self.host_id, "full": True, "machines": self.snapshot()}
                    )
                elif self._changed:
                    changed, self._changed = self._changed, {}
                    machines = {str(k): v for k, v in changed.items()}
                    await self.bus.send(
                        STATUS, {"host": self.host_id, "full": False, "machines": machines}
                    )
            except Exception as exc:  # the database is away; the bus reconnects
                log.warning("could not publish machine status: %s", exc)

    async def _reconcile(self) -> None:
        """Bring the supervisors in line with the machine table (a lost NOTIFY, a restart)."""
        while True:
            await asyncio.sleep(RECONCILE_S)
            try:
                async with self.sessionmaker() as session:
                    machines = {m.id: m for m in (await session.execute(select(Machine))).scalars()}
                for machine_id in set(machines) | set(self.fleet.supervisors):
                    with contextlib.suppress(errors.ConflictError):  # busy: next round
                        await self.fleet.sync(machines.get(machine_id), machine_id)
            except Exception as exc:  # the database is away: try again next round
                log.warning("could not reconcile the machines: %s", exc)

    async def _on_message(self, _channel: str, message: Any) -> None:
        if not isinstance(message, dict) or "op" not in message:
            return
        reply_to = message.get("reply_to")
        try:
            result = await self._execute(message)
            reply = {"id": message.get("id"), "ok": True, "result": result}
        except errors.DomainError as exc:
            reply = {"id": message.get("id"), "ok": False, "status": exc.status_code,
                     "detail": exc.detail}  # fmt: skip
        except Exception as exc:  # a driver bug must answer, not leave the worker waiting
            log.exception("machine command %s failed", message.get("op"))
            reply = {"id": message.get("id"), "ok": False, "status": 409,
                     "detail": f"the machine host could not do that: {exc}"}  # fmt: skip
        if isinstance(reply_to, str) and reply_to.startswith("mf_reply_"):
            await self.bus.send(reply_to, reply)

    async def _execute(self, message: dict[str, Any]) -> Any:
        op = message["op"]
        args = message.get("args") or {}
        if op == "snapshot":
            return self.snapshot()
        if op == "wake":
            if self.on_wake is not None:
                self.on_wake()
            return None
        machine_id = int(message["machine_id"])
        async with self.sessionmaker() as session:
            machine = await session.get(Machine, machine_id)
        if op == "sync":
            await self.fleet.sync(machine, machine_id)
            return None
        if machine is None:
            raise errors.NotFoundError(f"machine {machine_id} not found")
        if op == "send_commands":
            return await self.fleet.send_commands(machine, [str(x) for x in args["lines"]])
        handle = self.fleet.get(machine)
        actor = _actor_from(args.get("actor"))
        if op == "start_job":
            await handle.start_job(int(args["job_id"]), actor=actor)
        elif op in ("pause", "resume", "cancel", "emergency_stop"):
            await getattr(handle, op)(actor=actor)
        elif op == "reset":
            return await handle.reset(actor=actor)
        else:
            raise errors.BadRequestError(f"unknown machine command {op!r}")
        return None


# -- a web worker -----------------------------------------------------------------------


class RemoteMachine:
    """A machine driven by the machine host, with the supervisor's command methods."""

    def __init__(self, fleet: RemoteFleet, machine_id: int, name: str) -> None:
        self._fleet = fleet
        self.machine_id = machine_id
        self.name = name

    async def start_job(self, job_id: int, actor: Actor | None = None) -> None:
        """Start an assigned job on the machine."""
        await self._fleet.request(
            "start_job", self.machine_id, _with_actor({"job_id": job_id}, actor)
        )

    async def pause(self, actor: Actor | None = None) -> None:
        """Pause the running job."""
        await self._fleet.request("pause", self.machine_id, _with_actor({}, actor))

    async def resume(self, actor: Actor | None = None) -> None:
        """Resume the paused job."""
        await self._fleet.request("resume", self.machine_id, _with_actor({}, actor))

    async def cancel(self, actor: Actor | None = None) -> None:
        """Cancel the running job."""
        await self._fleet.request("cancel", self.machine_id, _with_actor({}, actor))

    async def emergency_stop(self, actor: Actor | None = None) -> None:
        """Stop the machine now."""
        await self._fleet.request("emergency_stop", self.machine_id, _with_actor({}, actor))

    async def reset(self, actor: Actor | None = None) -> dict[str, Any]:
        """Reset and reconnect the machine (the host waits for it to answer again)."""
        result = await self._fleet.request(
            "reset", self.machine_id, _with_actor({}, actor), timeout_s=RESET_TIMEOUT_S
        )
        return dict(result or {})

    async def send_commands(self, lines: list[str]) -> list[dict[str, Any]]:
        """Send raw lines and return the replies."""
        result = await self._fleet.request("send_commands", self.machine_id, {"lines": lines})
        return list(result or [])


class RemoteFleet(Fleet):
    """The fleet as a web worker sees it: status from the host's snapshots, commands to it."""

    def __init__(self, dsn: str, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.reply_channel = f"mf_reply_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.bus = Bus(dsn, [STATUS, self.reply_channel])
        self.bus.handlers.append(self._on_message)
        self.bus.on_connect.append(self._refresh)
        self.cached: dict[int, dict[str, Any]] = {}
        self.names: dict[int, str] = {}
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._last_heard = 0.0

    @property
    def host_alive(self) -> bool:
        """Return whether the machine host was heard from recently."""
        return time.monotonic() - self._last_heard < 3 * HEARTBEAT_S

    async def start(
        self,
        sessionmaker: Any = None,
        upload_dir: Any = None,
        *,
        unknown_command_policy: str = "fail",
    ) -> None:
        """Listen for status and replies, and ask the host for a first snapshot."""
        self.running = True
        await self.bus.start()

    async def stop(self) -> None:
        """Stop listening; commands in flight fail."""
        self.running = False
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(errors.ConflictError("this web worker is shutting down"))
        await self.bus.stop()

    async def _refresh(self) -> None:
        with contextlib.suppress(errors.DomainError):
            machines = await self.request("snapshot", None)
            self._apply(machines or {}, full=True)

    def _apply(self, machines: dict[str, Any], *, full: bool) -> None:
        self._last_heard = time.monotonic()
        updates = {int(k): dict(v) for k, v in machines.items()}
        if full:
            for gone in set(self.cached) - set(updates):
                self.cached.pop(gone, None)
        for machine_id, status in updates.items():
            if self.cached.get(machine_id) != status:
                self.cached[machine_id] = status
                self.publish_status(machine_id, status)

    async def _on_message(self, channel: str, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if channel == STATUS:
            self._apply(message.get("machines") or {}, full=bool(message.get("full")))
            return
        fut = self._pending.pop(str(message.get("id")), None)
        if fut is None or fut.done():
            return
        if message.get("ok"):
            fut.set_result(message.get("result"))
        else:
            kind = _ERRORS.get(int(message.get("status") or 409), errors.ConflictError)
            fut.set_exception(kind(str(message.get("detail") or "the machine host refused")))

    async def request(
        self,
        op: str,
        machine_id: int | None,
        args: dict[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Any:
        """Send a command to the machine host and wait for its answer."""
        wait_s = timeout_s if timeout_s is not None else self.timeout_s
        rid = uuid.uuid4().hex
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        message = {"id": rid, "reply_to": self.reply_channel, "op": op,
                   "machine_id": machine_id, "args": args or {}}  # fmt: skip
        try:
            try:
                await self.bus.send(COMMANDS, message)
            except psycopg.Error as exc:
                raise errors.ConflictError(
                    f"cannot reach the machine host through the database: {exc}"
                ) from None
            try:
                return await asyncio.wait_for(fut, wait_s)
            except TimeoutError:
                raise errors.ConflictError(
                    f"the machine host did not answer within {wait_s:g} s; is "
                    "`microfactory machines` (or `microfactory serve`) running?"
                ) from None
        finally:
            self._pending.pop(rid, None)

    # -- the Fleet interface the routes use ------------------------------------------

    def status(self, machine: Machine) -> dict[str, Any]:
        """Return the machine's status as the host last reported it."""
        self.names[machine.id] = machine.name
        status = self.cached.get(machine.id)
        if status is None or not self.host_alive or not machine.enabled:
            status = offline_status(machine)
            if machine.driver != "manual" and machine.enabled and not self.host_alive:
                status = {**status, "message": "the machine host is not running"}
            return status
        if machine.maintenance:
            status = {**status, "maintenance": True}
        return dict(status)

    def running_job(self, machine_id: int) -> int | None:
        """Return the job a machine runs, as the host last reported."""
        value = (self.cached.get(machine_id) or {}).get("job_id")
        return int(value) if value is not None else None

    def snapshots(self) -> dict[int, dict[str, Any]]:
        """Return every machine's status as the host last reported it."""
        return {mid: dict(status) for mid, status in list(self.cached.items())}

    def get(self, machine: Machine) -> RemoteMachine:  # type: ignore[override]
        """Return a handle that sends the machine's commands to the host, if it runs."""
        self.names[machine.id] = machine.name
        if not self.host_alive:
            raise errors.ConflictError(
                f"machine {machine.name!r} cannot take commands: the machine host is not "
                "running (start `microfactory machines`, or `microfactory serve`)"
            )
        return RemoteMachine(self, machine.id, machine.name)

    async def send_commands(self, machine: Machine, lines: list[str]) -> list[dict[str, Any]]:
        """Send raw lines through the host."""
        return await self.get(machine).send_commands(lines)

    async def sync(self, machine: Machine | None, machine_id: int) -> None:
        """Tell the host a machine was created, changed or removed (after commit).

        With no host running there is nobody to tell: it loads every machine when it starts.
        A host that runs but was not heard from yet still gets the news; and the host
        reconciles its supervisors with the database every few seconds, so a lost
        notification delays a change, never loses it.
        """
        if self.host_alive:
            await self.request("sync", machine_id)
            if machine is None or not machine.enabled:  # the host stopped its supervisor
                self.cached.pop(machine_id, None)
        else:
            with contextlib.suppress(psycopg.Error):
                await self.bus.send(COMMANDS, {"op": "sync", "id": None, "machine_id": machine_id})

    def wake_queue(self) -> None:
        """Ask the host's queue to look again (fire and forget)."""
        task = asyncio.ensure_future(self._wake())
        self.bus._tasks.add(task)
        task.add_done_callback(self.bus._tasks.discard)

    async def _wake(self) -> None:
        with contextlib.suppress(Exception):
            await self.bus.send(COMMANDS, {"op": "wake", "id": None})


class QueueWaker:
    """`app.state.queue_runner` on a web worker: wakes the host's queue."""

    def __init__(self, fleet: RemoteFleet) -> None:
        self.fleet = fleet

    def wake(self) -> None:
        """Ask the host to look at the queue now."""
        self.fleet.wake_queue()


class JobEventRelay:
    """Job transitions (and changes of booked time, of fabrication requests, of the machine
    registry, and new messages) on every process's live stream, whichever process committed
    them.

    The lifecycle publishes a transition after its commit in the process that made it (a web
    worker approving, the machine host finishing a print). Each process forwards its own on
    `mf_job_events` and puts the others' on its local hub, so every SSE stream shows them.
    Each is one NOTIFY of its own, in the order they were made: unlike the machine host's
    status, nothing here is coalesced, so an announcement is never replaced by the next one.
    """

    def __init__(self, dsn: str, fleet: Fleet) -> None:
        self.fleet = fleet
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.bus = Bus(dsn, [JOB_EVENTS])
        self.bus.handlers.append(self._on_message)

    async def start(self) -> None:
        """Start listening."""
        await self.bus.start()

    async def stop(self) -> None:
        """Stop listening."""
        await self.bus.stop()

    def forward(self, job_id: int, event: dict[str, Any]) -> None:
        """Send a local transition to the other processes (fire and forget)."""
        self._send({"origin": self.origin, "job_id": job_id, "event": event})

    def forward_booking(self, machine_id: int) -> None:
        """Send a local change of a machine's booked time to the other processes."""
        self._send({"origin": self.origin, "booking": machine_id})

    def forward_request(self, request_id: str, member_id: int | None) -> None:
        """Send a local change of a fabrication request to the other processes."""
        self._send({"origin": self.origin, "request": request_id, "member_id": member_id})

    def forward_machine(self, machine_id: int, status: dict[str, Any]) -> None:
        """Send a local announcement of a machine added, changed or removed (its status with
        `name` and `edited`, or `removed`) to the other processes."""
        self._send({"origin": self.origin, "machine": machine_id, "status": status})

    def forward_message(self, user_id: int, kind: str) -> None:
        """Send a local new message for a person (the unread badge) to the other processes."""
        self._send({"origin": self.origin, "message_for": user_id, "kind": kind})

    def _send(self, message: dict[str, Any]) -> None:
        async def send() -> None:
            with contextlib.suppress(Exception):  # the local stream has it; others may miss it
                await self.bus.send(JOB_EVENTS, message)

        self.bus._spawn(send())

    async def _on_message(self, _channel: str, message: Any) -> None:
        if not isinstance(message, dict) or message.get("origin") == self.origin:
            return
        if "booking" in message:
            self.fleet.publish_booking(int(message["booking"]))
        elif "machine" in message:
            status = message.get("status")
            if isinstance(status, dict):
                self.fleet.publish_status(int(message["machine"]), status)
        elif "message_for" in message:
            self.fleet.publish_message(int(message["message_for"]), str(message.get("kind") or ""))
        elif "request" in message:
            member = message.get("member_id")
            self.fleet.publish_request(str(message["request"]), int(member) if member else None)
        else:
            self.fleet.publish_job(int(message["job_id"]), dict(message.get("event") or {}))
