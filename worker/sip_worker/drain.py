"""The drain before a stop: no new calls, and the call in progress kept until it ends.

A SIGTERM during a call (an upgrade, a node drain) must not cut it. The drain ends when the
call ends, when --drain-timeout has passed, when the time in --drain-deadline-file has passed
(the operator writes its own deadline there through a pod annotation, so that the SIGTERM of a
replacement it already waited for does not wait again), or when a second signal interrupts it.
"""

import datetime
import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from sip_worker.errors import PhoneError
from sip_worker.phone import Phone

logger = logging.getLogger(__name__)

# How often a drain reads the deadline file again: the kubelet may update it meanwhile.
DEADLINE_POLL_S = 1.0


def _read_deadline(path: Path) -> tuple[float | None, str]:
    """The epoch time in the deadline file (None if it is missing, empty or not an RFC 3339
    time with a zone), and the file's text."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None, ""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None, text
    return (moment.timestamp() if moment.tzinfo is not None else None), text


class Drain:
    """One drain, run once by the stopping thread; `interrupt` may come from a signal handler."""

    def __init__(self, timeout: float, deadline_file: Path | None) -> None:
        self._timeout = timeout
        self._deadline_file = deadline_file
        self._over = threading.Event()
        self._interrupted_by = ""
        self._deadline_text = ""

    def interrupt(self, why: str) -> None:
        """Ends the drain now (a second signal): the call is hung up."""
        if not self._interrupted_by:
            self._interrupted_by = why
        self._over.set()

    def run(self, phone: Phone) -> str:
        """Keeps the call in progress until the drain ends; returns why a call still up is to
        be hung up, "" when none is."""
        try:
            no_call: Future[None] = phone.drain()
        except PhoneError:
            return ""  # the phone is not running: there is no call to keep
        no_call.add_done_callback(lambda _done: self._over.set())
        if no_call.done():
            return ""
        if self._timeout <= 0:
            return "no drain (--drain-timeout 0)"
        ends = time.monotonic() + self._timeout
        logger.info(
            "keeping the call in progress for up to %g s; a second SIGTERM or SIGINT hangs it up",
            self._timeout,
        )
        while not no_call.done():
            if self._interrupted_by:
                return f"a second {self._interrupted_by}"
            if self._deadline_passed():
                return f"the drain deadline {self._deadline_text} passed"
            left = ends - time.monotonic()
            if left <= 0:
                return f"the call outlasted --drain-timeout {self._timeout:g} s"
            self._over.wait(min(left, DEADLINE_POLL_S))
        logger.info("the call in progress ended")
        return ""

    def _deadline_passed(self) -> bool:
        if self._deadline_file is None:
            return False
        deadline, text = _read_deadline(self._deadline_file)
        if text != self._deadline_text:
            self._deadline_text = text
            if deadline is None and text:
                logger.warning(
                    "--drain-deadline-file %s: %r is not an RFC 3339 time; ignored",
                    self._deadline_file,
                    text,
                )
            elif deadline is not None:
                logger.info("the drain ends by %s at the latest", text)
        return deadline is not None and time.time() >= deadline
