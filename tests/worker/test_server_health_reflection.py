"""gRPC health checking and server reflection of a real sip-worker."""

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from ondewo.sip import sip_pb2
from tests.support import api_doc, audio_contract_doc, worker_probes
from tests.support.sipp import Sipp, free_udp_port
from tests.test_proto import ADDED_METHODS, ADDED_SIPSTATUS_FIELDS
from tests.worker.conftest import SIPP_PASSWORD, WorkerFactory, WorkerProcess, account_of

FieldProto = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    FieldProto.TYPE_BOOL: "bool",
    FieldProto.TYPE_BYTES: "bytes",
    FieldProto.TYPE_STRING: "string",
    FieldProto.TYPE_INT32: "int32",
}


def test_health_is_serving_for_the_server_and_the_sip_service(worker: WorkerProcess) -> None:
    worker_probes.wait_health(worker.channel, "SERVING")
    assert worker_probes.health(worker.channel, worker_probes.SIP_SERVICE) == "SERVING"
    with pytest.raises(grpc.RpcError) as unknown:
        worker_probes.health(worker.channel, "no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_start_session_at_boot_turns_serving_once_registered(
    worker_factory: WorkerFactory, registrar: Sipp
) -> None:
    worker = worker_factory(
        "--start-session",
        "--account",
        account_of(registrar),
        "--auto-answer-interval",
        "2",
        env={"SIP_WORKER_PASSWORD": SIPP_PASSWORD},
    )
    worker_probes.wait_health(worker.channel, "SERVING")
    status = worker.status()
    assert sip_pb2.SipStatus.StatusType.Name(status.status_type) == "ready"
    assert worker.types() == ["registered", "ready"]
    assert len(registrar.received("REGISTER")) == 2


@pytest.mark.slow
def test_not_serving_while_the_boot_registration_is_unanswered_and_no_exit(
    worker_factory: WorkerFactory,
) -> None:
    silent_registrar = f"alice@127.0.0.1:{free_udp_port()}"
    worker = worker_factory(
        "--start-session",
        "--account",
        silent_registrar,
        env={"SIP_WORKER_PASSWORD": SIPP_PASSWORD},
    )
    assert worker_probes.health(worker.channel) == "NOT_SERVING"
    assert worker_probes.health(worker.channel, worker_probes.SIP_SERVICE) == "NOT_SERVING"
    # The registrar never answers: the worker says why and keeps trying, up and NOT_SERVING.
    failed = worker.wait_for_status("session_registration_failed", timeout=20)
    assert failed.description == "no answer to the REGISTER within 10 s"
    assert worker.alive()
    assert worker_probes.health(worker.channel) == "NOT_SERVING"
    assert f"could not register {silent_registrar}" in worker.log()
    assert SIPP_PASSWORD not in worker.log()


def test_reflection_lists_the_sip_service_and_health(worker: WorkerProcess) -> None:
    services = worker_probes.served_services(worker.channel)
    assert worker_probes.SIP_SERVICE in services
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services


def _doc_type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type in _SCALARS:
        return _SCALARS[field.type]
    return field.type_name.removeprefix(".ondewo.sip.").removeprefix(".")


def _label(field: descriptor_pb2.FieldDescriptorProto) -> str:
    return "repeated" if field.label == FieldProto.LABEL_REPEATED else ""


def _messages(served: descriptor_pb2.FileDescriptorProto) -> dict[str, list[FieldProto]]:
    messages: dict[str, list[FieldProto]] = {}
    for message in served.message_type:
        messages[message.name] = list(message.field)
        for nested in message.nested_type:
            messages[f"{message.name}.{nested.name}"] = list(nested.field)
    return messages


def test_the_served_descriptor_matches_the_api_document(worker: WorkerProcess) -> None:
    doc = api_doc.load()
    served = worker_probes.served_file(worker.channel, worker_probes.SIP_SERVICE)
    assert served.package == "ondewo.sip"

    (service,) = [s for s in served.service if s.name == "Sip"]
    methods = {
        m.name: (
            m.input_type.removeprefix(".ondewo.sip.").removeprefix("."),
            m.output_type.removeprefix(".ondewo.sip.").removeprefix("."),
        )
        for m in service.method
    }
    assert {name: methods[name] for name in doc.methods} == doc.methods
    assert set(methods) - set(doc.methods) == ADDED_METHODS

    messages = _messages(served)
    assert set(messages) == set(doc.messages) | set(audio_contract_doc.load().messages)
    for name, documented_fields in doc.messages.items():
        documented = [
            (f, t, label, number) for number, (f, t, label) in enumerate(documented_fields, 1)
        ]
        actual = [(f.name, _doc_type(f), _label(f), f.number) for f in messages[name]]
        if name == "SipStatus":
            assert [(f[0], f[3]) for f in actual[len(documented) :]] == ADDED_SIPSTATUS_FIELDS
            actual = actual[: len(documented)]
        assert actual == documented, name

    (status,) = [m for m in served.message_type if m.name == "SipStatus"]
    (status_type,) = status.enum_type
    assert {v.name: v.number for v in status_type.value} == doc.enums["SipStatus.StatusType"]


def test_a_descriptor_database_over_reflection_resolves_every_method(
    worker: WorkerProcess,
) -> None:
    """What generic clients (grpcurl, Postman) do: build the schema from reflection alone."""
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(worker.channel))
    service = pool.FindServiceByName(worker_probes.SIP_SERVICE)
    assert {m.name for m in service.methods} == set(api_doc.load().methods) | ADDED_METHODS
    start_call = service.methods_by_name["StartCall"]
    assert [f.name for f in start_call.input_type.fields] == ["callee_id", "headers"]
    # The served schema decodes what the server answers.
    raw = worker.channel.unary_unary("/ondewo.sip.Sip/GetSipStatus")(
        Empty().SerializeToString(), timeout=10
    )
    status_class = GetMessageClass(pool.FindMessageTypeByName("ondewo.sip.SipStatus"))
    assert status_class.FromString(raw).status_type == sip_pb2.SipStatus.no_session
