"""The ondewo.sip.Sip gRPC service: each RPC is one phone operation or a history read.

A PhoneError becomes the gRPC status code of its class, with its message; the phone has
changed nothing when it refuses a request.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import grpc
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2, sip_pb2_grpc
from sip_worker.call_audio_rpc import CallAudioControl, stream_call_audio
from sip_worker.errors import InvalidArgument, PhoneError
from sip_worker.grpc_errors import abort
from sip_worker.history import StatusHistory


class PhoneControl(CallAudioControl, Protocol):
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
    def send_dtmf(self, digits: str, sip_info: bool, duration_ms: int) -> None: ...


class SipServicer(sip_pb2_grpc.SipServicer):
    def __init__(self, phone: PhoneControl, history: StatusHistory) -> None:
        self._phone = phone
        self._history = history

    def _run(self, context: grpc.ServicerContext, operation: Callable[[], None]) -> Empty:
        try:
            operation()
        except PhoneError as error:
            abort(context, error)
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

    def SendDtmf(self, request: sip_pb2.SendDtmfRequest, context: grpc.ServicerContext) -> Empty:
        if request.method not in sip_pb2.DtmfMethod.values():
            abort(context, InvalidArgument(f"method {request.method} is not RFC4733 or SIP_INFO"))
        sip_info = request.method == sip_pb2.DTMF_METHOD_SIP_INFO
        return self._run(
            context,
            lambda: self._phone.send_dtmf(request.digits, sip_info, request.duration_ms),
        )

    def SipStreamCallAudio(
        self, request_iterator: Iterator[sip_pb2.SipCallAudioRequest], context: grpc.ServicerContext
    ) -> Iterator[sip_pb2.SipCallAudioResponse]:
        return stream_call_audio(self._phone, request_iterator, context)
