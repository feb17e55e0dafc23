"""The history through real sip-worker processes on real SIP calls: SIGKILL and restart (also in
the middle of a call), Redis stopped in the middle of a call, a legacy stream moved at start,
bad Redis configuration."""

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ondewo.sip import sip_pb2
from sip_contract.status import legacy_stream_key, stream_key
from tests.support.redis_server import RedisServer
from tests.support.sipp import Sipp, free_tcp_port
from tests.support.worker_cli import run_sip_worker
from tests.worker.conftest import (
    SIPP_PASSWORD,
    SIPP_USER,
    WorkerProcess,
    start_session,
    start_worker,
)

SESSION = "ns/history-session"
WAIT = 30.0


@pytest.fixture()
def processes(tmp_path: Path) -> Iterator[tuple[list[WorkerProcess], list[Sipp]]]:
    """Every worker and sipp a test starts; all killed in teardown."""
    workers: list[WorkerProcess] = []
    peers: list[Sipp] = []
    yield workers, peers
    for worker in workers:
        worker.stop()
    for peer in peers:
        peer.stop()


class Harness:
    def __init__(
        self,
        redis_server: RedisServer,
        tmp_path: Path,
        processes: tuple[list[WorkerProcess], list[Sipp]],
    ) -> None:
        self.redis_server = redis_server
        self.tmp_path = tmp_path
        self.workers, self.peers = processes

    def worker(self, *args: str) -> WorkerProcess:
        worker = start_worker(
            self.redis_server.url,
            self.tmp_path / f"worker-{len(self.workers)}",
            ["--session-key", SESSION, *args],
        )
        self.workers.append(worker)
        return worker

    def sipp(self, scenario: str, **kwargs: object) -> Sipp:
        peer = Sipp(scenario, self.tmp_path / "sipp", **kwargs)  # type: ignore[arg-type]
        self.peers.append(peer)
        return peer.start()

    def session(self, worker: WorkerProcess) -> None:
        registrar = self.sipp(
            "registrar_auth.xml",
            variables={"user": SIPP_USER, "pass": SIPP_PASSWORD},
            args=["-m", "1"],
        )
        start_session(worker, registrar, auto_answer_interval=1)

    def call(self, worker: WorkerProcess, uas: Sipp) -> None:
        worker.stub.StartCall(
            sip_pb2.StartCallRequest(callee_id=f"service@{uas.address}"), timeout=10
        )
        worker.wait_for_status("outgoing_call_connected")

    def stored(self) -> list[sip_pb2.SipStatus]:
        entries = self.redis_server.client().xrange(stream_key(SESSION))
        return [sip_pb2.SipStatus.FromString(fields[b"status"]) for _id, fields in entries]

    def wait_until_stored(self, worker: WorkerProcess) -> list[sip_pb2.SipStatus]:
        """Waits until Redis holds what the worker reports (writes are asynchronous)."""
        deadline = time.monotonic() + WAIT
        while (history := worker.history()) != self.stored():
            assert time.monotonic() < deadline, f"{worker.types()} never reached Redis"
            time.sleep(0.05)
        return history


@pytest.fixture()
def harness(
    redis_server: RedisServer,
    tmp_path: Path,
    processes: tuple[list[WorkerProcess], list[Sipp]],
) -> Harness:
    return Harness(redis_server, tmp_path, processes)


def kill_and_restart(harness: Harness, worker: WorkerProcess) -> WorkerProcess:
    worker.process.kill()
    worker.process.wait(timeout=10)
    return harness.worker()


def test_history_and_status_survive_a_sigkill(harness: Harness) -> None:
    worker = harness.worker()
    harness.session(worker)
    harness.call(worker, harness.sipp("uas_bye.xml", args=["-d", "200", "-m", "1"]))
    worker.wait_for_status("outgoing_call_finished")
    before = harness.wait_until_stored(worker)
    status = worker.status()
    assert [sip_pb2.SipStatus.StatusType.Name(s.status_type) for s in before] == [
        "registered",
        "ready",
        "outgoing_call_initiated",
        "outgoing_call_connected",
        "outgoing_call_finished",
    ]

    restarted = kill_and_restart(harness, worker)
    assert restarted.history() == before
    assert restarted.status() == status


def test_history_and_status_survive_a_sigkill_in_the_middle_of_a_call(harness: Harness) -> None:
    worker = harness.worker()
    harness.session(worker)
    harness.call(worker, harness.sipp("uas"))
    before = harness.wait_until_stored(worker)
    assert before[-1].status_type == sip_pb2.SipStatus.outgoing_call_connected

    restarted = kill_and_restart(harness, worker)
    assert restarted.history() == before
    assert restarted.status() == before[-1]


def test_a_worker_moves_the_legacy_stream_and_continues_the_history(harness: Harness) -> None:
    redis = harness.redis_server.client()
    Type = sip_pb2.SipStatus.StatusType
    old = [
        sip_pb2.SipStatus(status_type=Type.Value(name), callee_id="bob")
        for name in ("registered", "ready", "outgoing_call_initiated", "outgoing_call_failed")
    ]
    for seq, status in enumerate(old, start=1):  # as a worker of the previous version wrote it
        redis.xadd(
            legacy_stream_key(SESSION),
            {
                "type": Type.Name(status.status_type),
                "seq": seq,
                "status": status.SerializeToString(),
            },
            id=f"{seq}-0",
        )

    worker = harness.worker()
    assert worker.history() == old
    assert redis.exists(legacy_stream_key(SESSION)) == 0
    harness.session(worker)
    history = harness.wait_until_stored(worker)
    assert history[:4] == old
    assert [Type.Name(s.status_type) for s in history[4:]] == ["registered", "ready"]
    ids = [entry_id for entry_id, _fields in redis.xrange(stream_key(SESSION))]
    assert ids == [f"{n}-0".encode() for n in range(1, 7)]
    assert "4 entries moved from" in worker.log()


def buffer_depth(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    match = re.search(r"^sip_worker_history_buffer_depth (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def test_redis_stopped_in_the_middle_of_a_call_loses_and_duplicates_nothing(
    harness: Harness,
) -> None:
    metrics_port = free_tcp_port()
    worker = harness.worker("--metrics-port", str(metrics_port))
    harness.session(worker)
    harness.call(worker, harness.sipp("uas"))
    harness.wait_until_stored(worker)

    harness.redis_server.stop()
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished")
    # Served from memory meanwhile, buffered for Redis.
    during = worker.history()
    assert [sip_pb2.SipStatus.StatusType.Name(s.status_type) for s in during[-2:]] == [
        "hard_hangup_initiated",
        "outgoing_call_finished",
    ]
    assert buffer_depth(metrics_port) == 2
    harness.redis_server.start()

    after = harness.wait_until_stored(worker)
    assert after == during  # every status once, in order, with its original timestamp
    entries = harness.redis_server.client().xrange(stream_key(SESSION))
    assert [fields[b"seq"] for _id, fields in entries] == [
        str(n).encode() for n in range(1, len(during) + 1)
    ]
    deadline = time.monotonic() + WAIT
    while buffer_depth(metrics_port) != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    log = worker.log()
    assert log.count("is unavailable") == 1, log
    assert log.count("is reachable again") == 1, log


BAD_REDIS = {
    "malformed URL": ("redis://127.0.0.1:port/0", "Redis URL 'redis://127.0.0.1:port/0'"),
    "unknown scheme": ("http://127.0.0.1:6379/0", "the scheme must be redis://"),
}


@pytest.mark.parametrize(("url", "message"), BAD_REDIS.values(), ids=BAD_REDIS.keys())
def test_a_bad_redis_url_stops_the_worker_before_serving(url: str, message: str) -> None:
    code, output = run_sip_worker("--redis-url", url, "--grpc-port", str(free_tcp_port()))
    assert code == 2, output
    assert message in output
    assert "serving" not in output


def test_a_wrong_redis_password_stops_the_worker_before_serving(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="right-Secret-1")
    server.start()
    try:
        url = f"redis://:wrong-Secret-2@127.0.0.1:{server.port}/0"
        code, output = run_sip_worker("--redis-url", url, "--grpc-port", str(free_tcp_port()))
        assert code == 2, output
        assert "refused the credentials" in output
        assert "serving" not in output
        assert "Secret" not in output

        code, output = run_sip_worker(
            "--redis-url",
            f"redis://127.0.0.1:{server.port}/0",
            "--grpc-port",
            str(free_tcp_port()),
            env={"REDIS_PASSWORD": "wrong-Secret-3"},
        )
        assert code == 2, output
        assert "refused the credentials" in output
        assert "Secret" not in output
    finally:
        server.stop()


def test_the_worker_uses_the_password_from_redis_password(
    tmp_path: Path, processes: tuple[list[WorkerProcess], list[Sipp]]
) -> None:
    server = RedisServer(tmp_path / "redis", password="right-Secret-1")
    server.start()
    try:
        worker = start_worker(
            f"redis://127.0.0.1:{server.port}/0",
            tmp_path / "worker",
            ["--session-key", SESSION],
            env={"REDIS_PASSWORD": "right-Secret-1"},
        )
        processes[0].append(worker)
        assert worker.history() == []
        assert "right-Secret-1" not in worker.log()
    finally:
        server.stop()
