"""Follows every session's history stream in Redis with blocking XREADs, not a poller each.

Workers append each SipStatus to the session's stream `sip:history:{<shard>}:<namespace>/<name>`
(sip_contract.status.stream_key), with fields `status`: the serialized ondewo.sip.SipStatus,
`type`: its type name, `seq`. A reader connection blocks in `XREAD BLOCK ... STREAMS <its
streams>`; when a stream joins it, `CLIENT UNBLOCK` wakes it (and the bounded block time wakes it
anyway), so a new session is followed at once. A followed stream's newest `CATCH_UP_ENTRIES`
entries are handed to a callback, oldest first, then every later entry, in order, each once.
Streams of deleted sessions get their retention set with EXPIRE.

Connections, whatever the number of sessions: one reader per shard in use, at most `SHARDS`
(16). The streams of a shard share one hash slot, so under a Redis Cluster (`?cluster=true` in
the URL), which refuses a command whose keys lie in different slots (CROSSSLOT), each reader
connects to the primary serving its shard. On one server the shards keep each XREAD small: a
status wakes only its shard's reader, whose next XREAD names a sixteenth of the streams.
Everything else (loading, EXPIRE, CLIENT UNBLOCK, the legacy polls) goes through one command
client running at most `COMMAND_CONNECTIONS` (2) commands at once: at most 2 connections to a
server, or to each primary of a cluster (its pool is capped at that per node), where redis-py's
discovery (CLUSTER SLOTS) keeps one more per node. So at most 16 + 2 connections to one server,
and 16 + 3 per node to a cluster. All of them are named `CLIENT_NAME` (see CLIENT LIST).

Streams of earlier versions (sip_contract.status.legacy_stream_key) keep being followed while a
worker of such a version may still write them: as long as a followed session's legacy stream
exists, or its sharded one does not yet, it is polled through the command client. A legacy
stream that exists is polled every `legacy_poll_seconds`. A session with neither stream (as a
rule a new worker that has not written yet, which its shard's reader follows anyway) is polled
ever less often, the interval doubling up to `legacy_poll_max_seconds`, so a fleet of new
sessions costs no per-second poll of each; an earlier version's first status of such a session
arrives within that interval. The new worker moves the legacy entries to the sharded stream
with their ids (sip_worker.legacy_history) and deletes the legacy one; a session's entries from
either stream are delivered only with ids above the last one delivered, so none twice and none
out of order.
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
from sip_contract.status import (
    legacy_stream_key,
    session_key,
    shard,
    shard_hash_tag,
    stream_key,
)
from sip_operator.phase import WorkerStatus
from sip_worker.redis_connection import PASSWORD_ENV, parse_redis_url

logger = logging.getLogger(__name__)

SessionKey = tuple[str, str]  # (namespace, name)
Entry = tuple[bytes, dict[bytes, bytes]]
StatusCallback = Callable[[SessionKey, WorkerStatus], None]
Group = int  # a shard: its streams share one hash slot and one reader

CLIENT_NAME = "sip-operator-status-mirror"
COMMAND_CONNECTIONS = 2
# A newly followed stream's newest entries, delivered oldest first: enough to tell a call that
# is still on behind its registration's ups and downs (sip_operator.phase.WorkerStatuses).
CATCH_UP_ENTRIES = 16
_ENTRIES_PER_STREAM = 64  # a cap keeps one reply small; the next read goes on from there
_COMMAND_TIMEOUT = 30.0
_NO_ENTRY = b"0-0"


def _stream(session: SessionKey) -> str:
    """The worker's history stream of the session (its shard's cluster slot: sip_contract)."""
    return stream_key(session_key(*session))


def _legacy_stream(session: SessionKey) -> str:
    return legacy_stream_key(session_key(*session))


def _entry_id(entry_id: bytes) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition(b"-")
    return int(milliseconds), int(sequence or 0)


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


def _undelivered(entries: list[Entry], delivered: bytes | None) -> list[Entry]:
    """`entries` (oldest first) above the id delivered last, if any was (a re-read after a
    Redis outage); all of them if the stream now ends below it (a Redis that lost its data)."""
    if delivered is None or _entry_id(entries[-1][0]) < _entry_id(delivered):
        return entries
    return [entry for entry in entries if _entry_id(entry[0]) > _entry_id(delivered)]


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
        legacy_poll_seconds: float = 1.0,
        legacy_poll_max_seconds: float = 30.0,
    ) -> None:
        """`redis_url` as the worker accepts it (RedisUrlError if not); `password` its password."""
        self._target = parse_redis_url(redis_url, {PASSWORD_ENV: password} if password else {})
        self._on_status: StatusCallback = lambda session, status: None
        self._block_ms = int(block_seconds * 1000)
        self._retry_seconds = retry_seconds
        self._legacy_poll_seconds = legacy_poll_seconds
        self._legacy_poll_max_seconds = legacy_poll_max_seconds
        self._cluster: redis.asyncio.cluster.RedisCluster | None = None
        self._server: redis.asyncio.Redis | None = None
        # The client for everything but the blocking reads. Every use holds one of the
        # `_command_slots`, and each use takes at most one connection (per node), so the pool
        # never grows past COMMAND_CONNECTIONS; its cap turns a use that does not into an error.
        self._command_slots = asyncio.Semaphore(COMMAND_CONNECTIONS)
        self._commands: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
        options = dict(
            self._target.options,
            socket_timeout=_COMMAND_TIMEOUT,
            client_name=CLIENT_NAME,
            max_connections=COMMAND_CONNECTIONS,
        )
        if self._target.cluster:
            self._cluster = redis.asyncio.cluster.RedisCluster(**options)
            self._commands = self._cluster
        else:
            self._server = redis.asyncio.Redis(**options)
            self._commands = self._server
        self._last_ids: dict[SessionKey, bytes] = {}  # followed sessions -> last entry seen
        self._unloaded: set[SessionKey] = set()  # followed, newest entries not read yet
        # Loaded sessions whose legacy streams are polled: (interval, next poll's loop time).
        self._legacy: dict[SessionKey, tuple[float, float]] = {}
        # Loaded sessions by reader group, each under its stream's name (computed once).
        self._members: dict[Group, dict[str, SessionKey]] = {}
        self._readers: dict[Group, _Reader] = {}
        self._reading: dict[Group, asyncio.Task[None]] = {}
        self._polling: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._failures = 0

    def follow(self, session: SessionKey) -> None:
        """Starts mirroring a session's stream (its newest entries are delivered first)."""
        if session in self._last_ids or session in self._unloaded:
            return
        self._unloaded.add(session)
        self._changed.set()

    def unfollow(self, session: SessionKey) -> None:
        """Stops mirroring; its reader drops the stream from its next XREAD."""
        self._unloaded.discard(session)
        self._legacy.pop(session, None)
        if self._last_ids.pop(session, None) is not None:
            self._members.get(self._group(session), {}).pop(_stream(session), None)

    def has_read(self, session: SessionKey) -> bool:
        """Whether the session's stream has been read (its newest entries, if any, delivered)."""
        return session in self._last_ids

    @property
    def followed(self) -> int:
        return len(self._last_ids) + len(self._unloaded)

    @property
    def readers(self) -> int:
        """Connections blocking in XREAD: one per shard in use."""
        return len(self._reading)

    async def expire(self, session: SessionKey, seconds: int) -> bool:
        """Lets the stream, and any legacy one, expire `seconds` from now; False if neither
        exists."""
        async with self._command_slots, self._commands.pipeline(transaction=False) as pipe:
            pipe.expire(_stream(session), seconds)
            pipe.expire(_legacy_stream(session), seconds)
            replies = await pipe.execute()
        return any(replies)

    async def close(self) -> None:
        await self._stop_readers()
        await self._commands.aclose()

    def _group(self, session: SessionKey) -> Group:
        return shard(session_key(*session))

    @staticmethod
    def _slot(group: Group) -> int:
        """The cluster hash slot of the shard's streams."""
        return key_slot(shard_hash_tag(group).encode())

    async def run(self, on_status: StatusCallback) -> None:
        """Hands each followed stream's newest entries, then each later one, to `on_status`
        until cancelled.

        Rides out Redis outages: retries, then re-reads every stream from where it was.
        """
        self._on_status = on_status
        try:
            while True:
                try:
                    await self._supervise()
                except (RedisError, RedisClusterException, OSError) as error:
                    self._failures += 1
                    await self._stop_readers()
                    self._unloaded.update(
                        self._last_ids
                    )  # re-read from where each was after the outage
                    self._members.clear()
                    self._legacy.clear()
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
        """Loads newly followed streams, keeps one reader per group and the legacy poller;
        raises what they raise."""
        while True:
            self._changed.clear()
            joined: set[Group] = set()
            if self._unloaded:
                joined = await self._load_newest()
                self._reachable()
            await self._start_readers(joined)
            if self._legacy and self._polling is None:
                self._polling = asyncio.get_running_loop().create_task(
                    self._poll_legacy(), name="legacy status streams"
                )
            changed = asyncio.get_running_loop().create_task(self._changed.wait())
            polling = {self._polling} if self._polling is not None else set()
            try:
                done, _ = await asyncio.wait(
                    {changed, *polling, *self._reading.values()},
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                changed.cancel()
            if self._polling in done:
                task, self._polling = self._polling, None
                task.result()
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
        options: dict[str, Any] = dict(
            self._target.options,
            single_connection_client=True,
            socket_timeout=self._block_ms / 1000 + _COMMAND_TIMEOUT,
            client_name=CLIENT_NAME,
        )
        if self._cluster is None:
            assert self._server is not None
            server = self._server

            async def unblock_on_server(client_id: int) -> Any:
                async with self._command_slots:
                    return await server.client_unblock(client_id)

            return _Reader(redis.asyncio.Redis(**options), unblock_on_server)
        cluster = self._cluster
        async with self._command_slots:
            await cluster.initialize()
        node = cluster.nodes_manager.get_node_from_slot(self._slot(group))
        options.update(host=node.host, port=int(node.port))

        async def unblock_on_node(client_id: int) -> Any:
            async with self._command_slots:
                return await cluster.client_unblock(client_id, target_nodes=node)

        return _Reader(redis.asyncio.Redis(**options), unblock_on_node)

    async def _read(self, group: Group, reader: _Reader) -> None:
        """Reads the group's streams until it has none left (or Redis fails)."""
        while members := self._members.get(group):
            streams: dict[Any, Any] = {name: self._last_ids[s] for name, s in members.items()}
            reply = await reader.read(streams, self._block_ms)
            self._reachable()
            for name, entries in cast(list[tuple[bytes, list[Entry]]], reply):
                session = members.get(name.decode())
                if session is not None:
                    self._deliver(session, entries)
        self._members.pop(group, None)

    def _deliver(self, session: SessionKey, entries: list[Entry]) -> None:
        """Hands on the entries newer than the last one delivered (the stream they come from, and
        a read that started before another one delivered them, do not matter)."""
        for entry_id, fields in entries:
            last = self._last_ids.get(session)
            if last is None:
                return  # unfollowed
            if _entry_id(entry_id) > _entry_id(last):
                self._last_ids[session] = entry_id
                self._on_status(session, parse_entry(fields))

    async def _poll_legacy(self) -> None:
        """Reads the legacy streams of the sessions in `_legacy` that are due, until none is
        left there."""
        loop = asyncio.get_running_loop()
        while self._legacy:
            await asyncio.sleep(self._legacy_poll_seconds)
            now = loop.time()
            batch = [
                session
                for session, (_, due) in self._legacy.items()
                if due <= now and session in self._last_ids
            ]
            if not batch:
                continue
            async with self._command_slots, self._commands.pipeline(transaction=False) as pipe:
                for session in batch:
                    legacy = _legacy_stream(session)
                    after = b"(" + self._last_ids[session]
                    pipe.xrange(legacy, after, "+", count=_ENTRIES_PER_STREAM)
                    pipe.exists(legacy)
                    pipe.exists(_stream(session))
                replies = await pipe.execute()
            self._reachable()
            for index, session in enumerate(batch):
                polled = self._legacy.get(session)
                if polled is None:
                    continue  # unfollowed meanwhile
                entries, legacy_exists, exists = replies[3 * index : 3 * index + 3]
                self._deliver(session, cast(list[Entry], entries))
                if exists and not legacy_exists:
                    del self._legacy[session]  # moved: its worker writes the new one now
                    continue
                interval = self._legacy_poll_seconds
                if not legacy_exists and not exists:  # nothing written yet: back off
                    interval = min(2 * polled[0], self._legacy_poll_max_seconds)
                self._poll_legacy_in(session, interval)

    def _poll_legacy_in(self, session: SessionKey, seconds: float) -> None:
        self._legacy[session] = (seconds, asyncio.get_running_loop().time() + seconds)

    async def _stop_readers(self) -> None:
        if self._polling is not None:
            self._polling.cancel()
            await asyncio.gather(self._polling, return_exceptions=True)
            self._polling = None
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
        """For newly followed streams: drop any expiry, read the newest entries of the stream
        and of any legacy one; their groups."""
        batch = list(self._unloaded)
        joined: set[Group] = set()
        async with self._command_slots, self._commands.pipeline(transaction=False) as pipe:
            for session in batch:
                for key in (_stream(session), _legacy_stream(session)):
                    pipe.persist(key)
                    pipe.xrevrange(key, count=CATCH_UP_ENTRIES)
            replies = await pipe.execute()
        for index, session in enumerate(batch):
            if session not in self._unloaded:
                continue  # unfollowed meanwhile
            self._unloaded.discard(session)
            newest = cast(list[Entry], replies[4 * index + 1])
            legacy_newest = cast(list[Entry], replies[4 * index + 3])
            if legacy_newest or not newest:  # an earlier version's worker may write it
                self._poll_legacy_in(session, self._legacy_poll_seconds)
            candidates = sorted([*newest, *legacy_newest], key=lambda entry: _entry_id(entry[0]))
            if candidates:
                recent = _undelivered(candidates[-CATCH_UP_ENTRIES:], self._last_ids.get(session))
                self._last_ids[session] = candidates[-1][0]
                for _, fields in recent:
                    self._on_status(session, parse_entry(fields))
            else:
                self._last_ids[session] = _NO_ENTRY
            group = self._group(session)
            self._members.setdefault(group, {})[_stream(session)] = session
            joined.add(group)
        return joined
