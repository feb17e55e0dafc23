"""Follows every session's history stream in Redis with ONE blocking XREAD, not a poller each.

Workers append each SipStatus to `sip:{<namespace>/<name>}:history` (fields `status`: the
serialized ondewo.sip.SipStatus, `type`: its type name, `seq`). The mirror keeps one reader
connection blocked in `XREAD BLOCK ... STREAMS <every followed stream>`; when the set of
streams changes it wakes that reader with `CLIENT UNBLOCK` (and the bounded block time wakes
it anyway), so a new session is followed at once. The newest entry of each stream that moved
is handed to a callback. Streams of deleted sessions get their retention set with EXPIRE.
"""

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable
from typing import Any, cast

import redis.asyncio
from google.protobuf.message import DecodeError
from redis.exceptions import RedisError

from ondewo.sip import sip_pb2
from sip_operator.phase import WorkerStatus

logger = logging.getLogger(__name__)

SessionKey = tuple[str, str]  # (namespace, name)
Entry = tuple[bytes, dict[bytes, bytes]]
StatusCallback = Callable[[SessionKey, WorkerStatus], None]

_ENTRIES_PER_STREAM = 64  # only the newest matters; a cap keeps one reply small


def stream_key(session: SessionKey) -> str:
    """The worker's stream for session key `<namespace>/<name>` (hash tag: one cluster slot)."""
    return f"sip:{{{session[0]}/{session[1]}}}:history"


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


class StatusMirror:
    def __init__(
        self,
        redis_url: str,
        password: str | None,
        block_seconds: float = 5.0,
        retry_seconds: float = 1.0,
    ) -> None:
        self._on_status: StatusCallback = lambda session, status: None
        self._block_ms = int(block_seconds * 1000)
        self._retry_seconds = retry_seconds
        # One dedicated connection blocks in XREAD; the other client runs everything else.
        self._reader: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            redis_url,
            password=password,
            single_connection_client=True,
            socket_timeout=block_seconds + 30,
        )
        self._commands: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            redis_url, password=password, socket_timeout=30
        )
        self._last_ids: dict[SessionKey, bytes] = {}  # followed sessions -> last entry seen
        self._unloaded: set[SessionKey] = set()  # followed, newest entry not read yet
        self._changed = asyncio.Event()
        self._reader_id: int | None = None
        self._blocked = False
        self._unblocking = False

    def follow(self, session: SessionKey) -> None:
        """Starts mirroring a session's stream (its newest entry is delivered first)."""
        if session in self._last_ids or session in self._unloaded:
            return
        self._unloaded.add(session)
        self._wake_reader()

    def unfollow(self, session: SessionKey) -> None:
        """Stops mirroring; the reader drops the stream from its next XREAD."""
        self._unloaded.discard(session)
        self._last_ids.pop(session, None)

    @property
    def followed(self) -> int:
        return len(self._last_ids) + len(self._unloaded)

    async def expire(self, session: SessionKey, seconds: int) -> bool:
        """Lets the stream expire `seconds` from now; False if it does not exist."""
        return bool(await self._commands.expire(stream_key(session), seconds))

    async def close(self) -> None:
        await self._reader.aclose()
        await self._commands.aclose()

    def _wake_reader(self) -> None:
        self._changed.set()
        if self._blocked and not self._unblocking and self._reader_id is not None:
            self._unblocking = True
            asyncio.get_running_loop().create_task(self._unblock(self._reader_id))

    async def _unblock(self, reader_id: int) -> None:
        try:
            await self._commands.client_unblock(reader_id)
        except RedisError as error:  # e.g. not permitted by an ACL: the block time bounds it
            logger.debug("CLIENT UNBLOCK failed: %s", error)
        finally:
            self._unblocking = False

    async def run(self, on_status: StatusCallback) -> None:
        """Hands each followed stream's newest entry to `on_status` until cancelled.

        Rides out Redis outages: retries, then re-reads the newest entry of every stream.
        """
        self._on_status = on_status
        failures = 0
        while True:
            try:
                await self._step()
                if failures:
                    logger.info("Redis is reachable again; mirroring %d streams", self.followed)
                failures = 0
            except (RedisError, OSError) as error:
                failures += 1
                self._reader_id = None
                self._unloaded.update(self._last_ids)  # re-read the newest entry after the outage
                if failures == 1 or failures % 30 == 0:
                    logger.warning("Redis status streams unreadable (%s); retrying", error)
                await asyncio.sleep(self._retry_seconds)

    async def _step(self) -> None:
        if self._reader_id is None:
            self._reader_id = int(await self._reader.client_id())
        if self._unloaded:
            await self._load_newest()
            return
        self._changed.clear()
        if not self._last_ids:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._block_ms / 1000)
            return
        streams: dict[Any, Any] = {stream_key(s): last for s, last in self._last_ids.items()}
        sessions = {stream_key(s): s for s in self._last_ids}
        self._blocked = True
        try:
            reply = await self._reader.xread(
                streams, count=_ENTRIES_PER_STREAM, block=self._block_ms
            )
        finally:
            self._blocked = False
        for name, entries in cast(list[tuple[bytes, list[Entry]]], reply or []):
            session = sessions.get(name.decode())
            if session is None or session not in self._last_ids or not entries:
                continue
            entry_id, fields = entries[-1]
            self._last_ids[session] = entry_id
            self._on_status(session, parse_entry(fields))

    async def _load_newest(self) -> None:
        """For newly followed streams: drop any expiry, read the newest entry."""
        batch = list(self._unloaded)
        async with self._commands.pipeline(transaction=False) as pipe:
            for session in batch:
                pipe.persist(stream_key(session))
                pipe.xrevrange(stream_key(session), count=1)
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
