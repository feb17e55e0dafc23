"""The operator's settings, read from SIP_OPERATOR_* environment variables (twelve-factor).

The Redis password is never a setting value the operator writes anywhere: the operator reads
its own from env REDIS_PASSWORD, and workers get theirs from the Secret named by
SIP_OPERATOR_REDIS_PASSWORD_SECRET through a secretKeyRef.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from sip_operator.port_slots import PortPlan, PortPlanError, WorkerPorts
from sip_worker.config import MIN_RTP_PORT_COUNT
from sip_worker.redis_connection import RedisUrlError, parse_redis_url

ENV_PREFIX = "SIP_OPERATOR_"
REDIS_PASSWORD_ENV = "REDIS_PASSWORD"


class SettingsError(Exception):
    """A setting is malformed; the message names the environment variable."""


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class OperatorSettings:
    redis_url: str = "redis://localhost:6379/0"
    # What workers get (the same server, seen from inside the cluster); default: redis_url.
    worker_redis_url: str = "redis://localhost:6379/0"
    # The operator's own Redis password (env REDIS_PASSWORD); kept out of repr and logs.
    redis_password: str | None = field(default=None, repr=False)
    # The Secret (in each session's namespace) that gives workers their REDIS_PASSWORD.
    redis_password_secret: SecretKeyRef | None = None
    worker_image: str = "sip-worker:latest"
    worker_image_pull_policy: str = "IfNotPresent"
    worker_service_account: str | None = None
    grpc_port: int = 50099
    sip_port: int = 5060
    metrics_port: int = 9464
    # Pod-network workers: RTP and RTCP within rtp_ports ports from rtp_port, the range the
    # chart's NetworkPolicy opens (unbounded, PJSUA would leave it after rtp_ports / 2 calls).
    rtp_port: int = 4000
    rtp_ports: int = 100
    # hostNetwork sessions: slot s gets SIP, gRPC and metrics port + s and RTP ports
    # slot_rtp_port + s * slot_rtp_ports on (see port_slots.py).
    slots_per_node: int = 50
    slot_rtp_port: int = 20000
    slot_rtp_ports: int = 100
    worker_shutdown_grace: float = 20.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    def termination_grace_seconds(self, drain_timeout: int) -> int:
        """Long enough for the worker to keep a call for `drain_timeout` seconds, then shut
        down softly within its grace, plus 10 s to exit."""
        return drain_timeout + math.ceil(self.worker_shutdown_grace) + 10

    @property
    def port_plan(self) -> PortPlan:
        return PortPlan(
            slots=self.slots_per_node,
            sip_base=self.sip_port,
            grpc_base=self.grpc_port,
            metrics_base=self.metrics_port,
            rtp_base=self.slot_rtp_port,
            rtp_per_slot=self.slot_rtp_ports,
        )

    def worker_ports(self, slot: int | None) -> WorkerPorts:
        """A hostNetwork worker's ports on its slot; a pod-network worker's (slot None)."""
        if slot is None:
            return WorkerPorts(
                sip=self.sip_port,
                grpc=self.grpc_port,
                metrics=self.metrics_port,
                rtp=self.rtp_port,
                rtp_count=self.rtp_ports,
            )
        return self.port_plan.ports(slot)

    def backoff(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1, 2, ...): exponential, capped."""
        if attempt <= 0:
            return 0.0
        return float(min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))


def _text(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(ENV_PREFIX + name, default).strip()
    if not value:
        raise SettingsError(f"{ENV_PREFIX}{name} must not be empty")
    return value


def _optional(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(ENV_PREFIX + name, "").strip() or None


def _number(
    environ: Mapping[str, str], name: str, default: float, low: float, high: float
) -> float:
    raw = environ.get(ENV_PREFIX + name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r}: must be a number") from None
    if not low <= value <= high:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r}: must be between {low:g} and {high:g}")
    return value


def _port(environ: Mapping[str, str], name: str, default: int, allow_zero: bool = False) -> int:
    value = _number(environ, name, default, 0 if allow_zero else 1, 65535)
    if value != int(value):
        raise SettingsError(f"{ENV_PREFIX}{name}={value!r}: must be an integer port")
    return int(value)


def _redis_url(environ: Mapping[str, str], name: str, default: str) -> str:
    """A URL the worker's parser accepts (a Redis Cluster with ?cluster=true), without password."""
    url = _text(environ, name, default)
    try:
        target = parse_redis_url(url, {})
    except RedisUrlError as error:  # the message shows the URL with any password redacted
        raise SettingsError(f"{ENV_PREFIX}{name}: {error}") from None
    if target.password:
        # A worker's URL would be copied into its pod spec: refuse it, without echoing it.
        raise SettingsError(
            f"{ENV_PREFIX}{name} must not contain a password: set {REDIS_PASSWORD_ENV} for "
            f"the operator and {ENV_PREFIX}REDIS_PASSWORD_SECRET for the workers"
        )
    return url


def _integer(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = _number(environ, name, default, low, high)
    if value != int(value):
        raise SettingsError(f"{ENV_PREFIX}{name}={value!r}: must be an integer")
    return int(value)


def _checked_slots(settings: OperatorSettings) -> OperatorSettings:
    if settings.slot_rtp_ports % 2:
        raise SettingsError(
            f"{ENV_PREFIX}SLOT_RTP_PORTS={settings.slot_rtp_ports}: must be even "
            "(RTP and RTCP come in pairs)"
        )
    try:
        settings.port_plan.check()
    except PortPlanError as error:
        raise SettingsError(
            f"{ENV_PREFIX}SLOTS_PER_NODE={settings.slots_per_node}: the slots' {error} (slot s "
            f"uses {ENV_PREFIX}SIP_PORT, _GRPC_PORT and _WORKER_METRICS_PORT + s, RTP from "
            f"{ENV_PREFIX}SLOT_RTP_PORT + s * _SLOT_RTP_PORTS); move a range or lower the slots "
            "per node"
        ) from None
    return settings


def load_settings(environ: Mapping[str, str]) -> OperatorSettings:
    """Reads every setting from `environ`; raises SettingsError naming the variable."""
    secret_name = _optional(environ, "REDIS_PASSWORD_SECRET")
    secret_key = _optional(environ, "REDIS_PASSWORD_SECRET_KEY") or "password"
    pull_policy = _text(environ, "WORKER_IMAGE_PULL_POLICY", "IfNotPresent")
    if pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise SettingsError(
            f"{ENV_PREFIX}WORKER_IMAGE_PULL_POLICY must be Always, IfNotPresent or Never"
        )
    backoff_base = _number(environ, "BACKOFF_BASE", 1.0, 0.01, 3600)
    redis_url = _redis_url(environ, "REDIS_URL", OperatorSettings.redis_url)
    settings = OperatorSettings(
        redis_url=redis_url,
        worker_redis_url=_redis_url(environ, "WORKER_REDIS_URL", redis_url),
        redis_password=environ.get(REDIS_PASSWORD_ENV) or None,
        redis_password_secret=SecretKeyRef(secret_name, secret_key) if secret_name else None,
        worker_image=_text(environ, "WORKER_IMAGE", OperatorSettings.worker_image),
        worker_image_pull_policy=pull_policy,
        worker_service_account=_optional(environ, "WORKER_SERVICE_ACCOUNT"),
        grpc_port=_port(environ, "GRPC_PORT", OperatorSettings.grpc_port),
        sip_port=_port(environ, "SIP_PORT", OperatorSettings.sip_port),
        metrics_port=_port(
            environ, "WORKER_METRICS_PORT", OperatorSettings.metrics_port, allow_zero=True
        ),
        rtp_port=_port(environ, "RTP_PORT", OperatorSettings.rtp_port),
        rtp_ports=_integer(
            environ, "RTP_PORTS", OperatorSettings.rtp_ports, MIN_RTP_PORT_COUNT, 65534
        ),
        slots_per_node=_integer(
            environ, "SLOTS_PER_NODE", OperatorSettings.slots_per_node, 1, 1000
        ),
        slot_rtp_port=_port(environ, "SLOT_RTP_PORT", OperatorSettings.slot_rtp_port),
        slot_rtp_ports=_integer(
            environ, "SLOT_RTP_PORTS", OperatorSettings.slot_rtp_ports, MIN_RTP_PORT_COUNT, 65534
        ),
        worker_shutdown_grace=_number(environ, "WORKER_SHUTDOWN_GRACE", 20.0, 1, 3600),
        backoff_base=backoff_base,
        backoff_max=_number(environ, "BACKOFF_MAX", 60.0, backoff_base, 86400),
    )
    return _checked_slots(settings)
