"""What tests ask a running sip-worker from outside: health, reflection, metrics, SIP status."""

import time
import urllib.request

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

SIP_SERVICE = "ondewo.sip.Sip"
ServingStatus = health_pb2.HealthCheckResponse.ServingStatus


def health(channel: grpc.Channel, service: str = "") -> str:
    """The health status name of `service` ("" = the whole server), e.g. "SERVING"."""
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return ServingStatus.Name(reply.status)


def wait_health(channel: grpc.Channel, wanted: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        try:
            seen = health(channel)
        except grpc.RpcError as error:
            seen = str(error.code())
        if seen == wanted:
            return
        time.sleep(0.02)
    raise AssertionError(f"health stayed {seen}, wanted {wanted}")


def reflection_requests(
    channel: grpc.Channel, requests: list[reflection_pb2.ServerReflectionRequest]
) -> list[reflection_pb2.ServerReflectionResponse]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return list(stub.ServerReflectionInfo(iter(requests), timeout=10))


def served_services(channel: grpc.Channel) -> list[str]:
    """Service names the server lists through reflection (what `grpcurl list` shows)."""
    (reply,) = reflection_requests(
        channel, [reflection_pb2.ServerReflectionRequest(list_services="")]
    )
    return [service.name for service in reply.list_services_response.service]


def served_file(channel: grpc.Channel, symbol: str) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto that defines `symbol`, as reflection serves it."""
    (reply,) = reflection_requests(
        channel, [reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)]
    )
    assert reply.HasField("file_descriptor_response"), reply
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]
    package, _, _ = symbol.rpartition(".")
    return next(f for f in files if f.package == package)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on http://127.0.0.1:port/metrics as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))
