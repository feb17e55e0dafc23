"""Work handed to the PJSUA2 owner thread: posted closures and timers, with an instant wake-up.

PJSUA2 may only be touched from the thread that owns it, which spends its time blocked in
`libHandleEvents(timeout)`. A closure posted from another thread is followed by a one-byte UDP
datagram to a loopback SIP transport of that same endpoint: the datagram wakes the blocked
poll at once (PJSIP drops datagrams this short silently), so a hand-off costs no poll delay.
"""

import contextlib
import heapq
import itertools
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from sip_worker.errors import PhoneError, Unreachable

log = logging.getLogger(__name__)

T = TypeVar("T")
_WAKE_BYTE = b"\0"


class Timer:
    """A handle to cancel a scheduled closure."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _detached(error: BaseException) -> BaseException:
    """A copy of `error` without traceback or chained causes.

    An exception that crosses to another thread in a Future must not keep the owner thread's
    frames alive: their locals may hold PJSUA2 objects, which abort the process when they are
    freed on a foreign thread or after libDestroy.
    """
    if isinstance(error, PhoneError):
        return type(error)(*error.args)
    return RuntimeError(f"{type(error).__name__}: {error}")


class HandOff:
    """The owner thread's queue of closures and timers. Only `post`/`submit` are thread-safe."""

    def __init__(self) -> None:
        # Each item is a closure and, for `submit`, the Future that `close` fails instead.
        self._items: queue.SimpleQueue[tuple[Callable[[], None], Future[object] | None]] = (
            queue.SimpleQueue()
        )
        self._timers: list[tuple[float, int, Timer, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._waker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._waker.setblocking(False)
        self._wake_address: tuple[str, int] | None = None
        self._closed = False
        self._lock = threading.Lock()

    def set_wake_address(self, host: str, port: int) -> None:
        self._wake_address = (host, port)

    def post(self, closure: Callable[[], None]) -> None:
        """Runs `closure` on the owner thread soon; callable from any thread, even media ones."""
        self._put(closure, None)

    def _put(self, closure: Callable[[], None], future: "Future[object] | None") -> None:
        with self._lock:
            if self._closed:
                raise Unreachable("the phone is stopped")
            self._items.put((closure, future))
        if self._wake_address is not None:
            # A full socket buffer means wake-ups are already pending.
            with contextlib.suppress(OSError):
                self._waker.sendto(_WAKE_BYTE, self._wake_address)

    def submit(self, function: Callable[[], T]) -> "Future[T]":
        """Runs `function` on the owner thread; its result or exception arrives in the Future.

        The result must not be (or hold) a PJSUA2 object.
        """
        future: Future[T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = function()
            except BaseException as error:
                if not isinstance(error, PhoneError):
                    log.exception("unexpected error on the SIP thread")
                future.set_exception(_detached(error))
            else:
                future.set_result(result)

        self._put(run, future)  # type: ignore[arg-type]
        return future

    def schedule(self, delay: float, closure: Callable[[], None]) -> Timer:
        """Runs `closure` on the owner thread after `delay` seconds. Owner thread only."""
        timer = Timer()
        due = time.monotonic() + max(delay, 0.0)
        heapq.heappush(self._timers, (due, next(self._sequence), timer, closure))
        return timer

    def poll_timeout_ms(self, idle_ms: int) -> int:
        """How long the owner thread may block in the SIP poll before a timer falls due."""
        if not self._items.empty():
            return 0
        if not self._timers:
            return idle_ms
        wait = self._timers[0][0] - time.monotonic()
        return max(0, min(idle_ms, int(wait * 1000.0 + 0.999)))

    def run_pending(self) -> None:
        """Runs the timers that are due, then every posted closure. Owner thread only."""
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer, closure = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._run(closure)
            del closure
        while True:
            try:
                closure, _ = self._items.get_nowait()
            except queue.Empty:
                return
            self._run(closure)
            del closure

    @staticmethod
    def _run(closure: Callable[[], None]) -> None:
        try:
            closure()
        except Exception:
            log.exception("unexpected error in work handed to the SIP thread")

    def close(self) -> None:
        """Refuses further posts and drops queued work and timers. Owner thread only.

        Queued `submit` calls fail with Unreachable without running.
        """
        with self._lock:
            self._closed = True
        self._timers.clear()
        while True:
            try:
                _, future = self._items.get_nowait()
            except queue.Empty:
                break
            if future is not None and future.set_running_or_notify_cancel():
                future.set_exception(Unreachable("the phone is stopped"))
        self._waker.close()
