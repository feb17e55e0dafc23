"""Bearer-token auth for the control API: an open SIP control API is a toll-fraud hole.

Every RPC must carry `authorization: Bearer <token>` (the upstream clients' convention), except
gRPC health checking (probes carry no token) and server reflection (it reveals the schema only).
Deny by default: a method path not in the open list needs the token, whatever service it names.
"""

import hmac
from collections.abc import Callable
from typing import Any

import grpc

OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_SCHEME = "bearer "


def _refuse(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


def _refusing_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    # The refusal must be of the same streaming kind as the method it stands in for; it never
    # reads the request, so the raw bytes are left undeserialized.
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_refuse)
    return grpc.unary_unary_rpc_method_handler(_refuse)


class BearerTokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token.encode("utf-8")

    def _authorized(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> bool:
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode("latin-1") if isinstance(value, bytes) else value
                if text[: len(_SCHEME)].lower() == _SCHEME:
                    presented = text[len(_SCHEME) :].strip().encode("utf-8")
                break
        # Constant time, so the token cannot be guessed byte by byte from response times.
        return hmac.compare_digest(presented, self._token)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICES):
            return handler
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        return _refusing_handler(handler)
