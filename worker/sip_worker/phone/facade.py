"""The phone as the servicer sees it: a thread-safe facade over the owner thread's rooms.

Every method runs on the calling (gRPC) thread: it checks its input there, hands the
operation to the owner thread and waits for its outcome. Only plain values cross threads,
never PJSUA2 objects. This module does not touch PJSUA2 itself.
"""

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from typing import TypeVar

from sip_worker.config import TRANSPORTS
from sip_worker.errors import InvalidArgument, PhoneError, Unreachable, WrongState
from sip_worker.history import StatusHistory
from sip_worker.phone.audio_tap import AudioTap, EndReason, StreamSettings
from sip_worker.phone.owner import PjOwner
from sip_worker.phone.playback import discard, stage_wav_files
from sip_worker.phone.session import Session
from sip_worker.phone.settings import PhoneSettings
from sip_worker.validation import check_dtmf, check_headers, parse_account_name

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bound on an API thread's wait for the owner beyond an operation's own timeouts.
HAND_OFF_TIMEOUT = 30.0


class Phone:
    """One SIP user agent: one account, one call at a time."""

    def __init__(self, settings: PhoneSettings, history: StatusHistory) -> None:
        if settings.sip_transport not in TRANSPORTS:
            raise InvalidArgument(f"unknown SIP transport {settings.sip_transport!r}")
        self._settings = settings
        self._history = history
        self._owner = PjOwner(settings)
        self._session: Session | None = None  # owned by the owner thread
        self._started = False
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()
        self.sip_port = 0

    def start(self) -> None:
        """Starts the owner thread and binds the SIP transport; raises PhoneError on failure."""
        if self._started:
            raise WrongState("the phone was already started")
        self._started = True
        endpoint = self._owner.start()
        self.sip_port = endpoint.sip_port
        # Built on the owner, which alone calls into it (the facade only hands it closures).
        self._session = self._owner.submit(
            lambda: Session(
                self._owner, self._settings, endpoint.transport_id, endpoint.sip_port, self._history
            )
        ).result(timeout=HAND_OFF_TIMEOUT)

    def is_ready(self) -> bool:
        return self._session is not None and not self._stopped.is_set()

    def drain(self) -> "Future[None]":
        """Takes no new calls from now on (INVITEs get 503, StartCall UNAVAILABLE) and keeps the
        one in progress; the Future completes once no call is left."""
        return self._ask_owner(lambda session: session.begin_drain())

    def stop(self, grace: float, reason: str = "") -> None:
        """Refuses new calls (503), ends the call softly (`reason`, on its status, says why),
        unregisters and frees PJSUA2.

        Returns within about `grace` seconds (plus a little for libDestroy); idempotent.
        """
        with self._stop_lock:
            if self._stopped.is_set() or self._session is None:
                return
            session = self._session
            deadline = time.monotonic() + max(grace, 0.0)
            try:
                finished = self._owner.submit(
                    lambda: session.begin_shutdown(deadline, reason)
                ).result(timeout=max(grace, 0.0) + 1.0)
                finished.result(timeout=max(deadline - time.monotonic(), 0.0))
            except (PhoneError, FutureTimeout):
                log.warning("the call did not end and unregister within the shutdown grace")
            self._owner.stop()
            self._session = None
            self._stopped.set()

    # ------------------------------------------------------------ the API

    def register_account(
        self, account_name: str, password: str, record_failure: bool = False
    ) -> None:
        """REGISTERs with digest auth; blocks until the registrar's final answer (with
        `no_register`: sends nothing and returns at once). `record_failure`: a refusal or no
        answer appends session_registration_failed (the boot session's attempts)."""
        name = parse_account_name(account_name)
        if "\0" in password:
            raise InvalidArgument("password contains a NUL character")
        self._on_owner(lambda session: session.register_account(name, password, record_failure))

    def start_session(self, account_name: str, auto_answer_interval: int) -> None:
        name = parse_account_name(account_name)
        if auto_answer_interval < 0:
            raise InvalidArgument("auto_answer_interval must be 0 (decline) or more seconds")
        self._on_owner(lambda session: session.start(name, auto_answer_interval))

    def end_session(self) -> None:
        self._on_owner(lambda session: session.end())

    def start_call(self, callee_id: str, headers: Mapping[str, str]) -> None:
        # The call starts when the worker takes the request, so that its initiated status
        # also covers the hand-off to the owner thread and the work before the INVITE.
        requested_ns = time.time_ns()
        checked = check_headers(headers, "headers")
        self._on_owner(lambda session: session.start_call(callee_id, checked, requested_ns))

    def end_call(self, hard_hangup: bool) -> None:
        self._on_owner(lambda session: session.end_call(hard_hangup))

    def transfer_call(self, transfer_id: str, headers: Mapping[str, str]) -> None:
        checked = check_headers(headers, "headers")
        self._on_owner(lambda session: session.transfer_call(transfer_id, checked))

    def play_wav_files(self, wav_files: Sequence[bytes]) -> None:
        staged = stage_wav_files(wav_files)
        try:
            self._on_owner(lambda session: session.play(staged))
        except BaseException:
            discard(staged)
            raise

    def mute(self) -> None:
        self._on_owner(lambda session: session.set_muted(True))

    def unmute(self) -> None:
        self._on_owner(lambda session: session.set_muted(False))

    def send_dtmf(self, digits: str, sip_info: bool, duration_ms: int) -> None:
        duration = check_dtmf(digits, duration_ms)
        self._on_owner(lambda session: session.send_dtmf(digits, sip_info, duration))

    # ------------------------------------------------------------ live audio

    def open_call_audio(self, settings: StreamSettings) -> AudioTap:
        """Connects a live-audio stream to the call; its tap is shared with the owner and the
        media thread (see `audio_tap`)."""
        return self._ask_owner(lambda session: session.open_audio(settings))

    def close_call_audio(self, tap: AudioTap, reason: EndReason) -> None:
        """Ends the stream (if it still runs); returns at once."""
        self._post_to_owner(lambda session: session.close_audio(tap, reason))

    def clear_call_audio(self, tap: AudioTap) -> None:
        """Barge-in: the stream's agent audio and the WAV queue are dropped at once."""
        tap.clear()
        self._post_to_owner(lambda session: session.clear_playback(tap))

    # ------------------------------------------------------------ hand-off

    def _on_owner(self, operation: Callable[[Session], "Future[None] | None"]) -> None:
        """Runs `operation` on the owner thread and waits for it and the Future it returns."""
        pending = self._ask_owner(operation)
        if pending is not None:
            try:
                pending.result(timeout=HAND_OFF_TIMEOUT)
            except FutureTimeout:
                raise Unreachable("the SIP stack did not answer in time") from None

    def _ask_owner(self, operation: Callable[[Session], T]) -> T:
        """Runs `operation` on the owner thread; its result (never a PJSUA2 object)."""
        session = self._session
        if self._stopped.is_set() or session is None:
            raise Unreachable("the phone is not running")
        try:
            return self._owner.submit(lambda: operation(session)).result(timeout=HAND_OFF_TIMEOUT)
        except FutureTimeout:
            raise Unreachable("the SIP stack did not answer in time") from None

    def _post_to_owner(self, operation: Callable[[Session], None]) -> None:
        session = self._session
        if session is not None:
            with suppress(Unreachable):  # stopped: the stream is gone with the phone
                self._owner.post(lambda: operation(session))
