"""Bearer-token auth of the control API, against a real sip-worker with --auth-token-file."""

from pathlib import Path

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from ondewo.sip import sip_pb2
from tests.support import worker_probes
from tests.support.sipp import Sipp
from tests.support.worker_cli import run_sip_worker
from tests.worker.conftest import SIPP_PASSWORD, WorkerFactory, WorkerProcess, account_of

TOKEN = "tok-3f9a7c1e5b2d4a6f8e0c1b3d5f7a9c2e"


@pytest.fixture()
def guarded(worker_factory: WorkerFactory, tmp_path: Path) -> WorkerProcess:
    token_file = tmp_path / "api-token"
    # As a Kubernetes Secret file or `echo` writes it: with a trailing newline.
    token_file.write_text(TOKEN + "\n")
    return worker_factory("--auth-token-file", str(token_file))


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _every_sip_call(account: str) -> dict[str, tuple[str, Message]]:
    """One request for each of the eleven methods: method name -> (stub attribute, request)."""
    return {
        "RegisterAccount": (
            "RegisterAccount",
            sip_pb2.RegisterAccountRequest(account_name=account, password=SIPP_PASSWORD),
        ),
        "StartSession": (
            "StartSession",
            sip_pb2.StartSessionRequest(account_name=account, auto_answer_interval=1),
        ),
        "EndSession": ("EndSession", Empty()),
        "StartCall": ("StartCall", sip_pb2.StartCallRequest(callee_id="bob@127.0.0.1")),
        "EndCall": ("EndCall", sip_pb2.EndCallRequest(hard_hangup=True)),
        "TransferCall": ("TransferCall", sip_pb2.TransferCallRequest(transfer_id="carol")),
        "GetSipStatus": ("GetSipStatus", Empty()),
        "GetSipStatusHistory": ("GetSipStatusHistory", Empty()),
        "PlayWavFiles": ("PlayWavFiles", sip_pb2.PlayWavFilesRequest(wav_files=[b"RIFF"])),
        "Mute": ("Mute", Empty()),
        "UnMute": ("UnMute", Empty()),
    }


NO_TOKEN: tuple[tuple[str, str], ...] = ()
REFUSED_METADATA = {
    "no token": NO_TOKEN,
    "wrong token": _bearer("tok-0000000000000000000000000000000"),
    "token prefix": _bearer(TOKEN[:-1]),
    "token with extra": _bearer(TOKEN + "x"),
    "empty bearer": (("authorization", "Bearer "),),
    "other scheme": (("authorization", f"Basic {TOKEN}"),),
    "bare token": (("authorization", TOKEN),),
}


@pytest.mark.parametrize("metadata", REFUSED_METADATA.values(), ids=REFUSED_METADATA.keys())
def test_every_sip_rpc_without_the_right_token_is_unauthenticated_and_changes_nothing(
    guarded: WorkerProcess, registrar: Sipp, metadata: tuple[tuple[str, str], ...]
) -> None:
    account = account_of(registrar)
    for method, (attribute, request) in _every_sip_call(account).items():
        with pytest.raises(grpc.RpcError) as refused:
            getattr(guarded.stub, attribute)(request, metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
        assert TOKEN not in (refused.value.details() or "")

    # Nothing reached SIP and nothing was recorded.
    assert registrar.received("REGISTER") == []
    history = guarded.stub.GetSipStatusHistory(Empty(), metadata=_bearer(TOKEN), timeout=10)
    assert list(history.status_history) == []
    assert guarded.alive()
    assert TOKEN not in guarded.log()


def test_the_right_token_works(guarded: WorkerProcess, registrar: Sipp) -> None:
    account = account_of(registrar)
    token = _bearer(TOKEN)
    guarded.stub.RegisterAccount(
        sip_pb2.RegisterAccountRequest(account_name=account, password=SIPP_PASSWORD),
        metadata=token,
        timeout=20,
    )
    guarded.stub.StartSession(
        sip_pb2.StartSessionRequest(account_name=account, auto_answer_interval=1),
        metadata=token,
        timeout=10,
    )
    status = guarded.stub.GetSipStatus(Empty(), metadata=token, timeout=10)
    assert sip_pb2.SipStatus.StatusType.Name(status.status_type) == "ready"
    # The scheme name is case-insensitive (RFC 6750 via RFC 7235).
    lower = guarded.stub.GetSipStatus(
        Empty(), metadata=(("authorization", f"bearer {TOKEN}"),), timeout=10
    )
    assert lower == status
    assert TOKEN not in guarded.log()


def test_health_and_reflection_stay_open(guarded: WorkerProcess) -> None:
    assert worker_probes.health(guarded.channel) == "SERVING"
    assert worker_probes.health(guarded.channel, worker_probes.SIP_SERVICE) == "SERVING"
    assert worker_probes.SIP_SERVICE in worker_probes.served_services(guarded.channel)


def test_without_a_token_file_no_token_is_needed(worker: WorkerProcess) -> None:
    status = worker.stub.GetSipStatus(Empty(), timeout=10)
    assert sip_pb2.SipStatus.StatusType.Name(status.status_type) == "no_session"


@pytest.mark.parametrize(
    ("content", "problem"), [("", "the file is empty"), (None, "cannot read it")]
)
def test_an_unusable_token_file_stops_the_worker_before_serving(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    code, output = run_sip_worker(
        "--redis-url", "redis://127.0.0.1:1/0", "--auth-token-file", str(token_file)
    )
    assert code == 2
    assert f"--auth-token-file {token_file}: {problem}" in output
    assert "serving" not in output
