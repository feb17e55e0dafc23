"""The ondewo.sip.Sip gRPC service: each RPC is one phone operation or a history read.

A PhoneError becomes the gRPC status code of its class, with its message; the phone has
changed nothing when it refuses a request.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn, Protocol

import grpc
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2, sip_pb2_grpc
from sip_worker.errors import (
    AuthenticationFailed,
    InvalidArgument,
    PhoneError,
    TooLarge,
    Unreachable,
    WrongState,
)
from sip_worker.history import StatusHistory

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


def _abort(context: grpc.ServicerContext, error: PhoneError) -> NoReturn:
    context.abort(status_code(error), str(error))
    raise AssertionError("context.abort returned")


class PhoneControl(Protocol):
    """What the servicer asks of the phone (`sip_worker.phone.Phone`); each call blocks until
    the phone has done it, or raises PhoneError having changed nothing."""

    def register_account(self, account_name: str, password: str) -> None: ...
    def start_session(self, account_name: str, auto_answer_interval: int) -> None: ...
    def end_session(self) -> None: ...
    def start_call(self, callee_id: str, headers: Mapping[str, str]) -> None: ...
    def end_call(self, hard_hangup: bool) -> None: ...
    def transfer_call(self, transfer_id: str, headers: Mapping[str, str]) -> None: ...
    def play_wav_files(self, wav_files: Sequence[bytes]) -> None: ...
    def mute(self) -> None: ...
    def unmute(self) -> None: ...


class SipServicer(sip_pb2_grpc.SipServicer):
    def __init__(self, phone: PhoneControl, history: StatusHistory) -> None:
        self._phone = phone
        self._history = history

    def _run(self, context: grpc.ServicerContext, operation: Callable[[], None]) -> Empty:
        try:
            operation()
        except PhoneError as error:
            _abort(context, error)
        return Empty()

    def RegisterAccount(
        self, request: sip_pb2.RegisterAccountRequest, context: grpc.ServicerContext
    ) -> Empty:
        return self._run(
            context, lambda: self._phone.register_account(request.account_name, request.password)
        )

    def StartSession(
        self, request: sip_pb2.StartSessionRequest, context: grpc.ServicerContext
    ) -> Empty:
        return self._run(
            context,
            lambda: self._phone.start_session(request.account_name, request.auto_answer_interval),
        )

    def EndSession(self, request: Empty, context: grpc.ServicerContext) -> Empty:
        return self._run(context, self._phone.end_session)

    def StartCall(self, request: sip_pb2.StartCallRequest, context: grpc.ServicerContext) -> Empty:
        return self._run(
            context, lambda: self._phone.start_call(request.callee_id, dict(request.headers))
        )

    def EndCall(self, request: sip_pb2.EndCallRequest, context: grpc.ServicerContext) -> Empty:
        return self._run(context, lambda: self._phone.end_call(request.hard_hangup))

    def TransferCall(
        self, request: sip_pb2.TransferCallRequest, context: grpc.ServicerContext
    ) -> Empty:
        return self._run(
            context, lambda: self._phone.transfer_call(request.transfer_id, dict(request.headers))
        )

    def PlayWavFiles(
        self, request: sip_pb2.PlayWavFilesRequest, context: grpc.ServicerContext
    ) -> Empty:
        return self._run(context, lambda: self._phone.play_wav_files(list(request.wav_files)))

    def Mute(self, request: Empty, context: grpc.ServicerContext) -> Empty:
        return self._run(context, self._phone.mute)

    def UnMute(self, request: Empty, context: grpc.ServicerContext) -> Empty:
        return self._run(context, self._phone.unmute)

    def GetSipStatus(self, request: Empty, context: grpc.ServicerContext) -> sip_pb2.SipStatus:
        last = self._history.last()
        if last is not None:
            return last
        status = sip_pb2.SipStatus(status_type=sip_pb2.SipStatus.no_session)
        status.timestamp.GetCurrentTime()
        return status

    def GetSipStatusHistory(
        self, request: Empty, context: grpc.ServicerContext
    ) -> sip_pb2.SipStatusHistoryResponse:
        return sip_pb2.SipStatusHistoryResponse(status_history=self._history.entries())
