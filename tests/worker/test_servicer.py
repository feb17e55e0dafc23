"""The servicer over a fake phone (the PhoneControl protocol), served in process: each RPC
calls its phone operation with the request's fields, and each PhoneError class becomes its
gRPC code with the phone's message."""

from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures

import grpc
import pytest
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
from sip_worker.servicer import PhoneControl, SipServicer
from tests.support.memory_history import MemoryHistory


class FakePhone:
    """Records every operation; raises `refusal` instead when one is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.refusal: PhoneError | None = None

    def _do(self, *call: object) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.calls.append(call)

    def register_account(self, account_name: str, password: str) -> None:
        self._do("register_account", account_name, password)

    def start_session(self, account_name: str, auto_answer_interval: int) -> None:
        self._do("start_session", account_name, auto_answer_interval)

    def end_session(self) -> None:
        self._do("end_session")

    def start_call(self, callee_id: str, headers: Mapping[str, str]) -> None:
        self._do("start_call", callee_id, dict(headers))

    def end_call(self, hard_hangup: bool) -> None:
        self._do("end_call", hard_hangup)

    def transfer_call(self, transfer_id: str, headers: Mapping[str, str]) -> None:
        self._do("transfer_call", transfer_id, dict(headers))

    def play_wav_files(self, wav_files: Sequence[bytes]) -> None:
        self._do("play_wav_files", list(wav_files))

    def mute(self) -> None:
        self._do("mute")

    def unmute(self) -> None:
        self._do("unmute")


def _as_protocol(phone: FakePhone) -> PhoneControl:
    return phone  # mypy checks that the fake keeps to the protocol


@pytest.fixture()
def served() -> Iterator[tuple[FakePhone, MemoryHistory, sip_pb2_grpc.SipStub]]:
    phone, history = FakePhone(), MemoryHistory()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    sip_pb2_grpc.add_SipServicer_to_server(SipServicer(_as_protocol(phone), history), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield phone, history, sip_pb2_grpc.SipStub(channel)
    channel.close()
    server.stop(None)


REQUESTS = [
    (
        "RegisterAccount",
        sip_pb2.RegisterAccountRequest(account_name="a@b", password="pw"),
        ("register_account", "a@b", "pw"),
    ),
    (
        "StartSession",
        sip_pb2.StartSessionRequest(account_name="a@b", auto_answer_interval=3),
        ("start_session", "a@b", 3),
    ),
    ("EndSession", Empty(), ("end_session",)),
    (
        "StartCall",
        sip_pb2.StartCallRequest(callee_id="bob", headers={"X-A": "1"}),
        ("start_call", "bob", {"X-A": "1"}),
    ),
    ("EndCall", sip_pb2.EndCallRequest(hard_hangup=True), ("end_call", True)),
    (
        "TransferCall",
        sip_pb2.TransferCallRequest(transfer_id="q7", headers={"X-B": "2"}),
        ("transfer_call", "q7", {"X-B": "2"}),
    ),
    (
        "PlayWavFiles",
        sip_pb2.PlayWavFilesRequest(wav_files=[b"one", b"two"]),
        ("play_wav_files", [b"one", b"two"]),
    ),
    ("Mute", Empty(), ("mute",)),
    ("UnMute", Empty(), ("unmute",)),
]


@pytest.mark.parametrize(("method", "request_message", "expected"), REQUESTS)
def test_each_rpc_is_its_phone_operation(
    served: tuple[FakePhone, MemoryHistory, sip_pb2_grpc.SipStub],
    method: str,
    request_message: object,
    expected: tuple[object, ...],
) -> None:
    phone, _, stub = served
    assert getattr(stub, method)(request_message, timeout=5) == Empty()
    assert phone.calls == [expected]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("bad target"), grpc.StatusCode.INVALID_ARGUMENT),
        (WrongState("there is no call"), grpc.StatusCode.FAILED_PRECONDITION),
        (AuthenticationFailed("refused: 403"), grpc.StatusCode.PERMISSION_DENIED),
        (Unreachable("registrar silent"), grpc.StatusCode.UNAVAILABLE),
        (TooLarge("too much audio"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (PhoneError("something else"), grpc.StatusCode.INTERNAL),
    ],
)
def test_phone_errors_become_their_codes_with_the_message(
    served: tuple[FakePhone, MemoryHistory, sip_pb2_grpc.SipStub],
    error: PhoneError,
    code: grpc.StatusCode,
) -> None:
    phone, _, stub = served
    phone.refusal = error
    for method, request_message, _ in REQUESTS:
        with pytest.raises(grpc.RpcError) as raised:
            getattr(stub, method)(request_message, timeout=5)
        assert raised.value.code() == code, method
        assert raised.value.details() == str(error), method
    assert phone.calls == []


def test_status_reads_come_from_the_history(
    served: tuple[FakePhone, MemoryHistory, sip_pb2_grpc.SipStub],
) -> None:
    _, history, stub = served
    empty = stub.GetSipStatus(Empty(), timeout=5)
    assert empty.status_type == sip_pb2.SipStatus.no_session
    assert empty.HasField("timestamp")
    assert list(stub.GetSipStatusHistory(Empty(), timeout=5).status_history) == []

    for kind in (sip_pb2.SipStatus.registered, sip_pb2.SipStatus.ready):
        history.append(sip_pb2.SipStatus(status_type=kind, account_name="a@b"))
    assert stub.GetSipStatus(Empty(), timeout=5) == history.entries()[-1]
    assert list(stub.GetSipStatusHistory(Empty(), timeout=5).status_history) == history.entries()
