from tests.support.redis_server import RedisServer


def test_server_keeps_data_across_restart(redis_server: RedisServer) -> None:
    redis_server.client().xadd("s", {"a": "1"})
    redis_server.stop()
    redis_server.start()
    assert redis_server.client().xlen("s") == 1
