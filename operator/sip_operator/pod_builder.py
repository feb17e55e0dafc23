"""The bodies of what the operator creates per SipSession: worker Pod, Service, token Secret.

Names are deterministic (a function of the SipSession's name), so a restarted operator finds
what it created before instead of creating it twice. Everything is owned by the SipSession
(controller ownerReference) and labelled. No secret value is ever put into a pod spec: the
SIP and Redis passwords arrive through secretKeyRef, the API token and the TLS certificates and
key as mounted files.
"""

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sip_contract.status import session_key
from sip_operator.port_slots import WorkerPorts
from sip_operator.session_spec import API_VERSION, DEFAULT_UNTRUSTED_POLICY, KIND, SessionSpec
from sip_operator.settings import OperatorSettings

LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_SESSION = "sip-operator.dev/session"
LABEL_SLOT = "sip-operator.dev/slot"
WORKER_APP = "sip-worker"
MANAGER = "sip-operator"
ANNOTATION_SPEC_HASH = "sip-operator.dev/spec-hash"
ANNOTATION_GENERATION = "sip-operator.dev/generation"
# Set while a spec change waits for the call in progress: when the wait ends. The worker reads
# it through a downward-API file, so that a SIGTERM after it (the replacement, or a node
# drain meanwhile) does not keep the call for another whole drainTimeout.
ANNOTATION_DRAIN_DEADLINE = "sip-operator.dev/drain-deadline"

CONTAINER_NAME = "sip-worker"
TOKEN_KEY = "token"
TOKEN_DIR = "/var/run/sip-worker/token"
TOKEN_FILE = f"{TOKEN_DIR}/{TOKEN_KEY}"
DRAIN_DIR = "/var/run/sip-worker/drain"
DRAIN_DEADLINE_PATH = "deadline"
DRAIN_DEADLINE_FILE = f"{DRAIN_DIR}/{DRAIN_DEADLINE_PATH}"
WORKER_UID = 10001
TLS_DIR = "/etc/sip-worker/tls"
# The TLS Secret's keys (kubernetes.io/tls names) and the worker settings that take their files.
TLS_KEYS = {
    "ca.crt": "SIP_WORKER_TLS_CA_FILE",
    "tls.crt": "SIP_WORKER_TLS_CERT_FILE",
    "tls.key": "SIP_WORKER_TLS_KEY_FILE",
}
# A container port's protocol: TLS runs over TCP.
_PORT_PROTOCOLS = {"udp": "UDP", "tcp": "TCP", "tls": "TCP"}

_DNS_LABEL_MAX = 63
_NOT_LABEL_CHARS = re.compile(r"[^a-z0-9-]")
_NOT_LABEL_VALUE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class SessionRef:
    """Which SipSession (the owner) the objects belong to."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class ChildNames:
    pod: str
    service: str
    token_secret: str


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def child_names(session_name: str) -> ChildNames:
    """Pod and Service share one DNS-1035 label (<= 63 chars); long or dotted names get a hash."""
    base = f"sip-{session_name}"
    if len(base) > _DNS_LABEL_MAX or _NOT_LABEL_CHARS.search(base):
        cleaned = _NOT_LABEL_CHARS.sub("-", base.lower())[: _DNS_LABEL_MAX - 9].rstrip("-")
        base = f"{cleaned}-{_short_hash(session_name)}"
    return ChildNames(pod=base, service=base, token_secret=f"{base}-token")


def session_label(session_name: str) -> str:
    """The session's name as a label value (<= 63 chars, label characters only)."""
    if len(session_name) <= _DNS_LABEL_MAX and not _NOT_LABEL_VALUE_CHARS.search(session_name):
        return session_name
    cleaned = _NOT_LABEL_VALUE_CHARS.sub("-", session_name)[: _DNS_LABEL_MAX - 9].strip("-_.")
    return f"{cleaned}-{_short_hash(session_name)}"


def labels(session_name: str) -> dict[str, str]:
    return {
        LABEL_NAME: WORKER_APP,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_SESSION: session_label(session_name),
    }


def owner_reference(session: SessionRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": session.name,
        "uid": session.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_uid(body: dict[str, Any]) -> str | None:
    """The uid of the SipSession controlling `body`, if a SipSession controls it."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND:
            uid = ref.get("uid")
            return str(uid) if uid else None
    return None


def _metadata(session: SessionRef, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": session.namespace,
        "labels": labels(session.name),
        "ownerReferences": [owner_reference(session)],
    }


def endpoint(session: SessionRef, settings: OperatorSettings) -> str:
    names = child_names(session.name)
    return f"{names.service}.{session.namespace}.svc:{settings.grpc_port}"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def build_token_secret(session: SessionRef, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(session, child_names(session.name).token_secret),
        "type": "Opaque",
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def build_service(session: SessionRef, settings: OperatorSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(session, child_names(session.name).service),
        "spec": {
            "type": "ClusterIP",
            "selector": {
                LABEL_MANAGED_BY: MANAGER,
                LABEL_SESSION: session_label(session.name),
            },
            "ports": [
                {
                    "name": "grpc",
                    "port": settings.grpc_port,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                }
            ],
        },
    }


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def pod_fingerprint(spec: SessionSpec, slot: int | None) -> str:
    """What a pod is built from: its spec and, on hostNetwork, its port slot."""
    return spec.fingerprint if slot is None else f"{spec.fingerprint}-slot-{slot}"


def _worker_env(
    session: SessionRef,
    spec: SessionSpec,
    settings: OperatorSettings,
    ports: WorkerPorts,
    tls_keys: frozenset[str],
) -> list[dict[str, Any]]:
    password = spec.password_ref
    env = [
        _env("SIP_WORKER_ACCOUNT", spec.account_name),
        *(
            []
            if password is None
            else [_secret_env("SIP_WORKER_PASSWORD", password.name, password.key)]
        ),
        _env("SIP_WORKER_SESSION_KEY", session_key(session.namespace, session.name)),
        _env("SIP_WORKER_REDIS_URL", settings.worker_redis_url),
        _env("SIP_WORKER_HISTORY_MAX_LEN", str(spec.history_max_length)),
        _env("SIP_WORKER_AUTO_ANSWER_INTERVAL", str(spec.auto_answer_interval)),
        _env("SIP_WORKER_START_SESSION", "true" if spec.start_session else "false"),
        _env("SIP_WORKER_SIP_TRANSPORT", spec.transport),
        _env("SIP_WORKER_SIP_HOST", "0.0.0.0"),
        _env("SIP_WORKER_SIP_PORT", str(ports.sip)),
        _env("SIP_WORKER_GRPC_HOST", "0.0.0.0"),
        _env("SIP_WORKER_GRPC_PORT", str(ports.grpc)),
        _env("SIP_WORKER_METRICS_PORT", str(ports.metrics)),
        *_nat_env(spec),
        _env("SIP_WORKER_AUTH_TOKEN_FILE", TOKEN_FILE),
        _env("SIP_WORKER_LOG_FORMAT", "json"),
        _env("SIP_WORKER_SHUTDOWN_GRACE", f"{settings.worker_shutdown_grace:g}"),
        _env("SIP_WORKER_DRAIN_TIMEOUT", str(spec.drain_timeout)),
        _env("SIP_WORKER_DRAIN_DEADLINE_FILE", DRAIN_DEADLINE_FILE),
    ]
    if ports.rtp is not None:
        env.append(_env("SIP_WORKER_RTP_PORT", str(ports.rtp)))
        env.append(_env("SIP_WORKER_RTP_PORT_COUNT", str(ports.rtp_count)))
    if spec.auth_username:
        env.append(_env("SIP_WORKER_AUTH_USERNAME", spec.auth_username))
    if spec.outbound_proxy:
        env.append(_env("SIP_WORKER_OUTBOUND_PROXY", spec.outbound_proxy))
    if not spec.register:
        env.append(_env("SIP_WORKER_NO_REGISTER", "true"))
    if spec.trusted_sources:
        env.append(_env("SIP_WORKER_TRUSTED_SOURCES", ",".join(spec.trusted_sources)))
    if spec.untrusted_policy != DEFAULT_UNTRUSTED_POLICY:
        env.append(_env("SIP_WORKER_UNTRUSTED_POLICY", spec.untrusted_policy))
    if settings.redis_password_secret:
        ref = settings.redis_password_secret
        env.append(_secret_env("REDIS_PASSWORD", ref.name, ref.key))
    return env + _tls_env(spec, tls_keys)


def _tls_env(spec: SessionSpec, tls_keys: frozenset[str]) -> list[dict[str, Any]]:
    """Where the mounted TLS files are (their paths only), whether to verify, and SRTP."""
    if spec.transport != "tls":
        return []
    env = [
        _env(setting, f"{TLS_DIR}/{key}") for key, setting in TLS_KEYS.items() if key in tls_keys
    ]
    env.append(_env("SIP_WORKER_TLS_VERIFY", "true" if spec.tls_verify else "false"))
    env.append(_env("SIP_WORKER_SRTP", spec.srtp))
    return env


def _nat_env(spec: SessionSpec) -> list[dict[str, Any]]:
    """How the worker names its address in Contact and SDP: the spec's public address, else
    what its STUN servers see, else the pod's IP."""
    env = [_env("SIP_WORKER_KEEPALIVE_INTERVAL", str(spec.keepalive_interval))]
    if spec.stun_servers:
        env.append(_env("SIP_WORKER_STUN_SERVERS", ",".join(spec.stun_servers)))
    if spec.public_address:
        env.append(_env("SIP_WORKER_PUBLIC_ADDRESS", spec.public_address))
    elif not spec.stun_servers:
        pod_ip = {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}
        env.append({"name": "SIP_WORKER_PUBLIC_ADDRESS", "valueFrom": pod_ip})
    return env


def _ports(spec: SessionSpec, ports: WorkerPorts) -> list[dict[str, Any]]:
    declared = [
        {"name": "grpc", "containerPort": ports.grpc, "protocol": "TCP"},
        {"name": "sip", "containerPort": ports.sip, "protocol": _PORT_PROTOCOLS[spec.transport]},
    ]
    if ports.metrics:
        declared.append({"name": "metrics", "containerPort": ports.metrics, "protocol": "TCP"})
    if spec.host_network:
        # Declared on the node: the scheduler puts no two pods of one slot on one node.
        for port in declared:
            port["hostPort"] = port["containerPort"]
    return declared


_DEFAULT_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


def build_pod(
    session: SessionRef,
    spec: SessionSpec,
    settings: OperatorSettings,
    generation: int,
    slot: int | None = None,
    tls_keys: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The worker pod; `slot` is the port slot of a hostNetwork session (None otherwise),
    `tls_keys` the keys of TLS_KEYS that spec.tls's Secret holds (mounted, and named by flags)."""
    names = child_names(session.name)
    metadata = _metadata(session, names.pod)
    metadata["annotations"] = {
        ANNOTATION_SPEC_HASH: pod_fingerprint(spec, slot),
        ANNOTATION_GENERATION: str(generation),
    }
    if slot is not None:
        metadata["labels"][LABEL_SLOT] = str(slot)
    ports = settings.worker_ports(slot)
    grpc_probe = {"grpc": {"port": ports.grpc}}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or settings.worker_image,
        "imagePullPolicy": settings.worker_image_pull_policy,
        "command": ["sip-worker"],
        "args": ["--start-session"] if spec.start_session else [],
        "env": _worker_env(session, spec, settings, ports, tls_keys),
        "ports": _ports(spec, ports),
        "resources": spec.resources or _DEFAULT_RESOURCES,
        "startupProbe": {**grpc_probe, "periodSeconds": 2, "failureThreshold": 60},
        "readinessProbe": {**grpc_probe, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {
            **grpc_probe,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "api-token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "drain", "mountPath": DRAIN_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": settings.termination_grace_seconds(spec.drain_timeout),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": spec.host_network,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [
            {
                "name": "api-token",
                "secret": {
                    "secretName": names.token_secret,
                    "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}],
                    "defaultMode": 0o440,
                },
            },
            {
                "name": "drain",
                "downwardAPI": {
                    "items": [
                        {
                            "path": DRAIN_DEADLINE_PATH,
                            "fieldRef": {
                                "fieldPath": f"metadata.annotations['{ANNOTATION_DRAIN_DEADLINE}']"
                            },
                        }
                    ]
                },
            },
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    if spec.tls_secret is not None and tls_keys:
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        pod_spec["volumes"].append(
            {
                "name": "tls",
                "secret": {
                    "secretName": spec.tls_secret,
                    "items": [{"key": key, "path": key} for key in TLS_KEYS if key in tls_keys],
                    "defaultMode": 0o440,
                },
            }
        )
    if spec.host_network:
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if spec.node_selector:
        pod_spec["nodeSelector"] = spec.node_selector
    if spec.tolerations:
        pod_spec["tolerations"] = spec.tolerations
    if settings.worker_service_account:
        pod_spec["serviceAccountName"] = settings.worker_service_account
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
