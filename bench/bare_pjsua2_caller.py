"""The floor for call setup: bare PJSUA2 makeCall -> CONFIRMED, no gRPC, no hand-off.

Run by bench_worker.py in its own process (PJSUA2 allows one endpoint per process). Prints one
JSON object on its last line (pjlib prints a banner first): {"setup_ms": [...]} for
`--calls` sequential calls to `--target`, after `--warmup` calls that are not measured.
"""

import argparse
import json
import time
from collections.abc import Callable

import pjsua2 as pj
from bare_endpoint import start_endpoint


class _Call(pj.Call):
    def __init__(self, account: pj.Account) -> None:
        super().__init__(account)
        self.confirmed_at: float | None = None
        self.disconnected = False

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        state = self.getInfo().state
        if state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
            self.confirmed_at = time.perf_counter()
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True


def _poll_until(endpoint: pj.Endpoint, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the UAS did not answer in time")
        endpoint.libHandleEvents(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, help="SIP URI of the UAS")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between calls")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured calls first")
    args = parser.parse_args()

    endpoint, transport = start_endpoint()
    for codec in ("speex", "iLBC", "GSM", "G722"):
        endpoint.codecSetPriority(codec, 0)
    account_config = pj.AccountConfig()
    account_config.idUri = "sip:bench@127.0.0.1"
    account_config.sipConfig.transportId = transport
    account_config.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    account_config.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
    account = pj.Account()
    account.create(account_config, True)

    setup_ms: list[float] = []
    for number in range(args.warmup + args.calls):
        call = _Call(account)
        options = pj.CallOpParam(True)
        started = time.perf_counter()
        call.makeCall(args.target, options)
        _poll_until(endpoint, lambda c=call: c.confirmed_at is not None, 10.0)
        if number >= args.warmup:
            setup_ms.append((call.confirmed_at - started) * 1000.0)
        hangup = pj.CallOpParam()
        call.hangup(hangup)
        _poll_until(endpoint, lambda c=call: c.disconnected, 10.0)
        del call
        pause_until = time.monotonic() + args.pace
        while time.monotonic() < pause_until:
            endpoint.libHandleEvents(5)

    del account
    endpoint.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
    print(json.dumps({"setup_ms": setup_ms}))


if __name__ == "__main__":
    main()
