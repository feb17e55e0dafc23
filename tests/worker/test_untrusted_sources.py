"""The inbound source policy against a scanner: SIPVicious from 127.0.0.2 (loopback, but not
the address of the worker's registrar on 127.0.0.1) learns no stack version, takes no call,
appends no status; the registrar's address and --trusted-source networks still get in."""

import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import grpc
import pytest

from ondewo.sip import sip_pb2
from tests.support import worker_probes
from tests.support.certificates import TestCa
from tests.support.sip_peers import SippFactory
from tests.support.sipp import Sipp, free_tcp_port
from tests.worker.conftest import WorkerFactory, WorkerProcess, start_session
from tests.worker.test_hostile_network import (
    VALID_SDP,
    RawPeer,
    assert_takes_a_call,
    end_incoming_call,
    final_response,
    flood_with_invites,
    header,
    status_code,
)
from tests.worker.test_incoming_call import call_worker
from tests.worker.test_tls import tls_worker

SCANNER = "127.0.0.2"  # loopback too (127.0.0.0/8), but no address the worker trusts
# A SIP stack's name or a version number, as PJSUA's default User-Agent ("PJSUA v2.15") has.
STACK_OR_VERSION = re.compile(r"pj|\d+\.\d+", re.IGNORECASE)


# Debian's sipvicious 0.3.3 drops --bindingip in svwar and svcrack: their socket binds to the
# wildcard address and sends from 127.0.0.1. The tool runs with every wildcard bind moved to
# the address given first.
_BOUND_TO = """
import os, runpy, socket, sys
wildcard_bind, host = socket.socket.bind, sys.argv[1]
def bind(self, address):
    if address[0] in ("", "0.0.0.0"):
        address = (host, *address[1:])
    return wildcard_bind(self, address)
socket.socket.bind = bind
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.realpath(sys.argv[0])))  # as running it would
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def sipvicious(tool: str, *args: str) -> str:
    """Runs a SIPVicious tool from SCANNER; its output (it exits 0 whatever it found)."""
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not on PATH (.ci/run installs the sipvicious package)")
    interpreter = Path(path).read_text().splitlines()[0].removeprefix("#!").strip()
    done = subprocess.run(
        [interpreter, "-c", _BOUND_TO, SCANNER, path, "--bindingip", SCANNER, "-x", SCANNER, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stdout + done.stderr


def untrusted_count(metrics_port: int, method: str) -> float | None:
    return worker_probes.sample(
        worker_probes.scrape(metrics_port),
        "sip_worker_untrusted_requests_total",
        method=method,
        reason="untrusted_source",
    )


@pytest.fixture()
def metrics_port() -> int:
    return free_tcp_port()


@pytest.fixture()
def guarded(
    worker_factory: WorkerFactory, registrar: Sipp, metrics_port: int
) -> Iterator[WorkerProcess]:
    """A worker with a session (auto-answer 1 s) at the registrar on 127.0.0.1, and metrics."""
    worker = worker_factory("--metrics-port", str(metrics_port))
    start_session(worker, registrar, auto_answer_interval=1)
    yield worker


def test_sipvicious_from_an_untrusted_address_learns_nothing_and_changes_nothing(
    guarded: WorkerProcess, metrics_port: int, sipp_factory: SippFactory
) -> None:
    before = guarded.history()
    target = f"udp://127.0.0.1:{guarded.sip_port}"
    assert untrusted_count(metrics_port, "INVITE") == 0

    found = sipvicious("svmap", "-p", str(guarded.sip_port), "127.0.0.1")
    enumerated = {
        method: sipvicious("svwar", "-m", method, "-e", "100-120", "--force", target)
        for method in ("INVITE", "REGISTER", "OPTIONS")
    }
    cracked = sipvicious("svcrack", "-u", "100", "-r", "1-20", "--maximumtime", "5", target)
    time.sleep(0.5)

    # svmap finds a SIP device (it answers OPTIONS) and prints its User-Agent: ours, no stack.
    device = next(line for line in found.splitlines() if f":{guarded.sip_port}" in line)
    assert "sip-worker" in device, found
    assert not STACK_OR_VERSION.search(device.split("|")[-2]), found
    for method, output in enumerated.items():
        # Every extension gets the same answer (INVITE: 403, which svwar calls "weird") or
        # none (REGISTER, OPTIONS): nothing tells a real one apart.
        rows = dict(re.findall(r"^\| (\S+)\s*\| (\S+)\s*\|$", output, re.M)[1:])
        assert len(set(rows.values())) <= 1, (method, output)
    assert "found nothing" in cracked, cracked
    assert guarded.alive(), guarded.log()
    assert guarded.history() == before, guarded.types()
    assert guarded.status().status_type == sip_pb2.SipStatus.StatusType.ready
    # Counted: the 403s; INVITEs that found every call slot held got PJSUA's own 486.
    assert (untrusted_count(metrics_port, "INVITE") or 0) >= 1

    # The registrar's address is still answered.
    after = len(guarded.history())
    caller = call_worker(sipp_factory, guarded, "uac_xhdr.xml")
    assert caller.wait(timeout=30) == 0, caller.output()
    guarded.wait_for_status("incoming_call_finished", after=after)
    assert guarded.types()[after:] == [
        "incoming_call_initiated",
        "incoming_call_connected",
        "incoming_call_finished",
    ]


def test_an_untrusted_invite_gets_403_at_the_refusal_delay_and_nothing_else(
    guarded: WorkerProcess, metrics_port: int
) -> None:
    before = guarded.history()
    with closing(RawPeer(guarded.sip_port, SCANNER)) as peer:
        call_id, branch = uuid.uuid4().hex, uuid.uuid4().hex
        peer.send(peer.request("INVITE", call_id=call_id, branch=branch, body=VALID_SDP.encode()))
        final = final_response(peer, call_id, "an untrusted source")
        end_incoming_call(peer, call_id, branch, final)
        later = peer.receive(0.5)

    assert status_code(final) == 403
    assert b"Content-Type" not in final  # no SDP: no media offered
    assert not [m for m in later if status_code(m) in (180, 183, 200)], later
    assert guarded.history() == before
    assert untrusted_count(metrics_port, "INVITE") == 1


def test_an_invite_flood_from_an_untrusted_address_appends_nothing(
    guarded: WorkerProcess, metrics_port: int, sipp_factory: SippFactory
) -> None:
    before = guarded.history()

    with closing(RawPeer(guarded.sip_port, SCANNER)) as peer:
        codes = flood_with_invites(guarded, peer, 300)

    # 486: PJSUA's own answer while the held refusals take all its call slots.
    assert set(codes) <= {403, 486} and 403 in codes, codes
    time.sleep(0.3)
    assert guarded.history() == before, guarded.types()
    assert untrusted_count(metrics_port, "INVITE") == codes.count(403)
    assert_takes_a_call(guarded, sipp_factory)


def test_a_trusted_source_network_lets_its_calls_in(
    worker_factory: WorkerFactory, registrar: Sipp
) -> None:
    worker = worker_factory("--trusted-source", f"{SCANNER}/32")
    start_session(worker, registrar, auto_answer_interval=1)
    after = len(worker.history())

    with closing(RawPeer(worker.sip_port, SCANNER)) as peer:
        call_id, branch = uuid.uuid4().hex, uuid.uuid4().hex
        peer.send(peer.request("INVITE", call_id=call_id, branch=branch, body=VALID_SDP.encode()))
        final = final_response(peer, call_id, "a trusted network", timeout=10)
        end_incoming_call(peer, call_id, branch, final)

    assert status_code(final) == 200
    worker.wait_for_status("incoming_call_finished", after=after)
    initiated = worker.history()[after]
    assert initiated.callee_id.startswith(f"sip:hostile@{SCANNER}:")


def test_an_untrusted_subscribe_gets_403_and_no_notify(
    guarded: WorkerProcess, metrics_port: int
) -> None:
    with closing(RawPeer(guarded.sip_port, SCANNER)) as peer:
        peer.send(peer.request("SUBSCRIBE", extra=(b"Event: presence",)))
        answers = peer.receive(1.0)

    assert [status_code(m) for m in answers] == [403], answers
    assert b" Forbidden" in answers[0]
    assert untrusted_count(metrics_port, "SUBSCRIBE") == 1


def test_the_user_agent_is_configurable_and_names_no_stack(
    worker_factory: WorkerFactory,
) -> None:
    default = worker_factory()
    custom = worker_factory("--user-agent", "Acme contact centre")
    agents = {}

    for name, worker in (("default", default), ("custom", custom)):
        with closing(RawPeer(worker.sip_port, SCANNER)) as peer:
            peer.send(peer.request("OPTIONS"))
            (answer,) = peer.receive(1.0)
        assert status_code(answer) == 200
        assert not re.search(rb"^Server:", answer, re.M | re.I), answer
        agents[name] = header(answer, b"User-Agent").decode()

    assert agents == {"default": "sip-worker", "custom": "Acme contact centre"}


def test_with_the_drop_policy_an_untrusted_source_hears_nothing_at_all(
    worker_factory: WorkerFactory, registrar: Sipp, metrics_port: int, sipp_factory: SippFactory
) -> None:
    worker = worker_factory("--untrusted-policy", "drop", "--metrics-port", str(metrics_port))
    start_session(worker, registrar, auto_answer_interval=1)  # the registrar's answers get in
    before = worker.history()

    with closing(RawPeer(worker.sip_port, SCANNER)) as peer:
        peer.send(peer.request("INVITE", body=VALID_SDP.encode()))
        peer.send(peer.request("OPTIONS"))
        peer.send(peer.request("SUBSCRIBE", extra=(b"Event: presence",)))
        answers = peer.receive(2.0)

    assert answers == []
    assert worker.history() == before
    # The kernel discards them before PJSIP reads them: nothing can count them.
    assert untrusted_count(metrics_port, "INVITE") == 0
    after = len(before)
    caller = call_worker(sipp_factory, worker, "uac_xhdr.xml")
    assert caller.wait(timeout=30) == 0, caller.output()
    worker.wait_for_status("incoming_call_finished", after=after)


def test_with_the_drop_policy_a_trusted_source_network_is_answered(
    worker_factory: WorkerFactory,
) -> None:
    dropping = worker_factory("--untrusted-policy", "drop")
    trusting = worker_factory("--untrusted-policy", "drop", "--trusted-source", f"{SCANNER}/32")
    answered = {}

    for name, worker in (("dropping", dropping), ("trusting", trusting)):
        with closing(RawPeer(worker.sip_port, SCANNER)) as peer:
            peer.send(peer.request("OPTIONS"))
            answered[name] = [status_code(m) for m in peer.receive(1.0)]

    assert answered == {"dropping": [], "trusting": [200]}


def test_with_the_drop_policy_a_call_to_an_untrusted_host_is_refused_at_once(
    worker_factory: WorkerFactory, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    dropping = worker_factory("--untrusted-policy", "drop")
    start_session(dropping, registrar, auto_answer_interval=1)
    far_end = sipp_factory("uas", host=SCANNER)
    before = dropping.history()

    with pytest.raises(grpc.RpcError) as refused:
        dropping.stub.StartCall(
            sip_pb2.StartCallRequest(callee_id=f"service@{far_end.address}"), timeout=10
        )

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{SCANNER} is not a trusted source" in str(refused.value.details())
    assert "--trusted-source" in str(refused.value.details())
    assert dropping.history() == before
    assert far_end.received("INVITE") == []


@pytest.mark.parametrize(
    "policy",
    [
        ("--untrusted-policy", "drop", "--trusted-source", f"{SCANNER}/32"),
        ("--untrusted-policy", "reject"),
    ],
    ids=["drop with the host's network trusted", "reject"],
)
def test_a_call_to_a_host_whose_answers_get_in_connects(
    worker_factory: WorkerFactory,
    registrar: Sipp,
    sipp_factory: SippFactory,
    policy: tuple[str, ...],
) -> None:
    worker = worker_factory(*policy)
    start_session(worker, registrar, auto_answer_interval=1)
    far_end = sipp_factory("uas", host=SCANNER)

    worker.stub.StartCall(
        sip_pb2.StartCallRequest(callee_id=f"service@{far_end.address}"), timeout=10
    )

    worker.wait_for_status("outgoing_call_connected")
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished")


def _connects(source: str, port: int) -> bool:
    """Whether a TCP connection from `source` to the worker's SIP port is set up within 1 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as connection:
        connection.bind((source, 0))
        connection.settimeout(1.0)
        try:
            connection.connect(("127.0.0.1", port))
        except TimeoutError:
            return False
        return True


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_with_the_drop_policy_an_untrusted_source_gets_no_connection_over_tcp_or_tls(
    worker_factory: WorkerFactory, ca: TestCa, transport: str
) -> None:
    """Over a stream transport the filter sits on the listening socket: the kernel discards an
    untrusted source's SYN, so not even the TCP handshake (nor TLS's) happens."""
    trusted = "127.0.0.3"
    policy = ("--untrusted-policy", "drop", "--trusted-source", f"{trusted}/32")
    if transport == "tls":
        worker = tls_worker(worker_factory, ca.certificate, *policy)
    else:
        worker = worker_factory("--sip-transport", "tcp", *policy)

    assert _connects(trusted, worker.sip_port)
    assert not _connects(SCANNER, worker.sip_port)
    assert worker.history() == []
