"""Real peers nobody here wrote: Kamailio as the PBX (registrar with digest auth, a proxy that
challenges its users' INVITEs with 407 and stays in the dialogs) and baresip as the phones
registered behind it, driven through its control interface."""

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ondewo.sip import sip_pb2
from tests.support.audio import mulaw_tone, tone_seconds, tone_seconds_in, tone_wav
from tests.support.audio_stream import AudioStream, config
from tests.support.baresip import Baresip
from tests.support.kamailio import PROXY_CONFIG, Kamailio
from tests.support.sip_peers import SIPP_PASSWORD, SippFactory
from tests.worker.conftest import WorkerProcess

PHONES = {"bob": "bob-pw-1", "carol": "carol-pw-2"}
WORKER_TONE = 1000.0
FAR_END_TONE = 600.0
RATE = 16000

BaresipFactory = Callable[..., Baresip]


@pytest.fixture()
def pbx(tmp_path: Path) -> Iterator[Kamailio]:
    """Kamailio with alice (the worker) and the phones as users; started by the test."""
    kamailio = Kamailio(tmp_path / "kamailio", config=PROXY_CONFIG, users=PHONES)
    try:
        yield kamailio
    finally:
        kamailio.stop()


@pytest.fixture()
def phones(tmp_path: Path, pbx: Kamailio) -> Iterator[BaresipFactory]:
    """Starts baresip phones registered at the PBX; stops them in teardown."""
    started: list[Baresip] = []

    def factory(user: str, **kwargs: object) -> Baresip:
        phone = Baresip(tmp_path / "phones", user, PHONES[user], pbx.address, **kwargs)  # type: ignore[arg-type]
        started.append(phone)
        return phone.start()

    yield factory
    for phone in started:
        phone.stop()


def start_session(worker: WorkerProcess, pbx: Kamailio, auto_answer_interval: int = 1) -> None:
    worker.stub.RegisterAccount(
        sip_pb2.RegisterAccountRequest(account_name=pbx.account, password=SIPP_PASSWORD),
        timeout=30,
    )
    worker.stub.StartSession(
        sip_pb2.StartSessionRequest(
            account_name=pbx.account, auto_answer_interval=auto_answer_interval
        ),
        timeout=10,
    )


def listen_then_play(worker: WorkerProcess, tone_hz: float) -> AudioStream:
    """In the connected call: two seconds of what the worker hears (a LISTEN stream, ended),
    then a 2 s tone at `tone_hz` played into the call. LISTEN hears the far end mixed with
    what the worker plays: it listens first."""
    listen = AudioStream(worker.stub, config(sample_rate_hz=RATE))
    listen.wait_for("stats", count=2)
    listen.close()
    listen.ended()
    worker.stub.PlayWavFiles(
        sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(tone_hz, 2.0)]), timeout=10
    )
    return listen


def test_an_outbound_call_is_challenged_by_the_pbx_and_carries_audio_both_ways(
    worker: WorkerProcess, pbx: Kamailio, phones: BaresipFactory
) -> None:
    pbx.start()
    bob = phones("bob", tone_hz=600.0)
    start_session(worker, pbx)

    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id="bob"), timeout=10)
    connected = worker.wait_for_status("outgoing_call_connected", timeout=15)
    bob.wait_for_event("CALL_ESTABLISHED")
    listen = listen_then_play(worker, WORKER_TONE)
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=False), timeout=10)
    finished = worker.wait_for_status("outgoing_call_finished", timeout=15)
    bob.wait_for_event("CALL_CLOSED")

    assert connected.callee_id == "bob"
    assert finished.description == "200 OK"
    # Kamailio asked for the credentials of alice and got them: one 407, then the relay.
    pbx.wait_for_log("INVITE from alice challenged")
    pbx.wait_for_log("INVITE from alice authenticated")
    pbx.wait_for_log("INVITE from alice to bob relayed")
    # What bob sent, the worker heard; what the worker played, bob heard.
    assert tone_seconds_in(listen.audio() / 32768.0, RATE, 600.0) >= 1.5
    assert tone_seconds(bob.heard(), WORKER_TONE) >= 1.5


def test_an_inbound_call_from_a_phone_behind_the_pbx_is_answered(
    worker: WorkerProcess, pbx: Kamailio, phones: BaresipFactory
) -> None:
    pbx.start()
    bob = phones("bob", tone_hz=600.0)
    start_session(worker, pbx, auto_answer_interval=1)

    bob.dial(pbx.uri(pbx.user))
    initiated = worker.wait_for_status("incoming_call_initiated", timeout=15)
    connected = worker.wait_for_status("incoming_call_connected", timeout=15)
    bob.wait_for_event("CALL_ESTABLISHED")
    listen = AudioStream(worker.stub, config(sample_rate_hz=RATE))
    listen.wait_for("stats", count=2)
    bob.hangup()
    finished = worker.wait_for_status("incoming_call_finished", timeout=15)
    listen.ended()

    # The caller is bob as the PBX has him (it relays his From), his call challenged first.
    assert initiated.callee_id == bob.aor
    assert connected.call_id == initiated.call_id == finished.call_id
    pbx.wait_for_log("INVITE from bob challenged")
    pbx.wait_for_log("INVITE from bob to alice relayed")
    assert tone_seconds_in(listen.audio() / 32768.0, RATE, 600.0) >= 1.0


def test_x_headers_of_an_inbound_call_cross_the_pbx(
    worker: WorkerProcess, pbx: Kamailio, sipp_factory: SippFactory
) -> None:
    """baresip 1.0.0 cannot put headers on its INVITE (no command sets any): sipp calls,
    through Kamailio, as a carrier's trunk would."""
    pbx.start()
    start_session(worker, pbx, auto_answer_interval=1)

    caller = sipp_factory(
        "uac_xhdr.xml", remote=pbx.address, args=["-m", "1", "-d", "500", "-s", pbx.user]
    )
    initiated = worker.wait_for_status("incoming_call_initiated", timeout=15)
    worker.wait_for_status("incoming_call_finished", timeout=15)

    assert caller.wait(timeout=30) == 0, caller.output()
    assert initiated.callee_id == f"sip:sipp@127.0.0.1:{caller.port}"
    assert dict(initiated.headers) == {"X-Custom-Caller": "sipp-uac-1", "X-Session-Id": "sess-42"}
    assert worker.types()[-3:] == [
        "incoming_call_initiated",
        "incoming_call_connected",
        "incoming_call_finished",
    ]
    pbx.wait_for_log("INVITE from sipp to alice relayed")


def test_early_media_then_200_connects_only_on_the_200(
    worker: WorkerProcess, pbx: Kamailio, sipp_factory: SippFactory, tmp_path: Path
) -> None:
    tone = tmp_path / "announcement.ulaw"
    tone.write_bytes(mulaw_tone(FAR_END_TONE, 6.0))
    ivr = sipp_factory("uas_early_media.xml", fill={"TONE": str(tone)}, args=["-m", "1"])
    pbx.routes["ivr"] = ivr.address
    pbx.start()
    start_session(worker, pbx)

    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id="ivr"), timeout=10)
    ivr.wait_for(r"SIP/2.0 183 Session Progress")
    # Early media is not an answer: the call is still being set up, for the 3 s until the 200.
    assert worker.types()[-1] == "outgoing_call_initiated"
    connected = worker.wait_for_status("outgoing_call_connected", timeout=10)
    listen = AudioStream(worker.stub, config(sample_rate_hz=RATE))
    listen.wait_for("stats", count=2)
    listen.close()
    listen.ended()
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished", timeout=10)

    assert ivr.wait(timeout=20) == 0, ivr.output()
    assert connected.callee_id == "ivr"
    sent = [line for _, way, line in ivr.timeline() if way == "sent"]
    assert sent[:2] == ["SIP/2.0 183 Session Progress", "SIP/2.0 200 OK"]
    # The stream that began as early media goes on once answered: the worker hears it.
    assert tone_seconds_in(listen.audio() / 32768.0, RATE, FAR_END_TONE) >= 1.0
    assert worker.types()[-4:] == [
        "outgoing_call_initiated",
        "outgoing_call_connected",
        "hard_hangup_initiated",
        "outgoing_call_finished",
    ]


def test_a_302_is_followed_to_its_target(
    worker: WorkerProcess, pbx: Kamailio, phones: BaresipFactory, sipp_factory: SippFactory
) -> None:
    redirector = sipp_factory(
        "uas_redirect.xml", fill={"CONTACT": f"<{pbx.uri('bob')}>"}, args=["-m", "1"]
    )
    pbx.routes["moved"] = redirector.address
    pbx.start()
    bob = phones("bob")
    start_session(worker, pbx)

    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id="moved"), timeout=10)
    connected = worker.wait_for_status("outgoing_call_connected", timeout=15)
    bob.wait_for_event("CALL_ESTABLISHED")
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    finished = worker.wait_for_status("outgoing_call_finished", timeout=10)
    bob.wait_for_event("CALL_CLOSED")

    assert redirector.wait(timeout=20) == 0, redirector.output()
    assert connected.callee_id == "moved"
    assert connected.description == f"redirected to {pbx.uri('bob')}"
    assert finished.description == "200 OK"
    pbx.wait_for_log("INVITE from alice to moved relayed")
    pbx.wait_for_log("INVITE from alice to bob relayed")


@pytest.mark.parametrize(
    ("user", "display_name"),
    [
        ("bob", ""),
        # RFC 3261 allows ';' in the user part: no host to be read there.
        ("127.0.0.1;x", ""),
        # A display name is the sender's text, whatever it looks like.
        ("bob", '"<sip:bob@127.0.0.1>" '),
    ],
    ids=["plain", "a trusted address as the user part", "a trusted URI as the display name"],
)
def test_a_302_to_an_untrusted_host_is_not_followed(
    worker: WorkerProcess, pbx: Kamailio, sipp_factory: SippFactory, user: str, display_name: str
) -> None:
    """Whoever we call could send us, with a 302, to a host that challenges the INVITE and
    collects a digest of the account's password: only trusted hosts are followed to."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as elsewhere:
        elsewhere.bind(("127.0.0.2", 0))
        elsewhere.settimeout(2.0)
        target = f"sip:{user}@127.0.0.2:{elsewhere.getsockname()[1]}"
        redirector = sipp_factory(
            "uas_redirect.xml", fill={"CONTACT": f"{display_name}<{target}>"}, args=["-m", "1"]
        )
        pbx.routes["moved"] = redirector.address
        pbx.start()
        start_session(worker, pbx)

        worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id="moved"), timeout=10)
        failed = worker.wait_for_status("outgoing_call_failed", timeout=15)

        assert failed.description == f"redirected to {target}: not followed (an untrusted host)"
        with pytest.raises(TimeoutError):
            elsewhere.recvfrom(4096)  # no INVITE went there
    assert "outgoing_call_connected" not in worker.types()
    assert redirector.wait(timeout=20) == 0, redirector.output()


def test_a_blind_transfer_through_the_pbx_reaches_the_second_phone(
    worker: WorkerProcess, pbx: Kamailio, phones: BaresipFactory
) -> None:
    pbx.start()
    bob = phones("bob")
    carol = phones("carol", tone_hz=800.0)
    start_session(worker, pbx)
    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id="bob"), timeout=10)
    worker.wait_for_status("outgoing_call_connected", timeout=15)
    bob.wait_for_event("CALL_ESTABLISHED")

    worker.stub.TransferCall(sip_pb2.TransferCallRequest(transfer_id="carol"), timeout=10)
    finished = worker.wait_for_status("outgoing_call_finished", timeout=20)
    carol.wait_for_event("CALL_ESTABLISHED", timeout=15)

    assert worker.types()[-4:] == [
        "outgoing_call_initiated",
        "outgoing_call_connected",
        "transfer_call_initiated",
        "outgoing_call_finished",
    ]
    transfer = worker.history()[-2]
    assert transfer.transfer_call_id == "carol"
    assert transfer.sip_response_code == 0
    assert finished.transfer_call_id == "carol"
    assert finished.sip_response_code == 202
    # bob called carol himself (challenged by the PBX as its user), and she answered.
    pbx.wait_for_log("INVITE from bob to carol relayed")
    answered = carol.wait_for_event("CALL_ESTABLISHED")
    assert answered["peeruri"].startswith("sip:bob@"), answered
