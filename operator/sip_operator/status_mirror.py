"""Follows every session's history stream in Redis with blocking XREADs, not a poller each.

Workers append each SipStatus to the session's stream `sip:{<namespace>/<name>}:history`
(sip_contract.status.stream_key), with fields `status`: the serialized ondewo.sip.SipStatus,
`type`: its type name, `seq`. A reader connection blocks in `XREAD BLOCK ... STREAMS <its
streams>`; when a stream joins it, `CLIENT UNBLOCK` wakes it (and the bounded block time wakes it
anyway), so a new session is followed at once. The newest entry of each stream that moved is
handed to a callback. Streams of deleted sessions get their retention set with EXPIRE.

On one Redis server, ONE reader follows every stream. A Redis Cluster (`?cluster=true` in the
URL) refuses a command whose keys lie in different hash slots, on any node (CROSSSLOT), and
each stream's hash tag is its own session: there it takes one reader per slot in use, each
connected to the primary serving that slot.
"""

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import redis.asyncio
import redis.asyncio.cluster
from google.protobuf.message import DecodeError
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from ondewo.sip import sip_pb2
from sip_contract.status import session_key, stream_key
from sip_operator.phase import WorkerStatus
from sip_worker.redis_connection import PASSWORD_ENV, parse_redis_url

logger = logging.getLogger(__name__)

SessionKey = tuple[str, str]  # (namespace, name)
Entry = tuple[bytes, dict[bytes, bytes]]
StatusCallback = Callable[[SessionKey, WorkerStatus], None]
Group = int | None  # the hash slot of a group of streams under a cluster; None: one server

_ENTRIES_PER_STREAM = 64  # only the newest matters; a cap keeps one reply small
_COMMAND_TIMEOUT = 30.0


def _stream(session: SessionKey) -> str:
    """The worker's history stream of the session (one cluster slot: see sip_contract)."""
    return stream_key(session_key(*session))


def parse_entry(fields: dict[bytes, bytes]) -> WorkerStatus:
    """A stream entry as a WorkerStatus; the readable `type` field if `status` is unreadable."""
    try:
        status = sip_pb2.SipStatus.FromString(fields[b"status"])
    except (KeyError, DecodeError):
        return WorkerStatus(type=fields.get(b"type", b"unknown").decode(errors="replace"))
    timestamp = None
    if status.HasField("timestamp"):
        moment = status.timestamp.ToDatetime(tzinfo=datetime.UTC)
        timestamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return WorkerStatus(
        type=sip_pb2.SipStatus.StatusType.Name(status.status_type),
        callee_id=status.callee_id,
        timestamp=timestamp,
        description=status.description,
    )


class _Reader:
    """One connection that blocks in XREAD, and the way to interrupt it from another one."""

    def __init__(
        self, client: redis.asyncio.Redis, unblock: Callable[[int], Awaitable[Any]]
    ) -> None:
        self._client = client
        self._unblock_via = unblock
        self._client_id: int | None = None
        self._blocked = False
        self._unblocking = False

    async def read(self, streams: dict[Any, Any], block_ms: int) -> list[Any]:
        if self._client_id is None:
            self._client_id = int(await self._client.client_id())
        self._blocked = True
        try:
            reply = await self._client.xread(streams, count=_ENTRIES_PER_STREAM, block=block_ms)
        finally:
            self._blocked = False
        return cast(list[Any], reply or [])

    def wake(self) -> None:
        """Ends a blocked XREAD now, so that the next one reads the current set of streams."""
        if self._blocked and not self._unblocking and self._client_id is not None:
            self._unblocking = True
            asyncio.get_running_loop().create_task(self._unblock(self._client_id))

    async def _unblock(self, client_id: int) -> None:
        try:
            await self._unblock_via(client_id)
        except (RedisError, RedisClusterException) as error:  # the block time bounds it
            logger.debug("CLIENT UNBLOCK failed: %s", error)
        finally:
            self._unblocking = False

    async def close(self) -> None:
        await self._client.aclose()


class StatusMirror:
    def __init__(
        self,
        redis_url: str,
        password: str | None,
        block_seconds: float = 5.0,
        retry_seconds: float = 1.0,
    ) -> None:
        """`redis_url` as the worker accepts it (RedisUrlError if not); `password` its password."""
        self._target = parse_redis_url(redis_url, {PASSWORD_ENV: password} if password else {})
        self._on_status: StatusCallback = lambda session, status: None
        self._block_ms = int(block_seconds * 1000)
        self._retry_seconds = retry_seconds
        self._cluster: redis.asyncio.cluster.RedisCluster | None = None
        self._server: redis.asyncio.Redis | None = None
        # The client for everything but the blocking reads.
        self._commands: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
        if self._target.cluster:
            self._cluster = redis.asyncio.cluster.RedisCluster(
                **self._target.options, socket_timeout=_COMMAND_TIMEOUT
            )
            self._commands = self._cluster
        else:
            self._server = redis.asyncio.Redis(
                **self._target.options, socket_timeout=_COMMAND_TIMEOUT
            )
            self._commands = self._server
        self._last_ids: dict[SessionKey, bytes] = {}  # followed sessions -> last entry seen
        self._unloaded: set[SessionKey] = set()  # followed, newest entry not read yet
        self._members: dict[Group, set[SessionKey]] = {}  # loaded sessions by reader group
        self._readers: dict[Group, _Reader] = {}
        self._reading: dict[Group, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._failures = 0

    def follow(self, session: SessionKey) -> None:
        """Starts mirroring a session's stream (its newest entry is delivered first)."""
        if session in self._last_ids or session in self._unloaded:
            return
        self._unloaded.add(session)
        self._changed.set()

    def unfollow(self, session: SessionKey) -> None:
        """Stops mirroring; its reader drops the stream from its next XREAD."""
        self._unloaded.discard(session)
        if self._last_ids.pop(session, None) is not None:
            self._members.get(self._group(session), set()).discard(session)

    def has_read(self, session: SessionKey) -> bool:
        """Whether the session's stream has been read (its newest entry, if any, delivered)."""
        return session in self._last_ids

    @property
    def followed(self) -> int:
        return len(self._last_ids) + len(self._unloaded)

    @property
    def readers(self) -> int:
        """Connections blocking in XREAD: one, or one per hash slot in use under a cluster."""
        return len(self._reading)

    async def expire(self, session: SessionKey, seconds: int) -> bool:
        """Lets the stream expire `seconds` from now; False if it does not exist."""
        return bool(await self._commands.expire(_stream(session), seconds))

    async def close(self) -> None:
        await self._stop_readers()
        await self._commands.aclose()

    def _group(self, session: SessionKey) -> Group:
        if self._cluster is None:
            return None
        return key_slot(_stream(session).encode())

    async def run(self, on_status: StatusCallback) -> None:
        """Hands each followed stream's newest entry to `on_status` until cancelled.

        Rides out Redis outages: retries, then re-reads the newest entry of every stream.
        """
        self._on_status = on_status
        try:
            while True:
                try:
                    await self._supervise()
                except (RedisError, RedisClusterException, OSError) as error:
                    self._failures += 1
                    await self._stop_readers()
                    self._unloaded.update(self._last_ids)  # re-read the newest after the outage
                    self._members.clear()
                    if self._failures == 1 or self._failures % 30 == 0:
                        logger.warning("Redis status streams unreadable (%s); retrying", error)
                    await asyncio.sleep(self._retry_seconds)
        finally:
            await self._stop_readers()

    def _reachable(self) -> None:
        if self._failures:
            logger.info("Redis is reachable again; mirroring %d streams", self.followed)
            self._failures = 0

    async def _supervise(self) -> None:
        """Loads newly followed streams and keeps one reader per group; raises what they raise."""
        while True:
            self._changed.clear()
            joined: set[Group] = set()
            if self._unloaded:
                joined = await self._load_newest()
                self._reachable()
            await self._start_readers(joined)
            changed = asyncio.get_running_loop().create_task(self._changed.wait())
            try:
                done, _ = await asyncio.wait(
                    {changed, *self._reading.values()}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                changed.cancel()
            for group, task in list(self._reading.items()):
                if task in done:
                    del self._reading[group]
                    await self._readers.pop(group).close()
                    task.result()  # a reader's error ends this supervision (run() retries)

    async def _start_readers(self, joined: set[Group]) -> None:
        """A reader for each group with streams; those `joined` by new streams are woken."""
        for group, members in list(self._members.items()):
            reader = self._readers.get(group)
            if reader is not None:
                if group in joined:
                    reader.wake()  # blocked since before the new stream joined
            elif members:
                reader = self._readers[group] = await self._new_reader(group)
                self._reading[group] = asyncio.get_running_loop().create_task(
                    self._read(group, reader), name=f"status reader {group}"
                )

    async def _new_reader(self, group: Group) -> _Reader:
        socket_timeout = self._block_ms / 1000 + _COMMAND_TIMEOUT
        if self._cluster is None or group is None:
            assert self._server is not None
            server = self._server
            return _Reader(
                redis.asyncio.Redis(
                    **self._target.options,
                    single_connection_client=True,
                    socket_timeout=socket_timeout,
                ),
                server.client_unblock,
            )
        cluster = self._cluster
        await cluster.initialize()
        node = cluster.nodes_manager.get_node_from_slot(group)
        options = {k: v for k, v in self._target.options.items() if k not in ("host", "port")}
        client = redis.asyncio.Redis(
            host=node.host,
            port=int(node.port),
            **options,
            single_connection_client=True,
            socket_timeout=socket_timeout,
        )

        def unblock(client_id: int) -> Awaitable[Any]:
            return cluster.client_unblock(client_id, target_nodes=node)

        return _Reader(client, unblock)

    async def _read(self, group: Group, reader: _Reader) -> None:
        """Reads the group's streams until it has none left (or Redis fails)."""
        while members := self._members.get(group):
            streams: dict[Any, Any] = {_stream(s): self._last_ids[s] for s in members}
            sessions = {_stream(s): s for s in members}
            reply = await reader.read(streams, self._block_ms)
            self._reachable()
            for name, entries in cast(list[tuple[bytes, list[Entry]]], reply):
                session = sessions.get(name.decode())
                if session is None or session not in self._last_ids or not entries:
                    continue
                entry_id, fields = entries[-1]
                self._last_ids[session] = entry_id
                self._on_status(session, parse_entry(fields))
        self._members.pop(group, None)

    async def _stop_readers(self) -> None:
        tasks = list(self._reading.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reading.clear()
        for reader in self._readers.values():
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                await reader.close()
        self._readers.clear()

    async def _load_newest(self) -> set[Group]:
        """For newly followed streams: drop any expiry, read the newest entry; their groups."""
        batch = list(self._unloaded)
        joined: set[Group] = set()
        async with self._commands.pipeline(transaction=False) as pipe:
            for session in batch:
                pipe.persist(_stream(session))
                pipe.xrevrange(_stream(session), count=1)
            replies = await pipe.execute()
        for index, session in enumerate(batch):
            if session not in self._unloaded:
                continue  # unfollowed meanwhile
            self._unloaded.discard(session)
            newest = cast(list[Entry], replies[2 * index + 1])
            if newest:
                entry_id, fields = newest[0]
                self._last_ids[session] = entry_id
                self._on_status(session, parse_entry(fields))
            else:
                self._last_ids[session] = b"0-0"
            group = self._group(session)
            self._members.setdefault(group, set()).add(session)
            joined.add(group)
        return joined
