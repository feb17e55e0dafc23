"""The operator's parts on their own: names, settings, phase rules, CLI, the status mirror."""

import asyncio
import logging
import re
import subprocess
import time

import pytest

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import MEANINGS, SessionState, StatusType
from sip_operator import handlers, phase
from sip_operator.main import kopf_settings, parse_args
from sip_operator.phase import Observation, PodState, WorkerStatus, WorkerStatuses
from sip_operator.pod_builder import SessionRef, build_pod, child_names, session_label
from sip_operator.session_spec import SessionSpec, SpecError, parse_duration, parse_spec
from sip_operator.settings import OperatorSettings, SettingsError, load_settings
from sip_operator.status_mirror import StatusMirror
from tests.support.operator_harness import OPERATOR_BIN, sip_status_entry, stream_key
from tests.support.redis_server import RedisServer

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@pytest.mark.parametrize(
    "name", ["alice", "a" * 59, "a" * 60, "x" * 253, "team.alice", "0-starts-with-digit"]
)
def test_child_names_are_valid_deterministic_and_distinct(name: str) -> None:
    names = child_names(name)
    assert names == child_names(name)
    assert DNS_1035.match(names.pod) and len(names.pod) <= 63
    assert names.service == names.pod and names.token_secret == f"{names.pod}-token"
    assert LABEL_VALUE.match(session_label(name)) and len(session_label(name)) <= 63
    assert child_names(name + "b").pod != names.pod


POD_IP = {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}


@pytest.mark.parametrize(
    ("sip", "expected"),
    [
        ({}, {"SIP_WORKER_KEEPALIVE_INTERVAL": "15", "SIP_WORKER_PUBLIC_ADDRESS": POD_IP}),
        (
            {"stunServers": ["stun.example.com", "198.51.100.7:3478"], "keepaliveInterval": 0},
            {
                "SIP_WORKER_KEEPALIVE_INTERVAL": "0",
                "SIP_WORKER_STUN_SERVERS": "stun.example.com,198.51.100.7:3478",
            },
        ),
        (
            {"publicAddress": "203.0.113.10", "stunServers": ["stun.example.com"]},
            {
                "SIP_WORKER_KEEPALIVE_INTERVAL": "15",
                "SIP_WORKER_STUN_SERVERS": "stun.example.com",
                "SIP_WORKER_PUBLIC_ADDRESS": "203.0.113.10",
            },
        ),
    ],
    ids=["pod IP", "STUN", "fixed address"],
)
def test_the_pod_names_its_address_by_the_spec_by_stun_or_by_its_ip(
    sip: dict[str, object], expected: dict[str, object]
) -> None:
    spec = parse_spec(
        {"account": {"name": "a@pbx", "passwordSecretRef": {"name": "s", "key": "k"}}, "sip": sip}
    )
    pod = build_pod(SessionRef("ns", "a", "uid-1"), spec, OperatorSettings(), generation=1)
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    nat = {name: value for name, value in env.items() if name in NAT_VARIABLES}
    assert nat == expected


NAT_VARIABLES = (
    "SIP_WORKER_KEEPALIVE_INTERVAL",
    "SIP_WORKER_STUN_SERVERS",
    "SIP_WORKER_PUBLIC_ADDRESS",
)


def test_trusted_sources_reach_the_worker_as_its_env_var() -> None:
    account = {"name": "a@pbx", "passwordSecretRef": {"name": "s", "key": "k"}}
    trusting = parse_spec(
        {"account": account, "sip": {"trustedSources": ["203.0.113.0/24", "2001:db8::/32"]}}
    )
    plain = parse_spec({"account": account})

    def env_of(spec: SessionSpec) -> dict[str, object]:
        pod = build_pod(SessionRef("ns", "a", "uid-1"), spec, OperatorSettings(), generation=1)
        (container,) = pod["spec"]["containers"]
        return {e["name"]: e.get("value") for e in container["env"]}

    assert env_of(trusting)["SIP_WORKER_TRUSTED_SOURCES"] == "203.0.113.0/24,2001:db8::/32"
    assert "SIP_WORKER_TRUSTED_SOURCES" not in env_of(plain)
    assert parse_spec({"account": account, "sip": {"trustedSources": []}}).fingerprint == (
        plain.fingerprint
    )
    with pytest.raises(SpecError, match=r"'10\.0\.0\.1/8' is not a CIDR"):
        parse_spec({"account": account, "sip": {"trustedSources": ["10.0.0.1/8"]}})


def test_the_drop_policy_reaches_the_worker_and_the_default_changes_no_pod() -> None:
    account = {"name": "a@pbx", "passwordSecretRef": {"name": "s", "key": "k"}}
    dropping = parse_spec({"account": account, "sip": {"untrustedPolicy": "drop"}})
    rejecting = parse_spec({"account": account, "sip": {"untrustedPolicy": "reject"}})
    plain = parse_spec({"account": account})

    def env_of(spec: SessionSpec) -> dict[str, object]:
        pod = build_pod(SessionRef("ns", "a", "uid-1"), spec, OperatorSettings(), generation=1)
        (container,) = pod["spec"]["containers"]
        return {e["name"]: e.get("value") for e in container["env"]}

    assert env_of(dropping)["SIP_WORKER_UNTRUSTED_POLICY"] == "drop"
    assert "SIP_WORKER_UNTRUSTED_POLICY" not in env_of(plain)
    assert rejecting.fingerprint == plain.fingerprint != dropping.fingerprint
    with pytest.raises(SpecError, match=r"spec\.sip\.untrustedPolicy must be one of reject, drop"):
        parse_spec({"account": account, "sip": {"untrustedPolicy": "ignore"}})


@pytest.mark.parametrize(
    ("sip", "message"),
    [
        ({"stunServers": "stun.example.com"}, "stunServers must be a list"),
        ({"stunServers": ["stun:stun.example.com"]}, "'stun:stun.example.com' is not host"),
        ({"stunServers": ["a,b"]}, "'a,b' is not host"),
        ({"keepaliveInterval": -1}, "keepaliveInterval must be an integer >= 0"),
        ({"keepaliveInterval": 7200}, "keepaliveInterval must be at most 3600"),
        ({"publicAddress": "203.0.113.1:5060"}, "publicAddress '203.0.113.1:5060' is not an"),
    ],
)
def test_bad_nat_settings_are_refused_naming_the_field(
    sip: dict[str, object], message: str
) -> None:
    account = {"name": "a@pbx", "passwordSecretRef": {"name": "s", "key": "k"}}
    with pytest.raises(SpecError, match=message):
        parse_spec({"account": account, "sip": sip})


def test_settings_defaults_and_environment() -> None:
    assert load_settings({}) == OperatorSettings()
    settings = load_settings(
        {
            "SIP_OPERATOR_REDIS_URL": "redis://redis.sip:6379/2",
            "SIP_OPERATOR_WORKER_IMAGE": "registry/sip-worker:1.2",
            "SIP_OPERATOR_GRPC_PORT": "50100",
            "SIP_OPERATOR_REDIS_PASSWORD_SECRET": "redis-auth",
            "REDIS_PASSWORD": "pw",
        }
    )
    assert settings.redis_url == settings.worker_redis_url == "redis://redis.sip:6379/2"
    laptop = load_settings(
        {
            "SIP_OPERATOR_REDIS_URL": "redis://localhost:16379/0",
            "SIP_OPERATOR_WORKER_REDIS_URL": "redis://redis.sip.svc:6379/0",
        }
    )
    assert laptop.redis_url == "redis://localhost:16379/0"
    assert laptop.worker_redis_url == "redis://redis.sip.svc:6379/0"
    assert settings.worker_image == "registry/sip-worker:1.2"
    assert settings.grpc_port == 50100
    assert settings.redis_password_secret is not None
    assert settings.redis_password_secret.key == "password"
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SIP_OPERATOR_GRPC_PORT": "70000"}, "SIP_OPERATOR_GRPC_PORT"),
        ({"SIP_OPERATOR_GRPC_PORT": "grpc"}, "must be a number"),
        ({"SIP_OPERATOR_REDIS_URL": "http://x"}, "redis://"),
        ({"SIP_OPERATOR_WORKER_REDIS_URL": "redis://:pw@r/0"}, "WORKER_REDIS_URL"),
        ({"SIP_OPERATOR_WORKER_IMAGE": " "}, "must not be empty"),
        ({"SIP_OPERATOR_BACKOFF_BASE": "5", "SIP_OPERATOR_BACKOFF_MAX": "1"}, "BACKOFF_MAX"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(environ)


def test_both_redis_urls_may_name_a_redis_cluster() -> None:
    settings = load_settings(
        {
            "SIP_OPERATOR_REDIS_URL": "redis://localhost:7000?cluster=true",
            "SIP_OPERATOR_WORKER_REDIS_URL": "rediss://redis.sip.svc:6379?cluster=true",
        }
    )
    assert settings.redis_url == "redis://localhost:7000?cluster=true"
    assert settings.worker_redis_url == "rediss://redis.sip.svc:6379?cluster=true"
    assert load_settings({"SIP_OPERATOR_REDIS_URL": "redis://r:7000?cluster=true"}) == (
        OperatorSettings(
            redis_url="redis://r:7000?cluster=true", worker_redis_url="redis://r:7000?cluster=true"
        )
    )


@pytest.mark.parametrize(
    ("name", "url", "message"),
    [
        ("REDIS_URL", "redis://r:7000/2?cluster=true", "only database 0"),
        ("WORKER_REDIS_URL", "unix:///run/redis.sock?cluster=true", "over TCP"),
        ("REDIS_URL", "redis://r:7000?cluster=maybe", "cluster must be true or false"),
        ("WORKER_REDIS_URL", "redis://r:7000?clustre=true", "unknown parameter clustre"),
    ],
)
def test_a_malformed_redis_url_is_refused_as_the_worker_would(
    name: str, url: str, message: str
) -> None:
    """The worker's own parser checks both URLs, so no worker pod is made with a bad one."""
    with pytest.raises(SettingsError, match=message) as refused:
        load_settings({f"SIP_OPERATOR_{name}": url})
    assert str(refused.value).startswith(f"SIP_OPERATOR_{name}: ")


def test_a_redis_url_with_a_password_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({"SIP_OPERATOR_REDIS_URL": "redis://:Secr3t@redis:6379/0"})
    assert "REDIS_PASSWORD" in str(refused.value) and "Secr3t" not in str(refused.value)


def test_backoff_doubles_up_to_its_cap() -> None:
    settings = OperatorSettings(backoff_base=1, backoff_max=10)
    assert [settings.backoff(n) for n in range(6)] == [0, 1, 2, 4, 8, 10]


def test_durations() -> None:
    assert parse_duration("90s", "f") == 90
    assert parse_duration("1h30m", "f") == 5400
    assert parse_duration("7d", "f") == 604800


def _pod(phase_name: str | None = "Running", ready: bool = True) -> PodState:
    return PodState("p", "u", "owner", phase_name, ready, False, "h", "")


def _seen(*statuses: WorkerStatus | str) -> WorkerStatuses:
    """The fold of `statuses` (type names or WorkerStatuses), in order."""
    folded = WorkerStatuses()
    for status in statuses:
        folded = folded.add(WorkerStatus(status) if isinstance(status, str) else status)
    return folded


def _judged(statuses: WorkerStatuses) -> tuple[str, bool]:
    observation = Observation(pod=_pod(), statuses=statuses)
    return phase.derive_phase(observation)[0], phase.is_registered(observation)


LOST = WorkerStatus("session_registration_failed", description="408 Request Timeout")


@pytest.mark.parametrize(
    ("statuses", "judged"),
    [
        # A registration lost and won back mid-call leaves the call on (the pod stays).
        (_seen("ready", "incoming_call_connected", LOST), (phase.IN_CALL, False)),
        (_seen("ready", "incoming_call_connected", LOST, "registered"), (phase.IN_CALL, True)),
        # The call ends while the registration is still lost: Ready, yet not registered.
        (
            _seen("ready", "outgoing_call_connected", LOST, "outgoing_call_finished"),
            (phase.READY, False),
        ),
        (
            _seen(
                "ready",
                "outgoing_call_connected",
                LOST,
                "outgoing_call_finished",
                "registered",
                "ready",
            ),
            (phase.READY, True),
        ),
        # Outside a call a lost registration ends the session: the worker opens it again.
        (_seen("ready", LOST), (phase.STARTING, False)),
        (_seen("ready", LOST, "registered"), (phase.STARTING, True)),
        (_seen("ready", LOST, "registered", "ready"), (phase.READY, True)),
        # A worker that started again after a call it lost: `ready` ends that call.
        (_seen("incoming_call_connected", "registered", "ready"), (phase.READY, True)),
        # Only a call's statuses seen (an operator that started mid-call): registered.
        (_seen("outgoing_call_connected"), (phase.IN_CALL, True)),
    ],
)
def test_registration_reports_mid_call_leave_the_call_on(
    statuses: WorkerStatuses, judged: tuple[str, bool]
) -> None:
    assert _judged(statuses) == judged
    assert statuses.newest is not None


def test_the_last_status_shown_is_the_newest_whatever_it_says() -> None:
    statuses = _seen("ready", "incoming_call_connected", LOST)
    common = {"generation": 1, "pod_name": "p", "endpoint": "e", "token_secret": {}}
    status = phase.build_status(
        Observation(pod=_pod(), statuses=statuses), previous={}, now="T", **common
    )
    assert status["lastStatus"] == {
        "type": "session_registration_failed",
        "calleeId": "",
        "description": "408 Request Timeout",
    }
    registered = next(c for c in status["conditions"] if c["type"] == "Registered")
    assert (registered["reason"], registered["message"]) == (
        "RegistrationFailed",
        "last status session_registration_failed: 408 Request Timeout",
    )


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        (Observation(deleting=True, problem="x"), phase.TERMINATING),
        (Observation(problem="Secret missing", pod=_pod()), phase.FAILED),
        (Observation(), phase.PENDING),
        (Observation(pod=_pod("Pending", False)), phase.PENDING),
        (Observation(replacing=True, pod=_pod()), phase.PENDING),
        (Observation(pod=_pod("Running", False)), phase.STARTING),
        (Observation(pod=_pod(), statuses=_seen(WorkerStatus("registered"))), phase.STARTING),
        (Observation(pod=_pod(), statuses=_seen(WorkerStatus("ready"))), phase.READY),
        (
            Observation(pod=_pod(), statuses=_seen(WorkerStatus("incoming_call_connected"))),
            phase.IN_CALL,
        ),
        (
            Observation(pod=_pod(), statuses=_seen(WorkerStatus("outgoing_call_failed"))),
            phase.READY,
        ),
        (Observation(pod=_pod(), start_session=False), phase.READY),
        (
            Observation(pod=_pod("Running", False), statuses=_seen(WorkerStatus("ready"))),
            phase.STARTING,
        ),
    ],
)
def test_phase_rules(observation: Observation, expected: str) -> None:
    assert phase.derive_phase(observation)[0] == expected


IN_CALL_TYPES = [SipStatus.StatusType.Name(t) for t, m in MEANINGS.items() if m.in_call]


@pytest.mark.parametrize("start_session", [True, False])
@pytest.mark.parametrize("type_name", IN_CALL_TYPES)
def test_every_in_call_type_is_in_call(type_name: str, start_session: bool) -> None:
    """A type the contract says is in a call can never fall through to Starting or Ready."""
    observation = Observation(
        pod=_pod(),
        statuses=_seen(WorkerStatus(type_name, callee_id="bob")),
        start_session=start_session,
    )
    assert phase.derive_phase(observation) == (phase.IN_CALL, f"{type_name} bob")


@pytest.mark.parametrize("status_type", list(MEANINGS), ids=SipStatus.StatusType.Name)
def test_the_phase_of_every_type_follows_its_meaning(status_type: StatusType) -> None:
    meaning = MEANINGS[status_type]
    worker = WorkerStatus(SipStatus.StatusType.Name(status_type))
    if meaning.in_call:
        expected = phase.IN_CALL
    elif meaning.session is SessionState.READY:
        expected = phase.READY
    else:
        expected = phase.STARTING
    assert phase.derive_phase(Observation(pod=_pod(), statuses=_seen(worker)))[0] == expected
    registered = phase.is_registered(Observation(pod=_pod(), statuses=_seen(worker)))
    assert registered is (meaning.session is not SessionState.NONE)


def test_an_unknown_type_is_starting_and_registered() -> None:
    """A type from a newer worker: not a call, not an open session, registered."""
    worker = WorkerStatus("some_future_type")
    assert phase.derive_phase(Observation(pod=_pod(), statuses=_seen(worker)))[0] == phase.STARTING
    without_session = Observation(pod=_pod(), statuses=_seen(worker), start_session=False)
    assert phase.derive_phase(without_session)[0] == phase.READY
    assert phase.is_registered(Observation(pod=_pod(), statuses=_seen(worker)))


@pytest.mark.parametrize(
    ("observation", "registered", "message"),
    [
        (Observation(pod=_pod()), False, "no status yet"),
        (
            Observation(pod=_pod(), statuses=_seen(WorkerStatus("registered"))),
            True,
            "last status registered",
        ),
        (
            Observation(pod=_pod("Pending", False), statuses=_seen(WorkerStatus("registered"))),
            False,
            "the worker pod is not ready (last status registered)",
        ),
        (
            Observation(statuses=_seen(WorkerStatus("ready"))),
            False,
            "the worker pod is not ready (last status ready)",
        ),
        (
            Observation(deleting=True, pod=_pod(), statuses=_seen(WorkerStatus("ready"))),
            False,
            "the session is being deleted (last status ready)",
        ),
        (
            Observation(pod=_pod(), statuses=_seen(WorkerStatus("no_session"))),
            False,
            "last status no_session",
        ),
        (
            Observation(
                pod=_pod(),
                statuses=_seen(
                    WorkerStatus("session_registration_failed", description="403 Forbidden")
                ),
            ),
            False,
            "last status session_registration_failed: 403 Forbidden",
        ),
        (
            Observation(pod=_pod(), statuses=_seen(WorkerStatus("registered"))),
            True,
            "last status registered",
        ),
    ],
)
def test_the_registered_condition_says_why(
    observation: Observation, registered: bool, message: str
) -> None:
    common = {"generation": 1, "pod_name": "p", "endpoint": "e", "token_secret": {}}
    status = phase.build_status(observation, previous={}, now="T1", **common)
    condition = next(c for c in status["conditions"] if c["type"] == "Registered")
    assert (condition["status"], condition["message"]) == (
        "True" if registered else "False",
        message,
    )


def test_a_failed_registration_is_the_registered_condition_s_reason() -> None:
    common = {"generation": 1, "pod_name": "p", "endpoint": "e", "token_secret": {}}
    reasons = []
    for worker in (
        WorkerStatus("session_registration_failed", description="408 Request Timeout"),
        WorkerStatus("registered"),
    ):
        status = phase.build_status(
            Observation(pod=_pod(), statuses=_seen(worker)), previous={}, now="T1", **common
        )
        condition = next(c for c in status["conditions"] if c["type"] == "Registered")
        reasons.append((condition["status"], condition["reason"]))
    assert reasons == [("False", "RegistrationFailed"), ("True", "Registered")]


def test_a_session_that_sends_no_register_is_not_called_registered() -> None:
    """A trunk session (spec.account.register: false) is ready without a registration; its
    Registered condition says so instead of reading True from the `ready` status."""
    common = {"generation": 1, "pod_name": "p", "endpoint": "e", "token_secret": {}}
    trunk = Observation(pod=_pod(), statuses=_seen(WorkerStatus("ready")), registers=False)
    status = phase.build_status(trunk, previous={}, now="T1", **common)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == phase.READY
    assert conditions["Ready"]["status"] == "True"
    registered = conditions["Registered"]
    assert (registered["status"], registered["reason"], registered["message"]) == (
        "False",
        "RegistrationDisabled",
        "spec.account.register is false: the worker sends no REGISTER",
    )


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    observation = Observation(pod=_pod(), statuses=_seen(WorkerStatus("ready")))
    common = {"generation": 1, "pod_name": "p", "endpoint": "e", "token_secret": {}}
    first = phase.build_status(observation, previous={}, now="T1", **common)
    same = phase.build_status(observation, previous=first, now="T2", **common)
    assert [c["lastTransitionTime"] for c in same["conditions"]] == ["T1", "T1", "T1"]
    lost = phase.build_status(Observation(pod=_pod()), previous=same, now="T3", **common)
    assert {c["type"]: c["lastTransitionTime"] for c in lost["conditions"]} == {
        "Ready": "T3",
        "Registered": "T3",
        "UpdatePending": "T1",
    }


def test_a_pending_update_shows_in_the_status_and_its_condition() -> None:
    common = {"generation": 1, "pod_name": "p", "endpoint": "e", "token_secret": {}}
    in_call = Observation(pod=_pod(), statuses=_seen(WorkerStatus("outgoing_call_connected")))
    assert phase.call_in_progress(in_call.pod, in_call.statuses)
    assert not phase.call_in_progress(_pod("Running", False), in_call.statuses)
    since = phase.parse_timestamp("2030-05-01T10:00:00Z")
    assert since is not None and phase.timestamp(since) == "2030-05-01T10:00:00Z"
    pending = phase.PendingUpdate(2, since, since + 3600, "CallInProgress", "waiting for it")
    waiting = Observation(pod=_pod(), statuses=in_call.statuses, pending_update=pending)
    status = phase.build_status(waiting, previous={}, now="T1", **common)
    assert status["phase"] == phase.IN_CALL
    assert status["pendingUpdate"] == {
        "generation": 2,
        "since": "2030-05-01T10:00:00Z",
        "deadline": "2030-05-01T11:00:00Z",
        "reason": "waiting for it",
    }
    condition = next(c for c in status["conditions"] if c["type"] == "UpdatePending")
    assert (condition["status"], condition["reason"]) == ("True", "CallInProgress")
    settled = phase.build_status(in_call, previous=status, now="T2", **common)
    assert settled["pendingUpdate"] is None  # a merge patch removes it
    condition = next(c for c in settled["conditions"] if c["type"] == "UpdatePending")
    assert (condition["status"], condition["lastTransitionTime"]) == ("False", "T2")
    assert phase.parse_timestamp("yesterday") is None
    assert phase.parse_timestamp("2030-05-01T10:00:00") is None  # no zone: not a time we wrote


def test_the_pod_grace_period_covers_the_drain_and_the_shutdown() -> None:
    assert OperatorSettings(worker_shutdown_grace=20).termination_grace_seconds(3600) == 3630
    assert OperatorSettings(worker_shutdown_grace=2.5).termination_grace_seconds(0) == 13


def test_the_settings_for_kopf_run_carry_the_operators_configuration() -> None:
    """main gives kopf.run settings already configured (the startup handler does not redo it)."""
    settings = kopf_settings(parse_args(["-n", "calls"], {}))
    assert settings.persistence.finalizer == handlers.FINALIZER
    assert isinstance(settings.persistence.diffbase_storage, handlers.NoDiffBase)
    assert settings.posting.level == logging.WARNING
    assert settings.posting.reporting_component == "sip-operator"
    assert (settings.watching.server_timeout, settings.watching.client_timeout) == (600, 660)


def test_the_cli_demands_a_scope_and_valid_settings() -> None:
    no_scope = subprocess.run([str(OPERATOR_BIN)], capture_output=True, text=True, timeout=60)
    assert no_scope.returncode == 2 and "--all-namespaces" in no_scope.stderr
    bad = subprocess.run(
        [str(OPERATOR_BIN), "-A"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SIP_OPERATOR_REDIS_URL": "redis://:hunter2@r/0"},
    )
    assert bad.returncode == 2
    assert "SIP_OPERATOR_REDIS_URL" in bad.stderr and "hunter2" not in bad.stderr


async def _follow_while_blocked(redis_server: RedisServer) -> float:
    """Seconds from following a new stream (reader already blocked) to its newest entry."""
    redis = redis_server.client()
    redis.xadd(stream_key("ns", "late"), sip_status_entry("ready", 1))
    seen: dict[tuple[str, str], str] = {}
    mirror = StatusMirror(redis_server.url, None, block_seconds=30)
    runner = asyncio.create_task(mirror.run(lambda key, status: seen.update({key: status.type})))
    try:
        mirror.follow(("ns", "early"))
        while not any(c.get("cmd") == "xread" for c in redis.client_list()):
            await asyncio.sleep(0.02)
        started = time.monotonic()
        mirror.follow(("ns", "late"))
        while ("ns", "late") not in seen:
            await asyncio.sleep(0.02)
        woke_after = time.monotonic() - started
        redis.xadd(stream_key("ns", "early"), sip_status_entry("registered", 1))
        while seen.get(("ns", "early")) != "registered":
            await asyncio.sleep(0.02)
        return woke_after
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await mirror.close()


def test_a_new_stream_is_followed_without_waiting_for_the_blocked_read(
    redis_server: RedisServer,
) -> None:
    woke_after = asyncio.run(asyncio.wait_for(_follow_while_blocked(redis_server), 60))
    assert woke_after < 15  # the blocked XREAD (30 s) was interrupted, not waited out


async def _mirror_through_outage(redis_server: RedisServer) -> list[str]:
    seen: list[str] = []
    mirror = StatusMirror(redis_server.url, None, block_seconds=1, retry_seconds=0.2)
    runner = asyncio.create_task(mirror.run(lambda key, status: seen.append(status.type)))
    try:
        mirror.follow(("ns", "s"))
        redis_server.client().xadd(stream_key("ns", "s"), sip_status_entry("registered", 1))
        while "registered" not in seen:
            await asyncio.sleep(0.02)
        redis_server.stop()
        await asyncio.sleep(1.5)
        redis_server.start()
        # The mirror back (blocked again) before the next status: its re-read found nothing new.
        while not any(c.get("cmd") == "xread" for c in redis_server.client().client_list()):
            await asyncio.sleep(0.05)
        redis_server.client().xadd(stream_key("ns", "s"), sip_status_entry("ready", 2))
        while "ready" not in seen:
            await asyncio.sleep(0.05)
        return seen
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await mirror.close()


def test_the_mirror_rides_out_a_redis_outage(redis_server: RedisServer) -> None:
    """Each status once: the re-read after the outage hands on only what came since."""
    seen = asyncio.run(asyncio.wait_for(_mirror_through_outage(redis_server), 60))
    assert seen == ["registered", "ready"]
