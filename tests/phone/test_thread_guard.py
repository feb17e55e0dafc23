"""The thread guard: PJSUA2 touched off its owner thread raises instead of aborting."""

import pytest

from sip_worker.errors import WrongState
from sip_worker.phone import threads
from sip_worker.phone.threads import ThreadMisuse, owner_thread
from tests.phone.conftest import PhoneUnderTest


@owner_thread
def touches_pjsua2() -> str:
    return "ran"


def test_owner_only_code_raises_on_another_thread_and_is_recorded() -> None:
    before = len(threads.misuses())
    with pytest.raises(ThreadMisuse, match=r"touches_pjsua2 .* owner thread"):
        touches_pjsua2()
    assert len(threads.misuses()) == before + 1


def test_a_room_called_from_an_api_thread_raises_and_the_phone_lives_on(
    phone: PhoneUnderTest,
) -> None:
    session = phone.phone._session
    assert session is not None
    phone.expected_misuses = 2
    with pytest.raises(ThreadMisuse, match=r"Session\.set_muted"):
        session.set_muted(True)
    with pytest.raises(ThreadMisuse, match=r"PjOwner\.schedule"):
        session.registration._owner.schedule(0.0, lambda: None)
    # Through the facade the same request runs on the owner and gets its real answer.
    with pytest.raises(WrongState, match="there is no call"):
        phone.phone.mute()


def test_a_second_owner_in_one_process_is_refused(phone: PhoneUnderTest) -> None:
    phone.expected_misuses = 0
    with pytest.raises(ThreadMisuse, match="already running"):
        threads.claim_owner()
