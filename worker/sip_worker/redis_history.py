"""The status history of one session, kept durably in a Redis stream.

One stream per session, key `sip:history:{<shard>}:<session-key>` (sip_contract.status: the
braces, a Redis Cluster hash tag, hold one of 16 shards). At start a legacy stream
`sip:{<session-key>}:history` is moved there first (sip_worker.legacy_history). Entry ids are
`<seq>-0`, and each entry has the fields
    type        the status type's name (`outgoing_call_connected`), for `redis-cli XRANGE`
    seq         the per-session sequence number: 1, 2, 3, ... across restarts
    status      the serialized SipStatus
    writer      a random id of the process that wrote it
    writer_seq  that process's own count of its statuses
Readers must ignore fields they do not know; future versions may add some.

`append` never touches the network: it records the status in memory (where every read is
answered from) and queues it for one writer thread, so the phone's pj thread never waits for
Redis. Writes are idempotent and ordered:
- One queued status is written by a plain XADD with the explicit id `<seq>-0`, seq following
  the newest entry this process knows of. Redis refuses an id not above the stream's newest,
  so the XADD can neither duplicate an entry (a resend after a lost reply) nor overtake
  another process's entry: either refusal falls through to
- the append script (Lua, atomic), used for batches too: it reads back to this process's
  newest entry (found by `writer`/`writer_seq`), skips what is already there, and numbers the
  rest after the stream's newest entry. So a batch whose reply was lost is re-sent without
  duplicating, and two processes briefly writing one session (an old pod shutting down while
  its replacement starts) interleave without losing anything.
Every write trims the stream to exactly `max_len` entries.

A status appended with `expect_follow_up` (the phone's recorder says so for an outgoing call's
initiated, recorded once the INVITE is out) is held back for up to `FOLLOW_UP_HOLD`, or until
the next status arrives: writing it at once would compete for the CPU and the GIL with the SIP
exchange that connects the call (measured on 2 cores: call setup 0.35 ms slower). A peer that
answers at once gets the pair written in one round trip after the exchange; any other status
is written as soon as it is appended.

While Redis is unreachable, statuses wait in that queue, in order; the writer retries with
backoff and logs the outage once and its end once. The queue holds at most `max_len`
statuses: more could not all survive the stream's trimming anyway, so the oldest give way.

An optional `on_written` callback learns the write lag of every status, from the call of
`append` until Redis acknowledged it (outages, backoff and the hold included): the writer
calls it with the lags in seconds, oldest first, once per status written, before waking
`wait_durable`. It runs on the writer thread, so it must be quick.
"""

import contextlib
import logging
import os
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import Any, NamedTuple, cast

import redis
from google.protobuf.message import DecodeError

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import legacy_stream_key, stream_key
from sip_worker.legacy_history import migrate_legacy_stream
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
# Bound on how much later a status with `expect_follow_up` may reach Redis (see the docstring).
FOLLOW_UP_HOLD = 0.02
_BATCH_LIMIT = 256
_LOAD_PAGE = 10_000
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 2.0

# KEYS[1]: the stream. ARGV: max_len; writer; floor_seq (the newest seq when this writer loaded
# the stream: nothing of its own is older); then writer_seq, type, status per entry.
# Returns {seq, writer_seq} of the newest entry: the stream's, and this writer's.
_APPEND_SCRIPT = """
local key = KEYS[1]
local writer = ARGV[2]
local floor_seq = tonumber(ARGV[3])
local page = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
local top_ms = 0
if #page > 0 then top_ms = tonumber(string.match(page[1][1], '^(%d+)')) end
local newest_seq, written, done = nil, 0, false
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
local seq = newest_seq or 0
for i = 4, #ARGV, 3 do
  if tonumber(ARGV[i]) > written then
    seq = seq + 1
    written = tonumber(ARGV[i])
    -- The id <seq>-0, unless an entry written otherwise already has a larger one.
    local id = '*'
    if seq > top_ms then
      id = seq .. '-0'
      top_ms = seq
    end
    local added = redis.call('XADD', key, 'MAXLEN', ARGV[1], id, 'type', ARGV[i + 1],
      'seq', seq, 'status', ARGV[i + 2], 'writer', writer, 'writer_seq', ARGV[i])
    top_ms = tonumber(string.match(added, '^(%d+)'))
  end
end
return {seq, written}
"""


# How Redis (and Valkey) refuse an XADD id that is not above the stream's newest.
_ID_NOT_ABOVE_TOP = "The ID specified in XADD is equal or smaller"


class HistoryConfigError(Exception):
    """The history cannot start with this configuration; the message says why and what to do."""


WriteObserver = Callable[[list[float]], None]


class _Queued(NamedTuple):
    writer_seq: int
    type_name: str
    payload: bytes
    hold_until: float  # time.monotonic() before which a lone status waits for company; 0: none
    appended_ns: int  # time.perf_counter_ns() when append() was called; 0 without an observer


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
        on_written: WriteObserver | None = None,
    ) -> None:
        self._client = client
        self._target = target
        self._key = key
        self._max_len = max_len
        self._on_written = on_written
        self._floor_seq = newest_seq
        self._seq = newest_seq  # the newest seq in the stream as far as this writer knows
        self._writer = secrets.token_hex(8)
        self._script = client.register_script(_APPEND_SCRIPT)
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)  # wait_durable waits here
        self._entries: deque[SipStatus] = deque(loaded, maxlen=max_len)
        self._appended = 0  # writer_seq of the newest status appended
        self._durable = 0  # writer_seq up to which everything is in Redis (or gave way)
        # append() hands statuses to the writer through `_inbox` (a C queue: the cheapest
        # wake-up Python has); the writer keeps the unwritten ones, in order, in `_pending`.
        # None in the inbox asks the writer to finish.
        self._inbox: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._pending: deque[_Queued] = deque()
        self._dropped = 0
        self._closed = False
        self._close_deadline = 0.0
        self._outage_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="redis-history-writer", daemon=True)
        self._thread.start()

    @property
    def buffer_depth(self) -> int:
        """Statuses appended but not yet confirmed written to Redis (a metrics gauge)."""
        return min(self._max_len, len(self._pending) + self._inbox.qsize())

    def append(self, status: SipStatus, *, expect_follow_up: bool = False) -> None:
        appended_ns = time.perf_counter_ns() if self._on_written is not None else 0
        payload = status.SerializeToString()
        type_name = _type_name(status)
        hold_until = time.monotonic() + FOLLOW_UP_HOLD if expect_follow_up else 0.0
        with self._lock:
            self._appended += 1
            self._entries.append(status)
            self._inbox.put(_Queued(self._appended, type_name, payload, hold_until, appended_ns))

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
            if self._closed:
                return
            self._closed = True
            self._close_deadline = time.monotonic() + timeout
            self._inbox.put(None)
        self._thread.join(timeout)
        unwritten = self.buffer_depth
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
        retry_at = 0.0  # after a failed write, when to try again
        closing = False
        while True:
            if not self._pending:
                if closing:
                    return
                closing = self._take(self._inbox.get())
                continue
            if time.monotonic() < retry_at:  # backing off after a failed write
                wait = retry_at - time.monotonic()
                if closing:
                    wait = min(wait, self._close_deadline - time.monotonic())
                if wait > 0:
                    # Keep taking statuses while waiting, so that `_pending` stays bounded.
                    try:
                        queued = self._inbox.get(timeout=wait)
                    except queue.Empty:
                        pass
                    else:
                        closing = self._take(queued) or closing
                        continue
                if closing and time.monotonic() >= self._close_deadline:
                    return
            while not self._inbox.empty():
                closing = self._take(self._inbox.get_nowait()) or closing
            hold = self._pending[0].hold_until - time.monotonic()
            if hold > 0 and len(self._pending) == 1 and not closing:
                try:
                    queued = self._inbox.get(timeout=hold)
                except queue.Empty:
                    pass
                else:
                    closing = self._take(queued) or closing
                    continue
            batch = list(islice(self._pending, _BATCH_LIMIT))
            try:
                written = self._write(batch)
            # Whatever fails, the thread must live on: a dead writer would silently lose
            # every later status. Each failure is an outage to wait out.
            except Exception as error:
                self._note_outage(error)
                retry_at = time.monotonic() + backoff
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            written_ns = time.perf_counter_ns()
            retry_at, backoff = 0.0, _FIRST_BACKOFF
            done: list[_Queued] = []
            while self._pending and self._pending[0].writer_seq <= written:
                done.append(self._pending.popleft())
            if self._on_written is not None and done:
                self._report_lags(self._on_written, done, written_ns)
            self._note_written(written)

    def _report_lags(self, observer: WriteObserver, done: list[_Queued], written_ns: int) -> None:
        try:
            observer([(written_ns - queued.appended_ns) / 1e9 for queued in done])
        # A failing observer must not stop the writer (nor mark anything unwritten).
        except Exception:
            log.exception("the history's write observer failed")

    def _take(self, queued: _Queued | None) -> bool:
        """Moves one status from the inbox to `_pending`; True for the request to finish."""
        if queued is None:
            return True
        self._pending.append(queued)
        if len(self._pending) > self._max_len:
            self._pending.popleft()
            self._dropped += 1
        return False

    def _write(self, batch: list[_Queued]) -> int:
        """Writes `batch` (idempotently); returns the writer_seq now known to be in Redis."""
        if len(batch) == 1:
            queued = batch[0]
            seq = self._seq + 1
            try:
                self._client.xadd(
                    self._key,
                    {
                        "type": queued.type_name,
                        "seq": seq,
                        "status": queued.payload,
                        "writer": self._writer,
                        "writer_seq": queued.writer_seq,
                    },
                    id=f"{seq}-0",
                    maxlen=self._max_len,
                    approximate=False,
                )
            except redis.ResponseError as error:
                if not str(error).startswith(_ID_NOT_ABOVE_TOP):
                    raise
            else:
                self._seq = seq
                return queued.writer_seq
        args: list[Any] = [self._max_len, self._writer, self._floor_seq]
        for queued in batch:
            args += (queued.writer_seq, queued.type_name, queued.payload)
        seq, written = self._script(keys=[self._key], args=args)
        self._seq = int(seq)
        return int(written)

    def _note_written(self, writer_seq: int) -> None:
        with self._lock:
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
    on_written: WriteObserver | None = None,
) -> RedisHistory:
    """Connects, loads the session's stream and starts the writer.

    Raises HistoryConfigError for a malformed URL, a server still unreachable after
    `startup_timeout` seconds, refused credentials, or a key that is not a stream.
    The password comes from the URL, else from `environ` (default: os.environ) REDIS_PASSWORD.
    `on_written` receives the write lag of each status (see the module docstring).
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
        with _refusals(target, f"{legacy_stream_key(session_key)} or {key}"):
            migrate_legacy_stream(client, session_key, key, max_len)
        loaded, newest_seq = _load(client, target, key)
        _load_script(client, target)
    except BaseException:
        client.close()
        raise
    log.info("status history %s at %s: %d entries loaded", key, target.display, len(loaded))
    return RedisHistory(client, target, key, max_len, loaded, newest_seq, on_written)


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
        with _refusals(target, key):
            page = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                client.xrange(key, start, "+", count=_LOAD_PAGE),
            )
        for _entry_id, fields in page:
            seq = fields.get(b"seq", b"")
            if seq.isdigit():
                newest_seq = int(seq)
            payload = fields.get(b"status")
            try:
                if payload is None:
                    raise DecodeError("no status field")
                statuses.append(SipStatus.FromString(payload))
            except DecodeError:
                skipped += 1
        if len(page) < _LOAD_PAGE:
            break
        start = "(" + page[-1][0].decode()
    if skipped:
        log.warning("%s: %d entries without a readable status were skipped", key, skipped)
    return statuses, newest_seq


@contextlib.contextmanager
def _refusals(target: RedisTarget, key: str) -> Iterator[None]:
    """Turns what Redis raises while `key` is read into a HistoryConfigError saying why."""
    try:
        yield
    except redis.exceptions.MovedError:
        raise HistoryConfigError(
            f"Redis at {target.display} is part of a Redis Cluster: add ?cluster=true to the URL"
        ) from None
    except redis.ResponseError as error:
        raise HistoryConfigError(_load_problem(target, key, str(error))) from None
    except redis.RedisError as error:
        raise HistoryConfigError(
            f"reading {key} from Redis at {target.display} failed: {target.scrub(str(error))}"
        ) from None


def _load_script(client: RedisClient, target: RedisTarget) -> None:
    """Loads the append script now: a server that refuses scripts is a configuration error,
    and the first write after an outage should not need the extra round trip."""
    try:
        client.script_load(_APPEND_SCRIPT)
    except redis.RedisError as error:
        raise HistoryConfigError(
            f"Redis at {target.display} refused the history's Lua script "
            f"({target.scrub(str(error))}): the history needs EVALSHA and SCRIPT LOAD"
        ) from None


def _load_problem(target: RedisTarget, key: str, message: str) -> str:
    if message.startswith("WRONGTYPE"):
        return f"{key} at {target.display} exists but is not a stream: remove it or use another key"
    return f"reading {key} from Redis at {target.display} failed: {target.scrub(message)}"
