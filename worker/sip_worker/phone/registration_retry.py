"""When to REGISTER again after a refused or unanswered REGISTER: jittered exponential back-off.

The first retry waits FIRST_DELAY_S, each further one twice as long up to the configured
maximum; every delay is spread by +-JITTER so that the workers of a registrar that just came
back do not all REGISTER in the same instant. A success starts the sequence over.
"""

import random
from collections.abc import Callable

FIRST_DELAY_S = 1.0
JITTER = 0.2


class RetryBackoff:
    def __init__(self, maximum: float, uniform: Callable[[float, float], float] = random.uniform):
        self._maximum = maximum
        self._uniform = uniform
        self._next = min(FIRST_DELAY_S, maximum)

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; each call doubles the following one."""
        delay = self._next
        self._next = min(delay * 2, self._maximum)
        return delay * self._uniform(1 - JITTER, 1 + JITTER)

    def reset(self) -> None:
        self._next = min(FIRST_DELAY_S, self._maximum)
