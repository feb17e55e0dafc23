"""SRTP against a real phone: the worker on SIP over TLS to Kamailio (its TLS listener, a test
CA), with `--srtp mandatory`, and baresip behind Kamailio with its SRTP module (SDES keys in
the SDP; the media goes straight between the two). Audio both ways; a baresip without SRTP is
refused with 488 both ways."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ondewo.sip import sip_pb2
from tests.support.audio import tone_seconds, tone_seconds_in
from tests.support.baresip import Baresip
from tests.support.certificates import TestCa
from tests.support.kamailio import PROXY_CONFIG, Kamailio, KamailioTls
from tests.support.sip_peers import SIPP_PASSWORD
from tests.worker.conftest import WorkerFactory, WorkerProcess
from tests.worker.test_pbx_peers import RATE, listen_then_play
from tests.worker.test_tls import tls_worker

BOB_PASSWORD = "bob-pw-1"
WORKER_TONE = 1000.0
PHONE_TONE = 600.0

PhoneFactory = Callable[..., Baresip]


@pytest.fixture()
def secure_pbx(tmp_path: Path, ca: TestCa) -> Iterator[Kamailio]:
    """Kamailio (proxy.cfg) with a TLS listener for alice and bob on UDP; running."""
    kamailio = Kamailio(
        tmp_path / "kamailio",
        config=PROXY_CONFIG,
        users={"bob": BOB_PASSWORD},
        tls=KamailioTls(ca.issue("kamailio"), ca.certificate),
    )
    try:
        yield kamailio.start()
    finally:
        kamailio.stop()


@pytest.fixture()
def phone(tmp_path: Path, secure_pbx: Kamailio) -> Iterator[PhoneFactory]:
    started: list[Baresip] = []

    def factory(media_encryption: str) -> Baresip:
        bob = Baresip(
            tmp_path / "phones",
            "bob",
            BOB_PASSWORD,
            secure_pbx.address,
            tone_hz=PHONE_TONE,
            media_encryption=media_encryption,
        )
        started.append(bob)
        return bob.start()

    yield factory
    for bob in started:
        bob.stop()


@pytest.fixture()
def srtp_worker(worker_factory: WorkerFactory, secure_pbx: Kamailio, ca: TestCa) -> WorkerProcess:
    """A worker with mandatory SRTP and a session at the PBX's TLS listener (auto-answer 1 s)."""
    worker = tls_worker(worker_factory, ca.certificate, "--srtp", "mandatory")
    worker.stub.RegisterAccount(
        sip_pb2.RegisterAccountRequest(account_name=secure_pbx.tls_account, password=SIPP_PASSWORD),
        timeout=30,
    )
    worker.stub.StartSession(
        sip_pb2.StartSessionRequest(account_name=secure_pbx.tls_account, auto_answer_interval=1),
        timeout=10,
    )
    return worker


def test_mandatory_srtp_with_a_phone_carries_audio_both_ways(
    srtp_worker: WorkerProcess, phone: PhoneFactory
) -> None:
    bob = phone("srtp-mand")
    srtp_worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id="bob"), timeout=10)
    srtp_worker.wait_for_status("outgoing_call_connected", timeout=15)
    bob.wait_for_event("CALL_ESTABLISHED")
    listen = listen_then_play(srtp_worker, WORKER_TONE)
    srtp_worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=False), timeout=10)
    srtp_worker.wait_for_status("outgoing_call_finished", timeout=15)
    bob.wait_for_event("CALL_CLOSED")

    # baresip negotiated SRTP (its log names the crypto suite), and each side heard the other.
    assert "srtp: audio: SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)" in bob.log()
    assert tone_seconds_in(listen.audio() / 32768.0, RATE, PHONE_TONE) >= 1.5
    assert tone_seconds(bob.heard(), WORKER_TONE) >= 1.5


def test_a_phone_without_srtp_is_refused_with_488_both_ways(
    srtp_worker: WorkerProcess, phone: PhoneFactory, secure_pbx: Kamailio
) -> None:
    bob = phone("")
    # The worker calls: its offer is RTP/SAVP only, which a phone without SRTP cannot take.
    srtp_worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id="bob"), timeout=10)
    failed = srtp_worker.wait_for_status("outgoing_call_failed", timeout=15)
    assert failed.description == "488 Not Acceptable Here"

    # The phone calls with plain RTP: the worker refuses the offer.
    closed = len(bob.events())
    bob.dial(secure_pbx.uri(secure_pbx.user))
    event = bob.wait_for_event("CALL_CLOSED", after=closed)
    assert "488" in str(event), event
    assert "incoming_call_connected" not in srtp_worker.types()
