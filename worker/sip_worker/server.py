"""The gRPC server of one worker: the Sip service, health checking, reflection, auth, metrics."""

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ondewo.sip import sip_pb2, sip_pb2_grpc
from sip_worker.auth import BearerTokenInterceptor
from sip_worker.phone.audio_tap import MAX_STREAMS

SIP_SERVICE = sip_pb2.DESCRIPTOR.services_by_name["Sip"].full_name
# Enough for the concurrent clients a session has (a dialog manager, a monitor, probes); every
# Sip call that touches the phone waits on its one pj thread anyway. Each live-audio stream
# holds a thread for its whole life, so the streams a call takes come on top.
HANDLER_THREADS = 16 + MAX_STREAMS


class ServerError(Exception):
    """The gRPC server could not start (for example its port is taken)."""


class WorkerServer:
    """The started gRPC server; health is NOT_SERVING until `set_serving()`."""

    def __init__(
        self,
        servicer: sip_pb2_grpc.SipServicer,
        host: str,
        port: int,
        max_message_bytes: int,
        auth_token: str | None,
        *,
        measure_rpcs: bool = False,
    ) -> None:
        """`measure_rpcs` adds the RPC latency metrics (for a worker that serves metrics)."""
        interceptors: list[grpc.ServerInterceptor] = []
        if measure_rpcs:
            # Imported only when used: prometheus_client costs ~35 ms of start-up and ~3 MB.
            from sip_worker.metrics import RpcMetricsInterceptor

            interceptors.append(RpcMetricsInterceptor())
        if auth_token is not None:
            interceptors.append(BearerTokenInterceptor(auth_token))
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=HANDLER_THREADS, thread_name_prefix="grpc"),
            interceptors=interceptors,
            options=[
                # A larger request is refused by gRPC itself with RESOURCE_EXHAUSTED.
                ("grpc.max_receive_message_length", max_message_bytes),
                # Without this a second worker on the same port would bind silently and share it.
                ("grpc.so_reuseport", 0),
            ],
        )
        sip_pb2_grpc.add_SipServicer_to_server(servicer, self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SIP_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.set_not_serving()
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as error:
            raise ServerError(f"cannot listen for gRPC on {address}: {error}") from None
        if self.port == 0:
            raise ServerError(f"cannot listen for gRPC on {address}")
        self._server.start()

    def _set(self, status: "health_pb2.HealthCheckResponse.ServingStatus.ValueType") -> None:
        for service in ("", SIP_SERVICE):
            self._health.set(service, status)

    def set_serving(self) -> None:
        self._set(health_pb2.HealthCheckResponse.SERVING)

    def set_not_serving(self) -> None:
        self._set(health_pb2.HealthCheckResponse.NOT_SERVING)

    def enter_shutdown(self) -> None:
        """NOT_SERVING from now on, whatever else is set later."""
        self._health.enter_graceful_shutdown()

    def stop(self, grace: float) -> None:
        """Refuses new RPCs, lets running ones finish for up to `grace` seconds."""
        self._server.stop(grace).wait(grace + 1.0)
