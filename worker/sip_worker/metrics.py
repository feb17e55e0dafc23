"""The worker's Prometheus metrics, and what feeds them.

Call and registration metrics are derived from the statuses themselves: `MetricsHistory` wraps
the session's `StatusHistory` and observes every status appended, so the phone needs no metrics
calls and the metrics can never disagree with the history. Requests refused for their source
leave no status, so the phone counts those itself (`count_untrusted_request`). RPC latency
comes from a server interceptor. One worker process is one session, so the process-wide
default registry is used (it also carries the standard process_* metrics: memory, CPU, open
fds).
"""

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import MEANINGS, CallStep, Direction, SessionState
from sip_worker.history import StatusHistory

CALLS = Counter(
    "sip_worker_calls",
    "Calls that reached an outcome, by direction (incoming|outgoing) and outcome "
    "(connected|failed)",
    ["direction", "outcome"],
)
CALL_DURATION = Histogram(
    "sip_worker_call_duration_seconds",
    "Time from connected to finished of each call, by direction",
    ["direction"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
CALL_ACTIVE = Gauge("sip_worker_call_active", "1 while a call is set up or connected, else 0")
REGISTERED = Gauge(
    "sip_worker_registered", "1 while the SIP account is registered (or its session runs), else 0"
)
RPC_DURATION = Histogram(
    "sip_worker_rpc_duration_seconds",
    "Time to answer each unary gRPC request, by service, method and status code",
    ["service", "method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UNTRUSTED_REQUESTS = Counter(
    "sip_worker_untrusted_requests",
    "Requests refused without a trace in the history because of where they came from, by "
    "method and reason (untrusted_source: not the account's registrar or host, not the "
    "outbound proxy, not a --trusted-source)",
    ["method", "reason"],
)
UNTRUSTED_METHODS = ("INVITE", "SUBSCRIBE")
UNTRUSTED_REASONS = ("untrusted_source",)
HISTORY_BUFFER_DEPTH = Gauge(
    "sip_worker_history_buffer_depth",
    "Statuses held in memory because the history store (Redis) is unreachable",
)
HISTORY_WRITE = Histogram(
    "sip_worker_history_write_seconds",
    "Time from appending each status to the history until Redis acknowledged it "
    "(outages included)",
    buckets=(
        0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
        30, 60, 300,
    ),
)  # fmt: skip

for _direction in Direction:
    for _outcome in ("connected", "failed"):
        CALLS.labels(_direction.value, _outcome)
    CALL_DURATION.labels(_direction.value)
for _method in UNTRUSTED_METHODS:
    for _reason in UNTRUSTED_REASONS:
        UNTRUSTED_REQUESTS.labels(_method, _reason)


def count_untrusted_request(method: str, reason: str) -> None:
    """Counts one request refused for its source (the phone's owner thread calls it)."""
    UNTRUSTED_REQUESTS.labels(method, reason).inc()


def watch_history_buffer(depth: Callable[[], int]) -> None:
    """Reads the history store's buffer depth whenever the metrics are scraped."""
    HISTORY_BUFFER_DEPTH.set_function(depth)


def observe_history_writes(lags: list[float]) -> None:
    """Records the write lag (seconds) of each status the history store has written."""
    for lag in lags:
        HISTORY_WRITE.observe(lag)


def serve_metrics(host: str, port: int) -> Callable[[], None]:
    """Serves /metrics on host:port from a daemon thread; returns the function that stops it."""
    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


class MetricsHistory:
    """A `StatusHistory` that feeds the call and registration metrics from what is appended."""

    def __init__(self, inner: StatusHistory) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._connected_at: float | None = None
        # A restarted process has no registration and no call, whatever the history says.
        REGISTERED.set(0)
        CALL_ACTIVE.set(0)

    def append(self, status: SipStatus, *, expect_follow_up: bool = False) -> None:
        self._inner.append(status, expect_follow_up=expect_follow_up)
        with self._lock:
            self._observe(status)

    def _observe(self, status: SipStatus) -> None:
        meaning = MEANINGS.get(status.status_type)
        if meaning is None:
            return  # a type this version does not know says nothing it could count
        when = status.timestamp.ToNanoseconds() / 1e9 if status.HasField("timestamp") else None
        step, direction = meaning.call, meaning.direction
        if step is None:
            REGISTERED.set(0 if meaning.session is SessionState.NONE else 1)
        elif step is CallStep.INITIATED:
            CALL_ACTIVE.set(1)
            self._connected_at = None
        elif direction is None:
            return  # transfer and hangup steps: the call goes on until it fails or finishes
        elif step is CallStep.CONNECTED:
            CALLS.labels(direction.value, "connected").inc()
            self._connected_at = when
        elif step is CallStep.FAILED:
            CALLS.labels(direction.value, "failed").inc()
            CALL_ACTIVE.set(0)
            self._connected_at = None
        elif step is CallStep.FINISHED:
            if self._connected_at is not None and when is not None:
                duration = max(0.0, when - self._connected_at)
                CALL_DURATION.labels(direction.value).observe(duration)
            CALL_ACTIVE.set(0)
            self._connected_at = None

    def last(self) -> SipStatus | None:
        return self._inner.last()

    def entries(self) -> list[SipStatus]:
        return self._inner.entries()

    def close(self) -> None:
        self._inner.close()


def _measured(
    behavior: Callable[[Any, grpc.ServicerContext], Any], service: str, method: str
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def measure(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        failed = True
        try:
            response = behavior(request, context)
            failed = False
            return response
        finally:
            code = context.code() or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            RPC_DURATION.labels(service, method, name).observe(time.perf_counter() - started)

    return measure


class RpcMetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Times every unary-unary RPC the server knows (streams such as health Watch are left out:
    their length is the client's choice, not a latency)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        return grpc.unary_unary_rpc_method_handler(
            _measured(handler.unary_unary, service, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
