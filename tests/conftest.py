"""Fixtures shared by every test area. Area-specific ones live in tests/support/."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certificates import ca
from tests.support.kamailio import kamailio, tls_kamailio_factory
from tests.support.redis_cluster import RedisClusterOfThree
from tests.support.redis_server import RedisServer
from tests.support.sip_peers import registrar, sipp_factory

__all__ = [
    "ca",
    "kamailio",
    "registrar",
    "sipp_factory",
    "tls_kamailio_factory",
]  # fixtures shared with every area


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh real Redis server on a free port; stop()/start() keep its data."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterOfThree]:
    """A local three-master Redis Cluster, shared by every test that needs one."""
    cluster = RedisClusterOfThree(Path(tmp_path_factory.mktemp("cluster")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
