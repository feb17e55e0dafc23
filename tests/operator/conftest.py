"""Fixtures for the operator tests: the emulated cluster, and the operator as a subprocess."""

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.k8s_emulator import EmulatorThread
from tests.support.operator_harness import Cluster, OperatorProcess
from tests.support.redis_server import RedisServer

_namespaces = itertools.count(1)


@pytest.fixture()
def cluster() -> Iterator[Cluster]:
    with EmulatorThread() as emulator:
        yield Cluster(emulator)


@pytest.fixture()
def namespace() -> str:
    return f"test-{next(_namespaces)}"


@pytest.fixture()
def operator(
    cluster: Cluster, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator watching `namespace` only; SIP password Secret `alice-sip` already there."""
    cluster.create_secret(namespace, "alice-sip", {"password": "alice-sip-password"})
    process = OperatorProcess(cluster, redis_server.url, tmp_path / "operator.log")
    process.start(["--namespace", namespace])
    yield process
    process.stop()
    process.kill()
    assert "Traceback" not in process.log(), process.log()[-5000:]
