"""The worker behind a real kernel NAT: STUN, a fixed public address with port forwards, the
registrar's received/rport, and keep-alives that hold the NAT's binding open.

The namespaces are tests/support/nat_network.py's: the worker in the private one; sipp
(registrar and a far end), the STUN server (coturn) and a recording PJSUA2 far end in the
public one; between them the nat namespace masquerading. The test reaches the worker's gRPC,
and the worker its Redis, over a management veth from the root namespace that routes nowhere
else: SIP and RTP only ever go through the NAT.

Inbound calls come from the registrar's own address and port, as a registrar-proxy relays
them: the NAT (conntrack filters by address and port) lets in only what comes from where the
worker sent to. sipp cannot relay a call, so once the worker has registered the registrar
stops and the calling far end binds its address and port.

Two-way audio is a tone each way, checked by FFT on both sides: what the far end recorded,
and what the worker's TALK stream received from the caller.
"""

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ondewo.sip import sip_pb2
from tests.network.conftest import PeerFactory
from tests.support.audio import mulaw_tone, tone_seconds, tone_seconds_in, tone_wav
from tests.support.audio_stream import AudioStream, talk_config, tone_frames
from tests.support.nat_network import NAT_PUBLIC_ADDRESS, PRIVATE_ADDRESS, NatNetwork
from tests.support.recording_peer import RecordingPeer
from tests.support.sip_peers import SIPP_PASSWORD, SIPP_USER, SippFactory
from tests.support.sipp import Sipp
from tests.support.stun_server import StunServer
from tests.worker.conftest import WorkerProcess, start_session

pytestmark = pytest.mark.slow

WorkerStarter = Callable[..., WorkerProcess]
RATE = 16000
WORKER_TONE = 1000.0  # what the worker says
FAR_END_TONE = 600.0  # what the far end says
# With a fixed public address the NAT forwards these to the worker: its SIP port and the RTP
# ports of its first sixteen calls.
FORWARDED_SIP_PORT = 5060
FORWARDED_RTP_PORTS = (4000, 4031)


def _fixed_public_address(network: NatNetwork) -> list[str]:
    network.forward("udp", str(FORWARDED_SIP_PORT))
    network.forward("udp", ":".join(map(str, FORWARDED_RTP_PORTS)))
    return [
        "--public-address", NAT_PUBLIC_ADDRESS,
        "--sip-port", str(FORWARDED_SIP_PORT),
        "--rtp-port", str(FORWARDED_RTP_PORTS[0]),
    ]  # fmt: skip


def _worker_flags(mode: str, network: NatNetwork, stun: StunServer | None) -> list[str]:
    if mode == "stun":
        assert stun is not None
        return ["--stun-server", stun.address]
    if mode == "public-address":
        return _fixed_public_address(network)
    return []


def _registrar(
    public_sipp: SippFactory, scenario: str = "registrar_auth.xml", **variables: str
) -> Sipp:
    return public_sipp(scenario, variables={"user": SIPP_USER, "pass": SIPP_PASSWORD, **variables})


def _contacts(registrar: Sipp) -> list[str]:
    """The Contact URI of every REGISTER the registrar received, in order."""
    return [
        re.search(r"^Contact: <([^>]+)>", register, re.M)[1]  # type: ignore[index]
        for register in registrar.received("REGISTER")
    ]


def _hand_over(registrar: Sipp, public_peer: PeerFactory) -> RecordingPeer:
    """Stops the registrar; a far end takes its address and port, to call in from there."""
    registrar.stop()
    return public_peer(port=registrar.port)


def _exchange_tones(
    worker: WorkerProcess, peer: RecordingPeer, workdir: Path, name: str
) -> tuple[float, float]:
    """A tone each way for two seconds; (seconds of the worker's tone the far end recorded,
    seconds of the far end's tone the worker's TALK stream received)."""
    wav = workdir / "far-end-tone.wav"
    wav.write_bytes(tone_wav(FAR_END_TONE, 3.0, 8000))
    talk = AudioStream(worker.stub, talk_config(RATE))
    talk.wait_for("started")
    peer.play(wav, wait=False)
    talk.talk(tone_frames(WORKER_TONE, 2.5, RATE))
    recording = peer.record(workdir / f"{name}.wav", 2.0)
    talk.close()
    talk.ended()
    heard = talk.audio() / 32768.0
    return tone_seconds(recording, WORKER_TONE), tone_seconds_in(heard, RATE, FAR_END_TONE)


def _hang_up(worker: WorkerProcess, peer: RecordingPeer, finished: str) -> None:
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status(finished)
    peer.wait_for("DISCONNECTED")


@pytest.mark.parametrize("mode", ["stun", "public-address"])
def test_behind_nat_register_and_calls_both_ways_carry_the_public_address_with_two_way_audio(
    mode: str,
    nat_network: NatNetwork,
    private_worker: WorkerStarter,
    public_sipp: SippFactory,
    public_peer: PeerFactory,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    stun = request.getfixturevalue("stun_server") if mode == "stun" else None
    worker = private_worker(*_worker_flags(mode, nat_network, stun))
    registrar = _registrar(public_sipp)  # one that writes no received/rport: no help
    start_session(worker, registrar, auto_answer_interval=1)
    # The first REGISTER already has it: from STUN, or from the flag.
    public_contact = f"sip:{SIPP_USER}@{NAT_PUBLIC_ADDRESS}:{worker.sip_port};"
    assert all(contact.startswith(public_contact) for contact in _contacts(registrar))
    contact = _contacts(registrar)[-1]
    peer = _hand_over(registrar, public_peer)

    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=peer.uri), timeout=10)
    worker.wait_for_status("outgoing_call_connected")
    # MEDIA names where the worker's SDP said to send RTP: c= and m=.
    assert peer.wait_for("MEDIA").startswith(f"MEDIA {NAT_PUBLIC_ADDRESS}:")
    far_end_heard, worker_heard = _exchange_tones(worker, peer, tmp_path, "outgoing")
    assert far_end_heard >= 1.0 and worker_heard >= 1.0, (far_end_heard, worker_heard)
    _hang_up(worker, peer, "outgoing_call_finished")

    before = len(worker.history())
    peer.command(f"call {contact}")
    worker.wait_for_status("incoming_call_connected", after=before)
    assert peer.wait_for("MEDIA").startswith(f"MEDIA {NAT_PUBLIC_ADDRESS}:")
    far_end_heard, worker_heard = _exchange_tones(worker, peer, tmp_path, "incoming")
    assert far_end_heard >= 1.0 and worker_heard >= 1.0, (far_end_heard, worker_heard)
    _hang_up(worker, peer, "incoming_call_finished")


@pytest.mark.parametrize(
    ("mode", "sdp_address", "heard"),
    [
        ("stun", NAT_PUBLIC_ADDRESS, True),
        ("public-address", NAT_PUBLIC_ADDRESS, True),
        ("neither", PRIVATE_ADDRESS, False),
    ],
)
def test_a_far_end_that_sends_where_the_sdp_says_is_heard_only_with_stun_or_a_public_address(
    mode: str,
    sdp_address: str,
    heard: bool,
    nat_network: NatNetwork,
    private_worker: WorkerStarter,
    public_sipp: SippFactory,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Without either, the SDP offers the private address, the far end's RTP goes there and
    never arrives: the one-way audio the README warns about (the far end hears the worker,
    see the next test, the worker hears nothing)."""
    stun = request.getfixturevalue("stun_server") if mode == "stun" else None
    worker = private_worker(*_worker_flags(mode, nat_network, stun))
    start_session(worker, _registrar(public_sipp), auto_answer_interval=1)
    tone = tmp_path / "far-end-tone.ulaw"
    tone.write_bytes(mulaw_tone(FAR_END_TONE, 4.0))
    far_end = public_sipp("uas_tone.xml", fill={"TONE": str(tone)})

    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"far@{far_end.address}"), timeout=10)
    worker.wait_for_status("outgoing_call_connected")
    talk = AudioStream(worker.stub, talk_config(RATE))
    talk.wait_for("started")
    talk.wait_for("stats", count=3, timeout=10)  # three seconds of the call
    talk.close()
    talk.ended()

    assert f"c=IN IP4 {sdp_address}" in far_end.received("INVITE")[0]
    seconds = tone_seconds_in(talk.audio() / 32768.0, RATE, FAR_END_TONE)
    assert (seconds >= 1.5) if heard else (seconds == 0.0), seconds


def test_without_either_the_registrars_rport_fixes_the_contact_but_not_the_sdp(
    private_worker: WorkerStarter,
    public_sipp: SippFactory,
    public_peer: PeerFactory,
    tmp_path: Path,
) -> None:
    """Contact rewrite: the registrar says where it saw the REGISTER come from (received,
    rport), the worker registers again with that Contact, and calls arrive through the NAT.
    The SDP keeps the private address; this far end (PJSUA2) still has two-way audio only
    because it sends its RTP back to where the worker's comes from (symmetric RTP)."""
    worker = private_worker()
    # MASQUERADE keeps a source port that is free, as it is in a fresh namespace.
    registrar = _registrar(
        public_sipp, "registrar_rport.xml", received=NAT_PUBLIC_ADDRESS, rport=str(worker.sip_port)
    )
    start_session(worker, registrar, auto_answer_interval=1)
    registrar.wait_for(rf"^Contact: <sip:{SIPP_USER}@{NAT_PUBLIC_ADDRESS}:{worker.sip_port};")
    first, *_, rewritten = _contacts(registrar)
    assert first.startswith(f"sip:{SIPP_USER}@{PRIVATE_ADDRESS}:")
    assert rewritten.startswith(f"sip:{SIPP_USER}@{NAT_PUBLIC_ADDRESS}:{worker.sip_port};")
    peer = _hand_over(registrar, public_peer)

    before = len(worker.history())
    peer.command(f"call {rewritten}")
    worker.wait_for_status("incoming_call_connected", after=before)
    assert peer.wait_for("MEDIA").startswith(f"MEDIA {PRIVATE_ADDRESS}:")
    far_end_heard, worker_heard = _exchange_tones(worker, peer, tmp_path, "incoming")
    assert far_end_heard >= 1.0 and worker_heard >= 1.0, (far_end_heard, worker_heard)
    _hang_up(worker, peer, "incoming_call_finished")


NAT_UDP_TIMEOUT_S = 4


@pytest.mark.parametrize(("keepalive_interval", "arrives"), [(2, True), (0, False)])
def test_keepalives_hold_the_nat_binding_for_inbound_calls(
    keepalive_interval: int,
    arrives: bool,
    nat_network: NatNetwork,
    private_worker: WorkerStarter,
    public_sipp: SippFactory,
    public_peer: PeerFactory,
    stun_server: StunServer,
) -> None:
    """The NAT forgets an idle UDP binding after NAT_UDP_TIMEOUT_S: twice that after the
    REGISTER, a call from the registrar arrives only while keep-alives refresh the binding."""
    root_timeouts = nat_network.udp_timeouts(None)
    nat_network.set_udp_timeouts(NAT_UDP_TIMEOUT_S)
    assert nat_network.udp_timeouts(nat_network.nat) == [NAT_UDP_TIMEOUT_S] * 2
    assert nat_network.udp_timeouts(None) == root_timeouts  # per namespace: the host's are kept
    worker = private_worker(
        "--stun-server", stun_server.address, "--keepalive-interval", str(keepalive_interval)
    )
    registrar = _registrar(public_sipp)
    start_session(worker, registrar, auto_answer_interval=1)
    contact = _contacts(registrar)[-1]
    peer = _hand_over(registrar, public_peer)

    time.sleep(2 * NAT_UDP_TIMEOUT_S)
    before = len(worker.history())
    peer.command(f"call {contact}")
    if arrives:
        worker.wait_for_status("incoming_call_connected", after=before)
        _hang_up(worker, peer, "incoming_call_finished")
    else:
        # PJSUA resends the INVITE after 0.5, 1 and 2 s: none of them gets through.
        time.sleep(4.0)
        assert worker.types()[before:] == []
