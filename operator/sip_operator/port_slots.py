"""Port slots: many hostNetwork sessions on one node, each on ports of its own.

A hostNetwork worker binds on the node itself, so two of them on one node must not share a
port. Each hostNetwork session holds a slot, a number in [0, slots per node): slot s listens on
the SIP, gRPC and metrics ports base + s and takes its RTP from its own block of ports. The pod
declares the SIP, gRPC and metrics ports as hostPorts, so the scheduler never puts two sessions
of one slot on one node. The RTP block is not declared (a hostPort names one port: a block of
a hundred would be a hundred entries per pod); blocks are disjoint by construction.

New sessions get the lowest slot with the fewest holders: up to `slots` sessions all hold
different slots, beyond that a slot is shared by sessions that then run on different nodes.
"""

from collections.abc import Iterable
from dataclasses import dataclass

PORT_MAX = 65535


class PortPlanError(Exception):
    """The slots' port ranges overlap or go beyond port 65535."""


@dataclass(frozen=True)
class WorkerPorts:
    """The ports one worker listens on."""

    sip: int
    grpc: int
    metrics: int  # 0: no metrics endpoint
    rtp: int | None = None  # the first RTP port; None: the worker's default
    rtp_count: int = 0  # how many ports from `rtp` RTP and RTCP use; 0: no bound


@dataclass(frozen=True)
class PortPlan:
    """How a slot number becomes ports."""

    slots: int
    sip_base: int
    grpc_base: int
    metrics_base: int  # 0: workers serve no metrics
    rtp_base: int
    rtp_per_slot: int

    def ports(self, slot: int) -> WorkerPorts:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is not in [0, {self.slots})")
        return WorkerPorts(
            sip=self.sip_base + slot,
            grpc=self.grpc_base + slot,
            metrics=self.metrics_base + slot if self.metrics_base else 0,
            rtp=self.rtp_base + slot * self.rtp_per_slot,
            rtp_count=self.rtp_per_slot,
        )

    def ranges(self) -> list[tuple[str, range]]:
        """Every kind of port the slots use, all slots together."""
        found = [
            ("SIP", range(self.sip_base, self.sip_base + self.slots)),
            ("gRPC", range(self.grpc_base, self.grpc_base + self.slots)),
        ]
        if self.metrics_base:
            found.append(("metrics", range(self.metrics_base, self.metrics_base + self.slots)))
        rtp_end = self.rtp_base + self.slots * self.rtp_per_slot
        found.append(("RTP", range(self.rtp_base, rtp_end)))
        return found

    def check(self) -> None:
        """Raises PortPlanError when two kinds of port overlap or one goes beyond 65535."""
        ranges = self.ranges()
        for kind, ports in ranges:
            if ports[-1] > PORT_MAX:
                raise PortPlanError(f"{kind} ports {_show(ports)} go beyond port {PORT_MAX}")
        for index, (kind, ports) in enumerate(ranges):
            for other_kind, other in ranges[index + 1 :]:
                if ports.start < other.stop and other.start < ports.stop:
                    raise PortPlanError(
                        f"{kind} ports {_show(ports)} overlap {other_kind} ports {_show(other)}"
                    )


def _show(ports: range) -> str:
    return f"{ports.start}-{ports[-1]}"


class SlotTable:
    """Which session (by uid) holds which slot, as far as this operator knows.

    `seeded` says whether it was filled from the API since it was last reset: until then it
    must not hand out slots, as it knows nothing of the sessions that hold them.
    """

    def __init__(self, slots: int) -> None:
        self._holders_of = [0] * slots
        self._slot_of: dict[str, int] = {}
        self.seeded = False

    def slot_of(self, uid: str) -> int | None:
        return self._slot_of.get(uid)

    def claim(self, uid: str, slot: int) -> bool:
        """Records that `uid` holds `slot` (found in its status); False if no such slot."""
        if not 0 <= slot < len(self._holders_of):
            return False
        self.release(uid)
        self._slot_of[uid] = slot
        self._holders_of[slot] += 1
        return True

    def allocate(self, uid: str) -> int:
        """A slot for `uid`: the lowest of those with the fewest holders."""
        slot = min(range(len(self._holders_of)), key=lambda s: (self._holders_of[s], s))
        self.claim(uid, slot)
        return slot

    def release(self, uid: str) -> None:
        slot = self._slot_of.pop(uid, None)
        if slot is not None:
            self._holders_of[slot] -= 1

    def seed(self, claims: Iterable[tuple[str, int]]) -> None:
        """Starts over from the (uid, slot) pairs of every session's status."""
        self.reset()
        for uid, slot in claims:
            self.claim(uid, slot)
        self.seeded = True

    def reset(self) -> None:
        self._holders_of = [0] * len(self._holders_of)
        self._slot_of.clear()
        self.seeded = False
