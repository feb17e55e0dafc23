"""Fixtures for tests through a real kernel NAT: the namespaces, and the worker, sipp, a STUN
server and a recording far end placed in them (see tests/support/nat_network.py)."""

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.nat_network import (
    PRIVATE_ADDRESS,
    PUBLIC_ADDRESS,
    NatNetwork,
    unavailable_reason,
)
from tests.support.recording_peer import RecordingPeer
from tests.support.redis_server import RedisServer
from tests.support.sip_peers import SippFactory
from tests.support.sipp import Sipp
from tests.support.stun_server import StunServer
from tests.worker.conftest import WorkerProcess, start_worker

PeerFactory = Callable[..., RecordingPeer]


@functools.cache
def _unavailable() -> str | None:
    return unavailable_reason()


@pytest.fixture()
def nat_network() -> Iterator[NatNetwork]:
    """Fresh namespaces for each test (conntrack state and port forwards included)."""
    reason = _unavailable()
    if reason is not None:
        pytest.skip(f"no network namespaces: {reason}")
    network = NatNetwork()
    yield network
    network.destroy()


@pytest.fixture()
def management_redis(nat_network: NatNetwork, tmp_path: Path) -> Iterator[RedisServer]:
    """Redis on the root namespace's end of the management veth, where the worker reaches it
    (bound to that address only; protected mode would refuse a non-loopback client)."""
    server = RedisServer(
        tmp_path / "redis", host=nat_network.management_root, extra_args=("--protected-mode", "no")
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def private_worker(
    nat_network: NatNetwork, management_redis: RedisServer, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts sip-workers in the private namespace (SIP on its address, gRPC on the
    management veth) with extra flags; kills them in teardown."""
    started: list[WorkerProcess] = []

    def factory(*args: str) -> WorkerProcess:
        worker = start_worker(
            management_redis.url,
            tmp_path / "worker",
            args,
            prefix=nat_network.exec_prefix(nat_network.private),
            grpc_host=nat_network.management_private,
            sip_host=PRIVATE_ADDRESS,
        )
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.stop()


@pytest.fixture()
def public_sipp(nat_network: NatNetwork, sipp_factory: SippFactory) -> SippFactory:
    """Starts sipp scenarios on the public side (see Sipp)."""

    def factory(scenario: str, **kwargs: object) -> Sipp:
        prefix = nat_network.exec_prefix(nat_network.public)
        return sipp_factory(scenario, host=PUBLIC_ADDRESS, prefix=prefix, **kwargs)

    return factory


@pytest.fixture()
def public_peer(nat_network: NatNetwork, tmp_path: Path) -> Iterator[PeerFactory]:
    """Starts recording far ends (tests/support/recording_peer.py) on the public side."""
    started: list[RecordingPeer] = []

    def factory(port: int = 0) -> RecordingPeer:
        prefix = nat_network.exec_prefix(nat_network.public)
        peer = RecordingPeer(
            tmp_path / f"peer-{len(started)}", host=PUBLIC_ADDRESS, port=port, prefix=prefix
        )
        started.append(peer)
        return peer

    yield factory
    for peer in started:
        peer.stop()


@pytest.fixture()
def stun_server(nat_network: NatNetwork, tmp_path: Path) -> Iterator[StunServer]:
    """coturn, STUN only, on the public side."""
    server = StunServer(
        tmp_path / "stun", PUBLIC_ADDRESS, prefix=nat_network.exec_prefix(nat_network.public)
    )
    yield server
    server.stop()
