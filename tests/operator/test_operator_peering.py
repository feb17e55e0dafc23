"""Replicas with kopf peering: each has its own priority, one serves, and it hands over."""

import time
from pathlib import Path
from typing import Any

import pytest

from sip_operator.main import PEERING_LIFETIME_S, kopf_settings, parse_args
from tests.support.operator_harness import (
    Cluster,
    OperatorProcess,
    account_spec,
    sip_status_entry,
    stream_key,
    wait_for,
)
from tests.support.redis_server import RedisServer

PEERING = "sip-test-peering"


def test_each_process_takes_its_own_nonzero_priority() -> None:
    """Without distinct priorities kopf pauses every replica (kopf's default is 0 for all)."""
    args = parse_args(["-n", "calls", "--peering", PEERING], {})
    priorities = {kopf_settings(args).peering.priority for _ in range(50)}
    assert len(priorities) == 50 and min(priorities) > 0


def test_peering_settings_from_flags_and_environment() -> None:
    peered = kopf_settings(parse_args(["-n", "calls", "--peering", PEERING, "--priority", "7"], {}))
    assert peered.peering.name == PEERING
    assert peered.peering.mandatory and not peered.peering.standalone
    assert peered.peering.priority == 7
    assert peered.scanning.disabled  # fixed namespaces: nothing to scan

    from_env = kopf_settings(
        parse_args(["-A"], {"SIP_OPERATOR_PEERING": PEERING, "SIP_OPERATOR_PRIORITY": "12"})
    )
    assert (from_env.peering.name, from_env.peering.priority) == (PEERING, 12)
    assert not from_env.scanning.disabled

    alone = kopf_settings(parse_args(["-n", "calls", "--standalone"], {}))
    assert alone.peering.standalone and not alone.peering.mandatory


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["-n", "calls", "--standalone", "--peering", PEERING], {}),
        (["-n", "calls", "--peering", PEERING], {"SIP_OPERATOR_STANDALONE": "true"}),
        (["-n", "calls", "--peering", "Not_A_Name"], {}),
        (["-n", "calls", "--priority", "high"], {}),
    ],
)
def test_contradicting_or_malformed_peering_flags_are_refused(
    argv: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv, environ)
    assert exited.value.code == 2
    assert "--peering" in capsys.readouterr().err or "--priority" in capsys.readouterr().err


def _peers(cluster: Cluster, namespace: str) -> dict[str, Any]:
    peering = cluster.emulator.objects("kopf.dev/v1/kopfpeerings", namespace).get(PEERING) or {}
    peers: dict[str, Any] = peering.get("status") or {}
    return peers


def _create_password_and_peering(cluster: Cluster, namespace: str) -> None:
    """Alice's SIP password Secret and the peering object the replicas join."""
    cluster.create_secret(namespace, "alice-sip", {"password": "pw"})
    cluster.custom.create_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", {"metadata": {"name": PEERING}}
    )


def _start_replica(
    cluster: Cluster, redis_url: str, namespace: str, log: Path, pod_id: str, *args: str
) -> OperatorProcess:
    """A peered replica; the worker image names it, so each pod tells who created it."""
    replica = OperatorProcess(cluster, redis_url, log)
    replica.start(
        ["--namespace", namespace, "--peering", PEERING, *args],
        env={"POD_ID": pod_id, "SIP_OPERATOR_WORKER_IMAGE": f"registry.test/sip-worker:{pod_id}"},
        standalone=False,
    )
    return replica


def _sessions_watch_paused(replica: OperatorProcess) -> bool:
    """Whether kopf's SipSession watch is paused now (its --verbose log says so at each turn)."""
    log = replica.log()
    paused = log.rfind("Pausing the watch-stream for sipsessions.")
    return paused > log.rfind("Resuming the watch-stream for sipsessions.")


def _pod_images(cluster: Cluster, namespace: str) -> dict[str, str]:
    """Pod name -> the tag of its image: the replica that created it."""
    return {
        name: pod["spec"]["containers"][0]["image"].rpartition(":")[2]
        for name, pod in cluster.pods(namespace).items()
    }


def test_two_replicas_elect_one_active_operator_which_hands_over_when_it_stops(
    cluster: Cluster, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    _create_password_and_peering(cluster, namespace)
    replicas = {
        pod_id: _start_replica(cluster, redis_server.url, namespace, tmp_path / pod_id, pod_id)
        for pod_id in ("replica-a", "replica-b")
    }
    try:
        peers = wait_for(
            lambda: len(_peers(cluster, namespace)) == 2 and _peers(cluster, namespace),
            what="both replicas in the peering object",
        )
        assert peers["replica-a"]["priority"] != peers["replica-b"]["priority"]
        active_id = max(peers, key=lambda pod_id: int(peers[pod_id]["priority"]))
        standby_id = next(pod_id for pod_id in replicas if pod_id != active_id)
        wait_for(lambda: _sessions_watch_paused(replicas[standby_id]), what="the standby paused")

        first = ["alice", "bob", "carol"]
        for name in first:
            cluster.create_session(namespace, name, account_spec())
        wait_for(lambda: len(cluster.pods(namespace)) == 3, what="the first pods")
        for name in first:
            cluster.wait_phase(namespace, name, "Pending")
        # Only the active replica acts: a racing standby would have created some of them.
        assert set(_pod_images(cluster, namespace).values()) == {active_id}
        assert "Pausing operations" not in replicas[active_id].log()  # it outranks its peer
        assert not any("Pausing all operators" in r.log() for r in replicas.values())  # no tie

        replicas[active_id].stop()  # it leaves the peering object on its way out
        wait_for(lambda: active_id not in _peers(cluster, namespace), what="the active one gone")
        cluster.core.delete_namespaced_pod("sip-alice", namespace)
        cluster.create_session(namespace, "dave", account_spec())
        wait_for(
            lambda: _pod_images(cluster, namespace).get("sip-dave") == standby_id,
            what="the former standby serving a new session",
        )
        wait_for(
            lambda: _pod_images(cluster, namespace).get("sip-alice") == standby_id,
            what="alice's pod recreated by the former standby",
        )
        assert len(cluster.pods(namespace)) == 4
    finally:
        for replica in replicas.values():
            replica.stop()
            replica.kill()
    for replica in replicas.values():
        assert "Traceback" not in replica.log(), replica.log()[-5000:]


@pytest.mark.slow
def test_the_standby_takes_over_within_the_peering_lifetime_when_the_active_one_is_killed(
    cluster: Cluster, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """A SIGKILLed replica cannot leave the peering object; its entry must expire."""
    _create_password_and_peering(cluster, namespace)
    active = _start_replica(
        cluster, redis_server.url, namespace, tmp_path / "active", "active", "--priority", "2"
    )
    standby: OperatorProcess | None = None
    try:
        wait_for(lambda: "active" in _peers(cluster, namespace), what="the active replica peered")
        standby = _start_replica(
            cluster, redis_server.url, namespace, tmp_path / "standby", "standby", "--priority", "1"
        )
        wait_for(lambda: _sessions_watch_paused(standby), what="the standby paused")
        assert _peers(cluster, namespace)["active"]["lifetime"] == PEERING_LIFETIME_S

        active.kill()
        killed = time.monotonic()
        cluster.create_session(namespace, "alice", account_spec())
        wait_for(
            lambda: _pod_images(cluster, namespace).get("sip-alice") == "standby",
            timeout=PEERING_LIFETIME_S + 20,
            what="the standby serving after the active one was killed",
        )
        # Not before the killed replica's entry expired: the standby never races a live peer.
        assert time.monotonic() - killed >= PEERING_LIFETIME_S - 10
    finally:
        for replica in (active, standby):
            if replica is not None:
                replica.stop()
                replica.kill()


@pytest.mark.slow
def test_a_replica_paused_by_a_higher_priority_one_stops_acting_until_it_serves_again(
    cluster: Cluster, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """kopf pauses only its own watches; the paused replica's session loops must stop too.

    The replica of higher priority reads another Redis, so any "ready" status that reaches
    the SipSession comes from the paused one.
    """
    _create_password_and_peering(cluster, namespace)
    other_redis = RedisServer(tmp_path / "other-redis")
    other_redis.start()
    first = _start_replica(
        cluster, redis_server.url, namespace, tmp_path / "first", "first", "--priority", "1"
    )
    second: OperatorProcess | None = None
    redis = redis_server.client()
    stream = stream_key(namespace, "alice")
    try:
        cluster.create_session(namespace, "alice", account_spec())
        wait_for(lambda: _pod_images(cluster, namespace).get("sip-alice") == "first", what="pod")
        cluster.set_pod_status(namespace, "sip-alice", "Running", ready=True)
        started = time.monotonic()
        redis.xadd(stream, sip_status_entry("registered", 1))
        wait_for(lambda: _last_status(cluster, namespace) == "registered", what="mirrored")
        mirror_delay = time.monotonic() - started

        second = _start_replica(
            cluster, other_redis.url, namespace, tmp_path / "second", "second", "--priority", "2"
        )
        wait_for(lambda: f"SipSession {namespace}/alice: released" in first.log(), what="paused")
        redis.xadd(stream, sip_status_entry("ready", 2))
        # Ten times what mirroring took while it served: a live loop would have written it
        # (perhaps overwritten at once by the serving replica: look at every version).
        time.sleep(max(2.0, 10 * mirror_delay))
        assert "ready" not in _every_last_status(cluster, namespace), "the paused replica acted"

        second.stop()  # the first serves again and takes the session up afresh
        cluster.wait_phase(namespace, "alice", "Ready")
        assert _last_status(cluster, namespace) == "ready"
    finally:
        for replica in (first, second):
            if replica is not None:
                replica.stop()
                replica.kill()
        other_redis.stop()
    for replica in (first, second):
        assert replica is not None and "Traceback" not in replica.log(), replica.log()[-5000:]


def _every_last_status(cluster: Cluster, namespace: str) -> set[str | None]:
    """Each lastStatus.type alice's SipSession ever had."""
    return {
        ((body.get("status") or {}).get("lastStatus") or {}).get("type")
        for resource, body in cluster.emulator.every_version()
        if resource.endswith("/sipsessions") and body["metadata"]["name"] == "alice"
    }


def _last_status(cluster: Cluster, namespace: str) -> str | None:
    last: dict[str, Any] = cluster.status(namespace, "alice").get("lastStatus") or {}
    return last.get("type")
