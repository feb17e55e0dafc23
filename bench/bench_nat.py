"""NAT benchmark (printed by `make bench`): call setup through a real kernel NAT against the
same call on loopback, in the same run.

The NAT worker runs in the private network namespace of tests/support/nat_network.py, with
`--stun-server` (coturn in the public namespace), so each call also asks STUN for its RTP
port's mapping; its registrar and a sipp UAS (echoing RTP) are in the public namespace,
behind iptables MASQUERADE. The loopback worker, registrar and UAS are the same on
127.0.0.1. Call setup is StartCall -> connected from the status timestamps
(`outgoing_call_initiated` carries the time the worker took the request): the worker's
hand-off, the STUN query, the INVITE's way through the NAT and the answer's way back.
Both get one unmeasured warm-up call, then the same number of calls in alternating rounds.
Target: ratio NAT / loopback <= 1.2.

Needs root (network namespaces); prints why and measures nothing otherwise. Every process,
namespace and veth made here is removed at the end.
"""

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from google.protobuf import empty_pb2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ondewo.sip import sip_pb2  # noqa: E402
from tests.support.nat_network import (  # noqa: E402
    PRIVATE_ADDRESS,
    PUBLIC_ADDRESS,
    NatNetwork,
    unavailable_reason,
)
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.sip_peers import SIPP_PASSWORD, SIPP_USER  # noqa: E402
from tests.support.sipp import Sipp  # noqa: E402
from tests.support.stun_server import StunServer  # noqa: E402
from tests.worker.conftest import WorkerProcess, start_session, start_worker  # noqa: E402

ROUNDS = 5
CALLS_PER_ROUND = 10
CALLS = ROUNDS * CALLS_PER_ROUND
PACE_S = 0.05
POLL_S = 0.02
TARGET = 1.2
Status = sip_pb2.SipStatus


class Side:
    """A worker with a ready session, and the sipp UAS it calls."""

    def __init__(self, name: str, worker: WorkerProcess, uas: Sipp) -> None:
        self.name = name
        self.worker = worker
        self.uas = uas
        self.setup_ms: list[float] = []

    def call(self) -> float:
        """One call: StartCall, connected, hard hangup, finished; its setup in ms."""
        stub = self.worker.stub
        stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"bench@{self.uas.address}"), timeout=10)
        connected = self._wait(Status.outgoing_call_connected)
        history = stub.GetSipStatusHistory(empty_pb2.Empty(), timeout=10).status_history
        initiated = next(
            s for s in reversed(history) if s.status_type == Status.outgoing_call_initiated
        )
        stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
        self._wait(Status.outgoing_call_finished)
        time.sleep(PACE_S)
        return (connected.timestamp.ToNanoseconds() - initiated.timestamp.ToNanoseconds()) / 1e6

    def _wait(self, status_type: int, timeout: float = 10.0) -> Status:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.worker.stub.GetSipStatus(empty_pb2.Empty(), timeout=5)
            if status.status_type == status_type:
                return status
            if status.status_type == Status.outgoing_call_failed:
                raise RuntimeError(f"{self.name} call failed: {status.description}")
            time.sleep(POLL_S)
        raise RuntimeError(f"{self.name}: no {Status.StatusType.Name(status_type)} in time")


def _side(
    stack: ExitStack,
    name: str,
    workdir: Path,
    worker: WorkerProcess,
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
) -> Side:
    """Registers `worker` at a sipp registrar and gives it a sipp UAS, both on `host` and run
    with `prefix` (in the public namespace for the NAT side)."""
    stack.callback(worker.stop)
    credentials = {"user": SIPP_USER, "pass": SIPP_PASSWORD}
    sipp_dir = workdir / "sipp"
    registrar = Sipp(
        "registrar_auth.xml", sipp_dir, variables=credentials, host=host, prefix=prefix
    ).start()
    stack.callback(registrar.stop)
    uas = Sipp("uas", sipp_dir, args=["-rtp_echo"], host=host, prefix=prefix).start()
    stack.callback(uas.stop)
    start_session(worker, registrar, auto_answer_interval=1)
    return Side(name, worker, uas)


def main() -> None:
    reason = unavailable_reason()
    if reason is not None:
        print(f"NAT benchmark skipped: no network namespaces ({reason})")
        return
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-nat-")))
        network = NatNetwork()
        stack.callback(network.destroy)
        public = network.exec_prefix(network.public)
        # One Redis for both workers, on the management veth both reach.
        redis = RedisServer(
            workdir / "redis", host=network.management_root, extra_args=("--protected-mode", "no")
        )
        redis.start()
        stack.callback(redis.stop)
        stun = StunServer(workdir / "stun", PUBLIC_ADDRESS, prefix=public)
        stack.callback(stun.stop)
        nat_worker = start_worker(
            redis.url,
            workdir / "nat",
            ["--stun-server", stun.address],
            prefix=network.exec_prefix(network.private),
            grpc_host=network.management_private,
            sip_host=PRIVATE_ADDRESS,
        )
        nat = _side(stack, "NAT", workdir / "nat", nat_worker, host=PUBLIC_ADDRESS, prefix=public)
        loopback = _side(
            stack, "loopback", workdir / "loopback", start_worker(redis.url, workdir / "loopback")
        )
        for side in (nat, loopback):
            side.call()  # warm-up
        round_medians: list[tuple[float, float]] = []
        for number in range(ROUNDS):
            order = (nat, loopback) if number % 2 == 0 else (loopback, nat)
            for side in order:
                side.setup_ms += [side.call() for _ in range(CALLS_PER_ROUND)]
            round_medians.append(
                (
                    statistics.median(nat.setup_ms[-CALLS_PER_ROUND:]),
                    statistics.median(loopback.setup_ms[-CALLS_PER_ROUND:]),
                )
            )

    nat_median, loopback_median = (
        statistics.median(nat.setup_ms),
        statistics.median(loopback.setup_ms),
    )
    ratio = nat_median / loopback_median
    verdict = "ok" if ratio <= TARGET else "MISSED"
    print(f"NAT benchmark ({CALLS} calls each side, interleaved in {ROUNDS} rounds)")
    print("call setup, StartCall -> connected (status timestamps), medians")
    print(f"  through the kernel NAT, with STUN   {nat_median:6.2f} ms")
    print(f"  on loopback                         {loopback_median:6.2f} ms")
    print(
        "  per round, NAT/loopback ms: " + "  ".join(f"{a:.2f}/{b:.2f}" for a, b in round_medians)
    )
    print(f"  {'ratio NAT / loopback':<34} {ratio:6.2f}  (target <= {TARGET}: {verdict})")


if __name__ == "__main__":
    main()
