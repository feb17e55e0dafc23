"""The owner of the PJSUA2 thread: the only code that creates, polls and destroys the endpoint.

Its thread runs `libHandleEvents` in a loop. Other threads hand it work with `submit` (a Future
tells the outcome) or `post`; a hand-off wakes the blocked poll at once (see `hand_off`). On
the owner thread, `schedule` runs a closure later and `retire` frees a PJSUA2 object once the
callback that dropped it has returned (an object freed inside its own callback crashes PJSUA2).
"""

import gc
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TypeVar

from sip_worker.errors import PhoneError, Unreachable
from sip_worker.phone import threads
from sip_worker.phone.bindings import SipCall
from sip_worker.phone.endpoint import Endpoint, create_endpoint, destroy_endpoint, hang_up_all
from sip_worker.phone.hand_off import HandOff, Timer
from sip_worker.phone.settings import PhoneSettings
from sip_worker.phone.threads import owner_thread

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long the owner blocks in one poll when nothing is due; hand-offs wake it earlier.
IDLE_POLL_MS = 100


def pending_future() -> "Future[None]":
    """A Future the owner completes later (a registrar's answer, the end of a call)."""
    done: Future[None] = Future()
    done.set_running_or_notify_cancel()
    return done


class PjOwner:
    """Starts the owner thread and the endpoint; see the module docstring."""

    def __init__(self, settings: PhoneSettings) -> None:
        self._settings = settings
        self._hand_off = HandOff()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: PhoneError | None = None
        self._running = False
        self._endpoint: Endpoint | None = None
        self._retired: list[object] = []
        self._live_calls: Callable[[], Iterable[SipCall]] = tuple
        # Runs on the owner after hangupAllCalls at stop: the rooms let go of every PJSUA2
        # object they hold, which must all be gone before libDestroy.
        self.on_stop: Callable[[], None] = lambda: None

    # ------------------------------------------------------------ API threads

    def start(self) -> Endpoint:
        """Starts the owner thread and the endpoint; raises PhoneError when it cannot."""
        self._thread = threading.Thread(target=self._run_owner_thread, name="sip", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error
        assert self._endpoint is not None
        return self._endpoint

    def submit(self, function: Callable[[], T]) -> "Future[T]":
        """Runs `function` on the owner; its result (never a PJSUA2 object) or error arrives in
        the Future. Raises Unreachable once the owner stopped."""
        return self._hand_off.submit(function)

    def post(self, closure: Callable[[], None]) -> None:
        """Runs `closure` on the owner soon; callable from any thread, media threads too."""
        self._hand_off.post(closure)

    def stop(self, join_timeout: float = 10.0) -> None:
        """Ends the loop: hangupAllCalls, `on_stop`, then the endpoint is destroyed."""
        try:
            self._hand_off.post(self._stop_running)
        except Unreachable:
            return
        if self._thread is not None:
            self._thread.join(timeout=join_timeout)

    # ------------------------------------------------------------ owner thread

    @owner_thread
    def schedule(self, delay: float, closure: Callable[[], None]) -> Timer:
        return self._hand_off.schedule(delay, closure)

    @owner_thread
    def retire(self, thing: object) -> None:
        """Frees a PJSUA2 object after the current callback, still on the owner thread."""
        self._retired.append(thing)

    @owner_thread
    def watch_live_calls(self, live_calls: Callable[[], Iterable[SipCall]]) -> None:
        """Tells `retire` which calls are live: their ids may have been reused (see below)."""
        self._live_calls = live_calls

    def _run_owner_thread(self) -> None:
        threads.claim_owner()
        try:
            self._endpoint = create_endpoint(self._settings)
        except Exception as error:
            self._start_error = (
                error
                if isinstance(error, PhoneError)
                else Unreachable(f"cannot start SIP: {error}")
            )
            self._hand_off.close()
            gc.collect()
            threads.release_owner()
            self._started.set()
            return
        self._hand_off.set_wake_address("127.0.0.1", self._endpoint.wake_port)
        self._running = True
        self._started.set()
        library = self._endpoint.library
        while self._running:
            library.libHandleEvents(self._hand_off.poll_timeout_ms(IDLE_POLL_MS))
            self._free_retired()
            self._hand_off.run_pending()
            self._free_retired()
        del library
        self._hand_off.close()
        self._destroy()

    @owner_thread
    def _stop_running(self) -> None:
        if self._endpoint is not None:
            hang_up_all(self._endpoint.library)
        self.on_stop()
        self._running = False

    @owner_thread
    def _free_retired(self) -> None:
        """Frees the retired objects, but keeps each disconnected call whose id PJSUA has
        already given to a new call (it reuses ids, even within one poll): freeing it would
        hang that new call up and cut it off from its own object. A kept call costs about a
        kilobyte, and only under floods of INVITEs."""
        if not self._retired:
            return
        taken = {call.getId() for call in self._live_calls() if not call.disconnected}
        for thing in self._retired:
            if isinstance(thing, SipCall) and thing.disconnected and thing.getId() in taken:
                thing.__disown__()  # PJSUA2 (C++) now owns it, and never deletes it
        self._retired.clear()

    @owner_thread
    def _destroy(self) -> None:
        self._retired.clear()
        self._live_calls = tuple
        self.on_stop = lambda: None
        endpoint, self._endpoint = self._endpoint, None
        gc.collect()
        if endpoint is not None:
            destroy_endpoint(endpoint.library)
        del endpoint
        gc.collect()
        threads.release_owner()
