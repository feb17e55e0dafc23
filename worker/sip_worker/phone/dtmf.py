"""Sending digits, a call feature: one digit at a time, paced, by RFC 4733 or SIP INFO.

PJMEDIA queues at most 31 RFC 4733 digits per call (PJ_ETOOMANY beyond, also for digits
still being sent), and PJSUA sends SIP INFO digits all at once, which strict far ends refuse.
So the call keeps its own queue and hands PJSUA2 one digit at a time: the next once the
digit's duration and a gap have passed. Owner thread only.
"""

import logging
from collections import deque
from dataclasses import dataclass

import pjsua2 as pj

from sip_worker.errors import TooLarge, Unreachable, WrongState
from sip_worker.phone.bindings import SipCall
from sip_worker.phone.threads import owner_thread

log = logging.getLogger(__name__)

GAP_MS = 80  # between the end of one digit and the start of the next
MAX_QUEUED_DIGITS = 256


@dataclass(frozen=True)
class _Digit:
    digit: str
    sip_info: bool
    duration_ms: int


class DtmfSender:
    def __init__(self) -> None:
        self._queue: deque[_Digit] = deque()
        self.busy = False  # a digit is being sent; the call schedules `send_next`

    @owner_thread
    def enqueue(self, digits: str, sip_info: bool, duration_ms: int) -> None:
        if len(self._queue) + len(digits) > MAX_QUEUED_DIGITS:
            raise TooLarge(f"more than {MAX_QUEUED_DIGITS} digits would wait to be sent")
        self._queue.extend(_Digit(digit, sip_info, duration_ms) for digit in digits)

    @owner_thread
    def send_next(self, sip_call: SipCall) -> int | None:
        """Sends the next digit; returns in how many ms the one after may go, None when the
        queue is empty. A refused digit drops the queue and raises."""
        if not self._queue:
            self.busy = False
            return None
        digit = self._queue.popleft()
        parameters = pj.CallSendDtmfParam()
        parameters.digits = digit.digit
        parameters.duration = digit.duration_ms
        parameters.method = (
            pj.PJSUA_DTMF_METHOD_SIP_INFO if digit.sip_info else pj.PJSUA_DTMF_METHOD_RFC2833
        )
        try:
            sip_call.sendDtmf(parameters)
        except pj.Error as error:
            self._queue.clear()
            self.busy = False
            if "RFC 2833" in error.reason:
                raise WrongState(
                    "the far end takes no RFC 4733 telephone-events: send with SIP_INFO"
                ) from None
            raise Unreachable(f"cannot send DTMF: {error.reason}") from None
        self.busy = True
        return digit.duration_ms + GAP_MS

    @owner_thread
    def release(self) -> None:
        self._queue.clear()
        self.busy = False
