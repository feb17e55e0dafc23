"""Untrusted-INVITE benchmark (printed by `make bench`): what refusing an untrusted source
costs against answering a trusted caller busy, in the same run on the same worker.

The worker has a session at a sipp registrar on 127.0.0.1 (so 127.0.0.1 is trusted) and is in
a connected call to a sipp UAS (RTP echoed), so a trusted INVITE gets the session's 486. An
untrusted one, from 127.0.0.2, gets the inbound source policy's 403. Each INVITE is a raw UDP
datagram; the next is sent once the previous one's final response has come and been ACKed,
so one refusal at a time holds a PJSUA call slot. Both refusals keep their slot for
REJECT_DELAY_S before they answer (sip_worker/phone/session.py says why: a flood must not
exhaust PJSIP's sockets), so the latency of both is that delay plus the work around it.

Measured, in alternating rounds after an unmeasured warm-up of each:
1. Latency, INVITE sent -> final response received, medians. Target ratio 403 / 486 <= 1.5.
2. The worker's CPU per request: the CPU time of all its threads (ns, summed from
   /proc/<pid>/task/*/schedstat; /proc/<pid>/stat counts 10 ms ticks, too coarse for one
   INVITE) over each block of requests, less the floor: the worker's CPU over a quiet block
   of the same length in the same call, measured in every round. Target ratio <= 1.5.

Everything runs on loopback with free ports; every process started here is stopped at the end.
"""

import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, closing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sip_worker.phone.session import REJECT_DELAY_S  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.sip_peers import SIPP_PASSWORD, SIPP_USER  # noqa: E402
from tests.support.sipp import Sipp, free_tcp_port  # noqa: E402
from tests.worker.conftest import WorkerProcess, start_session, start_worker  # noqa: E402
from tests.worker.test_hostile_network import (  # noqa: E402
    VALID_SDP,
    RawPeer,
    header,
    status_code,
    to_tag_of,
)
from tests.worker.test_outgoing_call import start_call  # noqa: E402

ROUNDS = 5
REQUESTS_PER_ROUND = 20
REQUESTS = ROUNDS * REQUESTS_PER_ROUND
WARM_UP = 3
FINAL_TIMEOUT_S = 5.0
TARGET = 1.5
UNTRUSTED = "127.0.0.2"  # loopback, but no address the worker trusts
TRUSTED = "127.0.0.1"  # the registrar's address


def cpu_ns(pid: int) -> int:
    """The CPU time all threads of `pid` have used so far, in ns."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total


class Caller:
    """A raw UDP peer on one address whose INVITEs the worker refuses with `expected`."""

    def __init__(self, name: str, peer: RawPeer, expected: int) -> None:
        self.name = name
        self.peer = peer
        self.expected = expected
        self.latency_ms: list[float] = []
        self.cpu_ns = 0
        self.wall_s = 0.0

    def invite(self) -> float:
        """One INVITE until its final response (then ACKed); the latency in ms."""
        call_id, branch = uuid.uuid4().hex, uuid.uuid4().hex
        invite = self.peer.request(
            "INVITE", call_id=call_id, branch=branch, body=VALID_SDP.encode()
        )
        sent = time.perf_counter()
        self.peer.send(invite)
        final = self._final(call_id)
        received = time.perf_counter()
        code = status_code(final)
        if code != self.expected:
            raise RuntimeError(f"{self.name}: {code} instead of {self.expected}: {final!r}")
        self.peer.send(
            self.peer.request("ACK", call_id=call_id, branch=branch, to_tag=to_tag_of(final))
        )
        return (received - sent) * 1000

    def block(self, pid: int) -> float:
        """REQUESTS_PER_ROUND INVITEs, recording latencies and the worker's CPU; the wall time."""
        cpu_before, started = cpu_ns(pid), time.perf_counter()
        self.latency_ms += [self.invite() for _ in range(REQUESTS_PER_ROUND)]
        wall = time.perf_counter() - started
        self.cpu_ns += cpu_ns(pid) - cpu_before
        self.wall_s += wall
        return wall

    def _final(self, call_id: str) -> bytes:
        sock = self.peer.sock
        deadline = time.monotonic() + FINAL_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                message = sock.recv(65535)
            except TimeoutError:
                break
            code = status_code(message)
            if (
                code is not None
                and code >= 200
                and header(message, b"Call-ID", b"i") == (call_id.encode())
            ):
                return message
        raise RuntimeError(f"{self.name}: no final response within {FINAL_TIMEOUT_S} s")


def busy_worker(stack: ExitStack, workdir: Path) -> WorkerProcess:
    """A worker with a session at a registrar on 127.0.0.1, in a connected call."""
    redis = RedisServer(workdir / "redis")
    redis.start()
    stack.callback(redis.stop)
    sipp_dir = workdir / "sipp"
    credentials = {"user": SIPP_USER, "pass": SIPP_PASSWORD}
    registrar = Sipp("registrar_auth.xml", sipp_dir, variables=credentials).start()
    stack.callback(registrar.stop)
    uas = Sipp("uas", sipp_dir, args=["-rtp_echo"]).start()
    stack.callback(uas.stop)
    # As the operator runs workers: JSON logs, metrics on.
    worker = start_worker(
        redis.url,
        workdir / "worker",
        ["--log-format", "json", "--metrics-port", str(free_tcp_port())],
    )
    stack.callback(worker.stop)
    start_session(worker, registrar, auto_answer_interval=1)
    start_call(worker, f"bench@{uas.address}")
    worker.wait_for_status("outgoing_call_connected")
    return worker


def main() -> None:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-untrusted-")))
        worker = busy_worker(stack, workdir)
        pid = worker.process.pid
        untrusted = Caller(
            "untrusted", stack.enter_context(closing(RawPeer(worker.sip_port, UNTRUSTED))), 403
        )
        busy = Caller(
            "trusted", stack.enter_context(closing(RawPeer(worker.sip_port, TRUSTED))), 486
        )
        for caller in (untrusted, busy):
            for _ in range(WARM_UP):
                caller.invite()
        floor_ns = 0
        floor_s = 0.0
        round_medians: list[tuple[float, float]] = []
        for number in range(ROUNDS):
            order = (untrusted, busy) if number % 2 == 0 else (busy, untrusted)
            walls = [caller.block(pid) for caller in order]
            quiet_before, quiet_started = cpu_ns(pid), time.perf_counter()
            time.sleep(statistics.mean(walls))
            floor_s += time.perf_counter() - quiet_started
            floor_ns += cpu_ns(pid) - quiet_before
            round_medians.append(
                (
                    statistics.median(untrusted.latency_ms[-REQUESTS_PER_ROUND:]),
                    statistics.median(busy.latency_ms[-REQUESTS_PER_ROUND:]),
                )
            )
        if not worker.alive():
            raise RuntimeError(f"the worker died:\n{worker.log()}")

    floor_rate = floor_ns / floor_s  # CPU ns per wall second in the call, no requests

    def cpu_per_request_ms(caller: Caller) -> float:
        return (caller.cpu_ns - floor_rate * caller.wall_s) / REQUESTS / 1e6

    latency = {c.name: statistics.median(c.latency_ms) for c in (untrusted, busy)}
    cpu = {c.name: cpu_per_request_ms(c) for c in (untrusted, busy)}
    latency_ratio = latency["untrusted"] / latency["trusted"]
    cpu_ratio = cpu["untrusted"] / cpu["trusted"]
    print(f"Untrusted-INVITE benchmark ({REQUESTS} INVITEs each, interleaved in {ROUNDS} rounds)")
    print(f"latency, INVITE -> final response, medians (both hold {REJECT_DELAY_S * 1000:.0f} ms)")
    print(f"  untrusted source -> 403                {latency['untrusted']:7.2f} ms")
    print(f"  trusted source, worker busy -> 486     {latency['trusted']:7.2f} ms")
    print("  per round, 403/486 ms: " + "  ".join(f"{a:.1f}/{b:.1f}" for a, b in round_medians))
    print(f"  {'ratio 403 / 486':<38} {latency_ratio:7.2f}  {verdict(latency_ratio)}")
    print("worker CPU per request, less the floor (the same call without requests)")
    print(f"  floor: CPU in the call                 {floor_rate / 1e7:7.2f} % of a core")
    print(f"  untrusted source -> 403                {cpu['untrusted']:7.3f} ms")
    print(f"  trusted source, worker busy -> 486     {cpu['trusted']:7.3f} ms")
    print(f"  {'ratio 403 / 486':<38} {cpu_ratio:7.2f}  {verdict(cpu_ratio)}")


def verdict(ratio: float) -> str:
    return f"(target <= {TARGET}: {'ok' if ratio <= TARGET else 'MISSED'})"


if __name__ == "__main__":
    main()
