"""The wire contract: generated code is current, and the proto matches the API document."""

import subprocess
import sys
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ondewo.sip import sip_pb2
from tests.support import api_doc, audio_contract_doc

REPO = Path(__file__).resolve().parents[1]
GENERATED = ["sip_pb2.py", "sip_pb2.pyi", "sip_pb2_grpc.py", "sip_pb2_grpc.pyi"]
ADDED_SIPSTATUS_FIELDS = [
    ("description", 7),
    ("exception_name", 8),
    # Upstream's later numbers (docs/sip-call-audio.md).
    ("call_id", 12),
    ("call_audio_streams", 15),
    ("sip_response_code", 16),
]
ADDED_METHODS = {"SipStreamCallAudio", "SendDtmf"}

_SCALARS = {
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
}


def _doc_type(field: FieldDescriptor) -> str:
    if field.type in _SCALARS:
        return _SCALARS[field.type]
    target = field.message_type or field.enum_type
    return target.full_name.removeprefix("ondewo.sip.")


def _label(field: FieldDescriptor) -> str:
    return "repeated" if field.is_repeated else ""


def _message(name: str) -> Descriptor:
    outer, _, inner = name.partition(".")
    descriptor = sip_pb2.DESCRIPTOR.message_types_by_name[outer]
    return descriptor.nested_types_by_name[inner] if inner else descriptor


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "ondewo" / "sip" / name).read_text()
        checked_in = (REPO / "protos" / "ondewo" / "sip" / name).read_text()
        assert fresh == checked_in, f"{name} is stale: run `make proto`"


def test_messages_match_the_api_document() -> None:
    doc = api_doc.load()
    assert len(doc.messages) == 11
    for name, fields in doc.messages.items():
        descriptor = _message(name)
        documented = [(f, t, lbl, number) for number, (f, t, lbl) in enumerate(fields, start=1)]
        actual = [(f.name, _doc_type(f), _label(f), f.number) for f in descriptor.fields]
        if name == "SipStatus":
            extra = [(f.name, f.number) for f in descriptor.fields[len(documented) :]]
            assert extra == ADDED_SIPSTATUS_FIELDS
            actual = actual[: len(documented)]
        assert actual == documented, name


def test_enum_matches_the_api_document() -> None:
    doc = api_doc.load()
    enum = sip_pb2.SipStatus.DESCRIPTOR.enum_types_by_name["StatusType"]
    assert {v.name: v.number for v in enum.values} == doc.enums["SipStatus.StatusType"]


def test_service_matches_the_api_document() -> None:
    doc = api_doc.load()
    service = sip_pb2.DESCRIPTOR.services_by_name["Sip"]
    assert service.full_name == "ondewo.sip.Sip"
    actual = {
        m.name: (
            m.input_type.full_name.removeprefix("ondewo.sip."),
            m.output_type.full_name.removeprefix("ondewo.sip."),
        )
        for m in service.methods
    }
    assert {name: actual[name] for name in doc.methods} == doc.methods
    assert len(doc.methods) == 11
    assert set(actual) - set(doc.methods) == ADDED_METHODS


def test_live_audio_messages_match_their_contract() -> None:
    doc = audio_contract_doc.load()
    assert len(doc.messages) == 10
    for name, fields in doc.messages.items():
        descriptor = _message(name)
        actual = {
            f.name: audio_contract_doc.Field(
                _doc_type(f), f.number, f.containing_oneof.name if f.containing_oneof else None
            )
            for f in descriptor.fields
        }
        assert actual == fields, name
        assert [o.name for o in descriptor.oneofs] == sorted(
            {f.oneof for f in fields.values()} - {None}
        ), name


def test_live_audio_enums_and_methods_match_their_contract() -> None:
    doc = audio_contract_doc.load()
    assert set(doc.enums) == {"SipCallAudioMode", "SipCallAudioEndReason", "DtmfMethod"}
    for name, values in doc.enums.items():
        enum = sip_pb2.DESCRIPTOR.enum_types_by_name[name]
        assert {v.name: v.number for v in enum.values} == values, name
    service = sip_pb2.DESCRIPTOR.services_by_name["Sip"]
    for name, (request, response, client_streams, server_streams) in doc.methods.items():
        method = service.methods_by_name[name]
        assert method.input_type.full_name.removeprefix("ondewo.sip.") == request
        assert method.output_type.full_name.removeprefix("ondewo.sip.") == response
        assert (method.client_streaming, method.server_streaming) == (
            client_streams,
            server_streams,
        ), name
