"""The phone driven inside the test process: one PJSUA2 endpoint at a time, an in-memory
history, sipp as the far end. Each test gets a fresh phone (its endpoint is destroyed after)."""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sip_worker.config import WorkerConfig
from sip_worker.phone import Phone, threads
from tests.support.memory_history import MemoryHistory
from tests.support.sip_peers import SIPP_PASSWORD, SippFactory, account_of
from tests.support.sipp import PHONE_RTP_PORTS, Sipp, free_media_ports


@dataclass
class PhoneUnderTest:
    phone: Phone
    history: MemoryHistory
    expected_misuses: int = 0  # thread misuses a test provokes on purpose

    def open_session(self, registrar: Sipp, auto_answer_interval: int = 1) -> str:
        account = account_of(registrar)
        self.phone.register_account(account, SIPP_PASSWORD)
        self.phone.start_session(account, auto_answer_interval)
        return account

    def call_connected(self, registrar: Sipp, sipp_factory: SippFactory) -> Sipp:
        """A session and an outgoing call, connected, to a sipp UAS; returns the UAS."""
        self.open_session(registrar)
        uas = sipp_factory("uas")
        self.phone.start_call(f"service@{uas.address}", {})
        self.history.wait_for("outgoing_call_connected")
        return uas


def phone_settings(no_register: bool = False) -> WorkerConfig:
    return WorkerConfig(
        sip_host="127.0.0.1",
        sip_port=0,
        rtp_port=free_media_ports(PHONE_RTP_PORTS),
        redis_url="memory://",
        no_register=no_register,
    )


@pytest.fixture()
def phone() -> Iterator[PhoneUnderTest]:
    yield from run_phone(phone_settings())


@pytest.fixture()
def phone_without_register() -> Iterator[PhoneUnderTest]:
    """A phone whose accounts send no REGISTER (`--no-register`)."""
    yield from run_phone(phone_settings(no_register=True))


def run_phone(settings: WorkerConfig) -> Iterator[PhoneUnderTest]:
    """A started phone for one test; stopped after it, with no thread misuse unexpected."""
    history = MemoryHistory()
    under_test = PhoneUnderTest(Phone(settings, history), history)
    misuses_before = len(threads.misuses())
    under_test.phone.start()
    try:
        yield under_test
    finally:
        under_test.phone.stop(1.0)
    misused = threads.misuses()[misuses_before:]
    assert len(misused) == under_test.expected_misuses, misused
