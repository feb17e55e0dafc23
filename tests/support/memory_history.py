"""A StatusHistory in process memory, for tests that drive the phone in their own process."""

import threading
import time

from ondewo.sip.sip_pb2 import SipStatus


class MemoryHistory:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[SipStatus] = []
        self.follow_ups: list[str] = []  # type names appended with expect_follow_up

    def append(self, status: SipStatus, *, expect_follow_up: bool = False) -> None:
        with self._lock:
            self._entries.append(status)
            if expect_follow_up:
                self.follow_ups.append(SipStatus.StatusType.Name(status.status_type))

    def last(self) -> SipStatus | None:
        with self._lock:
            return self._entries[-1] if self._entries else None

    def entries(self) -> list[SipStatus]:
        with self._lock:
            return list(self._entries)

    def close(self) -> None:
        pass

    def types(self) -> list[str]:
        return [SipStatus.StatusType.Name(status.status_type) for status in self.entries()]

    def wait_for(self, status_type: str, timeout: float = 15.0, after: int = 0) -> SipStatus:
        """The first status of `status_type` at index `after` or later, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for status in self.entries()[after:]:
                if SipStatus.StatusType.Name(status.status_type) == status_type:
                    return status
            if time.monotonic() > deadline:
                raise AssertionError(f"no {status_type} within {timeout} s: {self.types()}")
            time.sleep(0.01)
