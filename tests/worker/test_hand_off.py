"""The owner-thread hand-off in isolation (no PJSUA2): order, results, timers, closing."""

import socket
import threading

import pytest

from sip_worker.errors import Unreachable, WrongState
from sip_worker.phone.hand_off import HandOff


def test_closures_run_in_order_with_results_and_errors() -> None:
    hand_off = HandOff()
    ran: list[int] = []
    futures = [hand_off.submit(lambda i=i: ran.append(i) or i) for i in range(5)]

    def refuse() -> None:
        raise WrongState("no call")

    refused = hand_off.submit(refuse)
    hand_off.run_pending()

    assert ran == [0, 1, 2, 3, 4]
    assert [future.result(timeout=1) for future in futures] == [0, 1, 2, 3, 4]
    error = refused.exception(timeout=1)
    assert isinstance(error, WrongState)
    assert error.__traceback__ is None, "a traceback would keep the owner thread's frames alive"


def test_unexpected_errors_cross_without_their_frames() -> None:
    hand_off = HandOff()
    future = hand_off.submit(lambda: 1 // 0)
    hand_off.run_pending()
    error = future.exception(timeout=1)
    assert isinstance(error, RuntimeError)
    assert "ZeroDivisionError" in str(error)
    assert error.__traceback__ is None and error.__cause__ is None


def test_a_post_wakes_a_blocked_poll_at_once() -> None:
    hand_off = HandOff()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as poll_socket:
        poll_socket.bind(("127.0.0.1", 0))
        hand_off.set_wake_address("127.0.0.1", poll_socket.getsockname()[1])
        poll_socket.settimeout(10)
        threading.Timer(0.05, hand_off.post, args=(lambda: None,)).start()
        assert poll_socket.recv(16) == b"\0"


def test_timers_run_when_due_and_can_be_cancelled() -> None:
    hand_off = HandOff()
    ran: list[str] = []
    hand_off.schedule(0.0, lambda: ran.append("due"))
    cancelled = hand_off.schedule(0.0, lambda: ran.append("cancelled"))
    hand_off.schedule(3600.0, lambda: ran.append("later"))
    cancelled.cancel()
    assert hand_off.poll_timeout_ms(100) == 0
    hand_off.run_pending()
    assert ran == ["due"]
    assert 0 < hand_off.poll_timeout_ms(100) <= 100


def test_close_fails_waiting_callers_and_refuses_new_work() -> None:
    hand_off = HandOff()
    pending = hand_off.submit(lambda: "never")
    hand_off.close()
    assert isinstance(pending.exception(timeout=1), Unreachable)
    with pytest.raises(Unreachable):
        hand_off.post(lambda: None)
