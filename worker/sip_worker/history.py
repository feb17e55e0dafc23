"""The ordered, timestamped history of every SipStatus a session produced.

The servicer and the phone only see `StatusHistory`; where the entries live (memory,
a Redis stream) is the implementation's business.
"""

import threading
from typing import Protocol

from ondewo.sip.sip_pb2 import SipStatus


class StatusHistory(Protocol):
    """Append-only history of one session. Implementations are thread-safe."""

    def append(self, status: SipStatus) -> None:
        """Records `status` (already timestamped) after every earlier one."""

    def last(self) -> SipStatus | None:
        """The newest status, or None before the first."""

    def entries(self) -> list[SipStatus]:
        """Every status, oldest first."""

    def close(self) -> None:
        """Flushes what can be flushed and releases resources."""


class MemoryHistory:
    """A history held in process memory only: lost with the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[SipStatus] = []

    def append(self, status: SipStatus) -> None:
        with self._lock:
            self._entries.append(status)

    def last(self) -> SipStatus | None:
        with self._lock:
            return self._entries[-1] if self._entries else None

    def entries(self) -> list[SipStatus]:
        with self._lock:
            return list(self._entries)

    def close(self) -> None:
        pass
