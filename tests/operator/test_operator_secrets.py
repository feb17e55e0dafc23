"""No secret (SIP password, API token, Redis password) in anything the operator writes or logs."""

import base64
import json
from pathlib import Path

from tests.support.operator_harness import (
    Cluster,
    OperatorProcess,
    account_spec,
    sip_status_entry,
    stream_key,
    wait_for,
)
from tests.support.redis_server import RedisServer

NAMESPACE = "secrets"
SIP_PASSWORD = "sip-Pa55word-4-alice"
REDIS_PASSWORD = "redis-Pa55word-for-all"


def _forms(secret: str) -> list[str]:
    return [secret, base64.b64encode(secret.encode()).decode()]


def test_secrets_appear_nowhere_the_operator_writes(cluster: Cluster, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD)
    redis_server.start()
    url_without_password = f"redis://127.0.0.1:{redis_server.port}/0"
    operator = OperatorProcess(cluster, url_without_password, tmp_path / "operator.log")
    try:
        cluster.create_secret(NAMESPACE, "alice-sip", {"password": SIP_PASSWORD})
        cluster.create_secret(NAMESPACE, "redis-auth", {"password": REDIS_PASSWORD})
        operator.start(
            ["--namespace", NAMESPACE],
            env={
                "REDIS_PASSWORD": REDIS_PASSWORD,
                "SIP_OPERATOR_REDIS_PASSWORD_SECRET": "redis-auth",
            },
        )
        redis = redis_server.client()
        cluster.create_session(NAMESPACE, "alice", account_spec())
        cluster.create_session(NAMESPACE, "nopass", account_spec(secret="absent"))
        pod = wait_for(lambda: cluster.pods(NAMESPACE).get("sip-alice"), what="the pod")
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["REDIS_PASSWORD"]["valueFrom"] == {
            "secretKeyRef": {"name": "redis-auth", "key": "password"}
        }
        assert REDIS_PASSWORD not in env["SIP_WORKER_REDIS_URL"]["value"]

        # The operator reads the password-protected Redis (with its REDIS_PASSWORD).
        cluster.set_pod_status(NAMESPACE, "sip-alice", "Running", ready=True)
        redis.xadd(stream_key(NAMESPACE, "alice"), sip_status_entry("ready", 1))
        cluster.wait_phase(NAMESPACE, "alice", "Ready")
        cluster.wait_phase(NAMESPACE, "nopass", "Failed")
        tokens = [
            base64.b64decode(s["data"]["token"]).decode()
            for n, s in cluster.secrets(NAMESPACE).items()
            if n.endswith("-token")
        ]
        assert len(tokens) == 2

        # Some life: a spec change, a failed pod, then deletion.
        cluster.patch_session(NAMESPACE, "alice", {"spec": {"autoAnswerInterval": 2}})
        wait_for(lambda: cluster.status(NAMESPACE, "alice").get("observedGeneration") == 2)
        wait_for(lambda: cluster.pods(NAMESPACE).get("sip-alice"), what="the new pod")
        cluster.set_pod_status(NAMESPACE, "sip-alice", "Failed", ready=False)
        wait_for(lambda: "Failed" in cluster.event_reasons(NAMESPACE, "alice"))
        cluster.delete_session(NAMESPACE, "alice")
        wait_for(lambda: "alice" not in cluster.sessions(NAMESPACE), what="deletion")
        assert redis.ttl(stream_key(NAMESPACE, "alice")) > 0
    finally:
        operator.stop()
        operator.kill()
        redis_server.stop()

    written = [
        json.dumps(body)
        for resource, body in cluster.emulator.every_version()
        if not resource.endswith("/secrets")  # the one place they belong
    ]
    assert any('"involvedObject"' in text for text in written)  # events were written
    assert any('"kind": "Pod"' in text for text in written)
    log = operator.log()
    assert "sip-alice" in log  # the log is there and says something
    for secret in [SIP_PASSWORD, REDIS_PASSWORD, *tokens]:
        for form in _forms(secret):
            assert not [text for text in written if form in text], "a secret in an API object"
            assert form not in log, "a secret in the operator's log"
