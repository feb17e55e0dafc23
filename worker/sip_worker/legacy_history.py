"""Moves a session's history from its legacy stream to its sharded one (sip_contract.status).

Versions before the shards kept a session's history in `sip:{<session>}:history`. The worker
is the only writer of its session's stream, so it migrates at start, before loading: the
legacy entries are copied to the new key with their ids (so their order is kept, and the
operator, which follows both keys by id while the legacy one exists, delivers none twice), in
pages, then the legacy key is deleted. Resumable: an interrupted run left a prefix of the
entries in the new key, and the next run copies only those after the new key's newest. The
legacy key is deleted only if nothing was appended to it since the last page copied (a script
checks and deletes atomically); otherwise the copy goes on.
"""

import logging
from typing import cast

from redis.typing import EncodableT, FieldT

from sip_contract.status import legacy_stream_key
from sip_worker.redis_connection import RedisClient

log = logging.getLogger(__name__)

_PAGE = 1_000
Entry = tuple[bytes, dict[FieldT, EncodableT]]

# KEYS[1]: the legacy stream; ARGV[1]: the id of the newest entry copied. 1 if it was deleted,
# 0 if it has entries after that one.
_DELETE_IF_COPIED = """
if #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', 1) > 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def migrate_legacy_stream(client: RedisClient, session_key: str, key: str, max_len: int) -> int:
    """Moves the legacy stream of `session_key` into `key`, if there is one; the entries copied.

    Raises what Redis raises; whatever was copied stays, and the next call resumes."""
    legacy = legacy_stream_key(session_key)
    if not client.exists(legacy):
        return 0
    newest = cast(list[Entry], client.xrevrange(key, count=1))
    after = newest[0][0] if newest else b"0-0"
    delete_if_copied = client.register_script(_DELETE_IF_COPIED)
    copied = 0
    while True:
        page = cast(list[Entry], client.xrange(legacy, b"(" + after, "+", count=_PAGE))
        if not page:
            if delete_if_copied(keys=[legacy], args=[after]):
                break
            continue
        pipe = client.pipeline(transaction=False)
        for entry_id, fields in page:
            pipe.xadd(key, fields, id=entry_id, maxlen=max_len, approximate=False)
        pipe.execute()
        after = page[-1][0]
        copied += len(page)
    log.info("status history: %d entries moved from %s to %s", copied, legacy, key)
    return copied
