"""A PhoneError as a gRPC status: one code per error class, with the phone's message."""

from typing import NoReturn

import grpc

from sip_worker.errors import (
    AuthenticationFailed,
    InvalidArgument,
    PhoneError,
    TooLarge,
    Unreachable,
    WrongState,
)

STATUS_CODES: dict[type[PhoneError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    AuthenticationFailed: grpc.StatusCode.PERMISSION_DENIED,
    Unreachable: grpc.StatusCode.UNAVAILABLE,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_code(error: PhoneError) -> grpc.StatusCode:
    for error_class in type(error).__mro__:
        if error_class in STATUS_CODES:
            return STATUS_CODES[error_class]
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, error: PhoneError) -> NoReturn:
    """Ends the RPC with the error's code and message (raises, as context.abort does)."""
    context.abort(status_code(error), str(error))
    raise AssertionError("context.abort returned")
