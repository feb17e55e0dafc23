"""SIP over TLS benchmark (printed by `make bench`): call setup over TLS against over UDP, to
the same Kamailio and the same baresip phone, in the same run. No target: the ratio is printed.

Kamailio (tests/support/kamailio/proxy.cfg, with its TLS listener and a test CA) is the PBX;
baresip `bob` is registered at it over UDP and answers at once. Two workers register as alice:
one over UDP, one over TLS (certificate verified against the test CA). In alternating rounds
each calls bob: the time from StartCall to the `outgoing_call_connected` status, read from the
history, then a hangup and a pause until bob is idle again. Both calls meet Kamailio's 407 for
the INVITE and answer it; the TLS worker's connection to Kamailio stays open between calls, as
a registered worker's does, so the figure is that of a call on a warm TLS connection.

Everything runs on loopback with free ports; every process started here is stopped at the end.
"""

import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ondewo.sip import sip_pb2  # noqa: E402
from tests.support.baresip import Baresip  # noqa: E402
from tests.support.certificates import TestCa  # noqa: E402
from tests.support.kamailio import PROXY_CONFIG, Kamailio, KamailioTls  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.sip_peers import SIPP_PASSWORD  # noqa: E402
from tests.worker.conftest import WorkerProcess, start_worker  # noqa: E402

ROUNDS = 10
WARM_UP = 2
BOB_PASSWORD = "bob-bench-pw"
IDLE_S = 0.3  # after a hangup, before the next call: bob's side has ended it too


def _registered_worker(
    redis_url: str, workdir: Path, account: str, args: list[str]
) -> WorkerProcess:
    worker = start_worker(redis_url, workdir, args)
    worker.stub.RegisterAccount(
        sip_pb2.RegisterAccountRequest(account_name=account, password=SIPP_PASSWORD), timeout=30
    )
    worker.stub.StartSession(sip_pb2.StartSessionRequest(account_name=account), timeout=10)
    worker.wait_for_status("ready")
    return worker


def _call_setup_ms(worker: WorkerProcess, phone: Baresip) -> float:
    """One call to bob: StartCall to `outgoing_call_connected`, in ms; then hung up."""
    before = len(worker.history())
    idle_events = len(phone.events())
    started = time.perf_counter()
    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=phone.user), timeout=10)
    worker.wait_for_status("outgoing_call_connected", timeout=15, after=before)
    setup_ms = (time.perf_counter() - started) * 1000
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished", timeout=15, after=before)
    phone.wait_for_event("CALL_CLOSED", after=idle_events)
    time.sleep(IDLE_S)
    return setup_ms


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as folder, ExitStack() as stack:
        workdir = Path(folder)
        redis = RedisServer(workdir / "redis")
        redis.start()
        stack.callback(redis.stop)
        ca = TestCa(workdir / "ca")
        pbx = Kamailio(
            workdir / "kamailio",
            config=PROXY_CONFIG,
            users={"bob": BOB_PASSWORD},
            tls=KamailioTls(ca.issue("kamailio"), ca.certificate),
        )
        pbx.start()
        stack.callback(pbx.stop)
        bob = Baresip(workdir / "phones", "bob", BOB_PASSWORD, pbx.address).start()
        stack.callback(bob.stop)
        workers = {
            "udp": _registered_worker(redis.url, workdir / "udp", pbx.account, []),
            "tls": _registered_worker(
                redis.url,
                workdir / "tls",
                pbx.tls_account,
                ["--sip-transport", "tls", "--tls-ca-file", str(ca.certificate)],
            ),
        }
        for worker in workers.values():
            stack.callback(worker.stop)
        setup_ms: dict[str, list[float]] = {name: [] for name in workers}
        for round_number in range(WARM_UP + ROUNDS):
            # Alternating which goes first, so neither always follows the other's hangup.
            order = list(workers) if round_number % 2 == 0 else list(reversed(workers))
            for name in order:
                measured = _call_setup_ms(workers[name], bob)
                if round_number >= WARM_UP:
                    setup_ms[name].append(measured)

    udp, tls = (statistics.median(setup_ms[name]) for name in ("udp", "tls"))
    print(f"call setup through Kamailio to baresip, {ROUNDS} calls each, medians:")
    for name, value in (("UDP", udp), ("TLS", tls)):
        samples = setup_ms[name.lower()]
        print(f"  over {name}: {value:7.1f} ms  (min {min(samples):.1f}, max {max(samples):.1f})")
    print(f"  TLS / UDP: {tls / udp:.2f}  (no target)")


if __name__ == "__main__":
    main()
