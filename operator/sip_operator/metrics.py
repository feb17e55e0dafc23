"""The operator's Prometheus metrics, and what feeds them.

Sessions by phase are counted from the controller's own view at each scrape, so they can
never disagree with it; the controller feeds the others as things happen. Labels carry no
session names: the series stay few however many SipSessions there are. The process-wide default
registry is used (it also carries the standard process_* metrics).
"""

import collections
import datetime
import enum
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sip_operator.phase import PHASES


class ErrorKind(enum.StrEnum):
    """What went wrong in a reconcile pass (the `kind` label)."""

    KUBERNETES_API = "kubernetes_api"
    SPEC = "spec"
    SECRET = "secret"
    NAME_CONFLICT = "name_conflict"
    UNEXPECTED = "unexpected"


RECONCILE_DURATION = Histogram(
    "sip_operator_reconcile_duration_seconds",
    "Time of each reconcile pass of a SipSession (failed passes too)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS = Counter(
    "sip_operator_reconcile_errors",
    "Reconcile passes that ended in an error, by kind: kubernetes_api (an API request failed), "
    "spec (the spec is invalid), secret (the SIP or Redis password Secret, or its key, is "
    "missing), name_conflict (a Pod, Service or Secret of the session's name exists that the "
    "SipSession does not control), unexpected (any other exception). A session that stays "
    "failed counts again at each retry",
    ["kind"],
)
POD_RECREATIONS = Counter(
    "sip_operator_pod_recreations",
    "Worker pods created in place of a lost one: deleted by anyone but the operator, or ended "
    "(phase Failed or Succeeded: evicted, node lost). Not a session's first pod, not the "
    "replacement for a spec change, not an existing pod adopted",
)
STATUS_MIRROR_LAG = Histogram(
    "sip_operator_status_mirror_lag_seconds",
    "Time from a worker's SipStatus timestamp to the API server accepting the SipSession status "
    "patch that carries it as lastStatus",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

for _kind in ErrorKind:
    RECONCILE_ERRORS.labels(_kind.value)


class _SessionsByPhase(Collector):
    """`sip_operator_sessions{phase}`: one snapshot of the followed sessions per scrape."""

    def __init__(self) -> None:
        self.phases: Callable[[], Iterable[str | None]] = tuple

    def _family(self, counts: collections.Counter[str | None]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "sip_operator_sessions",
            "SipSessions this operator follows, by the phase it last derived for them "
            "(Terminating: deletion under way); 0 on a standby replica",
            labels=["phase"],
        )
        for name in PHASES:
            family.add_metric([name], counts[name])
        return family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [self._family(collections.Counter())]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return [self._family(collections.Counter(self.phases()))]


_SESSIONS = _SessionsByPhase()
REGISTRY.register(_SESSIONS)


def watch_sessions(phases: Callable[[], Iterable[str | None]]) -> None:
    """Counts `phases()` (called from the metrics server's thread) at every scrape."""
    _SESSIONS.phases = phases


def reconcile_failed(kind: ErrorKind) -> None:
    RECONCILE_ERRORS.labels(kind.value).inc()


def observe_mirror_lag(timestamp: str, accepted: float) -> None:
    """`timestamp`: the status's, ISO 8601; `accepted`: when its patch was accepted (epoch s)."""
    moment = datetime.datetime.fromisoformat(timestamp).timestamp()
    STATUS_MIRROR_LAG.observe(max(0.0, accepted - moment))  # clocks of two machines may skew


def serve_metrics(port: int) -> None:
    """Serves /metrics on every interface from a daemon thread, for the life of the process."""
    start_http_server(port)
