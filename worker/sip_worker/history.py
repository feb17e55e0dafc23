"""The ordered, timestamped history of every SipStatus a session produced.

The servicer and the phone only see `StatusHistory`; where the entries live (a Redis stream,
or memory in tests) is the implementation's business.
"""

from typing import Protocol

from ondewo.sip.sip_pb2 import SipStatus


class StatusHistory(Protocol):
    """Append-only history of one session. Implementations are thread-safe."""

    def append(self, status: SipStatus, *, expect_follow_up: bool = False) -> None:
        """Records `status` (already timestamped) after every earlier one. With
        `expect_follow_up`, the next status is expected within milliseconds: storage may hold
        this one back briefly to write both at once (reads see it at once all the same)."""

    def last(self) -> SipStatus | None:
        """The newest status, or None before the first."""

    def entries(self) -> list[SipStatus]:
        """Every status, oldest first."""

    def close(self) -> None:
        """Flushes what can be flushed and releases resources."""
