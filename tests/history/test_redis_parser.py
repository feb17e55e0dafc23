"""The Redis clients of the worker's history and of the operator's status mirror parse
replies with hiredis (the C parser) where it is installed, as it is on x86_64 and aarch64."""

import asyncio
import platform

import pytest
import redis.utils

from sip_operator.status_mirror import StatusMirror
from sip_worker.redis_history import open_history
from tests.support.redis_server import RedisServer

HIREDIS_PLATFORM = platform.machine() in ("x86_64", "aarch64")


def test_hiredis_is_installed_where_it_ships_as_a_wheel() -> None:
    assert redis.utils.HIREDIS_AVAILABLE is HIREDIS_PLATFORM


@pytest.mark.skipif(not HIREDIS_PLATFORM, reason="no hiredis wheel for this machine")
def test_the_history_reads_with_the_hiredis_parser(redis_server: RedisServer) -> None:
    history = open_history(redis_server.url, "ns/parser")
    try:
        connection = history._client.connection_pool.get_connection()
        try:
            assert type(connection._parser).__name__ == "_HiredisParser"
        finally:
            history._client.connection_pool.release(connection)
    finally:
        history.close()


@pytest.mark.skipif(not HIREDIS_PLATFORM, reason="no hiredis wheel for this machine")
def test_the_status_mirror_reads_with_the_hiredis_parser(redis_server: RedisServer) -> None:
    async def parser_name() -> str:
        mirror = StatusMirror(redis_server.url, None)
        pool = mirror._commands.connection_pool
        connection = await pool.get_connection()
        try:
            return type(connection._parser).__name__
        finally:
            await pool.release(connection)
            await mirror._commands.aclose()

    assert asyncio.run(parser_name()) == "_AsyncHiredisParser"
