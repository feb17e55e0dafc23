"""Which thread runs what, and the guard that turns a PJSUA2 thread misuse into an exception.

PJSUA2 aborts the whole process when one of its objects is used from, or freed on, a thread it
does not know. Every function that touches PJSUA2 is decorated `@owner_thread`: it raises
`ThreadMisuse` (an AssertionError, so a test fails instead of the process aborting) unless it
runs on the owner thread that `PjOwner` claims. Callbacks that PJSUA2 runs on its media clock
thread are decorated `@media_thread`: they may only hand work to the owner (`post`).

One PJSUA2 endpoint exists per process, so there is one owner thread per process.
"""

import functools
import logging
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_owner: int | None = None
# Every misuse detected, also those raised inside a PJSUA2 callback (where SWIG would swallow
# the exception): tests fail when this is not empty.
_misuses: list[str] = []


class ThreadMisuse(AssertionError):
    """Code that touches PJSUA2 ran on a thread other than its owner."""


def claim_owner() -> None:
    """Makes the calling thread the PJSUA2 owner (before it creates the endpoint)."""
    global _owner
    if _owner is not None:
        raise ThreadMisuse("a PJSUA2 owner thread is already running in this process")
    _owner = threading.get_ident()


def release_owner() -> None:
    """Called by the owner thread after the endpoint is destroyed."""
    global _owner
    assert_owner("release_owner")
    _owner = None


def assert_owner(what: str) -> None:
    if threading.get_ident() != _owner:
        message = (
            f"{what} touches PJSUA2 and must run on its owner thread, not on "
            f"{threading.current_thread().name!r}"
        )
        _misuses.append(message)
        log.error("thread misuse: %s", message)
        raise ThreadMisuse(message)


def misuses() -> list[str]:
    """Every misuse detected in this process so far."""
    return list(_misuses)


def owner_thread(function: Callable[P, T]) -> Callable[P, T]:
    """Marks (and enforces) a function that runs on the PJSUA2 owner thread only."""

    @functools.wraps(function)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        assert_owner(function.__qualname__)
        return function(*args, **kwargs)

    return guarded


def media_thread(function: Callable[P, None]) -> Callable[P, None]:
    """Marks a PJSUA2 callback that runs on the media clock thread: it may only post to the
    owner. An error in it is logged and goes no further (see `bindings.callback`)."""

    @functools.wraps(function)
    def logged(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            function(*args, **kwargs)
        except Exception:
            log.exception("error in the media-thread callback %s", function.__qualname__)

    return logged
