"""RTP ports stay within --rtp-port-count: PJSUA takes a new pair for every call and wraps."""

import dataclasses
import re
from collections.abc import Iterator

import pytest

from sip_worker.config import MIN_RTP_PORT_COUNT
from sip_worker.phone import Phone
from tests.phone.conftest import PhoneUnderTest, phone_settings
from tests.support.memory_history import MemoryHistory
from tests.support.sip_peers import SippFactory
from tests.support.sipp import Sipp

PAIRS = MIN_RTP_PORT_COUNT // 2


@pytest.fixture()
def bounded_phone() -> Iterator[tuple[PhoneUnderTest, int]]:
    """A phone whose RTP may use MIN_RTP_PORT_COUNT ports, and the first of them."""
    settings = dataclasses.replace(phone_settings(), rtp_port_count=MIN_RTP_PORT_COUNT)
    history = MemoryHistory()
    under_test = PhoneUnderTest(Phone(settings, history), history)
    under_test.phone.start()
    try:
        yield under_test, settings.rtp_port
    finally:
        under_test.phone.stop(1.0)


def test_calls_reuse_the_bounded_rtp_ports_in_turn(
    bounded_phone: tuple[PhoneUnderTest, int], registrar: Sipp, sipp_factory: SippFactory
) -> None:
    phone, first = bounded_phone
    phone.open_session(registrar)
    uas = sipp_factory("uas")
    for call in range(PAIRS + 1):
        before = len(phone.history.entries())
        phone.phone.start_call(f"service@{uas.address}", {})
        phone.history.wait_for("outgoing_call_connected", after=before)
        phone.phone.end_call(hard_hangup=True)
        phone.history.wait_for("outgoing_call_finished", after=before)
        uas.wait_for(rf"(?s)(BYE sip:.*){{{call + 1}}}")
    offered = [
        int(match[1])
        for invite in uas.received("INVITE")
        if (match := re.search(r"^m=audio (\d+) ", invite, re.M))
    ]
    # One pair per call from the first port up, then the first pair again.
    assert offered == [first + 2 * n for n in range(PAIRS)] + [first]
