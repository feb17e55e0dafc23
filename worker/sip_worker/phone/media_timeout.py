"""The media timeout, a call feature: tells when the far end has sent no media for a while.

A far end that vanishes without a BYE would hold the worker's only line forever, and PJSUA2
2.15 ends no call for missing RTP. So the owner reads the call's stream counters every
CHECK_INTERVAL (a quarter of the timeout if that is shorter): the far end is alive while
the RTP packets it sent, or the RTCP reports it sent about our stream, keep growing (our RTP
always flows, so a live far end's RTCP carries such a report).

The clock runs only while the call is connected and its audio is sendrecv. On hold (the far
end's sendonly or inactive) and while the far end only listens (its recvonly), RTP stops
legitimately and most far ends send no RTCP either, so the clock stops, as Asterisk's
hold timeout is off by default; it starts afresh when the audio is sendrecv again.
"""

import time
from collections.abc import Callable

from sip_worker.phone.bindings import SipCall
from sip_worker.phone.hand_off import Timer
from sip_worker.phone.threads import owner_thread

CHECK_INTERVAL = 1.0  # seconds between two reads of the counters (about 5 µs each)


class MediaTimeout:
    """Owner thread only. Holds no PJSUA2 object: the call hands its own in."""

    def __init__(self, seconds: float, schedule_check: Callable[[float], Timer]) -> None:
        """`seconds` of silence end the call (0: never); `schedule_check(delay)` has the call
        run `expired` after delay (if the call still lasts)."""
        self.seconds = seconds
        self._schedule_check = schedule_check
        self._interval = min(CHECK_INTERVAL, seconds / 4)
        self._connected = False
        self._media_index: int | None = None  # of the sendrecv audio stream, if there is one
        self._counters: tuple[int, int] = (0, 0)  # RTP packets and RTCP reports received
        self._last_alive = 0.0
        self._timer: Timer | None = None

    @property
    def description(self) -> str:
        """What the finished status says when the timeout ended the call."""
        return f"no RTP from the far end for {self.seconds:g} s (media timeout)"

    @owner_thread
    def connected(self, sip: SipCall) -> None:
        self._connected = True
        self._restart(sip)

    @owner_thread
    def media_changed(self, sip: SipCall, sendrecv_index: int | None) -> None:
        """The call's audio changed (re-INVITE, hold, resume); its stream may be new."""
        self._media_index = sendrecv_index
        self._restart(sip)

    @owner_thread
    def expired(self, sip: SipCall) -> bool:
        """The periodic check: True once the far end has been silent for `seconds` (no
        further check follows then)."""
        self._timer = None
        if self._media_index is None or not self._connected:
            return False
        counters = _received(sip, self._media_index)
        now = time.monotonic()
        if counters != self._counters:
            self._counters = counters
            self._last_alive = now
        elif now - self._last_alive >= self.seconds:
            return True
        self._timer = self._schedule_check(self._interval)
        return False

    @owner_thread
    def release(self) -> None:
        self._connected = False
        self._media_index = None
        self._cancel()

    def _restart(self, sip: SipCall) -> None:
        self._cancel()
        if self.seconds <= 0 or self._media_index is None or not self._connected:
            return
        self._counters = _received(sip, self._media_index)
        self._last_alive = time.monotonic()
        self._timer = self._schedule_check(self._interval)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _received(sip: SipCall, media_index: int) -> tuple[int, int]:
    """RTP packets received, and RTCP receiver reports about our stream received."""
    rtcp = sip.getStreamStat(media_index).rtcp
    return int(rtcp.rxStat.pkt), int(rtcp.txStat.updateCount)
