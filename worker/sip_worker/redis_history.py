"""The status history of one session, kept durably in a Redis stream.

One stream per session, key `sip:{<session-key>}:history` (the braces are a Redis Cluster
hash tag). Each entry has the fields
    type        the status type's name (`outgoing_call_connected`), for `redis-cli XRANGE`
    seq         the per-session sequence number: 1, 2, 3, ... across restarts
    status      the serialized SipStatus
    writer      a random id of the process that wrote it
    writer_seq  that process's own count of its statuses, which makes writes idempotent
Readers must ignore fields they do not know; future versions may add some.

`append` never touches the network: it records the status in memory (where every read is
answered from) and queues it for one writer thread, so the phone's pj thread never waits for
Redis. The writer sends queued statuses in batches through one Lua script that, atomically,
skips what this process already wrote (found by `writer`/`writer_seq`), numbers the rest after
the stream's newest `seq` and adds them with exact trimming to the configured length. So a
batch whose reply was lost (connection dropped mid-write) is re-sent without duplicating, and
two processes briefly writing the same session (an old pod shutting down while its
replacement starts) interleave without losing or renumbering anything.

While Redis is unreachable, statuses wait in that queue, in order; the writer retries with
backoff and logs the outage once and its end once. The queue holds at most `max_len`
statuses: more could not all survive the stream's trimming anyway, so the oldest give way.
"""

import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, cast

import redis
from google.protobuf.message import DecodeError

from ondewo.sip.sip_pb2 import SipStatus
from sip_worker.redis_connection import (
    PASSWORD_ENV,
    RedisClient,
    RedisTarget,
    RedisUrlError,
    parse_redis_url,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_LEN = 10_000
# How long start-up waits for an unreachable server before refusing to start.
STARTUP_TIMEOUT = 10.0
# How long close() keeps trying to write what is still queued.
CLOSE_TIMEOUT = 5.0
_BATCH_LIMIT = 256
_LOAD_PAGE = 10_000
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 2.0

# KEYS[1]: the stream. ARGV: max_len; writer; floor_seq (the newest seq when this writer loaded
# the stream: nothing of its own is older); the id, seq and writer_seq of this writer's newest
# confirmed entry ('' 0 0 before the first); then writer_seq, type, status per entry.
# Returns {id, seq, writer_seq} of the newest entry of this writer now in the stream.
_APPEND_SCRIPT = """
local key = KEYS[1]
local writer = ARGV[2]
local floor_seq = tonumber(ARGV[3])
local page = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
local last_id, seq, written = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
if #page == 0 or page[1][1] ~= last_id then
  -- Not the common case (this writer's own entry on top): another process wrote since, or
  -- a lost reply left it unknown what this writer wrote. Read back to this writer's newest
  -- entry, or to where it loaded the stream.
  local newest_seq = nil
  written = 0
  local done = false
  while #page > 0 and not done do
    for _, entry in ipairs(page) do
      local fields = entry[2]
      local entry_seq, entry_writer, entry_writer_seq = nil, nil, nil
      for i = 1, #fields, 2 do
        local name = fields[i]
        if name == 'seq' then entry_seq = tonumber(fields[i + 1])
        elseif name == 'writer' then entry_writer = fields[i + 1]
        elseif name == 'writer_seq' then entry_writer_seq = tonumber(fields[i + 1])
        end
      end
      if newest_seq == nil then newest_seq = entry_seq end
      if entry_writer == writer then
        written = entry_writer_seq
        last_id = entry[1]
        done = true
      elseif entry_seq ~= nil and entry_seq <= floor_seq then
        done = true
      end
      if done then break end
    end
    if not done then
      page = redis.call('XREVRANGE', key, '(' .. page[#page][1], '-', 'COUNT', 100)
    end
  end
  seq = newest_seq or 0
end
for i = 7, #ARGV, 3 do
  if tonumber(ARGV[i]) > written then
    seq = seq + 1
    written = tonumber(ARGV[i])
    last_id = redis.call('XADD', key, 'MAXLEN', ARGV[1], '*', 'type', ARGV[i + 1], 'seq', seq,
      'status', ARGV[i + 2], 'writer', writer, 'writer_seq', ARGV[i])
  end
end
return {last_id, seq, written}
"""


class HistoryConfigError(Exception):
    """The history cannot start with this configuration; the message says why and what to do."""


def stream_key(session_key: str) -> str:
    return f"sip:{{{session_key}}}:history"


@dataclass(frozen=True)
class _Queued:
    writer_seq: int
    type_name: str
    payload: bytes


def _type_name(status: SipStatus) -> str:
    try:
        return SipStatus.StatusType.Name(status.status_type)
    except ValueError:
        return str(status.status_type)


class RedisHistory:
    """A `StatusHistory` in a Redis stream; build it with `open_history`."""

    def __init__(
        self,
        client: RedisClient,
        target: RedisTarget,
        key: str,
        max_len: int,
        loaded: list[SipStatus],
        newest_seq: int,
    ) -> None:
        self._client = client
        self._target = target
        self._key = key
        self._max_len = max_len
        self._floor_seq = newest_seq
        # This writer's newest entry in the stream, as the last write reported it; lets the
        # append script skip reading entries back in the common case.
        self._newest_id: bytes = b""
        self._newest_seq = 0
        self._newest_writer_seq = 0
        self._writer = secrets.token_hex(8)
        self._script = client.register_script(_APPEND_SCRIPT)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer waits here for statuses
        self._written = threading.Condition(self._lock)  # wait_durable waits here
        self._entries: deque[SipStatus] = deque(loaded, maxlen=max_len)
        self._queue: deque[_Queued] = deque(maxlen=max_len)
        self._appended = 0  # writer_seq of the newest status appended
        self._durable = 0  # writer_seq up to which everything is in Redis (or gave way)
        self._dropped = 0
        self._closing = False
        self._close_deadline = 0.0
        self._outage_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="redis-history-writer", daemon=True)
        self._thread.start()

    @property
    def key(self) -> str:
        return self._key

    @property
    def buffer_depth(self) -> int:
        """Statuses appended but not yet confirmed written to Redis (a metrics gauge)."""
        with self._lock:
            return len(self._queue)

    def append(self, status: SipStatus) -> None:
        payload = status.SerializeToString()
        type_name = _type_name(status)
        with self._lock:
            self._appended += 1
            self._entries.append(status)
            if len(self._queue) == self._max_len:
                self._dropped += 1
            self._queue.append(_Queued(self._appended, type_name, payload))
            self._work.notify()

    def last(self) -> SipStatus | None:
        with self._lock:
            return self._entries[-1] if self._entries else None

    def entries(self) -> list[SipStatus]:
        with self._lock:
            return list(self._entries)

    def wait_durable(self, timeout: float) -> bool:
        """Waits until every status appended so far is in Redis; False on timeout."""
        with self._lock:
            target = self._appended
            return self._written.wait_for(lambda: self._durable >= target, timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Writes what is queued (trying for at most `timeout` seconds), then disconnects."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._close_deadline = time.monotonic() + timeout
            self._work.notify()
        self._thread.join(timeout)
        with self._lock:
            unwritten = len(self._queue)
        if unwritten:
            log.error(
                "%d statuses of %s could not be written to Redis at %s before shutdown",
                unwritten,
                self._key,
                self._target.display,
            )
        self._client.close()

    def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._work.wait()
                if not self._queue:
                    return
                batch = list(islice(self._queue, _BATCH_LIMIT))
            try:
                written = self._write(batch)
            # Whatever fails, the thread must live on: a dead writer would silently lose
            # every later status. Each failure is an outage to wait out.
            except Exception as error:
                self._note_outage(error)
                with self._lock:
                    if self._closing:
                        remaining = self._close_deadline - time.monotonic()
                        if remaining <= 0:
                            return
                        self._work.wait(min(backoff, remaining))
                    else:
                        self._work.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = _FIRST_BACKOFF
            self._note_written(written)

    def _write(self, batch: list[_Queued]) -> int:
        """Writes `batch` (idempotently); returns the writer_seq now known to be in Redis."""
        args: list[Any] = [
            self._max_len,
            self._writer,
            self._floor_seq,
            self._newest_id,
            self._newest_seq,
            self._newest_writer_seq,
        ]
        for queued in batch:
            args += (queued.writer_seq, queued.type_name, queued.payload)
        newest_id, newest_seq, newest_writer_seq = self._script(keys=[self._key], args=args)
        self._newest_id, self._newest_seq = newest_id, int(newest_seq)
        self._newest_writer_seq = int(newest_writer_seq)
        return self._newest_writer_seq

    def _note_written(self, writer_seq: int) -> None:
        with self._lock:
            while self._queue and self._queue[0].writer_seq <= writer_seq:
                self._queue.popleft()
            self._durable = max(self._durable, writer_seq)
            self._written.notify_all()
            outage_since, self._outage_since = self._outage_since, None
            dropped, self._dropped = self._dropped, 0
        if outage_since is not None:
            log.warning(
                "Redis at %s is reachable again after %.1f s; the statuses buffered for %s "
                "are being written%s",
                self._target.display,
                time.monotonic() - outage_since,
                self._key,
                f" (the {dropped} oldest gave way to the {self._max_len}-entry limit)"
                if dropped
                else "",
            )

    def _note_outage(self, error: Exception) -> None:
        reason = self._target.scrub(f"{type(error).__name__}: {error}")
        with self._lock:
            first = self._outage_since is None
            if first:
                self._outage_since = time.monotonic()
        if first:
            log.warning(
                "Redis at %s is unavailable (%s); statuses of %s are kept in memory, in order, "
                "and written once it is back",
                self._target.display,
                reason,
                self._key,
            )
        else:
            log.debug("Redis at %s still unavailable: %s", self._target.display, reason)


def open_history(
    redis_url: str,
    session_key: str,
    max_len: int = DEFAULT_MAX_LEN,
    *,
    environ: Mapping[str, str] | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> RedisHistory:
    """Connects, loads the session's stream and starts the writer.

    Raises HistoryConfigError for a malformed URL, a server still unreachable after
    `startup_timeout` seconds, refused credentials, or a key that is not a stream.
    The password comes from the URL, else from `environ` (default: os.environ) REDIS_PASSWORD.
    """
    if not session_key:
        raise HistoryConfigError("the session key must not be empty")
    if max_len < 1:
        raise HistoryConfigError(f"the history length must be at least 1, not {max_len}")
    try:
        target = parse_redis_url(redis_url, os.environ if environ is None else environ)
    except RedisUrlError as error:
        raise HistoryConfigError(str(error)) from None
    client = _connect(target, startup_timeout)
    key = stream_key(session_key)
    try:
        loaded, newest_seq = _load(client, target, key)
    except BaseException:
        client.close()
        raise
    log.info("status history %s at %s: %d entries loaded", key, target.display, len(loaded))
    return RedisHistory(client, target, key, max_len, loaded, newest_seq)


def _connect(target: RedisTarget, timeout: float) -> RedisClient:
    deadline = time.monotonic() + timeout
    while True:
        client: RedisClient | None = None
        try:
            client = target.connect()
            client.ping()
            return client
        except redis.AuthenticationError as error:
            _close_quietly(client)
            raise HistoryConfigError(
                f"Redis at {target.display} refused the credentials "
                f"({target.scrub(str(error))}): check the password in the URL or {PASSWORD_ENV}"
            ) from None
        except redis.ResponseError as error:
            _close_quietly(client)
            raise HistoryConfigError(
                f"Redis at {target.display} refused the connection: {target.scrub(str(error))}"
            ) from None
        except redis.RedisError as error:
            _close_quietly(client)
            if time.monotonic() >= deadline:
                raise HistoryConfigError(
                    f"cannot reach Redis at {target.display} within {timeout:g} s "
                    f"({target.scrub(str(error))}): is it running, and is the URL right?"
                ) from None
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _close_quietly(client: RedisClient | None) -> None:
    if client is not None:
        try:
            client.close()
        except redis.RedisError:
            log.debug("closing a failed Redis connection failed too", exc_info=True)


def _load(client: RedisClient, target: RedisTarget, key: str) -> tuple[list[SipStatus], int]:
    statuses: list[SipStatus] = []
    newest_seq = 0
    skipped = 0
    start = "-"
    while True:
        try:
            page = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                client.xrange(key, start, "+", count=_LOAD_PAGE),
            )
        except redis.exceptions.MovedError:
            raise HistoryConfigError(
                f"Redis at {target.display} is part of a Redis Cluster: "
                "add ?cluster=true to the URL"
            ) from None
        except redis.ResponseError as error:
            raise HistoryConfigError(_load_problem(target, key, str(error))) from None
        except redis.RedisError as error:
            raise HistoryConfigError(
                f"reading {key} from Redis at {target.display} failed: {target.scrub(str(error))}"
            ) from None
        for _entry_id, fields in page:
            payload = fields.get(b"status")
            try:
                if payload is None:
                    raise DecodeError("no status field")
                statuses.append(SipStatus.FromString(payload))
            except DecodeError:
                skipped += 1
                continue
            seq = fields.get(b"seq", b"")
            if seq.isdigit():
                newest_seq = int(seq)
        if len(page) < _LOAD_PAGE:
            break
        start = "(" + page[-1][0].decode()
    if skipped:
        log.warning("%s: %d entries without a readable status were skipped", key, skipped)
    return statuses, newest_seq


def _load_problem(target: RedisTarget, key: str, message: str) -> str:
    if message.startswith("WRONGTYPE"):
        return f"{key} at {target.display} exists but is not a stream: remove it or use another key"
    return f"reading {key} from Redis at {target.display} failed: {target.scrub(message)}"
